"""Typed balloon messages: decode with findings, encode back to the same bytes.

Decoding is lossless: every byte of the input is somewhere in the decoded value (trailing
partial elements included), so ``encode(decode(b).message) == b`` for every input that
decodes at all.  What is structurally impossible raises :class:`DecodeError` naming the field
and byte offset; what decodes but breaks a rule becomes a :class:`Finding` whose ``rule`` is a
clause id of ``conformance/clauses.toml``.

A message that is spread over several descriptors (v3: ``[bmap_hdr][bitmap]...[bitmap]``) is
decoded from its list of segments, because the segment boundaries are part of what the seed's
rules talk about (no bitmap buffer longer than ``8 * PAGE_SIZE``, at most 32 of them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import DecodeError, EncodeError, UsageError
from ..findings import Finding
from ..limits import MAX_ENCODE_FLOOR, MAX_ENCODE_RATIO, MAX_INPUT, encode_budget
from ..pageset import PageSet
from ..profiles import get_profile
from . import bulk
from .layout import WireLayout
from .structs import BMAP_HDR_SIZE, CONFIG, REQ_HDR_SIZE, structs

KINDS = ("pfns", "bmap", "req", "hybrid", "stats", "config", "hint-cmd")
#: which profiles carry each kind (stats/config are common; the rest belong to one dialect)
KIND_PROFILES: dict[str, tuple[str, ...]] = {
    "pfns": ("spec", "v3", "hybrid"),
    "bmap": ("v3",),
    "req": ("v3", "hybrid"),
    "hybrid": ("hybrid",),
    "stats": ("spec", "v3", "hybrid"),
    "config": ("spec", "v3", "hybrid"),
    "hint-cmd": ("spec",),
}
ROLES = ("inflate", "deflate", "misc")

# seed 6/7: enum balloon_req_id, enum balloon_flag
BALLOON_GET_UNUSED_PAGES = 0
BALLOON_FLAG_CONT = 0
BALLOON_FLAG_DONE = 1
# seed 4/7
PFNS_PER_BUFFER_LINUX = 256  # VIRTIO_BALLOON_ARRAY_PFNS_MAX
BMAP_BUFFERS_MAX = 32  # BALLOON_BMAP_COUNT
# stats tags: VIRTIO 1.4 5.5.6.3 defines 0-9; Linux 6.12 adds 10-15; crosvm sends 65534/65535
STAT_TAGS = {
    0: "SWAP_IN", 1: "SWAP_OUT", 2: "MAJFLT", 3: "MINFLT", 4: "MEMFREE", 5: "MEMTOT",
    6: "AVAIL", 7: "CACHES", 8: "HTLB_PGALLOC", 9: "HTLB_PGFAIL", 10: "OOM_KILL",
    11: "ALLOC_STALL", 12: "ASYNC_SCAN", 13: "DIRECT_SCAN", 14: "ASYNC_RECLAIM",
    15: "DIRECT_RECLAIM", 65534: "NONSTANDARD_SHMEM", 65535: "NONSTANDARD_UNEVICTABLE",
}
SPEC_STAT_TAGS = range(10)

U64 = NDArray[np.uint64]
U32 = NDArray[np.uint32]


# --- values -------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class PfnArray:
    """An inflate/deflate buffer of ``__virtio32`` PFNs (4 KiB frames), in wire order."""

    pfns: NDArray[np.uint32]
    trailing: bytes = b""  # 1-3 bytes of a partial PFN: kept, never dropped

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, PfnArray)
            and self.trailing == other.trailing
            and np.array_equal(self.pfns, other.pfns)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class BitmapMessage:
    """v3 ``struct balloon_bmap_hdr`` and the bitmap buffers that follow it in the chain."""

    cmd: int
    page_shift: int
    flag: int
    reserved: int
    req_id: int
    start_pfn: int
    bmap_len: int
    #: bitmap bytes as on the wire, one entry per bitmap descriptor (bytes that share the
    #: header's own descriptor are kept apart, in ``header_tail``)
    bitmap: tuple[bytes, ...] = ()
    #: bytes of the header's descriptor after the header (kept apart to re-encode exactly)
    header_tail: bytes = b""


@dataclass(frozen=True)
class RequestHeader:
    """v3 ``struct balloon_req_hdr``, written by the device into the misc queue buffer."""

    cmd: int
    reserved: tuple[int, int, int]
    param: int
    trailing: bytes = b""


@dataclass(frozen=True)
class HybridRecord:
    start_pfn: int
    page_shift: int
    bmap_len: int
    bmap: tuple[int, ...] = ()


@dataclass(frozen=True, eq=False)
class HybridMessage:
    """``virtio_balloon_resp_hdr`` + 64-bit records (+ bitmap words), kept as arrays."""

    cmd: int
    flag: int
    id: int
    data_len: int
    words: U64  # every payload word, native
    heads: NDArray[np.intp]  # indices of record heads in ``words``
    trailing: bytes = b""

    def records(self, lo: int = 0, hi: int | None = None) -> list[HybridRecord]:
        """The records (``lo:hi`` of them: a long message can be read in slices)."""
        heads = self.heads[lo:hi]
        start, shift, blen = bulk.hybrid_fields(self.words[heads], self._little)
        out = []
        for k, h in enumerate(heads.tolist()):
            nw = (int(blen[k]) + 7) // 8
            out.append(
                HybridRecord(
                    int(start[k]), int(shift[k]), int(blen[k]),
                    tuple(int(w) for w in self.words[h + 1 : h + 1 + nw]),
                )
            )
        return out

    # the byte order the words were read in decides how heads split into fields
    _little: bool = True

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, HybridMessage)
            and (self.cmd, self.flag, self.id, self.data_len, self.trailing, self._little)
            == (other.cmd, other.flag, other.id, other.data_len, other.trailing, other._little)
            and np.array_equal(self.words, other.words)
            and np.array_equal(self.heads, other.heads)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Stat:
    tag: int
    val: int


@dataclass(frozen=True)
class StatsMessage:
    entries: tuple[Stat, ...]
    trailing: bytes = b""


@dataclass(frozen=True)
class ConfigSpace:
    num_pages: int
    actual: int
    free_page_hint_cmd_id: int | None = None
    poison_val: int | None = None
    trailing: bytes = b""


@dataclass(frozen=True)
class HintCommand:
    cmd_id: int
    trailing: bytes = b""


Message = (
    PfnArray
    | BitmapMessage
    | RequestHeader
    | HybridMessage
    | StatsMessage
    | ConfigSpace
    | HintCommand
)


@dataclass(frozen=True, eq=False)
class Decoded:
    """A decoded message, the pages it denotes, and what is wrong with it."""

    kind: str
    message: Message
    layout: WireLayout
    findings: tuple[Finding, ...] = ()
    #: the pages as (first 4 KiB frame, frame count) in wire order, duplicates kept; None for
    #: kinds that carry no pages
    starts: U64 | U32 | None = None
    counts: U64 | None = None
    role: str = "inflate"
    #: the pages as a set, for messages decoded straight to one (a v3 bitmap of 4 KiB bits,
    #: hybrid bitmap records: their runs are the bits, so ``starts``/``counts`` stay None
    #: rather than cost 16 bytes per run -- issue 12's 178x and 345x)
    pageset: PageSet | None = None
    #: how many distinct frames ``starts`` names, when the decoder counted them (a PFN array:
    #: its duplicate check sorts them anyway), so counting needs no set (issue 13)
    distinct: int | None = None

    @property
    def carries_pages(self) -> bool:
        return self.starts is not None or self.pageset is not None

    def pages(self) -> PageSet:
        """The set of 4 KiB frames the message denotes (duplicates merged)."""
        if self.pageset is not None:
            return self.pageset
        if self.starts is None or self.counts is None:
            return PageSet.empty()
        if self.kind == "pfns":  # one frame each: the frames path (counting sort when dense)
            return PageSet.from_frames(self.starts)
        return PageSet.from_starts_counts(self.starts, self.counts)

    def extents(self) -> list[list[int]]:
        """Sorted merged ``[[first, count], ...]`` of the pages (the JSON form)."""
        return self.pages().extents()

    def fields(self) -> dict[str, Any]:
        return message_fields(self.message)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "fields": self.fields()}
        if self.carries_pages:
            out["pages"] = self.extents()
        out["findings"] = [f.to_json() for f in self.findings]
        return out

    def brief_fields(self, max_items: int = 16) -> dict[str, Any]:
        """:meth:`fields` with every list longer than ``max_items`` shown as ``"[N items]"``
        (hybrid records are counted, not built: 100,000 records are 85 MB of dicts)."""
        m = self.message
        if isinstance(m, HybridMessage) and m.heads.size > max_items:
            out = message_fields(_no_records(m))
            out["records"] = f"[{m.heads.size} items]"
            return out
        return {k: f"[{len(v)} items]" if isinstance(v, list) and len(v) > max_items else v
                for k, v in self.fields().items()}

    def iter_brief_text(self, max_items: int = 16, chunk: int = 1 << 16) -> Iterator[str]:
        """The lines ``message decode`` prints for :meth:`brief_fields` (``"  name  value"``
        each, newline-ended), in pieces: a v3 bitmap's hex -- twice its bytes, and held two
        or three times over to print it at once -- is written ``chunk`` bytes at a time."""
        m = self.message
        if not isinstance(m, BitmapMessage) or len(m.bitmap) > max_items:
            for k, v in self.brief_fields(max_items).items():
                yield f"  {k:12} {v}\n"
            return
        brief = {k: f"[{len(v)} items]" if isinstance(v, list) and len(v) > max_items else v
                 for k, v in message_fields(replace(m, bitmap=())).items()}
        for k, v in brief.items():
            if k != "bitmap":
                yield f"  {k:12} {v}\n"
                continue
            # str() of the list of hex strings: "['55aa', '00ff']"
            yield f"  {k:12} ["
            for j, seg in enumerate(m.bitmap):
                yield "'" if j == 0 else ", '"
                yield from _hex_pieces(seg, chunk)
                yield "'"
            yield "]\n"

    def iter_fields_json(self, chunk: int = 4096) -> Iterator[str]:
        """``json.dumps(self.fields())`` in pieces: hybrid records ``chunk`` at a time, a v3
        bitmap's hex 64 KiB at a time (the whole text of a 7 MiB message is ~400 MB)."""
        m = self.message
        if isinstance(m, HybridMessage):
            fields = message_fields(_no_records(m))
            fields["records"] = _HOLE_RECORDS
        elif isinstance(m, BitmapMessage):
            fields = message_fields(replace(m, bitmap=()))
            fields["bitmap"] = _HOLE_BITMAP
        else:
            yield json.dumps(self.fields())
            return

        def bitmap() -> Iterator[str]:
            assert isinstance(m, BitmapMessage)
            yield "["  # json.dumps of the list of hex strings: '["55aa", "00ff"]'
            for j, seg in enumerate(m.bitmap):
                yield '"' if j == 0 else ', "'
                yield from _hex_pieces(seg, 1 << 16)
                yield '"'
            yield "]"

        def records() -> Iterator[str]:
            assert isinstance(m, HybridMessage)
            yield "["
            for i in range(0, int(m.heads.size), chunk):
                part = json.dumps(message_fields(_no_records(m, i, i + chunk))["records"])
                yield part[1:-1] if i == 0 else ", " + part[1:-1]
            yield "]"

        yield from splice_json(fields, {_HOLE_BITMAP: bitmap, _HOLE_RECORDS: records})

    def iter_json(self, chunk: int = 4096) -> Iterator[str]:
        """``json.dumps(self.to_json())`` in pieces, never holding the whole: the pages (and
        hybrid records) are written ``chunk`` at a time, a v3 bitmap's hex 64 KiB at a time,
        so a message of millions of runs prints in memory that follows its input, not its
        text."""
        obj: dict[str, Any] = {"kind": self.kind, "fields": HOLE_FIELDS}
        if self.carries_pages:
            obj["pages"] = HOLE_PAGES
        obj["findings"] = [f.to_json() for f in self.findings]
        yield from splice_json(obj, {
            HOLE_FIELDS: lambda: self.iter_fields_json(chunk),
            HOLE_PAGES: lambda: iter_extents_json(self.pages(), chunk)})


