"""TEMPORARY stand-in for promotions.codings (helper C of issue 19), with its signatures only.
Deleted when that module is merged."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator


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
