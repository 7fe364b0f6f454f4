"""Profiles (dialects), feature bits, queue roles and the rules between them.

Bits 0-2 are common to every dialect.  Bits 3 and 4 mean different things in different
profiles (PROTOCOL.md section 1), so nothing here guesses a profile: every call names one.

* ``spec``   -- VIRTIO 1.2-1.4 section 5.5 + upstream Linux: FREE_PAGE_HINT 3, PAGE_POISON 4,
  PAGE_REPORTING 5.
* ``v3``     -- the seed patch set (RESEND v3, 21 Oct 2016): PAGE_BITMAP 3 (seed 2/7), MISC_VQ 4
  (seed 6/7).
* ``hybrid`` -- the review's pfn+order packing as v4/v5 realised it: PAGE_BITMAP 3, MISC_VQ 4.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from .errors import UsageError


class QueueRole(StrEnum):
    INFLATE = "inflate"
    DEFLATE = "deflate"
    STATS = "stats"
    FREE_PAGE = "free_page"
    MISC = "misc"
    REPORTING = "reporting"


# Transport feature bits (VIRTIO 1.x section 6 "Reserved Feature Bits"); same in every profile.
TRANSPORT_FEATURES: dict[str, int] = {
    "NOTIFY_ON_EMPTY": 24,
    "ANY_LAYOUT": 27,
    "RING_INDIRECT_DESC": 28,
    "RING_EVENT_IDX": 29,
    "BAD_FEATURE": 30,  # legacy only: a driver that acks it is broken (QEMU offers it)
    "VERSION_1": 32,
    "ACCESS_PLATFORM": 33,
    "RING_PACKED": 34,
    "IN_ORDER": 35,
    "ORDER_PLATFORM": 36,
    "SR_IOV": 37,
    "NOTIFICATION_DATA": 38,
    "NOTIF_CONFIG_DATA": 39,
    "RING_RESET": 40,
}

VERSION_1 = 1 << TRANSPORT_FEATURES["VERSION_1"]

COMMON_FEATURES: dict[str, int] = {"MUST_TELL_HOST": 0, "STATS_VQ": 1, "DEFLATE_ON_OOM": 2}


@dataclass(frozen=True)
class Profile:
    """One dialect of the balloon protocol."""

    name: str
    description: str
    reference: str
    #: device feature bits by name (common bits included, transport bits not)
    features: Mapping[str, int]
    #: optional queue roles, in creation order, with the feature that brings each
    queue_features: tuple[tuple[QueueRole, str], ...]
    #: feature -> features it needs; a driver that has one without the other clears it
    requires: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: feature that switches inflate/deflate from PFN arrays to the profile's own encoding
    bulk_feature: str | None = None

    # --- feature words -------------------------------------------------------------------
    def bit(self, name: str) -> int:
        name = name.upper().removeprefix("VIRTIO_BALLOON_F_").removeprefix("VIRTIO_F_")
        if name in self.features:
            return self.features[name]
        if name in TRANSPORT_FEATURES:
            return TRANSPORT_FEATURES[name]
        raise UsageError(
            f"profile {self.name!r} has no feature {name!r} "
            f"(known: {', '.join(sorted({**self.features, **TRANSPORT_FEATURES}))})"
        )

    def mask(self, names: Iterable[str]) -> int:
        word = 0
        for n in names:
            word |= 1 << self.bit(n)
        return word

    def names(self, word: int) -> list[str]:
        """Feature names of ``word``, lowest bit first; unknown bits as ``BIT_n``."""
        if word < 0 or word >= 1 << 64:
            raise UsageError(f"feature word {word:#x} is not a 64-bit value")
        by_bit = {b: n for n, b in TRANSPORT_FEATURES.items()}
        by_bit.update({b: n for n, b in self.features.items()})
        out = []
        for b in range(64):
            if word >> b & 1:
                out.append(by_bit.get(b, f"BIT_{b}"))
        return out

    def has(self, word: int, name: str) -> bool:
        return bool(word >> self.bit(name) & 1)

    # --- rules ---------------------------------------------------------------------------
    def driver_clears(self, word: int) -> int:
        """What a driver of this profile keeps of ``word`` after its dependency rules.

        For ``v3`` this is the seed's ``init_vqs`` (7/7): without STATS_VQ it clears
        PAGE_BITMAP and MISC_VQ.  Applied to a fixed point so chains of rules settle.
        """
        changed = True
        while changed:
            changed = False
            for feat, needs in self.requires.items():
                if self.has(word, feat) and not all(self.has(word, n) for n in needs):
                    word &= ~(1 << self.bit(feat))
                    changed = True
        return word

    def queues(self, features: int) -> list[QueueRole]:
        """Queue roles present with ``features``, in role order (inflate, deflate, ...)."""
        roles = [QueueRole.INFLATE, QueueRole.DEFLATE]
        roles += [role for role, feat in self.queue_features if self.has(features, feat)]
        return roles

    def queue_index(
        self, offered: int, negotiated: int, model: str = "negotiated"
    ) -> dict[QueueRole, int]:
        """Map role -> virtqueue index under one of the index models (PROTOCOL.md section 4).

        * ``negotiated`` -- Linux: queues compacted over the *negotiated* features.
        * ``offered``    -- QEMU, crosvm, Firecracker: compacted over the *offered* features
          (a role whose feature was not negotiated keeps its slot but is unused).
        * ``fixed``      -- the spec's listing: inflate 0, deflate 1, stats 2, free_page 3,
          reporting 4 (misc 3 in v3).
        * ``cloud-hypervisor`` -- reporting at index 2, no stats queue.
        """
        if model == "negotiated":
            present = self.queues(negotiated)
            return {r: i for i, r in enumerate(present)}
        if model == "offered":
            slots = self.queues(offered)
            return {r: i for i, r in enumerate(slots) if r in self.queues(negotiated)}
        if model == "fixed":
            all_roles = [QueueRole.INFLATE, QueueRole.DEFLATE] + [r for r, _ in self.queue_features]
            return {r: i for i, r in enumerate(all_roles) if r in self.queues(negotiated)}
        if model == "cloud-hypervisor":
            out = {QueueRole.INFLATE: 0, QueueRole.DEFLATE: 1}
            if QueueRole.REPORTING in self.queues(negotiated):
                out[QueueRole.REPORTING] = 2
            return out
        raise UsageError(
            f"unknown queue index model {model!r} (negotiated, offered, fixed, cloud-hypervisor)"
        )

    def config_size(self, features: int) -> int:
        """Config space bytes the device exposes (PROTOCOL.md section 3, QEMU's rule)."""
        if self.name == "spec":
            if self.has(features, "PAGE_POISON"):
                return 16
            if self.has(features, "FREE_PAGE_HINT"):
                return 12
        return 8


SPEC = Profile(
    name="spec",
    description="VIRTIO 1.2-1.4 memory balloon + upstream Linux",
    reference="VIRTIO 1.4 section 5.5",
    features={
        **COMMON_FEATURES,
        "FREE_PAGE_HINT": 3,
        "PAGE_POISON": 4,
        "PAGE_REPORTING": 5,
    },
    queue_features=(
        (QueueRole.STATS, "STATS_VQ"),
        (QueueRole.FREE_PAGE, "FREE_PAGE_HINT"),
        (QueueRole.REPORTING, "PAGE_REPORTING"),
    ),
    # VIRTIO 1.4 5.5.3.1: a driver that expects reported pages to keep their content MUST NOT
    # accept PAGE_REPORTING without PAGE_POISON; that depends on the driver's intent, so it is a
    # conformance clause (spec.driver.features.reporting-needs-poison), not a clearing rule.
    requires={},
)

V3 = Profile(
    name="v3",
    description="2016 RESEND v3 patch set: page bitmap + misc queue",
    reference="seed 2/7, 6/7, 7/7 (<1477031080-12616-*>)",
    features={**COMMON_FEATURES, "PAGE_BITMAP": 3, "MISC_VQ": 4},
    queue_features=((QueueRole.STATS, "STATS_VQ"), (QueueRole.MISC, "MISC_VQ")),
    # seed 7/7 init_vqs: "if (!virtio_has_feature(vb->vdev, VIRTIO_BALLOON_F_STATS_VQ))
    # { __virtio_clear_bit(PAGE_BITMAP); __virtio_clear_bit(MISC_VQ); }"
    requires={"PAGE_BITMAP": ("STATS_VQ",), "MISC_VQ": ("STATS_VQ",)},
    bulk_feature="PAGE_BITMAP",
)

HYBRID = Profile(
    name="hybrid",
    description="review's pfn+order 64-bit packing, as v4/v5 realised it",
    reference="Dave Hansen <5810F1C7.4060807@intel.com>; v4 2/7, v5 2/5",
    features={**COMMON_FEATURES, "PAGE_BITMAP": 3, "MISC_VQ": 4},
    queue_features=((QueueRole.STATS, "STATS_VQ"), (QueueRole.MISC, "MISC_VQ")),
    requires={"PAGE_BITMAP": ("STATS_VQ",), "MISC_VQ": ("STATS_VQ",)},
    bulk_feature="PAGE_BITMAP",
)

PROFILES: dict[str, Profile] = {p.name: p for p in (SPEC, V3, HYBRID)}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise UsageError(
            f"unknown profile {name!r} (choose one of: {', '.join(PROFILES)})", field="profile"
        ) from None