def iter_extents_json(pages: PageSet, chunk: int = 4096) -> Iterator[str]:
    """``json.dumps(pages.extents())`` (``[[first, count], ...]``) in pieces of ``chunk`` runs:
    memory follows the set's own form, not the text (~15 bytes a run)."""
    yield "["
    first = True
    for starts, lasts in pages._iter_runs():
        for i in range(0, starts.size, chunk):
            a, span = starts[i:i + chunk], lasts[i:i + chunk] - starts[i:i + chunk]
            if span.size and int(span.max()) == (1 << 64) - 1:  # the count 2^64 is no uint64
                part = ", ".join(f"[{x}, {n + 1}]" for x, n in zip(
                    a.tolist(), span.tolist(), strict=True))
            else:  # one %-format of the interleaved run: ~2x the f-string per run
                pairs = np.empty(2 * a.size, dtype=np.uint64)
                pairs[0::2], pairs[1::2] = a, span + np.uint64(1)
                part = ("[%d, %d], " * a.size % tuple(pairs.tolist()))[:-2]
            yield part if first else ", " + part
            first = False
    yield "]"


def splice_json(obj: Any, holes: dict[str, Callable[[], Iterator[str]]]) -> Iterator[str]:
    """``json.dumps(obj)`` (default separators) in pieces, where each value of ``obj`` equal
    to a key of ``holes`` (a NUL-framed marker string) is written by that key's generator
    instead: the small parts of an object are dumped at once, its big parts streamed."""
    marks = {json.dumps(k): gen for k, gen in holes.items()}
    pattern = "(" + "|".join(re.escape(k) for k in marks) + ")"
    for piece in re.split(pattern, json.dumps(obj)):
        gen = marks.get(piece)
        if gen is None:
            yield piece
        else:
            yield from gen()


