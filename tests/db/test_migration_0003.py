"""Revision 0003: tenant and key ids are never reused, and the rebuild keeps every row."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, text


def _alembic(url: str, target: str, *, down: bool = False) -> None:
    from alembic import command
    from alembic.config import Config

    root = Path(__file__).resolve().parents[2]
    cfg = Config(str(root / "alembic.ini"))
    cfg.set_main_option("script_location", str(root / "migrations"))
    cfg.attributes["database_url"] = url
    cfg.attributes["configure_logger"] = False
    (command.downgrade if down else command.upgrade)(cfg, target)


def test_upgrade_keeps_rows_and_stops_id_reuse(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    _alembic(url, "0001")
    engine = create_engine(url)
    now = "2026-11-26 08:00:00"
    with engine.begin() as conn:
        for tenant_id in (1, 2, 3):
            conn.execute(
                text("INSERT INTO tenants (id, name, created_at, updated_at) VALUES (:i, :n, :t, :t)"),
                {"i": tenant_id, "n": f"t{tenant_id}", "t": now},
            )
        conn.execute(
            text("INSERT INTO api_keys (id, tenant_id, prefix, secret_hash, created_at) VALUES (1, 1, 'p1', 'h', :t), (2, 3, 'p2', 'h', :t)"),
            {"t": now},
        )
        conn.execute(text("INSERT INTO audit_log (at, actor, action, tenant_id) VALUES (:t, 'admin', 'tenant.delete', 4)"), {"t": now})
        conn.execute(text("DELETE FROM tenants WHERE id = 3"))  # FKs are not enforced on this connection: key 2 stays
    _alembic(url, "head")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM api_keys")).scalar() == 2  # nothing cascaded during the rebuild
        conn.execute(text("INSERT INTO tenants (name, created_at, updated_at) VALUES ('new', :t, :t)"), {"t": now})
        new_id = conn.execute(text("SELECT id FROM tenants WHERE name = 'new'")).scalar()
    assert new_id == 5  # past tenant 4, which only the audit log remembers
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM tenants WHERE id = 5"))
        conn.execute(text("INSERT INTO tenants (name, created_at, updated_at) VALUES ('newer', :t, :t)"), {"t": now})
        assert conn.execute(text("SELECT id FROM tenants WHERE name = 'newer'")).scalar() == 6
    _alembic(url, "0001", down=True)
    engine.dispose()


def test_deleted_tenant_id_is_not_reused_through_the_api(client):
    from tests.api.helpers import ADMIN

    first = client.post("/v1/admin/tenants", json={"name": "one"}, headers=ADMIN).json()["id"]
    assert client.delete(f"/v1/admin/tenants/{first}", headers=ADMIN).status_code == 200
    second = client.post("/v1/admin/tenants", json={"name": "two"}, headers=ADMIN).json()["id"]
    assert second != first
    history = client.get("/v1/admin/audit", params={"tenant_id": second}, headers=ADMIN).json()
    assert [entry["action"] for entry in history] == ["tenant.create"]
