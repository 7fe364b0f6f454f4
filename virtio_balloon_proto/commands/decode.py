"""``vbproto decode`` (the capture decoder) and ``vbproto analyze`` (encoding analysis)."""

from __future__ import annotations

import sys
from typing import Any

import click

from virtio_balloon_proto.cliframe import (
    Command,
    FiniteRange,
    json_option,
)
from virtio_balloon_proto.commands.common import (
    wire_layout,
)


def _pages_text(pages: Any, most: int = 8) -> str:
    """Compact ranges, the first ``most`` of them, then how many more."""
    n_ext = pages.n_extents  # counted, not listed: a balloon may have millions of ranges
    parts = [f"{a}" if n == 1 else f"{a}-{a + n - 1}" for a, n in pages.head(most)]
    more = f",... (+{n_ext - most} ranges)" if n_ext > most else ""
    return ",".join(parts) + more


def _describe(d: Any) -> str:
    """One line for a decoded message: what it is and which pages it names."""
    b = d.buffer
    head = f"line {d.line} {d.role} q{d.queue}" + (f" head {d.head}" if d.head is not None else "")
    if d.direction == "used":
        head += f" used len {d.used_len}"
    if b is None:
        return head + (f": ERROR {d.error}" if d.error else "")
    from virtio_balloon_proto.wire.messages import BitmapMessage, HybridMessage, PfnArray

    m = b.decoded.message if b.decoded is not None else None
    # the one-line form reads the message's own attributes: its full fields() (a dict per
    # hybrid record, a list of every PFN) cost 30x a 7 MiB buffer for a count
    fields = (b.decoded.fields() if b.decoded is not None
              and not isinstance(m, (PfnArray, BitmapMessage, HybridMessage)) else {})
    if b.kind == "pfns":
        what = f"pfns[{len(m.pfns) if isinstance(m, PfnArray) else 0}]"
    elif b.kind == "bmap":
        what = ("bmap " + " ".join(f"{k}={getattr(m, k)}" for k in
                ("cmd", "page_shift", "flag", "req_id", "start_pfn", "bmap_len"))
                + f" buffers={len(m.bitmap)}" if isinstance(m, BitmapMessage)
                else "bmap  buffers=0")
    elif b.kind == "hybrid":
        what = (f"hybrid cmd={m.cmd} flag={m.flag} id={m.id} data_len={m.data_len} "
                f"records={len(m.heads)}" if isinstance(m, HybridMessage)
                else "hybrid cmd=None flag=None id=None data_len=None records=0")
    elif b.kind == "stats":
        what = "stats " + " ".join(f"{e['name'] or e['tag']}={e['val']}"
                                   for e in fields.get("entries", []))
    elif b.kind == "req":
        what = f"req cmd={fields.get('cmd')} param={fields.get('param'):#x}"
    elif b.kind == "hint-cmd":
        what = f"hint cmd_id={fields.get('cmd_id'):#x}"
    else:
        what = b.kind
    text = f"{head}: {what}"
    if len(b.pages):
        text += f" pages {_pages_text(b.pages)} ({len(b.pages)} frames)"
    for f in b.findings:
        text += f"\n    ! {f}"
    return text


@click.command(cls=Command, name="decode")
@click.argument("trace_file", type=click.Path(dir_okay=False))
@json_option("one JSON object per message (JSON Lines), then the summary with --summary")
@click.option("--queue", "queues", multiple=True,
              type=click.Choice(["inflate", "deflate", "stats", "free_page", "misc", "reporting"]),
              help="only messages of this queue role (repeatable)")
@click.option("--summary", is_flag=True, help="print only the summary")
def decode_cmd(trace_file: str, as_json: bool, queues: tuple[str, ...], summary: bool) -> None:
    """Decode every message of a recorded trace (docs/trace-format.md)."""
    import json
    import os

    from virtio_balloon_proto.trace import TraceReader
    from virtio_balloon_proto.tracedecode import Summary, decode_trace

    total = os.path.getsize(trace_file)
    show_bar = sys.stderr.isatty() and total > 8 << 20
    summ = Summary()
    with TraceReader(trace_file) as reader:
        stream = decode_trace(reader, set(queues) or None, summ)
        with click.progressbar(length=total, label="decoding", file=sys.stderr,
                               hidden=not show_bar) as bar:
            for d in stream:
                if show_bar:
                    bar.update(reader._f.tell() - bar.pos)
                if summary:
                    continue
                if as_json:
                    for piece in d.iter_json():
                        click.echo(piece, nl=False)
                    click.echo()
                else:
                    click.echo(_describe(d))
    if as_json:
        if summary:
            click.echo(json.dumps({"summary": summ.to_json()}))
        return
    s = summ.to_json(pages=False)
    click.echo("summary:" if not summary else f"summary of {trace_file}:")
    click.echo(f"  messages       {s['messages']}")
    click.echo(f"  pages/queue    {s['pages_per_queue']}")
    click.echo(f"  net balloon    {s['net_balloon']['frames']} frames "
               f"({_pages_text(summ.balloon) or 'none'})")
    for req, u in s["unused_reports"].items():
        click.echo(f"  unused {req:>8} {u['frames']} frames")
    if summ.reported:
        click.echo(f"  reported       {s['reported']['frames']} frames")
    if summ.hinted:
        click.echo(f"  hinted         {s['hinted']['frames']} frames")
    if s["stats"]["buffers"]:
        click.echo(f"  stats          {s['stats']['buffers']} buffers, last {s['stats']['last']}")
    click.echo(f"  findings       {s['findings'] or 'none'}")
    if s["errors"]:
        click.echo(f"  undecodable    {s['errors']} buffer(s) (not checkable)")
    if s["window"] is not None:
        w = s["window"]
        click.echo(f"  window         starts {w['start']}, ends {w['end']}"
                   + (f", captured {','.join(w['captured'])}" if "captured" in w else ""))
    if s["used_before_window"]:
        click.echo(f"  before window  used {s['used_before_window']} (pages unknown: not in "
                   "the net balloon)")


