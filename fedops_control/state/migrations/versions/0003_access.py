"""credentials (API, enrolment, agent and run tokens) and SuperNode public keys

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 09:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('clients') as batch:
        batch.add_column(sa.Column('supernode_public_key', sa.Text(), nullable=False, server_default=''))
    op.create_table(
        'credentials',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('kind', sa.Integer(), nullable=False),
        sa.Column('secret_sha256', sa.String(length=64), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('role', sa.Integer(), nullable=False),
        sa.Column('subject', sa.String(length=64), nullable=False),
        sa.Column('created_by', sa.String(length=200), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('expires_at', sa.DateTime(), nullable=True),
        sa.Column('used_at', sa.DateTime(), nullable=True),
        sa.Column('revoked_at', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('secret_sha256'),
    )
    op.create_index('ix_credentials_subject', 'credentials', ['subject'])


def downgrade() -> None:
    op.drop_index('ix_credentials_subject', 'credentials')
    op.drop_table('credentials')
    with op.batch_alter_table('clients') as batch:
        batch.drop_column('supernode_public_key')
