"""Synthetic requests, so ``explain`` and ``test`` run the very engine the middleware runs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote


def build_scope(
    ip: str | None,
    method: str = "GET",
    target: str = "/",
    headers: Iterable[tuple[str, str]] = (),
) -> dict[str, Any]:
    """An ASGI ``http`` scope as a server would build it for ``method target`` from ``ip``.

    ``target`` may carry a query string; the path is percent-decoded as servers do.
    """
    raw_path, _, query = target.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method.upper(),
        "scheme": "http",
        "path": unquote(raw_path) or "/",
        "raw_path": raw_path.encode("latin-1", "replace"),
        "root_path": "",
        "query_string": query.encode("latin-1", "replace"),
        "headers": [
            (name.strip().lower().encode("latin-1"), value.strip().encode("latin-1"))
            for name, value in headers
        ],
        "client": (ip, 50000) if ip else None,
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


def parse_header_option(text: str) -> tuple[str, str]:
    """``"Name: value"`` from the command line; raises ``ValueError`` without a colon."""
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise ValueError(f"header {text!r} is not 'Name: value'")
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"header {text!r} has characters HTTP headers cannot carry") from None
    return name.strip(), value.strip()
