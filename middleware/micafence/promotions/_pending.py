"""TEMPORARY stand-in for promotions.mime, promotions.charsets and promotions.codings (helpers B
and C of issue 19), with their signatures only. Deleted when those modules are merged."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum

SNIFF_BYTES = 1445


@dataclass(frozen=True, slots=True)
class MimeType:
    essence: str
    params: tuple[tuple[str, str], ...] = ()

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key == name:
                return value
        return None


class Kind(Enum):
    HTML = "html"
    XML = "xml"
    OTHER = "other"
    UNTYPED = "untyped"


def extract(headers: Iterable[tuple[bytes, bytes]]) -> MimeType | None:
    for name, value in headers:
        if name.lower() == b"content-type":
            essence, *params = value.decode("latin-1").split(";")
            pairs = tuple((k.strip().lower(), v.strip().strip('"'))
                          for k, _, v in (p.partition("=") for p in params))
            return MimeType(essence.strip().lower(), pairs) if "/" in essence else None
    return None


def kind_of(mime: MimeType | None) -> Kind:
    if mime is None:
        return Kind.UNTYPED
    if mime.essence in ("text/html", "application/xhtml+xml"):
        return Kind.HTML
    if mime.essence in ("text/xml", "application/xml") or mime.essence.endswith("+xml"):
        return Kind.XML
    return Kind.OTHER


def sniff(prefix: bytes, complete: bool) -> Kind:
    rest = prefix.lstrip(b"\t\n\x0b\x0c\r ")
    if rest.startswith(b"<?xml"):
        return Kind.XML
    return Kind.HTML if rest.startswith(b"<") else Kind.OTHER


def may_be_page(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    return kind_of(extract(headers)) is not Kind.OTHER


def encoding_problem(mime: MimeType | None, prefix: bytes, kind: Kind) -> str | None:
    charset = (mime.param("charset") if mime else None) or ""
    if charset.lower() in ("utf-16", "x-klingon"):
        return f"charset {charset!r} is not rewritten"
    return None


def encoding_name(mime: MimeType | None, prefix: bytes, kind: Kind) -> str:
    charset = (mime.param("charset") if mime else None) or ""
    return "UTF-8" if charset.lower() in ("", "utf-8", "utf8") else charset


class CodingError(Exception):
    pass


def parse_codings(values: Iterable[bytes | str]) -> list[str]:
    found: list[str] = []
    for value in values:
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        for part in text.split(","):
            coding = part.strip().lower()
            if coding in ("", "identity"):
                continue
            if coding not in ("gzip", "deflate"):
                raise CodingError(f"unknown content coding {coding!r}")
            found.append(coding)
    return found


class Decoder:
    def __init__(self, codings: list[str]) -> None:
        self._inflaters = [zlib.decompressobj(31 if c == "gzip" else 15) for c in codings][::-1]

    def feed(self, data: bytes) -> Iterator[bytes]:
        try:
            for inflater in self._inflaters:
                data = inflater.decompress(data)
        except zlib.error as exc:
            raise CodingError(str(exc)) from exc
        for start in range(0, len(data), 65536):
            yield data[start:start + 65536]

    def finish(self) -> Iterator[bytes]:
        if any(not inflater.eof for inflater in self._inflaters):
            raise CodingError("truncated body")
        yield from ()


class Encoder:
    def __init__(self, codings: list[str]) -> None:
        self._deflaters = [zlib.compressobj(6, zlib.DEFLATED, 31 if c == "gzip" else 15)
                           for c in codings]

    def feed(self, data: bytes) -> bytes:
        for deflater in self._deflaters:
            data = deflater.compress(data) + deflater.flush(zlib.Z_SYNC_FLUSH)
        return data

    def finish(self) -> bytes:
        data = b""
        for deflater in self._deflaters:
            data = deflater.compress(data) + deflater.flush()
        return data
