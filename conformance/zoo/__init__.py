"""The regression zoo: real, published balloon bugs as runnable devices (see registry.py)."""

from .registry import ZOO, ZooEntry, find

__all__ = ["ZOO", "ZooEntry", "find"]
