"""pytest plugin: run the conformance suite inside a device team's own test run.

Registered through the ``pytest11`` entry point (pyproject), so it is loaded by every pytest
run once the package is installed.  It does nothing unless ``--vbproto-device`` is given::

    pytest --vbproto-device "stdio:./my-balloon-testee --flag" [--vbproto-corpus DIR]
           [--vbproto-profile spec] [--vbproto-case 'spec.*'] [--vbproto-timeout 5]
           [--vbproto-known-failures FILE]

adds one pytest test per case (``vbproto[<case id>]``) to the session.  A case whose
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
        state = _Session(config)
        config.stash[_SESSION_KEY] = state
    for case in state.cases:
        items.append(_CaseItem.from_parent(session, name=f"vbproto[{case.id}]", case=case))


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
