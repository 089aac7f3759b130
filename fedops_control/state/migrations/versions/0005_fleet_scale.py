"""fleet scale: memberships by client, and which client redeemed an enrolment token

``clients list`` and GetClient look up a client's memberships by ``client_id``, the second column
of the primary key: without this index each lookup scanned the table (1.8 s of a blocked event loop
to list 1,000 clients). ``credentials.used_by`` lets the device that redeemed a one-time token
retry with it when the response carrying its credential was lost.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 08:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_memberships_client_id', 'memberships', ['client_id'])
    with op.batch_alter_table('credentials') as batch:
        batch.add_column(sa.Column('used_by', sa.String(64), nullable=False, server_default=''))


def downgrade() -> None:
    with op.batch_alter_table('credentials') as batch:
        batch.drop_column('used_by')
    op.drop_index('ix_memberships_client_id', 'memberships')
