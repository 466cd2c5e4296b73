"""When Blink stops honouring a late ``<meta charset>``: :class:`HeadWatch` against Chromium.

The rewriter ends its hold of a page's first bytes once :class:`HeadWatch` says the browser's
meta scan has left ``<head>`` (issue 19). Saying so too soon would let a late
``<meta charset=...>`` decide an encoding the safety net never judged. Each case puts some
markup at byte 1100 of an undeclared page (past the 1024 bytes Blink always reads), then a
``<meta charset=iso-8859-5>``; Debian's headless ``chromium`` shows whether it used that meta
(``document.characterSet``). Wherever it did, the markup before the meta must not count as the
end of the head; where the walk does say the head is over, Chromium must agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from micafence.promotions.charsets import HeadWatch
from tests.conftest import ServerThread
from tests.live import answer_lifespan
from tests.test_browser import browser  # noqa: F401  (the shared Chromium fixture)

pytestmark = [pytest.mark.browser, pytest.mark.server]

LATE_META = b"<meta charset=iso-8859-5>"
# (markup, does the walk say the head is over after it?)
CASES: list[tuple[bytes, bool]] = [
    (b"<title>prices</title>", False),
    (b"<body>", True),
    (b"<div>", True),
    (b"</head>", True),
    (b"</p>", True),
    (b"<template></template>", True),
    (b"<object><param name=a value=b></object>", True),
    (b"<HTML><HEAD><BASE href=/><LINK rel=icon href=/i.png>", False),
    (b"<!DOCTYPE html>", False),
    (b"<?php echo 1 ?>", False),
    (b"plain text, no tag", False),
    (b"</title></script>", False),
    (b"<!-- <body> -->", False),
    (b"<!-- a --!><body>", True),
    (b"<!--!><body>-->", False),
    (b"<!--><body>", True),
    (b"<!---><body>", True),
    (b"<title><body></title>", False),
    (b"<TITLE><body></TITLE >", False),
    (b"<style>/* <body> */</style>", False),
    (b"<script>var s = '<body>';</script>", False),
    (b"<script><!-- var s = '<body>'; --></script>", False),
    (b"<script><!--<script></script><body></script>", False),  # the walk gives up
    (b"<link rel=a title='<body>' href=/x>", False),
    (b"<meta name=x content='<body>'>", False),
    (b"<noscript><link rel=stylesheet href=/n.css></noscript>", False),
    (b"<noscript><img src=/p.gif></noscript>", False),
    (b"<noscript><!-- </noscript><body> --></noscript>", False),  # the walk gives up
    (b"<noscript>text only</noscript><body>", True),
    (b"<title/>x</title><p>", True),
    (b"<style a='</style>'><body></style>", False),
]


def page(markup: bytes) -> bytes:
    padding = b"<!--" + b"p" * 1100 + b"-->"
    return (b"<html><head>" + padding + markup + LATE_META
            + b"</head><body><p id=t>\xe0\xe1\xe2</p></body></html>")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    last = scope["path"].rsplit("/", 1)[1]
    if not last.isdigit():  # /favicon.ico
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/html")]})
    await send({"type": "http.response.body", "body": page(CASES[int(last)][0])})


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with ServerThread(app) as server:
        yield server.url


def test_the_head_walk_never_ends_before_chromium_stops_reading_metas(
        browser: Any, url: str) -> None:  # noqa: F811
    context = browser.new_context()
    used: dict[bytes, bool] = {}
    try:
        tab = context.new_page()
        for index, (markup, _) in enumerate(CASES):
            tab.goto(f"{url}/case/{index}", wait_until="load")
            used[markup] = tab.evaluate("() => document.characterSet") == "ISO-8859-5"
    finally:
        context.close()
    wrong = []
    for markup, over in CASES:
        body = page(markup)
        said = HeadWatch().head_over(body[:body.index(LATE_META)])
        if said != over:
            wrong.append(f"{markup!r}: the walk says over={said}, the table {over}")
        if said and used[markup]:
            wrong.append(f"{markup!r}: the walk says the head is over, Chromium used the meta")
    assert not wrong, "\n".join(wrong)
    # The cases are live: Chromium used the late meta after some markup and not after other.
    # (Where the walk holds on although Chromium has stopped, as after a <noscript> holding
    # markup, the page is only held longer.)
    assert any(used.values()) and not all(used.values())
