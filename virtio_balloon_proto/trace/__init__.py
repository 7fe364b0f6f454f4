"""Recorded virtqueue traffic: the ``vbproto-trace/1`` format (docs/trace-format.md)."""

from .events import (
    AvailEvent,
    ConfigEvent,
    Event,
    FeaturesEvent,
    HostEvent,
    ObserveEvent,
    StatusEvent,
    TraceDescriptor,
    UsedEvent,
)
from .header import CAPTURABLE, FORMAT, FORMAT_1_2, FORMATS, TraceHeader, TraceSource, TraceWindow
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

__all__ = [
    "CAPTURABLE",
    "FORMAT",
    "FORMATS",
    "FORMAT_1_2",
    "MAX_LINE",
    "AvailEvent",
    "ConfigEvent",
    "Event",
    "FeaturesEvent",
    "HostEvent",
    "ObserveEvent",
    "StatusEvent",
    "TraceDescriptor",
    "TraceHeader",
    "TraceProblem",
    "TraceReader",
    "TraceSource",
    "TraceWindow",
    "TraceWriter",
    "UsedEvent",
    "iter_problems",
    "read_trace",
    "trace_schema",
    "validate_trace",
    "write_trace",
]
