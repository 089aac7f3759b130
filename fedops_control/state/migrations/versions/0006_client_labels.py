"""client labels and selection by label; enrolment names; clients listed newest first

``client_labels`` holds one row per label, indexed by (key, value) so that a selection such as
``site=eu,gpu=true`` finds its clients through the index, not by reading every client. Clients get
the name given at enrolment (filled in here from the enrolment tokens they redeemed), the labels
their agent's config gave last (a reconnect with the same config then changes nothing), and when
a run last selected them (a label selection takes the least recently selected first). Enrolment
tokens carry the labels their client gets. Tasks may select by label; runs record how their
clients were chosen. ``ix_clients_registered_at_id`` serves lists paged newest registration first.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 08:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

ENROLMENT = 2  # access_pb2.TOKEN_KIND_ENROLMENT


def upgrade() -> None:
    op.create_table(
        'client_labels',
        sa.Column('client_id', sa.String(length=64), nullable=False),
        sa.Column('key', sa.String(length=317), nullable=False),
        sa.Column('value', sa.String(length=63), nullable=False),
        sa.Column('source', sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(['client_id'], ['clients.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('client_id', 'key'),
    )
    op.create_index('ix_client_labels_key_value', 'client_labels', ['key', 'value'])
    with op.batch_alter_table('clients') as batch:
        batch.add_column(sa.Column('name', sa.String(length=200), nullable=False, server_default=''))
        batch.add_column(sa.Column('agent_labels', sa.JSON(), nullable=False, server_default='{}'))
        batch.add_column(sa.Column('last_selected_at', sa.DateTime(), nullable=True))
    op.create_index('ix_clients_registered_at_id', 'clients', ['registered_at', 'id'])
    with op.batch_alter_table('credentials') as batch:
        batch.add_column(sa.Column('labels', sa.JSON(), nullable=False, server_default='{}'))
    with op.batch_alter_table('tasks') as batch:
        batch.add_column(sa.Column('label_selection', sa.JSON(), nullable=True))
    with op.batch_alter_table('runs') as batch:
        batch.add_column(sa.Column('selection', sa.JSON(), nullable=False, server_default='{}'))
    # A client enrolled before this revision is named after the first named enrolment token it redeemed.
    op.execute(sa.text(
        "UPDATE clients SET name = (SELECT c.name FROM credentials c WHERE c.kind = :kind AND c.used_by = clients.id "
        "AND c.name <> '' ORDER BY c.used_at LIMIT 1) WHERE EXISTS (SELECT 1 FROM credentials c WHERE c.kind = :kind "
        "AND c.used_by = clients.id AND c.name <> '')").bindparams(kind=ENROLMENT))


def downgrade() -> None:
    with op.batch_alter_table('runs') as batch:
        batch.drop_column('selection')
    with op.batch_alter_table('tasks') as batch:
        batch.drop_column('label_selection')
    with op.batch_alter_table('credentials') as batch:
        batch.drop_column('labels')
    op.drop_index('ix_clients_registered_at_id', 'clients')
    with op.batch_alter_table('clients') as batch:
        for column in ('last_selected_at', 'agent_labels', 'name'):
            batch.drop_column(column)
    op.drop_index('ix_client_labels_key_value', 'client_labels')
    op.drop_table('client_labels')
