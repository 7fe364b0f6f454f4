"""Differential fuzzing of balloon devices (issue 16): generated driver traffic, every
sequence judged by the one oracle (``conformance/checks``), failures shrunk to a minimal
replayable trace.

* :mod:`.program`  -- a sequence as data (bring-up + operations) and its trace / runner case
* :mod:`.gen`      -- the seeded, stateful generator of driver traffic
* :mod:`.shrink`   -- delta debugging of a failing sequence, clause kept
* :mod:`.campaign` -- the loop: generate, replay + judge, shrink, deduplicate
* :mod:`.output`   -- findings as corpus-ready traces with their replay command, the summary
"""

from __future__ import annotations

from .campaign import Campaign, Finding, Stats
from .gen import GenOptions, generate
from .program import Env, Program, to_case, to_trace

__all__ = ["Campaign", "Env", "Finding", "GenOptions", "Program", "Stats", "generate",
           "to_case", "to_trace"]
