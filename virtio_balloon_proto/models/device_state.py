"""The reference device's state: its state-machine tables and everything observable.

State machines are tables (h11 style): :data:`HINT_TRANSITIONS` for free page hinting
(VIRTIO 1.2 5.5.6.5, QEMU's FREE_PAGE_HINT_S_* states) and :data:`MISC_TRANSITIONS` for the v3
misc queue (seed 7/7).  A (state, event) pair missing from a table is a protocol violation of
the driver; :class:`~.device.ReferenceDevice` records it and stays put.  :class:`DeviceState`
holds everything observable about the device (balloon pages, config, stats, hints, reports).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from ..framemap import FrameJournal
from ..pageset import PageAccumulator, PageSet

REQ_HDR_LEN = 16  # sizeof(struct balloon_req_hdr)
HINT_CMD_ID_MIN = 0x80000000  # QEMU's VIRTIO_BALLOON_FREE_PAGE_HINT_CMD_ID_MIN


class HintState(StrEnum):
    """QEMU's FREE_PAGE_HINT_S_* states (hw/virtio/virtio-balloon.c)."""

    STOP = "stop"
    REQUESTED = "requested"  # device published a new cmd id, driver has not echoed it yet
    START = "start"  # driver echoed the cmd id: hints are accepted
    DONE = "done"


#: (state, event) -> state.  Events: host "start"/"stop"/"done", driver "echo" (its out buffer
#: carries the current id), "driver-stop" (out buffer with STOP), "stale-id" (another id).
HINT_TRANSITIONS: dict[tuple[HintState, str], HintState] = {
    (HintState.STOP, "start"): HintState.REQUESTED,
    (HintState.DONE, "start"): HintState.REQUESTED,
    # a new request while a round runs or is requested: QEMU's virtio_balloon_free_page_start()
    # sets REQUESTED whatever the state; hints still coming under the old id are then ignored
    # (VIRTIO 1.2 5.5.6.5.2: pages provided with an id other than the current one)
    (HintState.START, "start"): HintState.REQUESTED,
    (HintState.REQUESTED, "start"): HintState.REQUESTED,
    (HintState.REQUESTED, "echo"): HintState.START,
    (HintState.REQUESTED, "stop"): HintState.STOP,
    (HintState.START, "driver-stop"): HintState.STOP,
    (HintState.START, "stop"): HintState.STOP,
    (HintState.START, "done"): HintState.DONE,
    (HintState.STOP, "done"): HintState.DONE,
    (HintState.STOP, "driver-stop"): HintState.STOP,
    (HintState.REQUESTED, "stale-id"): HintState.REQUESTED,
    (HintState.START, "stale-id"): HintState.START,
    (HintState.STOP, "stale-id"): HintState.STOP,
    (HintState.DONE, "stale-id"): HintState.DONE,
    (HintState.DONE, "done"): HintState.DONE,
    (HintState.STOP, "stop"): HintState.STOP,
}


class MiscState(StrEnum):
    NO_BUFFER = "no-buffer"  # the driver has no request buffer posted
    IDLE = "idle"  # a request buffer is posted
    ANSWERING = "answering"  # a request was written; CONT ... DONE answers expected


#: seed 7/7: the driver keeps one 16-byte request buffer posted; the device writes a request
#: into it; the driver answers CONT... DONE then posts the buffer again.
MISC_TRANSITIONS: dict[tuple[MiscState, str], MiscState] = {
    (MiscState.NO_BUFFER, "post-buffer"): MiscState.IDLE,
    (MiscState.IDLE, "request"): MiscState.ANSWERING,
    (MiscState.ANSWERING, "cont"): MiscState.ANSWERING,
    (MiscState.ANSWERING, "done"): MiscState.NO_BUFFER,
    (MiscState.ANSWERING, "post-buffer"): MiscState.ANSWERING,  # re-posted early: buffer kept
}


@dataclass
class DeviceState:
    """Everything observable about the device."""

    #: the balloon, journaled: ``observe_changes`` reports what changed since it last asked
    pages: FrameJournal = field(default_factory=FrameJournal)
    num_pages: int = 0
    actual: int = 0
    hint_cmd_id: int = 0
    poison_val: int = 0
    stats: dict[int, int] = field(default_factory=dict)
    reported: PageSet = field(default_factory=PageSet.empty)
    hinted: PageSet = field(default_factory=PageSet.empty)
    unused: dict[int, PageSet] = field(default_factory=dict)
    unused_done: dict[int, int] = field(default_factory=dict)  # req_id -> DONE count
    bad_pages: PageAccumulator = field(default_factory=PageAccumulator)  # outside RAM
    violations: list[str] = field(default_factory=list)

    @property
    def balloon(self) -> PageSet:
        """Pages in the balloon: inflated (inside RAM) and not deflated since (O(RAM): a full
        export, for checkpoints)."""
        return self.pages.now.to_pageset()
