"""The SuperLink wakes its ServerApp's Grid when a reply arrives, so no phase ends on a poll.

The observing Grid (``fedops_flower/serverapp/grid.py``) asks the SuperLink for a phase's replies,
and when none is in sleeps 0.1 s before it asks again. The last reply of a phase therefore waited
for that poll: 0.05 s on average, up to 0.1 s, in every phase (the "handler end -> phase finished"
hop of the issue-16 bench).

A run's ServerApp and its SuperLink are processes on one host that share ``FLWR_HOME`` (the
SuperLink's directory, which its SuperExec and every ServerApp inherit). The Grid binds a datagram
socket in the abstract namespace named after that directory (:class:`Waiter`: no file to clean up,
no path-length limit); the SuperLink, started as ``python -m fedops_flower.warmapps.superlink``,
sends it one empty datagram each time a SuperNode has pushed a whole reply, the message and every
object of it (:func:`install`, around Flower's Fleet handlers ``push_messages`` and
``push_object``), and the Grid's wait returns at once. The wait stays bounded by the poll
interval, so a SuperLink without the hook (a Flower release whose handlers differ, a SuperLink in
another network namespace), a datagram dropped under load, or another local process that took the
address first costs what it did before, never a lost reply. Flower's handlers, state and requests
are unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

INSTALLED_MARK = "fedops: the SuperLink wakes its ServerApp's Grid when a reply arrives"
_PREFIX = b"\0fedops-grid-wake-"


def address(flwr_home: str) -> bytes:
    """The abstract socket name of the run whose SuperLink has ``flwr_home`` (its real path)."""
    digest = hashlib.sha256(os.path.realpath(flwr_home).encode()).hexdigest()[:32]
    return _PREFIX + digest.encode()


class Waiter:
    """The Grid's side: :meth:`wait` sleeps up to its timeout, or until a reply arrived since
    :attr:`seen` was read. A listening thread takes the datagrams and wakes every waiting thread
    (Flower's legacy ``Server`` waits for each client's reply in a thread of its own)."""

    def __init__(self, sock: socket.socket | None) -> None:
        self._sock = sock
        self._arrived = threading.Condition()
        self._count = 0  # datagrams taken so far
        if sock is not None:
            threading.Thread(target=self._listen, name="fedops-grid-wake", daemon=True).start()

    @classmethod
    def open(cls, flwr_home: str | None = None) -> Waiter:
        """Bind the run's wake address; a waiter that only sleeps when there is no ``FLWR_HOME`` or
        the address is taken (another ServerApp of the same SuperLink already listens)."""
        home = flwr_home if flwr_home is not None else os.environ.get("FLWR_HOME", "")
        if not home:
            return cls(None)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(address(home))
        except OSError:
            sock.close()
            return cls(None)
        return cls(sock)

    @property
    def listening(self) -> bool:
        return self._sock is not None

    @property
    def seen(self) -> int:
        """Read before asking for replies, passed to :meth:`wait`: a reply that arrives in between
        then ends the wait at once."""
        with self._arrived:
            return self._count

    def wait(self, timeout_s: float, seen: int) -> bool:
        """Sleep ``timeout_s``, or less once a reply arrived after ``seen``; True when woken."""
        if self._sock is None:
            time.sleep(timeout_s)
            return False
        with self._arrived:
            return self._arrived.wait_for(lambda: self._count != seen, timeout_s)

    def _listen(self) -> None:
        sock = self._sock
        while sock is not None:
            try:
                sock.recv(1)
            except OSError:
                return  # closed
            with self._arrived:
                self._count += 1
                self._arrived.notify_all()

    def close(self) -> None:
        if self._sock is not None:
            sock, self._sock = self._sock, None
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class _Notifier:
    """The SuperLink's side: one datagram to the run's Grid, never blocking, never raising."""

    def __init__(self, target: bytes) -> None:
        self._target = target
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def __call__(self) -> None:
        with contextlib.suppress(OSError):  # no Grid listening (yet), or its queue is full: it polls
            self._sock.sendto(b"", self._target)


class _ReplyTracker:
    """Which reply pushes still miss objects: a reply is complete when the SuperNode has pushed
    every object the SuperLink asked it for (``objects_to_push`` of its ``PushMessages`` answer,
    in the session that answer opened). Waking the Grid on the message alone made it pull the
    reply before its arrays and retry those until they came (pulls of 0.05 to 0.30 s, a hop trace of
    the bench): the wait moved, it did not shrink."""

    MAX_OPEN = 1024  # sessions of SuperNodes that died mid-push are forgotten, oldest first

    def __init__(self, notify: Callable[[], None]) -> None:
        self._notify = notify
        self._open: OrderedDict[str, set[str]] = OrderedDict()
        self._lock = threading.Lock()

    def pushed_message(self, response: Any) -> None:
        missing = set(getattr(response, "objects_to_push", ()))
        if not missing:
            self._notify()
            return
        with self._lock:
            self._open[str(response.session_id)] = missing
            while len(self._open) > self.MAX_OPEN:
                self._open.popitem(last=False)

    def pushed_object(self, request: Any) -> None:
        with self._lock:
            missing = self._open.get(str(getattr(request, "session_id", "")))
            if missing is None:
                return
            missing.discard(str(request.object_id))
            if missing:
                return
            del self._open[str(request.session_id)]
        self._notify()


def _request(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return kwargs["request"] if "request" in kwargs else args[0]


def install(flwr_home: str | None = None) -> bool:
    """Make this process's SuperLink wake the run's Grid each time a SuperNode has pushed a whole
    reply (call before ``flower_superlink()``). False, changing nothing, without ``FLWR_HOME`` or
    when Flower's Fleet handlers differ from the ones this was written for."""
    home = flwr_home if flwr_home is not None else os.environ.get("FLWR_HOME", "")
    try:
        from flwr.superlink.servicer.fleet import fleet_handlers as module
    except ImportError:
        return False
    push_messages: Callable[..., Any] | None = getattr(module, "push_messages", None)
    push_object: Callable[..., Any] | None = getattr(module, "push_object", None)
    if not home or not callable(push_messages) or not callable(push_object):
        return False
    tracker = _ReplyTracker(_Notifier(address(home)))

    def push_messages_and_track(*args: Any, **kwargs: Any) -> Any:
        response = push_messages(*args, **kwargs)
        tracker.pushed_message(response)
        return response

    def push_object_and_track(*args: Any, **kwargs: Any) -> Any:
        response = push_object(*args, **kwargs)
        tracker.pushed_object(_request(args, kwargs))
        return response

    # Both of Flower's Fleet transports (its HTTP router, its gRPC servicer) call the handlers through
    # the module at each request: the one seam there is.
    module.push_messages = push_messages_and_track
    module.push_object = push_object_and_track
    return True
