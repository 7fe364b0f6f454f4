"""Encoding analysis: what each dialect puts on the wire for a page set (issue 3, item 4).

The question of the seed thread (2016-10): PFN arrays cost 68% of a 7 GiB inflate, the v3
bitmap cut that by 85%, and the review (Dave Hansen, 2016-10-26) argued that pfn+order records
beat both.  :func:`analyze` answers it for any set by running the real encoders of
:mod:`.codecs` and measuring their chains -- never a formula -- and decoding them back.

Encodings compared (inflate/deflate, the driver's view):

* ``spec``: ``__virtio32`` PFN arrays, 256 per buffer (Linux ``tell_host``).
* ``v3``: ``balloon_bmap_hdr`` + bitmap buffers, as the seed's driver sends them after
  ``extend_page_bitmap()`` sized its bitmap for the guest (:func:`.codecs.v3.nr_page_bmap_for`).
* ``hybrid-plain``: resp_hdr + one pfn+order ``le64`` per aligned block (the review's plain
  form, every ``bmap_len = 0``).
* ``hybrid``: the same with bitmap words where they are smaller (v4/v5).

"Bytes on the wire" are the bytes the driver writes into device-readable descriptors
(headers included); "buffers" are chains (one ``virtqueue_add_outbuf`` each); "descriptors"
are their scatter-gather entries.

Synthetic shapes (:func:`shape`), over a guest of ``frames`` 4 KiB frames:

* ``dense``: one run of ``density * frames`` frames from frame 0 (a fresh guest's balloon).
* ``sparse``: each frame independently with probability ``density`` (uniform random).
* ``fragmented``: alternating free runs and used gaps with power-law (Zipf, exponent 2) run
  lengths, as a long-running guest's free lists look; gap lengths are scaled for ``density``.
* ``hugepage``: naturally aligned 2 MiB blocks (512 frames), each with probability ``density``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .codecs import decode_pages, hybrid, spec, v3
from .codecs.buffers import Chain, chain_bytes, chain_descriptors
from .errors import UsageError, VBProtoError
from .limits import MAX_JSON, loads_json, read_bounded
from .pageset import PageSet
from .wire import WireLayout

__all__ = [
    "DEFAULT_DENSITIES",
    "ENCODINGS",
    "SHAPES",
    "Analysis",
    "EncodingResult",
    "analyze",
    "check_plot_available",
    "decode_with",
    "encode_with",
    "load_pages",
    "plot_sweeps",
    "render_table",
    "shape",
    "sweep",
]

ENCODINGS = ("spec", "v3", "hybrid-plain", "hybrid")
SHAPES = ("dense", "sparse", "fragmented", "hugepage")
#: densities of the sweep behind the plot (log-spaced, where the crossovers lie)
DEFAULT_DENSITIES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9, 1.0)
HUGEPAGE_FRAMES = 512  # 2 MiB / 4 KiB
MAX_FRAMES = 1 << 28  # 1 TiB guest: bounds every array a synthetic shape materialises
_PROFILE = {"spec": "spec", "v3": "v3", "hybrid-plain": "hybrid", "hybrid": "hybrid"}


# --- page sets --------------------------------------------------------------------------------
def shape(name: str, frames: int, density: float, *, seed: int = 0,
          layout: WireLayout | None = None) -> PageSet:
    """A synthetic set of whole guest pages over ``frames`` 4 KiB frames (see module doc)."""
    if name not in SHAPES:
        raise UsageError(f"unknown shape {name!r} (one of: {', '.join(SHAPES)})", field="shape")
    if not isinstance(frames, int) or not 1 <= frames <= MAX_FRAMES:
        raise UsageError(f"frames must be 1..{MAX_FRAMES}, not {frames!r}", field="frames")
    if not 0.0 <= density <= 1.0:
        raise UsageError(f"density must be within 0..1, not {density}", field="density")
    fpp = (layout or WireLayout()).frames_per_page
    n = frames // fpp  # guest pages; the shape is drawn in pages, then scaled to frames
    rng = np.random.default_rng(seed)
    if name == "dense":
        k = round(n * density)
        units = PageSet.from_range(0, k) if k else PageSet.empty()
    elif name == "sparse":
        units = PageSet.from_frames(np.flatnonzero(rng.random(n) < density))
    elif name == "hugepage":
        per = max(HUGEPAGE_FRAMES // fpp, 1)
        blocks = np.flatnonzero(rng.random(n // per) < density).astype(np.uint64)
        units = PageSet.from_starts_counts(blocks * np.uint64(per),
                                           np.full(blocks.size, per, dtype=np.uint64))
    else:
        units = _fragmented(rng, n, density)
    if fpp == 1 or not units:
        return units
    f = np.uint64(fpp)
    return PageSet.from_starts_counts(units.starts * f, units.counts * f)


def _fragmented(rng: np.random.Generator, n: int, density: float) -> PageSet:
    if density <= 0.0 or n == 0:
        return PageSet.empty()
    if density >= 1.0:
        return PageSet.from_range(0, n)
    # free runs: Zipf(2) lengths capped at MAX_ORDER-sized 4 MiB blocks (1024 frames), the
    # buddy allocator's largest; used gaps: capped Zipf(2) too, scaled so that free / total is
    # the density (stochastic rounding keeps the mean; a gap of 0 merges two runs)
    cap = 1024
    probe = np.minimum(rng.zipf(2.0, 1 << 14), cap).astype(np.float64)
    mean_run = float(probe.mean())
    mean_gap = mean_run * (1.0 - density) / density
    # enough pairs to cover n with margin; bounded since a pair averages >= 1 frame
    pairs = min(int(n / (mean_run + mean_gap) * 1.3) + 64, 2 * n + 64)
    runs = np.minimum(rng.zipf(2.0, pairs), cap).astype(np.float64)
    raw = np.minimum(rng.zipf(2.0, pairs), cap).astype(np.float64)
    gaps = np.floor(raw * (mean_gap / float(probe.mean())) + rng.random(pairs))
    lens = np.empty(2 * pairs, dtype=np.int64)
    lens[0::2] = gaps.astype(np.int64)
    lens[1::2] = runs.astype(np.int64)
    ends = np.cumsum(lens)
    starts = ends - lens
    free = slice(1, None, 2)
    s, e = starts[free], np.minimum(ends[free], n)
    keep = s < e
    s, e = s[keep], e[keep]
    if s.size == 0:
        return PageSet.empty()
    return PageSet.from_starts_counts(s.astype(np.uint64), (e - s).astype(np.uint64))


#: pages ``analyze --pages`` accepts (each encoding is built and timed in memory)
MAX_ANALYZE_PAGES = 1 << 24
#: highest frame ``analyze --pages`` accepts (2^40 frames of 4 KiB: a 4 PiB guest)
MAX_ANALYZE_FRAME = (1 << 40) - 1


def load_pages(spec_text: str) -> PageSet:
    """``--pages``: the compact text form, or ``@FILE`` holding JSON extents
    (``[[first, count], ...]`` or ``{"pages": [...]}``) or the text form.  At most
    MAX_ANALYZE_PAGES pages, none above MAX_ANALYZE_FRAME (UsageError otherwise)."""
    ps = _load_pages(spec_text)
    if ps and ps.max() > MAX_ANALYZE_FRAME:
        raise UsageError(f"frame {ps.max()} is above {MAX_ANALYZE_FRAME} (MAX_ANALYZE_FRAME)",
                         field="pages")
    if ps.page_count() > MAX_ANALYZE_PAGES:
        raise UsageError(f"{ps.page_count()} pages are over the limit of {MAX_ANALYZE_PAGES} "
                         "(MAX_ANALYZE_PAGES)", field="pages")
    return ps


def _load_pages(spec_text: str) -> PageSet:
    if not spec_text.startswith("@"):
        return PageSet.from_text(spec_text.strip())
    path = spec_text[1:]
    raw = read_bounded(path, what="page file", limit=MAX_JSON, allow_stream=True)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 (byte {exc.start})", field="pages") from None
    stripped = text.strip()
    if stripped.startswith(("[", "{")):
        obj = loads_json(stripped, what=f"{path}: page file", error=UsageError)
        if isinstance(obj, dict):
            obj = obj.get("pages", obj.get("extents"))
        if not isinstance(obj, list):
            raise UsageError(f"{path}: expected a list of [first, count] extents",
                             field="pages")
        return PageSet.from_extents(obj)
    return PageSet.from_text("".join(stripped.split()))


# --- encode / decode by encoding name -----------------------------------------------------------
def guest_frames_of(pages: PageSet) -> int:
    return pages.max() + 1 if pages else 1


def encode_with(name: str, pages: PageSet, layout: WireLayout,
                guest_frames: int | None = None) -> list[Chain]:
    """The chains the ``name`` driver sends for ``pages`` on the inflate queue."""
    if name == "spec":
        return spec.encode_pfns(pages, layout)
    if name == "v3":
        # extend_page_bitmap() has sized the bitmap for get_max_pfn() before any inflate
        units = (guest_frames or guest_frames_of(pages)) // layout.frames_per_page
        return v3.encode_pages(pages, layout, nr_page_bmap=v3.nr_page_bmap_for(units, layout))
    if name == "hybrid-plain":
        return hybrid.encode_pages(pages, layout, bitmaps=False)
    if name == "hybrid":
        return hybrid.encode_pages(pages, layout, bitmaps=True)
    raise UsageError(f"unknown encoding {name!r} (one of: {', '.join(ENCODINGS)})",
                     field="encoding")


def decode_with(name: str, chains: Sequence[Chain], layout: WireLayout) -> PageSet:
    if name not in _PROFILE:
        raise UsageError(f"unknown encoding {name!r}", field="encoding")
    return decode_pages(_PROFILE[name], "inflate", chains, layout)


# --- analysis ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncodingResult:
    encoding: str
    bytes: int  # driver-written bytes in device-readable descriptors, headers included
    buffers: int  # chains (virtqueue_add_outbuf calls)
    descriptors: int  # scatter-gather entries
    encode_s: float  # median seconds
    decode_s: float
    round_trip: bool  # decode(encode(S)) == S
    error: str | None = None  # why this encoding cannot carry the set (e.g. 16 TiB PFN limit)


@dataclass(frozen=True)
class Analysis:
    frames: int  # 4 KiB frames in the set
    extents: int
    span: int  # max - min + 1
    density: float  # frames / guest_frames
    guest_frames: int
    layout: dict[str, object]
    results: tuple[EncodingResult, ...]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["results"] = [asdict(r) for r in self.results]
        return d

    def best(self) -> str:
        ok = [r for r in self.results if r.error is None]
        return min(ok, key=lambda r: r.bytes).encoding if ok else "-"


def _median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    ts: list[float] = []
    out: Any = None
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), out


def analyze(pages: PageSet, layout: WireLayout | None = None, *, guest_frames: int | None = None,
            repeats: int = 3, encodings: Sequence[str] = ENCODINGS) -> Analysis:
    """Encode ``pages`` with each encoding, measure the chains, decode them back."""
    layout = layout or WireLayout()
    gf = guest_frames or guest_frames_of(pages)
    results = []
    for name in encodings:
        try:
            t_enc, chains = _median_time(partial(encode_with, name, pages, layout, gf), repeats)
            t_dec, back = _median_time(partial(decode_with, name, chains, layout), repeats)
        except VBProtoError as exc:
            results.append(EncodingResult(name, 0, 0, 0, 0.0, 0.0, False, str(exc)))
            continue
        results.append(EncodingResult(name, chain_bytes(chains), len(chains),
                                      chain_descriptors(chains), t_enc, t_dec, back == pages))
    n = len(pages)
    return Analysis(n, pages.n_extents, pages.max() - pages.min() + 1 if pages else 0,
                    n / gf if gf else 0.0, gf, layout.to_json(), tuple(results))


def sweep(shape_name: str, frames: int, densities: Sequence[float] = DEFAULT_DENSITIES,
          layout: WireLayout | None = None, *, seed: int = 0,
          repeats: int = 1) -> list[tuple[float, Analysis]]:
    """:func:`analyze` of one shape at each density (``frames`` is the guest size)."""
    return [(d, analyze(shape(shape_name, frames, d, seed=seed, layout=layout), layout,
                        guest_frames=frames, repeats=repeats)) for d in densities]


def render_table(case: str, a: Analysis) -> str:
    """The human-readable table of one analysis."""
    lines = [f"{case}: {a.frames:,} frames in {a.extents:,} extents, span {a.span:,}, "
             f"density {a.density:.4g} of {a.guest_frames:,} guest frames",
             f"  {'encoding':13} {'bytes':>12} {'buffers':>8} {'descs':>8} {'encode ms':>10} "
             f"{'decode ms':>10}  ok"]
    for r in a.results:
        if r.error is not None:
            lines.append(f"  {r.encoding:13} n/a: {r.error}")
            continue
        lines.append(f"  {r.encoding:13} {r.bytes:>12,} {r.buffers:>8,} {r.descriptors:>8,} "
                     f"{r.encode_s * 1e3:>10.2f} {r.decode_s * 1e3:>10.2f}  "
                     f"{'yes' if r.round_trip else 'NO'}")
    lines.append(f"  smallest: {a.best()}")
    return "\n".join(lines)


# --- plot -------------------------------------------------------------------------------------
_STYLE = {
    "spec": ("PFN arrays (spec)", "tab:red", "o"),
    "v3": ("v3 bitmap", "tab:blue", "s"),
    "hybrid-plain": ("hybrid pfn+order", "tab:green", "^"),
    "hybrid": ("hybrid + bitmap words", "tab:purple", "D"),
}


def check_plot_available() -> None:
    """Raise a one-line UsageError when the optional ``plot`` extra is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'virtio-balloon-proto[plot]'",
                         field="plot") from None


