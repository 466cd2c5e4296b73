"""Streaming Content-Encoding (micafence.promotions.codings): what comes in decodes exactly,
whatever the chunking; bad bodies are refused; bombs cost no memory; what goes out decodes with
the standard decoders and renders as it arrives."""

from __future__ import annotations

import gzip
import random
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import brotli
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from micafence.promotions.codings import (
    CHUNK,
    MEMBER_END,
    CodingError,
    Decoder,
    Encoder,
    accepted_codings,
    parse_codings,
)

SINGLE = ["gzip", "x-gzip", "deflate", "br", "zstd"]
PAGE = b"<!doctype html><title>fees</title>" + b"<p data-promo>0% fees</p><p>spot</p>\n" * 400


# --- helpers ----------------------------------------------------------------------------------


def chunks(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    """``data`` cut into pieces whose sizes cycle through ``sizes``."""
    pos, index = 0, 0
    while pos < len(data):
        size = sizes[index % len(sizes)]
        yield data[pos:pos + size]
        pos += size
        index += 1


def decode_all(codings: list[str], pieces: Iterable[bytes]) -> list[bytes]:
    decoder = Decoder(codings)
    out: list[bytes] = []
    for piece in pieces:
        out.extend(decoder.feed(piece))
    out.extend(decoder.finish())
    return out


def decode(codings: list[str], body: bytes, sizes: list[int] | None = None) -> bytes:
    return b"".join(decode_all(codings, chunks(body, sizes or [len(body) or 1])))


def encode(codings: list[str], data: bytes, sizes: list[int] | None = None) -> bytes:
    encoder = Encoder(codings)
    body = b"".join(encoder.feed(piece) for piece in chunks(data, sizes or [len(data) or 1]))
    return body + encoder.finish()


def zstd_decompress(body: bytes) -> bytes:
    """The zstandard package's own decoder, every frame (no content size needed)."""
    return zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True).read()


def stdlib_encode(coding: str, data: bytes) -> bytes:
    """The body as common servers' libraries write it, not as our Encoder does."""
    if coding in ("gzip", "x-gzip"):
        return gzip.compress(data)
    if coding == "deflate":
        return zlib.compress(data)
    if coding == "br":
        return brotli.compress(data)
    return zstandard.ZstdCompressor(write_checksum=True).compress(data)


def stdlib_decode(coding: str, body: bytes) -> bytes:
    if coding in ("gzip", "x-gzip"):
        return gzip.decompress(body)
    if coding == "deflate":
        return zlib.decompress(body)
    if coding == "br":
        return bytes(brotli.decompress(body))
    return zstd_decompress(body)


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def vm_rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


# --- strategies -------------------------------------------------------------------------------


@st.composite
def pages(draw: st.DrawFn) -> bytes:
    """Up to ~1.3 MB: repetitive (compresses well) and random (does not) parts, mixed.

    Hypothesis favours small values; the large branches make sure many bodies span several
    pieces of CHUNK bytes and several of the feed sizes below.
    """
    unit = draw(st.binary(max_size=2000))
    repeat = draw(st.one_of(st.integers(0, 3), st.integers(100, 500)))
    size = draw(st.one_of(st.integers(0, 100), st.integers(50_000, 300_000)))
    noise = random.Random(draw(st.integers(0, 2**32))).randbytes(size)
    return unit * repeat + noise + unit


@st.composite
def chunk_sizes(draw: st.DrawFn) -> list[int]:
    """Feed sizes from 1 byte to 200 KB, cycled; one of them large, so a test stays quick."""
    small = draw(st.lists(st.one_of(st.integers(1, 16), st.integers(1, 200_000)), max_size=7))
    large = draw(st.integers(1000, 200_000))
    return draw(st.permutations([*small, large]))


stacks = st.lists(st.sampled_from(SINGLE), min_size=1, max_size=3)


# --- header parsing ---------------------------------------------------------------------------


