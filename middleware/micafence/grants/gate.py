"""Enforcement of client-initiated scopes on service routes.

The engine decides ``require_grant`` for restricted visitors on service routes; the pipeline
(:mod:`micafence.pipeline`) then awaits :meth:`ScopeGate.check`, which reads the client's
grants from the store and, only if there are any, the service and assets the request names
(path parameter, query parameter, JSON body field or a ``BASE-QUOTE`` trading pair, whose
service is the route's declared one when it gives one, else guessed from the quote). Requests
no rule restricts never get here.

Reading the body is bounded (``scopes.max_body_bytes``) and replayed: the app receives exactly
the messages the server sent. A body that is too large, not JSON, ambiguous (a key given twice)
or missing the field is out of scope (``<zone>.scope_unreadable``), never a crash.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from micafence.asgi import Message, Receive, Scope
from micafence.caches import BoundedCache
from micafence.decision import Decision
from micafence.instants import Clock, utc_now
from micafence.policy.catalogue import (
    EXCHANGE_FOR_CRYPTO,
    EXCHANGE_FOR_FUNDS,
    SYMBOL,
    Catalogue,
    RouteScope,
    Source,
    is_fiat,
)
from micafence.policy.model import Policy
from micafence.policy.routes import normalize_path, route_paths
from micafence.reasons import Reason
from micafence.records import Grant, GrantState
from micafence.store.base import Store

logger = logging.getLogger("micafence.grants.gate")

IN_SCOPE = Reason.IN_SCOPE
NO_GRANT = Reason.NO_GRANT
OUT_OF_SCOPE_SERVICE = Reason.OUT_OF_SCOPE_SERVICE
OUT_OF_SCOPE_ASSET_TYPE = Reason.OUT_OF_SCOPE_ASSET_TYPE
GRANT_EXPIRED = Reason.GRANT_EXPIRED
SCOPE_UNREADABLE = Reason.SCOPE_UNREADABLE
STORE_UNAVAILABLE = Reason.STORE_UNAVAILABLE
_LOG_EVERY = 10.0  # seconds between tracebacks of a failing store
_MEMO_LIMIT = 4096  # settled decisions kept (clients x scopes); forgotten all at once when full

#: Pair values up to this long have their scope remembered (:data:`_pair_scope`).
_PAIR_KEY_CHARS = 40
_PAIR = re.compile(r"([A-Z0-9]{1,16})[-/_]([A-Z0-9]{1,16})")


class RequestedScope(NamedTuple):
    """What one request asks for: a service and the crypto-assets it touches (maybe none).

    A named tuple: it keys the gate's memo on every grant check, and a tuple hashes in C."""

    service: str
    assets: tuple[str, ...]


class ScopeVerdict(NamedTuple):
    """What the client's grants say of a request (``IN_SCOPE``, ``GRANT_EXPIRED``, …)."""

    reason: Reason
    grant_ids: tuple[str, ...] = ()


_NO_GRANT = ScopeVerdict(NO_GRANT)
_STORE_UNAVAILABLE = ScopeVerdict(STORE_UNAVAILABLE)
_OUT_OF_SCOPE_SERVICE = ScopeVerdict(OUT_OF_SCOPE_SERVICE)
_SCOPE_UNREADABLE = ScopeVerdict(SCOPE_UNREADABLE)


#: How the caller turns a decision and its verdict into the settled decision (the pipeline's).
Settle = Callable[[Decision, "ScopeVerdict"], Decision]


