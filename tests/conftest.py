"""Test-wide settings.

Hypothesis' per-example deadline (200 ms by default) is a timed assertion: on a loaded machine
(CI, or two cores shared by several jobs) a correct example takes longer and the test fails as
"flaky". Speed is measured in bench/, never asserted in tests, so the deadline is off
everywhere; max_examples stays whatever each test sets.
"""

from hypothesis import settings

settings.register_profile("vbproto", deadline=None)
settings.load_profile("vbproto")
