"""Who is the client: the peer, or a forwarded hop vouched for by trusted proxies.

Table-driven in the style of uvicorn's proxy_headers tests: each row is the peer address, the raw
lines of the forwarded header and the client address a user of ``resolve_client_ip`` sees.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from micafence.location.client_ip import (
    MAX_FORWARDED_HEADER_BYTES,
    TrustedProxies,
    forwarded_chain,
    located_address,
    names_itself,
    parse_ip,
    reached_from,
    resolve_client_ip,
)

SE = "89.160.20.112"
US = "216.160.83.56"
CH6 = "2a02:d000::1"
DOC6 = "2001:db8::1"
SPOOF = "6.6.6.6"
PROXY = "10.0.0.1"
PROXY2 = "10.0.0.2"
PROXY3 = "192.168.1.1"
PROXY6 = "2001:db8:ffff::5"
PROXY6_HOP = "2001:db8:ffff::7"

TRUSTED_CIDRS = ["10.0.0.0/8", "192.168.0.0/16", "2001:db8:ffff::/48", "127.0.0.1"]


def trusted() -> TrustedProxies:
    return TrustedProxies(TRUSTED_CIDRS)


def padded(value: str, total: int) -> str:
    """``value`` with leading spaces up to ``total`` characters (still one honest entry)."""
    return " " * (total - len(value)) + value


# -- resolve_client_ip: X-Forwarded-For -------------------------------------------------------

XFF_CASES = [
    # The peer is not a trusted proxy: forwarded headers are client-supplied and ignored.
    pytest.param(SE, [SPOOF], SE, id="untrusted-peer-spoofed-xff"),
    pytest.param(SE, [f"{US}, {PROXY}"], SE, id="untrusted-peer-spoofed-chain"),
    pytest.param(SE, ["garbage"], SE, id="untrusted-peer-garbage-xff"),
    pytest.param(SE, ["unknown"], SE, id="untrusted-peer-unknown-xff"),
    pytest.param(SE, [padded(US, 9000)], SE, id="untrusted-peer-oversized-xff"),
    pytest.param(SE, [], SE, id="untrusted-peer-no-header"),
    pytest.param("11.0.0.1", [US], "11.0.0.1", id="peer-just-outside-trusted-cidr"),
    # Trusted peer, one hop.
    pytest.param(PROXY, [SE], SE, id="trusted-peer-one-hop"),
    pytest.param(PROXY, [f"  {SE}  "], SE, id="trusted-peer-one-hop-whitespace"),
    pytest.param(PROXY, [f'"{SE}"'], SE, id="trusted-peer-one-hop-quoted"),
    pytest.param("127.0.0.1", [SE], SE, id="trusted-single-host-cidr"),
    pytest.param(PROXY6, [SE], SE, id="trusted-ipv6-peer"),
    # Walk right to left, peeling trusted hops; the first untrusted hop is the client.
    pytest.param(PROXY, [f"{SE}, {PROXY2}"], SE, id="trusted-hop-peeled"),
    pytest.param(PROXY, [f"{SE},{PROXY2},{PROXY3}"], SE, id="two-trusted-hops-peeled"),
    pytest.param(PROXY, [f"{SPOOF}, {SE}, {PROXY2}"], SE, id="spoofed-left-entry-ignored"),
    pytest.param(PROXY, [f"{SPOOF}, {SE}"], SE, id="right-most-untrusted-wins"),
    pytest.param(PROXY, [f"{SE}, {US}"], US, id="right-most-untrusted-wins-2"),
    pytest.param(PROXY, [f"{SE}, {PROXY6_HOP}"], SE, id="trusted-ipv6-hop-peeled"),
    # Several header lines are one list, in order.
    pytest.param(PROXY, [f"{SPOOF}, {SE}", f"{PROXY3}, {PROXY2}"], SE, id="lines-merged"),
    pytest.param(PROXY, [SE, US], US, id="lines-merged-last-line-right-most"),
    pytest.param(PROXY, [US, SE], SE, id="lines-merged-order-matters"),
    pytest.param(PROXY, [SE, PROXY2], SE, id="lines-merged-trusted-last-line"),
    pytest.param(PROXY, [SPOOF, SE, PROXY2, PROXY3], SE, id="four-lines"),
    # Every hop trusted: the left-most one is the client.
    pytest.param(PROXY, [f"{PROXY3}, {PROXY2}"], PROXY3, id="all-trusted-left-most"),
    pytest.param(PROXY, [PROXY2], PROXY2, id="all-trusted-single-hop"),
    pytest.param(PROXY, [PROXY3, f"{PROXY2}, {PROXY6_HOP}"], PROXY3, id="all-trusted-lines"),
    # A malformed entry met on the walk: unknown client, never an address further left.
    pytest.param(PROXY, [f"{SE}, garbage"], None, id="garbage-right-most"),
    pytest.param(PROXY, [f"{SE}, garbage, {PROXY2}"], None, id="garbage-behind-trusted-hop"),
    pytest.param(PROXY, [f"{SE},,{PROXY2}"], None, id="empty-entry-on-walk"),
    pytest.param(PROXY, ["1.2.3.4,,10.0.0.2"], None, id="empty-entry-1.2.3.4,,10.0.0.2"),
    pytest.param(PROXY, [f"{SE},"], None, id="trailing-comma"),
    pytest.param(PROXY, [f"{SE}, unknown"], None, id="unknown-on-walk"),
    pytest.param(PROXY, [f"{SE}, proxy.example.com"], None, id="hostname-on-walk"),
    pytest.param(PROXY, [f"{SE}, _hidden"], None, id="obfuscated-on-walk"),
    pytest.param(PROXY, ["localhost"], None, id="hostname-only"),
    pytest.param(PROXY, [","], None, id="only-a-comma"),
    pytest.param(PROXY, [SE, "garbage"], None, id="garbage-on-last-line"),
    pytest.param(PROXY, [f"{SE}, 300.1.2.3"], None, id="octet-out-of-range"),
    pytest.param(PROXY, [f"{SE}, 089.160.20.112"], None, id="leading-zero-octet"),
    pytest.param(PROXY, [f"{SE}, 1.2.3"], None, id="short-ipv4"),
    pytest.param(PROXY, [f"{SE}, 1.2.3.4:http"], None, id="named-port"),
    pytest.param(PROXY, [f"{SE}, 1.2.3.4:"], None, id="empty-port"),
    pytest.param(PROXY, [f"{SE} {US}"], None, id="space-separated-not-a-list"),
    pytest.param(PROXY, [f"{SE}, {'1' * 65}"], None, id="overlong-entry"),
    # A malformed entry LEFT of the first untrusted hop is never reached.
    pytest.param(PROXY, [f"garbage, {SE}, {PROXY2}"], SE, id="garbage-left-of-client"),
    pytest.param(PROXY, [f"1.2.3.4,,{SE}"], SE, id="empty-entry-left-of-client"),
    pytest.param(PROXY, [f",{SE}"], SE, id="leading-comma-left-of-client"),
    pytest.param(PROXY, [f"unknown, {SE}"], SE, id="unknown-left-of-client"),
    pytest.param(PROXY, [f"proxy.example.com, {SE}"], SE, id="hostname-left-of-client"),
    pytest.param(PROXY, ["garbage", SE], SE, id="garbage-line-left-of-client"),
    # Ports.
    pytest.param(PROXY, ["1.2.3.4:8080"], "1.2.3.4", id="ipv4-port"),
    pytest.param(PROXY, [f"{SE}:443, {PROXY2}:80"], SE, id="ports-on-every-hop"),
    pytest.param(f"{SE}:5000", [SPOOF], SE, id="untrusted-peer-with-port"),
    pytest.param(f"{PROXY}:5000", [SE], SE, id="trusted-peer-with-port"),
    # IPv6.
    pytest.param(PROXY, [CH6], CH6, id="ipv6-bare"),
    pytest.param(PROXY, [f"[{CH6}]"], CH6, id="ipv6-bracketed"),
    pytest.param(PROXY, [f"[{CH6}]:443"], CH6, id="ipv6-bracketed-port"),
    pytest.param(PROXY, ["2A02:D000:0:0:0:0:0:1"], CH6, id="ipv6-non-canonical"),
    pytest.param(PROXY, [f"{CH6}, {PROXY6_HOP}"], CH6, id="ipv6-trusted-hop-peeled"),
    pytest.param(PROXY6, [f"[{CH6}]:443, [{PROXY6_HOP}]:80"], CH6, id="ipv6-all-bracketed"),
    pytest.param(PROXY, [f"[{CH6}"], None, id="ipv6-unclosed-bracket"),
    pytest.param(PROXY, [f"[{CH6}]x"], None, id="ipv6-junk-after-bracket"),
    pytest.param(PROXY, [f"[{CH6}]:"], None, id="ipv6-bracketed-empty-port"),
    pytest.param(PROXY, ["2a02:d000::1::2"], None, id="ipv6-double-double-colon"),
    pytest.param(CH6, [SE], CH6, id="untrusted-ipv6-peer"),
    pytest.param(f"[{CH6}]:5000", [SE], CH6, id="untrusted-ipv6-peer-bracketed-port"),
    # IPv4-mapped IPv6 is plain IPv4, as peer and as hop.
    pytest.param(f"::ffff:{SE}", [], SE, id="mapped-peer"),
    pytest.param(f"::ffff:{SE}", [SPOOF], SE, id="mapped-untrusted-peer-spoofed"),
    pytest.param(f"::ffff:{PROXY}", [SE], SE, id="mapped-peer-is-trusted"),
    pytest.param(f"::FFFF:{PROXY}", [SE], SE, id="mapped-peer-upper-case"),
    pytest.param(f"[::ffff:{PROXY}]:5000", [SE], SE, id="mapped-peer-bracketed-port"),
    pytest.param(PROXY, [f"::ffff:{SE}"], SE, id="mapped-hop"),
    pytest.param(PROXY, [f"[::ffff:{SE}]:80"], SE, id="mapped-hop-bracketed-port"),
    pytest.param(PROXY, [f"{SE}, ::ffff:{PROXY2}"], SE, id="mapped-trusted-hop-peeled"),
    pytest.param(PROXY, [f"::ffff:{PROXY3}, ::ffff:{PROXY2}"], PROXY3, id="mapped-all-trusted"),
    # Zone ids are refused wherever they appear.
    pytest.param(PROXY, ["fe80::1%eth0"], None, id="zone-id-hop"),
    pytest.param(PROXY, ["[fe80::1%eth0]:80"], None, id="zone-id-bracketed-hop"),
    pytest.param(PROXY, ["[fe80::1%25eth0]"], None, id="zone-id-percent-encoded"),
    pytest.param(PROXY, [f"{SE}, fe80::1%eth0"], None, id="zone-id-on-walk"),
    pytest.param("fe80::1%eth0", [], None, id="zone-id-peer"),
    # Oversized headers are refused outright (only when read, i.e. from a trusted peer).
    pytest.param(PROXY, [padded(SE, MAX_FORWARDED_HEADER_BYTES)], SE, id="exactly-max-bytes"),
    pytest.param(PROXY, [padded(SE, MAX_FORWARDED_HEADER_BYTES + 1)], None, id="max-plus-one"),
    pytest.param(PROXY, [", ".join([PROXY2] * 1000 + [SE])], None, id="oversized-long-chain"),
    pytest.param(PROXY, [padded(SE, 5000), padded(PROXY2, 5000)], None, id="oversized-lines"),
    pytest.param(PROXY, [f"{SE}, {PROXY2}", "x" * 9000], None, id="oversized-garbage-line"),
    # No usable peer: nobody can be vouched for.
    pytest.param(None, [SE], None, id="peer-none"),
    pytest.param(None, [], None, id="peer-none-no-header"),
    pytest.param("not-an-ip", [SE], None, id="peer-not-an-ip"),
    pytest.param("", [SE], None, id="peer-empty"),
    pytest.param("unix:/run/app.sock", [SE], None, id="peer-unix-socket"),
    pytest.param("testclient", [], None, id="peer-testclient"),
    # Trusted peer but nothing forwarded: the peer is the client.
    pytest.param(PROXY, [], PROXY, id="trusted-peer-no-header"),
    pytest.param(PROXY, [""], PROXY, id="trusted-peer-empty-header"),
    pytest.param(PROXY, ["   "], PROXY, id="trusted-peer-blank-header"),
    pytest.param(f"::ffff:{PROXY}", [], PROXY, id="mapped-trusted-peer-no-header"),
]


@pytest.mark.parametrize(("peer", "values", "expected"), XFF_CASES)
def test_resolve_client_ip_x_forwarded_for(
    peer: str | None, values: list[str], expected: str | None
) -> None:
    assert resolve_client_ip(peer, values, trusted(), "x-forwarded-for") == expected


def test_resolve_client_ip_defaults_to_x_forwarded_for() -> None:
    assert resolve_client_ip(PROXY, [f"{SPOOF}, {SE}"], trusted()) == SE
    assert resolve_client_ip(PROXY, [f"for={SE}"], trusted()) is None


# -- resolve_client_ip: RFC 7239 Forwarded ----------------------------------------------------

FORWARDED_CASES = [
    pytest.param(SE, [f"for={SPOOF}"], SE, id="untrusted-peer-spoofed"),
    pytest.param(SE, ["for=_hidden"], SE, id="untrusted-peer-hidden"),
    pytest.param(SE, ["garbage"], SE, id="untrusted-peer-garbage"),
    pytest.param(PROXY, [f"for={SE}"], SE, id="for-ipv4"),
    pytest.param(PROXY, [f'for="{SE}"'], SE, id="for-quoted-ipv4"),
    pytest.param(PROXY, [f'for="{SE}:4711"'], SE, id="for-quoted-ipv4-port"),
    pytest.param(PROXY, [f"for={SE}:4711"], SE, id="for-unquoted-ipv4-port"),
    pytest.param(PROXY, [f'for="[{DOC6}]:4711"'], DOC6, id="for-quoted-ipv6-port"),
    pytest.param(PROXY, [f'for="[{DOC6}]"'], DOC6, id="for-quoted-ipv6"),
    pytest.param(PROXY, [f'for="[::ffff:{SE}]"'], SE, id="for-mapped-ipv6"),
    pytest.param(PROXY, [f"For={SE}"], SE, id="for-title-case"),
    pytest.param(PROXY, [f'FOR="{SE}"'], SE, id="for-upper-case"),
    pytest.param(PROXY, [f"proto=https;for={SE};by={PROXY}"], SE, id="for-among-params"),
    pytest.param(PROXY, [f'by="[{PROXY6}]";for={SE};host=example.com'], SE, id="for-middle"),
    pytest.param(PROXY, [f"for={SE};"], SE, id="trailing-semicolon"),
    pytest.param(PROXY, [f"for = {SE}"], SE, id="spaces-around-equals"),
    # Multiple elements and lines, walked right to left.
    pytest.param(PROXY, [f"for={SE}, for={PROXY2}"], SE, id="elements-trusted-peeled"),
    pytest.param(PROXY, [f"for={SPOOF}, for={SE}, for={PROXY2}"], SE, id="elements-spoof-left"),
    pytest.param(PROXY, [f"for={SE}, for={US}"], US, id="elements-right-most-untrusted"),
    pytest.param(PROXY, [f"for={SPOOF}, for={SE}", f"for={PROXY2}"], SE, id="lines-merged"),
    pytest.param(PROXY, [f"for={PROXY3};proto=http, for={PROXY2}"], PROXY3, id="all-trusted"),
    pytest.param(
        PROXY, [f'for=_hidden, for="[{CH6}]:1", for={PROXY2}'], CH6, id="hidden-left-of-client"
    ),
    # Obfuscated or unknown identifiers met on the walk.
    pytest.param(PROXY, ["for=_hidden"], None, id="for-hidden"),
    pytest.param(PROXY, ['for="_hidden"'], None, id="for-quoted-hidden"),
    pytest.param(PROXY, ["for=unknown"], None, id="for-unknown"),
    pytest.param(PROXY, [f"for={SE}, for=_hidden"], None, id="hidden-right-most"),
    pytest.param(PROXY, [f"for={SE}, for=_hidden, for={PROXY2}"], None, id="hidden-on-walk"),
    pytest.param(PROXY, ["for="], None, id="for-empty"),
    pytest.param(PROXY, ['for="[fe80::1%eth0]"'], None, id="for-zone-id"),
    pytest.param(PROXY, ["for=proxy.example.com"], None, id="for-hostname"),
    # Malformed headers: the whole header is refused.
    pytest.param(PROXY, ["proto=https"], None, id="element-without-for"),
    pytest.param(PROXY, [f"for={SE}, proto=https"], None, id="last-element-without-for"),
    pytest.param(PROXY, [f"proto=https, for={SE}"], None, id="first-element-without-for"),
    pytest.param(PROXY, [f"for={SE}", "by=10.0.0.2"], None, id="line-without-for"),
    pytest.param(PROXY, [f"for={SE},, for={PROXY2}"], None, id="empty-element"),
    pytest.param(PROXY, [f"for={SPOOF};for={SE}"], None, id="duplicate-for"),
    pytest.param(PROXY, [f"for={SE};secure"], None, id="pair-without-equals"),
    pytest.param(PROXY, [SE], None, id="x-forwarded-for-syntax"),
    pytest.param(PROXY, [f'for={SE};by="a,b"'], None, id="quoted-comma-not-parsed"),
    pytest.param(
        PROXY, [padded(f"for={SE}", MAX_FORWARDED_HEADER_BYTES + 1)], None, id="oversized"
    ),
    # No header, peer problems.
    pytest.param(PROXY, [], PROXY, id="trusted-peer-no-header"),
    pytest.param(PROXY, [" "], PROXY, id="trusted-peer-blank-header"),
    pytest.param(None, [f"for={SE}"], None, id="peer-none"),
    pytest.param("not-an-ip", [f"for={SE}"], None, id="peer-not-an-ip"),
]


@pytest.mark.parametrize(("peer", "values", "expected"), FORWARDED_CASES)
def test_resolve_client_ip_forwarded(
    peer: str | None, values: list[str], expected: str | None
) -> None:
    assert resolve_client_ip(peer, values, trusted(), "forwarded") == expected


@pytest.mark.parametrize("header_name", ["x-forwarded-for", "forwarded"])
@pytest.mark.parametrize("peer", [SE, PROXY, CH6, f"::ffff:{SE}", f"{PROXY}:1234"])
def test_no_trusted_proxies_always_the_peer(peer: str, header_name: str) -> None:
    expected = parse_ip(peer)
    assert expected is not None
    values = [f"{SPOOF}, for={SPOOF}"]
    assert resolve_client_ip(peer, values, TrustedProxies([]), header_name) == expected


# -- parse_ip ---------------------------------------------------------------------------------

PARSE_IP_CASES = [
    pytest.param(SE, SE, id="ipv4"),
    pytest.param(f"  {SE}\t", SE, id="ipv4-whitespace"),
    pytest.param(f'"{SE}"', SE, id="ipv4-quoted"),
    pytest.param(f'" {SE} "', SE, id="ipv4-quoted-inner-space"),
    pytest.param(f"{SE}:8080", SE, id="ipv4-port"),
    pytest.param("1.2.3.4:8080", "1.2.3.4", id="ipv4-port-1.2.3.4"),
    pytest.param(f"{SE}:0", SE, id="ipv4-port-zero"),
    pytest.param("0.0.0.0", "0.0.0.0", id="ipv4-any"),
    pytest.param("255.255.255.255", "255.255.255.255", id="ipv4-broadcast"),
    pytest.param(CH6, CH6, id="ipv6"),
    pytest.param("2A02:D000:0000:0000:0000:0000:0000:0001", CH6, id="ipv6-long-upper"),
    pytest.param(f"[{CH6}]", CH6, id="ipv6-bracketed"),
    pytest.param(f"[{CH6}]:443", CH6, id="ipv6-bracketed-port"),
    pytest.param(f'"[{DOC6}]:4711"', DOC6, id="ipv6-quoted-bracketed-port"),
    pytest.param("::1", "::1", id="ipv6-loopback"),
    pytest.param("::", "::", id="ipv6-any"),
    pytest.param(f"::ffff:{SE}", SE, id="mapped"),
    pytest.param(f"::FFFF:{SE}", SE, id="mapped-upper"),
    pytest.param("::ffff:59a0:1470", SE, id="mapped-hex"),
    pytest.param(f"[::ffff:{SE}]:80", SE, id="mapped-bracketed-port"),
    pytest.param(f"0:0:0:0:0:ffff:{SE}", SE, id="mapped-long"),
    pytest.param("64:ff9b::1.2.3.4", "64:ff9b::102:304", id="nat64-is-not-mapped"),
    pytest.param("::1.2.3.4", "::102:304", id="ipv4-compatible-is-not-mapped"),
    pytest.param("", None, id="empty"),
    pytest.param("   ", None, id="blank"),
    pytest.param('""', None, id="empty-quotes"),
    pytest.param("garbage", None, id="garbage"),
    pytest.param("unknown", None, id="unknown"),
    pytest.param("_hidden", None, id="obfuscated"),
    pytest.param("localhost", None, id="hostname"),
    pytest.param("proxy.example.com", None, id="fqdn"),
    pytest.param("1.2.3", None, id="short-ipv4"),
    pytest.param("1.2.3.4.5", None, id="long-ipv4"),
    pytest.param("256.1.1.1", None, id="octet-too-big"),
    pytest.param("01.2.3.4", None, id="leading-zero"),
    pytest.param("16909060", None, id="integer-form"),
    pytest.param("0x1.2.3.4", None, id="hex-octet"),
    pytest.param("1.2.3.4:", None, id="empty-port"),
    pytest.param("1.2.3.4:http", None, id="named-port"),
    pytest.param("1.2.3.4:-1", None, id="negative-port"),
    pytest.param("1.2.3.4:80:80", None, id="two-ports"),
    pytest.param(f"[{CH6}", None, id="unclosed-bracket"),
    pytest.param(f"[{CH6}]:", None, id="bracketed-empty-port"),
    pytest.param(f"[{CH6}]:http", None, id="bracketed-named-port"),
    pytest.param(f"[{CH6}]443", None, id="bracketed-port-without-colon"),
    pytest.param("[garbage]", None, id="bracketed-garbage"),
    pytest.param("[]", None, id="empty-brackets"),
    pytest.param("fe80::1%eth0", None, id="zone-id"),
    pytest.param("fe80::1%1", None, id="numeric-zone-id"),
    pytest.param("[fe80::1%eth0]:80", None, id="bracketed-zone-id"),
    pytest.param("1.2.3.4%eth0", None, id="ipv4-zone-id"),
    pytest.param("1" * 65, None, id="overlong"),
    pytest.param(" " * 100 + SE, SE, id="surrounding-space-not-counted"),
    pytest.param("10.0.0.0/8", None, id="network-not-address"),
    pytest.param(f"{SE} {US}", None, id="two-addresses"),
]


@pytest.mark.parametrize(("text", "expected"), PARSE_IP_CASES)
def test_parse_ip(text: str, expected: str | None) -> None:
    assert parse_ip(text) == expected


def _reference_canonical(address: ipaddress.IPv6Address) -> str:
    """What ``parse_ip`` promises for an IPv6 address, said with ``ipaddress``."""
    mapped = address.ipv4_mapped
    return str(mapped) if mapped is not None else str(address)


# 128-bit values built from hextets that are often zero, so runs of zeros of every length and
# position (RFC 5952's compression choices) and the ::/96 and ::ffff:0:0/96 prefixes all occur.
_HEXTETS = st.lists(st.one_of(st.just(0), st.just(0xFFFF), st.integers(0, 0xFFFF)),
                    min_size=8, max_size=8)


@given(_HEXTETS, st.sampled_from(["compressed", "exploded", "upper", "bracketed-port"]))
@settings(max_examples=400, deadline=None)
def test_parse_ip_gives_one_canonical_text_for_every_ipv6_spelling(
    hextets: list[int], spelling: str
) -> None:
    address = ipaddress.IPv6Address(int.from_bytes(b"".join(h.to_bytes(2) for h in hextets)))
    text = {"compressed": address.compressed, "exploded": address.exploded,
            "upper": address.exploded.upper(),
            "bracketed-port": f"[{address.compressed}]:443"}[spelling]
    assert parse_ip(text) == _reference_canonical(address)


# -- forwarded_chain --------------------------------------------------------------------------

CHAIN_CASES = [
    pytest.param([], "x-forwarded-for", [], id="xff-no-lines"),
    pytest.param([""], "x-forwarded-for", [], id="xff-empty-line"),
    pytest.param([SE], "x-forwarded-for", [SE], id="xff-one"),
    pytest.param([f" {SE} ,{US} "], "x-forwarded-for", [SE, US], id="xff-stripped"),
    pytest.param([SE, f"{US}, {PROXY}"], "x-forwarded-for", [SE, US, PROXY], id="xff-lines"),
    pytest.param(["1.2.3.4,,5.6.7.8"], "x-forwarded-for", ["1.2.3.4", "", "5.6.7.8"], id="xff-gap"),
    pytest.param(["garbage, unknown"], "x-forwarded-for", ["garbage", "unknown"], id="xff-raw"),
    pytest.param([f"for={SE}"], "x-forwarded-for", [f"for={SE}"], id="xff-not-parsed-as-rfc"),
    pytest.param([], "forwarded", [], id="rfc-no-lines"),
    pytest.param([f"for={SE}"], "forwarded", [SE], id="rfc-one"),
    pytest.param(
        [f'for={SE};proto=https, For="[{DOC6}]:4711"'],
        "forwarded",
        [SE, f'"[{DOC6}]:4711"'],
        id="rfc-two-elements",
    ),
    pytest.param([f"for={SE}", f"for={US}"], "forwarded", [SE, US], id="rfc-lines"),
    pytest.param(["for=_hidden"], "forwarded", ["_hidden"], id="rfc-hidden-kept-raw"),
    pytest.param(["proto=https"], "forwarded", None, id="rfc-element-without-for"),
    pytest.param([f"for={SE};for={US}"], "forwarded", None, id="rfc-duplicate-for"),
    pytest.param([f"for={SE};junk"], "forwarded", None, id="rfc-pair-without-equals"),
    pytest.param([f"for={SE},"], "forwarded", None, id="rfc-trailing-comma"),
    pytest.param(
        [padded(SE, MAX_FORWARDED_HEADER_BYTES)], "x-forwarded-for", [SE], id="xff-at-limit"
    ),
    pytest.param(
        [padded(SE, MAX_FORWARDED_HEADER_BYTES + 1)], "x-forwarded-for", None, id="xff-over-limit"
    ),
    pytest.param(
        ["x" * 4096, "y" * 4096], "x-forwarded-for", None, id="xff-lines-joined-over-limit"
    ),
    pytest.param(
        [padded(f"for={SE}", MAX_FORWARDED_HEADER_BYTES + 1)], "forwarded", None, id="rfc-over"
    ),
]


@pytest.mark.parametrize(("values", "header_name", "expected"), CHAIN_CASES)
def test_forwarded_chain(values: list[str], header_name: str, expected: list[str] | None) -> None:
    assert forwarded_chain(values, header_name) == expected


# -- TrustedProxies ---------------------------------------------------------------------------

MEMBERSHIP_CASES = [
    pytest.param(["10.0.0.0/8"], "10.1.2.3", True, id="ipv4-in-cidr"),
    pytest.param(["10.0.0.0/8"], "10.255.255.255", True, id="ipv4-last-in-cidr"),
    pytest.param(["10.0.0.0/8"], "11.0.0.0", False, id="ipv4-outside-cidr"),
    pytest.param(["10.0.0.0/8"], "10.1.2.3:8080", True, id="ipv4-with-port"),
    pytest.param(["10.0.0.0/8"], " 10.1.2.3 ", True, id="ipv4-whitespace"),
    pytest.param(["10.0.0.0/8"], "::ffff:10.1.2.3", True, id="mapped-in-ipv4-cidr"),
    pytest.param(["10.0.0.0/8"], "[::ffff:10.1.2.3]:80", True, id="mapped-bracketed-port"),
    pytest.param(["10.0.0.1/8"], "10.9.9.9", True, id="host-bits-set-not-strict"),
    pytest.param(["127.0.0.1"], "127.0.0.1", True, id="bare-host"),
    pytest.param(["127.0.0.1"], "127.0.0.2", False, id="bare-host-neighbour"),
    pytest.param(["2001:db8::/32"], "2001:db8:1::1", True, id="ipv6-in-cidr"),
    pytest.param(["2001:db8::/32"], "2001:DB8:0:0::FFFF", True, id="ipv6-upper-non-canonical"),
    pytest.param(["2001:db8::/32"], "[2001:db8::1]:443", True, id="ipv6-bracketed-port"),
    pytest.param(["2001:db8::/32"], "2001:db9::1", False, id="ipv6-outside-cidr"),
    pytest.param(["2001:db8:ffff::/48"], "2001:db8:ffff:1::1", True, id="ipv6-48"),
    pytest.param(["2001:db8:ffff::/48"], "2001:db8:fffe::1", False, id="ipv6-48-outside"),
    pytest.param(["::1/128"], "::1", True, id="ipv6-loopback"),
    pytest.param(["::/0"], CH6, True, id="ipv6-everything"),
    pytest.param(["::/0"], SE, False, id="ipv6-everything-not-ipv4"),
    pytest.param(["0.0.0.0/0"], CH6, False, id="ipv4-everything-not-ipv6"),
    pytest.param(["0.0.0.0/0"], f"::ffff:{SE}", True, id="ipv4-everything-mapped"),
    pytest.param(["fe80::/10"], "fe80::1%eth0", False, id="zone-id-never-trusted"),
    pytest.param(["10.0.0.0/8", "2001:db8::/32"], "2001:db8::5", True, id="mixed-list-ipv6"),
    pytest.param(["10.0.0.0/8", "2001:db8::/32"], "10.0.0.5", True, id="mixed-list-ipv4"),
    pytest.param(["10.0.0.0/8"], "garbage", False, id="garbage"),
    pytest.param(["10.0.0.0/8"], "", False, id="empty"),
    pytest.param(["10.0.0.0/8"], "10.0.0.0/8", False, id="network-string"),
]


@pytest.mark.parametrize(("cidrs", "host", "expected"), MEMBERSHIP_CASES)
def test_trusted_proxies_membership(cidrs: list[str], host: str, expected: bool) -> None:
    proxies = TrustedProxies(cidrs)
    assert (host in proxies) is expected
    assert (host in proxies) is expected  # the per-host cache gives the same answer


@pytest.mark.parametrize(
    "cidr", ["::ffff:10.0.0.0/104", "::ffff:10.0.0.1/128"], ids=["mapped-104", "mapped-128"]
)
def test_trusted_proxies_written_as_ipv4_mapped_cidr(cidr: str) -> None:
    # The policy loader accepts these CIDRs (they are valid IPv6 networks), and dual-stack
    # listeners report IPv4 proxies as ::ffff:a.b.c.d. Addresses are canonicalised to IPv4, so
    # the networks must be too, or the proxy is silently not trusted and becomes "the client".
    proxies = TrustedProxies([cidr])
    assert resolve_client_ip(f"::ffff:{PROXY}", [SE], proxies) == SE
    assert PROXY in proxies
    assert f"::ffff:{PROXY}" in proxies


def test_empty_trusted_proxies_is_falsy_and_contains_nothing() -> None:
    proxies = TrustedProxies([])
    assert not proxies
    assert bool(proxies) is False
    for host in (PROXY, "127.0.0.1", "0.0.0.0", "::1", CH6, f"::ffff:{SE}"):
        assert host not in proxies


def test_non_empty_trusted_proxies_is_truthy() -> None:
    assert TrustedProxies(["10.0.0.0/8"])
    assert TrustedProxies(["::1"])


@pytest.mark.parametrize(
    "host",
    [
        None,
        167772161,  # int(IPv4Address("10.0.0.1"))
        b"10.0.0.1",
        bytearray(b"10.0.0.1"),
        ipaddress.ip_address("10.0.0.1"),
        ipaddress.ip_network("10.0.0.0/24"),
        ("10.0.0.1", 80),
        ["10.0.0.1"],
        1.5,
        object(),
    ],
    ids=lambda value: type(value).__name__,
)
def test_trusted_proxies_membership_non_str_is_false(host: object) -> None:
    assert (host in TrustedProxies(["10.0.0.0/8", "0.0.0.0/0", "::/0"])) is False


def test_trusted_proxies_cache_overflow_keeps_answers_right() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    for i in range(5000):
        assert f"10.{i // 256 % 256}.{i % 256}.1" in proxies
        assert f"11.{i // 256 % 256}.{i % 256}.1" not in proxies
    assert PROXY in proxies
    assert SE not in proxies


@pytest.mark.parametrize("bad", ["garbage", "10.0.0.0/33", "10.0.0.0/8/8", "", "fe80::/129"])
def test_trusted_proxies_refuses_bad_cidr(bad: str) -> None:
    with pytest.raises(ValueError):
        TrustedProxies([bad])


# -- properties -------------------------------------------------------------------------------


def _is_trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return str(address) in trusted()


untrusted_peers = st.one_of(
    st.sampled_from([SE, US, CH6, SPOOF, f"::ffff:{SE}", f"{SE}:443", f"[{CH6}]:1"]),
    st.ip_addresses().filter(lambda a: not _is_trusted(a)).map(str),
)
trusted_peers = st.one_of(
    st.sampled_from([PROXY, PROXY3, PROXY6, "127.0.0.1", f"::ffff:{PROXY}", f"{PROXY}:8080"]),
    st.ip_addresses(network="10.0.0.0/8").map(str),
    st.ip_addresses(network="2001:db8:ffff::/48").map(str),
)

_addresses = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(network="10.0.0.0/8").map(str),
    st.ip_addresses(network="192.168.0.0/16").map(str),
    st.ip_addresses(v=6, network="2001:db8:ffff::/48").map(str),
)
_entries = st.one_of(
    st.text(max_size=12),
    _addresses,
    _addresses.map(lambda a: f"{a}:8080" if ":" not in a else f"[{a}]:8080"),
    _addresses.map(lambda a: f"[{a}]"),
    _addresses.map(lambda a: f'"{a}"'),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
    st.sampled_from(["", " ", "unknown", "_hidden", "localhost", "fe80::1%eth0", "[", '"']),
)
_rfc_entries = st.one_of(
    _entries.map(lambda e: f"for={e}"),
    _entries.map(lambda e: f'for="{e}"'),
    _entries.map(lambda e: f"proto=https;For={e};by=10.0.0.1"),
    _entries,
)
_rfc_clean = st.one_of(
    _addresses.map(lambda a: f"for={a}"),
    _addresses.map(lambda a: f'for="[{a}]:4711"' if ":" in a else f'For="{a}:4711"'),
    _addresses.map(lambda a: f"proto=https;for={a};by=_proxy"),
)
header_lines = st.one_of(
    st.text(),
    st.lists(_entries, max_size=6).map(", ".join),
    st.lists(_entries, max_size=6).map(",".join),
    st.lists(_rfc_entries, max_size=6).map(", ".join),
    st.lists(_rfc_clean, min_size=1, max_size=6).map(", ".join),
)
header_values = st.one_of(
    st.lists(header_lines, max_size=4),
    st.lists(st.lists(_rfc_clean, min_size=1, max_size=4).map(", ".join), min_size=1, max_size=3),
)
header_names = st.sampled_from(["x-forwarded-for", "forwarded"])


def _candidates(values: list[str], header_name: str) -> set[str]:
    """Every canonical address that appears as an entry of the header."""
    joined = ",".join(values)
    if header_name == "forwarded":
        raw = [
            pair.partition("=")[2] for element in joined.split(",") for pair in element.split(";")
        ]
    else:
        raw = joined.split(",")
    return {ip for ip in map(parse_ip, raw) if ip is not None}


@settings(max_examples=300, database=None, deadline=None)
@given(peer=untrusted_peers, values=header_values, header_name=header_names)
def test_property_untrusted_peer_is_always_the_client(
    peer: str, values: list[str], header_name: str
) -> None:
    assert resolve_client_ip(peer, values, trusted(), header_name) == parse_ip(peer)


@settings(max_examples=500, database=None, deadline=None)
@given(peer=trusted_peers, values=header_values, header_name=header_names)
def test_property_trusted_peer_yields_none_or_an_address_from_the_header(
    peer: str, values: list[str], header_name: str
) -> None:
    result = resolve_client_ip(peer, values, trusted(), header_name)
    if result is None:
        return
    assert parse_ip(result) == result  # canonical
    assert result == parse_ip(peer) or result in _candidates(values, header_name)



# -- where an address is located: Teredo carries its client's IPv4 ------------------------------

@pytest.mark.parametrize(("ip", "located"), [
    # 2001:0:<server>:<flags>:<port ^ ffff>:<client ^ ffffffff>
    pytest.param("2001:0:d8a0:5338::a65f:eb8f", SE, id="teredo-server-us-client-se"),
    pytest.param("2001:0:c633:6407:8000:63bf:3fff:fdfa", "192.0.2.5", id="teredo-fixture"),
    pytest.param("2001::a65f:eb8f", SE, id="teredo-server-0.0.0.0-compressed"),
    pytest.param("2002:59a0:1470::1", "2002:59a0:1470::1", id="6to4-left-to-the-database"),
    pytest.param("2001:db8::1", "2001:db8::1", id="documentation-range"),
    pytest.param("2001:1::1", "2001:1::1", id="2001-0001-is-not-teredo"),
    pytest.param(CH6, CH6, id="plain-ipv6"),
    pytest.param(SE, SE, id="ipv4"),
])
def test_located_address(ip: str, located: str) -> None:
    assert parse_ip(ip) == ip  # the engine passes canonical text
    assert located_address(ip) == located


# -- who set the identity headers: the gateway, directly or through trusted proxies ----------------

GATEWAY = "10.9.0.5"
SOURCES = TrustedProxies([f"{GATEWAY}/32", "2001:db8:9::/48"])


@pytest.mark.parametrize(("peer", "values", "header_name", "expected"), [
    pytest.param(GATEWAY, [], "x-forwarded-for", True, id="the-gateway-itself"),
    pytest.param(GATEWAY, [SPOOF], "x-forwarded-for", True, id="the-gateway-with-a-chain"),
    pytest.param(PROXY, [f"{SE}, {GATEWAY}"], "x-forwarded-for", True, id="behind-a-proxy"),
    pytest.param(PROXY, [f"{SE}, {GATEWAY}, {PROXY2}"], "x-forwarded-for", True,
                 id="behind-two-proxies"),
    pytest.param(PROXY, [f"{SE}, {GATEWAY}", PROXY2], "x-forwarded-for", True,
                 id="two-header-lines"),
    pytest.param(PROXY, [f"{SE}, [2001:db8:9::1]:443"], "x-forwarded-for", True,
                 id="ipv6-gateway-with-port"),
    pytest.param(PROXY, [f'for={SE}, for="{GATEWAY}:80"'], "forwarded", True,
                 id="rfc-7239"),
    pytest.param(PROXY, [f"{GATEWAY}, {SE}"], "x-forwarded-for", False,
                 id="gateway-named-by-the-client"),
    pytest.param(PROXY, [SE], "x-forwarded-for", False, id="around-the-gateway"),
    pytest.param(PROXY, [], "x-forwarded-for", False, id="proxy-without-chain"),
    pytest.param(PROXY, [f"{PROXY2}, {PROXY3}"], "x-forwarded-for", False, id="only-proxies"),
    pytest.param(PROXY, [f"{GATEWAY}, junk"], "x-forwarded-for", False, id="malformed-hop"),
    pytest.param(PROXY, [f"{GATEWAY}, {SE}"], "forwarded", False, id="malformed-forwarded"),
    pytest.param(SPOOF, [GATEWAY], "x-forwarded-for", False, id="untrusted-peer"),
    pytest.param(None, [GATEWAY], "x-forwarded-for", False, id="no-peer"),
])
def test_reached_from(
    peer: str | None, values: list[str], header_name: str, expected: bool
) -> None:
    assert reached_from(SOURCES, peer, values, trusted(), header_name) is expected


@pytest.mark.parametrize(("peer", "values", "expected"), [
    pytest.param(CH6, [f"[{CH6}]:443, {SE}"], True, id="entry-with-port"),
    pytest.param(CH6, [f"{CH6}, {SE}"], True, id="entry-without-port"),
    pytest.param(SE, [f"{CH6}", f"{SE}:8080"], True, id="second-line"),
    pytest.param(CH6, [SE], False, id="not-named"),
    pytest.param(CH6, ["x" * (MAX_FORWARDED_HEADER_BYTES + 1)], False, id="too-long"),
])
def test_names_itself(peer: str, values: list[str], expected: bool) -> None:
    assert names_itself(peer, values, "x-forwarded-for") is expected
