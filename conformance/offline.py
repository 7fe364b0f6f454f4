"""``vbproto conform check``: judge a recorded trace as it is, no device involved.

The same checks (:func:`.checks.judge`) as a live run judges its recording with: what the
driver sent and what the recorded device answered.  Apart from :mod:`.runner` so that judging
a file never imports the device adapters (their jsonschema validators, process framing):
issue 13, start-up of every ``conform check``.  ``runner.check_trace`` is this function.
"""

from __future__ import annotations

from pathlib import Path

from .cases import load_case
from .catalog import Catalog, catalog
from .checks import judge
from .verdicts import CaseResult

__all__ = ["check_trace"]


def check_trace(
    path: str | Path, *, cat: Catalog | None = None, strict: bool = False, subject: str = "both",
    traffic: bool = True,
) -> CaseResult:
    """Judge a recorded trace (no device involved): the same checks as a live run.

    ``subject="device"`` judges only the device (driver breakages become notes), as
    ``conform run`` does for the suite's own driver traffic.  ``traffic=False``: no traffic
    log (hex dumps of every buffer) in the result, for callers that do not print it.
    """
    case = load_case(path)
    result = CaseResult(case.id, case.profile, case.path)
    judged = judge(case.header, case.events, cat=cat or catalog(), strict=strict,
                   subject=subject)
    result.results = judged.results
    result.behaviour = judged.behaviour
    gaps = case.uncheckable
    result.notes = judged.notes + [f"{g}; not checkable" for g in gaps]
    if gaps:
        # a buffer whose bytes were not captured is named in every output, never passed over
        result.reason = (f"{len(gaps)} buffer(s) not checkable (bytes not captured): "
                         + "; ".join(gaps)[:300])
    result.traffic = [s.to_json() for s in case.steps] if traffic else []
    return result
