"""The service and asset catalogues: the same-type test, durations, and located policy errors."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable

import pytest
from ruamel.yaml import YAML

from micafence import PolicyError, load_policy, load_policy_text
from micafence.instants import format_duration, parse_duration
from micafence.policy.catalogue import MICA_SERVICES
from tests.conftest import DEFAULT_POLICY

_ROUTE_IDS = [route.id for route in load_policy(DEFAULT_POLICY).routes]


def _at(route_id: str) -> str:
    """The key path of a default policy route, by its id (its place moves as routes are added)."""
    return f"routes[{_ROUTE_IDS.index(route_id)}]"

CATALOGUE = load_policy(DEFAULT_POLICY).catalogue


def test_default_catalogue_lists_the_ten_mica_services_and_own_products() -> None:
    letters = {key: s.mica_letter for key, s in CATALOGUE.services.items()}
    assert {k: v for k, v in letters.items() if v} == {k: v[0] for k, v in MICA_SERVICES.items()}
    assert sorted(k for k, v in letters.items() if v is None) == [
        "derivatives", "launchpad", "staking"]
    assert CATALOGUE.term == dt.timedelta(days=30)
    assert CATALOGUE.same_type_window == dt.timedelta(hours=24)


@pytest.mark.parametrize(("first", "second", "same"), [
    ("BTC", "BTC", True),
    ("BTC", "ETH", False),      # not stored or transferred on the same network
    ("USDC", "PYUSD", True),    # EMTs pegged to the same currency, same network and liquidity
    ("USDC", "EURC", False),    # EMTs pegged to different currencies
    ("NWT", "FUEL", True),      # liquid utility tokens on one network
    ("NWT", "GOLDX", False),    # utility token vs asset-referenced token
    ("NWT", "ACME", False),     # liquid vs illiquid
    ("USDC", "GOLDX", False),   # EMT vs ART
    ("BTC", "DOGE", False),     # not in the catalogue: the same type as nothing
    ("DOGE", "DOGE", False),
])
def test_same_type(first: str, second: str, same: bool) -> None:
    assert CATALOGUE.same_type(first, second) is same
    assert CATALOGUE.same_type(second, first) is same


@pytest.mark.parametrize(("text", "duration", "spelled"), [
    ("P30D", dt.timedelta(days=30), "P30D"),
    ("PT24H", dt.timedelta(hours=24), "P1D"),
    ("pt90m", dt.timedelta(minutes=90), "PT1H30M"),
    ("P2W", dt.timedelta(weeks=2), "P14D"),
    ("P1DT12H", dt.timedelta(days=1, hours=12), "P1DT12H"),
])
def test_durations(text: str, duration: dt.timedelta, spelled: str) -> None:
    assert parse_duration(text) == duration
    assert format_duration(duration) == spelled
    assert parse_duration(format_duration(duration)) == duration


@pytest.mark.parametrize("text", ["P1M", "P1Y", "30D", "P", "PT", "P1DT", "PT0S", "P-1D", ""])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


# (old text in the default policy, new text, key path, part of the message)
POLICY_ERRORS = [
    ("  custody: {mica: a}", "  custody: {mica: c}", "services.custody.mica",
     "custody is MiCA Art. 3(1)(16)(a)"),
    ("  staking: {mica: false,", "  staking: {mica: true,", "services.staking.mica",
     "must say mica: false"),
    ("  launchpad: {mica: false,", "  launchpad: {mica: c,", "services.launchpad.mica",
     "has the key 'exchange_for_funds'"),
    ("  custody: {mica: a}", "  custody: {}", "services.custody", "missing required key 'mica'"),
    ("  BTC:   {category: other,", "  BTC:   {category: coin,", "assets.BTC.category",
     "'coin' is not one of"),
    ("  USDC:  {category: emt, network: ethereum, peg: USD,",
     "  USDC:  {category: emt, network: ethereum, peg: none,", "assets.USDC.peg",
     "e-money token (emt) is pegged"),
    ("  BTC:   {category: other, network: bitcoin, peg: none,",
     "  BTC:   {category: other, network: bitcoin, peg: USD,", "assets.BTC.peg",
     "only an e-money token"),
    ("  EURC:  {category: emt, network: ethereum, peg: EUR,",
     "  EURC:  {category: emt, network: ethereum, peg: EUX,", "assets.EURC.peg",
     "not an ISO 4217 currency code"),
    ("  NWT:   {category: utility, network: ethereum, peg: none, liquidity: liquid}",
     "  NWT:   {category: utility, network: ethereum, peg: none}", "assets.NWT",
     "missing required key 'liquidity'"),
    ("  ACME:  {", "  EUR: {category: other, network: x, peg: none, liquidity: liquid}\n"
     "  ACME:  {", "assets.EUR", "fiat currency code"),
    ("  term: P30D ", "  term: P1M  ", "scopes.term", "years and months"),
    ("  same_type_window: PT24H", "  same_type_window: P60D ", "scopes.same_type_window",
     "cannot be longer than the scope term"),
    ("    exchange_for_funds: [transfer]", "    exchange_for_funds: [teleport]",
     "scopes.related_services.exchange_for_funds[0]", "unknown service 'teleport'"),
    ("    exchange_for_funds: [transfer]", "    exchange_for_funds: [staking]",
     "scopes.related_services.exchange_for_funds[0]", "granted by name"),
    ("  max_body_bytes: 65536", "  max_body_bytes: 10   ", "scopes.max_body_bytes",
     "at least 256"),
    ("  term: P30D ", "  term: P30D\n  window: PT1H", "scopes.window", "unknown key 'window'"),
    ("path: /earn, service: staking}", "path: /earn, service: stakeing}",
     _at("service.staking") + ".service", "unknown service 'stakeing'"),
    ("     pair: {from: body, name: pair}}", "     pair: {from: header, name: pair}}",
     _at("service.orders") + ".pair.from", "'header' is not one of: path, query, body"),
    ("     pair: {from: body, name: pair}}", "     pair: {from: body, name: pair},\n"
     "     service: order_executing}", _at("service.orders") + ".service",
     "unknown service 'order_executing'"),
    ("     pair: {from: body, name: pair}}", "     pair: {from: body, name: pair},\n"
     "     asset: {from: body, name: base}}", _at("service.orders") + ".asset",
     "a pair names its assets"),
    ("asset: [{from: body, name: from},", "asset: [{from: path, name: from},",
     _at("service.swaps") + ".asset[0].name", "has no {from} parameter"),
    ("asset: [{from: body, name: from}, {from: body, name: to}]}", "asset: []}",
     _at("service.swaps") + ".asset", "at least one source"),
    ("path: /earn, service: staking}", "path: /earn, asset: {from: query, name: a}}",
     _at("service.staking") + ".asset", "needs a service"),
    ('path: "/earn/{asset}/**", service: staking,\n     asset: {from: path, name: asset}}',
     'path: "/earn/{asset}/**", service: staking,\n     asset: {from: path, name: coin}}',
     _at("service.staking.asset") + ".asset.name", "has no {coin} parameter"),
]


@pytest.mark.parametrize(("old", "new", "key_path", "problem"), POLICY_ERRORS)
def test_policy_errors_name_file_key_path_and_line(
    policy_variant: Callable[[str, str], str], old: str, new: str, key_path: str, problem: str
) -> None:
    text = policy_variant(old, new)
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, "exchange.yaml")
    error = caught.value
    assert (error.file, error.key_path) == ("exchange.yaml", key_path)
    assert problem in error.problem
    # The line is where the edited text starts (or, for a new key, the line it is on).
    first_new_line = text[: text.index(new)].count("\n") + 1
    assert error.line in range(first_new_line, first_new_line + new.count("\n") + 1)


def test_pair_routes_need_both_exchange_services(
    policy_variant: Callable[[str, str], str],
) -> None:
    text = policy_variant("  exchange_for_crypto: {mica: d}\n", "")
    text = text.replace("    exchange_for_crypto: [transfer]\n", "")
    text = text.replace("     service: exchange_for_crypto, asset:", "     service: advice, asset:")
    with pytest.raises(PolicyError, match="needs service 'exchange_for_crypto'") as caught:
        load_policy_text(text, "p.yaml")
    assert caught.value.key_path == _at("service.orders") + ".pair"


def test_policy_without_scope_sections_has_empty_catalogue_and_default_bounds() -> None:
    # The default policy without its scope sections, and its routes without their scope keys.
    policy = YAML(typ="safe").load(DEFAULT_POLICY.read_text(encoding="utf-8"))
    for section in ("services", "assets", "scopes", "onboarding", "audit", "reporting"):
        del policy[section]
    for route in policy["routes"]:
        for key in ("service", "pair", "asset"):
            route.pop(key, None)
    core = io.StringIO()
    YAML().dump(policy, core)
    catalogue = load_policy_text(core.getvalue(), "core.yaml").catalogue
    assert (dict(catalogue.services), dict(catalogue.assets), dict(catalogue.routes)) == ({}, {},
                                                                                          {})
    assert catalogue.term == dt.timedelta(days=30)
    assert catalogue.same_type_window == dt.timedelta(hours=24)