def test_parse_codings_combines_every_line_in_order() -> None:
    lines = [b"GZip , br", "", b" identity,, ZSTD\t", "x-gzip,Deflate"]
    assert parse_codings(lines) == ["gzip", "br", "zstd", "x-gzip", "deflate"]
    assert parse_codings([]) == []
    assert parse_codings([b"identity", b" , "]) == []
    # Unknown names are kept, for the Decoder to refuse.
    assert parse_codings([b"gzip, sdch"]) == ["gzip", "sdch"]


def test_parse_codings_lowers_ascii_only() -> None:
    # A Kelvin sign is not a "k", a dotted capital I is not an "i": such names stay unknown.
    assert parse_codings(["X-GZİP"]) == ["x-gzİp"]
    with pytest.raises(CodingError):
        Decoder(parse_codings(["X-GZİP"]))


@pytest.mark.parametrize("name", ["compress", "sdch", "x-compress", "gzip;q=1", "br2", "*"])
def test_unknown_codings_are_refused(name: str) -> None:
    with pytest.raises(CodingError, match="unknown content coding"):
        Decoder(["gzip", name])
    with pytest.raises(CodingError, match="unknown content coding"):
        Encoder([name])


@pytest.mark.parametrize(("value", "kept"), [
    (b"gzip, deflate, br, zstd, dcb, dcz", b"gzip, deflate, br, zstd"),
    (b" x-gzip ;q=0.5 ,identity;q=0, compress", b"x-gzip ;q=0.5, identity;q=0"),
    (b"*", None), (b"*;q=0.000", b"*;q=0.000"), (b"*; Q = 0", b"*; Q = 0"), (b"*;q=0.5", None),
    (b"", None), (b",,", None), (b"\xff\xfe", None), (b"gzip;q=\xff", b"gzip;q=\xff"),
])
def test_accept_encoding_is_cut_to_known_codings(value: bytes, kept: bytes | None) -> None:
    assert accepted_codings(value) == kept


# --- round trips ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(data=pages(), codings=stacks, feed_sizes=chunk_sizes(), body_sizes=chunk_sizes())
def test_encoder_then_decoder_round_trip(
    data: bytes, codings: list[str], feed_sizes: list[int], body_sizes: list[int]
) -> None:
    body = encode(codings, data, feed_sizes)
    pieces = decode_all(codings, chunks(body, body_sizes))
    assert b"".join(pieces) == data
    # One member, so one MEMBER_END when gzip is the only coding, at the end; no other empties.
    alone = codings in (["gzip"], ["x-gzip"])
    assert pieces.count(MEMBER_END) == alone and (not alone or pieces[-1] == MEMBER_END)
    assert all(0 < len(piece) <= CHUNK for piece in pieces if piece != MEMBER_END)


@settings(max_examples=40, deadline=None)
@given(data=pages(), coding=st.sampled_from(SINGLE), sizes=chunk_sizes())
def test_bodies_from_the_standard_encoders_decode(
    data: bytes, coding: str, sizes: list[int]
) -> None:
    assert decode([coding], stdlib_encode(coding, data), sizes) == data


@settings(max_examples=30, deadline=None)
@given(data=pages(), sizes=chunk_sizes())
def test_stacked_codings_undo_in_reverse_header_order(data: bytes, sizes: list[int]) -> None:
    # Content-Encoding: gzip, br — gzip was applied first, br last.
    body = brotli.compress(gzip.compress(data), quality=1)
    assert decode(["gzip", "br"], body, sizes) == data
    with pytest.raises(CodingError):
        decode(["br", "gzip"], body, sizes)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize("coding", SINGLE)
def test_one_byte_at_a_time_and_small_pieces(coding: str, size: int) -> None:
    assert decode([coding], stdlib_encode(coding, PAGE), [size]) == PAGE


