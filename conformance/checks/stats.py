"""Memory statistics (VIRTIO 1.2 5.5.6.3): one buffer at a time (driver), the device uses the
held buffer to request statistics (when -- and whether -- it asks is its own choice), and the
statistics it reports are the driver's.

Choices recorded:

* ``stats.unknown-tags``: tags the spec does not define (it defines 0-9 through VIRTIO 1.4;
  Linux 6.12 sends 10-15): "The device MUST ignore entries with tag values that it does not
  recognize" (5.5.6.3.2) -- a device that knows them may report them, one that does not must
  not choke on them.  ``not reported`` or ``reported``; either way the buffer must come back.
* ``stats.request-trigger``: ``host request`` (the device used the held buffer after the host
  asked for statistics), ``own timer`` (it asked with no host request: a polling interval) or
  ``not when asked`` (it held the buffer although the host asked).  The host's request is the
  harness's (conform run's ``stats-poll``, a trace's host ``stats-request``), outside the spec:
  5.5.6.3 "communication is driven by the device", so every one of the three passes
  (``suite.device.stats.request-by-use`` is a MAY: the third is a note).
* ``stats.tags-reported``: which defined tags the device reports (a device recognises the tags
  of its spec version; 1.0 defined 0-5).  A reported value must be the driver's value from the
  buffer the device last consumed (or a newer one).
"""

from __future__ import annotations

from typing import Any

from .base import Chain, Judgement, register

SPEC_TAGS = range(10)  # VIRTIO 1.2-1.4 5.5.6.3: SWAP_IN 0 ... HTLB_PGFAIL 9


def entries(j: Judgement, ch: Chain) -> dict[int, int]:
    d = j.decoded(ch)
    if d is None or d.decoded is None:
        return {}
    out: dict[int, int] = {}
    for e in getattr(d.decoded.message, "entries", ()):
        out[int(e.tag)] = int(e.val)
    return out


@register("spec.driver.stats.one-buffer")
def one_buffer(j: Judgement) -> None:
    if not j.sees("used"):
        # a format 1.2 window without used elements: a buffer the device used unseen would
        # look held forever (issue 14: what was not captured is never blamed)
        if any(c.role == "stats" for c in j.chains):
            j.notes.append("used elements not captured (trace window): "
                           "spec.driver.stats.one-buffer not judged")
        return
    for ch in j.chains:
        if ch.role != "stats":
            continue
        j.evaluated("spec.driver.stats.one-buffer")
        # a buffer a device reset dropped is no longer available (2.4.1)
        held = [c for c in j.chains if c.role == "stats" and c.index < ch.index
                and (c.used_at is None or c.used_at > ch.index)
                and (c.reset_at is None or c.reset_at > ch.index)]
        if held:
            j.broken("spec.driver.stats.one-buffer",
                     f"a second stats buffer (head {ch.head}) while head {held[0].head} (event "
                     f"{held[0].index}) is still available", ch.index)


@register("suite.device.stats.request-by-use")
def request_by_use(j: Judgement) -> None:
    """When the device asks for statistics is its own business: VIRTIO 1.2 5.5.6.3 "the
    communication is driven by the device ... 1. The device uses the buffer"; QEMU
    (guest-stats-polling-interval) and Firecracker (stats_polling_interval_s) ask on a timer.
    So a use with no host stats request before it is an allowed choice (``stats.request-trigger
    = own timer``), recorded when the trace records host requests at all, and so is a buffer
    held although the host asked (``not when asked``, a MAY note: queues.acks)."""
    requests = j.host_requests("stats-request")
    if not requests:
        return
    stats = [c for c in j.chains if c.role == "stats"]
    for ch in stats:
        if ch.used_at is None:
            continue
        j.evaluated("suite.device.stats.request-by-use")
        asked = any(ch.index < r < ch.used_at for r in requests)
        superseded = any(ch.index < c.index < ch.used_at for c in stats)
        if superseded:
            continue  # given back when the next buffer came, not a request (returns-superseded)
        j.choice("stats.request-trigger", "host request" if asked else "own timer")


@register("spec.device.stats.records-values", "spec.device.stats.ignores-unknown-tag",
          "spec.device.stats.legacy-ignore-first")
