"""Free page hinting (VIRTIO 1.2 5.5.6.5): command ids the driver echoes against the one the
device published, and the pages the device takes as hints.

The device publishes a command id in ``free_page_hint_cmd_id`` (the trace's host
``free-page-hint`` events: ids >= 2 start a round, 0 STOP, 1 DONE).  The driver starts hinting
with an output buffer carrying the *current* id (5.5.6.5.1 "MUST start hinting by providing an
output buffer containing the current command ID") -- a big-endian legacy driver echoing the id
byte-swapped, or an id from before a STOP/DONE, breaks that -- and sends it once
("MUST NOT provide more than one output buffer containing the current command ID").  Pages the
driver hints under an id that is not the current one must be ignored by the device (5.5.6.5.2
"MUST ignore pages that are provided with a command ID that does not match the current value").
"""

from __future__ import annotations

from virtio_balloon_proto.pageset import PageSet

from .base import Chain, Judgement, first_frames, pageset_of, register

STOP, DONE = 0, 1


def _swapped(v: int) -> int:
    return int.from_bytes(v.to_bytes(4, "little"), "big")


def _observed_cmd_id(ev: object) -> int | None:
    """The device's free_page_hint_cmd_id in a live run's ``state`` observation, if shown."""
    value = getattr(ev, "value", None)
    if getattr(ev, "what", None) != "state" or not isinstance(value, dict):
        return None
    v = value.get("hint_cmd_id")
    if isinstance(v, int) and not isinstance(v, bool):
        return v & 0xFFFFFFFF
    cfg = value.get("config")
    if isinstance(cfg, str) and len(cfg) >= 24:
        try:
            return int.from_bytes(bytes.fromhex(cfg[16:24]), "little")
        except ValueError:
            return None
    return None


def hint_rounds(j: Judgement, device_view: bool = False
                ) -> tuple[dict[int, bool], list[tuple[int, str]]]:
    """Walk the free page queue: chain index -> "its pages are under the current id", and the
    driver-side problems found [(event, message)].

    ``device_view``: the current id is also what a live run's ``state`` observations show (a
    device may change it on its own, 5.5.6.5, without the driver reading it) -- for judging the
    device (5.5.6.5.2 "MUST ignore pages ... command ID that does not match the current value
    in free_page_hint_cmd_id"), never the driver, which knows only what it read."""
    from virtio_balloon_proto import trace as tr

    published: int | None = None  # the device's current id, once the trace shows it
    last_read: int | None = None  # the id the driver last read from config (offset 8)
    ever: set[int] = set()  # every id the device published in the trace
    active: int | None = None  # the id the driver echoed and that still matches
    under: dict[int, bool] = {}
    problems: list[tuple[int, str]] = []
    for i, ev in enumerate(j.events, start=1):
        new: int | None = None
        if isinstance(ev, tr.HostEvent) and ev.action == "free-page-hint" and ev.cmd_id is not None:
            new = ev.cmd_id
        elif isinstance(ev, tr.ConfigEvent) and not ev.write and (
                ev.offset <= 8 and ev.offset + len(ev.data) >= 12):
            # the driver read the device's current id (config is little-endian, 5.5.4)
            new = last_read = int.from_bytes(ev.data[8 - ev.offset: 12 - ev.offset], "little")
        elif device_view and isinstance(ev, tr.ObserveEvent):
            seen = _observed_cmd_id(ev)
            if seen is not None and seen != published:
                new = seen
        if new is not None:
            published = new
            ever.add(new)
            if active is not None and active != published:
                active = None
            continue
        ch = j.by_avail.get(i)
        if ch is None or ch.role != "free_page":
            continue
        d = j.decoded(ch)
        if d is None:
            continue
        if d.kind == "hint-cmd" and d.decoded is not None:
            cid = int(d.decoded.message.cmd_id)  # type: ignore[union-attr]
            if cid == STOP:
                active = None
            elif published is not None and cid != published and cid != _swapped(published) and (
                    cid == last_read or (last_read is None and cid in ever)):
                # the driver echoes the id it read; the device changed it since (a race the
                # spec provides for: 5.5.6.5.2 "The device MUST ignore pages that are provided
                # with a command ID that does not match the current value") -- judged against
                # the driver's last read (or, with no read in the trace, any id published)
                j.notes.append(f"event {i}: the driver echoes command id {cid:#x} it read; the "
                               f"device's current id is {published:#x} (changed since: a race, "
                               "not judged)")
                active = None
            elif published is not None and cid != published:
                why = ""
                if cid == _swapped(published):
                    why = " (byte-swapped: the id is __virtio32, little-endian with VERSION_1)"
                elif published in (STOP, DONE):
                    why = f" (stale: the device set {'STOP' if published == STOP else 'DONE'})"
                problems.append((i, f"the driver echoes command id {cid:#x}, the device's "
                                 f"current id is {published:#x}{why}"))
                active = None
            else:
                active = cid
        elif d.pages:
            under[ch.index] = active is not None and published is not None and (
                active == published)
            if published in (STOP, DONE) and active is None:
                problems.append((i, f"hinted pages after the device set "
                                 f"{'STOP' if published == STOP else 'DONE'}"))
    return under, problems


