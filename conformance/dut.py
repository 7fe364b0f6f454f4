"""The device-under-test interface, as the conformance layer names it.

The types live in :mod:`virtio_balloon_proto.models.interface` (below the conformance layer,
so the reference device can implement them without importing upward); this module re-exports
them for adapters and testees.
"""

from virtio_balloon_proto.models.interface import (
    UNSUPPORTED_BY,
    DeviceUnderTest,
    Negotiated,
    Segment,
    Setup,
    Unsupported,
    Used,
)

__all__ = [
    "UNSUPPORTED_BY",
    "DeviceUnderTest",
    "Negotiated",
    "Segment",
    "Setup",
    "Unsupported",
    "Used",
]
