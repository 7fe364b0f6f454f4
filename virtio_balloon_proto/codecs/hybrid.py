"""The ``hybrid`` dialect: pfn+order records with optional bitmap words (v4/v5 layout).

Dave Hansen's review of the seed (26 Oct 2016, <5810F1C7.4060807@intel.com>): "pack the pfn
and page order into a single 64-bit word and have no bitmap for a given record"; v4/v5 kept a
6-bit ``bmap_len`` so a record may instead carry bitmap words.

The encoder decomposes the set into naturally aligned power-of-two blocks (one record each,
``bmap_len = 0``), then replaces the small blocks of a 64-frame window by one bitmap word
wherever that is smaller: a window needing ``n >= 2`` small records costs ``8 n`` bytes plain
but 16 as ``[head][word]``, and consecutive such windows share one head (up to 7 words, the
largest whole-word ``bmap_len`` that fits 6 bits).  Each replacement saves bytes or ties, so
the result is never larger than the plain pfn+order form (``tests/test_codecs_*.py`` checks it).

Buffers are ``[resp_hdr][records]`` (two sg entries, v5 ``tell_host``) with at most
``BALLOON_BMAP_SIZE = 8 * PAGE_SIZE`` bytes of records each; a record is never split from its
bitmap words.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ..pageset import PageSet
from ..wire import WireLayout
from ..wire.bulk import hybrid_head_word
from ..wire.structs import structs
from .buffers import Chain, Segment

MAX_ORDER = 51  # page_shift is 6 bits: 12 + 51 = 63
WINDOW = 64  # frames per bitmap word
MAX_WORDS = 7  # bmap_len is 6 bits of bytes: 56 = 7 whole words
U64 = NDArray[np.uint64]


def encode_words(pages: PageSet, layout: WireLayout, *, bitmaps: bool = True) -> tuple[U64, U64]:
    """The record stream for ``pages``: (native words, record-start flags as 0/1)."""
    little = layout.little_endian
    starts, orders_u8 = pages.aligned_blocks(max_order=MAX_ORDER)
    starts = starts.astype(np.uint64)
    orders: U64 = orders_u8.astype(np.uint64)
    one = np.uint64(1)

    def heads(s: U64, o: U64, blen: U64) -> U64:
        w: U64
        if little:
            w = s | ((o + np.uint64(12)) << np.uint64(52)) | (blen << np.uint64(58))
        else:
            w = (s << np.uint64(12)) | ((o + np.uint64(12)) << np.uint64(6)) | blen
        return w

    if not bitmaps or starts.size == 0:
        w = heads(starts, orders, np.zeros_like(starts))
        return w, np.ones(w.size, dtype=np.uint64)

    small = orders < np.uint64(6)  # a block of 64+ frames is always cheapest as one record
    win = starts >> np.uint64(6)
    uw, cnt = np.unique(win[small], return_counts=True)
    chosen_w = uw[cnt >= 2]  # windows where a word beats their records
    use_bm = np.zeros(starts.size, dtype=bool)
    use_bm[np.flatnonzero(small)] = np.isin(win[small], chosen_w)
    if not use_bm.any():  # no window is cheaper as a word: the plain form is the answer
        w = heads(starts, orders, np.zeros_like(starts))
        return w, np.ones(w.size, dtype=np.uint64)

    # bitmap word of each chosen window: OR of the bits of its small blocks' frames
    bs, bo = starts[use_bm], orders[use_bm]
    sizes = (one << bo).astype(np.intp)
    offsets = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    frames = np.repeat(bs, sizes) + offsets.astype(np.uint64)
    fw = frames >> np.uint64(6)
    bits = one << (frames & np.uint64(63))
    wsort = np.argsort(fw, kind="stable")
    fw, bits = fw[wsort], bits[wsort]
    cut = np.flatnonzero(np.r_[True, fw[1:] != fw[:-1]])
    words_w = fw[cut]  # == chosen_w, sorted
    words_v = np.bitwise_or.reduceat(bits, cut)

    # runs of consecutive chosen windows, at most MAX_WORDS per record
    new_run = np.r_[True, words_w[1:] != words_w[:-1] + one]
    run_id = np.cumsum(new_run) - 1
    pos_in_run = np.arange(words_w.size) - np.flatnonzero(new_run)[run_id]
    rec_start = new_run | (pos_in_run % MAX_WORDS == 0)
    rec_idx = np.cumsum(rec_start) - 1
    nrec = int(rec_start.sum())
    rec_nw = np.bincount(rec_idx, minlength=nrec).astype(np.uint64)
    rec_first = words_w[rec_start]
    bm_heads = heads(rec_first << np.uint64(6), np.zeros(nrec, dtype=np.uint64),
                     rec_nw * np.uint64(8))

    # merge plain records and bitmap records in frame order
    plain_s, plain_o = starts[~use_bm], orders[~use_bm]
    plain_heads = heads(plain_s, plain_o, np.zeros_like(plain_s))
    # each item: (sort key frame, group words)
    keys = np.concatenate([plain_s, rec_first << np.uint64(6)])
    is_bm = np.r_[np.zeros(plain_s.size, dtype=bool), np.ones(nrec, dtype=bool)]
    order = np.argsort(keys, kind="stable")
    lengths = np.where(is_bm, np.r_[np.zeros(plain_s.size, np.uint64), rec_nw] + one, one)[order]
    total = int(lengths.sum())
    out = np.zeros(total, dtype=np.uint64)
    flags = np.zeros(total, dtype=np.uint64)
    pos = np.cumsum(lengths) - lengths  # where each item's head goes
    item_heads = np.concatenate([plain_heads, bm_heads])[order]
    out[pos.astype(np.intp)] = item_heads
    flags[pos.astype(np.intp)] = 1
    # bitmap words follow their head
    bm_items = np.flatnonzero(is_bm[order])
    rec_of_item = (order[bm_items] - plain_s.size)
    rec_pos = np.empty(nrec, dtype=np.intp)
    rec_pos[rec_of_item] = pos[bm_items].astype(np.intp)
    within = np.arange(words_w.size) - np.flatnonzero(rec_start)[rec_idx]
    word_slot = rec_pos[rec_idx] + 1 + within
    out[word_slot] = words_v
    return out, flags


def encode_pages(pages: PageSet, layout: WireLayout, *, bitmaps: bool = True, cmd: int = 0,
                 flag: int = 0, ident: int = 0, records_per_buffer: int | None = None,
                 cont_done: bool = False) -> list[Chain]:
    """Inflate/deflate chains ``[resp_hdr][records]`` for ``pages``.

    With ``cont_done`` (a misc-queue answer) every buffer but the last has ``flag`` CONT (0)
    and the last DONE (1), as the seed's misc answers do; an empty answer is one DONE buffer.
    """
    words, is_head = encode_words(pages, layout, bitmaps=bitmaps)
    cap = records_per_buffer or (8 * layout.page_size) // 8  # BALLOON_BMAP_SIZE in words
    st = structs(layout.little_endian)
    e = "<u8" if layout.little_endian else ">u8"
    chains: list[Chain] = []
    heads_at = np.flatnonzero(is_head)
    i = 0
    n = words.size
    bounds: list[tuple[int, int]] = []
    while i < n:
        # cut at the last record head that keeps the buffer within cap words
        j = min(i + cap, n)
        if j < n:
            k = int(np.searchsorted(heads_at, j, side="right")) - 1
            j = int(heads_at[k]) if int(heads_at[k]) > i else j
        bounds.append((i, j))
        i = j
    if cont_done and not bounds:
        bounds.append((0, 0))
    for k, (a, b) in enumerate(bounds):
        payload = words[a:b].astype(e).tobytes()
        f = (1 if k + 1 == len(bounds) else 0) if cont_done else flag
        hdr = st.virtio_balloon_resp_hdr.build(dict(cmd=cmd, flag=f, id=ident,
                                                    data_len=len(payload)))
        chains.append([Segment.out(hdr), Segment.out(payload)])
    return chains


def plain_size(pages: PageSet) -> int:
    """Bytes of the plain pfn+order form (every record ``bmap_len = 0``)."""
    starts, _ = pages.aligned_blocks(max_order=MAX_ORDER)
    return 8 * int(starts.size)


def head_word(start_pfn: int, page_shift: int, bmap_len: int, layout: WireLayout) -> int:
    return hybrid_head_word(start_pfn, page_shift, bmap_len, layout.little_endian)
