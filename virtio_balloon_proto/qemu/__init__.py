"""QEMU's virtio-balloon device as a real peer, driven over qtest + QMP.

Debian strips QEMU's qtest accelerator, so the device runs under ``-accel tcg -S`` (the vCPU
never starts) with the qtest socket attached: every qtest command works except ``clock_step``,
and virtqueue notifies are handled synchronously (no ioeventfd without KVM), so ``used.idx`` is
final when the notify write returns.  See docs/qemu.md and research/qemu-peer.md.

Layers, lowest first: :mod:`.process` (spawn, sockets, lifetime), :mod:`.qtest` and :mod:`.qmp`
(the two wire protocols), :mod:`.pci` (config mechanism #1, BARs, virtio capabilities),
:mod:`.transport` (modern and legacy virtio-pci), :mod:`.memory` (GuestMemory over qtest),
:mod:`.tracelog` (the ``-D`` trace log), :mod:`.device` (a balloon session) and
:mod:`.capture` (a real Linux guest).
"""
