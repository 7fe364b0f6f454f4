"""Queues and rings: used ids and lengths (VIRTIO 1.2 2.7.8), every chain acknowledged, the
queue layout a device exposes, the transport (a live device that fails to answer).

Choices recorded (the spec leaves them open):

* ``queues.numbering``: ``negotiated`` (indices compacted over the negotiated features, as
  Linux's virtio core assigns them), ``offered`` (compacted over the offered features: QEMU,
  crosvm, Firecracker), ``fixed`` (5.5.2's list numbers), or the map itself.  VIRTIO 1.2 5.5.2
  lists "0 inflateq ... 4 reporting_vq" and says a queue "only exists if" its feature is set;
  whether the numbers stay fixed or are compacted is not said (mst, lore
  cover.1720611677.git.mst@redhat.com, 2024).  A run replays each buffer on the queue the
  device has for its role; the model is recorded, not failed.  A map matching none of the three
  (inflateq not 0, deflateq not 1, roles out of 5.5.2's order) fails suite.device.queue-layout.
* ``used-len.<role>``: used len of a device-writable chain that the device did not fill
  (reporting, hinting): ``0`` or ``bytes of the buffers``.  2.7.8.2 (device): "The device
  MUST write at least len bytes to descriptor, beginning at the first device-writable buffer,
  prior to updating the used idx.  The device MAY write more than len bytes to descriptor";
  5.5.6 does not say what a reporting/hinting device writes (it changes page contents, which
  cloud-hypervisor counts as written: virtio-spec #242).  So 0 and any len up to the writable
  bytes are allowed; spec.device.used.len-written fails above them, and on a reporting chain
  whose first len bytes' frames the device visibly kept (a ``reported`` observation without
  them): len > 0 claims it wrote them, and a driver may take that as "zeroed".
"""

from __future__ import annotations

from virtio_balloon_proto.errors import VBProtoError
from virtio_balloon_proto.findings import UNKNOWN_STATS_TAG
from virtio_balloon_proto.pageset import PageSet
from virtio_balloon_proto.profiles import get_profile

from ..heads import RING_FULL
from .base import Chain, Judgement, first_frames, pageset_of, register

#: the clause a missing acknowledgement breaks, by queue role
ACK_CLAUSE = {
    "inflate": "spec.device.inflate.acks-buffer",
    "deflate": "spec.device.deflate.acks-buffer",
    "stats": "suite.device.stats.request-by-use",
    "free_page": "spec.device.hint.acks-buffers",
    "reporting": "spec.device.reporting.acks-buffer",
    "misc": "v3.device.misc.acks-answer",
}


@register("spec.device.used.id-is-head")
def used_ids(j: Judgement) -> None:
    for ch in j.chains:
        if ch.used:
            j.evaluated("spec.device.used.id-is-head")
    if j.stray_used and not j.sees("avail"):
        # a format 1.2 window that did not capture avail elements: every used element names a
        # chain the trace could not show (issue 14: what was not captured is never blamed)
        j.notes.append("avail elements not captured (trace window): used ids not judged")
        return
    window = not j.from_reset
    for i, role, head in j.stray_used:
        # after a device reset inside the trace everything is known again (2.4.1: no queue
        # activity after a reset until the driver re-initializes the device)
        if window and not any(r < i for r in j.resets) and not any(
                c.role == role and c.head == head and c.index < i for c in j.chains):
            # the window starts mid-life: this chain was made available before it
            j.notes.append(f"event {i}: used id {head} on {role} names a chain made available "
                           "before the trace starts (not judged)")
            continue
        j.evaluated("spec.device.used.id-is-head")
        j.broken("spec.device.used.id-is-head",
                 f"used id {head} on {role} names no chain that is available and not yet used",
                 i, expected=sorted({c.head for c in j.chains if c.role == role and not c.used
                                     and c.index < i}), received=head)