def test_no_codings_passes_bytes_through_in_bounded_pieces() -> None:
    data = random.Random(1).randbytes(3 * CHUNK + 5)
    pieces = decode_all([], [data])
    assert b"".join(pieces) == data
    assert max(map(len, pieces)) <= CHUNK
    assert encode([], data) == data


@pytest.mark.parametrize("coding", SINGLE)
def test_empty_body_is_an_empty_page(coding: str) -> None:
    assert decode_all([coding], []) == []
    assert stdlib_decode(coding, encode([coding], b"")) == b""


def test_input_is_kept_when_the_caller_does_not_iterate() -> None:
    body = gzip.compress(PAGE)
    decoder = Decoder(["gzip"])
    decoder.feed(body[:100])  # never iterated
    decoder.feed(body[100:])  # never iterated
    assert b"".join(decoder.finish()) == PAGE


def test_feed_after_finish_is_refused() -> None:
    decoder = Decoder(["gzip"])
    list(decoder.finish())
    with pytest.raises(CodingError):
        decoder.feed(b"x")
    encoder = Encoder(["br"])
    encoder.finish()
    with pytest.raises(CodingError):
        encoder.feed(b"x")


# --- gzip members, zstd frames ----------------------------------------------------------------


def members_of(pieces: list[bytes]) -> list[bytes]:
    """The decoded pieces joined per member (split at MEMBER_END)."""
    found, current = [], b""
    for piece in pieces:
        if piece == MEMBER_END:
            found.append(current)
            current = b""
        else:
            current += piece
    assert current == b"", "output after the last MEMBER_END"
    return found


def test_every_gzip_member_is_decoded_and_its_end_marked() -> None:
    parts = [b"<p>first member</p>", b"<p data-promo>second member</p>", b"<p>third</p>" * 5000,
             b""]
    body = b"".join(gzip.compress(part) for part in parts)
    for sizes in ([len(body)], [1], [3, 17, 4096]):
        assert members_of(decode_all(["gzip"], chunks(body, sizes))) == parts


def test_a_second_gzip_member_in_a_stack_is_refused() -> None:
    """Chromium would give the next coding the first member's bytes only: not kept, refused."""
    two = gzip.compress(b"<p>one</p>") + gzip.compress(b"<p>two</p>")
    with pytest.raises(CodingError, match="second gzip member"):
        decode(["gzip", "br"], brotli.compress(two))
    inner = zlib.compress(b"<p>one</p><p>two</p>")  # gzip last: its members split the stream
    with pytest.raises(CodingError, match="second gzip member"):
        decode(["deflate", "gzip"], gzip.compress(inner[:5]) + gzip.compress(inner[5:]))
    assert decode(["gzip", "br"], brotli.compress(gzip.compress(b"<p>one</p>"))) == b"<p>one</p>"


def test_encoder_ends_a_member_where_asked() -> None:
    encoder = Encoder(["gzip"])
    body = encoder.feed(b"<p>one</p>") + encoder.feed(b"<p>two") + encoder.end_member()
    body += encoder.end_member()  # twice: nothing more
    body += encoder.feed(b"") + encoder.feed(b"</p><p>three</p>") + encoder.end_member()
    body += encoder.finish()  # after an ended member: no empty member
    assert members_of(decode_all(["gzip"], [body])) == [b"<p>one</p><p>two", b"</p><p>three</p>"]
    assert gzip.decompress(body) == b"<p>one</p><p>two</p><p>three</p>"
    assert Encoder([]).end_member() == b""
    with pytest.raises(CodingError):
        Encoder(["gzip", "br"]).end_member()


def test_many_empty_gzip_members_each_end_a_member() -> None:
    """Every empty member is decoded and marked (in pieces of input of any size)."""
    body = gzip.compress(b"", mtime=0) * 5000 + gzip.compress(PAGE, mtime=0)
    for sizes in ([len(body)], [7], [16385]):
        assert members_of(decode_all(["gzip"], chunks(body, sizes))) == [b""] * 5000 + [PAGE]


