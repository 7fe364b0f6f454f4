"""``vbproto fuzz``: generated driver traffic against a device, every sequence judged by the
conformance oracle, each failure shrunk to a minimal trace with its replay command
(conformance/fuzz/, docs/fuzzing-devices.md)."""

from __future__ import annotations

import sys
from typing import Any

import click

from virtio_balloon_proto.cliframe import Command, Interrupted, emit_json, json_option, seconds

EXIT_CODES = ("0 the budget ran out and no clause broke; 1 findings (each written under --out "
              "with its replay command), or nothing could be run (every sequence unsupported); "
              "2 bad usage or input, or our side failed on a sequence (a bug of ours: the "
              "message says which); 130 interrupted (SIGINT, SIGTERM): --out holds what was "
              "found so far and findings.json says partial.")


def _features(text: str | None) -> frozenset[str] | None:
    from virtio_balloon_proto.conformance.fuzz.program import OPTIONAL_FEATURES
    from virtio_balloon_proto.errors import UsageError

    if text is None:
        return None
    if text.strip().lower() == "none":
        return frozenset()
    items = [n.strip() for n in text.split(",")]
    if not all(items):
        raise UsageError(f"--features {text!r}: an empty name (names separated by commas, "
                         "e.g. STATS_VQ,PAGE_REPORTING; 'none' for no optional feature; "
                         "leave --features out for all)", field="features")
    names = {n.upper().removeprefix("VIRTIO_BALLOON_F_") for n in items}
    bad = sorted(names - set(OPTIONAL_FEATURES))
    if bad:
        raise UsageError(f"unknown feature(s) {', '.join(bad)} (one of: "
                         f"{', '.join(OPTIONAL_FEATURES)})", field="features")
    return frozenset(names)


@click.command("fuzz", cls=Command, exit_codes=EXIT_CODES)
@click.option("--device", "device", default="reference", show_default=True,
              help="reference | python:module:Class | stdio:'CMD ...' | qemu[:OPTS]")
@click.option("--profile", type=click.Choice(["spec", "v3", "hybrid"]), default="spec",
              show_default=True, help="protocol profile (the generator speaks spec only)")
@click.option("--features", default=None, metavar="F,F",
              help="device features the device may be asked to offer, comma-separated, or "
                   "'none' (default: all of MUST_TELL_HOST, STATS_VQ, DEFLATE_ON_OOM, "
                   "FREE_PAGE_HINT, PAGE_POISON, PAGE_REPORTING)")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="stop after this many driver steps")
@click.option("--sequences", type=click.IntRange(min=1), default=None,
              help="stop after this many sequences (each from reset)")
@click.option("--time", "time_s", type=float, default=None, callback=lambda c, p, v: (
    None if v is None else seconds(c, p, v)), help="stop after this many seconds")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="the run's seed (sequence K of seed S is the same on every machine)")
@click.option("--first", type=click.IntRange(min=0), default=0, show_default=True,
              help="number of the first sequence (to go on where a run stopped)")
@click.option("--out", "out", default=None, type=click.Path(file_okay=False),
              help="write each finding here (a trace and its replay command) and "
                   "findings.json")
@click.option("--shrink-budget", type=click.IntRange(min=0), default=400, show_default=True,
              help="replays at most to shrink one finding")
@click.option("--timeout", default=5.0, show_default=True, type=float, callback=seconds,
              help="per-step timeout in seconds (0 < T <= 86400)")
@json_option("print the summary as JSON on stdout (progress stays on stderr)")
def fuzz_cmd(device: str, profile: str, features: str | None, steps: int | None,
             sequences: int | None, time_s: float | None, seed: int, first: int,
             out: str | None, shrink_budget: int, timeout: float, as_json: bool) -> None:
    """Fuzz a device: generated driver traffic (feature negotiation from reset, inflate and
    deflate of generated page sets, statistics, hinting, reporting, config access, both byte
    orders), every sequence judged by the conformance oracle; a failure is shrunk to a minimal
    sequence that breaks the same clause and written to --out as a trace with the command
    that replays it.  Without --steps, --sequences or --time it runs 1,000 sequences."""
    import errno
    import os

    from virtio_balloon_proto.conformance.fuzz import Campaign, GenOptions
    from virtio_balloon_proto.conformance.fuzz.output import (
        progress_line,
        summary,
        text_report,
        write_finding,
        write_summary,
    )
    from virtio_balloon_proto.errors import UsageError
    from virtio_balloon_proto.io import check_writable

    if profile != "spec":
        raise UsageError(f"the fuzzer generates spec-profile traffic only, not {profile!r}",
                         field="profile")
    feats = _features(features)
    opts = GenOptions() if feats is None else GenOptions(features=feats)
    if out is not None:
        # before the run, not after it; the error names the option (not a bare OSError)
        try:
            if os.path.lexists(out) and not os.path.isdir(out):
                raise NotADirectoryError(errno.ENOTDIR, "a symbolic link to no directory"
                                         if os.path.islink(out) else "not a directory", out)
            check_writable(os.path.join(out, "findings.json"))
        except OSError as e:
            raise UsageError(f"--out {out}: cannot write findings there: "
                             f"{e.strerror or e}", field="out") from None
    if steps is None and sequences is None and time_s is None:
        sequences = 1000
    tty = sys.stderr.isatty()

    def on_finding(f: Any) -> None:
        if out is not None:
            write_finding(out, f, campaign.device_spec)
            write_summary(out, campaign, {"partial": True})  # the run is still going
        click.echo(("\r" if tty else "") + f"fuzz: finding {f.clause} ({f.level}) at sequence "
                   f"{f.first_sequence}: {f.message[:160]}", err=True)

    def progress(c: Any) -> None:
        click.echo(("\r" if tty else "") + progress_line(c), err=True, nl=not tty)

    campaign = Campaign(device, seed=seed, options=opts, timeout=timeout,
                        shrink_budget=shrink_budget, on_finding=on_finding)
    partial = False
    try:
        campaign.run(sequences=sequences, steps=steps, seconds=time_s, first=first,
                     progress=progress)
    except (KeyboardInterrupt, Interrupted):
        partial = True
    finally:
        campaign.close()
    code = 130 if partial else 1 if campaign.findings else 0
    if campaign.stats.errors:
        code = 2 if not partial else code
    elif campaign.stats.sequences and campaign.stats.unsupported == campaign.stats.sequences:
        code = 1 if not partial else code
    doc = {**summary(campaign), "partial": partial, "exit_code": code}
    if out is not None:
        write_summary(out, campaign, {"partial": partial, "exit_code": code})
    if tty:
        click.echo("", err=True)
    if as_json:
        emit_json(doc)
        click.echo(text_report(campaign), err=True)
    else:
        click.echo(text_report(campaign))
    sys.exit(code)
