"""The app's own ``print()`` output, captured into the run's logs.

Flower's SuperExec starts ServerApp and ClientApp processes with their stdout and stderr
discarded, so whatever a user's app prints would be lost. The wrappers replace
``sys.stdout``/``sys.stderr`` with a tee: each complete line still goes to the original
stream and also becomes a log record (logger ``app``, ``labels.stream`` stdout/stderr)
carrying the ids bound in that context (run, round, client), which the agent's or the
control service's shipper sends to Elasticsearch like any other log line.
"""

from __future__ import annotations

import io
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from fedops_common.logging import get_logger

MAX_LINE_CHARS = 8192  # a runaway line (a progress bar without newlines) is cut, not buffered forever


class _Tee(io.TextIOBase):
    """Writes through to ``original`` and logs every complete line."""

    def __init__(self, name: str, original: TextIO) -> None:
        super().__init__()
        self._name = name
        self._original = original
        self._buffer = ""
        self._local = threading.local()
        self._lock = threading.Lock()

    @property
    def encoding(self) -> str:  # type: ignore[override]  # TextIOBase declares it a plain attribute
        return getattr(self._original, "encoding", "utf-8")

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        try:
            self._original.write(text)
        except (OSError, ValueError):  # a closed or broken original stream must not break the app
            pass
        if getattr(self._local, "busy", False):  # a log handler writing to this stream: no loop
            return len(text)
        with self._lock:
            self._buffer += text
            *lines, self._buffer = self._buffer.split("\n")
            if len(self._buffer) > MAX_LINE_CHARS:
                lines.append(self._buffer)
                self._buffer = ""
        for line in lines:
            self._log(line)
        return len(text)

    def _log(self, line: str) -> None:
        line = line.rstrip("\r")
        if not line.strip():
            return
        self._local.busy = True
        try:
            get_logger("app").info(line[:MAX_LINE_CHARS], stream=self._name)
        finally:
            self._local.busy = False

    def flush(self) -> None:
        with self._lock:
            rest, self._buffer = self._buffer, ""
        if rest:
            self._log(rest)
        try:
            self._original.flush()
        except (OSError, ValueError):
            pass

    def fileno(self) -> int:
        return self._original.fileno()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


def capture_output() -> Callable[[], None]:
    """Tee this process's stdout and stderr into its logs; returns a function that undoes it."""
    originals = sys.stdout, sys.stderr
    if isinstance(sys.stdout, _Tee):  # already captured (a second ClientApp message in this process)
        return lambda: None
    sys.stdout = _Tee("stdout", originals[0])
    sys.stderr = _Tee("stderr", originals[1])

    def restore() -> None:
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, _Tee):
                stream.flush()
        sys.stdout, sys.stderr = originals

    return restore
