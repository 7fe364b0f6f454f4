"""The ``spec`` dialect: PFN arrays, free page hints and free page reports, as Linux sends them.

* inflate/deflate (VIRTIO 1.4 5.5.6, Linux ``fill_balloon``/``leak_balloon``): one out buffer
  per ``tell_host()`` holding at most ``VIRTIO_BALLOON_ARRAY_PFNS_MAX`` (256) ``__virtio32``
  PFNs; a guest page of ``PAGE_SIZE`` contributes ``PAGE_SIZE / 4096`` consecutive PFNs
  (``set_page_pfns``), so a 64 KiB guest fills a buffer with 16 pages.
* free page hinting (5.5.6.5): an out buffer with the 4-byte command id, then in buffers each
  one block of ``VIRTIO_BALLOON_HINT_BLOCK_ORDER`` (``MAX_PAGE_ORDER``), then ``STOP``.
* free page reporting (5.5.6.7): in buffers of up to ``PAGE_REPORTING_CAPACITY`` (32)
  scatter-gather entries, each a naturally aligned free block.
"""

from __future__ import annotations

import sys

import numpy as np

from ..errors import EncodeError
from ..pageset import PageSet
from ..wire import WireLayout
from .buffers import Chain, Segment

PFNS_MAX = 256  # VIRTIO_BALLOON_ARRAY_PFNS_MAX
REPORTING_CAPACITY = 32  # PAGE_REPORTING_CAPACITY (mm/page_reporting.h)
HINT_BLOCK_ORDER = 10  # MAX_PAGE_ORDER on x86-64 with 4 KiB pages (4 MiB blocks)
CMD_ID_STOP = 0  # VIRTIO_BALLOON_CMD_ID_STOP
CMD_ID_DONE = 1  # VIRTIO_BALLOON_CMD_ID_DONE


def whole_pages(pages: PageSet, layout: WireLayout) -> PageSet:
    """Check that ``pages`` is made of whole guest pages (aligned groups of 4 KiB frames)."""
    fpp = layout.frames_per_page
    if fpp > 1 and len(pages):
        ragged = np.any(pages.starts % np.uint64(fpp)) | np.any(pages.counts % np.uint64(fpp))
        if bool(ragged):
            raise EncodeError(
                f"the page set is not made of whole {layout.page_size}-byte guest pages "
                f"(aligned groups of {fpp} frames)", field="pages")
    return pages


def encode_pfns(pages: PageSet, layout: WireLayout, per_buffer: int = PFNS_MAX) -> list[Chain]:
    """PFN-array buffers, ascending, at most ``per_buffer`` PFNs (whole guest pages) each."""
    whole_pages(pages, layout)
    if len(pages) and pages.max() > 0xFFFFFFFF:
        raise EncodeError(f"frame {pages.max():#x} is beyond the 32-bit PFN field of the "
                          "spec's PFN arrays (16 TiB)", field="pages")
    fpp = layout.frames_per_page
    step = max(per_buffer // fpp, 1) * fpp  # a page's PFNs never straddle two buffers
    frames = pages.to_frames(dtype=np.uint32)  # checked above: every frame fits 32 bits
    data = (frames if layout.little_endian == (sys.byteorder == "little")
            else frames.byteswap()).tobytes()
    nb = step * 4
    # 7,168 buffers for a 7 GiB inflate: segments built as plain tuples (Segment is a
    # NamedTuple; tuple.__new__ skips its argument parsing)
    new = tuple.__new__
    return [[new(Segment, (0, len(p), False, p))] for p in
            [data[i : i + nb] for i in range(0, len(data), nb)]]


def blocks_of(pages: PageSet, max_order: int) -> tuple[np.ndarray, np.ndarray]:
    return pages.aligned_blocks(max_order=max_order)


def encode_reporting(pages: PageSet, max_order: int = HINT_BLOCK_ORDER,
                     capacity: int = REPORTING_CAPACITY) -> list[Chain]:
    """Reporting buffers: device-writable descriptors whose address/length are free blocks."""
    starts, orders = blocks_of(pages, max_order)
    segs = [Segment.into(int(s) << 12, 1 << (int(o) + 12))
            for s, o in zip(starts.tolist(), orders.tolist(), strict=True)]
    return [segs[i : i + capacity] for i in range(0, len(segs), capacity)]


def encode_hint(pages: PageSet, cmd_id: int, layout: WireLayout,
                block_order: int = HINT_BLOCK_ORDER, stop: bool = True) -> list[Chain]:
    """One hinting round: ``[cmd_id]``, then one in buffer per block, then ``[STOP]``.

    Linux (``virtio_balloon_report_free_page``) hints blocks of exactly
    ``VIRTIO_BALLOON_HINT_BLOCK_ORDER``; a set that is not made of such blocks is hinted in the
    largest aligned blocks it has (what a driver with smaller free blocks would send).
    """
    if not 0 <= cmd_id <= 0xFFFFFFFF:
        raise EncodeError(f"command id {cmd_id} does not fit __virtio32", field="cmd_id")
    order = "<u4" if layout.little_endian else ">u4"
    out: list[Chain] = [[Segment.out(np.array([cmd_id], dtype=order).tobytes())]]
    starts, orders = blocks_of(pages, block_order)
    out += [[Segment.into(int(s) << 12, 1 << (int(o) + 12))]
            for s, o in zip(starts.tolist(), orders.tolist(), strict=True)]
    if stop:
        out.append([Segment.out(np.array([CMD_ID_STOP], dtype=order).tobytes())])
    return out


def ranges_to_pages(chain: Chain) -> tuple[PageSet, list[int]]:
    """Pages named by the writable descriptors of a hint/report chain, and the indices of the
    descriptors that are not 4 KiB aligned (a finding for the caller)."""
    w = [s for s in chain if s.writable]
    if not w:
        return PageSet.empty(), []
    addr = np.array([s.addr for s in w], dtype=np.uint64)
    ln = np.array([s.length for s in w], dtype=np.uint64)
    bad = [i for i, s in enumerate(w) if s.addr % 4096 or s.length % 4096]
    first = addr >> np.uint64(12)
    last_excl = (addr + ln + np.uint64(4095)) >> np.uint64(12)
    return PageSet.from_starts_counts(first, last_excl - first), bad
