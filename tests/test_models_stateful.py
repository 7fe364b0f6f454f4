"""Stateful test: the reference driver model against the reference device (issue 5).

Hypothesis drives random sequences of balloon operations through the driver model's real
encoders, hands every chain to the device, and checks after each step that the device's
observable state is exactly what the driver believes it told it.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from virtio_balloon_proto.codecs import Segment
from virtio_balloon_proto.models.device import ReferenceDevice
from virtio_balloon_proto.models.device_state import HintState, MiscState
from virtio_balloon_proto.models.driver import DriverModel
from virtio_balloon_proto.models.interface import Setup
from virtio_balloon_proto.pageset import PageSet
from virtio_balloon_proto.profiles import get_profile
from virtio_balloon_proto.wire import WireLayout

RAM_FRAMES = (64 << 20) >> 12
LAYOUTS = [WireLayout("le", 64, "le"), WireLayout("be", 32, "be"), WireLayout("be", 64, "be"),
           WireLayout("le", 64, "le", 16384)]


class BalloonMachine(RuleBasedStateMachine):
    @initialize(profile=st.sampled_from(["spec", "v3", "hybrid"]), layout=st.sampled_from(LAYOUTS))
    def start(self, profile: str, layout: WireLayout) -> None:
        prof = get_profile(profile)
        names = ["STATS_VQ"] + (["PAGE_BITMAP", "MISC_VQ"] if prof.bulk_feature else
                                ["FREE_PAGE_HINT", "PAGE_REPORTING"])
        want = prof.mask(names) | (1 << 32 if layout.endian == "le" else 0)
        self.layout = layout
        self.profile = profile
        self.dev = ReferenceDevice()
        neg = self.dev.start(Setup(profile, want, layout.endian, layout.word_size,
                                   layout.word_order, layout.page_size, {}, 64 << 20))
        assert neg.accepted == want  # the reference offers every feature of its profile
        self.drv = DriverModel(profile, layout, neg.accepted)
        self.balloon = PageSet.empty()  # what the driver believes is in the balloon
        self.seen = PageSet.empty()  # the balloon kept from the device's per-step deltas
        self.unused: dict[int, PageSet] = {}
        self.req = 0
        self.request_posted = False
        self.in_flight = 0

    def _send(self, role: str, segs: list[Segment]) -> list[int]:
        p = self.drv.post(role, segs)
        used = self.dev.avail(role, p.head, list(p.segments))
        for u in used:
            self.drv.used(role, u.id)  # raises if the device returns a head not in flight
        return [u.id for u in used]

    def _pages(self, data: st.DataObject, limit: int) -> np.ndarray:  # type: ignore[type-arg]
        fpp = self.layout.frames_per_page
        n = data.draw(st.integers(1, limit))
        firsts = data.draw(st.lists(st.integers(4096 // fpp, RAM_FRAMES // fpp - 1), min_size=1,
                                    max_size=n, unique=True))
        return np.array(firsts, dtype=np.uint64) * np.uint64(fpp)

    @rule(data=st.data())
    def inflate(self, data: st.DataObject) -> None:
        firsts = self._pages(data, 300)
        fpp = self.layout.frames_per_page
        for c in self.drv.balloon_chains("inflate", firsts):
            heads = self._send("inflate", c)
            assert len(heads) == 1, "inflate buffers are acknowledged at once"
        self.balloon = self.balloon | PageSet.from_starts_counts(
            firsts, np.full(firsts.size, fpp, dtype=np.uint64))

    @precondition(lambda self: len(self.balloon) > 0)
    @rule(data=st.data())
    def deflate(self, data: st.DataObject) -> None:
        fpp = self.layout.frames_per_page
        frames = self.balloon.to_frames()
        firsts = frames[frames % np.uint64(fpp) == 0]
        k = data.draw(st.integers(1, int(firsts.size)))
        pick = firsts[data.draw(st.permutations(range(int(firsts.size))))[:k]]
        for c in self.drv.balloon_chains("deflate", pick):
            assert len(self._send("deflate", c)) == 1
        self.balloon = self.balloon - PageSet.from_starts_counts(
            pick, np.full(pick.size, fpp, dtype=np.uint64))

    @rule(vals=st.dictionaries(st.integers(0, 9), st.integers(0, 2**64 - 1), min_size=1))
    def stats(self, vals: dict[int, int]) -> None:
        held_before = self.dev._stats_held is not None
        used = self._send("stats", self.drv.stats_chain(vals))
        # at most one stats buffer is held: a second one pushes the first back (QEMU)
        assert len(used) == (1 if held_before else 0)
        assert all(self.dev.state.stats[t] == v for t, v in vals.items())
        assert self.dev.host_request("stats-poll", {}) != []
        for h in [self.dev._stats_held] if self.dev._stats_held is not None else []:
            self.drv.used("stats", h)

    @precondition(lambda self: self.profile in ("v3", "hybrid"))
    @rule(data=st.data())
    def unused_pages(self, data: st.DataObject) -> None:
        if not self.request_posted:
            assert self._send("misc", self.drv.request_buffer()) == []
            self.request_posted = True
        assert self.dev.misc == MiscState.IDLE
        self.req += 1
        used = self.dev.host_request("get-unused-pages", {"req_id": self.req})
        assert len(used) == 1 and used[0].length == 16
        self.drv.used("misc", used[0].id)
        self.request_posted = False
        fpp = self.layout.frames_per_page
        firsts = self._pages(data, 200)
        unused = PageSet.from_starts_counts(firsts, np.full(firsts.size, fpp, dtype=np.uint64))
        for c in self.drv.unused_answer(unused, self.req, RAM_FRAMES // fpp):
            self._send("misc", c)
        self.unused[self.req] = unused
        assert self.dev.misc == MiscState.NO_BUFFER  # exactly one DONE closed the request

    @precondition(lambda self: self.profile == "spec")
    @rule(data=st.data())
    def report(self, data: st.DataObject) -> None:
        firsts = self._pages(data, 64)
        pages = PageSet.from_starts_counts(firsts, np.full(firsts.size, 1, dtype=np.uint64))
        before = self.dev.state.reported
        for c in self.drv.report_chains(pages):
            assert len(self._send("reporting", c)) == 1
        assert self.dev.state.reported == before | pages

    @precondition(lambda self: self.profile == "spec")
    @rule(cmd=st.integers(2, 2**32 - 1))
    def hint(self, cmd: int) -> None:
        self.dev.host_request("hint-start", {"cmd_id": cmd})
        assert self.dev.hint == HintState.REQUESTED
        pages = PageSet.from_range(8192, 2048)
        before = self.dev.state.hinted
        for c in self.drv.hint_chains(pages, cmd):
            self._send("free_page", c)
        assert self.dev.state.hinted == before | pages
        assert self.dev.hint == HintState.STOP  # the driver's STOP ended the round
        self.dev.host_request("hint-stop", {"cmd_id": 1})
        assert self.dev.hint == HintState.DONE

    @invariant()
    def device_agrees(self) -> None:
        obs = self.dev.observe()
        assert obs["balloon"] == self.balloon.extents()
        # issue 13: the balloon kept from the per-step deltas equals the recomputed one
        delta = self.dev.observe_changes()
        assert {k: v for k, v in delta.items() if k != "balloon_delta"} == {
            k: v for k, v in obs.items() if k != "balloon"}
        self.seen = (self.seen - PageSet.from_extents(delta["balloon_delta"]["remove"])
                     | PageSet.from_extents(delta["balloon_delta"]["add"]))
        assert self.seen == self.balloon
        for req, pages in self.unused.items():
            assert obs["unused"][f"{req:#x}"] == pages.extents()
            assert obs["unused_done"][f"{req:#x}"] == 1
        assert self.dev.state.violations == []


TestBalloonMachine = BalloonMachine.TestCase
TestBalloonMachine.settings = settings(max_examples=30, stateful_step_count=12, deadline=None,
                                       suppress_health_check=[HealthCheck.too_slow])