@register("spec.device.used.len-written")
def used_lengths(j: Judgement) -> None:
    for ch in j.chains:
        if not ch.used or ch.used_len is None or ch.segments is None:
            continue
        if ch.guessed:
            # no used ids: which of several outstanding chains this len belongs to is unknown
            note = ("used elements without ids while several chains were outstanding: their "
                    "lengths are not judged (spec.device.used.len-written)")
            if note not in j.notes:
                j.notes.append(note)
            continue
        cap = ch.writable
        j.evaluated("spec.device.used.len-written")
        if ch.used_len > cap:
            j.broken("spec.device.used.len-written",
                     f"{ch.role} head {ch.head}: used len {ch.used_len} but the chain has {cap} "
                     "device-writable byte(s) (2.7.8.2: the device MUST write at least len "
                     "bytes)", ch.used_at, expected=f"len <= {cap}", received=ch.used_len)
        elif cap and ch.role == "reporting" and ch.used_len and (kept := _kept(j, ch)):
            # len = bytes is truthful only if the device discarded the pages (they read zero):
            # a driver may take used len as "the device zeroed it" (mst's vhost 4276165a)
            j.broken("spec.device.used.len-written",
                     f"reporting head {ch.head}: used len {ch.used_len} says the device wrote "
                     f"the first {ch.used_len} byte(s), but it kept {len(kept)} of their "
                     f"frame(s) (first {first_frames(kept)}; 2.7.8.2: 'The device MUST write "
                     "at least len bytes to descriptor')", ch.used_at,
                     expected="len 0, or the pages discarded", received=ch.used_len)
        elif cap and ch.role in ("reporting", "free_page"):
            j.choice(f"used-len.{ch.role}",
                     "0" if ch.used_len == 0 else
                     "bytes of the buffers" if ch.used_len == cap else f"{ch.used_len} of {cap}")


def _kept(j: Judgement, ch: Chain) -> PageSet:
    """Frames of the first ``used_len`` device-writable bytes of a reporting chain that the
    device's next ``reported`` observation does not show discarded (empty: unknown or none)."""
    after = [ev for i, ev in j.observations("state")
             if ch.used_at is not None and i > ch.used_at and "reported" in ev.value]
    seen = pageset_of(after[0].value["reported"]) if after else None
    if seen is None or ch.used_len is None:
        return PageSet.empty()
    left, written = ch.used_len, PageSet.empty()
    for s in ch.segments or ():
        if not s.writable or left <= 0:
            continue
        n = min(left, s.length)
        first, last = s.addr // 4096, (s.addr + n - 1) // 4096
        written = written | PageSet.from_range(first, last - first + 1)
        left -= n
    return written - seen


REQUEST_BY_USE = ACK_CLAUSE["stats"]
#: the words of conform run's gap observation for a stats avail it did not replay because the
#: device still held the head (runner.Runner.record)
HELD_HEAD = "not replayed: the device still holds this head"


@register(*sorted(set(ACK_CLAUSE.values()) | {"spec.device.malformed.acks-buffer",
                                               "spec.device.stats.returns-superseded",
                                               "spec.device.stats.ignores-unknown-tag"}))
def acks(j: Judgement) -> None:
    """Every chain is used.  A chain outstanding at the end of a captured window is in flight
    (no verdict); after an ``end`` observation (a live run) it will never be used."""
    stats = [c for c in j.chains if c.role == "stats"]
    latest_stats = stats[-1].index if stats else None

    def held(c: Chain) -> bool:
        """Kept by design: the latest stats buffer, the v3 request buffer."""
        return (c.role == "stats" and c.index == latest_stats) or (
            c.role == "misc" and c.segments is not None and bool(c.writable)
            and all(s.writable for s in c.segments))

    if not j.sees("used"):
        # a format 1.2 window that did not capture used elements: an unused chain says nothing
        # about the device (issue 14: what was not captured is not checkable, never blamed)
        j.notes.append("used elements not captured (trace window): acknowledgements not judged")
        return
    dropped = [c for c in j.chains if c.reset_at is not None]
    if dropped:
        j.notes.append("dropped by a device reset before being used (VIRTIO 1.2 2.4.1; not "
                       "judged): " + ", ".join(f"{c.role} head {c.head} (event {c.index}, reset "
                                              f"at event {c.reset_at})" for c in dropped[:8]))
    if not j.quiesced:
        flying = [c for c in j.chains if not c.used and not held(c) and c.reset_at is None]
        if flying:  # issue 14: chains in flight at a cut end are reported as in flight
            j.notes.append("in flight when the trace ends (not judged): " + ", ".join(
                f"{c.role} head {c.head} (event {c.index})" for c in flying[:8]))
        for c in j.chains:
            if c.used:
                j.evaluated(ACK_CLAUSE.get(c.role, "spec.device.used.id-is-head"))
        return
    for _, ev in j.observations("gap"):
        msg = str(ev.value.get("message", ""))
        if HELD_HEAD in msg or RING_FULL in msg:
            # conform run did not post a stats head the device still held, or found every
            # head of a ring held (heads.py): the buffer was not made available, no verdict
            j.notes.append(msg)
    broken_at = error_state(j)
    requests = j.host_requests("stats-request")
    for c in j.chains:
        if c.segments is None or c.reset_at is not None:
            continue  # not replayed / dropped by a reset
        if broken_at is not None and (c.used_at is None or c.used_at > broken_at) and (
                c.index <= broken_at or not c.used):
            continue  # the device is in an error state (judged by error_state)
        if c.role == "stats" and not j.malformed(c):
            _stats_ack(j, c, stats, requests)
            continue
        if held(c):
            continue  # the v3 request buffer: held by design
        clause = ACK_CLAUSE.get(c.role, "spec.device.used.id-is-head")
        if j.malformed(c):
            clause = "spec.device.malformed.acks-buffer"
        j.evaluated(clause)
        if not c.used:
            j.broken(clause, f"{c.role} head {c.head} (event {c.index}) was never used"
                     + (" -- the buffer is malformed, but the driver still waits for it"
                        if clause == "spec.device.malformed.acks-buffer" else ""),
                     c.index, expected=f"used id {c.head}", received="not used")


