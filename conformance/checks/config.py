"""Config space and features: what the driver negotiates and writes, what the device reads back,
and the value of ``actual`` against the pages the driver really has in the balloon.

Config values are judged wherever a trace shows them: a driver's config_read (its data is the
device's answer) and a live run's ``state`` observation.  A field is judged only once the trace
shows what it must be (num_pages after a host set-target, actual after a driver write, the hint
command id after a host free-page-hint): a capture is a window, and before that the value is
unknown, not wrong.
"""

from __future__ import annotations

from typing import Any

from virtio_balloon_proto.framemap import FrameMap

from .base import Chain, Judgement, register, role_of

FIELDS = (
    (0, "num_pages", "spec.device.config.num-pages-target"),
    (4, "actual", "spec.device.config.actual-readback"),
    (8, "free_page_hint_cmd_id", "suite.device.hint.cmd-id-readback"),
    (12, "poison_val", "spec.device.poison.hint"),
)
STATE_KEYS = {"num_pages": 0, "actual": 4, "hint_cmd_id": 8}


@register("v3.driver.features.bitmap-needs-stats", "spec.driver.features.accept-must-tell-host")
def features(j: Judgement) -> None:
    neg, offered = j.negotiated, j.offered
    if j.profile in ("v3", "hybrid"):
        j.evaluated("v3.driver.features.bitmap-needs-stats")
        if ("PAGE_BITMAP" in neg or "MISC_VQ" in neg) and "STATS_VQ" not in neg:
            j.broken("v3.driver.features.bitmap-needs-stats", f"negotiated {neg} without STATS_VQ")
    if "MUST_TELL_HOST" in offered:
        j.evaluated("spec.driver.features.accept-must-tell-host")
        if "MUST_TELL_HOST" not in neg:
            j.broken("spec.driver.features.accept-must-tell-host", "offered but not accepted")


def _compare(j: Judgement, i: int, off: int, got: bytes, want: dict[int, bytes]) -> None:
    for foff, name, clause in FIELDS:
        if foff not in want or not (off <= foff and foff + 4 <= off + len(got)):
            continue
        g = got[foff - off: foff - off + 4]
        w = want[foff]
        j.evaluated(clause)
        if g == w:
            continue
        if g == w[::-1] and w != w[::-1]:
            j.evaluated("spec.device.config.little-endian")
            j.broken("spec.device.config.little-endian",
                     f"config {name} is byte-swapped ({g.hex()} for {w.hex()}): VIRTIO 1.2 "
                     "5.5.4 (legacy) 'transitional devices and drivers MUST format the fields in "
                     "struct virtio_balloon_config according to the little-endian format' (le32 "
                     "without legacy too)", i,
                     expected=w.hex(), received=g.hex())
            continue
        if foff == 8:
            # the device owns free_page_hint_cmd_id and may change it on its own at any time:
            # VIRTIO 1.2 5.5.6.5 "A round of hinting ends ... when the device updates
            # free_page_hint_cmd_id ... to contain either VIRTIO_BALLOON_CMD_ID_STOP or
            # VIRTIO_BALLOON_CMD_ID_DONE", "The device may follow VIRTIO_BALLOON_CMD_ID_STOP
            # with a new non-reserved value"; 5.5.6.5.2 "SHOULD set ... STOP any time that it
            # will not be able to make use of the hints".  A value other than the host's last
            # one is the device's choice (a note), never a failure; judged from here on.
            _device_set_cmd_id(j, i, int.from_bytes(w, "little"), int.from_bytes(g, "little"))
            want[8] = g
            continue
        j.broken(clause, f"config {name} reads {int.from_bytes(g, 'little')}, the driver/host "
                 f"last set {int.from_bytes(w, 'little')}", i, expected=w.hex(), received=g.hex())


def _device_set_cmd_id(j: Judgement, i: int, host: int, got: int) -> None:
    to = {0: "STOP", 1: "DONE"}.get(got, "a new id")
    j.choice("hint.cmd-id", f"changes free_page_hint_cmd_id on its own (to {to})")
    j.notes.append(f"event {i}: free_page_hint_cmd_id reads {got:#x} ({to}), the host last set "
                   f"{host:#x}: the device changed it itself (allowed: VIRTIO 1.2 5.5.6.5; "
                   "whether it still takes hints under the old id is not visible in a trace)")