class ScopeGate:
    """Checks ``require_grant`` decisions against the store's grants and a clock.

    ``settle`` turns a decision and its verdict into the decision the request goes on with
    (:meth:`micafence.pipeline.Pipeline`'s): a remembered verdict is kept with what ``settle``
    made of it, so the usual grant check ends at one look-up."""

    def __init__(self, store: Store, *, settle: Settle, clock: Clock = utc_now) -> None:
        self.store = store
        self.settle = settle
        self.clock = clock
        self._logged_at = -_LOG_EVERY  # monotonic time of the last outage traceback
        self._timestamp: Callable[[], float] = (
            time.time if clock is utc_now else (lambda: clock().timestamp())
        )
        # A client's orders repeat the same decision (the engine caches it per visitor and
        # route) and the same requested scope: their verdict is kept per both.
        self._memo: BoundedCache[tuple[int, RequestedScope], _Memo] = BoundedCache(_MEMO_LIMIT)

    async def check(
        self, policy: Policy, decision: Decision, scope: Scope, receive: Receive
    ) -> tuple[Decision, Receive]:
        """A ``require_grant`` decision settled by what the client's grants say of its
        request (a :class:`ScopeVerdict`, through ``settle``), and the ``receive`` the app must
        use (it replays whatever was read of the body)."""
        settle = self.settle
        client = decision.client_id
        if client is None:  # an unidentified visitor cannot hold a grant
            return settle(decision, _NO_GRANT), receive
        store = self.store
        try:
            # The store's local copy when it holds one (no coroutine), else the store.
            states = store.cached_grant_states(client)
            if states is None:
                states = await store.grant_states(client)  # incl. grants bound to the account
        except Exception:  # the store failing must not take the request down: fail closed
            # Once per interval, not per request: an outage under load would flood the log.
            if time.monotonic() - self._logged_at >= _LOG_EVERY:
                self._logged_at = time.monotonic()
                logger.exception("micafence: grant store unavailable (service checks fail "
                                 "closed; logged at most every %g s)", _LOG_EVERY)
            return settle(decision, _STORE_UNAVAILABLE), receive
        for state in states:
            if state.in_force:
                break
        else:  # none, or all revoked or pending approval: no need to read the request
            return settle(decision, _NO_GRANT), receive
        catalogue = policy.catalogue
        route = catalogue.routes.get(decision.route_id or "")
        if route is None:  # a service route that names no service: no grant can cover it
            return settle(decision, _OUT_OF_SCOPE_SERVICE), receive
        requested, receive = await read_requested(route, catalogue, scope, receive)
        if requested is None:
            return settle(decision, _SCOPE_UNREADABLE), receive
        # The verdict remembered (_scoped's hit, in this frame: the usual grant check).
        key = (id(decision), requested)
        memo = self._memo.get(key)
        # Identity, not equality: the entry holds the objects, so their ids cannot be reused.
        if (memo is not None and memo.decision is decision and memo.states is states
                and memo.catalogue is catalogue and memo.since <= self._timestamp() < memo.until):
            return memo.settled, receive
        return self._scoped(catalogue, decision, states, requested, key), receive

    def _scoped(
        self, catalogue: Catalogue, decision: Decision, states: Sequence[GrantState],
        requested: RequestedScope, key: tuple[int, RequestedScope],
    ) -> Decision:
        """``decision`` settled by :func:`evaluate`'s verdict, remembered under ``key`` while
        the grants are the same objects (the Redis store's cache hands out one tuple per client
        until a record changes) and the clock has crossed none of their bounds (:meth:`check`
        looks it up)."""
        at = self.clock()
        verdict = evaluate(catalogue, states, requested, at)
        bounds = [end.timestamp() for state in states if state.in_force
                  for end in (_term_end(catalogue, state.grant),
                              _window_end(catalogue, state.grant))]
        instant = at.timestamp()
        settled = self.settle(decision, verdict)
        self._memo.put(key, _Memo(
            decision, states, catalogue, settled,
            since=max((b for b in bounds if b <= instant), default=-math.inf),
            until=min((b for b in bounds if b > instant), default=math.inf),
        ))
        return settled


class _Memo(NamedTuple):
    """A decision settled by its verdict, and what it holds for: these objects, between two
    grant bounds."""

    decision: Decision
    states: Sequence[GrantState]
    catalogue: Catalogue
    settled: Decision
    since: float  # the verdict is a function of which bounds lie before the clock: it holds
    until: float  # from the last bound passed to the next one


# -- the scope test ------------------------------------------------------------------------------


def evaluate(
    catalogue: Catalogue, states: Sequence[GrantState], requested: RequestedScope,
    now: dt.datetime,
) -> ScopeVerdict:
    """Is ``requested`` inside the client's live grants at ``now``?

    A grant covers a request's asset for its own service, or a service the policy relates to
    it, until the scope term ends; and an asset of the same type for its own service until the
    (shorter) same-type window ends. Every asset of the request must be covered. Both bounds
    run from the client's initiative and are the narrower of the grant's and the policy's.
    """
    service, assets = requested.service, requested.assets
    grants = [state.grant for state in states if state.in_force]
    if not grants:
        return ScopeVerdict(NO_GRANT)
    candidates = [
        g for g in grants
        if g.service == service or (catalogue.related(g.service, service) and g.asset in assets)
    ]
    if not candidates:
        return ScopeVerdict(OUT_OF_SCOPE_SERVICE)
    if not assets:  # a route that serves the service without naming an asset
        own = [g for g in candidates if g.service == service]
        if not own:
            return ScopeVerdict(OUT_OF_SCOPE_SERVICE)
        live = [g for g in own if now < _term_end(catalogue, g)]
        return ScopeVerdict(IN_SCOPE, (live[0].id,)) if live else ScopeVerdict(GRANT_EXPIRED)
    covering: list[str] = []
    failure: Reason | None = None
    for asset in assets:
        found, time_barred = None, False
        for grant in candidates:
            if grant.asset == asset:
                end = _term_end(catalogue, grant)
            elif grant.service == service and catalogue.same_type(grant.asset, asset):
                end = _window_end(catalogue, grant)
            else:
                continue
            if now < end:
                found = grant
                break
            time_barred = True
        if found is not None:
            if found.id not in covering:
                covering.append(found.id)
        elif time_barred:
            failure = failure or GRANT_EXPIRED
        else:  # an asset no grant reaches outweighs one a grant reached too late
            failure = OUT_OF_SCOPE_ASSET_TYPE
    if failure is not None:
        return ScopeVerdict(failure)
    return ScopeVerdict(IN_SCOPE, tuple(covering))


