"""Flower apps from git (URL + ref + subdirectory), as the FedOps guide's tasks reference them."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedops_control.devstack import LocalStack
from fedops_control.errors import InvalidArgument
from fedops_control.run.bundle import fetch_app
from tests.conftest import DIGITS_APP, control_stack
from tests.test_e2e import wait_finished, wait_for


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def app_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository holding the digits app under apps/digits, tagged v1."""
    repo = tmp_path_factory.mktemp("app-repo")
    shutil.copytree(DIGITS_APP, repo / "apps" / "digits", ignore=shutil.ignore_patterns("__pycache__"))
    git(repo, "init", "--quiet", "--initial-branch", "main")
    git(repo, "-c", "user.email=t@example.org", "-c", "user.name=t", "add", ".")
    git(repo, "-c", "user.email=t@example.org", "-c", "user.name=t", "commit", "--quiet", "-m", "digits app")
    git(repo, "tag", "v1")
    return repo


def test_fetch_by_branch_tag_and_commit(app_repo: Path, tmp_path: Path) -> None:
    commit = git(app_repo, "rev-parse", "HEAD")
    for i, ref in enumerate(["main", "v1", commit]):
        app = fetch_app({"git": {"url": f"file://{app_repo}", "ref": ref, "subdirectory": "apps/digits"}},
                        tmp_path / f"w{i}")
        assert (app / "pyproject.toml").read_text() == (DIGITS_APP / "pyproject.toml").read_text()
    with pytest.raises(InvalidArgument) as bad_ref:
        fetch_app({"git": {"url": f"file://{app_repo}", "ref": "no-such-ref", "subdirectory": "apps/digits"}},
                  tmp_path / "bad")
    assert bad_ref.value.field == "app.git" and "no-such-ref" in bad_ref.value.message
    with pytest.raises(InvalidArgument) as escape:
        fetch_app({"git": {"url": f"file://{app_repo}", "ref": "v1", "subdirectory": "../.."}}, tmp_path / "esc")
    assert escape.value.field == "app.git.subdirectory"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with control_stack(tmp_path_factory.mktemp("git-stack")) as local:
        yield local


@pytest.mark.e2e
def test_run_from_a_git_tag(stack: LocalStack, app_repo: Path, digits_data: list[Path]) -> None:
    task = stack.ctl_json("task", "create", "--title", "from git", "--git-url", f"file://{app_repo}",
                          "--git-ref", "v1", "--git-subdir", "apps/digits", "--rounds", "1", "--min-clients", "2",
                          "--round-timeout", "120", "--hp", "local-epochs=1")
    assert task["app"]["git"] == {"url": f"file://{app_repo}", "ref": "v1", "subdirectory": "apps/digits"}
    for i, path in enumerate(digits_data[:2]):
        stack.start_agent(f"git{i}", [task["id"]], path)
    clients = [stack.client_id(f"git{i}") for i in range(2)]
    wait_for(lambda: all(c["state"] == "CLIENT_STATE_ONLINE"
                         for c in stack.ctl_json("clients", "list", "--task", task["id"])["clients"]), 30)
    stack.ctl("task", "select", task["id"], *clients)
    run = stack.ctl_json("run", "start", task["id"])
    finished = wait_finished(stack, run["id"])
    assert finished["outcome"] == "RUN_OUTCOME_COMPLETED", finished.get("reason")
    assert len(finished["rounds"]) == 1 and finished["rounds"][0]["central_metrics"]["accuracy"] > 0
    # Point the task at a ref that does not exist: the next run fails with the reason, instead of hanging.
    updated = stack.ctl_json("task", "update", task["id"], "--git-url", f"file://{app_repo}", "--git-ref", "nope",
                             "--git-subdir", "apps/digits", "--rounds", "2")
    assert updated["app"]["git"]["ref"] == "nope" and updated["strategy"]["rounds"] == 2
    assert updated["strategy"]["min_clients"] == 2  # untouched settings stay
    failed = wait_finished(stack, stack.ctl_json("run", "start", task["id"])["id"])
    assert failed["outcome"] == "RUN_OUTCOME_FAILED" and "app.git" in failed["reason"] and "nope" in failed["reason"]
    nothing = stack.ctl("task", "update", task["id"], check=False)
    assert nothing.returncode == 2 and "nothing to change" in nothing.stderr
