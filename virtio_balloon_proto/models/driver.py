"""The reference balloon driver, sans-IO: page sets and host requests in, chains out.

It builds what Linux's ``drivers/virtio/virtio_balloon.c`` builds for each profile:

* ``spec``: ``fill_balloon``/``leak_balloon`` send PFN arrays of at most 256 PFNs, in the order
  the pages were allocated (not sorted: real captures show the buddy allocator's order), one
  buffer at a time (``tell_host`` waits for the used entry);
* ``v3``: the seed's bitmap (``SeedV3Driver``; ``exact=True`` is the ``linux-v3`` mode that
  reproduces the seed's chunking, ordering and bugs message for message);
* ``hybrid``: ``[resp_hdr][records]`` chains;

and places every buffer where Linux keeps it: one static ``vb->pfns`` array, one ``bmap_hdr``
and ``page_bitmap[]`` pages, one ``req_hdr``.  Descriptor ids come from a free list with
Linux's LIFO reuse (``detach_buf`` puts a freed chain back at the head), so a driver with one
buffer in flight uses descriptor 0 again and again, as real traces show.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from ..codecs import Chain, Segment
from ..codecs import hybrid as hybrid_codec
from ..codecs import spec as spec_codec
from ..codecs.v3 import SeedV3Driver, bmap_size
from ..errors import UsageError
from ..pageset import PageSet
from ..profiles import get_profile
from ..wire import WireLayout

# where Linux's static buffers live in this model's guest (any addresses inside RAM would do;
# these sit in the first 32 MiB like a small guest's kernel data)
ADDR_PFNS = 0x0106_6000  # vb->pfns[256]
ADDR_STATS = 0x0106_7000  # vb->stats[]
ADDR_BMAP_HDR = 0x0106_8000  # vb->bmap_hdr
ADDR_REQ_HDR = 0x0106_9000  # vb->req_hdr
ADDR_RESP_HDR = 0x0106_A000  # v5 resp_hdr
ADDR_HINT_CMD = 0x0106_B000  # vb->cmd_id_active / cmd_id_stop
ADDR_BITMAPS = 0x0110_0000  # vb->page_bitmap[i]: BALLOON_BMAP_SIZE apart


@dataclass
class FreeList:
    """Descriptor ids of one split ring, with Linux's LIFO reuse."""

    size: int
    _free: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._free = list(range(self.size))

    def take(self, n: int) -> list[int]:
        if n > len(self._free):
            raise UsageError(f"a chain of {n} descriptors does not fit a ring of {self.size} "
                             f"with {len(self._free)} free", field="queue_size")
        ids, self._free = self._free[:n], self._free[n:]
        return ids

    def give_back(self, ids: list[int]) -> None:
        self._free = ids + self._free


@dataclass
class Posted:
    """A chain ready to go on a ring: its segments with guest addresses, and descriptor ids."""

    role: str
    segments: list[Segment]
    ids: list[int]

    @property
    def head(self) -> int:
        return self.ids[0]


