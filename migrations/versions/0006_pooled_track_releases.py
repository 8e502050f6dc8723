"""pooled track releases: the policy switch and each item's release

Crops of one track enrolled together may be released as one noisy mean (``privacy_policies.pool_tracks``). Policies
set from now on pool unless they say otherwise; **existing policies do not** (false): an upgrade does not change how a
tenant's new records are released, its operator decides. ``gallery_items.pooled`` is how many crops the stored feature
is the mean of (1 for everything stored before), ``release_id`` the first item of that release (NULL for records
released alone).

Upgrade every replica before any policy pools: the code before this revision erases one item of a pooled release at
a time and reads its σ/n as a record's own noise. The downgrade refuses while pooled releases are stored, for the same
reason (erase them first, e.g. by subject or time), and keeps SQLite's id high-water mark across its table rebuild.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("privacy_policies") as batch_op:  # existing policies: false; new rows: true
        batch_op.add_column(sa.Column("pool_tracks", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("privacy_policies") as batch_op:
        batch_op.alter_column("pool_tracks", existing_type=sa.Boolean(), existing_nullable=False, server_default=sa.true())
    with op.batch_alter_table("gallery_items") as batch_op:
        batch_op.add_column(sa.Column("pooled", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("release_id", sa.BigInteger(), nullable=True))
        batch_op.create_index("ix_gallery_tenant_release", ["tenant_id", "release_id"], unique=False)


def downgrade() -> None:
    bind = op.get_bind()
    pooled = bind.execute(sa.text("SELECT count(*) FROM gallery_items WHERE pooled > 1")).scalar() or 0
    if pooled:
        raise RuntimeError(
            f"{pooled} stored items belong to pooled track releases, which the code before revision 0006 would erase one item "
            "at a time and score with the wrong noise: erase them first, or stay at 0006"
        )
    sqlite = bind.dialect.name == "sqlite"
    high_water = bind.execute(sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'gallery_items'")).scalar() if sqlite else None
    with op.batch_alter_table("gallery_items", table_kwargs={"sqlite_autoincrement": True}) as batch_op:  # ids never reused
        batch_op.drop_index("ix_gallery_tenant_release")
        batch_op.drop_column("release_id")
        batch_op.drop_column("pooled")
    if high_water is not None:  # the rebuild restarts the sequence at the largest id left: erased ids would come back
        bind.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = 'gallery_items'"))
        bind.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('gallery_items', :s)"), {"s": int(high_water)})
    with op.batch_alter_table("privacy_policies") as batch_op:
        batch_op.drop_column("pool_tracks")
