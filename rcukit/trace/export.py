"""Exporters: the kernel's ftrace text and Chrome/Perfetto trace-event JSON.

Both come as streaming writers (:class:`FtraceWriter`, :class:`PerfettoWriter`) that a
:class:`~rcukit.trace.events.Tracer` feeds as a listener, so a trace file of any length is
written with bounded memory: Perfetto records go to the file as they are produced; ftrace lines
are sorted by timestamp (the kernel merges its per-CPU ring buffers the same way) in chunks that
spill to temporary files and are merged at the end of each run. :func:`to_ftrace` and
:func:`to_perfetto` are the same writers over a list, returning the text.

Names: an event the kernel has as a tracepoint keeps its name (:data:`KERNEL_EVENTS` says its
system, which Perfetto shows as the category). rcukit's own events (``splat``,
``kfree_rcu_monitor``, ``warn_alloc``, ``fail_page_alloc``) are in the ``rcukit`` system and
print as ``rcukit_<name>`` in ftrace text, so no one mistakes them for kernel tracepoints.
Slices, begin/end pairs and counters (``rcu_gp``, lock holds...) are Perfetto-only.
"""

from __future__ import annotations

import heapq
import io
import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO, Any

from rcukit.trace.events import NO_FLAGS, TraceEvent

#: Kernel tracepoints rcukit emits, by system (include/trace/events/{rcu,kmem,vmscan,
#: workqueue}.h); every other event name is rcukit's own.
KERNEL_EVENTS: dict[str, str] = {
    **dict.fromkeys((
        "rcu_grace_period", "rcu_exp_grace_period", "rcu_fqs", "rcu_callback",
        "rcu_kvfree_callback", "rcu_batch_start", "rcu_batch_end", "rcu_invoke_callback",
        "rcu_invoke_kvfree_callback", "rcu_invoke_kfree_bulk_callback", "rcu_barrier",
        "rcu_preempt_task", "rcu_unlock_preempted_task",
    ), "rcu"),
    **dict.fromkeys((
        "kmalloc", "kmem_cache_alloc", "kfree", "kmem_cache_free", "mm_page_alloc",
        "mm_page_free", "mm_page_alloc_zone_locked", "mm_page_pcpu_drain",
        "mm_page_alloc_extfrag",
    ), "kmem"),
    **dict.fromkeys((
        "mm_vmscan_wakeup_kswapd", "mm_vmscan_kswapd_wake", "mm_vmscan_kswapd_sleep",
        "mm_vmscan_direct_reclaim_begin", "mm_vmscan_direct_reclaim_end",
    ), "vmscan"),
    **dict.fromkeys((
        "workqueue_queue_work", "workqueue_activate_work", "workqueue_execute_start",
        "workqueue_execute_end",
    ), "workqueue"),
}

#: The system rcukit's own events belong to.
RCUKIT_SYSTEM = "rcukit"

#: rcukit's own events: reports, the monitor, and the slices and counters Perfetto shows.
RCUKIT_EVENTS = (
    "splat", "kfree_rcu_monitor", "warn_alloc", "fail_page_alloc", "rcu_gp", "rcu_qs",
    "lock_krcp", "lock_zone", "lock_pcp", "lock_pcp_in_krcp", "kvfree_block", "kfree_bulk",
    "nr_free_pages", "pcp_count", "krc_pending", "kvfree_blocks",
)

#: workqueue tracepoints that open and close a work item's slice in Perfetto.
_WORK_PHASES = {"workqueue_execute_start": "B", "workqueue_execute_end": "E"}

_HEADER = (
    "# tracer: nop\n"
    "#\n"
    "# entries-in-buffer/entries-written: {n}/{n}   #P:{cpus}\n"
    "#\n"
    "#                                _-----=> irqs-off/BH-disabled\n"
    "#                               / _----=> need-resched\n"
    "#                              | / _---=> hardirq/softirq\n"
    "#                              || / _--=> preempt-depth\n"
    "#                              ||| / _-=> migrate-disable\n"
    "#                              |||| /     delay\n"
    "#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION\n"
    "#              | |         |   |||||     |         |\n"
)


def event_system(name: str) -> str:
    """The tracing system of ``name``: ``rcu``, ``kmem``, ... or ``rcukit`` for our own."""
    return KERNEL_EVENTS.get(name, RCUKIT_SYSTEM)


def ftrace_name(name: str) -> str:
    """``name`` as ftrace text prints it: a kernel tracepoint's own, ``rcukit_<name>`` else."""
    return name if name in KERNEL_EVENTS else f"{RCUKIT_SYSTEM}_{name}"


def format_ftrace_line(ev: TraceEvent) -> str:
    """``<task>-<pid> [cpu] flags timestamp: event: fields`` as in ``/sys/kernel/tracing/trace``."""
    task = f"{ev.comm}-{ev.pid}"
    secs, ns = divmod(ev.ts_ns, 1_000_000_000)
    return (
        f"{task:>16} [{ev.cpu:03d}] {ev.flags} {secs:5d}.{ns // 1000:06d}: "
        f"{ftrace_name(ev.name)}: {ev.fields}"
    )


