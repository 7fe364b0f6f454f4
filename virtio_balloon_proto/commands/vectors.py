"""``vbproto vectors``: generate the golden vectors, verify a codec against them."""

from __future__ import annotations

import sys

import click

from virtio_balloon_proto.cliframe import (
    emit_json,
    json_mode,
    json_option,
    seconds,
)
from virtio_balloon_proto.commands.common import (
    group,
)


@group("vectors", "Golden test vectors: generate the corpus, verify a codec against it.")
def vectors() -> None:
    pass


@vectors.command("generate")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="directory to write the vector files and schema/ into")
@json_option('print {"wrote": DIR, "files": [...]}', expose=False)
def vectors_generate(out: str) -> None:
    """Write every vector file and JSON Schema (deterministic: byte-identical each run)."""
    from virtio_balloon_proto.vectorgen import generate

    paths = generate(out)
    if json_mode():
        emit_json({"wrote": out, "files": [str(p) for p in paths]})
    else:
        click.echo(f"wrote {len(paths)} file(s) to {out}")


@vectors.command("verify", exit_codes="0 at least one vector checked and none failed "
                 "(unsupported ones are skipped); 1 a vector failed, or nothing tested (every "
                 "vector skipped); 2 bad usage or input; 130 interrupted.")
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--impl", default=None, metavar="SPEC",
              help="codec to check: reference (default) or stdio:'CMD' (docs/vectors.md)")
@click.option("--junit", "junit", type=click.Path(dir_okay=False), default=None,
              help="write a JUnit XML report to FILE (atomically)")
@click.option("--timeout", type=float, callback=seconds, default=5.0, show_default=True,
              help="seconds per stdio request (0 < T <= 86400)")
@click.option("--max-failures", type=int, default=20, show_default=True,
              help="failures listed in the summary")
@json_option('print {"codec", "counts", "files": {FILE: counts}, "failures": [...], '
             '"exit_code"}')
def vectors_verify(directory: str | None, impl: str | None, junit: str | None, timeout: float,
                   max_failures: int, as_json: bool) -> None:
    """Check a codec against every vector in DIRECTORY (default: the packaged corpus)."""
    from virtio_balloon_proto.io import check_writable
    from virtio_balloon_proto.vectorgen.verify import open_codec, verify, write_junit

    if junit:
        check_writable(junit)
    report = verify(directory, open_codec(impl, timeout))
    counts = report.counts()
    nothing = counts["passed"] + counts["failed"] == 0
    code = 1 if not report.ok or nothing else 0
    if junit:
        write_junit(junit, report)
    if as_json:
        emit_json({"codec": report.codec, "counts": counts,
                   "files": {f: report.counts(f) for f in report.files},
                   "failures": [{"file": o.file, "id": o.id, "message": o.message}
                                for o in report.outcomes if o.status == "failed"],
                   "nothing_tested": nothing, "exit_code": code})
    else:
        for line in report.summary_lines(max_failures):
            click.echo(line)
        if nothing:
            click.echo("nothing tested: every vector was skipped as unsupported by the codec")
    sys.exit(code)