#: markers :func:`splice_json` replaces: a decoded message's fields and its pages
HOLE_FIELDS = "\0fields\0"
HOLE_PAGES = "\0pages\0"


_HOLE_RECORDS = "\0records\0"
_HOLE_BITMAP = "\0bitmap\0"


def _hex_pieces(data: bytes, chunk: int) -> Iterator[str]:
    """``data.hex()`` in pieces of ``chunk`` bytes (``2 * chunk`` characters)."""
    for i in range(0, len(data), chunk):
        yield data[i:i + chunk].hex()


def _no_records(m: HybridMessage, lo: int = 0, hi: int = 0) -> HybridMessage:
    """``m`` with only records ``lo:hi`` (the fields around them unchanged)."""
    return HybridMessage(m.cmd, m.flag, m.id, m.data_len, m.words, m.heads[lo:hi], m.trailing,
                         m._little)


def _overlaps(starts: U64, counts: U64) -> int:
    """How many extents overlap an earlier one (0 for a proper set)."""
    if starts.size < 2:
        return 0
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], starts[order] + counts[order]
    run_end = np.maximum.accumulate(e)
    return int(np.count_nonzero(s[1:] < run_end[:-1]))


# --- helpers ------------------------------------------------------------------------------------
def _segs(segments: bytes | Sequence[bytes]) -> list[bytes]:
    if isinstance(segments, (bytes, bytearray, memoryview)):
        return [bytes(segments)]
    return [bytes(s) for s in segments]


def _too_short(what: str, layout_fields: Sequence[tuple[str, int]], have: int) -> DecodeError:
    """DecodeError naming the first field the bytes end inside."""
    off = 0
    for name, size in layout_fields:
        if have < off + size:
            return DecodeError(
                f"{what} needs {sum(s for _, s in layout_fields)} bytes, only {have} present",
                field=name,
                offset=off,
            )
        off += size
    raise AssertionError("not short")  # pragma: no cover


BMAP_HDR_FIELDS = (
    ("cmd", 2), ("page_shift", 2), ("flag", 2), ("reserved", 2),
    ("req_id", 8), ("start_pfn", 8), ("bmap_len", 8),
)
REQ_HDR_FIELDS = (("cmd", 2), ("reserved", 6), ("param", 8))
RESP_HDR_FIELDS = (("cmd", 1), ("flag", 1), ("id", 2), ("data_len", 4))
CONFIG_FIELDS = (
    ("num_pages", 4), ("actual", 4), ("free_page_hint_cmd_id", 4), ("poison_val", 4),
)


def check_kind(kind: str, profile: str) -> None:
    get_profile(profile)
    if kind not in KINDS:
        raise UsageError(
            f"unknown message kind {kind!r} (one of: {', '.join(KINDS)})", field="kind"
        )
    if profile not in KIND_PROFILES[kind]:
        raise UsageError(
            f"profile {profile!r} has no {kind!r} messages "
            f"(they belong to: {', '.join(KIND_PROFILES[kind])})",
            field="kind",
        )


# --- decoders ------------------------------------------------------------------------------------
def decode(
    kind: str,
    segments: bytes | Sequence[bytes],
    layout: WireLayout | None = None,
    *,
    profile: str = "spec",
    role: str = "inflate",
) -> Decoded:
    """Decode one message of ``kind`` from its bytes (or its chain's out segments)."""
    layout = layout or WireLayout()
    check_kind(kind, profile)
    if role not in ROLES:
        raise UsageError(f"role must be one of {', '.join(ROLES)}, not {role!r}", field="role")
    segs = _segs(segments)
    if kind == "bmap":  # reads its header and bitmap from the segments (no copy of them all)
        return _decode_bmap(segs, layout, role)
    data = b"".join(segs)  # one segment: that segment itself, not a copy
    if kind == "pfns":
        return _decode_pfns(data, layout, role)
    if kind == "req":
        return _decode_req(data, layout)
    if kind == "hybrid":
        from .hybrid import decode_hybrid  # its own module (imports this one)

        return decode_hybrid(data, layout, role)
    if kind == "stats":
        return _decode_stats(data, layout, profile)
    if kind == "config":
        return _decode_config(data, layout)
    return _decode_hint(data, layout)


#: the counts of a PFN array of up to 4,096 frames: a slice of this (read-only; a broadcast
#: view of one cost more than the buffer's whole duplicate check)
_ONES = np.ones(4096, dtype=np.uint64)
_ONES.flags.writeable = False


def _decode_pfns(data: bytes, layout: WireLayout, role: str) -> Decoded:
    pfns, trailing = bulk.parse_pfns(data, layout.little_endian)
    f: list[Finding] = []
    if trailing:
        f.append(Finding(
            "spec.driver.pfns.len-multiple-of-4",
            f"buffer is {len(data)} bytes: {len(trailing)} trailing byte(s) are not a whole PFN",
            field=f"pfns[{pfns.size}]", offset=4 * pfns.size,
        ))
    if not data:
        f.append(Finding(
            "suite.driver.pfns.empty",  # derived from Linux: no spec sentence forbids it
            "an empty buffer names no page (Linux calls tell_host() only when num_pfns != 0)",
            field="pfns", offset=0,
        ))
    if pfns.size > PFNS_PER_BUFFER_LINUX:
        f.append(Finding(
            "suite.driver.pfns.at-most-256",
            f"{pfns.size} PFNs in one buffer; Linux sends at most 256 and Firecracker never "
            "returns a longer buffer",
            field="pfns", offset=4 * PFNS_PER_BUFFER_LINUX,
        ))
    # count repeats on a sorted copy: np.unique (numpy >= 2.3, hash path) is 10-20x slower
    # here and made decode() of 1 MiB of PFNs nearly as slow as construct
    srt = np.sort(pfns)
    ndup = int(np.count_nonzero(srt[1:] == srt[:-1]))
    if ndup:
        f.append(Finding(
            "suite.driver.pages.no-duplicate",
            f"{ndup} PFN(s) appear more than once in this buffer",
            field="pfns",
        ))
    fpp = layout.frames_per_page
    if fpp > 1 and pfns.size:
        # Linux set_page_pfns(): PAGE_SIZE/4096 consecutive PFNs per guest page, first aligned
        ok = pfns.size % fpp == 0
        if ok:
            g = pfns.reshape(-1, fpp).astype(np.int64)
            ok = bool(np.all(g[:, 0] % fpp == 0) and np.all(np.diff(g, axis=1) == 1))
        if not ok:
            f.append(Finding(
                "suite.driver.pfns.page-group",
                f"PFNs are not whole aligned groups of {fpp} (one {layout.page_size}-byte page "
                "each)",
                field="pfns",
            ))
    # the PFNs themselves are the starts (uint32: no uint64 copy) and every count is 1 (a
    # slice of one shared array, or a broadcast view: no array per buffer): an oracle keeping
    # every buffer's decoding held 4 KiB per 256 PFNs of copies (issue 13: 128 GiB guest)
    ones = _ONES[:pfns.size] if pfns.size <= _ONES.size else np.broadcast_to(
        np.uint64(1), pfns.shape)
    return Decoded("pfns", PfnArray(pfns, trailing), layout, tuple(f), pfns, ones, role,
                   distinct=pfns.size - ndup)


