"""The control service on PostgreSQL (a real server on loopback): migrations, a run, a restart."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy

from fedops_control.devstack import LocalStack
from fedops_control.state.db import alembic_config
from tests.backends import Postgres
from tests.test_e2e import create_task, start_clients, wait_finished

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    root = Path(tempfile.mkdtemp(prefix="fedops-pg-"))  # owned by the postgres user, outside pytest's tmp
    server = Postgres(root).start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_run_on_postgresql_survives_a_restart(postgres: Postgres, tmp_path: Path, digits_data: list[Path]) -> None:
    from alembic.script import ScriptDirectory

    stack = LocalStack(tmp_path / "stack", database_url=postgres.url())
    try:
        stack.start_control()
        task_id = create_task(stack, rounds=1)
        start_clients(stack, task_id, digits_data[:2], "pg")
        run = stack.ctl_json("run", "start", task_id)
        finished = wait_finished(stack, run["id"])
        assert finished["outcome"] == "RUN_OUTCOME_COMPLETED", finished.get("reason")
        assert (tmp_path / "stack" / "control" / "control.db").exists() is False  # nothing went to SQLite
        # Restart the control service on the same database: the history is there.
        from fedops_common.proc import stop_process_group

        assert stack.control is not None
        stop_process_group(stack.control, grace_s=15)
        stack.start_control()
        again = stack.ctl_json("run", "show", run["id"])
        assert again["outcome"] == "RUN_OUTCOME_COMPLETED" and len(again["rounds"]) == 1
        assert [m["round"] for m in stack.ctl_json("models", "list", "--task", task_id)["models"]] == [1]
    finally:
        stack.stop()
    head = ScriptDirectory.from_config(alembic_config(postgres.url())).get_current_head()
    engine = sqlalchemy.create_engine(postgres.url())
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("select version_num from alembic_version")).scalar() == head
        assert conn.execute(sqlalchemy.text("select count(*) from data_status")).scalar() >= 2
    engine.dispose()
