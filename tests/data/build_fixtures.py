"""Build micafence's own small test database, ``micafence-regions-Test.mmdb``.

MaxMind's test databases (``tests/data/maxmind/``) do not cover the places micafence's policy
has to get right: Åland, the French outermost regions, the EEA-but-not-EU countries, a
network with no ``country`` at all. This script writes a tiny ``GeoIP2-Country`` database with
one network for each, in MaxMind's record shape, plus its JSON source
(``micafence-regions-Test.json``, a list of ``{network: record}`` like MaxMind's own).

Run it from anywhere::

    python tests/data/build_fixtures.py            # writes beside this file
    python tests/data/build_fixtures.py OUT_DIR    # writes into OUT_DIR

or import it and call :func:`build_all`. The output is byte-for-byte reproducible: the build
epoch is fixed (:data:`BUILD_EPOCH`) instead of mmdb-writer's ``time.time()``.

Like MaxMind's databases, the IPv6 tree holds IPv4 at ``::/96`` and aliases the IPv4-mapped
range ``::ffff:0:0/96`` onto the same subtree, so ``::ffff:192.0.2.5`` finds the record of
``192.0.2.5``. (mmdb-writer has no option for that; :func:`_alias_ipv4_mapped` does it by
pointing the ``::ffff:0:0/96`` node at the ``::/96`` node. ``maxminddb`` skips that alias when
iterating, so every network is still listed once.) Teredo ``2001::/32`` is aliased the same
way, as MaxMind's databases do: the 32 bits after the prefix, the Teredo *server*'s IPv4, find
that address's record, so ``2001:0:c633:6407::/64`` answers as 198.51.100.7 (CH) whatever
client it carries (micafence locates a Teredo client by the IPv4 in its last 32 bits). Unlike
MaxMind, 6to4 ``2002::/16`` is not aliased: it finds nothing here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter, SearchTreeNode
from netaddr import IPSet

__all__ = ["BUILD_EPOCH", "DATABASE_TYPE", "NETWORKS", "REGIONS_DB_NAME", "build_all"]

REGIONS_DB_NAME = "micafence-regions-Test"
DATABASE_TYPE = "GeoIP2-Country"
#: 2025-01-01T00:00:00Z, fixed so that rebuilding gives the same bytes.
BUILD_EPOCH = 1_735_689_600
DESCRIPTION = "micafence test database: EU outermost regions, EEA and edge cases (fake data)"

Record = dict[str, dict[str, str]]


def _record(country: str | None, registered: str) -> Record:
    """A MaxMind-shaped country record; ``country=None`` leaves the key out entirely."""
    record: Record = {}
    if country is not None:
        record["country"] = {"iso_code": country}
    record["registered_country"] = {"iso_code": registered}
    return record


#: network -> record, in the order they are written to the JSON source.
NETWORKS: dict[str, Record] = {
    "192.0.2.0/28": _record("AX", "FI"),  # Åland: EU, but geolocates as AX, not FI
    "192.0.2.16/28": _record("GF", "FR"),  # French Guiana
    "192.0.2.32/28": _record("RE", "FR"),  # Réunion
    "192.0.2.48/28": _record("GP", "FR"),  # Guadeloupe
    "192.0.2.64/28": _record("MQ", "FR"),  # Martinique
    "192.0.2.80/28": _record("YT", "FR"),  # Mayotte
    "192.0.2.96/28": _record("MF", "FR"),  # Saint-Martin
    "192.0.2.112/28": _record("IS", "IS"),  # EEA, not EU
    "192.0.2.128/28": _record("LI", "LI"),  # EEA, not EU
    "192.0.2.144/28": _record(None, "DE"),  # no "country" key at all
    "192.0.2.160/28": _record("US", "US"),
    "198.51.100.0/24": _record("CH", "CH"),  # neither EU nor EEA
    "2001:db8:1::/48": _record("FR", "FR"),
    "2001:db8:2::/48": _record("JP", "JP"),
}


class _FixedEpochWriter(MMDBWriter):
    """``MMDBWriter`` with a fixed ``build_epoch`` (the library always uses ``time.time()``)."""

    def _build_meta(self) -> dict[str, Any]:
        return {**super()._build_meta(), "build_epoch": BUILD_EPOCH}


def _node_at(root: SearchTreeNode, bits: list[int]) -> SearchTreeNode:
    """The tree node reached by following ``bits`` from ``root``, creating missing nodes."""
    node = root
    for bit in bits:
        child = node.get_or_create(bit)
        if not isinstance(child, SearchTreeNode):
            raise ValueError(f"a network already covers the path {bits}")
        node = child
    return node


def _alias_ipv4_mapped(writer: MMDBWriter) -> None:
    """Point ``::ffff:0:0/96`` at the IPv4 subtree ``::/96``, as MaxMind's databases do."""
    ipv4_root = _node_at(writer.tree, [0] * 96)
    mapped_parent = _node_at(writer.tree, [0] * 80 + [1] * 15)  # ::ffff:0:0/95
    mapped_parent[1] = ipv4_root


def _alias_teredo(writer: MMDBWriter) -> None:
    """Point ``2001::/32`` (Teredo) at the IPv4 subtree, as MaxMind's databases do."""
    ipv4_root = _node_at(writer.tree, [0] * 96)
    prefix = [int(bit) for bit in f"{0x20010000:032b}"]
    _node_at(writer.tree, prefix[:-1])[prefix[-1]] = ipv4_root


def build_regions_db(out_dir: Path) -> Path:
    """Write ``micafence-regions-Test.mmdb`` into ``out_dir`` and return its path."""
    writer = _FixedEpochWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type=DATABASE_TYPE,
        languages=["en"],
        description={"en": DESCRIPTION},
    )
    for network, record in NETWORKS.items():
        writer.insert_network(IPSet([network]), record)
    _alias_ipv4_mapped(writer)
    _alias_teredo(writer)
    path = out_dir / f"{REGIONS_DB_NAME}.mmdb"
    writer.to_db_file(str(path))
    return path


def write_regions_json(out_dir: Path) -> Path:
    """Write the JSON source (``[{network: record}, ...]``) into ``out_dir``; return its path."""
    path = out_dir / f"{REGIONS_DB_NAME}.json"
    source = [{network: record} for network, record in NETWORKS.items()]
    path.write_text(json.dumps(source, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def build_all(out_dir: Path) -> None:
    """Build every generated fixture into ``out_dir`` (created if missing)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    build_regions_db(out_dir)
    write_regions_json(out_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "out_dir",
        nargs="?",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="where to write the fixtures (default: the directory of this script)",
    )
    args = parser.parse_args(argv)
    build_all(args.out_dir)
    print(f"wrote {REGIONS_DB_NAME}.mmdb and {REGIONS_DB_NAME}.json to {args.out_dir}")


if __name__ == "__main__":
    main()
