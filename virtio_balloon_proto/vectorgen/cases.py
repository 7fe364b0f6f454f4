"""Case and group records shared by the generators, and a version-proof seeded PRNG."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class Case:
    """One hand-designed vector: its slug (the last part of the stable id), what it is, the
    bytes, and what the designer expects -- the generator refuses to write a vector whose
    decoding disagrees with ``expect``/``rules``/``error`` (so the corpus cannot silently
    follow a codec regression)."""

    slug: str
    comment: str
    flags: tuple[str, ...]
    segments: tuple[bytes, ...]
    expect: str  # valid | acceptable | invalid
    rules: tuple[str, ...] = ()  # rules that must be among the findings
    error: str | None = None  # the field a DecodeError must name


@dataclass(frozen=True)
class Group:
    tag: str
    params: dict[str, Any]
    cases: list[Any] = field(default_factory=list)
    flags: tuple[str, ...] = ()  # flags every test of the group gets (BigEndian, ...)


class SplitMix64:
    """SplitMix64: the same stream on every Python and numpy version (``random`` and
    ``numpy.random`` do not promise that)."""

    def __init__(self, seed: int | str) -> None:
        self.state = (zlib.crc32(seed.encode()) if isinstance(seed, str) else seed) & MASK64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        return self.next() % n

    def sample(self, n: int, k: int) -> list[int]:
        """``k`` distinct integers below ``n``, sorted."""
        out: set[int] = set()
        while len(out) < k:
            out.add(self.below(n))
        return sorted(out)


def case(slug: str, comment: str, flags: str, data: bytes | list[bytes] | tuple[bytes, ...],
         expect: str, rules: tuple[str, ...] | str = (), error: str | None = None) -> Case:
    segs = (data,) if isinstance(data, bytes) else tuple(data)
    rs = (rules,) if isinstance(rules, str) else tuple(rules)
    return Case(slug, comment, tuple(flags.split()), segs, expect, rs, error)