class FtraceWriter:
    """``/sys/kernel/tracing/trace`` text, one section per run, streamed to ``out``.

    :meth:`write` takes instant events (slices and counters are Perfetto's); each section's
    lines are sorted by timestamp, ties kept in emission order, through sorted chunks of at
    most ``chunk`` lines spilled to temporary files and merged by :meth:`end`, which then
    writes the header with the section's real entry count and the lines.
    """

    def __init__(self, out: IO[str], *, chunk: int = 200_000) -> None:
        self.out = out
        self.chunk = chunk
        self.entries = 0
        self._title = ""
        self._nr_cpus = 0
        self._buf: list[tuple[int, str]] = []
        self._spills: list[IO[str]] = []
        self._open = False

    def begin(self, nr_cpus: int, title: str = "") -> None:
        """Start a run's section; ``title`` (if any) is printed as a comment line first."""
        if self._open:
            self.end()
        self._open = True
        self._title = title
        self._nr_cpus = nr_cpus
        self.entries = 0

    def write(self, ev: TraceEvent) -> None:
        if ev.ph != "i":
            return
        self._buf.append((ev.ts_ns, format_ftrace_line(ev)))
        self.entries += 1
        if len(self._buf) >= self.chunk:
            self._spill()

    def _spill(self) -> None:
        self._buf.sort(key=_ts)  # stable: ties stay in emission order
        # closed by end(), once merged: a with-block cannot span the section
        f = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
        f.writelines(f"{ts} {line}\n" for ts, line in self._buf)
        f.seek(0)
        self._spills.append(f)
        self._buf = []

    def end(self) -> None:
        """Finish the open section: header, then every line in timestamp order."""
        if not self._open:
            return
        self._open = False
        out = self.out
        if self._title:
            out.write(f"# ===== {self._title} =====\n")
        out.write(_HEADER.format(n=self.entries, cpus=self._nr_cpus))
        self._buf.sort(key=_ts)
        runs: list[Iterator[tuple[int, str]]] = [_read_spill(f) for f in self._spills]
        runs.append(iter(self._buf))
        for _, line in heapq.merge(*runs, key=_ts):
            out.write(line)
            out.write("\n")
        for f in self._spills:
            f.close()
        self._spills = []
        self._buf = []


def _ts(item: tuple[int, str]) -> int:
    return item[0]


def _read_spill(f: IO[str]) -> Iterator[tuple[int, str]]:
    for raw in f:
        ts, _, line = raw.rstrip("\n").partition(" ")
        yield int(ts), line


def to_ftrace(events: Iterable[TraceEvent], nr_cpus: int = 0) -> str:
    """The ftrace text of ``events`` (one run), as a string."""
    buf = io.StringIO()
    w = FtraceWriter(buf)
    w.begin(nr_cpus)
    for ev in events:
        w.write(ev)
    w.end()
    return buf.getvalue()


#: What a Perfetto JSON document starts and ends with; :func:`join_perfetto` puts runs
#: written apart (``document=False``) between them.
PERFETTO_HEAD = '{"displayTimeUnit":"ns","traceEvents":[\n'
PERFETTO_TAIL = "\n]}\n"