def test_nul_padding_after_a_gzip_member_is_skipped() -> None:
    body = gzip.compress(b"one") + b"\x00" * 10 + gzip.compress(b"two") + b"\x00" * 3
    assert decode(["gzip"], body, [1]) == b"onetwo"


@pytest.mark.parametrize("tail", [b"x", b"<p data-promo>hidden</p>", b"\x1f", b"\x1f\x8bjunk"])
def test_bytes_after_the_last_gzip_member_are_refused(tail: bytes) -> None:
    # Chromium ignores them; we refuse them rather than guess (stricter, module docstring).
    with pytest.raises(CodingError):
        decode(["gzip"], gzip.compress(PAGE) + tail)


@pytest.mark.parametrize("coding", ["deflate", "br", "zstd"])
def test_bytes_after_the_end_are_refused(coding: str) -> None:
    with pytest.raises(CodingError):
        decode([coding], stdlib_encode(coding, PAGE) + b"<p data-promo>x</p>")


def test_every_zstd_frame_is_decoded_skippable_frames_too() -> None:
    compressor = zstandard.ZstdCompressor()
    skippable = (0x184D2A53).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"skip!"
    body = compressor.compress(b"one,") + skippable + compressor.compress(b"two,") * 2
    assert decode(["zstd"], body, [1]) == b"one,two,two,"
    assert decode(["zstd"], body) == b"one,two,two,"


def test_zstd_many_tiny_blocks() -> None:
    # Empty raw blocks and one-byte RLE blocks, built by hand (RFC 8878 3.1.1.2): batched, yet
    # every byte is right.
    def block(kind: int, size: int, content: bytes, last: int = 0) -> bytes:
        return (size << 3 | kind << 1 | last).to_bytes(3, "little") + content

    frame = b"\x28\xb5\x2f\xfd" + bytes([0x00, 13 << 3])
    frame += block(0, 0, b"") * 5000 + block(1, 1, b"x") * 3000 + block(1, 0, b"y") * 10
    frame += block(1, 70_000, b"z") * 3 + block(0, 3, b"end", last=1)
    page = b"x" * 3000 + b"z" * 210_000 + b"end"
    assert zstd_decompress(frame) == page
    for sizes in ([len(frame)], [1], [5, 4096]):
        pieces = decode_all(["zstd"], chunks(frame, sizes))
        assert b"".join(pieces) == page
        assert max(map(len, pieces)) <= CHUNK


def test_zstd_window_over_8_mib_is_refused() -> None:
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=24)
    compressor = zstandard.ZstdCompressor(compression_params=params).compressobj()
    body = compressor.compress(PAGE) + compressor.flush()
    assert zstandard.ZstdDecompressor().decompressobj().decompress(body) == PAGE
    with pytest.raises(CodingError):
        decode(["zstd"], body)


# --- deflate: zlib-wrapped and raw -----------------------------------------------------------


def test_deflate_zlib_wrapped_and_raw_both_decode() -> None:
    wrapped, raw = zlib.compress(PAGE), raw_deflate(PAGE)
    assert wrapped[:2] != raw[:2]
    for sizes in ([1], [2], [len(PAGE)]):
        assert decode(["deflate"], wrapped, sizes) == PAGE
        assert decode(["deflate"], raw, sizes) == PAGE


def test_deflate_stored_blocks_raw() -> None:
    # Level 0 writes stored blocks: the raw stream starts 0x00/0x01, never a zlib header.
    compressor = zlib.compressobj(0, zlib.DEFLATED, -zlib.MAX_WBITS)
    raw = compressor.compress(PAGE) + compressor.flush()
    assert decode(["deflate"], raw, [1]) == PAGE


def test_deflate_zlib_checksum_is_checked() -> None:
    body = bytearray(zlib.compress(PAGE))
    body[-1] ^= 0xFF  # the Adler-32
    with pytest.raises(CodingError):
        decode(["deflate"], bytes(body))


