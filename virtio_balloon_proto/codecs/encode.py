"""Encoding a page set into the chains each dialect's driver posts."""

from __future__ import annotations

from ..errors import UsageError
from ..pageset import PageSet
from ..wire import WireLayout
from . import hybrid, spec, v3
from .buffers import Chain
from .decode import bulk_encoding


def encode_pages(profile: str, pages: PageSet, layout: WireLayout, *, role: str = "inflate",
                 features: int | None = None, exact: bool = False, nr_page_bmap: int = 1,
                 bitmaps: bool = True) -> list[Chain]:
    """The chains a ``profile`` driver sends to put ``pages`` on ``role``.

    inflate/deflate use the profile's bulk encoding (PFN arrays without it); ``reporting``
    and ``free_page`` (spec) name the pages by descriptor ranges (the hint's command id
    buffers are :func:`spec.encode_hint`'s business); ``misc`` answers need a request id and
    live in :mod:`.v3` / :mod:`.hybrid`.
    """
    if role in ("inflate", "deflate"):
        kind = bulk_encoding(profile, features)
        if kind == "pfns":
            return spec.encode_pfns(pages, layout)
        if kind == "bmap":
            return v3.encode_pages(pages, layout, nr_page_bmap=nr_page_bmap, exact=exact)
        return hybrid.encode_pages(pages, layout, bitmaps=bitmaps)
    if role == "reporting" and profile == "spec":
        return spec.encode_reporting(pages)
    if role == "free_page" and profile == "spec":
        return spec.encode_hint(pages, 0x80000000, layout)
    raise UsageError(f"no page encoding for role {role!r} in profile {profile!r}", field="role")
