"""The OPTIONS of ``--device qemu[:OPTIONS]`` (``k=v,k=v``) parsed, before a QEMU starts.

:func:`parse_options` splits the spec string, refusing a key given twice, an item that is no
``key=value`` and an empty value; ``_onoff`` reads an on/off value.  What each option means
is in :mod:`.qemu_adapter` (and docs/qemu.md).
"""

from __future__ import annotations

from typing import Any

from virtio_balloon_proto.errors import UsageError


def _onoff(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in ("on", "true", "yes", "1"):
        return True
    if v in ("off", "false", "no", "0"):
        return False
    raise UsageError(f"qemu option {key}={value!r}: expected on or off", field="device")


def parse_options(spec: str) -> dict[str, str]:
    """``qemu:transport=modern,deflate-on-oom=on`` (prefix optional) -> {key: value}."""
    body = spec.removeprefix("qemu").removeprefix(":")
    out: dict[str, str] = {}
    for item in filter(None, (x.strip() for x in body.split(","))):
        k, eq, v = item.partition("=")
        k, v = k.strip(), v.strip()
        if not eq:
            raise UsageError(f"qemu option {item!r} is not key=value", field="device")
        # transport=modern,transport=legacy and build= were taken silently (qa): which one
        # the run used was a guess, and an empty value is a default nobody asked for
        if k in out:
            raise UsageError(f"qemu option {k!r} is given twice ({k}={out[k]}, {k}={v})",
                             field="device")
        if not v:
            raise UsageError(f"qemu option {k}= has no value", field="device")
        out[k] = v
    return out