def test_gzip_body_labelled_deflate_is_refused() -> None:
    with pytest.raises(CodingError):
        decode(["deflate"], gzip.compress(PAGE))


# --- truncated and corrupt bodies -------------------------------------------------------------


SMALL = PAGE[:300]
FIRST_MEMBER = gzip.compress(b"a")


def encoded_bodies() -> list[Any]:
    """Each coding's small page (ids by name: a gzip body's bytes hold its time, so they
    cannot name a test that every pytest-xdist worker must collect alike)."""
    cases = [pytest.param([c], stdlib_encode(c, SMALL), SMALL, id=c) for c in SINGLE]
    cases.append(pytest.param(["deflate"], raw_deflate(SMALL), SMALL, id="raw deflate"))
    cases.append(pytest.param(["gzip"], FIRST_MEMBER + gzip.compress(SMALL), b"a" + SMALL,
                              id="gzip, two members"))
    cases.append(pytest.param(["gzip", "br"], brotli.compress(gzip.compress(SMALL)), SMALL,
                              id="gzip + br"))
    cases.append(pytest.param(["zstd", "deflate"], zlib.compress(stdlib_encode("zstd", SMALL)),
                              SMALL, id="zstd + deflate"))
    return cases


@pytest.mark.parametrize(("codings", "body", "page"), encoded_bodies())
def test_every_truncation_is_refused(codings: list[str], body: bytes, page: bytes) -> None:
    assert decode(codings, body) == page
    for cut in range(1, len(body)):
        if page == b"a" + SMALL and cut == len(FIRST_MEMBER):
            assert decode(codings, body[:cut]) == b"a"  # one whole member: a whole body
            continue
        with pytest.raises(CodingError):
            decode(codings, body[:cut], [7])


@pytest.mark.parametrize("coding", SINGLE)
def test_an_unencoded_page_labelled_with_a_coding_is_refused(coding: str) -> None:
    with pytest.raises(CodingError):
        decode([coding], PAGE)


@pytest.mark.parametrize("coding", ["gzip", "deflate", "zstd"])
def test_corrupt_checksums_are_refused(coding: str) -> None:
    body = bytearray(stdlib_encode(coding, PAGE))
    body[-5 if coding == "gzip" else -1] ^= 0x55  # gzip CRC-32, zlib Adler-32, zstd checksum
    with pytest.raises(CodingError):
        decode([coding], bytes(body))


@pytest.mark.parametrize("coding", SINGLE)
def test_a_corrupt_header_is_refused(coding: str) -> None:
    body = bytearray(stdlib_encode(coding, PAGE))
    body[0] ^= 0xFF
    with pytest.raises(CodingError):
        decode([coding], bytes(body))


# --- bombs ------------------------------------------------------------------------------------

GIB = 1 << 30


