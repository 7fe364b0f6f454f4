"""Inflate and deflate: the driver's ordering rules and the device's balloon against the pages
the driver named (PFN arrays in 4 KiB units, VIRTIO 1.2 5.5.6; v3/hybrid bitmaps per the seed).

The balloon a device reports (a live run's ``state`` observation, key ``balloon``) must hold
every 4 KiB frame of guest RAM that an acknowledged, well-formed inflate named and no
acknowledged deflate took back since, and nothing else.  Frames whose fate the spec leaves open
are allowed either way and the choice is recorded:

* ``pfns.malformed-buffer``: a PFN buffer whose length is not a multiple of 4 (a driver MUST,
  5.5.6): the spec says nothing about its PFNs.  ``kept whole words`` (QEMU, crosvm) or
  ``skipped`` (Firecracker, cloud-hypervisor); the buffer must still be returned
  (spec.device.malformed.acks-buffer, queues.py).
* ``pfns.outside-ram``: PFNs that name no guest RAM (the header's ``memory`` regions): the spec
  does not say; QEMU skips them (trace bad_addr), others log.  ``ignored`` or ``recorded``.
* chains still in flight at an observation may or may not have been processed yet.
"""

from __future__ import annotations

from virtio_balloon_proto.pageset import PageSet

from .base import Judgement, first_frames, pageset_of, register


def page_clauses(j: Judgement) -> tuple[str, str]:
    if j.profile in ("v3", "hybrid") and "PAGE_BITMAP" in j.negotiated:
        c = f"{j.profile}.device.bmap.tracks-pages"
        return c, c
    return "spec.device.inflate.pfn-4k-units", "spec.device.deflate.pfn-4k-units"


@register("spec.driver.op.no-deflate-before-inflate-ack")
def deflate_after_ack(j: Judgement) -> None:
    inflight: dict[int, PageSet] = {}
    for i in range(1, len(j.events) + 1):
        ch = j.by_avail.get(i)
        if ch is not None and ch.role in ("inflate", "deflate"):
            d = j.decoded(ch)
            if d is None or d.kind not in ("pfns", "bmap", "hybrid"):
                continue
            if ch.role == "inflate":
                inflight[ch.index] = d.pages
            else:
                j.evaluated("spec.driver.op.no-deflate-before-inflate-ack")
                for idx, pages in inflight.items():
                    both = d.pages & pages
                    if both:
                        j.broken("spec.driver.op.no-deflate-before-inflate-ack",
                                 f"deflate names {len(both)} frame(s) of the inflate at event "
                                 f"{idx}, not yet acknowledged", i)
        done = j.by_used.get(i)
        if done is not None:
            inflight.pop(done.index, None)


@register("spec.device.inflate.pfn-4k-units", "spec.device.deflate.pfn-4k-units",
          "v3.device.bmap.tracks-pages", "hybrid.device.bmap.tracks-pages")
def balloon(j: Judgement) -> None:
    from virtio_balloon_proto import trace as tr

    obs = j.observations("state")
    if not any("balloon" in ev.value for _, ev in obs):
        return
    inflate_c, deflate_c = page_clauses(j)
    ram = j.ram()
    required = PageSet.empty()
    uncertain = PageSet.empty()
    deflated = PageSet.empty()
    flying: dict[int, PageSet] = {}
    malformed: list[PageSet] = []
    outside = PageSet.empty()
    for i, ev in enumerate(j.events, start=1):
        ch = j.by_avail.get(i)
        if ch is not None and ch.role in ("inflate", "deflate"):
            d = j.decoded(ch)
            if d is None:
                j.notes.append(f"event {i}: {ch.role} bytes not captured or undecodable; the "
                               "balloon is not judged from here on")
                return
            flying[ch.index] = d.pages
        ch = j.by_used.get(i)
        if ch is not None and ch.role in ("inflate", "deflate"):
            pages = flying.pop(ch.index, PageSet.empty())
            if j.malformed(ch):
                uncertain = uncertain | pages
                if ch.role == "inflate":
                    malformed.append(pages & ram)
                else:
                    required = required - pages
            elif ch.role == "inflate":
                required = required | (pages & ram)
                out = pages - ram
                uncertain = uncertain | out
                outside = outside | out
            else:
                required = required - pages
                uncertain = uncertain - pages
                deflated = deflated | pages
        if isinstance(ev, tr.ObserveEvent) and ev.what == "state" and "balloon" in ev.value:
            seen = pageset_of(ev.value["balloon"])
            if seen is None:
                j.broken(inflate_c, f"the device's observed balloon is not an extent list: "
                         f"{str(ev.value['balloon'])[:80]}", i)
                continue
            maybe = uncertain
            for p in flying.values():
                maybe = maybe | p
            j.evaluated(inflate_c)
            j.evaluated(deflate_c)
            missing = required - seen - maybe
            extra = seen - required - maybe
            if missing:
                j.broken(inflate_c, f"{len(missing)} frame(s) an acknowledged inflate named are "
                         f"not in the device's balloon (first {first_frames(missing)})", i,
                         expected=required.extents()[:64], received=seen.extents()[:64])
            if extra & deflated:
                bad = extra & deflated
                j.broken(deflate_c, f"{len(bad)} frame(s) an acknowledged deflate took back are "
                         f"still in the device's balloon (first {first_frames(bad)})", i,
                         expected=required.extents()[:64], received=seen.extents()[:64])
            if extra - deflated:
                bad = extra - deflated
                j.broken(inflate_c, f"{len(bad)} frame(s) in the device's balloon that no "
                         f"inflate named (first {first_frames(bad)})", i,
                         expected=required.extents()[:64], received=seen.extents()[:64])
            for m in malformed:
                if m:
                    j.choice("pfns.malformed-buffer",
                             "kept whole words" if m <= seen else
                             "skipped" if m.isdisjoint(seen) else "kept some words")
            malformed = []
            if outside:
                j.choice("pfns.outside-ram",
                         "ignored" if outside.isdisjoint(seen) else "recorded")
                outside = PageSet.empty()
