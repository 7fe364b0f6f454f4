"""``vbproto capture``: record real balloon traffic from a real peer (virtio_balloon_proto/qemu)."""

from __future__ import annotations

import click

from virtio_balloon_proto.cliframe import (
    FiniteRange,
    emit_json,
    json_mode,
    json_option,
)
from virtio_balloon_proto.commands.common import (
    PROFILES,
    group,
)


@group("capture", "Capture real balloon traffic from a real peer.")
def capture() -> None:
    pass


@capture.command("qemu-guest")
@click.option("--kernel", type=click.Path(dir_okay=False), default="guest/vmlinuz",
              show_default=True, help="guest kernel (build with tools/build_guest.py)")
@click.option("--initrd", type=click.Path(dir_okay=False), default="guest/initrd.gz",
              show_default=True, help="initramfs loading virtio_balloon")
@click.option("--memory", default="512M", show_default=True, help="guest RAM")
@click.option("--balloon-to", default="384M", show_default=True,
              help="balloon target (QMP 'balloon'); deflated back afterwards")
@click.option("--transport", type=click.Choice(["modern", "legacy"]), default="modern",
              show_default=True, help="virtio-pci transport (modern: VERSION_1)")
@click.option("--device-option", "device_options", multiple=True,
              help="virtio-balloon-pci property to switch on (deflate-on-oom, "
                   "free-page-reporting, ...); repeatable")
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False), required=True,
              help="trace file to write (atomically; checked before the guest boots)")
@json_option('print {"wrote", "events", "buffers", "inflated", "deflated", "timings"}',
             expose=False)
def capture_qemu_guest(kernel: str, initrd: str, memory: str, balloon_to: str, transport: str,
                       device_options: tuple[str, ...], out: str) -> None:
    """Boot a Linux guest under QEMU/TCG, move its balloon through QMP, record the traffic."""
    import json
    import subprocess
    from pathlib import Path

    from virtio_balloon_proto.io import check_writable
    from virtio_balloon_proto.qemu.capture import capture_guest

    check_writable(out)  # before a guest boots, not after
    # provenance: the guest pieces' package versions (tools/build_guest.py's manifest) + QEMU's
    guest = "guest: unknown kernel"
    manifest = Path(kernel).parent / "manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        guest = "guest: Linux " + m.get("kernel_release", "?") + " (" + ", ".join(
            f"{k} {v}" for k, v in sorted(m.get("packages", {}).items())) + ")"
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True,
                          check=False).stdout.splitlines()[:1]
    provenance = "; ".join([*qemu, guest, f"vbproto capture qemu-guest --memory {memory} "
                            f"--balloon-to {balloon_to} --transport {transport}"])
    cap = capture_guest(Path(kernel), Path(initrd), memory=memory, balloon_to=balloon_to,
                        transport=transport, device={o: True for o in device_options},
                        output=Path(out), provenance=provenance)
    pfns = cap.pfn_lists()
    moved = {r: sum(len(b["pfns"]) for b in pfns if b["role"] == r) for r in ("inflate", "deflate")}
    if json_mode():
        emit_json({"wrote": out, "events": len(cap.events), "buffers": len(pfns),
                   "inflated": moved["inflate"], "deflated": moved["deflate"],
                   "timings": cap.timings})
        return
    click.echo(f"wrote {out}: {len(cap.events)} events; {len(pfns)} buffers, "
               f"{moved['inflate']} PFNs inflated, {moved['deflate']} deflated")
    for k, v in cap.timings.items():
        click.echo(f"  {k:24} {v:.2f} s")


@capture.command("attach")
@click.option("--qmp", "qmp_socket", type=click.Path(dir_okay=False), required=True,
              help="QMP socket of a running QEMU (-qmp unix:PATH,server=on,wait=off)")
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False), required=True,
              help="trace file to write (atomically)")
@click.option("--path", "qom_path", default=None,
              help="QOM path of the balloon's virtio backend (default: the one x-query-virtio "
                   "lists)")
@click.option("--profile", type=PROFILES, default="spec", show_default=True,
              help="protocol profile (QEMU: spec)")
@click.option("--no-pause", is_flag=True,
              help="read the rings of a running VM (not atomic; default: stop, read, cont)")
@click.option("--record", type=FiniteRange(0, 3600), default=0.0, show_default=True,
              help="then record N seconds of QEMU balloon trace events")
@click.option("--record-log", type=click.Path(dir_okay=False), default=None,
              help="where QEMU writes the recorded events (default: OUT.qemu.log); HMP "
                   "'logfile' points QEMU's -D log there")
@click.option("--budget", type=click.IntRange(4096, 1 << 30), default=64 << 20,
              show_default=True, help="most bytes read from guest RAM")
@json_option('print {"wrote", "events", "queues", "in_flight", "bytes_read", "reads", '
             '"paused_seconds", "status"}', expose=False)
def capture_attach(qmp_socket: str, out: str, qom_path: str | None, profile: str,
                   no_pause: bool, record: float, record_log: str | None, budget: int) -> None:
    """Snapshot the balloon queues of a QEMU you already run, read-only, through QMP."""
    import shlex
    import sys
    from pathlib import Path

    from virtio_balloon_proto.io import check_writable
    from virtio_balloon_proto.qemu.attach import connect_qmp, snapshot, write_snapshot
    from virtio_balloon_proto.trace import AvailEvent

    check_writable(out)
    log = Path(record_log) if record_log else Path(f"{out}.qemu.log")
    qmp = connect_qmp(qmp_socket)
    try:
        snap = snapshot(qmp, path=qom_path, profile=profile, pause=not no_pause, budget=budget,
                        command=shlex.join(["vbproto", *sys.argv[1:]]), record=record,
                        record_log=log.resolve() if record else None)
    finally:
        qmp.close()
    n = write_snapshot(snap, out)
    in_flight = sum(len(v) for v in snap.elements.values())
    if json_mode():
        doc = {"wrote": out, "events": n, "queues": len(snap.statuses),
               "in_flight": in_flight, "bytes_read": snap.bytes_read, "reads": snap.reads,
               "paused_seconds": round(snap.paused_seconds, 3), "status": snap.status}
        if snap.stopped_by is not None:
            doc.update(partial=True, exit_code=130)
        emit_json(doc)
    if snap.stopped_by is not None:  # interrupted while recording: written, now exit 130
        raise snap.stopped_by
    if json_mode():
        return
    avail = sum(isinstance(e, AvailEvent) for e in snap.events)
    click.echo(f"wrote {out}: {n} events from {len(snap.statuses)} queues of {snap.path} "
               f"(status {snap.status:#x}); {in_flight} chain(s) in flight, {avail} avail "
               f"event(s); {snap.bytes_read} bytes in {snap.reads} pmemsave read(s); VM paused "
               f"{snap.paused_seconds:.3f} s")