def _term_end(catalogue: Catalogue, grant: Grant) -> dt.datetime:
    # The narrower of the grant's bound and today's policy: tightening the policy applies at once.
    return grant.initiated_at + min(grant.term, catalogue.term)


def _window_end(catalogue: Catalogue, grant: Grant) -> dt.datetime:
    return grant.initiated_at + min(grant.same_type_window, catalogue.same_type_window)


# -- reading the request -------------------------------------------------------------------------


async def read_requested(
    route: RouteScope, catalogue: Catalogue, scope: Scope, receive: Receive
) -> tuple[RequestedScope | None, Receive]:
    """The service and assets a request names per ``route``, or ``None`` if they cannot be read.

    Returns the ``receive`` to hand on: it replays any body messages read here.
    """
    body: dict[str, Any] | None = None
    if route.body_keys:  # (route.reads_body, without the property's call)
        if scope.get("type") != "http":
            return None, receive
        limit = catalogue.max_body_bytes
        if _declared_over(scope, limit):
            return None, receive  # nothing read, nothing to replay
        # read_body in this frame (an awaited call per step costs on every grant check).
        message = await receive()
        read = _one_message(message, receive, limit)
        raw, receive = read if read is not None else await _read_rest(message, receive, limit)
        body = _json_object(raw, route.body_keys) if raw is not None else None
        if body is None:
            return None, receive
    return requested_scope(route, scope, body), receive


def requested_scope(
    route: RouteScope, scope: Scope, body: dict[str, Any] | None
) -> RequestedScope | None:
    """What the request names per ``route``, from its path, query and parsed JSON ``body``
    (``None`` when the route reads no body); ``None`` if it cannot be read."""
    pair = route.pair
    if pair is not None:
        # A pair in the body (the usual order route) needs no _Values.
        value = (body.get(pair.name) if body is not None else None) if pair.where == "body" \
            else _Values(route, scope, body).get(pair)
        # The firm's declared service (order execution, transmission, a platform's order
        # book, …) replaces the pair's guess; the pair still names the assets.
        if not isinstance(value, str):
            return None
        return (_pair_scope if len(value) <= _PAIR_KEY_CHARS else _scope_of_pair)(
            value, route.service)
    values = _Values(route, scope, body)
    assets: list[str] = []
    for source in route.assets:
        symbol = _symbol(values.get(source))
        if symbol is None:
            return None
        if symbol not in assets:
            assets.append(symbol)
    return RequestedScope(route.service or "", tuple(assets))


async def read_body(scope: Scope, receive: Receive, limit: int) -> tuple[bytes | None, Receive]:
    """Read the request body up to ``limit`` bytes; ``None`` when it is larger or cut short.

    The returned ``receive`` gives the app every message read here, then the rest from the
    server, so the app sees the body exactly as sent.
    """
    if _declared_over(scope, limit):
        return None, receive  # nothing read, nothing to replay
    message = await receive()
    read = _one_message(message, receive, limit)
    return read if read is not None else await _read_rest(message, receive, limit)


def _one_message(
    message: Message, receive: Receive, limit: int
) -> tuple[bytes | None, Receive] | None:
    """:func:`read_body`'s answer when its first ``message`` is the whole body (the usual
    body: nothing to join, one message to replay); ``None`` when more is to be read."""
    if message.get("type") != "http.request" or message.get("more_body", False):
        return None
    chunk = message.get("body") or b""
    return (chunk if len(chunk) <= limit else None), _Replaying(message, receive)


def _declared_over(scope: Scope, limit: int) -> bool:
    """Does the request's ``Content-Length`` say its body is larger than ``limit``?"""
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            declared = value.strip()
            if declared.isdigit() and int(declared) > limit:
                return True
    return False


async def _read_rest(
    message: Message, receive: Receive, limit: int
) -> tuple[bytes | None, Receive]:
    """:func:`read_body` from its first ``message`` on, when that is not the whole body."""
    messages: list[Message] = [message]
    chunks: list[bytes] = []
    size = 0
    complete = False
    while True:
        if message.get("type") != "http.request":
            break  # a disconnect: the app will see it too
        chunk = message.get("body") or b""
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
        if not message.get("more_body", False):
            complete = True
            break
        message = await receive()
        messages.append(message)
    return (b"".join(chunks) if complete else None), _replaying(messages, receive)


