"""The policy's service and asset catalogues, the same-type test, and where requests name them.

Policy sections read here (validated with their file, key path and line):

``services``
    Stable key → ``{mica: <letter> | false, title}``. The ten crypto-asset services of MiCA
    Art. 3(1)(16) have fixed keys (:data:`MICA_SERVICES`); the firm's own products outside that
    list (staking, derivatives, launchpad) are flagged ``mica: false`` and are only ever in
    scope when granted by name.
``assets``
    Symbol → ``{category, network, peg, liquidity}``. Two assets are of the same type only when
    all four match (RULES.md rule 9); an asset not in the catalogue is the same type as nothing.
``scopes``
    ``term`` and ``same_type_window`` (ISO 8601 durations counted from the client's initiative),
    ``related_services`` (service → services that come with it for the same asset) and
    ``max_body_bytes`` (how much of a request body is read to find the asset).
``routes[*].service`` / ``routes[*].pair`` / ``routes[*].asset``
    Where a service route's request names its service and assets: ``service`` alone (the
    route serves it without naming an asset), with ``asset`` sources, or with a ``pair`` (the
    firm's own mapping: an order route of a broker is order execution or transmission, not an
    exchange); ``pair`` alone guesses the service from the quote.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from micafence.instants import format_duration
from micafence.policy.durations import duration_setting
from micafence.policy.grant_store import SCOPE_KEYS as STORE_SCOPE_KEYS
from micafence.policy.yamlfile import Node

#: The ten services of MiCA Art. 3(1)(16): stable key → (letter, title). Law, not policy.
MICA_SERVICES: dict[str, tuple[str, str]] = {
    "custody": ("a", "custody and administration of crypto-assets on behalf of clients"),
    "trading_platform": ("b", "operation of a trading platform for crypto-assets"),
    "exchange_for_funds": ("c", "exchange of crypto-assets for funds"),
    "exchange_for_crypto": ("d", "exchange of crypto-assets for other crypto-assets"),
    "order_execution": ("e", "execution of orders for crypto-assets on behalf of clients"),
    "placing": ("f", "placing of crypto-assets"),
    "order_transmission": (
        "g", "reception and transmission of orders for crypto-assets on behalf of clients"
    ),
    "advice": ("h", "providing advice on crypto-assets"),
    "portfolio_management": ("i", "providing portfolio management on crypto-assets"),
    "transfer": ("j", "providing transfer services for crypto-assets on behalf of clients"),
}
EXCHANGE_FOR_FUNDS = "exchange_for_funds"
EXCHANGE_FOR_CRYPTO = "exchange_for_crypto"

# ISO 4217 codes of official currencies in use (no metals, funds or test codes): a pair quoted
# in one of these is an exchange for funds, and an EMT's peg must be one of them.
_FIAT_CODES = """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP
    BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP
    GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR
    KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK
    MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR
    SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS
    UAH UGX USD UYU UZS VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG
"""
FIAT_CURRENCIES: frozenset[str] = frozenset(_FIAT_CODES.split())

DEFAULT_TERM = dt.timedelta(days=30)
DEFAULT_SAME_TYPE_WINDOW = dt.timedelta(hours=24)
DEFAULT_MAX_BODY_BYTES = 64 * 1024

_SERVICE_KEY = re.compile(r"[a-z][a-z0-9_]*")
SYMBOL = re.compile(r"[A-Z0-9]{1,16}")
_NETWORK = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_SOURCES = ("path", "query", "body")
DECLARATION_SOURCES = ("body", "form", "query")  # where a sign-up may declare a residence
#: The keys a policy route may carry for this module.
ROUTE_SCOPE_KEYS = ("service", "pair", "asset")


class Category(StrEnum):
    """MiCA's kinds of crypto-asset: asset-referenced, e-money, utility, and everything else."""

    ART = "art"
    EMT = "emt"
    UTILITY = "utility"
    OTHER = "other"


class Liquidity(StrEnum):
    LIQUID = "liquid"
    ILLIQUID = "illiquid"


@dataclass(frozen=True, slots=True)
class Service:
    """One entry of the service catalogue."""

    key: str
    title: str
    mica_letter: str | None  # "a" … "j" for Art. 3(1)(16); None for the firm's own products


@dataclass(frozen=True, slots=True)
class AssetType:
    """What makes two crypto-assets "the same type" (ESMA Guideline 4): all of it must match."""

    category: Category
    network: str
    peg: str | None  # ISO 4217 code for an EMT, else None
    liquidity: Liquidity


@dataclass(frozen=True, slots=True)
class Asset:
    symbol: str
    type: AssetType


@dataclass(frozen=True, slots=True)
class Source:
    """Where a request names something: a path parameter, a query parameter or a JSON field."""

    where: str  # path | query | body
    name: str


