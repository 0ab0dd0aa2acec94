"""Tracepoints, /proc/vmstat-style counters, and the ftrace and Perfetto exporters."""

from rcukit.trace.events import Counters as Counters
from rcukit.trace.events import TraceEvent as TraceEvent
from rcukit.trace.events import Tracer as Tracer
from rcukit.trace.export import to_ftrace as to_ftrace
from rcukit.trace.export import to_perfetto as to_perfetto
