"""virtio-balloon-proto: the reference toolkit for the virtio memory-balloon wire protocol."""

__version__ = "0.1.0"
