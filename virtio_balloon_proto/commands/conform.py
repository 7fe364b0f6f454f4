"""``vbproto conform``: the clause catalog, the offline trace check and replay against a
device (conformance/)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from virtio_balloon_proto.cliframe import (
    FiniteRange,
    Interrupted,
    json_option,
    seconds,
)
from virtio_balloon_proto.commands.common import (
    PROFILES,
    group,
)


# Drives virtio_balloon_proto.conformance: the clause catalog, the offline trace check and the
# replay runner with its reports.  Exit status: 0 all pass (known failures allowed), 1 failures
# or unexpected passes, 2 bad usage or input.
@group("conform", "Conformance: clause catalog, offline trace check, replay against a device.")
def conform() -> None:
    pass


@conform.command("clauses")
@json_option("machine-readable catalog with check counts")
@click.option("--profile", type=PROFILES, default=None, help="only clauses of this profile")
def conform_clauses(as_json: bool, profile: str | None) -> None:
    """List the clause catalog with how many checks each clause has."""
    import json as _json

    from virtio_balloon_proto.conformance import runner as _runner  # registers the checks
    from virtio_balloon_proto.conformance.catalog import catalog

    del _runner
    cat = catalog()
    counts = cat.check_counts()
    if as_json:
        data = cat.to_json()
        if profile:
            data["clauses"] = [c for c in data["clauses"] if profile in c["profiles"]]
        click.echo(_json.dumps(data, indent=1))
        return
    shown = [c for c in cat if profile is None or profile in c.profiles]
    for c in shown:
        obs = "" if c.observable else " (not observable)"
        err = f" [erratum {c.errata}]" if c.errata else ""
        click.echo(f"{c.id:55} {c.level:6} {c.side:6} checks={counts[c.id]}{obs}{err}")
    checked = sum(1 for c in shown if counts[c.id])
    observable = sum(1 for c in shown if c.observable)
    click.echo(
        f"{len(shown)} clauses, {observable} wire-observable, {checked} with at least one check; "
        f"{len(cat.errata)} erratum/errata"
    )


@conform.command("check", exit_codes="0 at least one clause judged and none broken; 1 a "
                 "clause broken, or nothing tested (no clause applied to the trace); 2 bad "
                 "usage or input, or the trace cannot be checked; 130 interrupted.")
@click.argument("trace_file", type=click.Path(dir_okay=False))
@json_option("print the verdicts as JSON (with exit_code and nothing_tested)")
@click.option("--strict", is_flag=True, help="a broken SHOULD fails")
def conform_check(trace_file: str, as_json: bool, strict: bool) -> None:
    """Validate both sides of a recorded trace against the clauses (offline)."""
    import json as _json

    from virtio_balloon_proto.conformance.offline import check_trace

    res = check_trace(trace_file, strict=strict, traffic=as_json)  # text shows no traffic
    outcome = res.outcome(strict)
    nothing = None
    if not res.results and outcome not in ("fail", "error"):
        nothing = ("no clause applied to this trace"
                   + (f" ({res.status.value}: {res.reason})" if res.status is not None else ""))
    code = 2 if outcome == "error" else 1 if outcome == "fail" or nothing else 0
    if as_json:
        data = res.to_json(strict)
        data["exit_code"] = code
        data["nothing_tested"] = nothing
        click.echo(_json.dumps(data, indent=1, default=str))
    else:
        click.echo(res.details_text())
        checked = len(res.results)
        click.echo(f"{checked} clause(s) checked, {len(res.failures())} broken")
        if nothing:
            click.echo(f"nothing tested: {nothing}")
    sys.exit(code)


def _progress(enabled: bool) -> Callable[[Any, Any], None]:
    def show(run: Any, case: Any) -> None:
        if not enabled:
            return
        n, total = len(run.cases), max(run.planned, 1)
        width = 30
        fill = width * n // total
        line = f"\r[{'#' * fill}{'.' * (width - fill)}] {n}/{total} {case.case_id[:40]:40}"
        click.echo(line, err=True, nl=n == total)

    return show


@conform.command("run", exit_codes="0 at least one case judged and no failure (known "
                 "failures allowed); 1 a failure or unexpected pass, or nothing tested (no "
                 "case matched, or every case unsupported: the summary lists what the "
                 "device lacks); 2 bad usage or input (a missing --known-failures file, an "
                 "unwritable report path), or a case could not be run; 130 interrupted "
                 "(SIGINT, SIGTERM): the reports are valid, partial, and say exit_code 130.")
@click.option("--device", "device", default="reference", show_default=True,
              help="reference | python:module:Class | stdio:'CMD ...' | qemu[:OPTS]")
@click.option("--corpus", default=None, type=click.Path(),
              help="trace directory (default: shipped)")
@click.option("--profile", "profiles", multiple=True, type=PROFILES,
              help="only cases of this profile (repeatable)")
@click.option("--case", "case_globs", multiple=True,
              help="only case ids matching this glob (repeatable)")
@click.option("--known-failures", "known_path", default=None, type=click.Path(dir_okay=False),
              help="TOML list of accepted failures (docs/conformance.md); must exist unless "
                   "--update-known-failures")
@click.option("--update-known-failures", is_flag=True,
              help="rewrite the --known-failures file to list exactly the current failures")
@click.option("--strict", is_flag=True, help="a broken SHOULD fails the case")
@click.option("--report-json", default=None, type=click.Path(dir_okay=False),
              help="write the JSON report to FILE (- for stdout); rewritten after each case")
@click.option("--junit", default=None, type=click.Path(dir_okay=False),
              help="write a JUnit XML report to FILE (- for stdout)")
@click.option("--html", "html_path", default=None, type=click.Path(dir_okay=False),
              help="write a self-contained HTML report to FILE (- for stdout)")
@click.option("--timeout", default=5.0, show_default=True, type=float,
              callback=seconds, help="per-step timeout in seconds (0 < T <= 86400)")
@click.option("--report-every", "report_every", default=2.0, show_default=True,
              type=FiniteRange(0, 86400),
              help="rewrite the reports after a case at most every S seconds (0: after every "
              "case, so a run killed outright loses no finished case); always at the end and "
              "on SIGINT/SIGTERM")
@click.option("--save-traces", "save_traces", default=None, type=click.Path(file_okay=False),
              help="write what the device did in each case as a trace (DIR/<case>.jsonl), "
              "for `conform check` to re-judge")
@click.option("-v", "--verbose", is_flag=True, help="list passing cases too")
@json_option("print the JSON report on stdout (as --report-json -); the summary goes to stderr")
def conform_run(device: str, corpus: str | None, profiles: tuple[str, ...],
                case_globs: tuple[str, ...], known_path: str | None, update_known_failures: bool,
                strict: bool, report_json: str | None, junit: str | None, html_path: str | None,
                timeout: float, report_every: float, save_traces: str | None, verbose: bool,
                as_json: bool) -> None:
    """Replay the corpus into a device and judge what it did, clause by clause (the same
    checks as `conform check`)."""
    import os
    import shlex
    import time

    from virtio_balloon_proto.conformance.catalog import catalog
    from virtio_balloon_proto.conformance.known_failures import KnownFailures
    from virtio_balloon_proto.conformance.report import ReportWriter, text_summary
    from virtio_balloon_proto.conformance.runner import Runner, default_corpus, discover_cases
    from virtio_balloon_proto.conformance.verdicts import RunResult
    from virtio_balloon_proto.errors import UsageError

    if update_known_failures and not known_path:
        raise UsageError("--update-known-failures needs --known-failures FILE")
    from virtio_balloon_proto.io import STDOUT, check_writable

    if as_json:
        if STDOUT in (junit, html_path) or report_json not in (None, STDOUT):
            raise UsageError("--json prints the JSON report on stdout: give --report-json FILE "
                             "without --json, or no other report on stdout", field="json")
        report_json = STDOUT
    outputs = [p for p in (report_json, junit, html_path) if p]
    if outputs.count(STDOUT) > 1:
        raise UsageError("only one report can go to stdout (-)", field="report")
    for p in outputs:
        check_writable(p)  # before the run, not after it
    if save_traces:  # our own output: a directory we cannot write is bad usage, not the device's
        check_writable(os.path.join(save_traces, "case.jsonl"))
    to_stdout = STDOUT in outputs  # then the text summary goes to stderr
    corpus_path = corpus or str(default_corpus())
    cases = discover_cases(corpus_path, profiles=profiles or None, case_globs=case_globs or None)
    if known_path and not update_known_failures and not os.path.exists(known_path):
        # a mistyped name is not an empty list (--update-known-failures creates the file)
        raise UsageError("known-failures file not found (--update-known-failures creates it)",
                         where=known_path)
    known = KnownFailures.load(known_path) if known_path else KnownFailures([])
    cat = catalog()
    reports = ReportWriter(cat, report_json, junit, html_path, every=report_every)
    progress = _progress(sys.stderr.isatty())
    partial = RunResult(device=device, corpus=corpus_path, strict=strict, planned=len(cases),
                        known_failures=known_path, started=time.time())

    def on_case(run: Any, case: Any) -> None:
        partial.cases = run.cases
        partial.started = run.started
        reports(run, case)
        progress(run, case)

    runner = None
    try:
        # the reports exist from the first moment (before a device starts): an empty partial
        # report is a valid one
        reports.write(partial, skip_streams=True)
        runner = Runner(device, timeout=timeout, strict=strict, known_failures=known,
                        save_traces=save_traces, traffic=bool(outputs))
        partial.device = runner.device_spec
        run = runner.run(cases, corpus=corpus_path, on_case=on_case)
    except (KeyboardInterrupt, Interrupted):  # SIGINT, SIGTERM (see _install_signal_handlers)
        partial.partial = True
        partial.unmatched_known = []
        partial.exit_status = 130  # what the process returns, in the reports too
        reports.write(partial)  # the reports say partial=true
        click.echo(text_summary(partial), err=True)
        sys.exit(130)
    finally:
        if runner is not None:
            runner.close()
    code = 0 if update_known_failures else run.exit_code()
    run.exit_status = code
    reports.write(run)
    from virtio_balloon_proto.conformance.matrix_columns import selection_argv

    argv = ["vbproto", "conform", "run", "--device", device, "--corpus", corpus_path,
            *selection_argv(profiles, case_globs, strict)]
    argv += ["--known-failures", known_path or "known-failures.toml", "--update-known-failures"]
    click.echo(text_summary(run, verbose=verbose, command_hint=shlex.join(argv)), err=to_stdout)
    if update_known_failures and known_path:
        n = known.write_updated(run.cases, known_path)
        click.echo(f"wrote {n} known failure(s) to {known_path}", err=to_stdout)
    sys.exit(code)
