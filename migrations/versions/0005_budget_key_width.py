"""subject budgets: room for a track's budget key

A crop without a subject_ref is budgeted under ``track:`` + its track_ref (``ItemInput.budget_key``): up to 206
characters for a 200-character reference, which ``subject_budgets.subject_ref`` (200) refused on PostgreSQL (a 500
whose trace carried the reference). SQLite does not enforce the length.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("subject_budgets", "subject_ref", type_=sa.String(206), existing_type=sa.String(200), existing_nullable=False)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("subject_budgets", "subject_ref", type_=sa.String(200), existing_type=sa.String(206), existing_nullable=False)
