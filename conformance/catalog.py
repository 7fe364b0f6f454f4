"""The clause catalog: every rule the suite knows, by stable id, plus the errata registry.

``clauses.toml`` and ``errata.toml`` ship as package data and are read through
:mod:`importlib.resources`, so the catalog works from a wheel or a zip as well as from the
source tree.  The ring layer contributes its own ids (``virtqueue/clauses.py``); they are merged
here so there is one namespace and no second list.

Checks (functions of the runner and of the offline checker) register against clause ids with
:func:`check`; ``vbproto conform clauses`` shows how many checks each clause has, so a clause
nobody checks is visible rather than silently counted as covered.
"""

from __future__ import annotations

import importlib.resources
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from virtio_balloon_proto.errors import UsageError
from virtio_balloon_proto.profiles import PROFILES

LEVELS = ("MUST", "SHOULD", "MAY")
SIDES = ("driver", "device")
_ID_RE = re.compile(r"^[a-z0-9]+(\.[a-z0-9][a-z0-9-]*)+$")
_PACKAGE = "virtio_balloon_proto.conformance"


@dataclass(frozen=True)
class Erratum:
    id: str
    title: str
    clause: str
    source: str
    text: str
    correct: str
    evidence: tuple[str, ...]
    status: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "clause": self.clause,
            "source": self.source,
            "text": self.text,
            "correct": self.correct,
            "evidence": list(self.evidence),
            "status": self.status,
        }


@dataclass(frozen=True)
class Clause:
    id: str
    level: str
    side: str
    profiles: tuple[str, ...]
    text: str
    ref: str
    features: tuple[str, ...] = ()
    research: str | None = None
    observable: bool = True
    #: the codec's decoders emit findings with this id
    wire: bool = False
    errata: str | None = None
    #: where the clause was declared ("clauses.toml" or "virtqueue/clauses.py")
    origin: str = "clauses.toml"

    def applies(self, profile: str, negotiated: Iterable[str] | None = None) -> bool:
        """Does the clause apply to ``profile`` with these negotiated feature names?"""
        if profile not in self.profiles:
            return False
        if negotiated is None:
            return True
        have = set(negotiated)
        return all(f in have for f in self.features)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "level": self.level,
            "side": self.side,
            "profiles": list(self.profiles),
            "features": list(self.features),
            "ref": self.ref,
            "text": self.text,
            "observable": self.observable,
            "wire": self.wire,
        }
        if self.research is not None:
            out["research"] = self.research
        if self.errata is not None:
            out["errata"] = self.errata
        if self.origin != "clauses.toml":
            out["origin"] = self.origin
        return out


@dataclass
class _Registry:
    """Check functions by clause id (filled by ``@check`` at import of the checking modules)."""

    checks: dict[str, list[str]] = field(default_factory=dict)

    def add(self, clause_id: str, name: str) -> None:
        names = self.checks.setdefault(clause_id, [])
        if name not in names:
            names.append(name)


_REGISTRY = _Registry()
F = TypeVar("F", bound=Callable[..., Any])


def check(*clause_ids: str) -> Callable[[F], F]:
    """Decorator: the decorated function checks ``clause_ids``.

    The ids are validated against the catalog when :meth:`Catalog.check_counts` runs (and in
    the tests), not at import time, so importing a checking module never reads package data.
    """

    def deco(fn: F) -> F:
        name = f"{fn.__module__}.{fn.__qualname__}"
        for cid in clause_ids:
            _REGISTRY.add(cid, name)
        return fn

    return deco


def registered_checks() -> dict[str, list[str]]:
    return {k: list(v) for k, v in _REGISTRY.checks.items()}