@register("spec.device.config.num-pages-target", "spec.device.config.actual-readback",
          "suite.device.hint.cmd-id-readback", "spec.device.poison.hint",
          "spec.device.config.little-endian", "spec.driver.config.actual-atomic-write",
          "spec.driver.op.update-actual")
def config_values(j: Judgement) -> None:
    from virtio_balloon_proto import trace as tr

    want: dict[int, bytes] = {}
    last_ack: int | None = None
    last_actual_write: int | None = None
    for i, ev in enumerate(j.events, start=1):
        if isinstance(ev, tr.StatusEvent) and ev.value == 0:
            # a device reset: the spec does not say which config values survive it (QEMU keeps
            # num_pages and actual), so each field is unknown until set again
            want.clear()
        if isinstance(ev, tr.HostEvent):
            if ev.action == "set-target" and ev.num_pages is not None:
                want[0] = (ev.num_pages & 0xFFFFFFFF).to_bytes(4, "little")
            elif ev.action == "free-page-hint" and ev.cmd_id is not None:
                want[8] = (ev.cmd_id & 0xFFFFFFFF).to_bytes(4, "little")
        elif isinstance(ev, tr.ConfigEvent) and ev.write:
            j.evaluated("spec.driver.config.actual-atomic-write")
            end = ev.offset + len(ev.data)
            if ev.offset < 8 and end > 4 and not (ev.offset <= 4 and end >= 8):
                # one write covering all of actual passes (CCW: Linux's virtio_ccw_set_config
                # writes bytes 0..offset+len in one WRITE_CONF); a partial write does not
                why = ("VIRTIO 1.2 5.5.6.2.1 'When using the legacy interface, the driver MUST "
                       "write out all 4 bytes each time it updates the actual value'"
                       if "VERSION_1" not in j.negotiated else
                       "VIRTIO 1.2 4.1.3.1 (PCI) '32-bit wide and aligned accesses for 32-bit "
                       "and 64-bit wide fields'")
                j.broken("spec.driver.config.actual-atomic-write",
                         f"config write of {len(ev.data)} byte(s) at offset {ev.offset} covers "
                         f"only part of actual ({why})", i)
            for foff in (4, 12):  # the driver's fields
                if ev.offset <= foff and foff + 4 <= end:
                    want[foff] = ev.data[foff - ev.offset: foff - ev.offset + 4]
                elif ev.offset < foff + 4 and foff < end and want.pop(foff, None) is not None:
                    # a write of part of the field breaks the driver's access-width MUST
                    # (above); the spec does not say what the field then holds (the bytes
                    # merged, as QEMU stores them, or the write ignored): unknown until the
                    # driver writes the whole field again
                    j.notes.append(f"event {i}: config write of {len(ev.data)} byte(s) at "
                                   f"offset {ev.offset} covers part of the field at {foff}: "
                                   "its value is not judged until a whole write")
            if ev.offset <= 4 < end:
                last_actual_write = i
        elif isinstance(ev, tr.ConfigEvent):
            _compare(j, i, ev.offset, ev.data, want)
        elif isinstance(ev, tr.UsedEvent) and i in j.by_used:
            if j.by_used[i].role in ("inflate", "deflate"):
                last_ack = i
        elif isinstance(ev, tr.ObserveEvent) and ev.what == "state":
            st: dict[str, Any] = dict(ev.value)
            cfg = st.get("config")
            if isinstance(cfg, str):
                try:
                    _compare(j, i, 0, bytes.fromhex(cfg), want)
                except ValueError:
                    pass
            else:
                for key, foff in STATE_KEYS.items():
                    if isinstance(st.get(key), int):
                        _compare(j, i, foff, (st[key] & 0xFFFFFFFF).to_bytes(4, "little"), want)
    if last_ack is not None and (j.sees("config") or j.sees("config-actual")):
        # VIRTIO 1.2 5.5.6.1: "The driver MUST update actual after changing the number of
        # pages" and "MAY update actual once after multiple inflate and deflate operations":
        # no deadline, so an acknowledgement with no later write when the trace ends is in
        # flight (a note), never a failure -- in a capture and in a run's saved trace alike
        j.evaluated("spec.driver.op.update-actual")
        if last_actual_write is None or last_actual_write < last_ack:
            j.notes.append("in flight when the trace ends (not judged): no write of 'actual' "
                           f"yet after the last inflate/deflate acknowledgement (event "
                           f"{last_ack}; VIRTIO 1.2 5.5.6.1 sets no deadline)")