@register("spec.driver.hint.one-cmd-id-buffer", "spec.driver.hint.start-with-cmd-id",
          "spec.driver.hint.stop-on-stop-or-done")
def driver_ids(j: Judgement) -> None:
    from virtio_balloon_proto import trace as tr

    seen: dict[int, int] = {}
    new_id = [i for i, ev in enumerate(j.events, start=1)
              if (isinstance(ev, tr.HostEvent) and ev.action == "free-page-hint")]
    prev = 0
    for ch in j.chains:
        if ch.role != "free_page":
            continue
        if any(prev < i < ch.index for i in new_id):
            seen.clear()  # the device published a new id (or STOP/DONE): a new round
        prev = ch.index
        d = j.decoded(ch)
        if d is None or d.kind != "hint-cmd" or d.decoded is None:
            continue
        cid = int(d.decoded.message.cmd_id)  # type: ignore[union-attr]
        j.evaluated("spec.driver.hint.one-cmd-id-buffer")
        if cid >= 2:
            seen[cid] = seen.get(cid, 0) + 1
            if seen[cid] > 1:
                j.broken("spec.driver.hint.one-cmd-id-buffer",
                         f"command id {cid:#x} sent {seen[cid]} times", ch.index)
        # the driver's own STOP does not start a new round: only the device's new id does
        # (5.5.6.5.1 "MUST NOT provide more than one output buffer containing the current
        # command ID"; a resend of the same current id after the driver's STOP is a second one)
    _, problems = hint_rounds(j)
    if any(c.role == "free_page" for c in j.chains):
        j.evaluated("spec.driver.hint.start-with-cmd-id")
    for i, msg in problems:
        clause = ("spec.driver.hint.stop-on-stop-or-done" if msg.startswith("hinted pages")
                  else "spec.driver.hint.start-with-cmd-id")
        j.evaluated(clause)
        j.broken(clause, msg, i)


def current_hints(j: Judgement) -> PageSet:
    """Pages hinted under the device's current command id (for ``decode --summary``)."""
    under, _ = hint_rounds(j)
    out = PageSet.empty()
    for ch in j.chains:
        if under.get(ch.index):
            d = j.decoded(ch)
            if d is not None:
                out = out | d.pages
    return out


@register("spec.device.hint.ignore-stale-cmd-id")
def device_hints(j: Judgement) -> None:
    from virtio_balloon_proto import trace as tr

    if not any(ev.what == "state" and "hinted" in ev.value for _, ev in j.observations("state")):
        return
    under, _ = hint_rounds(j, device_view=True)
    allowed = PageSet.empty()
    for i, ev in enumerate(j.events, start=1):
        ch = j.by_avail.get(i)
        if ch is not None and under.get(ch.index):
            d = j.decoded(ch)
            if d is not None:
                allowed = allowed | d.pages
        if isinstance(ev, tr.ObserveEvent) and ev.what == "state" and "hinted" in ev.value:
            seen = pageset_of(ev.value["hinted"])
            if seen is None:
                continue
            j.evaluated("spec.device.hint.ignore-stale-cmd-id")
            stale = seen - allowed
            if stale:
                j.broken("spec.device.hint.ignore-stale-cmd-id",
                         f"{len(stale)} page(s) taken as hints that were not offered under the "
                         f"current command id (first {first_frames(stale)})", i,
                         expected=allowed.extents()[:64], received=seen.extents()[:64])


