"""pytest plugin: run the conformance suite inside a device team's own test run.

Registered through the ``pytest11`` entry point (pyproject), so it is loaded by every pytest
run once the package is installed.  It does nothing unless ``--vbproto-device`` is given::

    pytest --vbproto-device "stdio:./my-balloon-testee --flag" [--vbproto-corpus DIR]
           [--vbproto-profile spec] [--vbproto-case 'spec.*'] [--vbproto-timeout 5]
           [--vbproto-known-failures FILE]

adds one pytest test per case (``vbproto[<case id>]``) to the session.  With
``--vbproto-fuzz N`` [``--vbproto-fuzz-seed S``] [``--vbproto-fuzz-out DIR``] it adds one more,
``vbproto-fuzz[N sequences]``: N generated sequences (``vbproto fuzz``), failing with each
minimal finding and the command that replays it.  A case whose
verdict is ``fail`` fails the test with the per-clause differences; ``unsupported`` and
``skipped`` become pytest skips; a failure listed in the known-failures file becomes an xfail,
and an unexpected pass of a listed failure fails (like protobuf's failure list).

Importing this module must stay cheap and must not import the runner eagerly: every pytest run
on a machine where the package is installed loads it.
"""

from __future__ import annotations

from typing import Any

import pytest

_OPT_DEVICE = "--vbproto-device"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vbproto", "virtio-balloon conformance suite")
    group.addoption(
        _OPT_DEVICE,
        action="store",
        default=None,
        metavar="SPEC",
        help="device under test: reference | python:module:Class | stdio:'CMD ...' | qemu[:OPTS]",
    )
    group.addoption(
        "--vbproto-corpus",
        action="store",
        default=None,
        metavar="DIR",
        help="directory of trace files (default: the corpus shipped in the package)",
    )
    group.addoption("--vbproto-profile", action="append", default=None, metavar="P")
    group.addoption("--vbproto-case", action="append", default=None, metavar="GLOB")
    group.addoption("--vbproto-timeout", action="store", type=float, default=5.0, metavar="S")
    group.addoption("--vbproto-known-failures", action="store", default=None, metavar="FILE")
    group.addoption(
        "--vbproto-fuzz",
        action="store",
        type=int,
        default=None,
        metavar="N",
        help="also fuzz the device: N generated sequences judged by the oracle (vbproto fuzz); "
        "one test, failing with each minimal finding and its replay command",
    )
    group.addoption("--vbproto-fuzz-seed", action="store", type=int, default=0, metavar="S")
    group.addoption("--vbproto-fuzz-out", action="store", default=None, metavar="DIR",
                    help="write the fuzz findings here (traces + replay commands)")
    group.addoption(
        "--vbproto-strict",
        action="store_true",
        default=False,
        help="a broken SHOULD fails the case (default: non-strict, reported only)",
    )


class _Session:
    """The runner state shared by all generated tests of one pytest session."""

    def __init__(self, config: pytest.Config) -> None:
        from .known_failures import KnownFailures
        from .runner import Runner, discover_cases

        self.device_spec: str = config.getoption(_OPT_DEVICE)
        corpus = config.getoption("--vbproto-corpus")
        self.cases = discover_cases(
            corpus,
            profiles=config.getoption("--vbproto-profile"),
            case_globs=config.getoption("--vbproto-case"),
        )
        kf_path = config.getoption("--vbproto-known-failures")
        self.known = KnownFailures.load(kf_path) if kf_path else KnownFailures([])
        self.runner = Runner(
            self.device_spec,
            timeout=config.getoption("--vbproto-timeout"),
            strict=config.getoption("--vbproto-strict"),
            known_failures=self.known,
        )

    def close(self) -> None:
        self.runner.close()


_SESSION_KEY = pytest.StashKey[_Session]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vbproto: a generated virtio-balloon conformance case")
    n = config.getoption("--vbproto-fuzz")
    if n is not None and n < 1:
        raise pytest.UsageError(f"--vbproto-fuzz {n}: give a number of sequences >= 1")
    t = config.getoption("--vbproto-timeout")
    if not 0 < t <= 86400:  # also refuses nan
        raise pytest.UsageError(f"--vbproto-timeout {t}: give seconds, 0 < T <= 86400")


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(_SESSION_KEY, None)
    if session is not None:
        session.close()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    if not config.getoption(_OPT_DEVICE):
        return
    state = config.stash.get(_SESSION_KEY, None)
    if state is None:
        from virtio_balloon_proto.errors import VBProtoError

        try:
            state = _Session(config)
        except VBProtoError as e:  # a bad device spec, corpus, known-failures file: one line
            raise pytest.UsageError(f"vbproto: {e}") from None
        config.stash[_SESSION_KEY] = state
    for case in state.cases:
        items.append(_CaseItem.from_parent(session, name=f"vbproto[{case.id}]", case=case))
    n = config.getoption("--vbproto-fuzz")
    if n:
        items.append(_FuzzItem.from_parent(session, name=f"vbproto-fuzz[{n} sequences]",
                                           sequences=n))


class _CaseItem(pytest.Item):
    """One conformance case as a pytest test."""

    def __init__(self, *, case: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case
        self.add_marker(pytest.mark.vbproto)

    def runtest(self) -> None:
        state = self.config.stash[_SESSION_KEY]
        result = state.runner.run_case(self.case)
        outcome = result.outcome(strict=state.runner.strict)
        if outcome == "unsupported":
            pytest.skip(f"unsupported: {result.reason or 'device does not implement this case'}")
        if outcome == "skipped":
            pytest.skip(result.reason or "skipped")
        if outcome == "expected-failure":
            pytest.xfail("listed in the known-failures file: " + result.summary_line())
        if outcome in ("fail", "unexpected-pass", "error"):
            raise _CaseFailed(result.details_text())

    def repr_failure(self, excinfo: Any, style: Any = None) -> str:
        if isinstance(excinfo.value, _CaseFailed):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"vbproto case {self.case.id}"


class _CaseFailed(Exception):
    pass


class _FuzzItem(pytest.Item):
    """``--vbproto-fuzz N``: one test that runs N generated sequences against the device
    (conformance/fuzz/) and fails with every minimal finding and the command replaying it."""

    def __init__(self, *, sequences: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sequences = sequences
        self.add_marker(pytest.mark.vbproto)

    def runtest(self) -> None:
        from .fuzz import Campaign
        from .fuzz.output import text_report, write_finding, write_summary

        out = self.config.getoption("--vbproto-fuzz-out")
        device = self.config.getoption(_OPT_DEVICE)
        campaign = Campaign(device, seed=self.config.getoption("--vbproto-fuzz-seed"),
                            timeout=self.config.getoption("--vbproto-timeout"))
        try:
            campaign.run(sequences=self.sequences)
        finally:
            campaign.close()
        for f in campaign.findings.values():
            if out:
                write_finding(out, f, campaign.device_spec)
        if out:
            write_summary(out, campaign)
        if campaign.findings or campaign.stats.errors:
            raise _CaseFailed(text_report(campaign))
        if campaign.stats.unsupported == campaign.stats.sequences:
            pytest.skip("every generated sequence was unsupported: " + text_report(campaign))

    def repr_failure(self, excinfo: Any, style: Any = None) -> str:
        if isinstance(excinfo.value, _CaseFailed):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"vbproto fuzz, {self.sequences} sequences"