def values(j: Judgement) -> None:
    from virtio_balloon_proto import trace as tr

    stats = [c for c in j.chains if c.role == "stats"]
    # the first buffer after device initialization: after the trace's start at reset, and
    # after every device reset inside the trace
    starts = ([0] if j.from_reset else []) + j.resets
    firsts = {min((c.index for c in stats if c.index > r), default=0) for r in starts} - {0}
    legacy_first = bool(firsts) and "VERSION_1" not in j.negotiated
    for i, ev in enumerate(j.events, start=1):
        if not (isinstance(ev, tr.ObserveEvent) and ev.what == "state"
                and isinstance(ev.value.get("stats"), dict)):
            continue
        seen: dict[int, Any] = {}
        for k, v in ev.value["stats"].items():
            try:
                seen[int(k)] = v
            except ValueError:
                continue
        posted = [c for c in stats if c.index < i and c.segments is not None]
        if not posted:
            continue
        consumed = [c for c in posted if c.used_at is not None and c.used_at < i]
        if legacy_first and consumed and consumed[-1].index in firsts:
            # 5.5.6.3.3 "When using the legacy interface, the device SHOULD ignore all values
            # in the first buffer in the statsq supplied by the driver after device
            # initialization": its values are not judged; whether it did is the profile's
            sent = entries(j, consumed[-1])
            j.evaluated("spec.device.stats.legacy-ignore-first")
            j.choice("stats.legacy-first-buffer",
                     "recorded" if sent and any(seen.get(t) == v for t, v in sent.items())
                     else "ignored")
            continue
        start = posted.index(consumed[-1]) if consumed else 0
        sources = [entries(j, c) for c in posted[start:]]
        if consumed and sources and not any(sources):
            continue
        j.evaluated("spec.device.stats.records-values")
        wrong: dict[int, tuple[Any, Any]] = {}
        for tag, val in seen.items():
            allowed = {s[tag] for s in sources if tag in s}
            if allowed and val not in allowed:
                wrong[tag] = (val, sorted(allowed))
            elif not allowed and not any(tag in entries(j, c) for c in posted):
                wrong[tag] = (val, "no buffer carried this tag")
        if wrong:
            j.broken("spec.device.stats.records-values",
                     "reported statistics are not the driver's: " + ", ".join(
                         f"tag {t} = {v} (driver: {a})" for t, (v, a) in sorted(wrong.items())),
                     i, expected={t: a for t, (_, a) in wrong.items()},
                     received={t: v for t, (v, _) in wrong.items()})
        if consumed:
            sent = entries(j, consumed[-1])
            unknown = [t for t in sent if t not in SPEC_TAGS]
            if unknown:
                j.evaluated("spec.device.stats.ignores-unknown-tag")
                j.choice("stats.unknown-tags", "reported" if any(t in seen for t in unknown)
                         else "not reported")
            known = sorted(t for t in sent if t in SPEC_TAGS and t in seen)
            j.choice("stats.tags-reported", _ranges(known) if known else "none")
            defined = [t for t in sent if t in SPEC_TAGS]
            if defined and not known:
                # "devices omit unsupported statistics" (5.5.6.3): a device may know none of
                # the tags this driver sent -- a note, never a failure
                note = (f"event {i}: the device reports none of the {len(defined)} defined "
                        f"tag(s) {_ranges(sorted(defined))} of the buffer it consumed "
                        f"(event {consumed[-1].index}; allowed: devices omit unsupported "
                        "statistics)")
                if note not in j.notes:
                    j.notes.append(note)


def _ranges(tags: list[int]) -> str:
    out: list[str] = []
    for t in tags:
        if out and "-" in out[-1] and int(out[-1].split("-")[1]) == t - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{t}"
        elif out and "-" not in out[-1] and int(out[-1]) == t - 1:
            out[-1] = f"{out[-1]}-{t}"
        else:
            out.append(str(t))
    return ",".join(out)


@register("spec.driver.stats.same-subset")
def same_subset(j: Judgement) -> None:
    """VIRTIO 1.2 5.5.6.3.1 (same 1.4, master): "Driver MUST supply the same subset of
    statistics in all buffers submitted to the statsq."  (The order may differ: "Driver MAY
    supply struct virtio_balloon_stat entries ... in any order".)

    Compared per device life (a status write of 0 starts a new one; judged only when the trace
    captured status records, else a reset between two buffers could not be seen): the tag set
    of each buffer whose bytes were captured and which breaks no driver MUST of its own
    (malformed buffers are judged by their wire clauses).  The first buffer after
    initialization is exempt on every interface: the spec's own initialization adds it empty
    (5.5.2 "Add one empty buffer to the stats virtqueue"; 5.5.6.3 "The channel becomes active at
    driver initialization time when the driver adds an empty buffer"; Linux fills it instead),
    and on legacy its values may be garbage (5.5.6.3.3 "Historically, drivers supplied an
    uninitialized buffer").  In a window that starts mid-life the first buffer seen may be that
    one, so it is exempt too."""
    from virtio_balloon_proto import trace as tr

    clause = "spec.driver.stats.same-subset"
    if not j.sees("status"):
        if sum(1 for c in j.chains if c.role == "stats") > 1:
            j.notes.append("stats subsets not compared: the trace did not capture status "
                           "records (a reset between two buffers would not be seen)")
        return
    first_in_life = True
    ref: tuple[Chain, frozenset[int]] | None = None
    for i, ev in enumerate(j.events, start=1):
        if isinstance(ev, tr.StatusEvent) and ev.value == 0:
            first_in_life, ref = True, None  # device reset: the driver initializes again
            continue
        ch = j.by_avail.get(i)
        if ch is None or ch.role != "stats":
            continue
        exempt, first_in_life = first_in_life, False
        d = j.decoded(ch)
        if exempt or ch.segments is None or d is None or d.decoded is None or j.malformed(ch):
            continue  # exempt, not captured, or judged by its own wire clauses
        tags = frozenset(int(e.tag) for e in getattr(d.decoded.message, "entries", ()))
        j.evaluated(clause)
        if ref is None:
            ref = (ch, tags)
            continue
        if tags != ref[1]:
            gone, extra = sorted(ref[1] - tags), sorted(tags - ref[1])
            j.broken(clause, f"stats head {ch.head} (event {ch.index}) supplies tags "
                     f"{_ranges(sorted(tags)) or 'none'}, the buffer of event {ref[0].index} "
                     f"supplied {_ranges(sorted(ref[1])) or 'none'}"
                     + (f" (missing {_ranges(gone)})" if gone else "")
                     + (f" (new {_ranges(extra)})" if extra else ""), ch.index,
                     expected=sorted(ref[1]), received=sorted(tags))
