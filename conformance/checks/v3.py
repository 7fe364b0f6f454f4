"""The seed's misc queue (v3 and hybrid profiles): the device's request header, the driver's
answers, and the unused pages the device records -- judged per request id.

Request ids are followed on both sides:

* device side: the request the device writes into the posted 16-byte buffer carries
  ``param`` = the id the host asked for (the trace's host ``get-unused-pages`` event):
  ``v3.device.req.param-is-req-id`` (a byte-swapped param is named as such).
* driver side: every answer header carries the id of the request it answers -- the ``param``
  the device actually wrote (so a device's wrong param is never blamed on the driver); an
  answer naming an earlier, already answered request is stale (``*.driver.unused.req-id-echo``).
"""

from __future__ import annotations

import struct
from typing import Any

from virtio_balloon_proto.pageset import PageSet

from .base import Chain, Judgement, first_frames, pageset_of, register
from .wire import decoded_request, finding_result


def _is_request_buffer(ch: Chain) -> bool:
    return ch.role == "misc" and ch.segments is not None and bool(ch.writable) and not any(
        not s.writable for s in ch.segments)


def _swap64(v: int) -> int:
    return int.from_bytes(v.to_bytes(8, "little"), "big")


@register("v3.device.req.len-16", "v3.device.req.reserved-zero", "v3.device.req.unknown-cmd",
          "v3.device.req.param-is-req-id", "v3.driver.misc.req-buffer-16")
def requests(j: Judgement) -> None:
    from virtio_balloon_proto import trace as tr

    order = "<" if j.header.virtio_endian == "le" else ">"
    asked: int | None = None
    for i, ev in enumerate(j.events, start=1):
        if isinstance(ev, tr.HostEvent) and ev.action == "get-unused-pages" and (
                ev.req_id is not None):
            asked = ev.req_id
            continue
        ch = j.by_avail.get(i)
        if ch is not None and _is_request_buffer(ch):
            j.evaluated("v3.driver.misc.req-buffer-16")
            if ch.writable != 16:
                j.broken("v3.driver.misc.req-buffer-16", f"request buffer is {ch.writable} bytes",
                         i)
        ch = j.by_used.get(i)
        if ch is None or not _is_request_buffer(ch):
            continue
        j.evaluated("v3.device.req.len-16")
        if ch.used_len != 16:
            j.broken("v3.device.req.len-16", f"request used with len {ch.used_len}; the seed "
                     "driver ignores anything but 16 (misc_handle_rq)", i, expected=16,
                     received=ch.used_len)
        data = ch.used_data
        if data is None:
            continue
        if len(data) < 16:
            j.broken("v3.device.req.len-16", f"only {len(data)} request byte(s) written", i)
            continue
        req = decoded_request(j, ch)
        if req is not None:
            for f in req.findings:
                finding_result(j, f, ch, from_driver=False)
        cmd, r0, r1, r2, param = struct.unpack(f"{order}HHHHQ", data[:16])
        for clause, ok, what in (
            ("v3.device.req.reserved-zero", (r0, r1, r2) == (0, 0, 0), f"reserved {[r0, r1, r2]}"),
            ("v3.device.req.unknown-cmd", cmd == 0, f"cmd {cmd}"),
        ):
            j.evaluated(clause)
            if not ok:
                j.broken(clause, f"misc request {what}", i, received=data[:16].hex())
        if asked is not None:
            j.evaluated("v3.device.req.param-is-req-id")
            if param != asked:
                j.broken("v3.device.req.param-is-req-id",
                         f"misc request param {param:#x}, the host asked for {asked:#x}"
                         + (" (byte-swapped: the param is __virtio64 in the guest's order)"
                            if param == _swap64(asked) else ""), i,
                         expected=f"{asked:#x}", received=f"{param:#x}")


def _answer(j: Judgement, ch: Chain) -> tuple[int, int] | None:
    d = j.decoded(ch)
    if d is None or d.decoded is None:
        return None
    fields: dict[str, Any] = d.decoded.fields()
    rid = fields.get("req_id", fields.get("id"))
    flag = fields.get("flag")
    if rid is None or flag is None:
        return None
    return int(rid), int(flag)


def current_requests(j: Judgement) -> list[tuple[int, int]]:
    """(event, request id) of every request the driver received: the device-written param
    where the trace has the bytes, else the host's id."""
    from virtio_balloon_proto import trace as tr

    order = "<" if j.header.virtio_endian == "le" else ">"
    out: list[tuple[int, int]] = []
    asked: int | None = None
    for i, ev in enumerate(j.events, start=1):
        if isinstance(ev, tr.HostEvent) and ev.action == "get-unused-pages" and (
                ev.req_id is not None):
            asked = ev.req_id
        ch = j.by_used.get(i)
        if ch is not None and _is_request_buffer(ch):
            if ch.used_data is not None and len(ch.used_data) >= 16:
                out.append((i, struct.unpack(f"{order}Q", ch.used_data[8:16])[0]))
            elif asked is not None:
                out.append((i, asked))
    if not out and asked is not None:
        out.append((0, asked))
    return out