@dataclass(frozen=True, slots=True)
class RouteScope:
    """How one service route names its service and assets.

    ``service`` (fixed) with ``assets`` sources (every asset read must be in scope; none means
    the route serves the service without naming an asset), or ``pair`` (a ``BASE-QUOTE``
    trading pair naming the assets: its crypto legs). A ``pair`` without ``service`` also
    gives the service: a fiat quote is an exchange for funds, otherwise an exchange for other
    crypto-assets; with ``service`` the route's declared service is the one checked.
    """

    route_id: str
    service: str | None
    pair: Source | None
    assets: tuple[Source, ...]
    path_pattern: re.Pattern[str] | None  # compiled route path, for path parameters
    #: The JSON body keys read, as they appear quoted in a body (``b'"pair"'``); none: no body.
    body_keys: tuple[bytes, ...] = field(init=False)

    def __post_init__(self) -> None:
        sources = (self.pair,) if self.pair is not None else self.assets
        keys = tuple(json.dumps(source.name, ensure_ascii=False).encode("utf-8")
                     for source in sources if source is not None and source.where == "body")
        object.__setattr__(self, "body_keys", keys)

    @property
    def reads_body(self) -> bool:
        return bool(self.body_keys)


@dataclass(frozen=True, slots=True)
class Catalogue:
    """Everything the policy says about services, assets, time bounds and service routes."""

    services: Mapping[str, Service] = field(default_factory=dict)
    assets: Mapping[str, Asset] = field(default_factory=dict)
    term: dt.timedelta = DEFAULT_TERM
    same_type_window: dt.timedelta = DEFAULT_SAME_TYPE_WINDOW
    related_services: Mapping[str, frozenset[str]] = field(default_factory=dict)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    routes: Mapping[str, RouteScope] = field(default_factory=dict)

    def same_type(self, first: str, second: str) -> bool:
        """Rule 9: same category, network, fiat peg and liquidity. Unknown assets match nothing."""
        a, b = self.assets.get(first), self.assets.get(second)
        return a is not None and b is not None and a.type == b.type

    def related(self, granted: str, requested: str) -> bool:
        """Does ``requested`` come with a grant of ``granted`` (for the very same asset)?"""
        return requested in self.related_services.get(granted, frozenset())


EMPTY_CATALOGUE = Catalogue()


def is_fiat(code: str) -> bool:
    """Is ``code`` an ISO 4217 official currency code (upper case)?"""
    return code in FIAT_CURRENCIES


# -- policy sections -----------------------------------------------------------------------------


def parse_catalogue(top: Mapping[str, Node]) -> Catalogue:
    """Build the catalogue from a policy's top-level entries (``services``, ``assets``,
    ``scopes`` and the scope keys of ``routes``); missing sections are empty or defaults."""
    services = _services(top["services"]) if "services" in top else {}
    assets = _assets(top["assets"]) if "assets" in top else {}
    term, window = DEFAULT_TERM, DEFAULT_SAME_TYPE_WINDOW
    related: dict[str, frozenset[str]] = {}
    max_body = DEFAULT_MAX_BODY_BYTES
    if "scopes" in top:
        fields = top["scopes"].mapping(
            ("term", "same_type_window", "related_services", "max_body_bytes",
             *STORE_SCOPE_KEYS)  # maker_checker, redis_checks: micafence.policy.grant_store
        )
        if "term" in fields:
            term = duration_setting(fields["term"])
        if "same_type_window" in fields:
            window = duration_setting(fields["same_type_window"])
            if window > term:
                fields["same_type_window"].fail(
                    f"the same-type window ({format_duration(window)}) cannot be longer than "
                    f"the scope term ({format_duration(term)})"
                )
        if "related_services" in fields:
            related = _related(fields["related_services"], services)
        if "max_body_bytes" in fields:
            max_body = fields["max_body_bytes"].integer(minimum=256)
    routes = _route_scopes(top["routes"], services) if "routes" in top else {}
    return Catalogue(services, assets, term, window, related, max_body, routes)


def _services(node: Node) -> dict[str, Service]:
    services: dict[str, Service] = {}
    letters = {letter: key for key, (letter, _) in MICA_SERVICES.items()}
    for key, entry in node.dict_items():
        if not _SERVICE_KEY.fullmatch(key):
            entry.fail(f"service key {key!r} must be lower-case letters, digits and _")
        fields = entry.mapping(("mica", "title"), required=("mica",))
        mica = fields["mica"]
        letter: str | None = None
        if key in MICA_SERVICES:
            letter, title = MICA_SERVICES[key]
            if mica.value != letter:
                mica.fail(f"{key} is MiCA Art. 3(1)(16)({letter}): write mica: {letter}")
        elif mica.value is not False:
            if isinstance(mica.value, str) and mica.value in letters:
                mica.fail(f"Art. 3(1)(16)({mica.value}) has the key {letters[mica.value]!r}")
            mica.fail("a service outside the Art. 3(1)(16) list must say mica: false "
                      f"(the ten keys are: {', '.join(MICA_SERVICES)})")
        else:
            title = key.replace("_", " ")
        if "title" in fields:
            title = fields["title"].text()
        services[key] = Service(key, title, letter)
    return services


