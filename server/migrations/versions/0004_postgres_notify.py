"""PostgreSQL announces changes (LISTEN/NOTIFY) so workers and API processes wait instead of polling.

A trigger on predictions sends, on commit, the row's id on `vace_changes` for every new revision (a heartbeat
or a retention mark changes no revision and sends nothing), and the model's name on `vace_queue` when a row
becomes queued (created, or requeued). SQLite has no such mechanism: there readers poll.
"""

from alembic import op

revision = "0004"
down_revision = "0003"

_FUNCTION = """
CREATE OR REPLACE FUNCTION vace_announce_prediction() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.rev <> OLD.rev THEN
        PERFORM pg_notify('vace_changes', NEW.id);
    END IF;
    IF NEW.status = 'queued' AND (TG_OP = 'INSERT' OR OLD.status <> 'queued') THEN
        PERFORM pg_notify('vace_queue', NEW.model);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(_FUNCTION)
    op.execute("CREATE TRIGGER predictions_announce AFTER INSERT OR UPDATE ON predictions "
               "FOR EACH ROW EXECUTE FUNCTION vace_announce_prediction()")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS predictions_announce ON predictions")
    op.execute("DROP FUNCTION IF EXISTS vace_announce_prediction()")