@register("v3.driver.unused.req-id-echo", "v3.driver.unused.one-done",
          "hybrid.driver.unused.id-echo", "hybrid.driver.unused.one-done")
def answers(j: Judgement) -> None:
    if j.profile not in ("v3", "hybrid"):
        return
    prefix = j.profile
    echo = "v3.driver.unused.req-id-echo" if prefix == "v3" else "hybrid.driver.unused.id-echo"
    done_c = f"{prefix}.driver.unused.one-done"
    width = 0xFFFFFFFFFFFFFFFF if prefix == "v3" else 0xFFFF
    reqs = current_requests(j)
    done: dict[int, bool] = {}
    for ch in j.chains:
        if ch.role != "misc" or _is_request_buffer(ch):
            continue
        a = _answer(j, ch)
        if a is None:
            continue
        rid, flag = a
        j.evaluated(echo)
        j.evaluated(done_c)
        earlier = [r & width for e, r in reqs if e < ch.index]
        if earlier:
            cur = earlier[-1]
            if rid != cur:
                stale = rid in earlier[:-1]
                j.broken(echo, f"answer carries request id {rid:#x}, the current request is "
                         f"{cur:#x}" + (" (stale: an earlier request's id)" if stale else ""),
                         ch.index, expected=f"{cur:#x}", received=f"{rid:#x}")
        if done.get(rid):
            j.broken(done_c, f"header after DONE for request {rid:#x}", ch.index)
        done[rid] = done.get(rid, False) or flag == 1
    answered = [r & width for _, r in reqs[:-1]]
    for rid in answered:
        if rid in done and not done[rid]:
            j.broken(done_c, f"answer to request {rid:#x} has no DONE header before the next "
                     "request")


@register("v3.device.unused.records-pages")
def unused(j: Judgement) -> None:
    from virtio_balloon_proto import trace as tr

    acked: dict[int, PageSet] = {}
    dones: dict[int, int] = {}
    flying: dict[int, tuple[int, PageSet, bool]] = {}
    for i, ev in enumerate(j.events, start=1):
        ch = j.by_avail.get(i)
        if ch is not None and ch.role == "misc" and not _is_request_buffer(ch):
            a = _answer(j, ch)
            d = j.decoded(ch)
            if a is not None and d is not None:
                flying[ch.index] = (a[0], d.pages, a[1] == 1)
        ch = j.by_used.get(i)
        if ch is not None and ch.index in flying:
            rid, pages, is_done = flying.pop(ch.index)
            acked[rid] = acked.get(rid, PageSet.empty()) | pages
            dones[rid] = dones.get(rid, 0) + (1 if is_done else 0)
        if not (isinstance(ev, tr.ObserveEvent) and ev.what == "state"
                and isinstance(ev.value.get("unused"), dict)):
            continue
        seen_pages = {int(str(k), 0): pageset_of(v) for k, v in ev.value["unused"].items()}
        raw_done = ev.value.get("unused_done", {})
        seen_done = ({int(str(k), 0): v for k, v in raw_done.items()}
                     if isinstance(raw_done, dict) else {})
        maybe: dict[int, PageSet] = {}
        maybe_done: dict[int, int] = {}
        for rid, pages, is_done in flying.values():
            maybe[rid] = maybe.get(rid, PageSet.empty()) | pages
            maybe_done[rid] = maybe_done.get(rid, 0) + (1 if is_done else 0)
        j.evaluated("v3.device.unused.records-pages")
        for rid in sorted(set(acked) | set(seen_pages)):
            want = acked.get(rid, PageSet.empty())
            got = seen_pages.get(rid) or PageSet.empty()
            extra = got - want - maybe.get(rid, PageSet.empty())
            missing = want - got
            if missing or extra:
                j.broken("v3.device.unused.records-pages",
                         f"request {rid:#x}: {len(missing)} answered page(s) not recorded, "
                         f"{len(extra)} recorded that no answer marked "
                         f"(first {first_frames(missing or extra)})", i,
                         expected=want.extents()[:64], received=got.extents()[:64])
        for rid, n in dones.items():
            got_n = int(seen_done.get(rid, 0))
            if not n <= got_n <= n + maybe_done.get(rid, 0):
                j.broken("v3.device.unused.records-pages",
                         f"request {rid:#x}: {n} DONE answer(s) used, the device counts "
                         f"{got_n}", i, expected=n, received=got_n)
