"""replicas on one database: change log, per-tenant heads (encoder identity), per-tenant rate limits, jobs

- ``gallery_changes``: the ordered log (``seq``) of item additions and deletions that every replica's FAISS index follows.
- ``gallery_heads``: per tenant, the last ``seq`` and the encoder (checkpoint SHA-256, embedding size) its gallery was
  enrolled with; filled here from the stored items (their ``model_sha256`` and feature length).
- ``tenants.requests_per_second`` / ``crops_per_second``: operator overrides of the per-key rate limits.
- ``service_jobs``: when work that must run once across replicas (retention) last ran.

SQLite rows whose ``captured_at`` was sent with an offset were stored as the wall-clock time without it (fixed from this
revision on: every instant is stored as UTC); the offset is not recoverable, so such rows are left as they are.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

IdType = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "gallery_heads",
        sa.Column("tenant_id", IdType, sa.ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("seq", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("pruned_seq", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("encoder_sha256", sa.String(64), nullable=True),
        sa.Column("encoder_dim", sa.Integer(), nullable=True),
    )
    op.create_table(
        "gallery_changes",
        sa.Column("seq", IdType, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", IdType, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("item_id", sa.BigInteger(), nullable=False),
        sa.Column("op", sa.String(3), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_gallery_changes_tenant_seq", "gallery_changes", ["tenant_id", "seq"])
    op.create_index("ix_gallery_changes_at", "gallery_changes", ["at"])
    op.create_table(
        "service_jobs",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("requests_per_second", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("crops_per_second", sa.Integer(), nullable=True))
    # The encoder each existing gallery was enrolled with: its newest item's checkpoint and feature size.
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT g.tenant_id, g.model_sha256, length(g.feature) FROM gallery_items g "
            "JOIN (SELECT tenant_id, max(id) AS id FROM gallery_items GROUP BY tenant_id) newest ON newest.id = g.id"
        )
    ).all()
    for tenant_id, sha, nbytes in rows:
        bind.execute(
            sa.text("INSERT INTO gallery_heads (tenant_id, seq, pruned_seq, encoder_sha256, encoder_dim) VALUES (:t, 0, 0, :s, :d)"),
            {"t": tenant_id, "s": sha or "untrained", "d": int(nbytes) // 4},
        )


def downgrade() -> None:
    with op.batch_alter_table("tenants", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("crops_per_second")
        batch.drop_column("requests_per_second")
    op.drop_table("service_jobs")
    op.drop_index("ix_gallery_changes_at", table_name="gallery_changes")
    op.drop_index("ix_gallery_changes_tenant_seq", table_name="gallery_changes")
    op.drop_table("gallery_changes")
    op.drop_table("gallery_heads")
