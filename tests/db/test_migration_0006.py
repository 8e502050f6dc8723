"""Revision 0006: pooled track releases; existing policies keep releasing crops alone, existing items are releases of one."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect, text

from tests.db.test_migration_0003 import _alembic


def test_upgrade_marks_stored_items_as_single_releases_and_downgrades_cleanly(db_url):
    _alembic(db_url, "0005")
    engine = create_engine(db_url)
    now = "2026-11-26 08:00:00+00"
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants (name, created_at, updated_at) VALUES ('t1', :t, :t)"), {"t": now})
        tenant = conn.execute(text("SELECT id FROM tenants WHERE name = 't1'")).scalar()
        conn.execute(
            text("INSERT INTO privacy_policies (tenant_id, epsilon, delta, clip_norm, updated_at) VALUES (:t, 8, 1e-5, 1, :now)"),
            {"t": tenant, "now": now},
        )
        conn.execute(
            text(
                "INSERT INTO gallery_items (tenant_id, camera_id, captured_at, feature, mechanism, delta, sensitivity, sigma, clip_norm,"
                " noise_library, created_at) VALUES (:t, 'c', :now, :f, 'analytic-gaussian', 1e-5, 2, 0.1, 1, 'x', :now)"
            ),
            {"t": tenant, "now": now, "f": bytes(32)},
        )
    _alembic(db_url, "head")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT pool_tracks FROM privacy_policies")).scalar() in (False, 0)  # the operator decides
        conn.execute(text("INSERT INTO tenants (name, created_at, updated_at) VALUES ('t2', :t, :t)"), {"t": now})
        second = conn.execute(text("SELECT id FROM tenants WHERE name = 't2'")).scalar()
        conn.execute(
            text("INSERT INTO privacy_policies (tenant_id, epsilon, delta, clip_norm, updated_at) VALUES (:t, 8, 1e-5, 1, :now)"),
            {"t": second, "now": now},
        )
        assert conn.execute(text("SELECT pool_tracks FROM privacy_policies WHERE tenant_id = :t"), {"t": second}).scalar() in (True, 1)
        assert tuple(conn.execute(text("SELECT pooled, release_id FROM gallery_items")).one()) == (1, None)
    assert "ix_gallery_tenant_release" in {i["name"] for i in inspect(engine).get_indexes("gallery_items")}
    # a pooled release stored: the downgrade refuses (the older code would erase its items one at a time)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO gallery_items (tenant_id, camera_id, captured_at, feature, mechanism, delta, sensitivity, sigma, clip_norm,"
                " noise_library, created_at, pooled, release_id) VALUES (:t, 'c', :now, :f, 'analytic-gaussian', 1e-5, 1, 0.05, 1, 'x', :now, 2, 7)"
            ),
            {"t": tenant, "now": now, "f": bytes(32)},
        )
        pooled_id = conn.execute(text("SELECT max(id) FROM gallery_items")).scalar()
    with pytest.raises(RuntimeError, match="pooled track releases"):
        _alembic(db_url, "0005", down=True)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM gallery_items WHERE id = :i"), {"i": pooled_id})
    _alembic(db_url, "0005", down=True)
    assert not {"pooled", "release_id"} & {c["name"] for c in inspect(engine).get_columns("gallery_items")}
    assert "pool_tracks" not in {c["name"] for c in inspect(engine).get_columns("privacy_policies")}
    with engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM gallery_items")).scalar() == 1
        conn.execute(
            text(
                "INSERT INTO gallery_items (tenant_id, camera_id, captured_at, feature, mechanism, delta, sensitivity, sigma, clip_norm,"
                " noise_library, created_at) VALUES (:t, 'c', :now, :f, 'analytic-gaussian', 1e-5, 2, 0.1, 1, 'x', :now)"
            ),
            {"t": tenant, "now": now, "f": bytes(32)},
        )
        assert conn.execute(text("SELECT max(id) FROM gallery_items")).scalar() > pooled_id  # the erased id is not handed out again
    _alembic(db_url, "head")
    engine.dispose()
