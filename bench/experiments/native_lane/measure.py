"""Issue 20 experiment: the non-restricted neutral request with its hottest steps fused into one
Python function ("fused"), the same with two of them native (_lane.c: "native"), and with every
check of the shortcut native, Python only awaiting the app ("native_lane"), against
the bare trivial route and micafence in the same paired rounds. Not part of micafence: an upper
bound for what each lever can reach, on requests where the shortcut applies (checked: every
request of the class takes it, and the answers' statuses match micafence's).

    gcc -O2 -shared -fPIC $(python3.11-config --includes) _lane.c \
        -o _lane$(python3.11-config --extension-suffix)
    cd bench && ../.venv/bin/python experiments/native_lane/measure.py [CLASS] [COUNT] [--pieces]

``--pieces`` times single steps in place instead: an empty Python call, the visitor's memo
look-up, the look-up and four field reads, the C send wrapper alone.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _lane

from micafence.decision import STATE_KEY, Decision
from micafence.policy.model import Outcome, PromotionStance
from micafence.promotions.mime import _ONE_LINE, may_be_page
from micafence_tools.bench import apps
from micafence_tools.bench.inprocess import measure
from micafence_tools.bench.runner import inprocess_classes

logging.getLogger("micafence").setLevel(logging.ERROR)
trivial = apps.trivial_app()
micafence = apps.guarded(trivial, watch=False)
enforcer, pipeline = micafence.enforcer, micafence.pipeline
ALLOW, ALLOWED = Outcome.ALLOW, PromotionStance.ALLOWED
visitors = enforcer._visitors._entries  # the decide() memo micafence itself fills
wanted = enforcer._signal_headers
memo = _ONE_LINE._entries
mark_headers = enforcer.promotions.cache.mark
plans: dict[str, bool] = {}  # path -> a plain route (no sign-up, not zone-dependent)
taken = [0]


def plain(path: str) -> bool:
    found = plans.get(path)
    if found is None:
        found = plans[path] = not (enforcer.on_sign_up_path({"path": path, "type": "http"})
                                   or enforcer.promotions.zone_route({"path": path}))
    return found


def mark(message: dict[str, Any]) -> dict[str, Any]:
    return {**message, "headers": mark_headers(message.get("headers") or (), False)}


def usable(entry: object, scope: dict[str, Any]) -> bool:
    return (entry.__class__ is Decision and entry.outcome is ALLOW  # type: ignore[attr-defined]
            and entry.client_id is None and not entry.restricted  # type: ignore[attr-defined]
            and entry.residence_country is None  # type: ignore[attr-defined]
            and entry.promotion_stance is ALLOWED  # type: ignore[attr-defined]
            and scope["method"] in ("GET", "HEAD") and plain(scope["path"]))


async def fused(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        for name, _ in scope["headers"]:
            if name in wanted:
                break
        else:
            client = scope["client"]
            entry = visitors.get(client[0]) if client[1] else None
            if usable(entry, scope):
                taken[0] += 1
                scope["state"][STATE_KEY] = entry

                def send_private_if_page(message: Any) -> Any:
                    if message["type"] == "http.response.start" and may_be_page(
                            message.get("headers") or ()):
                        message = mark(message)
                    return send(message)

                await trivial(scope, receive, send_private_if_page)
                return
    await micafence(scope, receive, send)


async def native(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        entry = _lane.front(scope, wanted, visitors)
        if usable(entry, scope):
            taken[0] += 1
            scope["state"][STATE_KEY] = entry
            await trivial(scope, receive, _lane.CacheSafeSend(send, memo, may_be_page, mark))
            return
    await micafence(scope, receive, send)


async def native_lane(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        entry = _lane.lane(scope, wanted, visitors, ALLOW, ALLOWED, plans)
        if entry is not None:
            taken[0] += 1
            scope["state"][STATE_KEY] = entry
            await trivial(scope, receive, _lane.CacheSafeSend(send, memo, may_be_page, mark))
            return
        if not plans:  # learn the paths once (a real lane would fill this per policy)
            plain(scope["path"])
    await micafence(scope, receive, send)


# --pieces: what single steps cost in place (each app does one thing, then awaits the route).
def _noop(scope: Any, send: Any) -> bool:
    return True


async def call_empty(scope: Any, receive: Any, send: Any) -> None:
    _noop(scope, send)
    await trivial(scope, receive, send)


async def lookup(scope: Any, receive: Any, send: Any) -> None:
    visitors.get(scope["client"][0])
    await trivial(scope, receive, send)


async def lookup_read(scope: Any, receive: Any, send: Any) -> None:
    entry = visitors[scope["client"][0]]
    if entry.outcome is None or entry.client_id is not None or entry.restricted \
            or entry.promotion_stance is None:
        raise AssertionError("not a decision")
    await trivial(scope, receive, send)


async def c_wrapper(scope: Any, receive: Any, send: Any) -> None:
    await trivial(scope, receive, _lane.CacheSafeSend(send, memo, may_be_page, mark))


async def main() -> None:
    pieces = "--pieces" in sys.argv
    args = [arg for arg in sys.argv[1:] if arg != "--pieces"]
    name = args[0] if args else "neutral_unrestricted"
    count = int(args[1]) if len(args) > 1 else 20000
    requests = inprocess_classes(enforcer, count).plain[name]
    plain("/healthz")
    gc.collect()
    gc.freeze()
    apps_timed: dict[str, Any] = {"bare": trivial, "micafence": micafence, "fused": fused,
                                  "native": native, "native_lane": native_lane}
    if pieces:
        apps_timed = {"bare": trivial, "call_empty": call_empty, "lookup": lookup,
                      "lookup_read": lookup_read, "c_wrapper": c_wrapper}
    result = await measure(name, requests, apps_timed)
    bare = result.bare.p50_us
    print(f"# {name}, {count} requests, load {os.getloadavg()[0]:.2f}; shortcut taken "
          f"{taken[0]} times; statuses {result.statuses}")
    for label, timing in result.timings.items():
        print(f"{label:10} {timing.p50_us:7.2f} µs  {timing.p50_us - bare:+6.2f}  "
              f"{(timing.p50_us - bare) / bare:+.3f}")


asyncio.run(main())
