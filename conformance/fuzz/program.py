"""A fuzz sequence as data: the device's bring-up (:class:`Env`) and the driver's operations
(:class:`Op`), and how they become a ``vbproto-trace/1.1`` trace and a runner case.

Sans-IO: nothing here talks to a device.  A :class:`Program` is what the generator draws
(gen.py), what the shrinker cuts down (shrink.py) and what a finding is written as: its trace
(:func:`to_trace`) is an ordinary corpus trace, so ``vbproto conform run --corpus FILE``
replays exactly what the fuzzer ran (the runner builds the same :class:`~..runner.Case` from
the file that :func:`to_case` builds in memory).

Each sequence starts at device reset: status ACKNOWLEDGE|DRIVER, feature negotiation,
FEATURES_OK, the driver's poison_val write if any (VIRTIO 1.2 5.5.6.6: before DRIVER_OK),
DRIVER_OK; then the operations in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from virtio_balloon_proto.codecs import Segment
from virtio_balloon_proto.profiles import QueueRole, get_profile

VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
DESC_SIZE = 16  # sizeof(struct virtq_desc)
INDIRECT_TABLE = 0x0107_0000  # where the generated driver keeps its indirect tables
#: device-type features the generator may ask the device to offer (spec profile)
OPTIONAL_FEATURES = ("MUST_TELL_HOST", "STATS_VQ", "DEFLATE_ON_OOM", "FREE_PAGE_HINT",
                     "PAGE_POISON", "PAGE_REPORTING")
#: the queue each role needs (roles not listed always exist)
ROLE_FEATURE = {"stats": "STATS_VQ", "free_page": "FREE_PAGE_HINT",
                "reporting": "PAGE_REPORTING"}


@dataclass(frozen=True)
class Env:
    """How the device is brought up for one sequence.

    ``offered``: device-type features the device is asked to offer (the trace header's
    offered word, from which the runner derives the device options); ``wanted``: what the
    driver negotiates (a subset); ``modern``: VERSION_1 (then ``endian`` is ``le``);
    ``memory``: guest RAM as (start, size) byte regions; ``poison_val``: written to config
    before DRIVER_OK when PAGE_POISON is negotiated (None: not written).
    """

    offered: frozenset[str]
    wanted: frozenset[str]
    endian: Literal["le", "be"] = "le"
    modern: bool = True
    indirect: bool = False  # RING_INDIRECT_DESC offered and negotiated
    page_size: int = 4096
    memory: tuple[tuple[int, int], ...] = ((0, 256 << 20),)
    poison_val: int | None = None
    profile: str = "spec"

    @property
    def frames_per_page(self) -> int:
        return self.page_size // 4096

    @property
    def little_endian(self) -> bool:
        return self.endian == "le"

    def words(self) -> tuple[int, int]:
        """(offered, negotiated) feature words, transport bits included."""
        prof = get_profile(self.profile)
        transport = ["RING_EVENT_IDX"] + (["RING_INDIRECT_DESC"] if self.indirect else [])
        offered = prof.mask([*self.offered, "VERSION_1", "RING_INDIRECT_DESC", *transport])
        wanted = prof.mask([*self.wanted, *(["VERSION_1"] if self.modern else []),
                            *(["RING_INDIRECT_DESC"] if self.indirect else [])])
        return offered, wanted & offered

    def roles(self) -> list[str]:
        prof = get_profile(self.profile)
        return [r.value for r in prof.queues(self.words()[1])]

    def ram_end(self) -> int:
        return max(a + n for a, n in self.memory)

    def describe(self) -> str:
        mem = "+".join(f"{n >> 20}M@{a:#x}" for a, n in self.memory)
        return (f"{'modern' if self.modern else 'legacy'}-{self.endian} page {self.page_size} "
                f"wants {','.join(sorted(self.wanted)) or '-'} offered "
                f"{','.join(sorted(self.offered)) or '-'}{' indirect' if self.indirect else ''} "
                f"RAM {mem}" + (f" poison {self.poison_val:#x}" if self.poison_val is not None
                                else ""))


@dataclass(frozen=True)
class Avail:
    """The driver makes one chain available on ``role`` (segments in chain order)."""

    role: str
    segments: tuple[Segment, ...]
    #: what the generator meant (the finding's shape names it): e.g. "pfns", "pfns:chained",
    #: "pfns:partial-word", "stats:unknown-tag", "hint:cmd-id", "report:outside-ram"
    label: str
    indirect: bool = False  # through an indirect descriptor table (needs Env.indirect)

    def shape(self) -> str:
        return f"{self.role}:{self.label}"


@dataclass(frozen=True)
class ConfigRead:
    offset: int
    size: int

    def shape(self) -> str:
        return f"config-read@{self.offset}"


@dataclass(frozen=True)
class ConfigWrite:
    offset: int
    data: bytes
    label: str = "actual"

    def shape(self) -> str:
        return f"config-write:{self.label}"


@dataclass(frozen=True)
class Host:
    """A host action: set-target {num_pages}, stats-poll, hint-start {cmd_id}, hint-stop
    {cmd_id: 0 STOP | 1 DONE}."""

    kind: str
    params: tuple[tuple[str, int], ...] = ()

    def shape(self) -> str:
        return f"host:{self.kind}"


Op = Avail | ConfigRead | ConfigWrite | Host


@dataclass(frozen=True)
class Program:
    env: Env
    ops: tuple[Op, ...]
    #: where it came from: "seed S sequence K" (kept through shrinking)
    origin: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def with_ops(self, ops: tuple[Op, ...] | list[Op]) -> Program:
        return replace(self, ops=tuple(ops))

    def usable(self) -> Program:
        """The program without operations on queues the negotiated features do not create
        (after the shrinker dropped a feature): they cannot be replayed."""
        roles = set(self.env.roles())
        return self.with_ops(tuple(o for o in self.ops
                                   if not isinstance(o, Avail) or o.role in roles))

    def shape(self) -> tuple[str, ...]:
        return tuple(o.shape() for o in self.ops)


# --------------------------------------------------------------------------- to a trace
def _descriptors(op: Avail, head: int, indirect: bool) -> tuple[Any, ...]:
    from virtio_balloon_proto.trace import TraceDescriptor

    n = len(op.segments)
    descs: list[TraceDescriptor] = []
    if indirect:
        table = INDIRECT_TABLE + head * 0x1000
        descs.append(TraceDescriptor(table, DESC_SIZE * n, VIRTQ_DESC_F_INDIRECT, None,
                                     index=head))
        for k, s in enumerate(op.segments):
            last = k + 1 == n
            flags = (0 if last else VIRTQ_DESC_F_NEXT) | (VIRTQ_DESC_F_WRITE if s.writable
                                                          else 0)
            descs.append(TraceDescriptor(s.addr, s.length, flags, None if last else k + 1,
                                         index=k, table=table))
        return tuple(descs)
    for k, s in enumerate(op.segments):
        last = k + 1 == n
        flags = (0 if last else VIRTQ_DESC_F_NEXT) | (VIRTQ_DESC_F_WRITE if s.writable else 0)
        descs.append(TraceDescriptor(s.addr, s.length, flags, None if last else head + k + 1,
                                     index=head + k))
    return tuple(descs)


QUEUE_SIZE = 256  # the generated driver's ring size: heads are 0 .. 255


def to_trace(program: Program, *, command: str = "", provenance: str = "") -> tuple[Any, list[Any]]:
    """(TraceHeader, events) of the driver side of ``program``: what ``conform run`` replays.

    Head ids: each role's chains take descriptor ids in turn (a chain of n descriptors uses n
    ids; an indirect chain one), wrapping at :data:`QUEUE_SIZE`; a sequence never has that many
    chains outstanding on one queue, so a head is never reused while in flight.
    """
    from virtio_balloon_proto import trace as tr

    p = program.usable()
    env = p.env
    offered, negotiated = env.words()
    prof = get_profile(env.profile)
    queues = prof.queue_index(offered, negotiated, "negotiated")
    header = tr.TraceHeader(
        env.profile, offered, negotiated, env.endian, 64, env.endian, env.page_size,
        queues, "negotiated", "split",
        tr.TraceSource(tool="vbproto fuzz", command=command or None,
                       provenance=provenance or p.origin or None),
        memory=env.memory)
    events: list[Any] = [tr.StatusEvent(0), tr.StatusEvent(1), tr.StatusEvent(3),
                         tr.FeaturesEvent(offered, negotiated, True), tr.StatusEvent(11)]
    if env.poison_val is not None and "PAGE_POISON" in env.wanted:
        events.append(tr.ConfigEvent(True, 12, env.poison_val.to_bytes(4, "little")))
    events.append(tr.StatusEvent(15))
    next_id: dict[str, int] = {}
    avail_idx: dict[str, int] = {}
    for op in p.ops:
        if isinstance(op, Avail):
            role = QueueRole(op.role)
            indirect = op.indirect and env.indirect
            need = 1 if indirect else len(op.segments)
            head = next_id.get(op.role, 0)
            if head + need > QUEUE_SIZE:
                head = 0
            next_id[op.role] = (head + need) % QUEUE_SIZE
            idx = avail_idx.get(op.role, 0)
            avail_idx[op.role] = (idx + 1) & 0xFFFF
            events.append(tr.AvailEvent(
                role, queues[role], tuple(s.data for s in op.segments if not s.writable),
                tuple(s.length for s in op.segments if s.writable), id=head,
                descriptors=_descriptors(op, head, indirect), avail_idx=idx))
        elif isinstance(op, ConfigRead):
            # the bytes read are the recorded device's answer; the runner records its own
            events.append(tr.ConfigEvent(False, op.offset, bytes(op.size)))
        elif isinstance(op, ConfigWrite):
            events.append(tr.ConfigEvent(True, op.offset, op.data))
        else:
            params = dict(op.params)
            if op.kind == "set-target":
                events.append(tr.HostEvent("set-target", num_pages=params["num_pages"]))
            elif op.kind == "stats-poll":
                events.append(tr.HostEvent("stats-request"))
            else:  # hint-start / hint-stop: free-page-hint with the id the host publishes
                events.append(tr.HostEvent("free-page-hint", cmd_id=params["cmd_id"]))
    return header, events


def to_case(program: Program, case_id: str = "fuzz") -> Any:
    """The runner's case for ``program`` (as ``load_case`` would build it from its trace)."""
    from ..runner import case_from_trace

    header, events = to_trace(program)
    return case_from_trace(header, events, case_id)
