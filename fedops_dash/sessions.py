"""Sign-ins that outlive a browser tab: a random handle in a cookie, the token kept in the dashboard.

Why: Streamlit keeps ``st.session_state`` per browser tab (per websocket), and every link to a run,
client or model opens a new page load, so a token pasted into the sign-in form was forgotten at the
first click, a reload, or a second tab. The browser now holds only an opaque, random handle (cookie
:data:`COOKIE`); the token itself never leaves the dashboard process. Handles expire after
:data:`IDLE_S` without use, and all of them when the dashboard restarts (everyone signs in again).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field

COOKIE = "fedops_session"
IDLE_S = 12 * 3600.0  # a working day; each page load renews it


@dataclass
class SessionStore:
    """handle -> (token, last use), shared by all sessions of one dashboard process."""

    idle_s: float = IDLE_S
    _tokens: dict[str, tuple[str, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, token: str) -> str:
        """Keep ``token``; the new handle the browser's cookie carries."""
        handle = secrets.token_urlsafe(32)
        with self._lock:
            self._expire(time.monotonic())
            self._tokens[handle] = (token, time.monotonic())
        return handle

    def token(self, handle: str) -> str | None:
        """The token of a live handle (renewing it), None for an unknown or expired one."""
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            found = self._tokens.get(handle)
            if found is None:
                return None
            self._tokens[handle] = (found[0], now)
            return found[0]

    def drop(self, handle: str) -> None:
        """Forget a handle (sign-out)."""
        with self._lock:
            self._tokens.pop(handle, None)

    def _expire(self, now: float) -> None:
        for handle in [h for h, (_, used) in self._tokens.items() if now - used > self.idle_s]:
            del self._tokens[handle]


def cookie_script(handle: str, secure: bool) -> str:
    """The script that sets (or, for ``""``, deletes) the cookie in the page: Streamlit cannot set
    response cookies, so the page sets it; ``SameSite=Strict``, ``Secure`` when served over HTTPS.
    A browser-session cookie (no ``Max-Age``): the store's idle expiry decides how long a sign-in
    holds, so one in use is not cut 12 hours after it began."""
    attributes = ("; Path=/" + ("" if handle else "; Max-Age=0") + "; SameSite=Strict"
                  + ("; Secure" if secure else ""))
    return f"<script>document.cookie = {json.dumps(f'{COOKIE}={handle}{attributes}')};</script>"
