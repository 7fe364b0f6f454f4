"""Recorded virtqueue traffic: the ``vbproto-trace/1`` format (docs/trace-format.md)."""

from .io import (
    MAX_LINE,
    TraceProblem,
    TraceReader,
    TraceWriter,
    iter_problems,
    read_trace,
    trace_schema,
    validate_trace,
    write_trace,
)
from .model import (
    FORMAT,
    AvailEvent,
    ConfigEvent,
    Event,
    FeaturesEvent,
    HostEvent,
    StatusEvent,
    TraceDescriptor,
    TraceHeader,
    TraceSource,
    UsedEvent,
)

__all__ = [
    "FORMAT",
    "MAX_LINE",
    "AvailEvent",
    "ConfigEvent",
    "Event",
    "FeaturesEvent",
    "HostEvent",
    "StatusEvent",
    "TraceDescriptor",
    "TraceHeader",
    "TraceProblem",
    "TraceReader",
    "TraceSource",
    "TraceWriter",
    "UsedEvent",
    "iter_problems",
    "read_trace",
    "trace_schema",
    "validate_trace",
    "write_trace",
]
