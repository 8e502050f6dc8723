"""pooled track releases: the policy switch and each item's release

Crops of one track enrolled together may be released as one noisy mean (``privacy_policies.pool_tracks``). Policies
set from now on pool unless they say otherwise; **existing policies do not** (false): an upgrade does not change how a
tenant's new records are released, its operator decides. ``gallery_items.pooled`` is how many crops the stored feature
is the mean of (1 for everything stored before), ``release_id`` the first item of that release (NULL for records
released alone).

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
    with op.batch_alter_table("gallery_items", table_kwargs={"sqlite_autoincrement": True}) as batch_op:  # ids never reused
        batch_op.drop_index("ix_gallery_tenant_release")
        batch_op.drop_column("release_id")
        batch_op.drop_column("pooled")
    with op.batch_alter_table("privacy_policies") as batch_op:
        batch_op.drop_column("pool_tracks")
