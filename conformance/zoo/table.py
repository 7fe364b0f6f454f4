"""The zoo as a Markdown table (docs/zoo.md holds it; tests check it is current).

``python -m virtio_balloon_proto.conformance.zoo.table`` prints it.
"""

from __future__ import annotations

from .drivers import DRIVER_ZOO, DriverZooEntry
from .registry import ZOO, ZooEntry


def _caught(e: ZooEntry) -> str:
    if e.awaits:
        return f"not yet ({e.awaits})"
    return "yes (python, stdio)"


def _driver_caught(d: DriverZooEntry) -> str:
    if d.noted_only:
        return f"noted only (MAY suite rule, conform check): {d.noted_only}"
    return "yes (conform check)"


def markdown() -> str:
    rows = [
        "| id | project | bug | source | fixed in | clause | caught | traffic (corpus cases) "
        "| device / twin |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in ZOO:
        twin = "passes" if not e.twin_awaits else f"passes once: {e.twin_awaits}"
        rows.append(
            f"| `{e.id}` | {e.project} | {e.bug} | {e.source} | {e.fixed_in} | `{e.clause}` "
            f"| {_caught(e)} | {', '.join(f'`{c}`' for c in e.cases)} "
            f"| `{e.device.__name__}` / `{e.twin.__name__}` (twin {twin}) |")
    rows += [
        "",
        "Driver bugs (the trace the buggy driver produces, judged by `conform check`; the fixed "
        "driver's trace has no driver finding):",
        "",
        "| id | project | bug | source | fixed in | clause | caught |",
        "|---|---|---|---|---|---|---|",
    ]
    rows += [f"| `{d.id}` | {d.project} | {d.bug} | {d.source} | {d.fixed_in} | `{d.clause}` "
             f"| {_driver_caught(d)} |" for d in DRIVER_ZOO]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
