"""The SuperLink wakes its ServerApp's Grid when a whole reply is in (real sockets; Flower's Fleet
handlers replaced by fakes here, the real SuperLink in every end-to-end run: ``test_warm_apps``)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fedops_flower.serverapp import grid as grid_module
from fedops_flower.serverapp.grid import ObservedGrid
from fedops_flower.serverapp.reporter import Reporter, RunState
from fedops_flower.warmapps import gridwake


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    return str(tmp_path)


def test_a_datagram_ends_the_wait_and_one_sent_before_the_wait_is_not_lost(home: str) -> None:
    waiter = gridwake.Waiter.open()
    notify = gridwake._Notifier(gridwake.address(home))
    try:
        assert waiter.listening
        assert waiter.wait(0.05, waiter.seen) is False  # nothing arrived: the whole timeout
        seen = waiter.seen
        notify()  # arrives between the Grid's pull and its wait
        assert waiter.wait(30.0, seen) is True
        seen = waiter.seen
        threading.Timer(0.05, notify).start()
        assert waiter.wait(30.0, seen) is True
    finally:
        waiter.close()


def test_every_waiting_thread_is_woken(home: str) -> None:
    """Flower's legacy Server waits for each client's reply in a thread of its own."""
    waiter = gridwake.Waiter.open()
    woken: list[bool] = []
    seen = waiter.seen
    threads = [threading.Thread(target=lambda: woken.append(waiter.wait(30.0, seen))) for _ in range(3)]
    for thread in threads:
        thread.start()
    gridwake._Notifier(gridwake.address(home))()
    for thread in threads:
        thread.join(30)
    waiter.close()
    assert woken == [True, True, True]


def test_without_a_home_or_with_the_address_taken_the_waiter_only_sleeps(home: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    first = gridwake.Waiter.open()
    second = gridwake.Waiter.open()  # a second ServerApp of the same SuperLink
    monkeypatch.delenv("FLWR_HOME")
    homeless = gridwake.Waiter.open()
    try:
        assert first.listening and not second.listening and not homeless.listening
        gridwake._Notifier(gridwake.address(home))()
        assert second.wait(0.05, second.seen) is False
    finally:
        first.close()
    gridwake._Notifier(gridwake.address(home))()  # nobody listens any more: silently dropped


def test_addresses_differ_per_superlink_directory(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a")
    assert gridwake.address(str(tmp_path / "a")) != gridwake.address(str(tmp_path / "b"))
    assert gridwake.address(str(tmp_path / "link")) == gridwake.address(str(tmp_path / "a"))


def test_a_reply_wakes_once_its_last_object_is_pushed() -> None:
    calls: list[int] = []
    tracker = gridwake._ReplyTracker(lambda: calls.append(1))
    tracker.pushed_message(SimpleNamespace(objects_to_push=["a", "b"], session_id="s1"))
    tracker.pushed_object(SimpleNamespace(session_id="s1", object_id="a"))
    tracker.pushed_object(SimpleNamespace(session_id="other", object_id="b"))  # another session's object
    assert calls == []
    tracker.pushed_object(SimpleNamespace(session_id="s1", object_id="b"))
    assert calls == [1]
    tracker.pushed_object(SimpleNamespace(session_id="s1", object_id="b"))  # a retried push: no second wake
    tracker.pushed_message(SimpleNamespace(objects_to_push=[], session_id="s2"))  # all objects already there
    assert calls == [1, 1]


def test_sessions_never_completed_are_forgotten_oldest_first() -> None:
    calls: list[int] = []
    tracker = gridwake._ReplyTracker(lambda: calls.append(1))
    for i in range(tracker.MAX_OPEN + 5):
        tracker.pushed_message(SimpleNamespace(objects_to_push=["x"], session_id=f"s{i}"))
    assert len(tracker._open) == tracker.MAX_OPEN
    tracker.pushed_object(SimpleNamespace(session_id="s0", object_id="x"))  # forgotten
    tracker.pushed_object(SimpleNamespace(session_id=f"s{tracker.MAX_OPEN + 4}", object_id="x"))
    assert calls == [1]


def test_install_wraps_flowers_fleet_handlers_and_the_grid_is_woken(home: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.superlink.servicer.fleet import fleet_handlers

    pushed: list[str] = []

    def push_messages(request: Any, state: Any) -> Any:
        pushed.append("message")
        return SimpleNamespace(objects_to_push=["o1"], session_id="s1")

    def push_object(request: Any, state: Any) -> Any:
        pushed.append(request.object_id)
        return SimpleNamespace(stored=True)

    monkeypatch.setattr(fleet_handlers, "push_messages", push_messages)
    monkeypatch.setattr(fleet_handlers, "push_object", push_object)
    waiter = gridwake.Waiter.open()
    try:
        assert gridwake.install()
        seen = waiter.seen
        answer = fleet_handlers.push_messages(request=SimpleNamespace(), state=None)
        assert answer.session_id == "s1"
        assert waiter.wait(0.05, seen) is False  # the message alone: its object is still missing
        fleet_handlers.push_object(SimpleNamespace(session_id="s1", object_id="o1"), None)
        assert waiter.wait(30.0, seen) is True
        assert pushed == ["message", "o1"]
    finally:
        waiter.close()


def test_install_changes_nothing_without_a_home_or_flowers_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.superlink.servicer.fleet import fleet_handlers

    monkeypatch.delenv("FLWR_HOME", raising=False)
    before = fleet_handlers.push_messages
    assert gridwake.install() is False
    monkeypatch.setenv("FLWR_HOME", "/tmp")
    monkeypatch.delattr(fleet_handlers, "push_object")
    assert gridwake.install() is False
    assert fleet_handlers.push_messages is before


class Events:
    """An observer that keeps the ServerApp's reports."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def server_event(self, event: Any) -> Any:
        self.events.append(event)
        return SimpleNamespace(stop_requested=False)


class LateReply:
    """An inner Grid whose one reply is in ``after_s`` seconds after the push, when the SuperLink
    (here: a timer) says so."""

    def __init__(self, home: str, after_s: float) -> None:
        self.after_s = after_s
        self.ready = threading.Event()
        self.pulls = 0
        self.notify = gridwake._Notifier(gridwake.address(home))

    def push_messages(self, messages: list[Any]) -> list[str]:
        def arrive() -> None:
            self.ready.set()
            self.notify()

        threading.Timer(self.after_s, arrive).start()
        return ["m1"]

    def pull_messages(self, ids: Any) -> list[Any]:
        self.pulls += 1
        if not self.ready.is_set():
            return []
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id="m1", src_node_id=7),
                                has_error=lambda: True, error=SimpleNamespace(reason="boom", code=0))]


def test_the_grid_takes_a_reply_when_woken_not_at_its_next_poll(home: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grid_module, "POLL_INTERVAL_S", 60.0)  # a poll would take a minute
    inner = LateReply(home, after_s=0.05)
    state = RunState("run-1", round_timeout_s=120, quorum=0, node_count=1)
    events = Events()
    observed = ObservedGrid(inner, Reporter(observer=events, state=state))
    message = SimpleNamespace(metadata=SimpleNamespace(message_type="train", dst_node_id=7, group_id="1"),
                              has_error=lambda: True)
    started = time.monotonic()
    replies = list(observed.send_and_receive([message]))
    assert len(replies) == 1 and inner.pulls == 2
    assert [e.WhichOneof("event") for e in events.events] == ["phase_started", "replies", "phase_finished"]
    assert time.monotonic() - started < 30  # woken: not the 60 s poll