@click.command(cls=Command, name="analyze")
@click.option("--pages", "pages_text", default=None,
              help="page set: compact text '0-1023,4096' or @FILE (JSON extents or text)")
@click.option("--shape", type=click.Choice(["dense", "sparse", "fragmented", "hugepage", "all"]),
              default=None, help="synthetic shape instead of --pages (default: sparse)")
@click.option("--frames", type=click.IntRange(1, 1 << 28), default=2_097_152, show_default=True,
              help="guest size in 4 KiB frames (8 GiB by default)")
@click.option("--density", type=FiniteRange(0.0, 1.0), default=0.1, show_default=True,
              help="fraction of the guest in the shape")
@click.option("--seed", type=int, default=0, show_default=True,
              help="random seed of the synthetic shape")
@click.option("--endian", type=click.Choice(["le", "be"]), default="le", show_default=True,
              help="byte order of __virtio fields (le with VERSION_1)")
@click.option("--word-size", type=click.Choice(["32", "64"]), default="64", show_default=True,
              help="v3 bitmap BITS_PER_LONG")
@click.option("--word-order", type=click.Choice(["le", "be"]), default=None,
              help="v3 bitmap word byte order [default: --endian]")
@click.option("--page-size", type=click.Choice(["4096", "16384", "65536"]), default="4096",
              show_default=True, help="guest PAGE_SIZE")
@click.option("--repeats", type=click.IntRange(1, 50), default=3, show_default=True,
              help="timing repeats (median)")
@json_option("print JSON (one object, or a list with --shape all)")
@click.option("--plot", "plot", type=click.Path(dir_okay=False), default=None,
              help="draw bytes on the wire against density (needs the 'plot' extra)")
def analyze_cmd(pages_text: str | None, shape: str | None, frames: int, density: float,
                seed: int, endian: str, word_size: str, word_order: str | None, page_size: str,
                repeats: int, as_json: bool, plot: str | None) -> None:
    """Bytes, buffers, descriptors and codec time of each encoding for a page set."""
    import json

    from virtio_balloon_proto import analysis as an
    from virtio_balloon_proto.errors import UsageError

    layout = wire_layout(endian, word_size, word_order, int(page_size))
    if pages_text is not None and shape is not None:
        raise UsageError("give --pages or --shape, not both", field="pages")
    if pages_text is not None and plot:
        raise UsageError("--plot sweeps the density of a --shape; it cannot use --pages",
                         field="plot")
    if plot:
        from virtio_balloon_proto.io import check_writable

        an.check_plot_available()
        check_writable(plot)  # before the sweep, not after it
    cases: list[tuple[str, Any]] = []
    if pages_text is not None:
        ps = an.load_pages(pages_text)
        cases.append(("pages", an.analyze(ps, layout, repeats=repeats)))
    else:
        for name in (an.SHAPES if shape == "all" else (shape or "sparse",)):
            ps = an.shape(name, frames, density, seed=seed, layout=layout)
            cases.append((f"{name} d={density:g}",
                          an.analyze(ps, layout, guest_frames=frames, repeats=repeats)))
    if as_json:
        out = [dict(case=c, **a.to_json()) for c, a in cases]
        click.echo(json.dumps(out[0] if len(out) == 1 else out))
    else:
        for c, a in cases:
            click.echo(an.render_table(c, a))
    if plot:
        names = an.SHAPES if shape == "all" else (shape or "sparse",)
        an.plot_sweeps({n: an.sweep(n, frames, layout=layout, seed=seed) for n in names}, plot)
        if not as_json:
            click.echo(f"wrote {plot}")
