"""In-process devices whose answers break the stdio protocol schema (python adapter doubles).

Each wraps the reference device and spoils one answer the way a hostile stdio testee spoils
its JSON (tests/conform_testees/hostile_testee.py): the python adapter must check them the same
way, so each case ends with a suite.device.transport failure, not a traceback or a verdict
built on nonsense.
"""

from __future__ import annotations

from typing import Any

from virtio_balloon_proto.models.device import ReferenceDevice
from virtio_balloon_proto.models.interface import Negotiated, Segment, Setup, Used


class ExtentX(ReferenceDevice):
    def observe(self) -> dict[str, Any]:
        return {**super().observe(), "balloon": [["x", 1]]}


class DeltaX(ReferenceDevice):
    def observe_changes(self) -> dict[str, Any]:
        return {**super().observe_changes(), "balloon_delta": {"add": [[1, "x"]], "remove": []}}


class NanPages(ReferenceDevice):
    def observe(self) -> dict[str, Any]:
        return {**super().observe(), "num_pages": float("nan")}


class BigActual(ReferenceDevice):
    def observe(self) -> dict[str, Any]:
        return {**super().observe(), "actual": 1 << 64}


class UsedIdTooBig(ReferenceDevice):
    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        return [Used(70_000, u.length, u.written) for u in super().avail(role, head, segments)]


class UsedNotUsed(ReferenceDevice):
    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Any]:
        return [{"id": head, "len": 0}]


class StartDict(ReferenceDevice):
    def start(self, setup: Setup) -> Any:
        n = super().start(setup)
        return {"offered": n.offered, "accepted": n.accepted, "queues": n.queues,
                "config_size": n.config_size}


class BadQueue(ReferenceDevice):
    def start(self, setup: Setup) -> Negotiated:
        n = super().start(setup)
        return Negotiated(n.offered, n.accepted, {**n.queues, "inflate": -1}, n.config_size)


class ConfigText(ReferenceDevice):
    def config_read(self, offset: int, size: int) -> Any:
        return super().config_read(offset, size).hex()


HOSTILE = [ExtentX, DeltaX, NanPages, BigActual, UsedIdTooBig, UsedNotUsed, StartDict, BadQueue,
           ConfigText]