def plot_figure(sweeps: dict[str, list[tuple[float, Analysis]]],
                title: str | None = None) -> Any:
    """The matplotlib Figure of :func:`plot_sweeps` (caller closes it): one panel per shape,
    one line per encoding, the legend in its own row under the panels (constrained layout
    reserves the room, so it is never cut off whatever the number of panels)."""
    check_plot_available()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(sweeps)
    cols = 2 if n > 1 else 1
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.6 * rows + 0.5), squeeze=False,
                             layout="constrained")
    for ax, (name, points) in zip(axes.flat, sweeps.items(), strict=False):
        dens = [d for d, _ in points]
        for enc in ENCODINGS:
            label, color, marker = _STYLE[enc]
            ys = [next(r.bytes for r in a.results if r.encoding == enc) for _, a in points]
            xs = [d for d, y in zip(dens, ys, strict=True) if y > 0]
            ys = [y for y in ys if y > 0]
            ax.plot(xs, ys, label=label, color=color, marker=marker, markersize=4, lw=1.6)
        gf = points[0][1].guest_frames if points else 0
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{name} ({gf * 4096 / 2**30:g} GiB guest, {gf:,} frames)", fontsize=11)
        ax.set_xlabel("density (fraction of guest frames in the set)")
        ax.set_ylabel("bytes on the wire")
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", alpha=0.12)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    # four entries in one row need ~9 inches; a one-panel figure (6.4 in) gets two rows
    fig.legend(handles, labels, loc="outside lower center", ncol=len(ENCODINGS) if cols > 1
               else 2, frameon=False, fontsize=10)
    fig.suptitle(title or "virtio-balloon inflate: bytes on the wire per encoding", fontsize=13)
    return fig


def plot_sweeps(sweeps: dict[str, list[tuple[float, Analysis]]], path: str | Path,
                title: str | None = None) -> None:
    """Bytes on the wire against density, one panel per shape, one line per encoding (PNG;
    SVG or PDF by the suffix).  Rendered in memory, then written under the output contract
    of :mod:`virtio_balloon_proto.io` ('-' is stdout, a symlink is written through, a device
    is not replaced)."""
    import io

    check_plot_available()
    import matplotlib.pyplot as plt

    from .io import write_atomic

    fig = plot_figure(sweeps, title)
    buf = io.BytesIO()
    suffix = Path(str(path)).suffix.lstrip(".").lower()
    try:
        fig.savefig(buf, dpi=110, format=suffix if suffix in ("png", "svg", "pdf") else "png")
    finally:
        plt.close(fig)
    write_atomic(path, buf.getvalue())
