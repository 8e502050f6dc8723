"""Revision 0004: change log, per-tenant heads filled with the encoder of the stored items, rate-limit columns; down and up again."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect, text

from tests.db.test_migration_0003 import _alembic


def test_upgrade_records_each_gallery_encoder_and_downgrades_cleanly(db_url):
    _alembic(db_url, "0003")
    engine = create_engine(db_url)
    now = "2026-11-26 08:00:00+00"
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants (name, created_at, updated_at) VALUES ('t1', :t, :t), ('t2', :t, :t)"), {"t": now})
        t1, t2 = (conn.execute(text("SELECT id FROM tenants WHERE name = :n"), {"n": n}).scalar() for n in ("t1", "t2"))
        for i, sha in enumerate(("a" * 64, None)):
            conn.execute(
                text(
                    "INSERT INTO gallery_items (tenant_id, camera_id, captured_at, feature, mechanism, delta, sensitivity, sigma, clip_norm,"
                    " noise_library, model_sha256, created_at) VALUES (:t, 'c', :now, :f, 'analytic-gaussian', 1e-5, 2, 0.1, 1, 'torch', :s, :now)"
                ),
                {"t": t1, "now": now, "f": bytes(4 * (8 + i)), "s": sha},
            )
    _alembic(db_url, "head")
    with engine.begin() as conn:
        heads = conn.execute(text("SELECT tenant_id, seq, encoder_sha256, encoder_dim FROM gallery_heads")).all()
        assert [tuple(h) for h in heads] == [(t1, 0, "untrained", 9)]  # the newest item's encoder; t2 has no gallery
        assert conn.execute(text("SELECT requests_per_second FROM tenants WHERE id = :t"), {"t": t2}).scalar() is None
    tables = set(inspect(engine).get_table_names())
    assert {"gallery_changes", "gallery_heads", "service_jobs"} <= tables
    _alembic(db_url, "0003", down=True)
    assert not {"gallery_changes", "gallery_heads", "service_jobs"} & set(inspect(engine).get_table_names())
    assert "requests_per_second" not in {c["name"] for c in inspect(engine).get_columns("tenants")}
    _alembic(db_url, "head")
    engine.dispose()
