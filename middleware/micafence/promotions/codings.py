"""Content-Encoding, streamed both ways: undo it on the way in, apply it again on the way out.

The promotion rewriter sees a page as it arrives, a piece at a time; this module stands between
the wire and the rewriter. It never holds a whole body: :class:`Decoder` gives its output in
pieces of at most :data:`CHUNK` bytes and each codec call is bounded in what it may produce, so a
few compressed bytes that inflate to a gigabyte cost CPU time, never memory. Memory per stream is
a piece plus the codec's window (32 KiB for gzip and deflate, at most 16 MiB for br, at most
8 MiB for zstd).

Codings apply in header order (``Content-Encoding: gzip, br`` is gzip first, then br), so the
decoder undoes them in reverse and the encoder applies them in order.

What counts as a valid body, compared with Chromium's ``net/filter`` source streams (the
browser whose rendering the safety net must match):

- **gzip** (and ``x-gzip``): every member is decoded, one after another, each with its CRC and
  length checked. Chromium decodes only the first member and silently ignores every byte after
  its footer (it never checks the CRC); Firefox decodes every member. So the member boundaries
  are kept: when gzip is the body's only coding, :class:`Decoder` yields an empty piece
  (:data:`MEMBER_END`) where a member ends, and the caller ends a member of its own output
  there (:meth:`Encoder.end_member`): Chromium then shows the rewrite of the first member,
  Firefox the rewrite of them all, and a later member never shows in Chromium what the
  original did not. In a stack of codings that cannot be kept (Chromium would hand the next
  coding the first member's bytes only, a truncated stream), so a second member there is
  refused with :class:`CodingError`. We are stricter than Chromium: NUL padding after a member
  is skipped (as ``gzip -d`` and Python's :mod:`gzip` do), and anything else after a member
  must be another whole gzip member, or the body is refused.
- **deflate**: zlib-wrapped as RFC 9110 says, or raw deflate as some servers send. Chromium
  tries zlib first and replays as raw when that fails; we decide from the first two bytes (a
  valid zlib header means zlib), which agrees for every stream a real encoder writes: a raw
  stream can only look like a zlib header if its first block is a stored block with non-zero
  padding bits. Bytes after the end of the stream are refused (Chromium ignores them).
- **br**: one stream; bytes after its end are refused (the brotli decoder itself fails).
- **zstd**: every frame, skippable frames included; windows over 8 MiB are refused as in
  Chromium (RFC 8878 section 3.1.1.1.2).
- A body that stops early (truncated) is refused when :meth:`Decoder.finish` is reached, for
  every coding; Chromium renders what it got. An empty body is an empty page for every coding:
  nothing can hide in zero bytes.

Header parsing: Chromium treats a body whose ``Content-Encoding`` holds any coding it does not
know (``identity`` included) as not encoded at all and renders the raw bytes. We drop
``identity`` and refuse other unknown names with :class:`CodingError`; a caller must treat that
as "cannot check this page" (the failure posture), never as "pass it through".
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Iterator
from functools import lru_cache

import brotli
import zstandard

CHUNK = 65536
"""The largest piece :meth:`Decoder.feed` and :meth:`Decoder.finish` yield."""

MEMBER_END = b""
"""What :class:`Decoder` yields where a gzip member ends (gzip the only coding): the one empty
piece it ever yields."""

_KNOWN = frozenset({"gzip", "x-gzip", "deflate", "br", "zstd"})
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

# Output levels: fast enough to stream a page as it is rewritten, still a good ratio. Brotli's
# default quality (11) runs at a few hundred KB/s, far too slow to sit in a response path.
_DEFLATE_LEVEL = 5
_BROTLI_QUALITY = 4
_ZSTD_LEVEL = 3
_ZSTD_MAX_WINDOW = 1 << 23  # 8 MiB, Chromium's windowLogMax 23


class CodingError(Exception):
    """An unknown content coding, or a body that is corrupt or truncated for its coding."""


def parse_codings(values: Iterable[bytes | str]) -> list[str]:
    """Every ``Content-Encoding`` line, combined: ``[b"gzip", b"BR"]`` → ``["gzip", "br"]``.

    Lines are comma-split, trimmed and ASCII lower-cased; ``identity`` and empty entries are
    dropped. Unknown names are kept: :class:`Decoder` refuses them, so the caller learns of them.
    """
    codings = []
    for value in values:
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        for part in text.split(","):
            name = part.strip(" \t").translate(_ASCII_LOWER)
            if name and name != "identity":
                codings.append(name)
    return codings


_ACCEPTABLE = frozenset({b"gzip", b"x-gzip", b"deflate", b"br", b"zstd", b"identity"})
_Q_ZERO = re.compile(rb"[ \t]*q[ \t]*=[ \t]*0(\.0{0,3})?[ \t]*", re.IGNORECASE)


def accepted_codings(value: bytes) -> bytes | None:
    """A request's ``Accept-Encoding`` cut to the codings the safety net can undo and redo.

    The app then compresses a restricted visitor's page in a coding the visitor accepted (the
    net re-encodes in the app's own coding) and never in one the net cannot read (``dcb`` and
    ``dcz``, Chromium's dictionary codings, or ``compress``), which would cost the visitor the
    failure posture. Elements naming a known coding are kept as written (with their ``q``);
    ``*`` is kept only as a refusal (``*;q=0``), so nothing is ever accepted that the client
    did not accept. None when nothing is left: the header goes (most apps then send identity).
    """
    # Browsers send a handful of values: remembered per value (a short one), as every
    # restricted request asks.
    if len(value) <= _ACCEPT_MEMO_BYTES:
        return _accepted_memo(value)
    return _accepted(value)


_ACCEPT_MEMO_BYTES = 256


@lru_cache(maxsize=256)
def _accepted_memo(value: bytes) -> bytes | None:
    return _accepted(value)


def _accepted(value: bytes) -> bytes | None:
    kept = []
    for element in value.split(b","):
        name, _, parameters = element.partition(b";")
        coding = name.strip(b" \t").lower()
        if coding in _ACCEPTABLE or (coding == b"*" and any(
                _Q_ZERO.fullmatch(parameter) for parameter in parameters.split(b";"))):
            kept.append(element.strip(b" \t"))
    return b", ".join(kept) or None


def _check_known(codings: list[str]) -> None:
    for coding in codings:
        if coding not in _KNOWN:
            raise CodingError(f"unknown content coding {coding!r}")


# --- decoding ---------------------------------------------------------------------------------


class _Stage:
    """One coding being undone. Input is pushed in; output is pulled a piece at a time.

    All state lives on the object (never in a generator's locals), so input handed over is never
    lost, even when a caller stops iterating half way. A stage that reads its input a step at a
    time keeps an offset into it (``_at``) rather than re-slicing the rest at every step.
    """

    def __init__(self) -> None:
        self._input = b""
        self._at = 0  # how much of _input has been used
        self._ready = b""  # decoded output not yet handed on (when a codec call gave > CHUNK)
        self._ready_at = 0
        self.member_ended = False  # the last piece pulled was the end of a gzip member

    def push(self, data: bytes) -> None:
        if self._at:
            self._input, self._at = self._input[self._at:], 0
        self._input = self._input + data if self._input else data

    def _left(self) -> int:
        """Input bytes not used yet."""
        return len(self._input) - self._at

    def pull(self) -> bytes | None:
        """The next decoded piece (at most CHUNK bytes), or None when more input is needed."""
        if self._ready:
            return self._next_ready()
        return self._decode()

    def _emit(self, out: bytes) -> bytes:
        """``out`` as a piece of at most CHUNK bytes; the rest waits for the next pulls."""
        if len(out) <= CHUNK:
            return out
        self._ready, self._ready_at = out, 0
        return self._next_ready()

    def _next_ready(self) -> bytes:
        start = self._ready_at
        piece = self._ready[start:start + CHUNK]
        self._ready_at = start + len(piece)
        if self._ready_at >= len(self._ready):
            self._ready, self._ready_at = b"", 0
        return piece

    def _decode(self) -> bytes | None:
        raise NotImplementedError

    def end(self) -> None:
        """Called once all input is in and all output is out: raise if the body was cut short."""
        raise NotImplementedError


#: The most input one codec call is handed (gzip, deflate, zstd): bounds the work of a call
#: whatever the input decodes to (nothing, for padding, empty members or skippable frames).
_STEP = 16384
_NOT_NUL = re.compile(rb"[^\x00]")


def _is_zlib_header(first: bytes) -> bool:
    """RFC 1950: method 8, window ≤ 32 KiB, and the two bytes a multiple of 31."""
    cmf, flg = first[0], first[1]
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf << 8 | flg) % 31 == 0


class _Inflate(_Stage):
    """gzip (every member, or only one when ``several`` is false) or deflate (zlib-wrapped or
    raw). A pull that ends a gzip member returns that member's last output (maybe empty) and
    sets :attr:`member_ended`, so no output of the next member comes with it."""

    def __init__(self, gzip: bool, several: bool = True) -> None:
        super().__init__()
        self._gzip = gzip
        self._several = several
        self._name = "gzip" if gzip else "deflate"
        self._inflater: zlib._Decompress | None = None
        self._members = 0  # complete members (gzip) or streams (deflate) so far
        self._more = False  # the last call filled its output: zlib may hold more

    def _start(self) -> bool:
        """Begin the next member when its first bytes are here; False when they are not yet."""
        if self._gzip:
            if self._members:  # NUL padding after a member: skipped where it lies, not copied
                found = _NOT_NUL.search(self._input, self._at)
                self._at = found.start() if found is not None else len(self._input)
            if not self._left():
                self._input, self._at = b"", 0  # (padding only: nothing of it is kept)
                return False
            if self._members and not self._several:
                raise CodingError("a second gzip member in a stack of codings (Chromium would "
                                  "decode the first only, handing the next coding a part)")
            wbits = 16 + zlib.MAX_WBITS
        else:
            if self._members and self._left():
                raise CodingError("bytes after the end of the deflate stream")
            if self._left() < 2:
                return False
            first = self._input[self._at:self._at + 2]
            wbits = zlib.MAX_WBITS if _is_zlib_header(first) else -zlib.MAX_WBITS
        self._inflater = zlib.decompressobj(wbits)
        return True

    def _decode(self) -> bytes | None:
        # zlib is handed at most _STEP input bytes a call: what it copies back (the unconsumed
        # tail, the bytes after a member) stays that small, so a body of many tiny members costs
        # its length, not its length times its members. Each pass consumes input, ends a member
        # or yields output; the bound is never reached.
        for _ in range(2 * self._left() + 8):
            if self._inflater is None and not self._start():
                return None
            inflater = self._inflater
            assert inflater is not None
            if not self._left() and not self._more:
                return None
            given = memoryview(self._input)[self._at:self._at + _STEP]
            try:
                out = inflater.decompress(given, CHUNK)
            except zlib.error as exc:
                raise CodingError(f"bad {self._name} body: {exc}") from exc
            self._more = len(out) == CHUNK
            if inflater.eof:
                self._at += len(given) - len(inflater.unused_data)
                self._inflater = None
                self._members += 1
                self._more = False
                self.member_ended = self._gzip
                return out
            self._at += len(given) - len(inflater.unconsumed_tail)
            if out:
                return out
        raise CodingError(f"{self._name} decoder made no progress")

    def end(self) -> None:
        if self._inflater is not None or self._left():
            raise CodingError(f"truncated {self._name} body")


class _Brotli(_Stage):
    def __init__(self) -> None:
        super().__init__()
        self._decompressor = brotli.Decompressor()
        self._seen = False
        self._drain = False  # the decompressor may still hold output for input it has taken

    def _decode(self) -> bytes | None:
        # Drain, feed a step of input, drain again: two passes a step at most.
        for _ in range(2 * (self._left() // _STEP) + 8):
            try:
                if self._decompressor.is_finished():
                    if self._left():
                        raise CodingError("bytes after the end of the br stream")
                    return None
                if self._drain:
                    out = self._decompressor.process(b"", output_buffer_limit=CHUNK)
                elif self._left():
                    self._seen = True
                    data = self._input[self._at:self._at + _STEP]
                    self._at += len(data)
                    out = self._decompressor.process(data, output_buffer_limit=CHUNK)
                else:
                    return None
            except brotli.error as exc:
                raise CodingError(f"bad br body: {exc}") from exc
            self._drain = bool(out) or not self._decompressor.can_accept_more_data()
            if out:
                return self._emit(out)
        raise CodingError("br decoder made no progress")

    def end(self) -> None:
        if self._seen and not self._decompressor.is_finished():
            raise CodingError("truncated br body")


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_SKIPPABLE_TAIL = b"\x2a\x4d\x18"  # 0x184D2A50..0x184D2A5F, little-endian


_ZSTD_BLOCK_MAX = 128 << 10  # what one block may decode to (RFC 8878 section 3.1.1.2.3)


class _Zstd(_Stage):
    """zstd, every frame, handed to the decompressor a few blocks at a time.

    python-zstandard's ``decompressobj().decompress()`` has no output limit: it returns all
    that its input decodes to. But a block decodes to at most 128 KiB, and its header says how
    long it is (RFC 8878 section 3.1). So this stage reads the frame and block headers and hands
    over whole units (frame header, block, checksum, skippable frame) only while what they may
    decode to stays within one block's worth: each call then gives at most a few hundred KiB
    (the block begun in an earlier call, plus this budget, plus the unit that crosses it). Units
    that decode to nothing, such as empty blocks, go in batches, so a body of tiny units costs
    few calls. The decompressor still checks everything.
    """

    def __init__(self) -> None:
        super().__init__()
        decompressor = zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW)
        self._obj = decompressor.decompressobj(read_across_frames=True)
        self._todo = 0  # bytes of the current unit (header, block, checksum) still to hand over
        self._phase = "frame"  # what the next unit is: "frame", "block" or "checksum"
        self._checksum = False

    def _decode(self) -> bytes | None:
        for _ in range(self._left() + 1):  # each pass hands over at least one byte
            part = self._gather()
            if not part:
                return None
            try:
                out = self._obj.decompress(part)
            except zstandard.ZstdError as exc:
                raise CodingError(f"bad zstd body: {exc}") from exc
            if out:
                return self._emit(out)
        raise CodingError("zstd decoder made no progress")

    def _gather(self) -> bytes:
        """Take from the input the next bytes to hand over, within the output budget and at
        most :data:`_STEP` bytes (units that decode to nothing cost their length, not more)."""
        data, start = self._input, self._at
        end = min(len(data), start + _STEP)
        taken, spent = start, 0
        # Each pass takes at least one byte (every unit is 3 bytes or more) or stops.
        while taken < end and spent < _ZSTD_BLOCK_MAX:
            if not self._todo:
                cost = self._next_unit(data[taken:taken + 8])
                if cost is None:
                    break
                spent += cost
            step = min(self._todo, end - taken)
            taken += step
            self._todo -= step
        self._at = taken
        return data[start:taken]

    def _next_unit(self, head: bytes) -> int | None:
        """Size the unit starting with ``head``; its most output, or None until more is here."""
        if self._phase == "checksum":
            self._todo, self._phase = 4, "frame"
            return 0
        if self._phase == "block":
            if len(head) < 3:
                return None
            header = int.from_bytes(head[:3], "little")
            last, kind, size = header & 1, header >> 1 & 3, header >> 3
            if kind == 3:
                raise CodingError("bad zstd body: reserved block type")
            self._todo = 3 + (1 if kind == 1 else size)
            if last:
                self._phase = "checksum" if self._checksum else "frame"
            # Raw and RLE blocks decode to their stated size, a compressed one to a block at most.
            return _ZSTD_BLOCK_MAX if kind == 2 else size
        if len(head) < 4:
            return None
        if head[:4] == _ZSTD_MAGIC:
            if len(head) < 5:
                return None
            descriptor = head[4]
            if descriptor & 0x08:
                raise CodingError("bad zstd body: reserved frame header bit")
            single = descriptor >> 5 & 1
            dictionary = (0, 1, 2, 4)[descriptor & 3]
            content_size = (single, 2, 4, 8)[descriptor >> 6]
            self._todo = 5 + (1 - single) + dictionary + content_size
            self._checksum = bool(descriptor & 0x04)
            self._phase = "block"
            return 0
        if head[0] & 0xF0 == 0x50 and head[1:4] == _SKIPPABLE_TAIL:
            if len(head) < 8:
                return None
            self._todo = 8 + int.from_bytes(head[4:8], "little")
            return 0
        raise CodingError("bad zstd body: not a zstd frame")

    def end(self) -> None:
        if self._todo or self._left() or self._phase != "frame":
            raise CodingError("truncated zstd body")


def _decode_stage(coding: str, alone: bool) -> _Stage:
    if coding in ("gzip", "x-gzip"):
        return _Inflate(gzip=True, several=alone)
    if coding == "deflate":
        return _Inflate(gzip=False)
    if coding == "br":
        return _Brotli()
    return _Zstd()


class Decoder:
    """Undo a response's content codings as the body streams in.

    Iterate each :meth:`feed` and the :meth:`finish` result to the end before the next call
    (input is never lost if you do not, but output waits). Nothing yielded is larger than
    :data:`CHUNK`; an error surfaces as :class:`CodingError`, possibly after some pieces. When
    gzip is the only coding, :data:`MEMBER_END` (an empty piece) follows each member's output.
    """

    def __init__(self, codings: list[str]) -> None:
        _check_known(codings)
        alone = len(codings) == 1
        stages = [_decode_stage(coding, alone) for coding in reversed(codings)]
        self._stages: list[_Stage] = stages
        # No coding (most pages): the bytes are their own decoding, cut in CHUNK pieces here
        # with no stage and no generator (the safety net's cost on a small page is in such
        # per-call work, issue 19).
        self._identity = not stages
        self._finished = False

    def feed(self, data: bytes) -> Iterable[bytes]:
        """Take the next bytes of the encoded body; what they decode to, piece by piece."""
        if self._finished:
            raise CodingError("feed after finish")
        if self._identity:
            if len(data) <= CHUNK:
                return (bytes(data),) if data else ()
            # Sliced as the pieces are taken: a large message is never copied whole at once.
            return (bytes(data[start:start + CHUNK]) for start in range(0, len(data), CHUNK))
        if data:
            self._stages[0].push(bytes(data))
        return self._pump()

    def finish(self) -> Iterable[bytes]:
        """The body is complete: the rest, piece by piece, then raise if any coding was cut
        short."""
        self._finished = True
        if self._identity:
            return ()
        return self._finish()

    def _finish(self) -> Iterator[bytes]:
        yield from self._pump()
        for stage in self._stages:
            stage.end()

    def _pump(self) -> Iterator[bytes]:
        # Pull from the last stage that has output, so every stage past the first holds at most
        # one piece of input. Each pass moves a piece one stage on; passes end when no stage has
        # output, which comes as the input runs out (each stage's own loops are bounded).
        stages = self._stages
        last = len(stages) - 1
        while True:
            for index in range(last, -1, -1):
                piece = stages[index].pull()
                if piece is None:
                    continue
                if index == last:
                    if piece:
                        yield piece
                    if stages[index].member_ended:
                        stages[index].member_ended = False
                        if index == 0:  # the only coding: its member boundaries are kept
                            yield MEMBER_END
                else:
                    stages[index + 1].push(piece)
                break
            else:
                return


# --- encoding ---------------------------------------------------------------------------------


class _Deflate:
    def __init__(self, wbits: int) -> None:
        self._compressor = zlib.compressobj(_DEFLATE_LEVEL, zlib.DEFLATED, wbits)

    def feed(self, data: bytes) -> bytes:
        if not data:
            return b""
        return self._compressor.compress(data) + self._compressor.flush(zlib.Z_SYNC_FLUSH)

    def finish(self, data: bytes) -> bytes:
        return self._compressor.compress(data) + self._compressor.flush(zlib.Z_FINISH)


class _BrotliOut:
    def __init__(self) -> None:
        self._compressor = brotli.Compressor(quality=_BROTLI_QUALITY)

    def feed(self, data: bytes) -> bytes:
        if not data:
            return b""
        return bytes(self._compressor.process(data)) + bytes(self._compressor.flush())

    def finish(self, data: bytes) -> bytes:
        return bytes(self._compressor.process(data)) + bytes(self._compressor.finish())


class _ZstdOut:
    def __init__(self) -> None:
        self._compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compressobj()

    def feed(self, data: bytes) -> bytes:
        if not data:
            return b""
        flush = zstandard.COMPRESSOBJ_FLUSH_BLOCK
        return self._compressor.compress(data) + self._compressor.flush(flush)

    def finish(self, data: bytes) -> bytes:
        flush = zstandard.COMPRESSOBJ_FLUSH_FINISH
        return self._compressor.compress(data) + self._compressor.flush(flush)


_EncodeStage = _Deflate | _BrotliOut | _ZstdOut


def _encode_stage(coding: str) -> _EncodeStage:
    if coding in ("gzip", "x-gzip"):
        return _Deflate(16 + zlib.MAX_WBITS)
    if coding == "deflate":
        return _Deflate(zlib.MAX_WBITS)  # zlib-wrapped, as the RFC says
    if coding == "br":
        return _BrotliOut()
    return _ZstdOut()


class Encoder:
    """Apply content codings, in header order, to a body as it streams out.

    Every :meth:`feed` ends in a sync flush, so the bytes sent so far decode to everything fed
    so far and a browser can render the page while the rest is still coming.
    """

    def __init__(self, codings: list[str]) -> None:
        _check_known(codings)
        self._codings = codings
        self._stages: list[_EncodeStage] = self._new_stages()
        self._finished = False
        self._between = False  # a member was ended and the next not begun

    def _new_stages(self) -> list[_EncodeStage]:
        return [_encode_stage(coding) for coding in self._codings]

    def feed(self, data: bytes) -> bytes:
        """Encoded bytes for ``data``, ready to send."""
        if self._finished:
            raise CodingError("feed after finish")
        if not self._codings:  # no coding: the bytes as they are, no stage to call
            return bytes(data)
        if self._between:
            if not data:
                return b""
            self._stages, self._between = self._new_stages(), False
        out = bytes(data)
        for stage in self._stages:
            out = stage.feed(out)
        return out

    def end_member(self) -> bytes:
        """Close the current gzip member (its trailer); the next :meth:`feed` begins another.

        For a body whose only coding is gzip (the decoder's :data:`MEMBER_END`); with no coding
        it does nothing. A member ended twice, or one ended and then finished, adds nothing."""
        if self._finished:
            raise CodingError("end_member after finish")
        if self._between or not self._codings:
            return b""
        if self._codings not in (["gzip"], ["x-gzip"]):
            raise CodingError("members are kept for a body coded with gzip alone")
        self._between = True
        out = b""
        for stage in self._stages:
            out = stage.finish(out)
        return out

    def finish(self) -> bytes:
        """The closing bytes of every coding (trailers, final blocks)."""
        if self._finished:
            raise CodingError("finish called twice")
        self._finished = True
        if self._between:
            return b""
        out = b""
        for stage in self._stages:
            out = stage.finish(out)
        return out
