"""Engine, sessions and migrations. SQLite file by default, any SQLAlchemy URL accepted."""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
T = TypeVar("T")
Item = TypeVar("Item")
Result = TypeVar("Result")


def alembic_config(url: str) -> Config:
    """Alembic config pointing at our migrations and ``url``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def make_engine(url: str) -> Engine:
    """Create the engine; SQLite gets WAL and foreign keys for concurrent readers."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return create_engine(url, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    cfg = alembic_config(str(engine.url))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def open_database(url: str) -> sessionmaker[Session]:
    """Create the engine, migrate, and return a session factory."""
    engine = make_engine(url)
    migrate(engine)
    return sessionmaker(engine, expire_on_commit=False)


def sqlite_url(path: Path) -> str:
    """SQLAlchemy URL of a SQLite file."""
    return f"sqlite:///{path.resolve()}"


class DatabaseWriter:
    """Runs the agents' database writes off the event loop, on a pool of ``threads`` (default one).

    One thread for SQLite, which admits one writer at a time anyway, and for PostgreSQL too: the
    writes that come in bursts (registrations, sessions opened) are committed in groups
    (:class:`GroupCommit`), so one thread's round trips are shared by a whole group. More threads
    cost more than their overlapping round trips gain on a busy core: enrolments per second with
    1, 2 and 4 threads were 1,820-1,910, 1,036 and 464, the service's CPU per enrolment 0.49-0.52,
    0.95 and 1.97 ms (``bench/enrolment_cost.py --service``, PostgreSQL 15 on the same machine,
    the service on one core): every thread woken from a round trip must take the GIL back from the
    event loop. More may pay off against a PostgreSQL many milliseconds away
    (``fedops-control --database-threads``). Work submitted by one agent session runs in order,
    because the session awaits each write before reading its next message.
    """

    def __init__(self, threads: int = 1) -> None:
        self.workers = threads
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="fedops-db")

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args))

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class GroupCommit(Generic[Item, Result]):
    """Items submitted one by one on the event loop, handed to the database thread in groups.

    ``commit`` runs on the database thread with every item that arrived while the previous group was
    being committed (at most ``max_batch``, in arrival order) and returns one result per item: its
    value, or the exception that item's caller gets. The first item of an idle service goes alone at
    once, so a group adds no latency: it forms only while the thread is busy, which is when one
    transaction per item would cost the most (a commit, a thread hand-off and a wake-up of the loop
    each). ``parallel`` groups may be in flight (the writer's threads, one by default). Items whose
    caller was cancelled before their group started are dropped.
    """

    def __init__(self, write: DatabaseWriter, commit: Callable[[list[Item]], Sequence[Result | Exception]],
                 max_batch: int, parallel: int = 1) -> None:
        self._write, self._commit, self._max_batch, self._parallel = write, commit, max_batch, parallel
        self._pending: deque[tuple[Item, asyncio.Future[Result]]] = deque()
        self._draining = 0  # drains running; counted down in the drain itself, before it returns
        self._drains: set[asyncio.Task[None]] = set()  # references: the loop keeps only weak ones

    async def __call__(self, item: Item) -> Result:
        """Commit ``item`` with its group; its result, or its exception raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((item, future))
        if self._draining < self._parallel:
            self._draining += 1
            drain = loop.create_task(self._drain())
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        return await future

    async def _drain(self) -> None:
        try:
            await self._drain_groups()
        finally:  # no await between the last look at _pending and this: no item is left behind
            self._draining -= 1

    async def _drain_groups(self) -> None:
        while self._pending:
            group: list[tuple[Item, asyncio.Future[Result]]] = []
            while self._pending and len(group) < self._max_batch:
                item, future = self._pending.popleft()
                if not future.done():  # not cancelled by its caller
                    group.append((item, future))
            if not group:
                continue
            try:
                results: Sequence[Result | Exception] = await self._write(self._commit, [item for item, _ in group])
            except Exception as err:  # the commit function itself failed: every item of the group fails
                results = [err] * len(group)
            for (_, future), result in zip(group, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
