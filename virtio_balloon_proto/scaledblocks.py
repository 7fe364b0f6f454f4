"""Scaled bit blocks: a PageSet's dense form for pages of ``2**k`` frames.

A v3 misc bitmap of 16 KiB pages (bit ``n`` is the 4 frames from ``(start_pfn + n) * 4``) or a
hybrid record of order k (bit ``n`` is the ``2**k`` frames from ``start_pfn + n * 2**k``) whose
bits alternate is one extent -- 16 bytes -- per bit, and ``2**k`` bits per bit as unscaled bit
blocks (issue 12 measured 176x and 257x the input).  Held as blocks of *units* instead
(:class:`~.bitblocks.Blocks` with ``shift`` k and ``phase`` p: bit ``j`` of row ``r`` is unit
``u = idx[r] * 512 + j``, the frames ``p + u * 2**k .. p + (u + 1) * 2**k - 1``), such a set
costs what the bitmap on the wire costs, whatever k.

Layout of a scaled set inside :class:`~.pageset.PageSet`: extents (in frames) that touch no
block's *span* (the ``2**(9 + k)`` frames from ``p + idx * 2**(9 + k)``) plus the blocks; one
scale per set.  The frame-space reads (count, membership, min/max, runs) are in
:mod:`.bitblocks`, which honours the scale.  What is here:

* the construction rules -- :data:`MAX_SHIFT` and :func:`fits` (every span inside
  ``0 .. 2**64 - 1``, so no frame arithmetic on a span can wrap);
* :func:`spread`, the re-cut that set algebra needs: both operands onto one universe of
  blocks at one scale.  Extents that cut a unit in two cannot be bits of that scale; then
  ``spread`` answers None and the caller falls back to the extents form (the set is the
  same, only its memory is what it was before scaled blocks existed).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from . import bitblocks as bb
from . import extentarrays as xa
from .bitblocks import BLOCK_SHIFT, Blocks
from .extentarrays import MAX_FRAME, U64

#: the largest scale held as bits: order 51 is a hybrid record's largest block (page_shift
#: 63); a span of 2**60 frames still fits uint64 arithmetic
MAX_SHIFT = 51

U8 = npt.NDArray[np.uint8]


def scale_of(b: Blocks | None) -> tuple[int, int]:
    """``(shift, phase)`` of ``b`` (``(0, 0)`` for None)."""
    return (0, 0) if b is None else (b.shift, b.phase)


def fits(b: Blocks) -> bool:
    """Whether every block's span lies inside the frame space (then a span's last frame,
    ``phase + (idx + 1) * 2**(9 + shift) - 1``, never wraps)."""
    if not 0 <= b.shift <= MAX_SHIFT or not 0 <= b.phase < 1 << b.shift:
        return False
    return b.phase + ((int(b.idx[-1]) + 1) << (BLOCK_SHIFT + b.shift)) - 1 <= MAX_FRAME


def common_scale(a: Blocks | None, b: Blocks | None) -> tuple[int, int] | None:
    """The scale two operands' blocks share (None when both hold blocks of different
    scales)."""
    if a is None:
        return scale_of(b)
    if b is None or scale_of(a) == scale_of(b):
        return scale_of(a)
    return None


def spans(idx: U64, shift: int, phase: int) -> tuple[U64, U64]:
    """The frames the blocks ``idx`` span at this scale, as merged extents (consecutive
    blocks joined).  The blocks must :func:`fit`."""
    us, ul = bb.block_extents(idx)  # in units
    if shift == 0:
        return us, ul
    sh, ph = np.uint64(shift), np.uint64(phase)
    return ph + (us << sh), ph + (ul << sh) + np.uint64((1 << shift) - 1)


def spread(es: U64, el: U64, b: Blocks | None, universe: U64, shift: int, phase: int
           ) -> tuple[U64, U64, U8] | None:
    """:func:`.bitblocks.spread` at a scale: the set (extents ``es``/``el`` plus blocks ``b``
    of this scale, ``b.idx`` within ``universe``) re-cut so that its blocks are exactly
    ``universe``.  None when an extent inside a new block's span does not cover whole units
    (that set has no form at this scale)."""
    if shift == 0:
        return bb.spread(es, el, b, universe)
    rows, new = bb.rows_for(b, universe)
    if es.size and bool(new.any()):
        nidx = universe[new]
        rs, rl = spans(nidx, shift, phase)
        ps, pl = xa.intersect(es, el, rs, rl)
        if ps.size:
            ph = np.uint64(phase)
            umask = np.uint64((1 << shift) - 1)
            # the pieces lie inside spans, so at or above phase: no wrap; pl - ph + 1 wraps
            # only to 0 (a whole number of units)
            if bool((((ps - ph) & umask) != 0).any()) or bool(
                    (((pl - ph + np.uint64(1)) & umask) != 0).any()):
                return None
            sh = np.uint64(shift)
            # whole units: pieces of non-adjacent extents stay non-adjacent as units
            rows[new] = bb.extent_bits((ps - ph) >> sh, (pl - ph) >> sh, nidx)
            cs, cl = xa.complement(rs, rl)
            es, el = xa.intersect(es, el, cs, cl)
    return es, el, rows


__all__ = [
    "MAX_SHIFT",
    "common_scale",
    "fits",
    "scale_of",
    "spans",
    "spread",
]
