"""The reference balloon device, sans-IO: driver events in, used entries and state out.

What it does is what the spec's device-normative clauses (VIRTIO 1.4 5.5.x) and the seed's
rules ask for; where they are silent it does what QEMU does (research/protocol-evolution.md
section 4), and says so.  It implements the conformance layer's ``DeviceUnderTest`` interface
directly, so it is both the oracle the runner compares against and a device you can test.

State machines are tables (h11 style, in :mod:`.device_state`): :data:`HINT_TRANSITIONS` for
free page hinting and :data:`MISC_TRANSITIONS` for the v3 misc queue.  A (state, event) pair
missing from a table is a protocol violation of the driver; the device records it
(``violations``) and stays put.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ..codecs import DecodedBuffer, Segment, decode_buffer
from ..codecs.decode import bulk_encoding
from ..codecs.spec import CMD_ID_DONE, CMD_ID_STOP
from ..errors import UsageError, VBProtoError
from ..framemap import FrameJournal, extent_list
from ..pageset import PageSet
from ..profiles import TRANSPORT_FEATURES, get_profile
from ..wire import WireLayout, encode
from ..wire.messages import BALLOON_FLAG_DONE, BALLOON_GET_UNUSED_PAGES, RequestHeader
from ..wire.structs import CONFIG
from .device_state import (
    HINT_TRANSITIONS,
    MISC_TRANSITIONS,
    REQ_HDR_LEN,
    DeviceState,
    HintState,
    MiscState,
)
from .interface import Negotiated, Setup, Used


class ReferenceDevice:
    """A complete balloon device for one profile at a time (``start`` picks it)."""

    name = "reference"

    def __init__(self, *, journal: bool = True) -> None:
        #: False: no change journal (observe_changes answers the full observe()); for a holder
        #: that never observes deltas and would otherwise keep every change (``trace synth``)
        self._journal = journal
        self._setup: Setup | None = None
        self.profile = "spec"
        self.layout = WireLayout()
        self.offered = 0
        self.accepted = 0
        self.queues: dict[str, int] = {}
        self.state = DeviceState()
        self.hint = HintState.STOP
        self.misc = MiscState.NO_BUFFER
        self._stats_held: int | None = None
        self._stats_seen = 0
        self._misc_buffer: tuple[int, int] | None = None  # (head, writable length)
        self._misc_req: int | None = None
        self._ram_frames = 0
        self._config_size = 8
        self._ram_cache: tuple[Any, PageSet] | None = None
        self._config_cache: tuple[tuple[int, ...], bytes] | None = None
        self._pfn_dtype: str | None = None
        self._ram_extents: tuple[tuple[int, int], ...] | None = None  # (first, last) frames

    # --- DeviceUnderTest ----------------------------------------------------------------------
    def start(self, setup: Setup) -> Negotiated:
        prof = get_profile(setup.profile)
        self._setup = setup
        self.profile = prof.name
        self.layout = WireLayout(setup.endian, setup.word_size, setup.word_order, setup.page_size)
        # offer every feature the case's device options ask for (all the profile's features
        # when none are given), plus the transport features a modern device offers
        opts = dict(setup.device_options)
        by_option = {
            "deflate-on-oom": "DEFLATE_ON_OOM", "free-page-hint": "FREE_PAGE_HINT",
            "page-poison": "PAGE_POISON", "free-page-reporting": "PAGE_REPORTING",
            "page-bitmap": "PAGE_BITMAP", "misc-vq": "MISC_VQ",
            "must-tell-host": "MUST_TELL_HOST", "stats-vq": "STATS_VQ",
        }
        feats = set(prof.features)
        for opt, name in by_option.items():
            if name in prof.features and opts.get(opt) is False:
                feats.discard(name)
        offered = prof.mask(feats)
        for t in ("VERSION_1", "RING_INDIRECT_DESC", "RING_EVENT_IDX"):
            offered |= 1 << TRANSPORT_FEATURES[t]
        self.offered = offered
        self.accepted = setup.driver_features & offered
        self.queues = {r.value: i for r, i in prof.queue_index(offered, self.accepted).items()}
        self._config_size = prof.config_size(offered)
        span = max((-(-(a + n) // 4096) for a, n in setup.memory_regions),
                   default=-(-setup.memory_size // 4096))
        self.state = DeviceState(pages=FrameJournal(span, log=self._journal))
        self.hint = HintState.STOP
        self.misc = MiscState.NO_BUFFER
        self._stats_held = None
        self._stats_seen = 0
        self._misc_buffer = None
        self._misc_req = None
        self._ram_frames = setup.memory_size >> 12
        # inflate/deflate buffers are PFN arrays (no bulk encoding negotiated): their byte
        # order, for the fast path -- which a subclass that changes how buffers are decoded
        # or RAM is judged (a faulty or zoo device) does not take
        plain = all(getattr(type(self), hook) is getattr(ReferenceDevice, hook)
                    for hook in ("_decode", "_in_ram", "_ram"))
        self._ram_extents = None
        self._pfn_dtype = (None if not plain or bulk_encoding(self.profile, self.accepted)
                           != "pfns" else "<u4" if self.layout.little_endian else ">u4")
        return Negotiated(offered, self.accepted, dict(self.queues), self._config_size)

    def stop(self) -> None:
        pass

    def avail(self, role: str, head: int, segments: list[Segment]) -> list[Used]:
        if role not in self.queues:
            raise UsageError(f"queue {role!r} does not exist with the negotiated features",
                             field="role")
        handler = getattr(self, "_on_" + role)
        out: list[Used] = handler(head, list(segments))
        return out

    def config_read(self, offset: int, size: int) -> bytes:
        raw = self._config_bytes()
        return (raw + bytes(max(0, offset + size - len(raw))))[offset : offset + size]

    def config_write(self, offset: int, data: bytes) -> None:
        raw = bytearray(self._config_bytes())
        if offset + len(data) > len(raw):
            self.state.violations.append(f"config write past {len(raw)} bytes ignored")
            return
        old = bytes(raw)
        raw[offset : offset + len(data)] = data
        # the driver owns actual (5.5.6 D-OP11) and poison_val (5.5.6.6 D-PP2); num_pages and
        # the hint command id are the device's: a driver write there is ignored
        self.state.actual = int.from_bytes(raw[4:8], "little")
        if self._config_size >= 16:
            self.state.poison_val = int.from_bytes(raw[12:16], "little")
        if offset < 4 or (8 <= offset < 12 and self._config_size >= 12):
            self.state.violations.append(f"driver wrote device-owned config at offset {offset}")
        if type(self)._config_bytes is ReferenceDevice._config_bytes:
            # the config now: the old bytes with the driver's fields as written (what CONFIG
            # builds from the new values: every field is __le32), without building it per
            # write (a subclass that formats config space its own way is not cached)
            new = bytearray(old)
            new[4:8] = raw[4:8]
            if self._config_size >= 16:
                new[12:16] = raw[12:16]
            s = self.state
            self._config_cache = ((self._config_size, s.num_pages, s.actual, s.hint_cmd_id,
                                   s.poison_val), bytes(new))

    def host_request(self, kind: str, params: dict[str, Any]) -> list[Used]:
        if kind == "set-target":
            self.state.num_pages = int(params["num_pages"]) & 0xFFFFFFFF
            return []
        if kind == "stats-poll":
            if self._stats_held is None:
                return []
            head, self._stats_held = self._stats_held, None
            return [Used(head, 0)]
        if kind == "get-unused-pages":
            return self._request_unused(int(params["req_id"]))
        if kind == "hint-start":
            self.state.hint_cmd_id = int(params["cmd_id"])
            self._hint("start")
            return []
        if kind == "hint-stop":
            cmd = int(params.get("cmd_id", CMD_ID_STOP))
            self.state.hint_cmd_id = cmd
            self._hint("done" if cmd == CMD_ID_DONE else "stop")
            return []
        raise UsageError(f"unknown host request {kind!r}", field="kind")

    def observe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"balloon": extent_list(self.state.balloon)}
        out.update(self._observed())
        return out

    def observe_compact(self) -> dict[str, Any]:
        """:meth:`observe` with the balloon as a PageSet: a checkpoint for in-process callers
        (the runner), without a Python list per extent.  A subclass that observes
        differently (``observe`` overridden) gets its ``observe()``."""
        if type(self).observe is not ReferenceDevice.observe:
            return self.observe()
        out: dict[str, Any] = {"balloon": self.state.balloon}
        out.update(self._observed())
        return out

    def _observed(self) -> dict[str, Any]:
        """What :meth:`observe` reports besides the balloon."""
        s = self.state
        out: dict[str, Any] = {
            "num_pages": s.num_pages,
            "actual": s.actual,
            "stats": {str(k): v for k, v in sorted(s.stats.items())},
        }
        if "free_page" in self.queues:
            out["hint_cmd_id"] = s.hint_cmd_id
            out["hinted"] = s.hinted.extents()
        if "reporting" in self.queues:
            out["reported"] = s.reported.extents()
        if "misc" in self.queues:
            out["unused"] = {f"{k:#x}": v.extents() for k, v in sorted(s.unused.items())}
            out["unused_done"] = {f"{k:#x}": v for k, v in sorted(s.unused_done.items())}
        return out

    def observe_changes(self) -> dict[str, Any]:
        """:meth:`observe` with the balloon as a change: ``balloon_delta`` {``add``, ``remove``:
        extents} since the previous call (the first call: since ``start``, an empty balloon),
        instead of ``balloon``; O(frames changed), not O(balloon) (issue 13).  ``add`` and
        ``remove`` are PageSets (an in-process device may answer extents so: no JSON lists
        built per step, and ~16 bytes an extent held instead of ~85).  A subclass that
        observes differently (``observe`` overridden), or a device made with
        ``journal=False``, gets its full ``observe()``."""
        if type(self).observe is not ReferenceDevice.observe or not self._journal:
            return self.observe()
        s = self.state
        added, removed = s.pages.changes()
        out: dict[str, Any] = {"balloon_delta": {"add": added, "remove": removed}}
        out.update(self._observed())
        return out

    # --- queues ---------------------------------------------------------------------------------
    def _decode(self, role: str, segs: list[Segment], written: bytes | None = None
                ) -> DecodedBuffer | None:
        try:
            return decode_buffer(self.profile, role, segs, self.layout, features=self.accepted,
                                 written=written)
        except VBProtoError as exc:
            # structurally impossible: process nothing, still return the buffer (QEMU does)
            self.state.violations.append(f"{role}: {exc}")
            return None

    def _ram(self) -> PageSet:
        """Guest RAM as 4 KiB frames (the setup's regions), built once per ``start``."""
        key = (self._ram_frames, self._setup.memory_regions if self._setup else ())
        if self._ram_cache is None or self._ram_cache[0] != key:
            ram = PageSet.from_range(0, self._ram_frames) if self._ram_frames else PageSet.empty()
            if key[1]:
                ram = PageSet.empty()
                for start, size in key[1]:
                    first, end = -(-start // 4096), (start + size) // 4096
                    if end > first:
                        ram = ram | PageSet.from_range(first, end - first)
            self._ram_cache = (key, ram)
        return self._ram_cache[1]

    def _in_ram(self, pages: PageSet) -> PageSet:
        ram = self._ram()
        if pages and ram:
            # the usual buffer lies inside one RAM region: no set operations needed
            first, last = pages.min(), pages.max()  # the ends only: no extents built
            k = int(np.searchsorted(ram.lasts, first))
            if k < ram.lasts.size and int(ram.starts[k]) <= first and last <= int(ram.lasts[k]):
                return pages
        bad = pages - ram
        if bad:
            # QEMU: trace_virtio_balloon_bad_addr() and skip the page
            self.state.bad_pages.add(bad)
        return pages & ram

    def _plain_pfns(self, segs: list[Segment], *, in_ram: bool) -> npt.NDArray[np.uint32] | None:
        """The frames of an inflate/deflate buffer of the usual shape, else None: a PFN array
        (no bulk encoding negotiated) in one driver-written descriptor, whole 4-byte PFNs,
        each named once, and (``in_ram``) all inside one RAM region.  Such a buffer changes
        the state exactly as its :func:`decode_buffer` pages do -- decoding it raises nothing
        and its findings are the driver's business, not the device's -- so it skips the
        decoding and the page sets (issue 13: ~85 -> ~15 us a buffer, for ``trace synth``
        and every replay; tests/test_device_fast_inflate.py is the differential test)."""
        if self._pfn_dtype is None or len(segs) != 1 or segs[0].writable:
            return None
        data = segs[0].data
        if not data or len(data) % 4:
            return None
        frames = np.frombuffer(data, dtype=self._pfn_dtype)
        srt = np.sort(frames)
        if frames.size > 1 and not bool(np.greater(srt[1:], srt[:-1]).all()):
            return None  # repeats: the set of the decoding counts each frame once
        if in_ram:
            if self._ram_extents is None:
                ram = self._ram()
                self._ram_extents = tuple(zip(ram.starts.tolist(), ram.lasts.tolist(),
                                              strict=True))
            lo, hi = int(srt[0]), int(srt[-1])
            if not any(a <= lo and hi <= b for a, b in self._ram_extents):
                return None  # some outside RAM (bad pages to record), or across a gap
        return frames

    def _on_inflate(self, head: int, segs: list[Segment]) -> list[Used]:
        frames = self._plain_pfns(segs, in_ram=True)
        if frames is not None:
            self.state.pages.set_frames(frames, 1)
            return [Used(head, 0)]
        d = self._decode("inflate", segs)
        if d is not None:
            self.state.pages.add(self._in_ram(d.pages))
        return [Used(head, 0)]  # QEMU, Firecracker, crosvm: used len 0 (5.5.6 "uses the buffer")

    def _on_deflate(self, head: int, segs: list[Segment]) -> list[Used]:
        frames = self._plain_pfns(segs, in_ram=False)
        if frames is not None:
            self.state.pages.set_frames(frames, 0)
            return [Used(head, 0)]
        d = self._decode("deflate", segs)
        if d is not None:
            self.state.pages.remove(d.pages)
        return [Used(head, 0)]

    def _on_stats(self, head: int, segs: list[Segment]) -> list[Used]:
        d = self._decode("stats", segs)
        out: list[Used] = []
        if self._stats_held is not None:
            # D-ST1: at most one buffer; QEMU returns the old one ("should never happen")
            self.state.violations.append("second stats buffer while one is held")
            out.append(Used(self._stats_held, 0))
        self._stats_held = head
        self._stats_seen += 1
        if d is not None and d.decoded is not None:
            for e in d.decoded.message.entries:  # type: ignore[union-attr]
                # V-ST1: ignore unknown tags (spec 0-9; Linux 6.12 10-15 are known here too)
                if e.tag < 16:
                    self.state.stats[e.tag] = e.val
        return out

    def _hint(self, event: str) -> None:
        nxt = HINT_TRANSITIONS.get((self.hint, event))
        if nxt is None:
            self.state.violations.append(f"hint: {event} in state {self.hint.value}")
            return
        self.hint = nxt

    def _on_free_page(self, head: int, segs: list[Segment]) -> list[Used]:
        d = self._decode("free_page", segs)
        if d is not None and d.kind == "hint-cmd" and d.decoded is not None:
            cmd = d.decoded.message.cmd_id  # type: ignore[union-attr]
            if cmd == CMD_ID_STOP:
                self._hint("driver-stop")
            elif cmd == self.state.hint_cmd_id and cmd >= 2:
                self._hint("echo")
            else:
                self._hint("stale-id")
        if d is not None and d.pages and self.hint == HintState.START:
            # V-FH3: pages offered under another command id are ignored
            self.state.hinted = self.state.hinted | d.pages
        return [Used(head, 0)]

    def _on_reporting(self, head: int, segs: list[Segment]) -> list[Used]:
        d = self._decode("reporting", segs)
        poisoned = (get_profile(self.profile).has(self.accepted, "PAGE_POISON")
                    if "PAGE_POISON" in get_profile(self.profile).features else False)
        if d is not None and not (poisoned and self.state.poison_val != 0):
            # V-FR2 (5.5.6.7.2): with PAGE_POISON the device must not change a reported page
            # to anything but poison_val; discarding would zero it, so a device that cannot
            # fill pages with poison_val keeps them (QEMU: "skip if poison_val != 0")
            self.state.reported = self.state.reported | d.pages
        return [Used(head, 0)]

    def _on_misc(self, head: int, segs: list[Segment]) -> list[Used]:
        if all(s.writable for s in segs):
            size = sum(s.length for s in segs)
            if size < REQ_HDR_LEN:
                self.state.violations.append(f"misc request buffer of {size} bytes (< 16)")
            self._misc_buffer = (head, size)
            self._misc_step("post-buffer")
            return []
        d = self._decode("misc", segs)
        if d is not None and d.decoded is not None:
            m = d.decoded.message
            req = getattr(m, "req_id", getattr(m, "id", None))
            flag = m.flag  # type: ignore[union-attr]
            if req is not None:
                self.state.unused[req] = self.state.unused.get(req, PageSet.empty()) | d.pages
                if flag == BALLOON_FLAG_DONE:
                    self.state.unused_done[req] = self.state.unused_done.get(req, 0) + 1
            self._misc_step("done" if flag == BALLOON_FLAG_DONE else "cont")
        return [Used(head, 0)]

    def _misc_step(self, event: str) -> None:
        nxt = MISC_TRANSITIONS.get((self.misc, event))
        if nxt is None:
            self.state.violations.append(f"misc: {event} in state {self.misc.value}")
            return
        self.misc = nxt

    def _request_unused(self, req_id: int) -> list[Used]:
        if self._misc_buffer is None or self.misc != MiscState.IDLE:
            self.state.violations.append("get-unused-pages with no request buffer posted")
            return []
        head, _ = self._misc_buffer
        self._misc_buffer = None
        self._misc_req = req_id
        self._misc_step("request")
        hdr = encode(RequestHeader(BALLOON_GET_UNUSED_PAGES, (0, 0, 0), req_id), self.layout)
        # seed 7/7 misc_handle_rq(): the driver ignores a used len other than 16
        return [Used(head, REQ_HDR_LEN, hdr)]

    # --- config ----------------------------------------------------------------------------------
    def _config_bytes(self) -> bytes:
        s = self.state
        key = (self._config_size, s.num_pages, s.actual, s.hint_cmd_id, s.poison_val)
        if self._config_cache is not None and self._config_cache[0] == key:
            return self._config_cache[1]  # a replay reads config after every driver write
        vals = {"num_pages": s.num_pages, "actual": s.actual}
        if self._config_size >= 12:
            vals["free_page_hint_cmd_id"] = s.hint_cmd_id
        if self._config_size >= 16:
            vals["poison_val"] = s.poison_val
        raw = bytes(CONFIG[self._config_size].build(vals))
        self._config_cache = (key, raw)
        return raw
