"""``vbproto capture``: record real balloon traffic from a real peer (virtio_balloon_proto/qemu)."""

from __future__ import annotations

import click

from virtio_balloon_proto.cliframe import (
    emit_json,
    json_mode,
    json_option,
)
from virtio_balloon_proto.commands.common import (
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