class Catalog:
    """All clauses and errata, validated."""

    def __init__(self, clauses: Iterable[Clause], errata: Iterable[Erratum]) -> None:
        self._clauses: dict[str, Clause] = {}
        for c in clauses:
            if c.id in self._clauses:
                raise UsageError(
                    f"clause id {c.id!r} is declared twice ({self._clauses[c.id].origin}, "
                    f"{c.origin})",
                    where="clause catalog",
                )
            self._clauses[c.id] = c
        self._errata: dict[str, Erratum] = {}
        for e in errata:
            if e.id in self._errata:
                raise UsageError(f"erratum id {e.id!r} declared twice", where="errata registry")
            self._errata[e.id] = e
        self._validate()

    # --- validation ------------------------------------------------------------------------
    def _validate(self) -> None:
        for c in self._clauses.values():
            where = f"clause {c.id}"
            if not _ID_RE.match(c.id):
                raise UsageError(f"malformed clause id {c.id!r}", where=where)
            if c.level not in LEVELS:
                raise UsageError(f"unknown level {c.level!r} (one of {LEVELS})", where=where)
            if c.side not in SIDES:
                raise UsageError(f"unknown side {c.side!r} (one of {SIDES})", where=where)
            if not c.profiles:
                raise UsageError("no profile", where=where)
            for p in c.profiles:
                if p not in PROFILES:
                    raise UsageError(f"unknown profile {p!r}", where=where)
                for feat in c.features:
                    PROFILES[p].bit(feat)  # raises UsageError for a feature the profile lacks
            if not c.text.strip() or not c.ref.strip():
                raise UsageError("empty text or ref", where=where)
            if c.errata is not None and c.errata not in self._errata:
                raise UsageError(f"names unknown erratum {c.errata!r}", where=where)
        for e in self._errata.values():
            if e.clause not in self._clauses:
                raise UsageError(
                    f"erratum {e.id} names unknown clause {e.clause!r}", where="errata registry"
                )
            if self._clauses[e.clause].errata != e.id:
                raise UsageError(
                    f"erratum {e.id} names clause {e.clause} which does not link back to it",
                    where="errata registry",
                )

    # --- lookup ----------------------------------------------------------------------------
    def __contains__(self, clause_id: object) -> bool:
        return clause_id in self._clauses

    def __iter__(self) -> Iterator[Clause]:
        return iter(self._clauses.values())

    def __len__(self) -> int:
        return len(self._clauses)

    def get(self, clause_id: str) -> Clause:
        try:
            return self._clauses[clause_id]
        except KeyError:
            raise UsageError(f"unknown clause id {clause_id!r}", where="clause catalog") from None

    def find(self, clause_id: str) -> Clause | None:
        return self._clauses.get(clause_id)

    @property
    def errata(self) -> list[Erratum]:
        return list(self._errata.values())

    def erratum(self, erratum_id: str) -> Erratum:
        try:
            return self._errata[erratum_id]
        except KeyError:
            raise UsageError(f"unknown erratum {erratum_id!r}", where="errata registry") from None

    def select(
        self, profile: str | None = None, side: str | None = None, observable: bool | None = None
    ) -> list[Clause]:
        out = []
        for c in self._clauses.values():
            if profile is not None and profile not in c.profiles:
                continue
            if side is not None and c.side != side:
                continue
            if observable is not None and c.observable != observable:
                continue
            out.append(c)
        return out

    # --- checks ----------------------------------------------------------------------------
    def check_counts(self) -> dict[str, int]:
        """Clause id -> number of checks (registered functions, plus 1 when the wire layer
        emits findings for it).  Raises UsageError if a check names an unknown clause."""
        regs = registered_checks()
        unknown = sorted(set(regs) - set(self._clauses))
        if unknown:
            raise UsageError(
                f"checks registered against unknown clause ids: {', '.join(unknown)}",
                where="clause catalog",
            )
        return {
            c.id: len(regs.get(c.id, [])) + (1 if c.wire else 0) for c in self._clauses.values()
        }

    def to_json(self) -> dict[str, Any]:
        counts = self.check_counts()
        regs = registered_checks()
        clauses = []
        for c in self._clauses.values():
            d = c.to_json()
            d["checks"] = counts[c.id]
            d["check_names"] = regs.get(c.id, []) + (["wire findings"] if c.wire else [])
            clauses.append(d)
        return {"clauses": clauses, "errata": [e.to_json() for e in self._errata.values()]}


