"""Wire findings: what the ring walker and the codec's decoders say about the driver's bytes of
every chain -- exactly the findings ``vbproto decode`` prints for the same trace (one source).

A finding about a *device* clause in bytes the driver wrote is a note for the device, not a
driver failure: it is recorded as a pass with the message, and the device's reaction is judged
by the family that owns the clause.  A ``note.*`` finding (a stats tag the spec does not
define: ``note.stats.unknown-tag``) blames nobody and is no clause verdict at all: it becomes
one note per kind, naming how many buffers carry it and the first.
"""

from __future__ import annotations

from typing import Any

from virtio_balloon_proto.codecs.decode import DecodedBuffer
from virtio_balloon_proto.findings import is_note

from ..verdicts import ClauseResult, Verdict
from .base import Chain, Judgement, register


def finding_result(j: Judgement, finding: Any, chain: Chain, from_driver: bool = True) -> None:
    rule = getattr(finding, "rule", "")
    msg = getattr(finding, "message", str(finding))
    where = ""
    if getattr(finding, "field", None):
        where += f" field {finding.field}"
    if getattr(finding, "offset", None) is not None:
        where += f" at byte {finding.offset}"
    if is_note(rule):
        return  # collected by wire_findings (one note per kind)
    clause = j.catalog.find(rule)
    if clause is None:
        j.broken(rule or "suite.unknown", f"(rule not in the catalog) {msg}", chain.index)
        return
    if from_driver and clause.side == "device":
        if rule not in j.results:
            j.results[rule] = ClauseResult(rule, Verdict.PASS, f"(note) {msg}", chain.index)
        return
    j.evaluated(rule)
    j.broken(rule, f"{chain.role} head {chain.head}{where}: {msg}", chain.index)


# the clauses this check reports are the catalog's ``wire = true`` ones (counted by
# Catalog.check_counts); tests/test_wire_rule_ids.py proves that flag equals what wire/ and
# codecs/ emit, both ways
#: the driver-side wire clauses the decoder of each kind checks (prefixes of clause ids)
KIND_CLAUSES = {
    "pfns": ("spec.driver.pfns.", "suite.driver.pfns.", "suite.driver.pages."),
    "bmap": ("v3.driver.bmap.", "v3.driver.pages."),
    "hybrid": ("hybrid.driver.resp.", "hybrid.driver.record.", "hybrid.driver.pages."),
    "stats": ("spec.driver.stats.len-multiple-of-10", "spec.driver.stats.duplicate-tag"),
    "hint-cmd": ("spec.driver.hint.len-4",),
}


@register()
def wire_findings(j: Judgement) -> None:
    notes: dict[str, list[tuple[Chain, str]]] = {}
    # the clauses a decoding evaluates depend on its kind and role only: found once per pair,
    # not by a walk of the catalog per chain (issue 13: 130,816 buffers of a 128 GiB guest)
    evaluates: dict[tuple[str, str], list[str]] = {}
    for ch in j.chains:
        d = j.decoded(ch)
        if d is not None:
            ids = evaluates.get((d.kind, ch.role))
            if ids is None:
                prefixes = KIND_CLAUSES.get(d.kind, ())
                if d.kind == "ranges":
                    prefixes = ("spec.driver.report.page-aligned",) if ch.role == "reporting" \
                        else ("spec.driver.hint.page-aligned",)
                ids = evaluates[(d.kind, ch.role)] = [
                    c.id for c in j.catalog
                    if c.wire and c.side == "driver" and j.profile in c.profiles and any(
                        c.id.startswith(p) for p in prefixes)]
            for cid in ids:
                j.evaluated(cid)
        for f in j.wire_findings(ch):
            finding_result(j, f, ch)
            rule = getattr(f, "rule", "")
            if is_note(rule):
                notes.setdefault(rule, []).append((ch, str(getattr(f, "message", f))))
    for rule, seen in notes.items():
        ch, msg = seen[0]
        j.notes.append(f"{rule}: {len(seen)} buffer(s), first {ch.role} head {ch.head} (event "
                       f"{ch.index}): {msg}")


def decoded_request(j: Judgement, chain: Chain) -> DecodedBuffer | None:
    """The device-written request of a used misc request buffer, decoded (v3)."""
    from virtio_balloon_proto.codecs import decode_buffer
    from virtio_balloon_proto.errors import VBProtoError

    if chain.segments is None or chain.used_data is None:
        return None
    try:
        return decode_buffer(j.profile, chain.role, list(chain.segments), j.layout(),
                             features=j.header.features_negotiated, written=chain.used_data)
    except VBProtoError:
        return None