def _next_stats(c: Chain, stats: list[Chain], end: int) -> int:
    return min((o.index for o in stats if o.index > c.index), default=end)


def _asked_while_held(c: Chain, stats: list[Chain], requests: list[int], end: int) -> bool:
    """Did the host ask for statistics while the device held ``c`` (after it was made
    available, before it was used, and before the driver made the next one available)?"""
    nxt = _next_stats(c, stats, end)
    until = min(nxt, c.used_at) if c.used_at is not None else nxt
    return any(c.index < r < until for r in requests)


def _used_when_asked(c: Chain, stats: list[Chain], requests: list[int], end: int) -> bool:
    """Was ``c`` used after a host request and before a next buffer superseded it (a use on
    request, not a superseded buffer given back)?"""
    return (c.used_at is not None and c.used_at < _next_stats(c, stats, end)
            and any(c.index < r < c.used_at for r in requests))


def _stats_ack(j: Judgement, c: Chain, stats: list[Chain], requests: list[int]) -> None:
    """A stats buffer's fate.  VIRTIO 1.2/1.4 5.5.6.3: "The stats virtqueue is atypical
    because communication is driven by the device (not the driver)" -- the device uses the
    held buffer when *it* wants statistics; the host's request (conform run's stats-poll, a
    trace's host stats-request) is the harness's, outside the spec.  So a buffer held although
    the host asked breaks no spec sentence: suite.device.stats.request-by-use is a MAY (a
    note) and the choice stats.request-trigger says ``not when asked``.  A buffer the driver
    superseded (it broke 5.5.6.3.1) and the device never gave back is
    spec.device.stats.returns-superseded's (suite SHOULD)."""
    end = len(j.events) + 1
    latest = c is stats[-1]
    asked = _asked_while_held(c, stats, requests, end)
    if latest and not asked:
        return  # held by design until the device wants statistics
    if c.used:
        j.evaluated(REQUEST_BY_USE if asked else "spec.device.stats.returns-superseded")
        return
    if asked:
        j.evaluated(REQUEST_BY_USE)
        j.choice("stats.request-trigger", "not when asked")
        j.broken(REQUEST_BY_USE, f"stats head {c.head} (event {c.index}) was held although the "
                 "host asked for statistics (allowed: VIRTIO 5.5.6.3, 'communication is driven "
                 "by the device')", c.index)
    if not latest:
        j.evaluated("spec.device.stats.returns-superseded")
        j.broken("spec.device.stats.returns-superseded",
                 f"stats head {c.head} (event {c.index}) was never used -- a second buffer "
                 "superseded it; the driver still waits for it", c.index,
                 expected=f"used id {c.head}", received="not used")
    if asked and _has_unknown_tags(j, c):
        _judge_unknown_tags(j, c, stats, requests, end)


def _has_unknown_tags(j: Judgement, c: Chain) -> bool:
    return any(getattr(f, "rule", "") == UNKNOWN_STATS_TAG for f in j.wire_findings(c))


