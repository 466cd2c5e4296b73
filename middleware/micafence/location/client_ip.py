"""Who is the client? The direct peer, or a forwarded address vouched for by trusted proxies.

Forwarded headers are only read when the direct peer is one of the policy's trusted proxies,
and then walked from the right: each trusted hop is peeled off and the first untrusted address
is the client. A malformed entry met on that walk makes the client unknown (``None``); we never
fall back to an address further left, because that part of the header is client-supplied.

The same walk answers a second question, who set the identity headers
(:func:`reached_from`): the auth gateway in ``client_identity.trusted_sources``, reached
directly or only through trusted proxies.

An address is located (:func:`located_address`) on the client it stands for: a Teredo address
(``2001::/32``) carries its client's IPv4, which is where the client is; the rest of it names
the Teredo server. A 6to4 address (``2002::/16``) carries the IPv4 of the client's own 6to4
router: MaxMind's databases alias that range onto the IPv4 tree, so it is located there, and a
database without the alias (micafence's ``micafence-regions-Test`` fixture) knows nothing of
it, which makes the visitor ``unknown_country`` (failure posture).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from functools import lru_cache

from micafence.caches import BoundedCache

# Longer headers are refused outright: a real chain is a handful of hops.
MAX_FORWARDED_HEADER_BYTES = 8192
_CACHE_LIMIT = 4096
_ZEROS_10 = bytes(10)
# Canonical (RFC 5952) text of a 2001:0000::/32 address starts one of these two ways.
_TEREDO_PREFIXES = ("2001:0:", "2001::")
# Longer hop text is parsed without the memo (an address with quotes, port and blanks is less).
_MAX_HOP_CHARS = 96


@lru_cache(maxsize=65536)
def parse_ip(text: str) -> str | None:
    """Canonical text of one address as found in a header or scope, or ``None``.

    Accepts ``1.2.3.4``, ``1.2.3.4:80``, ``2001:db8::1``, ``[2001:db8::1]``, ``[2001:db8::1]:80``
    and quoted forms; IPv4-mapped IPv6 (``::ffff:1.2.3.4``) becomes plain IPv4. Zone ids, host
    names, ``unknown`` and obfuscated identifiers (``_hidden``) are not addresses.
    """
    value = text.strip().strip('"').strip()
    if not value or len(value) > 64:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        rest = value[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        value = value[1:end]
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
        if not port.isdigit():
            return None
        value = host
    if "%" in value:
        return None
    if ":" in value:
        # IPv6 through the C parser: ``ipaddress`` takes ~9 µs per IPv6 address, and a visitor
        # rotating through IPv6 addresses makes every request a new one.
        try:
            packed = socket.inet_pton(socket.AF_INET6, value)
        except OSError:
            return None
        if packed[:10] != _ZEROS_10:  # inet_ntop writes RFC 5952 text, as ipaddress does
            return socket.inet_ntop(socket.AF_INET6, packed)
        if packed[10:12] == b"\xff\xff":
            return socket.inet_ntoa(packed[12:])  # IPv4-mapped: plain IPv4
        return str(ipaddress.IPv6Address(packed))  # ::a.b.c.d: inet_ntop would write dots
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        return None


def located_address(ip: str) -> str:
    """The address to locate for the canonical address ``ip``: the client's IPv4 of a Teredo
    address (its last 32 bits inverted), else ``ip`` itself.

    A database that aliases ``2001::/32`` (MaxMind's do) would otherwise answer for the Teredo
    server, in another country than the client. 6to4 (``2002::/16``) is left to the database.
    """
    if not ip.startswith(_TEREDO_PREFIXES):
        return ip
    teredo = ipaddress.IPv6Address(ip).teredo
    return str(teredo[1]) if teredo is not None else ip


class TrustedProxies:
    """A set of CIDR networks with cheap membership tests on address strings.

    A test compares integers (``inet_pton`` and a mask per network): a new address costs about
    a microsecond, where ``ipaddress`` objects cost several, and a visitor rotating through
    IPv6 addresses makes every forwarded hop a new one.
    """

    def __init__(self, cidrs: Iterable[str]) -> None:
        self.networks = tuple(_unmapped(ipaddress.ip_network(c, strict=False)) for c in cidrs)
        self._masks = tuple(
            (net.version == 6, int(net.network_address), int(net.netmask)) for net in self.networks
        )
        self._seen: BoundedCache[str, bool] = BoundedCache(_CACHE_LIMIT)
        self._known = self._seen.get  # the hit path: one dict look-up, no hop

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, host: object) -> bool:
        if not isinstance(host, str):
            return False
        known = self._known(host)
        if known is not None:
            return known
        canonical = _hop(host)
        result = False
        if canonical is not None:
            v6 = ":" in canonical  # canonical text: IPv4-mapped addresses are already IPv4
            value = int.from_bytes(socket.inet_pton(
                socket.AF_INET6 if v6 else socket.AF_INET, canonical))
            result = any(is_v6 == v6 and value & mask == network
                         for is_v6, network, mask in self._masks)
        self._seen.put(host, result)
        return result


def _unmapped(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> (
    ipaddress.IPv4Network | ipaddress.IPv6Network
):
    """``::ffff:10.0.0.0/104`` as ``10.0.0.0/8``: addresses are compared in IPv4 form."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
    return network


def _forwarded_for_values(header: str) -> list[str] | None:
    """The ``for=`` values of an RFC 7239 ``Forwarded`` header, in order; ``None`` if malformed."""
    values: list[str] = []
    for element in header.split(","):
        found: str | None = None
        for pair in element.split(";"):
            name, eq, value = pair.partition("=")
            if not eq:
                if pair.strip():
                    return None
                continue
            if name.strip().lower() == "for":
                if found is not None:
                    return None
                found = value.strip()
        if found is None:
            return None
        values.append(found)
    return values


def forwarded_chain(header_values: list[str], header_name: str) -> list[str] | None:
    """The hop list carried by all lines of the forwarded header, left to right.

    Several header lines are one list (RFC 9110 §5.3). ``None`` means the header is malformed
    or too long to be honest.
    """
    joined = ",".join(header_values)
    if len(joined) > MAX_FORWARDED_HEADER_BYTES:
        return None
    if not joined.strip():
        return []
    if header_name == "forwarded":
        return _forwarded_for_values(joined)
    return [entry for entry in (e.strip() for e in joined.split(","))]


def resolve_client_ip(
    peer: str | None,
    forwarded_values: list[str],
    trusted: TrustedProxies,
    header_name: str = "x-forwarded-for",
) -> str | None:
    """The client address for a request from ``peer`` carrying ``forwarded_values``.

    ``forwarded_values`` are the raw values of every line of the configured forwarded header
    (``x-forwarded-for`` or ``forwarded``). Returns ``None`` when the address cannot be told.
    """
    if peer is None:
        return None
    direct = parse_ip(peer)
    if direct is None:
        return None
    if not forwarded_values or direct not in trusted:
        return direct
    if header_name != "forwarded":
        joined = forwarded_values[0] if len(forwarded_values) == 1 else ",".join(forwarded_values)
        return _walk_forwarded_for(direct, joined, trusted)
    chain = forwarded_chain(forwarded_values, header_name)
    if chain is None:
        return None
    client = direct
    for raw in reversed(chain):
        hop = _hop(raw)
        if hop is None:
            return None
        client = hop
        if hop not in trusted:
            return hop
    # Every hop is a trusted proxy: the left-most one is the closest thing to a client.
    return client


def reached_from(
    sources: TrustedProxies,
    peer: str | None,
    forwarded_values: list[str],
    proxies: TrustedProxies,
    header_name: str = "x-forwarded-for",
) -> bool:
    """Did this request come from one of ``sources`` (the auth gateway that sets identity
    headers), directly or through ``proxies`` only?

    The peer counts first. A peer that is a trusted proxy but not a source hands the question
    to the hop it says connected to it, the right-most entry of the forwarded header, and so on
    leftwards: the first hop that is a source answers yes, the first that is neither a source
    nor a proxy (or is malformed) answers no. Entries left of an untrusted hop are never read,
    so a client cannot name the gateway for itself.
    """
    if peer in sources:
        return True
    if peer not in proxies or not forwarded_values:
        return False
    chain = forwarded_chain(forwarded_values, header_name)
    for raw in reversed(chain or ()):
        hop = parse_ip(raw)
        if hop is None:
            return False
        if hop in sources:
            return True
        if hop not in proxies:
            return False
    return False


def names_itself(peer: str, forwarded_values: list[str], header_name: str) -> bool:
    """Does the forwarded header name ``peer``, the address the request came from?

    A proxy appends the address that connected to it, never its own, so an untrusted peer named
    in its own forwarded header is a client address a server took from that header (uvicorn's
    proxy headers give the entry's port when it has one, so the port-0 mark is not enough).
    """
    chain = forwarded_chain(forwarded_values, header_name)
    return chain is not None and any(parse_ip(raw) == peer for raw in chain)


def leads_with(peer: str, forwarded_values: list[str]) -> bool:
    """Is ``peer`` the left-most entry of the ``X-Forwarded-For`` lines ``forwarded_values``?

    A server that trusts every peer for proxy headers (uvicorn's ``--forwarded-allow-ips '*'``)
    makes the left-most entry, which the client writes, the client address, with the entry's
    port. Naming a trusted proxy there (``10.0.0.1:5, <any address>``) would make the request
    look proxied through it: the entries right of it, written by the client too, would decide.
    A real proxy names the hop that connected to it, never itself; the left-most entry equals
    the peer otherwise only for a client on the proxy's own address (loopback, internal).
    """
    first = forwarded_values[0].split(",", 1)[0] if forwarded_values else ""
    return _hop(first) == peer


def _walk_forwarded_for(direct: str, joined: str, trusted: TrustedProxies) -> str | None:
    """:func:`resolve_client_ip` over one ``X-Forwarded-For`` list, read from the right only as
    far as the first untrusted hop: the entries left of it, which the client writes, are never
    split or parsed, so their length and content cost nothing (beyond the length check)."""
    if len(joined) > MAX_FORWARDED_HEADER_BYTES:
        return None
    client = direct
    end = len(joined)
    while True:
        comma = joined.rfind(",", 0, end)
        hop = _hop(joined[comma + 1:end])
        if hop is None:
            # A header of nothing but blanks is no list at all: the peer is the client.
            return direct if comma < 0 and end == len(joined) and not joined.strip() else None
        if hop not in trusted:
            return hop
        client = hop
        if comma < 0:
            return client  # every hop trusted: the left-most one is the closest to a client
        end = comma


def _hop(raw: str) -> str | None:
    """:func:`parse_ip` of one hop; text too long to be an address skips its memo, so junk
    never fills the memo with long keys."""
    return parse_ip(raw) if len(raw) <= _MAX_HOP_CHARS else parse_ip.__wrapped__(raw)
