"""agents' metrics address and data status reports

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 21:50:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('clients') as batch:
        batch.add_column(sa.Column('metrics_address', sa.String(length=128), nullable=False, server_default=''))
    op.create_table(
        'data_status',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('client_id', sa.String(length=64), nullable=False),
        sa.Column('run_id', sa.String(length=64), nullable=False),
        sa.Column('round', sa.Integer(), nullable=False),
        sa.Column('reported_at', sa.DateTime(), nullable=False),
        sa.Column('summary', sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(['client_id'], ['clients.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_data_status_client_id', 'data_status', ['client_id'])
    op.create_index('ix_data_status_run_id', 'data_status', ['run_id'])


def downgrade() -> None:
    op.drop_index('ix_data_status_run_id', 'data_status')
    op.drop_index('ix_data_status_client_id', 'data_status')
    op.drop_table('data_status')
    with op.batch_alter_table('clients') as batch:
        batch.drop_column('metrics_address')
