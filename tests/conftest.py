"""Shared fixtures: the digits example's data, and local stacks of real processes."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from fedops_control.devstack import LocalStack

ROOT = Path(__file__).resolve().parents[1]
DIGITS_APP = ROOT / "examples" / "digits"
sys.path.insert(0, str(DIGITS_APP))


@pytest.fixture(autouse=True)
def _keep_main_module() -> Iterator[None]:
    """Put back ``sys.modules["__main__"]`` after each test.

    Streamlit's ``AppTest`` runs a page as ``__main__`` and leaves it there; the agent's fork server
    (``fedops_agent.forkserver``) preloads ``__main__``, so a later test starting it ran a dashboard
    page in the fork server instead of starting a SuperNode (seen in a whole-suite CI run).
    """
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@pytest.fixture(scope="session")
def digits_data(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three non-IID partitions of scikit-learn's digits."""
    from digits_app.task import write_partitions

    root = tmp_path_factory.mktemp("digits-data")
    dirs = [root / f"client{i}" for i in range(3)]
    write_partitions(dirs)
    return dirs


@pytest.fixture(scope="session")
def elasticsearch(tmp_path_factory: pytest.TempPathFactory):
    """A real single-node Elasticsearch on loopback, for the whole session."""
    import shutil
    import tempfile

    from tests.backends import Elasticsearch

    # Not under pytest's tmp dir: that is private to root, and Elasticsearch runs as its own user.
    root = Path(tempfile.mkdtemp(prefix="fedops-es-"))
    server = Elasticsearch(root).start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite database migrated to head for the whole session (migrating takes a while)."""
    from fedops_control.state.db import open_database, sqlite_url

    path = tmp_path_factory.mktemp("db") / "template.db"
    open_database(sqlite_url(path)).kw["bind"].dispose()
    return path


@pytest.fixture
def db_sessions(tmp_path: Path, migrated_db: Path) -> Iterator[Any]:
    """A sessionmaker on a fresh copy of the migrated database, for unit tests of the control service."""
    import shutil

    from sqlalchemy.orm import sessionmaker

    from fedops_control.state.db import make_engine, sqlite_url

    path = tmp_path / "control.db"
    shutil.copyfile(migrated_db, path)
    factory = sessionmaker(make_engine(sqlite_url(path)), expire_on_commit=False)
    yield factory
    factory.kw["bind"].dispose()


@contextlib.contextmanager
def control_stack(root: Path, **options: Any) -> Iterator[LocalStack]:
    """A LocalStack with its control service started; everything stopped afterwards."""
    from fedops_control.devstack import LocalStack

    stack = LocalStack(root, **options)
    try:
        stack.start_control()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A real Kubernetes control plane on loopback (etcd, kube-apiserver, scheduler, controller
    manager) with one kwok node; see tests/kube.py. Fails when scripts/install_k8s.sh has not run."""
    from tests.kube import KubeCluster

    cluster = KubeCluster(tmp_path_factory.mktemp("kube"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use the Kubernetes harness (``tests/kube.py``) run last: on a fresh machine
    ``make test`` builds its binaries in the background meanwhile (``install_k8s.sh --background``).
    The container tests run just before them: their FL runs in containers (a cold torch import in
    three containers at once) are the most sensitive to a loaded machine, and on a fresh machine
    the background build (at the lowest priority, but with its disk and memory traffic) is then
    most likely done. In a fresh-machine run with them early (at 15 %), the build was compiling
    kube-apiserver meanwhile and their rounds timed out."""
    def uses(item: pytest.Item, harness: str) -> bool:
        module = getattr(item, "module", None)
        return any(getattr(value, "__module__", None) == harness for value in vars(module).values()) \
            if module is not None else False

    # stable: the order within each group is kept
    items.sort(key=lambda item: 2 if uses(item, "tests.kube") else 1 if uses(item, "tests.containers") else 0)
