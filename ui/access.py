"""Who may use the chat page: this machine only, unless it is shared on purpose.

The page chats as you with the server's API key (which stays in the page's Python process), so anyone who
can open it can chat as you. `python -m ui` binds 127.0.0.1 and tells Streamlit to accept only local
Host names (`server.allowedHosts`, against DNS rebinding); the page itself checks again on every run
(`refusal`), which also covers `streamlit run ui/app.py`, whose default is every network interface.
Sharing it (`python -m ui --host 0.0.0.0`, or TWIN_UI_HOST) is allowed, with a warning.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

HOST_ENV = "TWIN_UI_HOST"
"""The address the page is meant to listen on; set by `python -m ui` (`--host`) or by hand."""
DEFAULT_HOST = "127.0.0.1"
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
"""Host names a browser on this machine uses for the page; Streamlit's `server.allowedHosts`."""


def is_loopback(host: str | None) -> bool:
    """True for localhost and loopback addresses; False for everything else, "" (all interfaces) too."""
    host = (host or "").strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def hostname(value: str | None) -> str | None:
    """The host name in a Host header (`127.0.0.1:8501`, `[::1]:8501`) or an Origin (`http://x:1`)."""
    if not value:
        return None
    try:
        parts = urlsplit(value if "://" in value else f"//{value}")
        _ = parts.port  # a malformed port is a malformed header
    except ValueError:
        return None
    return (parts.hostname or "").rstrip(".").lower() or None


def share_warning(host: str) -> str:
    return (
        f"WARNING: the chat page listens on {host}: anyone who can reach this machine can chat as you "
        "(with your server's API key). Leave out --host to keep it to this machine."
    )


def refusal(headers: Mapping[str, str], bound: str | None, shared: str | None) -> str | None:
    """Why the page must not render for the browser that sent `headers`, or None when it may.

    `bound` is the address Streamlit listens on (None or "": every interface), `shared` the address it
    was deliberately shared on (TWIN_UI_HOST). No headers means no browser (Streamlit's AppTest).
    """
    if not headers:
        return None
    if shared and not is_loopback(shared):
        return None  # shared on purpose; Streamlit still refuses foreign Origins (server.enableCORS)
    if not is_loopback(bound):
        where = bound or "every network interface"
        return (
            f"This page listens on {where}, so anyone on the network could chat as you. Start it with "
            "`python -m ui` (this machine only), or share it on purpose with `python -m ui --host "
            f"{bound or '0.0.0.0'}`."
        )
    lowered = {k.lower(): v for k, v in headers.items()}
    host = hostname(lowered.get("host"))
    if host not in LOCAL_NAMES:
        said = host if host and re.fullmatch(r"[a-z0-9.:_-]{1,253}", host) else "none or unreadable"
        return (
            "This page answers only at localhost or 127.0.0.1; it was opened under another name "
            f"({said}). Open http://localhost:<port> instead."
        )
    origin = lowered.get("origin")
    if origin and hostname(origin) not in LOCAL_NAMES:
        return "This page answers only to itself; another web site tried to open it."
    return None
