"""tenants and api_keys never reuse ids (SQLite AUTOINCREMENT)

PostgreSQL sequences never hand out an id twice; SQLite's rowid does (max + 1) unless the table is AUTOINCREMENT.
The audit log names tenants and keys by id, so a reused id would mix two tenants' histories. SQLite tables cannot be
altered to AUTOINCREMENT: they are rebuilt (Alembic batch mode: copy, drop, rename), keeping every row and index.

Revision ID: 0003
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLES = ("tenants", "api_keys")


def _rebuild(autoincrement: bool) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    # Rebuilding drops the old table: with foreign keys enforced that would cascade-delete the children.
    # (Alembic's connection does not enforce them; this makes sure, and is a no-op inside a transaction.)
    bind.exec_driver_sql("PRAGMA foreign_keys=OFF")
    seen = {table: bind.execute(sa.text(f"SELECT max(id) FROM {table}")).scalar() or 0 for table in TABLES}
    for table in TABLES:
        with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}):
            pass
    if autoincrement:
        # Ids already handed out and then freed are unknown; start past the largest audit mention as well.
        for table, column in (("tenants", "tenant_id"), ("api_keys", None)):
            floor = seen[table]
            if column is not None:
                floor = max(floor, bind.execute(sa.text(f"SELECT max({column}) FROM audit_log")).scalar() or 0)
            bind.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = :t"), {"t": table})
            bind.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES (:t, :s)"), {"t": table, "s": int(floor)})


def upgrade() -> None:
    _rebuild(autoincrement=True)


def downgrade() -> None:
    _rebuild(autoincrement=False)
