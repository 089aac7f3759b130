"""Who is at the browser: each dashboard session acts with its operator's own API token.

Why: the control service enforces roles and writes the audit log by token, so the dashboard must call
it with the token of the person using it, not with one shared admin token. A token given to
`fedops-dash` (``--token``/``--token-file``; on loopback, the local admin token when present) is only
the session's default identity, for a one-operator machine; "Sign out" drops it for that session and
shows the sign-in form, where anyone pastes their own token (``fedopsctl token create --name alice
--role operator`` issues one). A sign-in holds for the whole browser (links, reloads, new tabs) until
"Sign out" or 12 hours unused: :mod:`fedops_dash.sessions`.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from fedops_common.words import role
from fedops_dash.backends import BackendError, Control, Settings
from fedops_dash.sessions import COOKIE, SessionStore, cookie_script

TOKEN = "fedops_token"            # the session's token (pasted, or the default)
IDENTITY = "fedops_identity"      # WhoAmI's answer for it
SIGNED_OUT = "fedops_signed_out"  # the default identity was dropped for this session
HANDLE = "fedops_handle"          # this browser's sign-in handle (its cookie)
COOKIE_DUE = "fedops_cookie_due"  # the cookie to set (a handle) or delete ("") at the next render


@st.cache_resource
def _store() -> SessionStore:
    """The sign-ins of this dashboard process (one store for every browser tab)."""
    return SessionStore()


def token() -> str:
    """The token this session's calls carry: its own, else the dashboard's default (unless signed out)."""
    if TOKEN in st.session_state:
        return str(st.session_state[TOKEN])
    if st.session_state.get(SIGNED_OUT):
        return ""
    handle = st.context.cookies.get(COOKIE, "")
    kept = _store().token(handle) if handle else None
    if kept:  # signed in earlier in this browser (another tab, before a link or a reload)
        st.session_state[TOKEN], st.session_state[HANDLE] = kept, handle
        return kept
    return Settings.from_env().token


def identity() -> dict[str, Any] | None:
    """This session's identity (name, role), asking the service once per token; None when it has none."""
    current = token()
    if not current:
        return None
    known = st.session_state.get(IDENTITY)
    if known and known.get("_token") == current:
        return dict(known)
    try:
        who = Control(Settings.from_env().control, current).whoami()
    except BackendError as err:  # a wrong or revoked token, or no service: say so on the form
        st.session_state["fedops_sign_in_error"] = str(err)
        sign_out()
        return None
    st.session_state[IDENTITY] = {**who, "_token": current}
    if TOKEN in st.session_state and HANDLE not in st.session_state:  # a token just pasted, and good
        st.session_state[HANDLE] = st.session_state[COOKIE_DUE] = _store().add(current)
    return who


def sign_in_form() -> None:
    """The sign-in form: paste an API token; the service checks it (WhoAmI) before it is kept."""
    st.header("Sign in to FedOps")
    st.write("Paste your own API token. An admin issues one with "
             "`fedopsctl token create --name YOUR_NAME --role viewer|operator|admin`; on the control host, "
             "the bootstrap admin token is in `.fedops/control/admin.token`.")
    error = st.session_state.pop("fedops_sign_in_error", "")
    if error:
        st.error(f"Sign-in failed: {error}")
    with st.form("sign-in", clear_on_submit=True):  # the secret does not stay in the page
        pasted = st.text_input("API token", type="password")
        if st.form_submit_button("Sign in", type="primary"):
            if not pasted.strip():
                st.error("API token: paste a token")
                return
            st.session_state[TOKEN] = pasted.strip()
            st.session_state.pop(IDENTITY, None)
            st.rerun()


def sign_out() -> None:
    """Forget the session's token, and its default identity too."""
    handle = st.session_state.pop(HANDLE, "") or st.context.cookies.get(COOKIE, "")
    if handle:
        _store().drop(handle)
        st.session_state[COOKIE_DUE] = ""
    for key in (TOKEN, IDENTITY):
        st.session_state.pop(key, None)
    st.session_state[SIGNED_OUT] = True


def write_cookie() -> None:
    """Set or delete this browser's sign-in cookie, when a sign-in or sign-out asked for it."""
    if COOKIE_DUE in st.session_state:
        handle = st.session_state.pop(COOKIE_DUE)
        st.html(cookie_script(handle, secure=str(st.context.url or "").startswith("https:")),
                unsafe_allow_javascript=True)


def sidebar(who: dict[str, Any]) -> None:
    """Who is signed in, with which role, and the way out."""
    st.sidebar.markdown(f"Signed in as **{who.get('name', '?')}** ({role(who.get('role', ''))})")
    if st.sidebar.button("Sign out", key="sign-out"):
        sign_out()
        st.rerun()
