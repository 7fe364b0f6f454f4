"""Clause ids the ring layer raises (errors) or reports (findings), with their spec source.

The ids share the catalog namespace of ``conformance/clauses.toml``; this table is the ring
layer's contribution to it, so the catalog can import it rather than copy it.  Section numbers
are VIRTIO 1.2 (split ring 2.7, packed ring 2.8); 1.3/1.4 keep the same text.
"""

from __future__ import annotations

RING_CLAUSES: dict[str, str] = {
    "spec.ring.queue-size": (
        "2.6: Queue Size ... is a power of 2 (split); at most 32768; packed: any size <= 32768"
    ),
    "spec.driver.ring.avail-idx-advance": (
        "2.7.6: avail->idx may run at most Queue Size ahead of the device's last_avail_idx "
        "(QEMU: 'Guest moved index from %u to %u')"
    ),
    "spec.driver.ring.head-in-range": (
        "2.7.6/2.7.5: a ring entry names the head of a chain, an index into the descriptor "
        "table of Queue Size entries (QEMU: 'Guest says index %u is available')"
    ),
    "spec.driver.ring.next-in-range": (
        "2.7.5: next indexes the same descriptor table (Queue Size entries, or len/16 "
        "entries of an indirect table)"
    ),
    "spec.driver.ring.chain-len": (
        "2.7.5.3.1: A driver MUST NOT create a descriptor chain longer than the Queue Size "
        "of the device"
    ),
    "spec.driver.ring.no-loop": (
        "2.7.5.1: Drivers MUST NOT add a descriptor chain longer than 2^32 bytes in total; "
        "this implies that loops in the descriptor chain are forbidden"
    ),
    "spec.driver.ring.chain-bytes": (
        "2.7.5.1: Drivers MUST NOT add a descriptor chain longer than 2^32 bytes in total"
    ),
    "spec.driver.ring.indirect-nested": (
        "2.7.5.3.1: The driver MUST NOT set the VIRTQ_DESC_F_INDIRECT flag within an "
        "indirect descriptor (ie. only one table per descriptor)"
    ),
    "spec.driver.ring.indirect-with-next": (
        "2.7.5.3.1: A driver MUST NOT set both VIRTQ_DESC_F_INDIRECT and VIRTQ_DESC_F_NEXT in flags"
    ),
    "spec.driver.ring.indirect-len": (
        "2.7.5.3: the indirect table holds len/16 descriptors; a len that is 0 or not a "
        "multiple of 16 describes no table (QEMU: 'Invalid size for indirect buffer table')"
    ),
    "spec.driver.ring.indirect-feature": (
        "2.7.5.3.1: The driver MUST NOT set the VIRTQ_DESC_F_INDIRECT flag unless the "
        "VIRTIO_F_INDIRECT_DESC feature was negotiated"
    ),
    "spec.driver.ring.writable-after-readable": (
        "2.7.4.2: The driver MUST place any device-writable descriptor elements after any "
        "device-readable descriptor elements"
    ),
    "spec.driver.ring.addr-in-memory": (
        "2.7.5: addr is a guest-physical address; a buffer outside guest memory cannot be "
        "read (the walker refuses it rather than inventing bytes)"
    ),
    "spec.device.ring.used-idx-advance": (
        "2.7.8: used->idx may run at most Queue Size ahead of the entries the driver has seen"
    ),
    "spec.device.ring.used-id-in-range": (
        "2.7.8: id indicates the head entry of the descriptor chain describing the buffer"
    ),
    "spec.driver.packed.indirect-nested": (
        "2.8.19: The driver MUST NOT set the VIRTQ_DESC_F_INDIRECT flag within an indirect "
        "descriptor"
    ),
    "spec.driver.packed.indirect-with-next": (
        "2.8.19/2.8.7: a descriptor with VIRTQ_DESC_F_INDIRECT MUST NOT have VIRTQ_DESC_F_NEXT set"
    ),
    "spec.driver.packed.chain-len": (
        "2.8.17: A driver MUST NOT create a descriptor list longer than allowed by the device "
        "(at most Queue Size descriptors)"
    ),
}