class PerfettoWriter:
    """Chrome trace-event JSON (opens in ui.perfetto.dev), streamed to ``out`` record by record.

    Each run is two processes: "CPUs" (a thread per CPU, where instants land) and "kthreads"
    (a thread per named track: ``rcu_gp``, lock holds, work items...), so grace periods and lock
    holds show as slices beside the CPUs; counters (``ph: C``) are process-level counter tracks,
    named by their track. A slice with ``flow_out``/``flow_in`` carries the Chrome JSON flow
    fields (``bind_id`` and ``flow_out``/``flow_in``: Perfetto draws an arrow between the two
    slices of one id). :meth:`close` ends the JSON document; with ``document=False`` the
    writer writes only the records (comma-separated), one part of a document that
    :func:`join_perfetto` assembles, so rows traced in different processes make one file.
    """

    def __init__(self, out: IO[str], *, document: bool = True) -> None:
        self.out = out
        self.records = 0
        self._runs = 0
        self._pid = 1
        self._tracks: dict[str, int] = {}
        self._first = True
        self._document = document
        if document:
            out.write(PERFETTO_HEAD)

    def _emit(self, rec: dict[str, Any]) -> None:
        if not self._first:
            self.out.write(",\n")
        self._first = False
        self.out.write(json.dumps(rec, separators=(",", ":"), sort_keys=True))
        self.records += 1

    def begin(self, nr_cpus: int, title: str = "", *, run: int | None = None) -> None:
        """Start a run: its processes (named ``title: CPUs`` and ``title: kthreads``), with
        the process ids of the ``run``-th run (default: the next one this writer starts)."""
        if run is None:
            run = self._runs
        self._pid = pid = 1 + 10 * run
        self._runs = run + 1
        self._tracks = {}
        prefix = f"{title}: " if title else ""
        self._emit({"ph": "M", "pid": pid, "name": "process_name",
                    "args": {"name": f"{prefix}CPUs"}})
        self._emit({"ph": "M", "pid": pid + 1, "name": "process_name",
                    "args": {"name": f"{prefix}kthreads"}})
        for cpu in range(nr_cpus):
            self._emit({"ph": "M", "pid": pid, "tid": cpu, "name": "thread_name",
                        "args": {"name": f"CPU {cpu}"}})

    def write(self, ev: TraceEvent) -> None:
        pid = self._pid
        if ev.ph == "C":  # process-level counter tracks, one per ``key=value`` of the fields
            series = {}
            for kv in ev.fields.split():
                key, _, value = kv.partition("=")
                series[key] = int(value)
            self._emit({"name": ev.track or ev.name, "cat": event_system(ev.name), "ph": "C",
                        "ts": ev.ts_ns / 1000.0, "pid": pid + 1, "args": series})
            return
        phase = _WORK_PHASES.get(ev.name)
        if phase is not None:  # the work item's slice says it all: no instant beside it
            self._work_slice(ev, phase)
            return
        if ev.track:
            tid = self._tracks.get(ev.track)
            if tid is None:
                tid = self._tracks[ev.track] = 1000 + len(self._tracks)
                self._emit({"ph": "M", "pid": pid + 1, "tid": tid, "name": "thread_name",
                            "args": {"name": ev.track}})
            pid += 1
        else:
            tid = ev.cpu
        rec: dict[str, Any] = {
            "name": ev.name,
            "cat": event_system(ev.name),
            "ph": ev.ph,
            "ts": ev.ts_ns / 1000.0,
            "pid": pid,
            "tid": tid,
        }
        args: dict[str, Any] = {"comm": f"{ev.comm}-{ev.pid}"}
        if ev.track:  # on a CPU's own track the CPU goes without saying
            args["cpu"] = ev.cpu
        if ev.fields:
            args["fields"] = ev.fields
        if ev.ph == "i" and ev.flags != NO_FLAGS:  # a slice spans contexts: its end's flags
            args["flags"] = ev.flags  # would mislead; "....." (nothing to show) goes unsaid
        rec["args"] = args
        if ev.ph == "X":
            rec["dur"] = ev.dur_ns / 1000.0
            if ev.flow_out:
                rec["bind_id"] = ev.flow_out
                rec["flow_out"] = True
            if ev.flow_in:
                rec["bind_id"] = ev.flow_in
                rec["flow_in"] = True
        self._emit(rec)  # an instant without a scope ("s") is the thread's

    def _work_slice(self, ev: TraceEvent, phase: str) -> None:
        """A work item's run as a slice on its worker's track (``kworker/0:1``...), named after
        the work function (the fields' ``work struct %p: function %ps``)."""
        track = ev.comm
        tid = self._tracks.get(track)
        if tid is None:
            tid = self._tracks[track] = 1000 + len(self._tracks)
            self._emit({"ph": "M", "pid": self._pid + 1, "tid": tid, "name": "thread_name",
                        "args": {"name": track}})
        self._emit({"name": ev.fields.rpartition("function ")[2], "cat": "workqueue",
                    "ph": phase, "ts": ev.ts_ns / 1000.0, "pid": self._pid + 1, "tid": tid})

    def close(self) -> None:
        if self._document:
            self.out.write(PERFETTO_TAIL)


def join_perfetto(out: IO[str], parts: Iterable[IO[str]]) -> None:
    """Write one Perfetto JSON document to ``out`` from ``parts`` written by
    ``PerfettoWriter(document=False)`` (empty parts are skipped), in the order given."""
    out.write(PERFETTO_HEAD)
    first = True
    for part in parts:
        head = part.read(1 << 16)
        if not head:
            continue
        if not first:
            out.write(",\n")
        first = False
        out.write(head)
        shutil.copyfileobj(part, out, 1 << 20)
    out.write(PERFETTO_TAIL)


def to_perfetto(events: Iterable[TraceEvent], nr_cpus: int) -> str:
    """The Perfetto JSON of ``events`` (one run), as a string."""
    buf = io.StringIO()
    w = PerfettoWriter(buf)
    w.begin(nr_cpus)
    for ev in events:
        w.write(ev)
    w.close()
    return buf.getvalue()


def open_text(path: str) -> IO[str]:
    """``path`` opened for streaming text output (buffered, UTF-8)."""
    return open(path, "w", encoding="utf-8", buffering=1 << 20)


__all__ = [
    "KERNEL_EVENTS",
    "RCUKIT_EVENTS",
    "RCUKIT_SYSTEM",
    "FtraceWriter",
    "PerfettoWriter",
    "event_system",
    "format_ftrace_line",
    "ftrace_name",
    "join_perfetto",
    "open_text",
    "to_ftrace",
    "to_perfetto",
]