class _Replaying:
    """A ``receive`` giving one message already read, then the server's: an object rather
    than a closure, the cheaper of the two to make on every grant check."""

    __slots__ = ("_message", "_receive")

    def __init__(self, message: Message, receive: Receive) -> None:
        self._message: Message | None = message
        self._receive = receive

    async def __call__(self) -> Message:
        message = self._message
        if message is not None:
            self._message = None
            return message
        return await self._receive()


def _replaying(messages: list[Message], receive: Receive) -> Receive:
    pending = deque(messages)

    async def replay() -> Message:
        if pending:
            return pending.popleft()
        return await receive()

    return replay


class _Values:
    """Reads named values from a request's path, query string and parsed body."""

    def __init__(self, route: RouteScope, scope: Scope, body: dict[str, Any] | None) -> None:
        self._route, self._scope, self._body = route, scope, body
        self._query: dict[str, str | None] | None = None

    def get(self, source: Source | None) -> object:
        if source is None:
            return None
        if source.where == "body":
            return self._body.get(source.name) if self._body is not None else None
        if source.where == "query":
            return self._query_values().get(source.name)
        return self._path_value(source.name)

    def _query_values(self) -> dict[str, str | None]:
        if self._query is None:
            raw = self._scope.get("query_string") or b""
            values: dict[str, str | None] = {}
            for key, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
                # Frameworks disagree on first or last of a repeated parameter: neither counts.
                values[key] = value if key not in values or values[key] == value else None
            self._query = values
        return self._query

    def _path_value(self, name: str) -> str | None:
        pattern = self._route.path_pattern
        if pattern is None:
            return None
        for spelling in route_paths(self._scope):
            match = pattern.fullmatch(normalize_path(spelling))
            if match is not None:
                return match.group(name)
        return None


# One JSON value at an index: what json.loads runs inside (set in __init__, not in typeshed).
_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_JSON_SPACE = " \t\n\r"
_UTF8_BOM = b"\xef\xbb\xbf"
_BACKSLASH = ord("\\")


def _json_object(raw: bytes, keys: Sequence[bytes]) -> dict[str, Any] | None:
    """The body as a JSON object; ``None`` if it is not one, or repeats a key micafence reads.

    Checking every object for repeated keys makes the parse about three times slower, so it is
    done only when the body could repeat one of ``keys``: when it spells one more than once,
    holds an escape (``"\\u0070air"`` is ``"pair"``), a NUL (UTF-16 and UTF-32 bodies, where
    the byte count says nothing) or a byte-order mark. Otherwise the body is UTF-8.
    """
    # (An int tested in bytes is a byte: ``b"\\" in raw`` tries it as an int first, and costs
    # an exception raised and cleared inside, on every grant check.)
    strict = _BACKSLASH in raw or 0 in raw or raw.startswith(_UTF8_BOM)
    for key in keys:
        strict = strict or raw.count(key) > 1
    try:
        if strict:
            value = json.loads(raw, object_pairs_hook=refuse_duplicates)
        else:  # UTF-8 for sure: json.loads's encoding detection and wrappers are most of its time
            text = raw.decode("utf-8", "surrogatepass").strip(_JSON_SPACE)
            value, end = _SCAN(text, 0)
            if end != len(text):
                return None  # something after the value
    except (ValueError, RecursionError, StopIteration):  # StopIteration: no value at all
        return None
    return value if isinstance(value, dict) else None


def refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` refusing a JSON object that gives a key twice."""
    # {"pair": "BTC-EUR", "pair": "ETH-EUR"}: parsers disagree on which one wins.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _symbol(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    symbol = value.strip().upper()
    return symbol if SYMBOL.fullmatch(symbol) else None


def _scope_of_pair(value: str, declared: str | None = None) -> RequestedScope | None:
    """``BTC-EUR`` → exchange for funds on BTC; ``BTC-ETH`` → exchange for crypto on both;
    the route's ``declared`` service, when it names one, instead of the pair's guess."""
    match = _PAIR.fullmatch(value.strip().upper())
    if match is None:
        return None
    legs = tuple(dict.fromkeys(match.groups()))
    crypto = tuple(leg for leg in legs if not is_fiat(leg))
    if not crypto:  # fiat against fiat is no crypto-asset service: nothing to put in scope
        return None
    if declared is not None:
        return RequestedScope(declared, crypto)
    service = EXCHANGE_FOR_FUNDS if len(crypto) < len(legs) else EXCHANGE_FOR_CRYPTO
    return RequestedScope(service, crypto)


#: :func:`_scope_of_pair` remembered: a few pairs make most orders, one object per pair. Only
#: for values up to _PAIR_KEY_CHARS long (a request's value can be as long as its body: 1024 of
#: those would hold up to 1024 bodies).
_pair_scope = functools.lru_cache(maxsize=1024)(_scope_of_pair)
