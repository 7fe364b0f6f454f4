"""The ``v3`` dialect: the seed's page bitmap and misc-queue answers, as its driver builds them.

:class:`SeedV3Driver` reproduces ``drivers/virtio/virtio_balloon.c`` of RESEND v3 (seed 4/7 and
7/7) message for message.  With ``exact=True`` it reproduces the seed's bugs too, because a
decoder of real captures has to recognise them (each is a finding when decoded):

1. ``tell_host()`` computes ``nr_used_bmap = nr_pfn / PFNS_PER_BMAP`` with integer division:
   a window of fewer than ``PFNS_PER_BMAP`` (262,144 on 4 KiB pages) PFNs goes out as a header
   with **no bitmap buffer at all**, and a larger one puts the remainder in a last buffer longer
   than ``BALLOON_BMAP_SIZE`` that reads past its ``kmalloc``'d bitmap (modelled here as zero
   bytes: heap contents are unknowable).
2. ``set_page_bitmap()`` loops ``for (pfn = min_pfn; pfn < max_pfn; ...)`` after rounding
   ``max_pfn`` *up* to ``BITS_PER_LONG``: when the highest ballooned PFN is itself a multiple
   of ``BITS_PER_LONG`` and starts a window of its own, that page is never told to the host.
3. ``vb->bmap_hdr`` is shared by inflate/deflate and the misc answers, and ``tell_host()`` only
   sets ``page_shift``, ``start_pfn`` and ``bmap_len``: after the first ``GET_UNUSED_PAGES``
   answer, every inflate/deflate header carries ``cmd``/``flag``/``req_id`` of that answer
   (``flag = BALLOON_FLAG_DONE``).
4. ``send_unused_pages_info()`` sets the DONE message's ``bmap_len = nr_pfn / BITS_PER_BYTE``,
   truncating: the last ``nr_pfn % 8`` pages are never reported.
5. ``misc_handle_rq()`` passes ``ptr_hdr->param`` to ``send_unused_pages_info()`` without
   ``virtio64_to_cpu()``, which then stores it with ``cpu_to_virtio64()``: when the wire order
   differs from the guest's (a big-endian guest with VERSION_1), the answer's ``req_id`` is the
   request's ``param`` byte-swapped.  (``cmd`` is compared raw too, but 0 reads the same.)
   The guest's order is the bitmap's ``word_order`` (the native order of ``unsigned long``).

With ``exact=False`` (the default) the same chunking is used with those five mistakes fixed,
which is what the seed intended and what ``decode(encode(S)) == S`` needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import EncodeError, UsageError
from ..pageset import PageSet
from ..wire import WireLayout, encode_segments
from ..wire.bulk import build_bitmap
from ..wire.messages import (
    BALLOON_FLAG_CONT,
    BALLOON_FLAG_DONE,
    BALLOON_GET_UNUSED_PAGES,
    BitmapMessage,
)
from .buffers import Chain, Segment
from .spec import whole_pages

BMAP_COUNT = 32  # BALLOON_BMAP_COUNT
#: answer chains one get-unused-pages answer may take before we refuse to build it
MAX_ANSWER_CHAINS = 4096


def bmap_size(layout: WireLayout) -> int:
    """``BALLOON_BMAP_SIZE = 8 * PAGE_SIZE``."""
    return 8 * layout.page_size


def pfns_per_bmap(layout: WireLayout) -> int:
    """``PFNS_PER_BMAP = BALLOON_BMAP_SIZE * BITS_PER_BYTE``."""
    return bmap_size(layout) * 8


def nr_page_bmap_for(max_pfn: int, layout: WireLayout) -> int:
    """``extend_page_bitmap()``: how many bitmap pages the driver allocates for ``max_pfn``."""
    bpl = layout.word_size
    bmap_len = -(-max_pfn // bpl) * bpl // 8
    count = -(-bmap_len // bmap_size(layout))
    return max(1, min(count, BMAP_COUNT))


def _roundup(x: int, m: int) -> int:
    return -(-x // m) * m


@dataclass
class SeedV3Driver:
    """Message builder with the seed driver's state (its one shared ``bmap_hdr``)."""

    layout: WireLayout = field(default_factory=WireLayout)
    #: bitmap pages allocated (``vb->nr_page_bmap``): 1 at probe, extended on first use
    nr_page_bmap: int = 1
    exact: bool = False
    # the shared header's fields that tell_host() does not set (bug 3)
    _cmd: int = 0
    _flag: int = 0
    _req_id: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.nr_page_bmap <= BMAP_COUNT:
            raise UsageError(f"nr_page_bmap must be 1..{BMAP_COUNT}", field="nr_page_bmap")

    # --- inflate / deflate: fill_balloon/leak_balloon -> set_page_bitmap -> tell_host -------
    def balloon_pfns(self, pages: PageSet) -> np.ndarray:
        """``page_to_balloon_pfn()`` of each guest page: its first 4 KiB frame."""
        whole_pages(pages, self.layout)
        frames = pages.to_frames()
        fpp = self.layout.frames_per_page
        return frames[frames % np.uint64(fpp) == 0] if fpp > 1 else frames

    def encode_pages(self, pages: PageSet) -> list[Chain]:
        """The chains one ``fill_balloon``/``leak_balloon`` call sends for ``pages``."""
        units = self.balloon_pfns(pages)
        if units.size == 0:
            return []
        bpl = self.layout.word_size
        lo, hi = int(units[0]), int(units[-1])
        min_pfn = lo // bpl * bpl  # rounddown(vb->min_pfn, BITS_PER_LONG)
        # roundup(vb->max_pfn, BITS_PER_LONG): bug 2 when hi is a multiple of BITS_PER_LONG
        max_pfn = _roundup(hi, bpl) if self.exact else _roundup(hi + 1, bpl)
        limit = pfns_per_bmap(self.layout) * self.nr_page_bmap
        chains: list[Chain] = []
        # only windows that hold a page matter ("if (found) tell_host()"): visit those
        # units are sorted (PageSet order), so the windows are too: keep each run's first
        # (np.unique would hash-sort millions of equal window numbers)
        wins = (units - np.uint64(min_pfn)) // np.uint64(limit)
        firsts = wins[np.r_[True, wins[1:] != wins[:-1]]]
        for w in firsts.tolist():
            pfn = min_pfn + w * limit
            if pfn >= max_pfn:
                continue  # the loop condition of set_page_bitmap(): bug 2
            # bounds as uint64: a Python-int list would make numpy cast all of ``units``
            a, b = np.searchsorted(units, np.array([pfn, pfn + limit], dtype=np.uint64))
            sel = units[a:b]
            chains.append(self._tell_host(pfn, int(sel[-1]), sel - np.uint64(pfn)))
        return chains

    def _tell_host(self, start_pfn: int, end_pfn: int, positions: np.ndarray) -> Chain:
        bpl = self.layout.word_size
        size = bmap_size(self.layout)
        nr_pfn = _roundup(end_pfn - start_pfn + 1, bpl)
        bmap_len = nr_pfn // 8
        if self.exact:
            nr_used = nr_pfn // pfns_per_bmap(self.layout)  # bug 1
        else:
            nr_used = -(-bmap_len // size)
        bufs = self._buffers(positions, bmap_len, nr_used)
        hdr = BitmapMessage(self._cmd, self.layout.page_shift, self._flag, 0, self._req_id,
                            start_pfn, bmap_len, tuple(bufs))
        return [Segment.out(s) for s in encode_segments(hdr, self.layout)]

    def _buffers(self, positions: np.ndarray, bmap_len: int, nr_used: int) -> list[bytes]:
        """The ``sg_set_buf`` pieces: buffer i is ``page_bitmap[i]``; the last is cut (or, with
        bug 1, stretched) to ``bmap_len - BALLOON_BMAP_SIZE * i``."""
        size = bmap_size(self.layout)
        allocated = size * self.nr_page_bmap
        whole = build_bitmap(positions, allocated, self.layout.word_size, self.layout.word_order)
        out = []
        for i in range(nr_used):
            buf_len = size if i + 1 < nr_used else bmap_len - size * i
            piece = whole[i * size : i * size + min(buf_len, size)]
            # bytes read past page_bitmap[i]'s allocation (bug 1): unknown heap, shown as zeros
            out.append(piece + bytes(max(buf_len - size, 0)))
        return out

    # --- misc queue: send_unused_pages_info() -----------------------------------------------
    def answer_unused(self, unused: PageSet, req_id: int, max_pfn: int) -> list[Chain]:
        """The CONT ... DONE chains answering ``BALLOON_GET_UNUSED_PAGES`` with ``param``
        ``req_id``, for a guest whose ``get_max_pfn()`` is ``max_pfn`` (real PFNs)."""
        if not 0 <= req_id < 1 << 64:
            raise EncodeError(f"req_id {req_id} does not fit 64 bits", field="req_id")
        most = pfns_per_bmap(self.layout) * BMAP_COUNT * MAX_ANSWER_CHAINS
        if not 0 <= max_pfn <= most:
            raise EncodeError(f"max_pfn {max_pfn} is outside [0, {most}]: the answer would need "
                              f"more than {MAX_ANSWER_CHAINS} chains (MAX_ANSWER_CHAINS)",
                              field="max_pfn")
        if self.exact and self.layout.endian != self.layout.word_order:
            req_id = int.from_bytes(req_id.to_bytes(8, "little"), "big")  # bug 5
        whole_pages(unused, self.layout)
        fpp = self.layout.frames_per_page
        frames = unused.to_frames()
        units = frames[frames % np.uint64(fpp) == 0] // np.uint64(fpp) if fpp > 1 else frames
        if units.size and int(units[-1]) >= max_pfn:
            raise EncodeError(f"unused page {int(units[-1])} is not below max_pfn {max_pfn}",
                              field="pages")
        if self.nr_page_bmap == 1:
            self.nr_page_bmap = nr_page_bmap_for(max_pfn, self.layout)  # extend_page_bitmap()
        size = bmap_size(self.layout)
        limit = pfns_per_bmap(self.layout) * self.nr_page_bmap
        bpl = self.layout.word_size
        chains: list[Chain] = []
        pfn = 0
        while True:
            done = not pfn + limit < max_pfn  # get_unused_pages(): 0 when end_pfn >= max_pfn
            a, b = np.searchsorted(units, np.array([pfn, pfn + limit], dtype=np.uint64))
            positions = units[a:b] - np.uint64(pfn)
            if done:
                nr_pfn = max_pfn - pfn
                nr_used = -(-nr_pfn // pfns_per_bmap(self.layout))
                # bug 4: "bmap_len = nr_pfn / BITS_PER_BYTE" truncates
                bmap_len = nr_pfn // 8 if self.exact else _roundup(nr_pfn, bpl) // 8
                if not self.exact:
                    nr_used = -(-bmap_len // size)
                flag = BALLOON_FLAG_DONE
            else:
                bmap_len = size * self.nr_page_bmap
                nr_used = self.nr_page_bmap
                flag = BALLOON_FLAG_CONT
            self._cmd, self._flag, self._req_id = BALLOON_GET_UNUSED_PAGES, flag, req_id
            if not self.exact:
                positions = positions[positions < np.uint64(bmap_len * 8)]
            bufs = self._buffers(positions, bmap_len, nr_used)
            hdr = BitmapMessage(self._cmd, self.layout.page_shift, flag, 0, req_id, pfn, bmap_len,
                                tuple(bufs))
            chains.append([Segment.out(s) for s in encode_segments(hdr, self.layout)])
            if done:
                break
            pfn += limit
        if not self.exact:
            # the fixed driver gives inflate/deflate headers their own zero cmd/flag/req_id
            self._cmd = self._flag = self._req_id = 0
        return chains


def encode_pages(pages: PageSet, layout: WireLayout, *, nr_page_bmap: int = 1,
                 exact: bool = False) -> list[Chain]:
    """Inflate/deflate chains for ``pages`` from a fresh v3 driver."""
    return SeedV3Driver(layout, nr_page_bmap, exact).encode_pages(pages)
