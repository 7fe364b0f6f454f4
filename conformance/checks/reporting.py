"""Free page reporting (VIRTIO 1.2 5.5.6.7): the device may discard what the driver reported,
nothing else, and with a non-zero ``poison_val`` it must not turn a page into anything else.

Observation key ``reported``: the frames the device visibly discarded (or says it did).

* spec.device.reporting.records-ranges: discarded frames lie inside the ranges of the reports
  the driver made available (the address/length of each device-writable descriptor).
* spec.device.reporting.poison-only: "If VIRTIO_BALLOON_F_PAGE_POISON was negotiated, the device
  MUST NOT modify the content of a reported page to a value other than poison_val" (5.5.6.7.2);
  a discarded page reads zero, so with a non-zero poison_val nothing may be discarded.
* choice ``reporting.discard``: ``discards`` or ``keeps`` -- "the device MAY modify the contents
  of any page supplied in a report request" (5.5.6.7.2): discarding is allowed, not required.
"""

from __future__ import annotations

from virtio_balloon_proto.pageset import PageSet

from .base import Judgement, first_frames, pageset_of, register


@register("spec.device.reporting.records-ranges", "spec.device.reporting.poison-only")
def reported(j: Judgement) -> None:
    from virtio_balloon_proto import trace as tr

    # poison_val: 0 from reset until the driver writes it; in a window that starts later it is
    # unknown until the trace shows it (a driver write or read, a config observation)
    poison: int | None = 0 if j.from_reset else None
    unknown_noted = False
    offered = PageSet.empty()
    acked = PageSet.empty()
    before = PageSet.empty()  # frames already shown discarded by an earlier observation
    for i, ev in enumerate(j.events, start=1):
        if isinstance(ev, tr.ConfigEvent) and (ev.write or poison is None):
            # the driver's write sets it; a read only tells it when nothing else did
            end = ev.offset + len(ev.data)
            if ev.offset <= 12 and end >= 16:
                poison = int.from_bytes(ev.data[12 - ev.offset: 16 - ev.offset], "little")
        elif poison is None and isinstance(ev, tr.ObserveEvent) and ev.what == "state" and (
                isinstance(ev.value.get("config"), str)):
            try:
                cfg = bytes.fromhex(ev.value["config"])
            except ValueError:
                cfg = b""
            if len(cfg) >= 16:
                poison = int.from_bytes(cfg[12:16], "little")
        ch = j.by_avail.get(i)
        if ch is not None and ch.role == "reporting":
            d = j.decoded(ch)
            if d is not None:
                offered = offered | d.pages
        ch = j.by_used.get(i)
        if ch is not None and ch.role == "reporting":
            d = j.decoded(ch)
            if d is not None:
                acked = acked | d.pages
        if not (isinstance(ev, tr.ObserveEvent) and ev.what == "state"
                and "reported" in ev.value):
            continue
        seen = pageset_of(ev.value["reported"])
        if seen is None:
            continue
        j.evaluated("spec.device.reporting.records-ranges")
        extra = seen - offered
        if extra:
            j.broken("spec.device.reporting.records-ranges",
                     f"{len(extra)} frame(s) discarded that no report named "
                     f"(first {first_frames(extra)})", i,
                     expected=offered.extents()[:64], received=seen.extents()[:64])
        if "PAGE_POISON" in j.negotiated and poison is None:
            if not unknown_noted:
                j.notes.append(f"event {i}: poison_val is not known in this window (no write, "
                               "read or config observation of it yet): "
                               "spec.device.reporting.poison-only not judged")
                unknown_noted = True
        elif "PAGE_POISON" in j.negotiated and poison != 0:
            # judged when a frame is first shown discarded: one discarded while poison_val
            # was still 0 (the driver wrote it later) was changed to the poison_val of then
            new = seen - before
            j.evaluated("spec.device.reporting.poison-only")
            if new:
                j.broken("spec.device.reporting.poison-only",
                         f"{len(new)} reported frame(s) discarded (they read 0) although "
                         f"poison_val is {poison:#x}: VIRTIO 1.2 5.5.6.7.2 'MUST NOT modify the "
                         "content of a reported page to a value other than poison_val'", i)
        before = seen
        if acked:
            j.choice("reporting.discard", "discards" if acked & seen else "keeps")