def _judge_unknown_tags(j: Judgement, c: Chain, stats: list[Chain], requests: list[int],
                        end: int) -> None:
    """5.5.6.3.2 "Within an output buffer submitted to the statsq, the device MUST ignore
    entries with tag values that it does not recognize": a buffer with unknown tags must fare
    as one without them.  Since when the device asks is its own choice, a buffer with unknown
    tags held although the host asked shows a breach only against a contrast in the same
    device life: an earlier buffer without unknown tags that the device did use when the host
    asked.  Without that contrast the device may simply not be asking: a note, no verdict."""
    life = max((r for r in j.resets if r < c.index), default=0)
    contrast = next((o for o in reversed(stats) if life < o.index < c.index
                     and _used_when_asked(o, stats, requests, end)
                     and not _has_unknown_tags(j, o)), None)
    if contrast is None:
        note = (f"stats head {c.head} (event {c.index}) carries tags the spec does not define "
                "and was held although the host asked; no earlier buffer of this device life "
                "was used on a request, so whether the tags were ignored is not judged "
                "(spec.device.stats.ignores-unknown-tag; VIRTIO 5.5.6.3: the device chooses "
                "when to ask)")
        if note not in j.notes:
            j.notes.append(note)
        return
    j.evaluated("spec.device.stats.ignores-unknown-tag")
    j.broken("spec.device.stats.ignores-unknown-tag",
             f"stats head {c.head} (event {c.index}) carries tags the spec does not define and "
             "was never used although the host asked, while the buffer without them at event "
             f"{contrast.index} was used when asked (event {contrast.used_at}): the unknown "
             "entries were not ignored", c.index, expected=f"used id {c.head}",
             received="not used")


@register("suite.device.transport", "spec.device.stats.ignores-unknown-tag")
def transport(j: Judgement) -> None:
    if j.observations("device"):
        j.evaluated("suite.device.transport")
    for i, ev in j.observations("error"):
        msg = str(ev.value.get("message", ""))
        at = _invalid_reset_before(j, i)
        if at is not None:
            # the device chose an error state on an invalid buffer (allowed: error_state);
            # what fails after it is not the device's fault: VIRTIO 1.2 2.1.1 "The driver
            # SHOULD NOT rely on completion of operations of a device if DEVICE_NEEDS_RESET
            # is set" (the replay could not go on, e.g. no free descriptor was left) -- also
            # when the buffer it failed on has unknown stats tags (found by the fuzzer)
            j.notes.append(f"event {i}: {msg} -- not judged: the device entered an error "
                           f"state on an invalid buffer (event {at}) before")
            continue
        last = max((c for c in j.chains if c.index < i), key=lambda c: c.index, default=None)
        if last is not None and last.role == "stats" and any(
                getattr(f, "rule", "") == UNKNOWN_STATS_TAG
                for f in j.wire_findings(last)):
            j.broken("spec.device.stats.ignores-unknown-tag",
                     f"device failed on a stats buffer with unknown tags: {msg}", i)
        j.broken("suite.device.transport", msg, i)


def _invalid_reset_before(j: Judgement, i: int) -> int | None:
    """The event of a ``needs_reset`` observation before ``i`` that followed an invalid buffer
    (outside guest RAM, or breaking a driver MUST), if any."""
    at = next((k for k, ev in j.observations("state")
               if k < i and ev.value.get("needs_reset")), None)
    if at is None:
        return None
    last = max((c for c in j.chains if c.index < at), key=lambda c: c.index, default=None)
    if last is not None and (_outside_ram(j, last) or j.malformed(last)):
        return at
    return None


def numbering_map(profile: str, offered: int, accepted: int, model: str) -> dict[str, int]:
    """role -> index under one numbering model ({} when the profile does not define it)."""
    try:
        return {r.value: q for r, q in
                get_profile(profile).queue_index(offered, accepted, model).items()}
    except VBProtoError:  # a model the profile does not define
        return {}


def numbering(profile: str, offered: int, accepted: int, queues: dict[str, int]) -> str:
    for model in ("negotiated", "offered", "fixed"):
        m = numbering_map(profile, offered, accepted, model)
        if m and all(m.get(r) == q for r, q in queues.items()):
            return model
    return "custom " + ",".join(f"{r}={q}" for r, q in sorted(queues.items(), key=lambda x: x[1]))


@register("suite.device.queue-layout", "suite.device.feature-negotiation",
          "spec.device.config.size")
