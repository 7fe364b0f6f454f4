"""The JUnit XML report of a conformance run (one <testsuite> per profile, one <testcase> per
case x clause), written atomically like every report (:mod:`.report`).

Text a device produced is cleaned before it reaches the XML (``limits.clean_text``: control
characters and lone surrogates escaped), so a hostile testee cannot make the file unreadable.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Any

from virtio_balloon_proto.limits import clean_text

from .known_failures import atomic_write_text
from .verdicts import CaseResult, RunResult, Verdict


def _clean_tree(root: ET.Element) -> None:
    for el in root.iter():
        if el.text:
            el.text = clean_text(el.text)
        if el.tail:
            el.tail = clean_text(el.tail)
        for k, v in list(el.attrib.items()):
            el.set(k, clean_text(v))


def to_junit(run: RunResult) -> str:
    """JUnit XML: one <testsuite> per profile, one <testcase> per case x clause."""
    root = ET.Element("testsuites", name="vbproto conformance", partial=str(run.partial).lower())
    by_profile: dict[str, list[CaseResult]] = defaultdict(list)
    for c in run.cases:
        by_profile[c.profile].append(c)
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for profile in sorted(by_profile):
        suite = ET.SubElement(root, "testsuite", name=f"vbproto.{profile}")
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        for c in by_profile[profile]:
            if c.status is not None or not c.results:
                tc = ET.SubElement(
                    suite,
                    "testcase",
                    classname=f"{profile}.{c.case_id}",
                    name="(case)",
                    time=f"{c.duration:.6f}",
                )
                counts["tests"] += 1
                st = c.status or Verdict.PASS
                if st in (Verdict.UNSUPPORTED, Verdict.SKIPPED):
                    ET.SubElement(tc, "skipped", message=f"{st.value}: {c.reason}")
                    counts["skipped"] += 1
                elif st == Verdict.ERROR:
                    ET.SubElement(tc, "error", message=c.reason, type="runner-error")
                    counts["errors"] += 1
                continue
            per = c.duration / max(1, len(c.results))
            for r in c.results:
                tc = ET.SubElement(
                    suite,
                    "testcase",
                    classname=f"{profile}.{c.case_id}",
                    name=r.clause,
                    time=f"{per:.6f}",
                )
                counts["tests"] += 1
                if r.known is not None:
                    ET.SubElement(tc, "skipped", message=f"known failure: {r.known}: {r.message}")
                    counts["skipped"] += 1
                elif r.verdict == Verdict.FAIL:
                    f = ET.SubElement(tc, "failure", message=r.message, type="fail")
                    f.text = _junit_detail(r.expected, r.received)
                    counts["failures"] += 1
                elif r.verdict == Verdict.NON_STRICT:
                    # a broken SHOULD: visible, but not a CI failure unless --strict
                    ET.SubElement(tc, "system-out").text = f"non-strict: {r.message}"
                elif r.verdict == Verdict.ERROR:
                    ET.SubElement(tc, "error", message=r.message, type="error")
                    counts["errors"] += 1
            if c.reason:
                # steps not replayed / buffers not checkable: visible in CI, never silent
                tc = ET.SubElement(
                    suite, "testcase", classname=f"{profile}.{c.case_id}", name="(not checked)"
                )
                ET.SubElement(tc, "skipped", message=c.reason)
                counts["tests"] += 1
                counts["skipped"] += 1
            for entry in c.unexpected_passes:
                tc = ET.SubElement(
                    suite, "testcase", classname=f"{profile}.{c.case_id}", name="(known-failures)"
                )
                ET.SubElement(
                    tc,
                    "failure",
                    message=f"unexpected pass of known failure {entry}",
                    type="unexpected-pass",
                )
                counts["tests"] += 1
                counts["failures"] += 1
        for k, v in counts.items():
            suite.set(k, str(v))
            totals[k] += v
    for k, v in totals.items():
        root.set(k, str(v))
    props = ET.Element("properties")
    for key, vals in run.behaviour_profile().items():
        for val, ids in vals.items():
            ET.SubElement(props, "property", name=f"behaviour.{key}",
                          value=f"{val} ({len(ids)} cases)")
    if len(props):
        for suite in root.findall("testsuite"):
            suite.insert(0, ET.fromstring(ET.tostring(props)))
    _clean_tree(root)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _junit_detail(expected: Any, received: Any) -> str:
    return f"expected:\n{_fmt(expected)}\nreceived:\n{_fmt(received)}\n"


def _fmt(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, default=str)


def write_junit(path: str | Path, run: RunResult) -> None:
    atomic_write_text(path, to_junit(run))