class DriverModel:
    """One driver instance: its profile, layout, negotiated features and ring bookkeeping."""

    def __init__(self, profile: str, layout: WireLayout, features: int, *, exact: bool = False,
                 queue_size: int = 128, nr_page_bmap: int = 1) -> None:
        self.profile = get_profile(profile)
        self.layout = layout
        self.features = features
        self.exact = exact
        self.queue_size = queue_size
        self._rings: dict[str, FreeList] = {}
        self._in_flight: dict[tuple[str, int], list[int]] = {}
        self.v3 = SeedV3Driver(layout, nr_page_bmap, exact)

    # --- ring bookkeeping --------------------------------------------------------------------
    def post(self, role: str, segments: list[Segment]) -> Posted:
        ring = self._rings.setdefault(role, FreeList(self.queue_size))
        ids = ring.take(len(segments))
        p = Posted(role, segments, ids)
        self._in_flight[(role, p.head)] = ids
        return p

    def used(self, role: str, head: int) -> None:
        ids = self._in_flight.pop((role, head), None)
        if ids is None:
            raise UsageError(f"device returned head {head} on {role}, which is not in flight",
                             field="id")
        self._rings[role].give_back(ids)

    # --- payloads ----------------------------------------------------------------------------
    def _placed(self, chains: list[Chain], kind: str) -> list[list[Segment]]:
        """Give each out segment the address of the Linux buffer it comes from."""
        out = []
        for c in chains:
            segs = []
            for i, s in enumerate(c):
                if s.writable:
                    segs.append(s)
                    continue
                if kind == "pfns":
                    addr = ADDR_PFNS
                elif kind == "bmap":
                    addr = ADDR_BMAP_HDR if i == 0 else ADDR_BITMAPS + (i - 1) * bmap_size(
                        self.layout)
                elif kind == "hybrid":
                    addr = ADDR_RESP_HDR if i == 0 else ADDR_BITMAPS
                elif kind == "stats":
                    addr = ADDR_STATS
                else:
                    addr = ADDR_HINT_CMD
                segs.append(Segment(addr, s.length, False, s.data))
            out.append(segs)
        return out

    def balloon_chains(self, role: str, page_frames: NDArray[np.uint64]) -> list[list[Segment]]:
        """Chains for one ``fill_balloon``/``leak_balloon``.

        ``page_frames`` holds the first 4 KiB frame of each guest page (``page_to_balloon_pfn``)
        in allocation order.
        """
        fpp = self.layout.frames_per_page
        fr = np.asarray(page_frames, dtype=np.uint64)
        bulk = self.profile.bulk_feature
        if bulk is not None and self.profile.has(self.features, bulk):
            pages = PageSet.from_starts_counts(fr, np.full(fr.size, fpp, dtype=np.uint64))
            if self.profile.name == "v3":
                return self._placed(self.v3.encode_pages(pages), "bmap")
            return self._placed(hybrid_codec.encode_pages(pages, self.layout), "hybrid")
        # PFN arrays in allocation order: set_page_pfns() per page, 256 PFNs per tell_host()
        if fpp > 1:  # whole guest pages (one 4 KiB frame per page is whole by definition; the
            # set is not built then: merging 33 M random frames peaked at ~70 bytes a page)
            spec_codec.whole_pages(
                PageSet.from_starts_counts(fr, np.full(fr.size, fpp, dtype=np.uint64)),
                self.layout)
        if fpp > 1:  # set_page_pfns(): the page's PAGE_SIZE/4096 PFNs, in order
            fr = (fr[:, None] + np.arange(fpp, dtype=np.uint64)[None, :]).reshape(-1)
        step = spec_codec.PFNS_MAX // fpp * fpp
        e = "<u4" if self.layout.little_endian else ">u4"
        data = fr.astype(e).tobytes()
        return [[Segment(ADDR_PFNS, len(data[i * 4:(i + step) * 4]), False,
                         data[i * 4:(i + step) * 4])] for i in range(0, fr.size, step)]

    def stats_chain(self, stats: dict[int, int]) -> list[Segment]:
        from ..wire.messages import Stat, StatsMessage, encode

        data = encode(StatsMessage(tuple(Stat(t, v) for t, v in sorted(stats.items()))),
                      self.layout)
        return [Segment(ADDR_STATS, len(data), False, data)]

    def request_buffer(self) -> list[Segment]:
        """The device-writable ``balloon_req_hdr`` the v3 driver keeps posted (seed 7/7)."""
        return [Segment.into(ADDR_REQ_HDR, 16)]

    def unused_answer(self, unused: PageSet, req_id: int, max_pfn: int) -> list[list[Segment]]:
        if self.profile.name == "v3":
            return self._placed(self.v3.answer_unused(unused, req_id, max_pfn), "bmap")
        chains = hybrid_codec.encode_pages(unused, self.layout, cmd=0, ident=req_id & 0xFFFF,
                                           cont_done=True)
        return self._placed(chains, "hybrid")

    def hint_chains(self, pages: PageSet, cmd_id: int) -> list[list[Segment]]:
        return self._placed(spec_codec.encode_hint(pages, cmd_id, self.layout), "hint")

    def report_chains(self, pages: PageSet) -> list[list[Segment]]:
        return spec_codec.encode_reporting(pages)