def device_setup(j: Judgement) -> None:
    """What the device exposed at negotiation (a live run's ``device`` observation)."""
    info = j.device_info
    if info is None:
        return
    prof = get_profile(j.profile)
    offered = int(info.get("offered", 0))
    accepted = int(info.get("accepted", 0))
    queues = {str(k): int(v) for k, v in dict(info.get("queues", {})).items()}
    j.evaluated("suite.device.feature-negotiation")
    j.evaluated("suite.device.queue-layout")
    used_roles = sorted({c.role for c in j.chains})
    lacking = [r for r in used_roles if r not in queues]
    if lacking:
        j.broken("suite.device.queue-layout", f"no queue for role(s) {lacking}",
                 None, expected=used_roles, received=sorted(queues))
    model = numbering(j.profile, offered, accepted, queues)
    if model.startswith("custom"):
        # the numbering is open (negotiated / offered / fixed), but in every reading of VIRTIO
        # 1.2 5.5.2 ("0 inflateq 1 deflateq 2 statsq 3 free_page_vq 4 reporting_vq") inflateq
        # is 0, deflateq 1, and the rest follow in that order
        j.broken("suite.device.queue-layout",
                 f"queue map {model[7:]} matches none of the numberings VIRTIO 1.2 5.5.2 allows "
                 "(compacted over the negotiated or the offered features, or fixed)", None,
                 expected={m: numbering_map(j.profile, offered, accepted, m)
                           for m in ("negotiated", "offered", "fixed")},
                 received=queues)
    else:
        j.choice("queues.numbering", model)
    size = info.get("config_size")
    if isinstance(size, int):
        # VIRTIO 1.2 5.5.4: "free_page_hint_cmd_id is available if VIRTIO_BALLOON_F_FREE_PAGE_HINT
        # has been negotiated ... poison_val is available if VIRTIO_BALLOON_F_PAGE_POISON has
        # been negotiated": the size needed is the negotiated (accepted) features'; any larger
        # size is allowed (crosvm: 20 bytes)
        def need_of(names: list[str]) -> int:
            return 16 if "PAGE_POISON" in names else 12 if "FREE_PAGE_HINT" in names else 8

        acc_names, off_names = prof.names(accepted), prof.names(offered)
        need = need_of(acc_names)
        j.evaluated("spec.device.config.size")
        j.choice("config.size", f"{size} bytes")
        if size < need:
            j.broken("spec.device.config.size",
                     f"config space is {size} bytes; the negotiated features "
                     f"{[n for n in acc_names if n in ('FREE_PAGE_HINT', 'PAGE_POISON')]} need "
                     f"{need} (VIRTIO 1.2 5.5.4: free_page_hint_cmd_id at 8, poison_val at 12)",
                     None, expected=f">= {need}", received=size)
        elif size < need_of(off_names):
            j.notes.append(f"config space is {size} bytes: too small for the offered features "
                           f"{[n for n in off_names if n in ('FREE_PAGE_HINT', 'PAGE_POISON')]}"
                           ", but the driver did not accept them (5.5.4 needs only the "
                           "negotiated ones)")


def _outside_ram(j: Judgement, c: Chain) -> bool:
    ram = j.ram()
    for s in c.segments or ():
        first, end = s.addr // 4096, (s.addr + max(s.length, 1) - 1) // 4096 + 1
        if s.addr and not PageSet.from_range(first, end - first) <= ram:
            return True
    d = j.decoded(c)
    return d is not None and bool(d.pages) and not d.pages <= ram


def error_state(j: Judgement) -> int | None:
    """The event where the device set DEVICE_NEEDS_RESET (a ``state`` observation with
    ``needs_reset``), if it did.  VIRTIO 1.2 2.1.2: "The device SHOULD set DEVICE_NEEDS_RESET
    when it enters an error state that a reset is needed" -- allowed when the driver's last
    buffer was invalid (it names memory outside the guest's RAM, or breaks a driver MUST); the
    choice is recorded.  On a valid buffer it is the device's failure."""
    at = next((i for i, ev in j.observations("state") if ev.value.get("needs_reset")), None)
    if at is None:
        return None
    last = max((c for c in j.chains if c.index < at), key=lambda c: c.index, default=None)
    if last is not None and (_outside_ram(j, last) or j.malformed(last)):
        why = "outside guest RAM" if _outside_ram(j, last) else "malformed"
        j.choice("error-state", f"needs reset on a {last.role} buffer {why}")
    else:
        j.evaluated("suite.device.transport")
        j.broken("suite.device.transport",
                 "the device set DEVICE_NEEDS_RESET after a valid buffer"
                 + (f" ({last.role} head {last.head}, event {last.index})" if last else ""), at)
    return at