@register("spec.device.hint.no-cmd-id-reuse")
def no_cmd_id_reuse(j: Judgement) -> None:
    """VIRTIO 1.2 5.5.6.5.2 (same 1.4, master): "The device MUST NOT reuse a command ID until it
    has received an output buffer containing VIRTIO_BALLOON_CMD_ID_STOP from the driver."

    The device's current id is what the trace shows it publishing: config reads (its answers)
    and a live run's ``state`` observations; in a capture also the host's free-page-hint events
    (the VMM's side of the device: QEMU picks the id).  In a live run's record the host events
    are the suite's requests: a device showing an id the suite just asked for is never blamed
    for it (a note when the suite itself reused one).  A reuse is an id (>= 2) the device
    showed, then replaced by another value, then showed again with no STOP output buffer made
    available by the driver in between.  Conservative for windows: judged only from a device
    reset (a STOP buffer made available before a mid-life window may have been received inside
    it) and when avail records were captured; a free page output buffer whose bytes were not
    captured may be a STOP; a reset (status 0) starts afresh; a byte-swapped readback is the
    little-endian clause's, not a new value."""
    from virtio_balloon_proto import trace as tr

    clause = "spec.device.hint.no-cmd-id-reuse"
    if "FREE_PAGE_HINT" not in j.negotiated:
        return
    live = bool(j.observations("device"))  # a run's record: host events are the suite's
    requested: int | None = None  # the suite's last requested id (live)
    current: int | None = None
    retired: dict[int, int] = {}  # id -> event where the device replaced it
    # a STOP or a reset outside what the trace shows would allow the reuse
    judged = j.from_reset and j.sees("avail") and j.sees("status")
    unjudged: list[int] = []
    for i, ev in enumerate(j.events, start=1):
        new: int | None = None
        how = ""
        if isinstance(ev, tr.StatusEvent) and ev.value == 0:
            current, retired = None, {}  # device reset: a new life
            continue
        if isinstance(ev, tr.HostEvent) and ev.action == "free-page-hint" and (
                ev.cmd_id is not None):
            requested = ev.cmd_id & 0xFFFFFFFF
            if live:
                continue
            new, how = requested, "host free-page-hint"
        elif isinstance(ev, tr.ConfigEvent) and not ev.write and (
                ev.offset <= 8 and ev.offset + len(ev.data) >= 12):
            new = int.from_bytes(ev.data[8 - ev.offset: 12 - ev.offset], "little")
            how = "free_page_hint_cmd_id read by the driver"
        elif isinstance(ev, tr.ObserveEvent):
            new, how = _observed_cmd_id(ev), "the device's state"
        ch = j.by_avail.get(i)
        if ch is not None and ch.role == "free_page" and _maybe_stop(j, ch):
            retired = {}  # the driver's STOP (or bytes not captured: it may be one)
            continue
        if new is None or new == current or (current is not None and new == _swapped(current)):
            continue
        if new >= 2:
            if judged:
                j.evaluated(clause)
            if not judged and new in retired:
                unjudged.append(i)
            elif judged and new in retired and live and new == requested:
                j.notes.append(f"event {i}: the suite's host request reuses command id "
                               f"{new:#x} with no STOP from the driver since event "
                               f"{retired[new]} (the device followed it: not judged)")
            elif judged and new in retired:
                j.broken(clause, f"command id {new:#x} shown again at event {i} ({how}) after "
                         f"the device replaced it at event {retired[new]}, with no "
                         "VIRTIO_BALLOON_CMD_ID_STOP output buffer from the driver since "
                         "(VIRTIO 1.2 5.5.6.5.2)", i, expected=f"a new id, not {new:#x}",
                         received=f"{new:#x}")
        if current is not None and current >= 2:
            retired[current] = i
        current = new
    if unjudged:
        j.notes.append(f"event {unjudged[0]}: a command id shown again (spec.device.hint."
                       "no-cmd-id-reuse) not judged: the trace does not start at a device reset "
                       "or did not capture avail/status records (a STOP from the driver or a "
                       "reset may be outside the window)")


def _maybe_stop(j: Judgement, ch: Chain) -> bool:
    """Is this free page chain a driver's STOP (or an output buffer that could be one)?"""
    if ch.segments is None:
        return True  # bytes not captured: it may be one
    if not any(not s.writable for s in ch.segments):
        return False  # hint pages only (device-writable)
    d = j.decoded(ch)
    if d is None or d.kind != "hint-cmd" or d.decoded is None:
        return True  # undecodable output bytes: not proof it was not a STOP
    return int(d.decoded.message.cmd_id) == STOP  # type: ignore[union-attr]