@register("spec.driver.op.actual-is-balloon-size")
def actual_accounting(j: Judgement) -> None:
    """``actual`` (VIRTIO 1.2 5.5.6 step 5: "the driver updates actual to reflect the new number
    of pages in the balloon") against
    the driver's own traffic: the 4 KiB frames of acknowledged inflates minus acknowledged
    deflates.  Exact when the trace starts at device reset (a status write of 0 or 1 first);
    otherwise only changes are compared (the balloon may hold pages from before the window).
    Chains still in flight when actual is written widen the allowed range."""
    from virtio_balloon_proto import trace as tr

    from_reset = j.from_reset
    ram = j.ram()
    balloon = FrameMap(int(ram.lasts[-1]) + 1 if ram else 0)  # O(change) per step (issue 13)
    #: inflate/deflate chains made available and not yet used, by avail event index
    pending: dict[int, Chain] = {}
    before = 0  # pages of the balloon from before the window that the window took back
    base: tuple[int, int] | None = None  # (actual, balloon size) at the first write
    stray = {i for i, role, _ in j.stray_used if role in ("inflate", "deflate")}
    resets = set(j.resets)
    for i, ev in enumerate(j.events, start=1):
        if i in resets:
            # a device reset starts a new life: what was in flight is dropped (2.4.1) and the
            # driver counts from an empty balloon (Linux: vb->num_pages = 0 at probe)
            from_reset, before, base = True, 0, None
            balloon = FrameMap(int(ram.lasts[-1]) + 1 if ram else 0)
            pending.clear()
            continue
        av = j.by_avail.get(i)
        if av is not None and av.role in ("inflate", "deflate"):
            pending[i] = av
        if i in stray:
            # a used element of a chain made available before the window: its pages are
            # unknown, so the balloon's size changed by an unknown amount -- count again from
            # the next write of actual (from a reset, the used id is judged by used.id-is-head)
            if from_reset:
                return
            j.notes.append(f"event {i}: {role_of(ev)} used element from before the window: its "
                           "pages are unknown; actual is compared again from the next write")
            base = None
            continue
        if isinstance(ev, tr.UsedEvent) and i in j.by_used:
            ch = j.by_used[i]
            if ch.role not in ("inflate", "deflate"):
                continue
            if ch.guessed:
                # no used ids in the capture and several chains outstanding: which one the
                # device used is unknown (no order without IN_ORDER), so is the balloon's size
                j.notes.append(f"event {i}: {ch.role} used element without an id while several "
                               "chains were outstanding: the balloon's size is unknown from "
                               "here on (spec.driver.op.actual-is-balloon-size not judged)")
                return
            pending.pop(ch.index, None)
            d = j.decoded(ch)
            if d is None:
                return  # bytes not captured / undecodable: the count is unknown from here on
            if ch.role == "inflate":
                frames = d.frames()  # a PFN buffer: marked straight from its array (issue 13)
                if frames is not None:
                    balloon.add_frames(frames)
                else:
                    balloon.add(d.pages)
            else:
                gone = balloon.remove(d.pages)
                if not from_reset:
                    # a window: a deflated page it never saw inflated was in the balloon
                    # before the window started
                    before -= d.page_count - gone
        elif isinstance(ev, tr.ConfigEvent) and ev.write and (
                ev.offset <= 4 and ev.offset + len(ev.data) >= 8):
            actual = int.from_bytes(ev.data[4 - ev.offset: 8 - ev.offset], "little")
            flying_in = flying_out = 0
            for ch in pending.values():
                if ch.index < i:
                    d = j.decoded(ch)
                    n = d.page_count if d is not None else 0
                    if ch.role == "inflate":
                        flying_in += n
                    else:
                        flying_out += n
            size = len(balloon) + before
            if base is None and not from_reset:
                base = (actual, size)
                continue
            j.evaluated("spec.driver.op.actual-is-balloon-size")
            exp = size if base is None else base[0] + size - base[1]
            if not exp - flying_out <= actual <= exp + flying_in:
                j.broken("spec.driver.op.actual-is-balloon-size",
                         f"the driver wrote actual = {actual}, but its acknowledged inflates "
                         f"minus deflates hold {exp} page(s)"
                         + ("" if base is None else " (counted from the first write in the "
                            "window)"), i, expected=exp, received=actual)


