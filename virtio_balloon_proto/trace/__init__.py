"""Recorded virtqueue traffic: the ``vbproto-trace/1`` format (docs/trace-format.md)."""

from ..limits import MAX_LINE
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
from .reader import TraceProblem, TraceReader, iter_problems, read_trace, validate_trace
from .schema import trace_schema
from .writer import TraceWriter, write_trace

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
