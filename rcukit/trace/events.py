"""Tracepoints and counters.

Call sites test ``tracer.on`` before building an event, so a tracepoint nobody listens to costs
one attribute load and a branch, like a static key in the kernel. Counters are plain integers in
a dict keyed by the kernel's /proc/vmstat names so they print the way a kernel engineer reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import attrs


@attrs.frozen
class TraceEvent:
    """One tracepoint hit. ``ph`` is the Perfetto phase: ``i`` instant, ``X`` complete slice."""

    ts_ns: int
    cpu: int
    comm: str
    pid: int
    name: str
    fields: str
    ph: str = "i"
    dur_ns: int = 0
    track: str = ""


class Tracer:
    """Collects events when ``on``; listeners see every event (the ftrace pipe)."""

    def __init__(self, *, limit: int = 2_000_000) -> None:
        self.on = False
        self.events: list[TraceEvent] = []
        self.limit = limit
        self.dropped = 0
        self.listeners: list[Callable[[TraceEvent], None]] = []
        self.filter: frozenset[str] | None = None

    def enable(self, events: frozenset[str] | None = None) -> None:
        """Turn tracing on, for every event or only those named (like ``set_event``)."""
        self.on = True
        self.filter = events

    def disable(self) -> None:
        self.on = False

    def emit(
        self,
        name: str,
        ts_ns: int,
        cpu: int,
        comm: str,
        pid: int,
        fields: str,
        *,
        ph: str = "i",
        dur_ns: int = 0,
        track: str = "",
    ) -> None:
        if self.filter is not None and name not in self.filter:
            return
        ev = TraceEvent(ts_ns, cpu, comm, pid, name, fields, ph, dur_ns, track)
        if len(self.events) < self.limit:
            self.events.append(ev)
        else:
            self.dropped += 1
        for cb in self.listeners:
            cb(ev)

    def __iter__(self) -> Iterator[TraceEvent]:
        return iter(self.events)


class Counters:
    """``/proc/vmstat``-style named counters (``pgalloc_normal``, ``kswapd_wake``...)."""

    __slots__ = ("_c",)

    def __init__(self) -> None:
        self._c: dict[str, int] = {}

    def inc(self, name: str, n: int = 1) -> None:
        c = self._c
        c[name] = c.get(name, 0) + n

    def set_max(self, name: str, value: int) -> None:
        if value > self._c.get(name, 0):
            self._c[name] = value

    def __getitem__(self, name: str) -> int:
        return self._c.get(name, 0)

    def get(self, name: str, default: int = 0) -> int:
        return self._c.get(name, default)

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self._c.items()))

    def format_vmstat(self) -> str:
        """The ``name value`` lines of /proc/vmstat, sorted by name."""
        return "".join(f"{k} {v}\n" for k, v in sorted(self._c.items()))