def zero_bomb(coding: str) -> bytes:
    """1 GiB of zero bytes, compressed, built in pieces (the bomb is a few MB at most)."""
    block = bytes(1 << 24)
    if coding in ("gzip", "deflate"):
        wbits = 16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS
        compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
        parts = [compressor.compress(block) for _ in range(GIB // len(block))]
        return b"".join(parts) + compressor.flush()
    if coding == "br":
        brotli_compressor = brotli.Compressor(quality=5)
        parts = [bytes(brotli_compressor.process(block)) for _ in range(GIB // len(block))]
        return b"".join(parts) + bytes(brotli_compressor.finish())
    # zstd: the worst case by hand, RLE blocks of 128 KiB from 4 bytes each (RFC 8878 3.1.1.2).
    header = b"\x28\xb5\x2f\xfd" + bytes([0x00, 13 << 3])  # no content size, 8 MiB window
    blocks = GIB // (128 << 10)
    rle = ((128 << 10) << 3 | 1 << 1).to_bytes(3, "little") + b"\x00"
    last = ((128 << 10) << 3 | 1 << 1 | 1).to_bytes(3, "little") + b"\x00"
    return header + rle * (blocks - 1) + last


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_a_gigabyte_bomb_costs_no_memory(coding: str) -> None:
    bomb = zero_bomb(coding)
    assert len(bomb) < 8 << 20
    decoder = Decoder([coding])
    before = vm_rss_kib()
    peak, total, largest, count = before, 0, 0, 0
    for piece in list(chunks(bomb, [1 << 20])):
        for out in decoder.feed(piece):
            total += len(out)
            largest = max(largest, len(out))
            count += 1
            if count % 256 == 0:
                peak = max(peak, vm_rss_kib())
    for out in decoder.finish():
        total += len(out)
        largest = max(largest, len(out))
    peak = max(peak, vm_rss_kib())
    assert total == GIB
    assert largest <= CHUNK
    assert (peak - before) * 1024 < 64 << 20


def test_a_bomb_under_stacked_codings_costs_no_memory() -> None:
    bomb = zlib.compress(zero_bomb("zstd"))  # deflate outside, zstd inside
    decoder = Decoder(["zstd", "deflate"])
    before = vm_rss_kib()
    total, peak = 0, before
    for count, out in enumerate(decoder.feed(bomb), 1):
        total += len(out)
        assert len(out) <= CHUNK
        if count % 256 == 0:
            peak = max(peak, vm_rss_kib())
    total += sum(len(out) for out in decoder.finish())
    assert total == GIB
    assert (peak - before) * 1024 < 64 << 20


# --- encoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("coding", SINGLE)
def test_encoder_output_decodes_with_the_standard_decoders(coding: str) -> None:
    data = PAGE + random.Random(2).randbytes(300_000) + PAGE
    body = encode([coding], data, [1, 5000, 70_000])
    assert stdlib_decode(coding, body) == data


def stream_decoder(coding: str) -> Callable[[bytes], bytes]:
    """The standard library's (or the codec package's) own incremental decoder for ``coding``."""
    if coding == "br":
        return brotli.Decompressor().process
    if coding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress
    wbits = 16 + zlib.MAX_WBITS if coding in ("gzip", "x-gzip") else zlib.MAX_WBITS
    return zlib.decompressobj(wbits).decompress


@pytest.mark.parametrize("coding", SINGLE)
def test_each_feed_is_flushed_for_the_standard_decoders(coding: str) -> None:
    # What was sent so far renders: the bytes so far decode to everything fed so far.
    data = random.Random(3).randbytes(20_000) + PAGE
    encoder = Encoder([coding])
    read = stream_decoder(coding)
    body, received, fed = b"", b"", b""
    for piece in chunks(data, [1, 10, 999, 7000]):
        new = encoder.feed(piece)
        body += new
        fed += piece
        received += bytes(read(new))
        assert received == fed
    body += encoder.finish()
    assert stdlib_decode(coding, body) == data


@settings(max_examples=25, deadline=None)
@given(data=pages(), codings=stacks, sizes=chunk_sizes())
def test_each_feed_is_flushed_through_stacked_codings(
    data: bytes, codings: list[str], sizes: list[int]
) -> None:
    encoder = Encoder(codings)
    decoder = Decoder(codings)
    received, fed = b"", b""
    for piece in chunks(data, sizes):
        fed += piece
        received += b"".join(decoder.feed(encoder.feed(piece)))
        assert received == fed
    received += b"".join(decoder.feed(encoder.finish()))
    received += b"".join(decoder.finish())
    assert received == data


def test_stacked_encoding_applies_codings_in_header_order() -> None:
    body = encode(["gzip", "br"], PAGE, [100])
    assert gzip.decompress(brotli.decompress(body)) == PAGE
    body = encode(["deflate", "zstd", "gzip"], PAGE)
    assert zlib.decompress(zstd_decompress(gzip.decompress(body))) == PAGE
