"""Loopback, the one rule: the load test and the metrics monitor talk to a server on this machine, never another one
(a load test pointed at someone else's server is a denial of service); the server needs an API key anywhere else."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_loopback(url: Any) -> str:
    """Return ``url`` without a trailing ``/`` or ``/v1`` when its host is this machine; else ValueError naming
    the URL as given and the fix."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url must be an http URL of a server on this machine, got {url!r}; "
                         "e.g. url='http://127.0.0.1:8000'")  # fmt: skip
    if not is_loopback(parts.hostname):
        raise ValueError(f"the load test only runs against this machine (hosts {', '.join(LOOPBACK_HOSTS)}), "
                         f"got host {parts.hostname!r} in {url!r}; start the server here and pass "
                         "e.g. url='http://127.0.0.1:8000'")  # fmt: skip
    return url.rstrip("/").removesuffix("/v1")


__all__ = ["LOOPBACK_HOSTS", "check_loopback", "is_loopback"]