DRIVER_OK = 4
POISON = 12  # poison_val's offset in struct virtio_balloon_config (5.5.4)


@register("spec.driver.poison.write-before-driver-ok",
          "spec.driver.poison.no-write-after-driver-ok")
def poison_timing(j: Judgement) -> None:
    """VIRTIO 1.2 5.5.6.6.1 (same 1.4, master; "apply if the VIRTIO_BALLOON_F_PAGE_POISON
    feature has been negotiated"): "The driver MUST populate the poison_val configuration data
    before setting the DRIVER_OK bit." and "The driver MUST NOT modify poison_val while the
    DRIVER_OK bit is set."

    Needs status records (DRIVER_OK is known set only from a status write the trace shows, and
    cleared by a reset, status 0) and every config write (a source with only ``config-actual``,
    QEMU's trace events, never sees poison_val written).  *Populate before*: judged at a status
    write that sets DRIVER_OK only when the trace shows that life from its reset (window start
    ``reset``, or a status 0 in the trace): a write of poison_val since that reset, of any part,
    counts.  *Modify while set*: a write to poison_val after DRIVER_OK whose bytes differ from
    the value known before it (the driver's earlier write, or a config read); a write of the same
    value modifies nothing, and when the value before is unknown (a mid-life window) it is a
    note, never a failure."""
    from virtio_balloon_proto import trace as tr

    before = "spec.driver.poison.write-before-driver-ok"
    after = "spec.driver.poison.no-write-after-driver-ok"
    if "PAGE_POISON" not in j.negotiated or not j.sees("status") or not j.sees("config"):
        return
    driver_ok = False
    whole_life = j.from_reset  # the trace shows this life from its reset
    populated = False
    known: list[int | None] = [None] * 4  # poison_val's bytes, where the trace shows them
    for i, ev in enumerate(j.events, start=1):
        if isinstance(ev, tr.StatusEvent):
            if ev.value == 0:
                driver_ok, whole_life, populated, known = False, True, False, [None] * 4
            elif ev.value & DRIVER_OK and not driver_ok:
                if whole_life:
                    j.evaluated(before)
                    if not populated:
                        j.broken(before, "DRIVER_OK set with no write of poison_val since the "
                                 "device reset (VIRTIO 1.2 5.5.6.6.1 'The driver MUST populate "
                                 "the poison_val configuration data before setting the "
                                 "DRIVER_OK bit')", i)
                driver_ok = True
            else:
                driver_ok = bool(ev.value & DRIVER_OK)
            continue
        if not isinstance(ev, tr.ConfigEvent):
            continue
        lo, hi = max(ev.offset, POISON), min(ev.offset + len(ev.data), POISON + 4)
        if lo >= hi:
            continue
        data = {k - POISON: ev.data[k - ev.offset] for k in range(lo, hi)}
        if not ev.write:
            for k, b in data.items():  # the device's answer: the value now, where unknown
                if known[k] is None:
                    known[k] = b
            continue
        if driver_ok:
            j.evaluated(after)
            was = [known[k] for k in data]
            if any(w is not None and w != data[k] for k, w in zip(data, was, strict=True)):
                old = "".join("??" if known[k] is None else f"{known[k]:02x}" for k in range(4))
                j.broken(after, f"config write of poison_val bytes {lo - POISON}-{hi - POISON - 1}"
                         f" ({bytes(data.values()).hex()}, was {old}: le bytes) while DRIVER_OK "
                         "is set (VIRTIO 1.2 5.5.6.6.1 'The driver MUST NOT modify poison_val "
                         "while the DRIVER_OK bit is set')", i,
                         expected=old, received=bytes(data.values()).hex())
            elif any(w is None for w in was):
                j.notes.append(f"event {i}: poison_val written while DRIVER_OK is set; its value "
                               "before is not in the trace, so whether it changed is not judged")
        else:
            populated = True
        for k, b in data.items():
            known[k] = b