# --------------------------------------------------------------------------- loading
def _read_toml(name: str) -> dict[str, Any]:
    try:
        text = importlib.resources.files(_PACKAGE).joinpath(name).read_text(encoding="utf-8")
    except (OSError, ModuleNotFoundError) as exc:
        raise UsageError(
            f"cannot read package data {name}: {exc}", where="clause catalog"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{name} is not valid TOML: {exc}", where="clause catalog") from None


_CLAUSE_KEYS = {
    "id",
    "level",
    "side",
    "profiles",
    "features",
    "ref",
    "research",
    "text",
    "observable",
    "wire",
    "errata",
}


def _clause_from_toml(raw: dict[str, Any]) -> Clause:
    where = f"clauses.toml clause {raw.get('id', '?')}"
    extra = set(raw) - _CLAUSE_KEYS
    if extra:
        raise UsageError(f"unknown keys {sorted(extra)}", where=where)
    try:
        return Clause(
            id=str(raw["id"]),
            level=str(raw["level"]),
            side=str(raw["side"]),
            profiles=tuple(raw["profiles"]),
            text=str(raw["text"]),
            ref=str(raw["ref"]),
            features=tuple(raw.get("features", ())),
            research=raw.get("research"),
            observable=bool(raw.get("observable", True)),
            wire=bool(raw.get("wire", False)),
            errata=raw.get("errata"),
        )
    except KeyError as exc:
        raise UsageError(f"missing key {exc.args[0]!r}", where=where) from None


def _ring_clauses() -> list[Clause]:
    """The ring layer's ids (virtqueue/clauses.py), as catalog clauses.

    That table holds id -> quoted text; level and side follow from the id and the text.
    Imported lazily and tolerated missing so the catalog does not depend on the ring layer
    being present in a partial checkout.
    """
    try:
        from virtio_balloon_proto.virtqueue.clauses import RING_CLAUSES
    except ImportError:
        return []
    out = []
    for cid, text in RING_CLAUSES.items():
        side = "device" if ".device." in cid or cid.startswith("spec.ring.") else "driver"
        level = "SHOULD" if "SHOULD" in text and "MUST" not in text else "MUST"
        ref, _, quote = text.partition(": ")
        out.append(
            Clause(
                id=cid,
                level=level,
                side=side,
                profiles=tuple(PROFILES),
                text=quote or text,
                ref=f"VIRTIO 1.2 {ref}" if quote else "VIRTIO 1.2 2.7",
                wire=True,
                origin="virtqueue/clauses.py",
            )
        )
    return out


def load_catalog() -> Catalog:
    """Read and validate clauses.toml + errata.toml (+ the ring layer's clause table)."""
    data = _read_toml("clauses.toml")
    errata_data = _read_toml("errata.toml")
    clauses = [_clause_from_toml(r) for r in data.get("clause", [])]
    clauses += _ring_clauses()
    errata = []
    for raw in errata_data.get("erratum", []):
        try:
            errata.append(
                Erratum(
                    id=str(raw["id"]),
                    title=str(raw["title"]),
                    clause=str(raw["clause"]),
                    source=str(raw["source"]),
                    text=str(raw["text"]),
                    correct=str(raw["correct"]),
                    evidence=tuple(raw.get("evidence", ())),
                    status=str(raw.get("status", "open")),
                )
            )
        except KeyError as exc:
            raise UsageError(
                f"missing key {exc.args[0]!r}", where=f"errata.toml {raw.get('id', '?')}"
            ) from None
    return Catalog(clauses, errata)


_CATALOG: Catalog | None = None


def catalog() -> Catalog:
    """The package's catalog, loaded once."""
    global _CATALOG
    if _CATALOG is None:
        _CATALOG = load_catalog()
    return _CATALOG