def _assets(node: Node) -> dict[str, Asset]:
    assets: dict[str, Asset] = {}
    for symbol, entry in node.dict_items():
        if not SYMBOL.fullmatch(symbol):
            entry.fail(f"asset symbol {symbol!r} must be 1-16 upper-case letters and digits")
        if is_fiat(symbol):
            entry.fail(f"{symbol} is a fiat currency code (ISO 4217), not a crypto-asset")
        keys = ("category", "network", "peg", "liquidity")
        fields = entry.mapping(keys, required=keys)
        category = Category(fields["category"].choice(list(Category)))
        network = fields["network"].text(_NETWORK, "a network name (lower-case, e.g. ethereum)")
        peg_node = fields["peg"]
        peg_text = peg_node.text()
        peg = None if peg_text == "none" else peg_text
        if peg is not None and not is_fiat(peg):
            peg_node.fail(f"{peg_text!r} is not an ISO 4217 currency code (or 'none')")
        if category is Category.EMT and peg is None:
            peg_node.fail("an e-money token (emt) is pegged to one fiat currency: name it")
        if category is not Category.EMT and peg is not None:
            peg_node.fail(f"only an e-money token is pegged to one fiat currency ({symbol} is "
                          f"{category.value}): write peg: none")
        liquidity = Liquidity(fields["liquidity"].choice(list(Liquidity)))
        assets[symbol] = Asset(symbol, AssetType(category, network, peg, liquidity))
    return assets


def _related(node: Node, services: Mapping[str, Service]) -> dict[str, frozenset[str]]:
    related: dict[str, frozenset[str]] = {}
    for key, entry in node.dict_items():
        if key not in services:
            entry.fail(f"unknown service {key!r} (not in services)")
        names: set[str] = set()
        for item in entry.items():
            name = item.text()
            if name not in services:
                item.fail(f"unknown service {name!r} (not in services)")
            if services[name].mica_letter is None:
                item.fail(f"{name} is not an Art. 3(1)(16) service: the firm's own products "
                          "are in scope only when granted by name")
            names.add(name)
        related[key] = frozenset(names - {key})
    return related


def _route_scopes(node: Node, services: Mapping[str, Service]) -> dict[str, RouteScope]:
    # The core loader validates ids, classes and paths; here only the scope keys are read.
    from micafence.policy.routes import (
        compile_pattern,  # routes imports policy, which imports this module
    )

    scopes: dict[str, RouteScope] = {}
    for item in node.items():
        if not isinstance(item.value, dict):
            continue
        entries = dict(item.dict_items())
        if not entries.keys() & set(ROUTE_SCOPE_KEYS):
            continue
        route_id, path = str(entries["id"].value), str(entries["path"].value)
        service: str | None = None
        pair: Source | None = None
        sources: tuple[Source, ...] = ()
        if "service" in entries:
            service = entries["service"].text()
            if service not in services:
                entries["service"].fail(f"unknown service {service!r} (not in services)")
        if "pair" in entries:
            if "asset" in entries:
                entries["asset"].fail("a pair names its assets: drop asset")
            if service is None:  # the pair's quote gives the service
                for needed in (EXCHANGE_FOR_FUNDS, EXCHANGE_FOR_CRYPTO):
                    if needed not in services:
                        entries["pair"].fail(f"a pair route without service: needs service "
                                             f"{needed!r} in services (or name the route's "
                                             "service)")
            pair = _source(entries["pair"], path)
        elif service is not None:
            if "asset" in entries:
                asset_node = entries["asset"]
                listed = asset_node.items() if isinstance(asset_node.value, list) else [asset_node]
                if not listed:
                    asset_node.fail("name at least one source (omit asset for none)")
                sources = tuple(_source(one, path) for one in listed)
        else:
            entries["asset"].fail("asset needs a service: key on the same route")
        pattern = compile_pattern(path) if any(
            s.where == "path" for s in (*sources, *((pair,) if pair else ()))
        ) else None
        scopes[route_id] = RouteScope(route_id, service, pair, sources, pattern)
    return scopes


def declaration_source(node: Node, path: str) -> Source:
    """An account-creation route's ``residence:`` (:mod:`micafence.clients.declarations`)."""
    return _source(node, path, DECLARATION_SOURCES)


def _source(node: Node, path: str, sources: tuple[str, ...] = _SOURCES) -> Source:
    fields = node.mapping(("from", "name"), required=("from", "name"))
    where = fields["from"].choice(sources)
    name = fields["name"].text()
    if where == "path" and "{" + name.lower() + "}" not in path.lower():
        fields["name"].fail(f"the route path {path!r} has no {{{name}}} parameter")
    return Source(where, name.lower() if where == "path" else name)
