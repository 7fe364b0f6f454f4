"""Decoding one posted chain by queue role, in any profile."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from ..errors import UsageError
from ..findings import Finding
from ..pageset import PageSet, union_all
from ..profiles import QueueRole, get_profile
from ..wire import Decoded, WireLayout, decode
from ..wire.messages import HOLE_FIELDS, HOLE_PAGES, iter_extents_json
from ..wire.structs import BMAP_HDR_SIZE
from .buffers import Segment, out_data
from .spec import ranges_to_pages

ROLES = tuple(r.value for r in QueueRole)


class DecodedBuffer:
    """What one chain on one queue says.

    ``pages`` (a PageSet) is built on first use when the decoding has it (``pages=None``): a
    summary or check that only counts a PFN buffer's frames, or marks them in a frame map,
    never builds 7,168 small sets (issue 13); :meth:`frames` and :attr:`page_count` serve
    those callers from the decoding directly.
    """

    __slots__ = ("_pages", "decoded", "findings", "kind", "role")

    def __init__(self, role: str, kind: str, decoded: Decoded | None, pages: PageSet | None,
                 findings: tuple[Finding, ...]) -> None:
        self.role = role
        #: wire kind ("pfns", "bmap", "hybrid", "stats", "hint-cmd", "req"), "ranges" for
        #: hint/report descriptors, "req-buffer" for an unwritten misc request buffer, "empty"
        self.kind = kind
        self.decoded = decoded
        self.findings = findings
        self._pages = pages if pages is not None or decoded is not None else PageSet.empty()

    def __repr__(self) -> str:
        return (f"DecodedBuffer(role={self.role!r}, kind={self.kind!r}, decoded={self.decoded!r}, "
                f"pages={self.pages!r}, findings={self.findings!r})")

    @property
    def pages(self) -> PageSet:
        """The 4 KiB frames the buffer names (duplicates merged)."""
        if self._pages is None:
            assert self.decoded is not None  # __init__: no pages only with a decoding
            self._pages = self.decoded.pages()
        return self._pages

    def frames(self) -> NDArray[np.unsignedinteger[Any]] | None:
        """The frames of :attr:`pages` as a 1-D array, each once, in wire order -- when the
        decoding holds them so (a PFN array without repeats: a view, no copy); else None."""
        d = self.decoded
        if d is not None and d.kind == "pfns" and d.starts is not None \
                and d.distinct == d.starts.size:
            return d.starts
        return None

    @property
    def page_count(self) -> int:
        """``len(self.pages)``, without building the set when the decoding counted it."""
        d = self.decoded
        if self._pages is None and d is not None and d.kind == "pfns" and d.distinct is not None:
            return d.distinct
        return len(self.pages)

    def with_findings(self, findings: tuple[Finding, ...]) -> DecodedBuffer:
        """The same decoding with ``findings`` instead (pages stay lazy)."""
        return DecodedBuffer(self.role, self.kind, self.decoded, self._pages, findings)

    def to_json(self) -> dict[str, Any]:
        out = self.json_template()
        if self.decoded is not None:
            out["fields"] = self.decoded.fields()
        if "pages" in out:
            out["pages"] = self.pages.extents()
        return out

    def json_template(self) -> dict[str, Any]:
        """:meth:`to_json` with its two big values left as markers (``HOLE_FIELDS``,
        ``HOLE_PAGES``) that :meth:`json_holes` writes in pieces (``splice_json``)."""
        out: dict[str, Any] = {"role": self.role, "kind": self.kind}
        if self.decoded is not None:
            out["fields"] = HOLE_FIELDS
        if self.kind in ("pfns", "bmap", "hybrid", "ranges"):
            out["pages"] = HOLE_PAGES
        out["findings"] = [f.to_json() for f in self.findings]
        return out

    def json_holes(self, chunk: int = 4096) -> dict[str, Callable[[], Iterator[str]]]:
        """The writers of :meth:`json_template`'s markers: the fields (hybrid records, bitmap
        hex) and the page extents ``chunk`` at a time."""
        d = self.decoded
        holes: dict[str, Callable[[], Iterator[str]]] = {
            HOLE_PAGES: lambda: iter_extents_json(self.pages, chunk)}
        if d is not None:
            holes[HOLE_FIELDS] = lambda: d.iter_fields_json(chunk)
        return holes


def bulk_encoding(profile: str, features: int | None) -> str:
    """The inflate/deflate payload kind of ``profile`` with ``features`` negotiated."""
    p = get_profile(profile)
    if p.bulk_feature is None:
        return "pfns"
    if features is not None and not p.has(features, p.bulk_feature):
        return "pfns"
    return "bmap" if profile == "v3" else "hybrid"


def decode_buffer(profile: str, role: str, chain: Sequence[Segment], layout: WireLayout,
                  *, features: int | None = None, written: bytes | None = None) -> DecodedBuffer:
    """Decode one chain the driver made available on ``role``.

    ``features`` is the negotiated word (None: assume the profile's own bulk encoding is in
    use); ``written`` is what the device wrote into the chain's writable part, when known (the
    v3 misc request).
    """
    if role not in ROLES:
        raise UsageError(f"unknown queue role {role!r} (one of: {', '.join(ROLES)})", field="role")
    p = get_profile(profile)
    outs = out_data(chain)
    findings: list[Finding] = []
    if role in ("inflate", "deflate"):
        kind = bulk_encoding(profile, features)
        d = decode(kind, outs if kind == "bmap" else b"".join(outs), layout, profile=profile,
                   role=role)
        # a PFN array's set cannot fail (uint32 frames): built when first used; the other
        # kinds' may (a run past 2**64), so theirs is built here, inside decode()'s errors
        return DecodedBuffer(role, kind, d, None if kind == "pfns" else d.pages(), d.findings)
    if role == "stats":
        d = decode("stats", b"".join(outs), layout, profile=profile)
        return DecodedBuffer(role, "stats", d, PageSet.empty(), d.findings)
    if role in ("free_page", "reporting"):
        if p.name != "spec":
            raise UsageError(f"profile {profile!r} has no {role} queue", field="role")
        pages, bad = ranges_to_pages(list(chain))
        for i in bad:
            findings.append(Finding(
                "spec.driver.report.page-aligned" if role == "reporting"
                else "spec.driver.hint.page-aligned",
                f"writable descriptor {i} is not a whole number of 4 KiB pages",
                field=f"descriptors[{i}]"))
        if role == "free_page" and outs:
            d = decode("hint-cmd", b"".join(outs), layout, profile=profile)
            return DecodedBuffer(role, "hint-cmd", d, pages, (*d.findings, *findings))
        return DecodedBuffer(role, "ranges" if pages else "empty", None, pages, tuple(findings))
    # misc: the driver's answers are out chains; the request buffer is device-writable
    if outs:
        kind = "bmap" if profile == "v3" else "hybrid"
        d = decode(kind, outs if kind == "bmap" else b"".join(outs), layout, profile=profile,
                   role="misc")
        return DecodedBuffer(role, kind, d, d.pages(), d.findings)
    if written is not None:
        d = decode("req", written, layout, profile=profile)
        return DecodedBuffer(role, "req", d, PageSet.empty(), d.findings)
    return DecodedBuffer(role, "req-buffer", None, PageSet.empty(), ())


def decode_pages(profile: str, role: str, chains: Sequence[Sequence[Segment]],
                 layout: WireLayout, *, features: int | None = None) -> PageSet:
    """The union of the pages named by ``chains`` (e.g. a whole inflate).

    PFN arrays take one vectorised pass over all buffers (the 7 GiB inflate of an 8 GiB guest
    is 7,168 buffers); findings are :func:`decode_buffer`'s business.
    """
    if role in ("inflate", "deflate") and bulk_encoding(profile, features) == "pfns":
        datas = [b"".join(out_data(c)) for c in chains]
        if all(len(d) % 4 == 0 for d in datas):
            dt = "<u4" if layout.little_endian else ">u4"
            return PageSet.from_frames(np.frombuffer(b"".join(datas), dtype=dt))
    if role in ("inflate", "deflate", "misc") and profile == "v3" and (
            role == "misc" or bulk_encoding(profile, features) == "bmap"):
        fast = [_bmap_pages(b"".join(out_data(c)), layout, role) for c in chains]
        if all(p is not None for p in fast):
            return union_all(p for p in fast if p is not None)
    return union_all(decode_buffer(profile, role, c, layout, features=features).pages
                     for c in chains)


def _bmap_pages(data: bytes, layout: WireLayout, role: str) -> PageSet | None:
    """The pages of one v3 ``[bmap_hdr][bitmap...]`` chain straight from the bitmap's runs
    (PageSet.from_bitmap finds run edges; the wire decoder lists every set bit for its
    findings).  None when the wire decoder must decide (short header, odd page_shift, a
    frame past 2^64), so errors stay the wire layer's."""
    if len(data) < BMAP_HDR_SIZE:
        return None
    e = "<" if layout.little_endian else ">"
    _, page_shift, _, _ = np.frombuffer(data, dtype=e + "u2", count=4).tolist()
    _, start_pfn, bmap_len = np.frombuffer(data, dtype=e + "u8", count=3, offset=8).tolist()
    if not 12 <= page_shift <= 30:
        return None
    unit = 1 << (page_shift - 12)
    if role != "misc" and unit != 1:
        return None  # inflate bits are 4 KiB balloon PFNs but each names a whole page
    bitmap = memoryview(data)[BMAP_HDR_SIZE:]
    nbits = 8 * min(int(bmap_len), len(bitmap))
    base = start_pfn * unit  # misc: real PFNs of PAGE_SIZE; inflate: unit 1
    if base + nbits * unit > 1 << 64:
        return None
    order: Literal["little", "big"] = "little" if layout.word_order == "le" else "big"
    return PageSet.from_bitmap(bitmap, base, layout.word_size, order, unit, nbits)
