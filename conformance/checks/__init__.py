"""The clause checks: one judgement for recorded and live traffic (issue 11).

``judge(header, events)`` runs every registered check over one trace and returns its verdicts,
the device's behaviour profile (the choices it made where the spec leaves one) and notes.
``conform check`` judges a trace as captured; ``conform run`` replays the driver side into a
device, records what the device did as a trace (format 1.1: used entries plus ``observe``
events) and judges that trace with the same call -- so one behaviour can never get two verdicts.

One module per clause family; each check is ``fn(judgement) -> None`` registered with
:func:`~.base.register` to the clause ids it judges:

* :mod:`.wire`      -- the driver's bytes: the codec's and ring walker's findings
* :mod:`.queues`    -- used ids and lengths, acknowledgements, queue layout, transport
* :mod:`.config`    -- features, config space values, ``actual`` accounting
* :mod:`.inflate`   -- inflate/deflate ordering, the device's balloon
* :mod:`.stats`     -- statistics queue
* :mod:`.hint`      -- free page hinting command ids and hints
* :mod:`.reporting` -- free page reporting
* :mod:`.v3`        -- the seed's misc queue (v3, hybrid) per request id
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..catalog import Catalog, catalog
from ..verdicts import ClauseResult
from . import config, hint, inflate, queues, reporting, stats, v3, wire  # noqa: F401 (registers)
from .base import CHECKS, Chain, Judgement, build, register

__all__ = ["CHECKS", "Chain", "Judged", "Judgement", "judge", "register"]


@dataclass
class Judged:
    results: list[ClauseResult]
    #: choice -> the value(s) the device showed in this trace
    behaviour: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def judge(header: Any, events: Iterable[Any], *, cat: Catalog | None = None,
          strict: bool = False, subject: str = "both") -> Judged:
    """Judge one trace: every registered check, in registration order."""
    j = build(header, events, cat or catalog(), strict=strict, subject=subject)
    for fn, _ids in CHECKS:
        fn(j)
    # a result names the driver-side event (step) it follows: the used entry or observation
    # where a check saw the problem belongs to the step that caused it
    from virtio_balloon_proto import trace as tr

    driver = [isinstance(ev, (tr.AvailEvent, tr.ConfigEvent, tr.HostEvent, tr.StatusEvent,
                              tr.FeaturesEvent)) for ev in j.events]
    for r in j.results.values():
        s = r.step
        if s is not None and 1 <= s <= len(driver) and not driver[s - 1]:
            k = s
            while k > 1 and not driver[k - 1]:
                k -= 1
            if driver[k - 1]:
                r.step = k
    return Judged(list(j.results.values()),
                  {k: sorted(v) for k, v in sorted(j.behaviour.items())}, list(j.notes))
