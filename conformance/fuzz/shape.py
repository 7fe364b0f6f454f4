"""What a sequence *contains*, as the finding's shape: read from its bytes, not from what the
generator meant.

The generator labels each buffer with what it set out to draw (``pfns:byte-swapped:dup``), but
after shrinking a "dup" buffer may hold one PFN and a "chained" one a single descriptor.  Two
findings are the same when the same clause breaks on minimal sequences that contain the same
kinds of things, so the shape is computed from the minimal sequence itself:

* PFN buffers (inflate/deflate): ``empty``, ``partial-word`` (length not a multiple of 4),
  ``writable`` (a device-writable descriptor), ``chained`` / ``straddle`` (several readable
  descriptors; a PFN cut across two), ``indirect``, ``oversized`` (more than Linux's 256 PFNs),
  ``dup``, ``outside-ram`` (a PFN naming no guest RAM), ``partial-group`` (a 64 KiB page's
  frames not all named);
* statistics: ``empty``, ``partial-entry``, ``linux-6.12`` (tags 10-15), ``unknown-tag``
  (tags >= 16), ``duplicate-tag``, ``chained``, ``writable``;
* free page hints: what the buffer is for the driver (``cmd-id``, ``stale-id``,
  ``replayed-id``, ``stop``: the generator's word, as only the driver's state tells them apart,
  or ``hint``), ``bad-len``, ``outside-ram``, ``unaligned``;
* reports: ``outside-ram``, ``unaligned``;
* host actions, config reads (by offset) and writes (by what they write).

Sans-IO, pure: a shape is a sorted tuple of strings.
"""

from __future__ import annotations

import struct

from .program import Avail, ConfigRead, ConfigWrite, Env, Host, Op, Program

PFNS_MAX = 256  # Linux's VIRTIO_BALLOON_ARRAY_PFNS_MAX
STATS_ENTRY = 10  # struct virtio_balloon_stat: le16 tag, le64 val


def _in_ram(env: Env, addr: int, length: int) -> bool:
    return any(a <= addr and addr + length <= a + n for a, n in env.memory)


def _pfn_traits(op: Avail, env: Env) -> list[str]:
    readable = [s for s in op.segments if not s.writable]
    data = b"".join(s.data for s in readable)
    out: list[str] = []
    if not data:
        out.append("empty")
    if len(data) % 4:
        out.append("partial-word")
    if len(readable) > 1:
        at, cut = 0, False
        for s in readable[:-1]:
            at += s.length
            cut = cut or at % 4 != 0
        out.append("straddle" if cut else "chained")
    n = len(data) // 4
    fmt = ("<" if env.little_endian else ">") + f"{n}I"
    pfns = struct.unpack(fmt, data[:n * 4]) if n else ()
    if n > PFNS_MAX:
        out.append("oversized")
    if len(set(pfns)) < len(pfns):
        out.append("dup")
    if any(not _in_ram(env, p << 12, 4096) for p in pfns):
        out.append("outside-ram")
    fpp = env.frames_per_page
    if fpp > 1 and pfns:
        groups: dict[int, int] = {}
        for p in set(pfns):
            groups[p // fpp] = groups.get(p // fpp, 0) + 1
        if any(c != fpp for c in groups.values()):
            out.append("partial-group")
    return out


def _stats_traits(op: Avail, env: Env) -> list[str]:
    readable = [s for s in op.segments if not s.writable]
    data = b"".join(s.data for s in readable)
    n = len(data) // STATS_ENTRY
    fmt = "<H" if env.little_endian else ">H"
    tags = [struct.unpack_from(fmt, data, i * STATS_ENTRY)[0] for i in range(n)]
    out: list[str] = []
    if not data:
        out.append("empty")
    if len(data) % STATS_ENTRY:
        out.append("partial-entry")
    if any(10 <= t < 16 for t in tags):
        out.append("linux-6.12")
    if any(t >= 16 for t in tags):
        out.append("unknown-tag")
    if len(set(tags)) < len(tags):
        out.append("duplicate-tag")
    if len(readable) > 1:
        out.append("chained")
    return out


def _range_traits(op: Avail, env: Env) -> list[str]:
    out: list[str] = []
    ranges = [s for s in op.segments if s.writable]
    if any(not _in_ram(env, s.addr, s.length) for s in ranges):
        out.append("outside-ram")
    if any(s.addr % 4096 or s.length % 4096 for s in ranges):
        out.append("unaligned")
    return out


def op_shape(op: Op, env: Env) -> str:
    """One operation's shape, e.g. ``inflate:pfns:chained:outside-ram``."""
    if isinstance(op, Host):
        return f"host:{op.kind}"
    if isinstance(op, ConfigRead):
        return f"config-read@{op.offset}"
    if isinstance(op, ConfigWrite):
        return f"config-write:{op.label}"
    assert isinstance(op, Avail)
    traits: list[str]
    if op.role in ("inflate", "deflate"):
        kind, traits = "pfns", _pfn_traits(op, env)
    elif op.role == "stats":
        kind, traits = "stats", _stats_traits(op, env)
    elif op.role == "free_page":
        kind = op.label.split(":", 1)[0]
        if kind == "hint":
            traits = _range_traits(op, env)
        else:
            length = sum(s.length for s in op.segments if not s.writable)
            traits = ["bad-len"] if length != 4 else []
    else:
        kind, traits = "report", _range_traits(op, env)
    if op.role != "reporting" and kind != "hint" and any(s.writable for s in op.segments):
        traits.append("writable")
    if op.indirect and env.indirect:
        traits.append("indirect")
    return ":".join([op.role, kind, *sorted(set(traits))])


def shape(program: Program) -> tuple[str, ...]:
    """The sorted set of the operation shapes of ``program`` (its usable operations)."""
    p = program.usable()
    return tuple(sorted({op_shape(o, p.env) for o in p.ops}))


def covers(small: tuple[str, ...], big: tuple[str, ...]) -> bool:
    """Does a program of shape ``big`` contain everything a (minimal) program of shape ``small``
    has: for each of ``small``'s operations one of the same kind with at least its traits?"""
    parts = [(b.split(":")[:2], set(b.split(":")[2:])) for b in big]
    for s in small:
        head, traits = s.split(":")[:2], set(s.split(":")[2:])
        if not any(h == head and traits <= t for h, t in parts):
            return False
    return True