def _decode_bmap(segs: list[bytes], layout: WireLayout, role: str) -> Decoded:
    total = sum(len(s) for s in segs)
    if total < BMAP_HDR_SIZE:
        raise _too_short("balloon_bmap_hdr", BMAP_HDR_FIELDS, total)
    head = b""
    for seg in segs:  # the header's bytes only: joining a whole 4 MiB chain was a copy
        head += seg[:BMAP_HDR_SIZE - len(head)]
        if len(head) == BMAP_HDR_SIZE:
            break
    st = structs(layout.little_endian)
    h = st.balloon_bmap_hdr.parse(head)
    # the bitmap buffers: the rest of the header's descriptor (if any), then each descriptor
    bitmap_segs: list[bytes] = []
    consumed, i = 0, 0
    while consumed < BMAP_HDR_SIZE:  # the header may itself span descriptors
        take = min(len(segs[i]), BMAP_HDR_SIZE - consumed)
        consumed += take
        tail = segs[i][take:]
        i += 1
    header_tail = tail
    if header_tail:
        bitmap_segs.append(header_tail)
    bitmap_segs.extend(segs[i:])
    bitmap = b"".join(bitmap_segs)
    f: list[Finding] = []
    ps = int(h.page_shift)
    if not 12 <= ps <= 30:
        raise DecodeError(
            f"page_shift {ps} is not a page size (2^12 .. 2^30): bits cannot be mapped to pages",
            field="page_shift", offset=2, clause="v3.driver.bmap.page-shift-matches",
        )
    if ps != layout.page_shift:
        f.append(Finding("v3.driver.bmap.page-shift-matches",
                         f"page_shift {ps} but the guest page size is {layout.page_size}",
                         field="page_shift", offset=2))
    if role in ("inflate", "deflate"):
        if ps != 12:
            f.append(Finding(
                "v3.driver.bmap.page-shift-ambiguous",
                f"page_shift {ps} on {role}: the seed's driver indexes bits by 4 KiB balloon "
                "PFN here but by real PFN on the misc queue; decoded as 4 KiB balloon PFNs",
                field="page_shift", offset=2))
        bad = [n for n in ("cmd", "flag", "req_id") if h[n] != 0]
        if bad:
            f.append(Finding("v3.driver.bmap.inflate-fields-zero",
                             f"{', '.join(f'{n}={h[n]}' for n in bad)} on {role} (seed 4/7 leaves "
                             "cmd, flag and req_id 0)", field=bad[0]))
    else:
        if h.cmd != BALLOON_GET_UNUSED_PAGES:
            f.append(Finding("v3.driver.bmap.unknown-cmd", f"cmd {h.cmd} is not "
                             "BALLOON_GET_UNUSED_PAGES (0)", field="cmd", offset=0))
        if h.flag not in (BALLOON_FLAG_CONT, BALLOON_FLAG_DONE):
            f.append(Finding("v3.driver.bmap.unknown-flag", f"flag {h.flag} is neither CONT (0) "
                             "nor DONE (1)", field="flag", offset=4))
    if h.reserved != 0:
        f.append(Finding("v3.driver.bmap.reserved-zero", f"reserved is {h.reserved:#x}",
                         field="reserved", offset=6))
    present = len(bitmap)
    if h.bmap_len != present:
        f.append(Finding(
            "v3.driver.bmap.len-matches-buffers",
            f"bmap_len says {h.bmap_len} bytes but {present} bitmap bytes follow in "
            f"{len(bitmap_segs)} buffer(s)", field="bmap_len", offset=24))
    if h.bmap_len % (layout.word_size // 8):
        f.append(Finding("v3.driver.bmap.len-word-multiple",
                         f"bmap_len {h.bmap_len} is not whole {layout.word_size}-bit words",
                         field="bmap_len", offset=24))
    if h.start_pfn % layout.word_size:
        f.append(Finding("v3.driver.bmap.start-aligned",
                         f"start_pfn {h.start_pfn:#x} is not a multiple of BITS_PER_LONG "
                         f"({layout.word_size})", field="start_pfn", offset=16))
    limit = 8 * layout.page_size  # BALLOON_BMAP_SIZE
    off = BMAP_HDR_SIZE
    for k, seg in enumerate(bitmap_segs):
        if len(seg) > limit:
            f.append(Finding("v3.driver.bmap.buffer-at-most-8-pages",
                             f"bitmap buffer {k} is {len(seg)} bytes, more than 8 * PAGE_SIZE "
                             f"({limit})", field=f"bitmap[{k}]", offset=off))
        off += len(seg)
    if len(bitmap_segs) > BMAP_BUFFERS_MAX:
        f.append(Finding("v3.driver.bmap.at-most-32-buffers",
                         f"{len(bitmap_segs)} bitmap buffers; BALLOON_BMAP_COUNT is 32",
                         field="bitmap"))
    nbits = 8 * min(int(h.bmap_len), present)
    unit = 1 << (ps - 12)
    overlapping = 0
    if unit == 1:
        # bit n is frame start_pfn + n on every queue: the set straight from the packed bits
        # (runs as extents, or bit blocks where runs are short: memory follows the input)
        le = bulk.to_le_bits(bitmap, layout.word_size, layout.word_order, nbits)
        try:
            pages = PageSet.from_le_bits(le, int(h.start_pfn), nbits)
        except DecodeError:
            raise DecodeError("start_pfn + bitmap exceed the 64-bit frame space",
                              field="start_pfn", offset=16) from None
        del le
    elif role == "misc":
        # send_unused_pages_info(): start_pfn and bits are real PFNs of PAGE_SIZE, bit n the
        # ``unit`` frames from (start_pfn + n) * unit: straight from the packed bits to blocks
        # of pages (scaled bit blocks) where runs are short -- an extent per run of
        # alternating bits was 176x the input at 16 KiB pages (issue 12)
        le = bulk.to_le_bits(bitmap, layout.word_size, layout.word_order, nbits)
        try:
            pages = PageSet.from_le_units(le, int(h.start_pfn), nbits, ps - 12)
        except DecodeError:
            raise DecodeError("start_pfn + bitmap exceed the 64-bit frame space",
                              field="start_pfn", offset=16) from None
        del le
    else:
        # pages larger than 4 KiB on inflate/deflate: bit n names the ``unit`` frames from
        # start_pfn + n, which the next bits' pages may overlap (a finding).  The union is the
        # bitmap dilated by unit - 1 bits, worked on the bit string itself: an extent per bit
        # (16 bytes, and copies) was 296x the input for a 0x55 bitmap (issue 12)
        le = bulk.to_le_bits(bitmap, layout.word_size, layout.word_order, nbits)
        union, overlapping = bulk.dilate_bits(le, nbits, unit)
        del le
        try:
            pages = PageSet.from_le_bits(union, int(h.start_pfn), nbits + unit - 1)
        except DecodeError:
            raise DecodeError("start_pfn + bitmap exceed the 64-bit frame space",
                              field="start_pfn", offset=16) from None
        del union
    if present > h.bmap_len:
        beyond = (bulk.bitmap_popcount(bitmap, layout.word_size, layout.word_order)
                  - bulk.bitmap_popcount(bitmap, layout.word_size, layout.word_order, nbits))
        if beyond:
            f.append(Finding("v3.driver.bmap.bits-beyond-len",
                             f"{beyond} bit(s) set past bmap_len ({h.bmap_len} bytes); not "
                             "counted as pages", field="bitmap", offset=BMAP_HDR_SIZE + h.bmap_len))
    if not pages and role in ("inflate", "deflate"):
        f.append(Finding("v3.driver.bmap.empty", f"no page in this {role} message",
                         field="bitmap"))
    if overlapping:
        f.append(Finding("v3.driver.pages.no-duplicate",
                         f"{overlapping} page(s) overlap another page of this message "
                         f"({unit} frames per bit)", field="bitmap"))
    msg = BitmapMessage(int(h.cmd), ps, int(h.flag), int(h.reserved), int(h.req_id),
                        int(h.start_pfn), int(h.bmap_len), tuple(segs[i:]), header_tail)
    return Decoded("bmap", msg, layout, tuple(f), None, None, role, pageset=pages)


def _decode_req(data: bytes, layout: WireLayout) -> Decoded:
    if len(data) < REQ_HDR_SIZE:
        raise _too_short("balloon_req_hdr", REQ_HDR_FIELDS, len(data))
    h = structs(layout.little_endian).balloon_req_hdr.parse(data[:REQ_HDR_SIZE])
    f: list[Finding] = []
    if h.cmd != BALLOON_GET_UNUSED_PAGES:
        f.append(Finding("v3.device.req.unknown-cmd", f"cmd {h.cmd} is not "
                         "BALLOON_GET_UNUSED_PAGES (0); the seed's driver ignores it",
                         field="cmd", offset=0))
    if any(h.reserved):
        f.append(Finding("v3.device.req.reserved-zero", f"reserved is {list(h.reserved)}",
                         field="reserved", offset=2))
    if len(data) != REQ_HDR_SIZE:
        f.append(Finding("v3.device.req.len-16", f"request is {len(data)} bytes; the seed's "
                         "misc_handle_rq() ignores any length but 16", offset=REQ_HDR_SIZE))
    msg = RequestHeader(int(h.cmd), tuple(int(x) for x in h.reserved),  # type: ignore[arg-type]
                        int(h.param), data[REQ_HDR_SIZE:])
    return Decoded("req", msg, layout, tuple(f))


def _decode_stats(data: bytes, layout: WireLayout, profile: str) -> Decoded:
    tags, vals, trailing = bulk.parse_stats(data, layout.little_endian)
    f: list[Finding] = []
    if trailing:
        # the normative clause says "multiple of 6 bytes": an erratum (errata.toml, virtio-spec#45)
        f.append(Finding("spec.driver.stats.len-multiple-of-10",
                         f"buffer is {len(data)} bytes, not a multiple of the 10-byte entry",
                         offset=len(data) - len(trailing)))
    u, cnt = np.unique(tags, return_counts=True)
    if np.any(cnt > 1):
        dup = [int(t) for t in u[cnt > 1]]
        f.append(Finding("spec.driver.stats.duplicate-tag", f"tag(s) {dup} appear more than once",
                         field="tag"))
    unknown = sorted({int(t) for t in u if int(t) not in SPEC_STAT_TAGS})
    if unknown:
        named = [f"{t} ({STAT_TAGS[t]})" if t in STAT_TAGS else str(t) for t in unknown]
        # a note, not a breach: the driver may send them, the device must ignore them
        # (5.5.6.3.2) -- judged from what a device does, by spec.device.stats.ignores-unknown-tag
        f.append(Finding("note.stats.unknown-tag",  # = findings.UNKNOWN_STATS_TAG
                         f"tag(s) {', '.join(named)} are not defined by the spec (0-9); a device "
                         "must ignore them (VIRTIO 1.2 5.5.6.3.2)", field="tag"))
    entries = tuple(Stat(int(t), int(v)) for t, v in zip(tags.tolist(), vals.tolist(), strict=True))
    return Decoded("stats", StatsMessage(entries, trailing), layout, tuple(f))


def _decode_config(data: bytes, layout: WireLayout) -> Decoded:
    if len(data) < 8:
        raise _too_short("virtio_balloon_config", CONFIG_FIELDS[:2], len(data))
    size = max(s for s in (8, 12, 16) if s <= len(data))
    c = CONFIG[size].parse(data[:size])
    # no size finding: 5.5.4 makes a field available when its feature is negotiated, so the
    # size needed depends on the features (judged by the oracle, spec.device.config.size);
    # any size from 8 bytes up is allowed (crosvm's is 20), the rest is kept as trailing
    f: list[Finding] = []
    msg = ConfigSpace(int(c.num_pages), int(c.actual), c.get("free_page_hint_cmd_id"),
                      c.get("poison_val"), data[size:])
    return Decoded("config", msg, layout, tuple(f))


def _decode_hint(data: bytes, layout: WireLayout) -> Decoded:
    if len(data) < 4:
        raise DecodeError(f"free page hint command id needs 4 bytes, only {len(data)} present",
                          field="cmd_id", offset=0, clause="spec.driver.hint.len-4")
    c = structs(layout.little_endian).hint_cmd.parse(data)
    f: list[Finding] = []
    if len(data) != 4:
        f.append(Finding("spec.driver.hint.len-4", f"command id buffer is {len(data)} bytes, "
                         "not 4 (QEMU reports 'received an incorrect cmd id')", offset=4))
    return Decoded("hint-cmd", HintCommand(int(c.cmd_id), bytes(c.trailing)), layout, tuple(f))


# --- encoders ------------------------------------------------------------------------------------
def _check_range(name: str, value: int, bits: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << bits:
        raise EncodeError(f"{value!r} does not fit {bits} unsigned bits", field=name)
    return value


def encode_segments(message: Message, layout: WireLayout | None = None) -> list[bytes]:
    """The message as the descriptors a driver would post (one entry per descriptor)."""
    layout = layout or WireLayout()
    st = structs(layout.little_endian)
    if isinstance(message, PfnArray):
        return [bulk.build_pfns(message.pfns, layout.little_endian, message.trailing)]
    if isinstance(message, BitmapMessage):
        m = message
        for n, b in (("cmd", 16), ("page_shift", 16), ("flag", 16), ("reserved", 16),
                     ("req_id", 64), ("start_pfn", 64), ("bmap_len", 64)):
            _check_range(n, getattr(m, n), b)
        hdr = st.balloon_bmap_hdr.build(dict(
            cmd=m.cmd, page_shift=m.page_shift, flag=m.flag, reserved=m.reserved,
            req_id=m.req_id, start_pfn=m.start_pfn, bmap_len=m.bmap_len))
        return [hdr + m.header_tail, *m.bitmap]
    if isinstance(message, RequestHeader):
        _check_range("cmd", message.cmd, 16)
        if len(message.reserved) != 3:
            raise EncodeError("reserved must be three u16", field="reserved")
        for k, r in enumerate(message.reserved):
            _check_range(f"reserved[{k}]", r, 16)
        _check_range("param", message.param, 64)
        return [st.balloon_req_hdr.build(dict(cmd=message.cmd, reserved=list(message.reserved),
                                              param=message.param)) + message.trailing]
    if isinstance(message, HybridMessage):
        _check_range("cmd", message.cmd, 8)
        _check_range("flag", message.flag, 8)
        _check_range("id", message.id, 16)
        _check_range("data_len", message.data_len, 32)
        hdr = st.virtio_balloon_resp_hdr.build(dict(cmd=message.cmd, flag=message.flag,
                                                    id=message.id, data_len=message.data_len))
        e = "<" if layout.little_endian else ">"
        return [hdr + np.asarray(message.words, dtype=np.uint64).astype(e + "u8").tobytes()
                + message.trailing]
    if isinstance(message, StatsMessage):
        for k, s in enumerate(message.entries):
            _check_range(f"entries[{k}].tag", s.tag, 16)
            _check_range(f"entries[{k}].val", s.val, 64)
        tags = np.array([s.tag for s in message.entries], dtype=np.uint64)
        vals = np.array([s.val for s in message.entries], dtype=np.uint64)
        return [bulk.build_stats(tags, vals, layout.little_endian) + message.trailing]
    if isinstance(message, ConfigSpace):
        m2 = message
        vals_c = {"num_pages": m2.num_pages, "actual": m2.actual}
        size = 8
        if m2.free_page_hint_cmd_id is not None:
            vals_c["free_page_hint_cmd_id"] = m2.free_page_hint_cmd_id
            size = 12
            if m2.poison_val is not None:
                vals_c["poison_val"] = m2.poison_val
                size = 16
        elif m2.poison_val is not None:
            raise EncodeError("poison_val needs free_page_hint_cmd_id before it (16-byte config)",
                              field="free_page_hint_cmd_id")
        for n, v in vals_c.items():
            _check_range(n, v, 32)
        return [CONFIG[size].build(vals_c) + m2.trailing]
    if isinstance(message, HintCommand):
        _check_range("cmd_id", message.cmd_id, 32)
        return [st.hint_cmd.build(dict(cmd_id=message.cmd_id, trailing=message.trailing))]
    raise EncodeError(f"cannot encode {type(message).__name__}")


def encode(message: Message, layout: WireLayout | None = None) -> bytes:
    return b"".join(encode_segments(message, layout))


# --- JSON form ------------------------------------------------------------------------------------
def message_fields(m: Message) -> dict[str, Any]:
    """The message's fields by their C names (the JSON ``fields`` object)."""
    if isinstance(m, PfnArray):
        out: dict[str, Any] = {"pfns": m.pfns.tolist()}
        if m.trailing:
            out["trailing"] = m.trailing.hex()
        return out
    if isinstance(m, BitmapMessage):
        out = {k: getattr(m, k) for k in
               ("cmd", "page_shift", "flag", "reserved", "req_id", "start_pfn", "bmap_len")}
        out["bitmap"] = [b.hex() for b in m.bitmap]
        if m.header_tail:
            out["header_tail"] = m.header_tail.hex()
        return out
    if isinstance(m, RequestHeader):
        out = {"cmd": m.cmd, "reserved": list(m.reserved), "param": m.param}
        if m.trailing:
            out["trailing"] = m.trailing.hex()
        return out
    if isinstance(m, HybridMessage):
        out = {"cmd": m.cmd, "flag": m.flag, "id": m.id, "data_len": m.data_len,
               "records": [{"start_pfn": r.start_pfn, "page_shift": r.page_shift,
                            "bmap_len": r.bmap_len, "bmap": list(r.bmap)} for r in m.records()]}
        if m.trailing:
            out["trailing"] = m.trailing.hex()
        return out
    if isinstance(m, StatsMessage):
        out = {"entries": [{"tag": s.tag, "name": STAT_TAGS.get(s.tag), "val": s.val}
                           for s in m.entries]}
        if m.trailing:
            out["trailing"] = m.trailing.hex()
        return out
    if isinstance(m, ConfigSpace):
        out = {"num_pages": m.num_pages, "actual": m.actual}
        if m.free_page_hint_cmd_id is not None:
            out["free_page_hint_cmd_id"] = m.free_page_hint_cmd_id
        if m.poison_val is not None:
            out["poison_val"] = m.poison_val
        if m.trailing:
            out["trailing"] = m.trailing.hex()
        return out
    out = {"cmd_id": m.cmd_id}
    if m.trailing:
        out["trailing"] = m.trailing.hex()
    return out


def _hex(obj: dict[str, Any], key: str) -> bytes:
    v = obj.get(key, "")
    try:
        return bytes.fromhex(v)
    except (TypeError, ValueError):
        raise UsageError(f"{key} must be a hex string", field=key) from None


def _int(obj: dict[str, Any], key: str, default: int | None = None) -> int:
    if key not in obj:
        if default is None:
            raise UsageError(f"missing field {key!r}", field=key)
        return default
    v = obj[key]
    if not isinstance(v, int) or isinstance(v, bool):
        raise UsageError(f"{key} must be an integer, not {v!r}", field=key)
    return v


# the keys ``message_fields`` writes for each kind (and the per-entry/per-record keys): any
# other key is a typo that would otherwise be dropped silently ({"stats": [...]} encoded as an
# empty stats buffer)
_FIELD_KEYS: dict[str, frozenset[str]] = {
    "pfns": frozenset({"pfns", "trailing"}),
    "bmap": frozenset({"cmd", "page_shift", "flag", "reserved", "req_id", "start_pfn",
                       "bmap_len", "bitmap", "header_tail"}),
    "req": frozenset({"cmd", "reserved", "param", "trailing"}),
    "hybrid": frozenset({"cmd", "flag", "id", "data_len", "records", "trailing"}),
    "stats": frozenset({"entries", "trailing"}),
    "config": frozenset({"num_pages", "actual", "free_page_hint_cmd_id", "poison_val",
                         "trailing"}),
    "hint-cmd": frozenset({"cmd_id", "trailing"}),
}
_ITEM_KEYS: dict[str, tuple[str, frozenset[str]]] = {
    "stats": ("entries", frozenset({"tag", "name", "val"})),
    "hybrid": ("records", frozenset({"start_pfn", "page_shift", "bmap_len", "bmap"})),
}


def _check_keys(kind: str, fields: dict[str, Any]) -> None:
    """UsageError naming the first key ``kind`` has no field for (the known ones listed)."""
    known = _FIELD_KEYS.get(kind)
    if known is None:
        return
    unknown = sorted(str(k) for k in fields if k not in known)
    if unknown:
        raise UsageError(f"{kind} has no field {unknown[0]!r} (its fields: "
                         f"{', '.join(sorted(known))})", field=unknown[0])
    if kind in _ITEM_KEYS:
        key, item_keys = _ITEM_KEYS[kind]
        items = fields.get(key)
        if isinstance(items, list):
            for i, item in enumerate(items):
                if isinstance(item, dict):
                    bad = sorted(str(k) for k in item if k not in item_keys)
                    if bad:
                        raise UsageError(f"{key}[{i}] has no field {bad[0]!r} (its fields: "
                                         f"{', '.join(sorted(item_keys))})",
                                         field=f"{key}[{i}].{bad[0]}")


def message_from_json(kind: str, obj: Any, layout: WireLayout | None = None,
                      *, role: str = "inflate") -> Message:
    """Build a message from the JSON ``decode --json`` prints (its ``fields``) or from
    ``pages`` (extents) for the kinds that carry pages."""
    layout = layout or WireLayout()
    if not isinstance(obj, dict):
        raise UsageError("message JSON must be an object with 'fields' or 'pages'")
    if "fields" not in obj and "pages" in obj:
        return _from_pages(kind, obj["pages"], layout, role)
    fields = obj.get("fields", obj)
    if not isinstance(fields, dict):
        raise UsageError("'fields' must be an object", field="fields")
    _check_keys(kind, fields)
    try:
        if kind == "pfns":
            pfns = fields.get("pfns")
            if not isinstance(pfns, list):
                raise UsageError("pfns must be a list of integers", field="pfns")
            arr = np.array(pfns, dtype=object)
            if arr.size and not all(isinstance(x, int) and 0 <= x <= 0xFFFFFFFF for x in pfns):
                raise UsageError("every PFN must be an integer 0..2^32-1", field="pfns")
            return PfnArray(arr.astype(np.uint32), _hex(fields, "trailing"))
        if kind == "bmap":
            bm = fields.get("bitmap", [])
            if isinstance(bm, str):
                bm = [bm]
            return BitmapMessage(
                _int(fields, "cmd", 0), _int(fields, "page_shift", layout.page_shift),
                _int(fields, "flag", 0), _int(fields, "reserved", 0), _int(fields, "req_id", 0),
                _int(fields, "start_pfn"), _int(fields, "bmap_len"),
                tuple(_hex({"b": b}, "b") for b in bm), _hex(fields, "header_tail"))
        if kind == "req":
            res = fields.get("reserved", [0, 0, 0])
            if not (isinstance(res, list) and len(res) == 3):
                raise UsageError("reserved must be a list of 3 integers", field="reserved")
            return RequestHeader(_int(fields, "cmd", 0), (res[0], res[1], res[2]),
                                 _int(fields, "param"), _hex(fields, "trailing"))
        if kind == "hybrid":
            recs = fields.get("records", [])
            if not isinstance(recs, list):
                raise UsageError("records must be a list", field="records")
            words: list[int] = []
            heads: list[int] = []
            for k, r in enumerate(recs):
                if not isinstance(r, dict):
                    raise UsageError(f"records[{k}] must be an object", field=f"records[{k}]")
                sp, ps, bl = _int(r, "start_pfn"), _int(r, "page_shift"), _int(r, "bmap_len", 0)
                _check_range(f"records[{k}].start_pfn", sp, 52)
                _check_range(f"records[{k}].page_shift", ps, 6)
                _check_range(f"records[{k}].bmap_len", bl, 6)
                heads.append(len(words))
                words.append(bulk.hybrid_head_word(sp, ps, bl, layout.little_endian))
                bmw = r.get("bmap", [])
                if len(bmw) != (bl + 7) // 8:
                    raise UsageError(f"records[{k}] has bmap_len {bl} but {len(bmw)} bitmap "
                                     "words", field=f"records[{k}].bmap")
                for w in bmw:
                    words.append(_check_range(f"records[{k}].bmap", w, 64))
            trailing = _hex(fields, "trailing")
            data_len = _int(fields, "data_len", 8 * len(words) + len(trailing))
            return HybridMessage(_int(fields, "cmd", 0), _int(fields, "flag", 0),
                                 _int(fields, "id", 0), data_len,
                                 np.array(words, dtype=np.uint64), np.array(heads, dtype=np.intp),
                                 trailing, layout.little_endian)
        if kind == "stats":
            ents = fields.get("entries", [])
            if not isinstance(ents, list):
                raise UsageError("entries must be a list", field="entries")
            return StatsMessage(tuple(Stat(_int(e, "tag"), _int(e, "val")) for e in ents),
                                _hex(fields, "trailing"))
        if kind == "config":
            return ConfigSpace(_int(fields, "num_pages"), _int(fields, "actual"),
                               fields.get("free_page_hint_cmd_id"), fields.get("poison_val"),
                               _hex(fields, "trailing"))
        if kind == "hint-cmd":
            return HintCommand(_int(fields, "cmd_id"), _hex(fields, "trailing"))
    except (TypeError, AttributeError) as exc:
        raise UsageError(f"malformed {kind} fields: {exc}") from None
    raise UsageError(f"unknown message kind {kind!r}", field="kind")


def _json_bytes(obj: Any) -> int:
    """Length of ``obj`` as compact JSON (what asked for the output); MAX_INPUT if it is not
    JSON (a library caller's objects: then only MAX_INPUT caps the output)."""
    import json

    try:
        return len(json.dumps(obj, separators=(",", ":")))
    except (TypeError, ValueError):
        return MAX_INPUT


def _over_budget(what: str, nbytes: int, budget: int) -> EncodeError:
    return EncodeError(
        f"{what} would be {nbytes} bytes: over the limit of {budget} bytes for this input "
        f"(MAX_ENCODE_FLOOR {MAX_ENCODE_FLOOR} + MAX_ENCODE_RATIO {MAX_ENCODE_RATIO} per byte of "
        "JSON); encode a whole inflate with codecs.encode_pages", field="pages")


def _from_pages(kind: str, pages: Any, layout: WireLayout, role: str) -> Message:
    ps = PageSet.from_extents(pages)
    # sizes are checked on the extents, before one uint64 per page is allocated: a 30-byte
    # {"pages": [[0, 200000000]]} took 3 GB and ended in a MemoryError traceback; and the
    # output is capped in proportion to the JSON (32 bytes made 13.7 M PFNs)
    budget = encode_budget(_json_bytes(pages))
    if kind == "pfns":
        if ps and ps.max() > 0xFFFFFFFF:
            raise EncodeError("a PFN above 2^32-1 cannot go in a __virtio32 array", field="pages")
        if 4 * len(ps) > budget:
            raise _over_budget(f"{len(ps)} PFNs (a driver sends at most 256 per buffer)",
                               4 * len(ps), budget)
        return PfnArray(ps.to_frames().astype(np.uint32))
    if kind == "bmap":
        fpp = layout.frames_per_page
        if ps:
            lo, hi = (ps.min() // fpp, ps.max() // fpp) if role == "misc" else (
                ps.min(), ps.max() - ps.max() % fpp)
            w = layout.word_size
            span = (hi - lo // w * w) // w * w + w  # as nbits below, from the extents
            if span // 8 > budget:
                raise _over_budget(f"a bitmap of the span of {span} bits", span // 8, budget)
            if span // 8 > BMAP_BUFFERS_MAX * 8 * layout.page_size:
                raise EncodeError(
                    f"the pages span {span} bits; one v3 message covers at most "
                    f"{BMAP_BUFFERS_MAX * 8 * layout.page_size * 8} (32 buffers of "
                    "8 * PAGE_SIZE): encode a whole inflate with codecs.encode_pages, which "
                    "splits it into messages", field="pages")
        # whole aligned guest pages, checked on the merged extents (a set is whole pages iff
        # each of its extents starts and ends on a page boundary): one bit is one guest page,
        # and a set that is not whole pages must not be silently shrunk or grown to one.  The
        # frames are never listed: 4 KiB frames of 64 KiB pages are 16 per bit, and
        # {"pages": [[1, 22599813]]} took 1.1 GB and 10 s before this refusal (fuzzing)
        if fpp > 1 and ps and (bool(np.any(ps.starts % np.uint64(fpp)))
                               or bool(np.any((ps.lasts + np.uint64(1)) % np.uint64(fpp)))):
            raise EncodeError(f"pages are not whole {layout.page_size}-byte guest pages "
                              f"({fpp} aligned 4 KiB frames each)", field="pages")
        # the guest pages: real PFNs of PAGE_SIZE on misc, their first 4 KiB frame elsewhere
        pages_of = (PageSet.from_starts_counts(ps.starts // np.uint64(fpp),
                                               ps.counts // np.uint64(fpp)) if fpp > 1 else ps)
        units = pages_of.to_frames()
        if fpp > 1 and role != "misc":
            units = units * np.uint64(fpp)
        if units.size == 0:
            return BitmapMessage(0, layout.page_shift, 0, 0, 0, 0, 0, ())
        w = layout.word_size
        base = int(units.min()) // w * w
        nbits = (int(units.max()) - base) // w * w + w
        size = 8 * layout.page_size  # BALLOON_BMAP_SIZE
        if nbits // 8 > BMAP_BUFFERS_MAX * size:
            # one message spans at most 32 buffers of 8 * PAGE_SIZE (seed 4/7); refuse before
            # allocating a bitmap for a span the caller may have given by mistake
            raise EncodeError(
                f"the pages span {nbits} bits; one v3 message covers at most "
                f"{BMAP_BUFFERS_MAX * size * 8} (32 buffers of 8 * PAGE_SIZE): encode a whole "
                "inflate with codecs.encode_pages, which splits it into messages", field="pages")
        bitmap = bulk.build_bitmap(units - np.uint64(base), nbits // 8, w, layout.word_order)
        bufs = tuple(bitmap[i : i + size] for i in range(0, len(bitmap), size))
        return BitmapMessage(0, layout.page_shift, 0, 0, 0, base, nbits // 8, bufs)
    if kind == "hybrid":
        # the plain pfn+order form (every bmap_len 0); codecs.hybrid chooses bitmap words too
        try:
            starts, orders = ps.aligned_blocks(max_order=51, limit=budget // 8)
        except UsageError as exc:
            if "exceed the limit" not in str(exc):
                raise
            raise _over_budget("the records", 8 * (budget // 8 + 1), budget) from None
        if starts.size and int(starts.max()) > bulk.START_MASK:
            raise EncodeError(f"frame {int(starts.max())} does not fit a record's 52-bit "
                              "start_pfn", field="pages")
        heads = [bulk.hybrid_head_word(int(s), int(o) + 12, 0, layout.little_endian)
                 for s, o in zip(starts.tolist(), orders.tolist(), strict=True)]
        words = np.array(heads, dtype=np.uint64)
        return HybridMessage(0, 0, 0, 8 * words.size, words,
                             np.arange(words.size, dtype=np.intp), b"", layout.little_endian)
    raise UsageError(f"{kind!r} messages carry no pages; give 'fields'", field="pages")

