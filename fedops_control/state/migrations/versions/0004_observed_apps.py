"""runs: API style, completed rounds, why no model, settings the app decides

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 06:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('runs') as batch:
        batch.add_column(sa.Column('api_style', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('completed_rounds', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('model_note', sa.Text(), nullable=False, server_default=''))
        batch.add_column(sa.Column('app_decides', sa.JSON(), nullable=False, server_default='[]'))


def downgrade() -> None:
    with op.batch_alter_table('runs') as batch:
        for column in ('app_decides', 'model_note', 'completed_rounds', 'api_style'):
            batch.drop_column(column)
