"""Exporters: the kernel's ftrace text and Chrome/Perfetto trace-event JSON."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from rcukit.trace.events import TraceEvent


def format_ftrace_line(ev: TraceEvent) -> str:
    """``<task>-<pid> [cpu] flags timestamp: event: fields`` as in ``/sys/kernel/tracing/trace``."""
    task = f"{ev.comm}-{ev.pid}"
    secs, ns = divmod(ev.ts_ns, 1_000_000_000)
    return f"{task:>16} [{ev.cpu:03d}] ..... {secs:5d}.{ns // 1000:06d}: {ev.name}: {ev.fields}"


def to_ftrace(events: Iterable[TraceEvent], nr_cpus: int = 0) -> str:
    lines = [
        "# tracer: nop",
        "#",
        f"# entries-in-buffer/entries-written: -/-   #P:{nr_cpus}",
        "#",
        "#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION",
        "#              | |         |   |||||     |         |",
    ]
    lines.extend(format_ftrace_line(ev) for ev in sorted(events, key=lambda e: e.ts_ns))
    return "\n".join(lines) + "\n"


def to_perfetto(events: Iterable[TraceEvent], nr_cpus: int) -> str:
    """Chrome trace-event JSON (opens in ui.perfetto.dev): one track per CPU, one per kthread.

    CPU tracks are threads of a "CPUs" process; named tracks (``rcu_gp``, ``kswapd0``...) are
    threads of a "kthreads" process, so grace periods show as slices beside the CPUs.
    """
    out: list[dict[str, Any]] = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "CPUs"}},
        {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "kthreads"}},
    ]
    for cpu in range(nr_cpus):
        out.append({"ph": "M", "pid": 1, "tid": cpu, "name": "thread_name",
                    "args": {"name": f"CPU {cpu}"}})
    tracks: dict[str, int] = {}
    for ev in events:
        if ev.track:
            tid = tracks.get(ev.track)
            if tid is None:
                tid = tracks[ev.track] = 1000 + len(tracks)
                out.append({"ph": "M", "pid": 2, "tid": tid, "name": "thread_name",
                            "args": {"name": ev.track}})
            pid = 2
        else:
            pid, tid = 1, ev.cpu
        rec: dict[str, Any] = {
            "name": ev.name,
            "cat": ev.name.split("_", 1)[0],
            "ph": ev.ph,
            "ts": ev.ts_ns / 1000.0,
            "pid": pid,
            "tid": tid,
            "args": {"fields": ev.fields, "comm": f"{ev.comm}-{ev.pid}", "cpu": ev.cpu},
        }
        if ev.ph == "X":
            rec["dur"] = ev.dur_ns / 1000.0
        elif ev.ph == "i":
            rec["s"] = "t"
        out.append(rec)
    return json.dumps({"traceEvents": out, "displayTimeUnit": "ns"}, sort_keys=True)
