"""Hypothesis strategies for every balloon message, wire layout and page set.

For other projects that property-test their own balloon codecs against ours::

    from hypothesis import given, strategies as st
    from virtio_balloon_proto.wire.messages import PfnArray
    from virtio_balloon_proto import strategies as vbst

    @given(st.from_type(PfnArray))           # works once this package is installed
    def test_mine(m): ...

    @given(vbst.message_and_layouts("bmap"))  # a message and the layout it round-trips in
    def test_bmap(ml): ...

``st.from_type`` works because ``pyproject.toml`` registers :func:`_hypothesis_setup_hook`
under hypothesis' ``hypothesis`` entry point, which hypothesis runs when it is imported.

Every message a strategy here yields *decodes back to itself*: ``decode(kind,
encode_segments(m, layout), layout) .message == m``.  That is what "canonical" means below: the
bytes are whatever :func:`~virtio_balloon_proto.wire.encode` produces, so they may still break
protocol rules (reserved != 0, odd lengths, unknown tags) and carry findings -- on purpose,
because codecs must survive them.  The constraints each strategy keeps are those without which
a decoder cannot give the same value back (page_shift within 12..30 for v3, a config's trailing
bytes shorter than the next field, ...); each is commented where it is applied.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import strategies as st

from .pageset import PageSet
from .pagesets_strategies import extent_lists, page_sets
from .wire import bulk
from .wire.layout import ENDIANS, PAGE_SIZES, WORD_SIZES, WireLayout
from .wire.messages import (
    KINDS,
    BitmapMessage,
    ConfigSpace,
    HintCommand,
    HybridMessage,
    Message,
    PfnArray,
    RequestHeader,
    Stat,
    StatsMessage,
    encode,
    encode_segments,
)

__all__ = [
    "KINDS",
    "bitmap_messages",
    "canonical_bytes",
    "canonical_segments",
    "config_spaces",
    "extent_lists",
    "hint_commands",
    "hybrid_messages",
    "message_and_layouts",
    "messages",
    "page_sets",
    "pfn_arrays",
    "request_headers",
    "stats_messages",
    "wire_layouts",
]

U16 = (1 << 16) - 1
U32 = (1 << 32) - 1
U64 = (1 << 64) - 1


def _uint(bits: int) -> st.SearchStrategy[int]:
    """Unsigned integers of ``bits`` bits, with the edges (0, 1, max) drawn often."""
    top = (1 << bits) - 1
    return st.one_of(st.sampled_from([0, 1, top]), st.integers(0, top))


# --- layouts ------------------------------------------------------------------------------------
def wire_layouts(
    *,
    endian: str | None = None,
    word_size: int | None = None,
    word_order: str | None = None,
    page_size: int | None = None,
) -> st.SearchStrategy[WireLayout]:
    """Every combination of header byte order, bitmap word size/order and guest page size;
    fix any of them by passing it."""

    def pick(value: Any, choices: tuple[Any, ...]) -> st.SearchStrategy[Any]:
        return st.just(value) if value is not None else st.sampled_from(choices)

    return st.builds(
        WireLayout,
        pick(endian, ENDIANS),
        pick(word_size, WORD_SIZES),
        pick(word_order, ENDIANS),
        pick(page_size, PAGE_SIZES),
    )


# --- one strategy per message kind ----------------------------------------------------------------
def pfn_arrays(*, max_pfns: int = 300, trailing: bool = True) -> st.SearchStrategy[PfnArray]:
    """``__virtio32`` PFN buffers (past Linux's 256 on purpose), with a 0-3 byte partial tail."""
    pfns = st.lists(_uint(32), max_size=max_pfns).map(lambda xs: np.array(xs, dtype=np.uint32))
    tail = st.binary(max_size=3) if trailing else st.just(b"")
    return st.builds(PfnArray, pfns, tail)


@st.composite
def _bitmap_message(draw: st.DrawFn, max_bytes: int, max_buffers: int) -> BitmapMessage:
    # decode() refuses page_shift outside 12..30 (bits cannot be mapped to pages)
    page_shift = draw(st.one_of(st.sampled_from([12, 14, 16]), st.integers(12, 30)))
    header_tail = draw(st.one_of(st.just(b""), st.binary(max_size=max_bytes)))
    bitmap = tuple(draw(st.lists(st.binary(max_size=max_bytes), max_size=max_buffers)))
    present = len(header_tail) + sum(map(len, bitmap))
    # bmap_len usually agrees with the bytes present, sometimes not, sometimes absurdly
    bmap_len = draw(st.one_of(st.just(present), st.integers(0, 2 * present + 16), _uint(64)))
    # decode() refuses a page range past frame 2**64-1; on the misc queue the bits are
    # PAGE_SIZE pages, so the tightest bound is (start_pfn + nbits) << (page_shift - 12) <= 2**64
    nbits = 8 * present
    limit = max(0, ((1 << 64) >> (page_shift - 12)) - nbits - 1)
    start_pfn = draw(
        st.one_of(
            st.integers(0, min(limit, 1 << 20)).map(lambda x: x // 64 * 64),  # aligned, small
            st.integers(0, limit),
        )
    )
    return BitmapMessage(
        cmd=draw(st.one_of(st.just(0), _uint(16))),
        page_shift=page_shift,
        flag=draw(st.one_of(st.sampled_from([0, 1]), _uint(16))),
        reserved=draw(st.one_of(st.just(0), _uint(16))),
        req_id=draw(st.one_of(st.just(0), _uint(64))),
        start_pfn=start_pfn,
        bmap_len=bmap_len,
        bitmap=bitmap,
        header_tail=header_tail,
    )


def bitmap_messages(
    *, max_bytes: int = 64, max_buffers: int = 4
) -> st.SearchStrategy[BitmapMessage]:
    """v3 ``balloon_bmap_hdr`` + bitmap buffers; ``bmap_len`` may disagree with the buffers."""
    return _bitmap_message(max_bytes, max_buffers)


def request_headers(*, trailing: bool = True) -> st.SearchStrategy[RequestHeader]:
    """v3 ``balloon_req_hdr`` (cmd, reserved[3], param), optionally with bytes after it."""
    return st.builds(
        RequestHeader,
        st.one_of(st.just(0), _uint(16)),
        st.tuples(_uint(16), _uint(16), _uint(16)),
        _uint(64),
        st.binary(max_size=8) if trailing else st.just(b""),
    )


def _shl(n: int) -> Callable[[int], int]:
    return lambda x: x << n


@st.composite
def _hybrid_message(draw: st.DrawFn, little: bool | None, max_records: int) -> HybridMessage:
    if little is None:
        little = draw(st.booleans())

    words: list[int] = []
    heads: list[int] = []
    for _ in range(draw(st.integers(0, max_records))):
        # decode() refuses page_shift < 12 (a block smaller than a 4 KiB frame)
        page_shift = draw(st.one_of(st.sampled_from([12, 13, 21]), st.integers(12, 63)))
        order = page_shift - 12
        start = draw(
            st.one_of(
                # naturally aligned (the conforming case), else anywhere in 52 bits
                st.integers(0, ((1 << 52) - 1) >> order).map(_shl(order)),
                _uint(52),
            )
        )
        bmap_len = draw(st.one_of(st.just(0), st.sampled_from([8, 16]), st.integers(0, 63)))
        heads.append(len(words))
        words.append(bulk.hybrid_head_word(start, page_shift, bmap_len, little))
        words.extend(draw(st.lists(_uint(64), min_size=(bmap_len + 7) // 8,
                                   max_size=(bmap_len + 7) // 8)))
    trailing = draw(st.one_of(st.just(b""), st.binary(max_size=7)))
    payload = 8 * len(words) + len(trailing)
    data_len = draw(st.one_of(st.just(payload), _uint(32)))
    return HybridMessage(
        draw(st.one_of(st.just(0), _uint(8))),
        draw(_uint(8)),
        draw(_uint(16)),
        data_len,
        np.array(words, dtype=np.uint64),
        np.array(heads, dtype=np.intp),
        trailing,
        little,
    )


def hybrid_messages(
    *, little_endian: bool | None = None, max_records: int = 6
) -> st.SearchStrategy[HybridMessage]:
    """``virtio_balloon_resp_hdr`` + records (+ bitmap words) + a partial tail.

    A hybrid message's words are stored native and split into fields by the byte order they
    were read in, so a message round-trips only in a layout of that order: pass
    ``little_endian`` or use :func:`message_and_layouts`.
    """
    return _hybrid_message(little_endian, max_records)


def stats_messages(*, max_entries: int = 20) -> st.SearchStrategy[StatsMessage]:
    """Packed 10-byte ``virtio_balloon_stat`` entries: spec tags 0-9, Linux's 10-15,
    crosvm's 65534/65535, and any other u16; duplicates allowed; 0-9 trailing bytes."""
    tag = st.one_of(st.integers(0, 15), st.sampled_from([65534, 65535]), _uint(16))
    return st.builds(
        StatsMessage,
        st.lists(st.builds(Stat, tag, _uint(64)), max_size=max_entries).map(tuple),
        st.one_of(st.just(b""), st.binary(max_size=9)),
    )


@st.composite
def _config_space(draw: st.DrawFn) -> ConfigSpace:
    size = draw(st.sampled_from([8, 12, 16]))
    # decode() reads the longest layout that fits, so bytes after an 8- or 12-byte config
    # must be fewer than 4 (else they are the next field); after 16 bytes anything goes
    trailing = draw(st.binary(max_size=3 if size < 16 else 8))
    return ConfigSpace(
        draw(_uint(32)),
        draw(_uint(32)),
        draw(_uint(32)) if size >= 12 else None,
        draw(_uint(32)) if size == 16 else None,
        trailing,
    )


def config_spaces() -> st.SearchStrategy[ConfigSpace]:
    """``virtio_balloon_config`` of 8, 12 or 16 bytes (always little-endian on the wire)."""
    return _config_space()


def hint_commands(*, trailing: bool = True) -> st.SearchStrategy[HintCommand]:
    """The free page hint out-buffer: one ``__virtio32`` command id (STOP 0, DONE 1, QEMU's
    ids from 0x80000000), optionally with extra bytes."""
    cmd_id = st.one_of(st.sampled_from([0, 1, 0x80000000]), _uint(32))
    return st.builds(HintCommand, cmd_id, st.binary(max_size=8) if trailing else st.just(b""))


# --- by kind -----------------------------------------------------------------------------------
def messages(kind: str, layout: WireLayout | None = None) -> st.SearchStrategy[Message]:
    """Messages of ``kind`` (one of :data:`KINDS`) that round-trip in ``layout``."""
    if kind == "pfns":
        return pfn_arrays()
    if kind == "bmap":
        return bitmap_messages()
    if kind == "req":
        return request_headers()
    if kind == "hybrid":
        return hybrid_messages(little_endian=None if layout is None else layout.little_endian)
    if kind == "stats":
        return stats_messages()
    if kind == "config":
        return config_spaces()
    if kind == "hint-cmd":
        return hint_commands()
    raise ValueError(f"unknown message kind {kind!r} (one of: {', '.join(KINDS)})")


def message_and_layouts(
    kind: str, layouts: st.SearchStrategy[WireLayout] | None = None
) -> st.SearchStrategy[tuple[Message, WireLayout]]:
    """(message, layout) pairs in which the message round-trips."""
    return (layouts or wire_layouts()).flatmap(
        lambda lay: messages(kind, lay).map(lambda m: (m, lay))
    )


def canonical_segments(
    kind: str, layout: WireLayout
) -> st.SearchStrategy[list[bytes]]:
    """The descriptors a driver would post for a message of ``kind`` (what our encoder makes)."""
    return messages(kind, layout).map(lambda m: encode_segments(m, layout))


def canonical_bytes(kind: str, layout: WireLayout) -> st.SearchStrategy[bytes]:
    """A message of ``kind`` as one byte string in ``layout``."""
    return messages(kind, layout).map(lambda m: encode(m, layout))


# --- hypothesis entry point ----------------------------------------------------------------------
def _hypothesis_setup_hook() -> None:
    """Registered as ``[project.entry-points.hypothesis]``: makes ``st.from_type`` work."""
    st.register_type_strategy(WireLayout, wire_layouts())
    st.register_type_strategy(PfnArray, pfn_arrays())
    st.register_type_strategy(BitmapMessage, bitmap_messages())
    st.register_type_strategy(RequestHeader, request_headers())
    st.register_type_strategy(HybridMessage, hybrid_messages())
    st.register_type_strategy(StatsMessage, stats_messages())
    st.register_type_strategy(Stat, st.builds(Stat, _uint(16), _uint(64)))
    st.register_type_strategy(ConfigSpace, config_spaces())
    st.register_type_strategy(HintCommand, hint_commands())
    st.register_type_strategy(PageSet, page_sets())
