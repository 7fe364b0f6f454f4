"""``vbproto conform matrix``: the corpus against several devices, one column each (issue 15).

Columns come from ``--device`` (repeatable) or a TOML file (``--columns``, see
conformance/matrix_columns.py); each runs as its own ``vbproto conform run`` process (``-j``
at a time).  Writes ``OUT/matrix.json`` (schema: virtio_balloon_proto/schemas/
matrix-v1.schema.json) and the self-contained ``OUT/matrix.html``, both rewritten after every
column (``partial: true`` until the run ends), and with ``--markdown`` the page docs/matrix.md.
``--compare COMMITTED.json`` is CI's check: exit 1 when a verdict of the columns run differs.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from virtio_balloon_proto.cliframe import Command, Interrupted, emit_json, json_option, seconds
from virtio_balloon_proto.commands.common import PROFILES
from virtio_balloon_proto.errors import UsageError

EXIT_CODES = ("0 every column ran to its end (whatever its verdicts); 1 a column did not "
              "(crash, hang, its device could not be started), or --compare found a verdict "
              "that differs, or nothing tested (no case matched --profile/--case: no column "
              "runs, nothing is written); 2 bad usage or input (a bad column spec or TOML "
              "file, an unwritable output); 130 interrupted: matrix.json, matrix.html and "
              "--markdown are written, partial, and --json prints its summary with "
              "\"partial\": true.")


@click.command("matrix", cls=Command, exit_codes=EXIT_CODES)
@click.option("--device", "devices", multiple=True,
              help="a column: any `conform run --device` spec, named by it (repeatable)")
@click.option("--columns", "columns_file", default=None, type=click.Path(dir_okay=False),
              help="TOML file of named columns (conformance/matrix.toml)")
@click.option("--only", "only", multiple=True,
              help="with --columns: only the column of this name (repeatable)")
@click.option("-j", "--jobs", default=1, show_default=True, type=click.IntRange(1, 64),
              help="columns run at the same time, each in its own process")
@click.option("--corpus", default=None, type=click.Path(),
              help="trace directory (default: shipped)")
@click.option("--profile", "profiles", multiple=True,
              type=PROFILES,
              help="only cases of this profile (repeatable)")
@click.option("--case", "case_globs", multiple=True,
              help="only case ids matching this glob (repeatable)")
@click.option("--strict", is_flag=True, help="a broken SHOULD fails the case")
@click.option("--timeout", default=5.0, show_default=True, type=float, callback=seconds,
              help="per-step timeout in seconds (0 < T <= 86400)")
@click.option("--column-timeout", default=900.0, show_default=True, type=float,
              callback=seconds, help="a column still running after this many seconds is "
              "killed with its device (it costs that column only)")
@click.option("-o", "--out", "out_dir", default=".", show_default=True,
              type=click.Path(file_okay=False), help="directory for matrix.json and matrix.html")
@click.option("--markdown", default=None, type=click.Path(dir_okay=False),
              help="also write the Markdown page (docs/matrix.md)")
@click.option("--diff", "diff", nargs=2, default=None, metavar="A B",
              help="two column names to diff (default: the --columns file's diff)")
@click.option("--compare", "compare", default=None, type=click.Path(dir_okay=False),
              help="a committed matrix.json: exit 1 when a verdict of these columns differs")
@click.option("--keep-reports", default=None, type=click.Path(file_okay=False),
              help="keep each column's `conform run` JSON report in DIR (NN.json)")
@json_option("print a JSON summary (columns, counts, differences, files) on stdout")
def matrix(devices: tuple[str, ...], columns_file: str | None, only: tuple[str, ...],
           jobs: int, corpus: str | None, profiles: tuple[str, ...],
           case_globs: tuple[str, ...], strict: bool, timeout: float, column_timeout: float,
           out_dir: str, markdown: str | None, diff: tuple[str, str] | None,
           compare: str | None, keep_reports: str | None, as_json: bool) -> None:
    """Run the corpus against several devices and write the results matrix."""
    from virtio_balloon_proto.conformance.catalog import catalog
    from virtio_balloon_proto.conformance.matrix import (
        build_matrix,
        compare_verdicts,
        load_matrix,
        validate,
    )
    from virtio_balloon_proto.conformance.matrix_columns import (
        ColumnRun,
        RunOptions,
        columns_from_devices,
        describe,
        load_columns,
        run_columns,
    )
    from virtio_balloon_proto.conformance.matrix_report import write_html, write_markdown
    from virtio_balloon_proto.conformance.runner import default_corpus, discover_cases
    from virtio_balloon_proto.io import check_writable, write_atomic
    from virtio_balloon_proto.limits import dumps_strict

    cols, pair = load_columns(columns_file) if columns_file else ([], None)
    if only:
        if not columns_file:
            raise UsageError("--only selects columns of a --columns file", field="only")
        missing = [n for n in only if n not in {c.name for c in cols}]
        if missing:
            raise UsageError(f"no column named {', '.join(missing)} in {columns_file}",
                             field="only")
        cols = [c for c in cols if c.name in only]
    cols += columns_from_devices(devices)
    if not cols:
        raise UsageError("no column: give --device SPEC (repeatable) or --columns FILE",
                         field="device")
    names = [c.name for c in cols]
    if len(set(names)) != len(names):
        raise UsageError("a --device repeats a column of the --columns file", field="device")
    if diff is not None:
        pair = (diff[0], diff[1])
        for d in pair:
            if d not in names:
                raise UsageError(f"--diff column {d!r} is not a column ({', '.join(names)})",
                                 field="diff")
    elif pair is not None and not all(d in names for d in pair):
        pair = None  # the file's diff pair, with a column left out by --only: no diff
    for c in cols:
        if c.known_failures and not os.path.isfile(c.known_failures):
            raise UsageError(f"column {c.name}: known-failures file not found",
                             where=c.known_failures)
    out = Path(out_dir)
    json_path, html_path = str(out / "matrix.json"), str(out / "matrix.html")
    for p in (json_path, html_path, *([markdown] if markdown else [])):
        check_writable(p)
    committed = load_matrix(compare) if compare else None
    corpus_path = corpus or str(default_corpus())
    cases = discover_cases(corpus_path, profiles=profiles or None, case_globs=case_globs or None)
    case_ids = [(c.id, c.profile) for c in cases]
    runs = [ColumnRun(c, describe(c.device)) for c in cols]  # bad options: exit 2 here
    cat = catalog()
    opts = RunOptions(corpus=corpus_path, profiles=profiles, case_globs=case_globs,
                      strict=strict, timeout=timeout, column_timeout=column_timeout, jobs=jobs)
    started = time.time()

    shown_corpus = corpus or "conformance/traces (shipped)"

    def write(partial: bool) -> dict[str, Any]:
        doc = build_matrix(runs, case_ids, corpus=shown_corpus, strict=strict, cat=cat,
                           diff=pair, started=started, partial=partial)
        validate(doc, "matrix.json (ours)")
        write_atomic(json_path, dumps_strict(doc, indent=1) + "\n")
        write_html(html_path, doc)
        return doc

    def progress(event: str, run: ColumnRun) -> None:
        if event == "start":
            click.echo(f"{run.column.name}: started", err=True)
            return
        counts = ", ".join(f"{n} {k}" for k, n in _counts(run).items() if n)
        click.echo(f"{run.column.name}: {run.status} in {run.duration:.1f} s"
                   f"{': ' + counts if counts else ''}"
                   f"{' (' + run.message + ')' if run.message else ''}", err=True)
        with contextlib.suppress(OSError):
            write(True)

    if not cases:
        # as `conform run`: no case matched is nothing tested (exit 1); no column runs and
        # no file is written (a mistyped --case must not blank a published matrix)
        sel = ", ".join([*(f"--profile {p}" for p in profiles),
                         *(f"--case {g}" for g in case_globs)]) or "the corpus"
        text = f"nothing tested: no case matched ({sel}) in {shown_corpus}; nothing written"
        if as_json:
            emit_json({"columns": [], "nothing_tested": text, "partial": False,
                       "files": [], "differences": [], "exit_code": 1})
        else:
            click.echo(text, err=True)
        sys.exit(1)
    write(True)  # the files exist (partial) before the first column starts
    interrupted = False
    with contextlib.ExitStack() as stack:
        work = (Path(keep_reports) if keep_reports
                else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vbmatrix."))))
        try:
            run_columns(runs, opts, work, on_event=progress)
        except (KeyboardInterrupt, Interrupted):
            interrupted = True
    # interrupted: every output is still written, partial (matrix.json/html, the Markdown
    # page, and under --json one summary object saying partial and exit_code 130)
    doc = write(interrupted)
    if markdown:
        write_markdown(markdown, doc, _command(columns_file, only, devices, jobs, corpus,
                                               profiles, case_globs, strict, out_dir, markdown,
                                               diff))
    differences = ([] if interrupted or committed is None
                   else compare_verdicts(committed, doc))
    unfinished = [c["name"] for c in doc["columns"] if c["status"] != "complete"]
    code = 130 if interrupted else 1 if differences or unfinished else 0
    files = [json_path, html_path, *([markdown] if markdown else [])]
    summary: dict[str, Any] = {
        "columns": [{k: c[k] for k in ("name", "status", "counts", "duration", "message")}
                    for c in doc["columns"]],
        "unsupported": {c["name"]: c["unsupported"] for c in doc["columns"]
                        if "unsupported" in c},
        "only_here": len(doc["only_here"]),
        "diff": None if doc["diff"] is None else len(doc["diff"]["cases"]),
        "differences": differences,
        "files": files,
        "partial": interrupted,
        "seconds": round(time.time() - started, 1),
        "exit_code": code,
    }
    if interrupted:
        click.echo("matrix interrupted: its files are written, partial", err=True)
    if as_json:
        emit_json(summary)
    else:
        for c in doc["columns"]:
            counts = ", ".join(f"{n} {k}" for k, n in c["counts"].items() if n)
            click.echo(f"{c['name']:28} {c['status']:9} {counts}")
            split = _unsupported_text(c.get("unsupported"))
            if split:
                click.echo(f"{'':28} unsupported: {split}")
        click.echo(f"{len(doc['only_here'])} case(s) broken on one device only; "
                   + ("" if doc["diff"] is None else
                      f"{doc['diff']['a']} vs {doc['diff']['b']}: "
                      f"{len(doc['diff']['cases'])} cell(s) differ; ")
                   + f"wrote {', '.join(files)} in {summary['seconds']} s")
        if compare and not interrupted:
            click.echo(f"verdicts against {compare}: "
                       + ("same" if not differences else f"{len(differences)} difference(s)"))
            for d in differences:
                click.echo(f"  {d}")
    sys.exit(code)


def _unsupported_text(split: Any) -> str:
    if not isinstance(split, dict):
        return ""
    return ", ".join(f"{n} {k}" for k, n in split.items() if isinstance(n, int) and n)


def _counts(run: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in (run.report or {}).get("cases", []):
        out[str(c.get("outcome"))] = out.get(str(c.get("outcome")), 0) + 1
    return out


def _command(columns_file: str | None, only: tuple[str, ...], devices: tuple[str, ...],
             jobs: int, corpus: str | None, profiles: tuple[str, ...],
             case_globs: tuple[str, ...], strict: bool, out_dir: str, markdown: str,
             diff: tuple[str, str] | None) -> str:
    """The command line that regenerates the Markdown page (shown at its top)."""
    from virtio_balloon_proto.conformance.matrix_columns import selection_argv

    argv = ["vbproto", "conform", "matrix"]
    if columns_file:
        argv += ["--columns", columns_file]
    for n in only:
        argv += ["--only", n]
    for d in devices:
        argv += ["--device", d]
    if jobs != 1:
        argv += ["-j", str(jobs)]
    if corpus:
        argv += ["--corpus", corpus]
    argv += selection_argv(profiles, case_globs, strict)
    if diff:
        argv += ["--diff", *diff]
    argv += ["-o", out_dir, "--markdown", markdown]
    return shlex.join(argv)
