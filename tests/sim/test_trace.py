"""Tracepoints, the ftrace and Perfetto exporters, and /proc/vmstat-style counters."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing

import rcukit
import rcukit.sim
from rcukit.config import KernelConfig
from rcukit.kernel import Kernel
from rcukit.locking import LockKind
from rcukit.sched import Task
from rcukit.trace import Counters, TraceEvent, Tracer, to_ftrace, to_perfetto
from rcukit.trace.export import format_ftrace_line
from rcukit.wq import Work

FTRACE_RE = re.compile(
    r"^ *(?P<comm>\S+)-(?P<pid>\d+) \[(?P<cpu>\d{3})\] "
    r"(?P<flags>[.dbD][.Nnp][.hsHzZ][.\da-f]{2}) "
    r"+(?P<secs>\d+)\.(?P<usecs>\d{6}): (?P<name>\w+): (?P<fields>.*)$"
)


def run_kernel(
    body: Callable[[Kernel, Task], Awaitable[object]],
    before: Callable[[Kernel], None] | None = None,
    **cfg: Any,
) -> Kernel:
    """Boot a 4-CPU kernel, call ``before``, run ``body`` on every CPU, return the kernel."""
    box: dict[str, Kernel] = {}

    async def main() -> None:
        async with rcukit.sim.boot(KernelConfig(nr_cpus=4, **cfg)) as k:
            if before is not None:
                before(k)

            async def fn(task: Task) -> object:
                return await body(k, task)

            await k.run_on_cpus(fn)
            box["k"] = k

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return box["k"]


async def _noop_work(task: Task, work: Work) -> None:
    task.charge(100)


def _work_and_splat(phase: str) -> Callable[[Kernel, Task], Awaitable[object]]:
    """Each CPU runs one work item and hits one Invalid wait context (lockdep build)."""

    async def body(k: Kernel, t: Task) -> None:
        w = Work(f"{phase}{t.cpu.id}", _noop_work)
        k.system_wq.queue_work(t, w)
        await k.system_wq.flush_work(t, w)
        raw = k.new_lock(f"raw{t.cpu.id}", LockKind.RAW_SPINLOCK)
        spin = k.new_lock(f"spin{t.cpu.id}", LockKind.SPINLOCK)
        with k.locks.locked(t, raw, "outer"), k.locks.locked(t, spin, "inner"):
            t.charge(10)

    return body


def test_tracing_is_off_by_default() -> None:
    k = run_kernel(_work_and_splat("a"), prove_raw_lock_nesting=True)
    assert not k.tracer.on
    assert k.tracer.events == []
    assert k.system_wq.items_run == 4
    assert k.splat_counts()["invalid_wait_context"] == 4


def test_enable_records_events_and_disable_stops() -> None:
    k = run_kernel(
        _work_and_splat("a"), before=lambda k: k.tracer.enable(), prove_raw_lock_nesting=True
    )
    names = [e.name for e in k.tracer]
    assert names.count("workqueue_execute_start") == 4
    # process_one_work() traces the end of each item too (trace_workqueue_execute_end(),
    # kernel/workqueue.c since v2.6.36): 4 more events than before it was modelled.
    assert names.count("workqueue_execute_end") == 4
    # Four violations, one printed: lockdep is one-shot (print_lock_invalid_wait_context() ->
    # debug_locks_off(), kernel.md 8.4) and the trace shows what the kernel printed.
    assert names.count("splat") == 1
    assert k.splat_counts()["invalid_wait_context"] == 4
    works = sorted(e.fields for e in k.tracer if e.name == "workqueue_execute_start")
    # "work struct %p: function %ps" (include/trace/events/workqueue.h, v5.6+): a hashed
    # pointer (16 hex digits, distinct per work item), then the work function's symbol
    assert sorted(w.rpartition(": function ")[2] for w in works) == [f"a{c}" for c in range(4)]
    assert all(re.fullmatch(r"work struct [0-9a-f]{16}: function a\d", w) for w in works)
    assert len({w.split(":")[0] for w in works}) == 4
    for e in k.tracer:
        if e.name.startswith("workqueue_execute_"):
            assert e.comm.startswith(f"kworker/{e.cpu}:")
        else:
            assert e.comm == f"fn/{e.cpu}"
            assert e.fields == f"BUG: Invalid wait context lock=spin{e.cpu} at inner"

    def toggle(k: Kernel) -> None:
        k.tracer.enable()
        k.tracer.disable()

    k2 = run_kernel(_work_and_splat("b"), before=toggle, prove_raw_lock_nesting=True)
    assert not k2.tracer.on
    assert k2.tracer.events == []


def test_filter_keeps_only_named_events() -> None:
    seen: list[TraceEvent] = []

    def setup(k: Kernel) -> None:
        k.tracer.enable(frozenset({"splat"}))
        k.tracer.listeners.append(seen.append)

    k = run_kernel(_work_and_splat("a"), before=setup, prove_raw_lock_nesting=True)
    # One printed report (lockdep is one-shot), from whichever CPU hit it first.
    assert [e.name for e in k.tracer] == ["splat"]
    assert seen == k.tracer.events
    [printed] = k.locks.printed_reports
    assert [e.cpu for e in seen] == [printed.cpu]


def test_tracer_limit_drops_but_listeners_see_all() -> None:
    tr = Tracer(limit=2)
    got: list[str] = []
    tr.listeners.append(lambda e: got.append(e.fields))
    tr.enable()
    for i in range(3):
        tr.emit("ev", i, 0, "t", 1, f"n={i}")
    assert [e.fields for e in tr] == ["n=0", "n=1"]
    assert tr.dropped == 1
    assert got == ["n=0", "n=1", "n=2"]


# -- ftrace text -----------------------------------------------------------------------------------


def test_ftrace_line_format() -> None:
    ev = TraceEvent(
        1_234_567_890, 3, "kworker/3:1", 42, "workqueue_execute_start", "work struct w"
    )
    assert format_ftrace_line(ev) == (
        "  kworker/3:1-42 [003] .....     1.234567: workqueue_execute_start: work struct w"
    )
    long = TraceEvent(12_000_001_000, 12, "rcu_preempt_kthread", 7, "rcu_fqs", "a=1",
                      flags="d..1.")
    assert format_ftrace_line(long) == (
        "rcu_preempt_kthread-7 [012] d..1.    12.000001: rcu_fqs: a=1"
    )
    # Not a kernel tracepoint: printed under rcukit's own name (rcukit.trace.export).
    own = TraceEvent(1000, 0, "t", 1, "kfree_rcu_monitor", "cpu=0")
    assert format_ftrace_line(own).endswith(" rcukit_kfree_rcu_monitor: cpu=0")


def test_ftrace_of_a_run() -> None:
    k = run_kernel(
        _work_and_splat("a"), before=lambda k: k.tracer.enable(), prove_raw_lock_nesting=True
    )
    text = to_ftrace(k.tracer.events, nr_cpus=4)
    lines = text.splitlines()
    assert lines[0] == "# tracer: nop"
    assert lines[2] == "# entries-in-buffer/entries-written: 9/9   #P:4"
    body = [ln for ln in lines if not ln.startswith("#")]
    # 4 work items (start and end), lockdep's one report
    assert len(body) == len(k.tracer.events) == 9
    stamps = []
    for ln in body:
        m = FTRACE_RE.match(ln)
        assert m is not None, ln
        ev = next(e for e in k.tracer if e.fields == m["fields"] and e.cpu == int(m["cpu"])
                  and m["name"].endswith(e.name))
        name = ev.name if ev.name != "splat" else "rcukit_splat"
        assert (m["comm"], int(m["pid"]), m["name"], m["flags"]) == (
            ev.comm, ev.pid, name, ev.flags)
        assert int(m["secs"]) * 1_000_000 + int(m["usecs"]) == ev.ts_ns // 1000
        stamps.append(ev.ts_ns)
    assert stamps == sorted(stamps)
    assert text.endswith("\n")


# -- Perfetto --------------------------------------------------------------------------------------


def test_perfetto_json() -> None:
    events = [
        TraceEvent(1000, 0, "fn/0", 1, "kvfree_call_rcu", "ptr=1"),
        TraceEvent(2000, 1, "fn/1", 2, "kvfree_call_rcu", "ptr=2"),
        TraceEvent(0, 0, "rcu_gp", 9, "rcu_grace_period", "gp 4", ph="X", dur_ns=3_000_000,
                   track="rcu_gp"),
        TraceEvent(5000, 2, "kswapd0", 10, "mm_vmscan_kswapd_wake", "nid=0", track="kswapd0"),
        TraceEvent(3_000_000, 0, "rcu_gp", 9, "rcu_grace_period", "gp 8", ph="X", dur_ns=1000,
                   track="rcu_gp"),
    ]
    doc = json.loads(to_perfetto(events, nr_cpus=4))
    assert doc["displayTimeUnit"] == "ns"
    recs = doc["traceEvents"]
    meta = [r for r in recs if r["ph"] == "M"]
    procs = {r["pid"]: r["args"]["name"] for r in meta if r["name"] == "process_name"}
    assert procs == {1: "CPUs", 2: "kthreads"}
    threads = {(r["pid"], r["tid"]): r["args"]["name"] for r in meta if r["name"] == "thread_name"}
    cpu_threads = {tid: n for (pid, tid), n in threads.items() if pid == 1}
    assert cpu_threads == {0: "CPU 0", 1: "CPU 1", 2: "CPU 2", 3: "CPU 3"}
    kthreads = sorted(n for (pid, _), n in threads.items() if pid == 2)
    assert kthreads == ["kswapd0", "rcu_gp"]  # one track each, however many events
    data = [r for r in recs if r["ph"] != "M"]
    assert len(data) == len(events)
    first = data[0]
    # a thread-scoped instant (no "s": the importer's default) on CPU 0's track; the CPU and
    # the "....." of no flags go without saying
    assert (first["pid"], first["tid"], first["ts"], "s" in first) == (1, 0, 1.0, False)
    assert first["args"] == {"fields": "ptr=1", "comm": "fn/0-1"}
    assert first["cat"] == "rcukit"  # kvfree_call_rcu is a function, not a tracepoint
    gps = [r for r in data if r["name"] == "rcu_grace_period"]
    assert [(r["ts"], r["dur"], r["pid"]) for r in gps] == [(0.0, 3000.0, 2), (3000.0, 1.0, 2)]
    assert len({r["tid"] for r in gps}) == 1


def test_perfetto_of_a_run_loads() -> None:
    k = run_kernel(
        _work_and_splat("a"), before=lambda k: k.tracer.enable(), prove_raw_lock_nesting=True
    )
    doc = json.loads(to_perfetto(k.tracer.events, nr_cpus=4))
    data = [r for r in doc["traceEvents"] if r["ph"] != "M"]
    instants = [r for r in data if r["ph"] == "i"]
    assert len(instants) == 1  # lockdep's one report
    # each work item is a slice on its worker's track, in the kthreads process (its start
    # and end tracepoints are that slice's ends, not instants beside it)
    slices = [r for r in data if r["ph"] in "BE"]
    assert sorted((r["name"], r["ph"]) for r in slices) == sorted(
        (f"a{c}", ph) for c in range(4) for ph in "BE")
    assert {r["pid"] for r in slices} == {2}


# -- counters --------------------------------------------------------------------------------------


def test_counters_format_vmstat() -> None:
    c = Counters()
    assert c["pgalloc_normal"] == 0
    assert c.get("nope", -1) == -1
    c.inc("pgalloc_normal")
    c.inc("pgalloc_normal", 31)
    c.inc("kswapd_wake")
    c.set_max("pcp_high_watermark", 10)
    c.set_max("pcp_high_watermark", 4)
    assert c["pgalloc_normal"] == 32
    assert c["pcp_high_watermark"] == 10
    assert c.snapshot() == {"kswapd_wake": 1, "pcp_high_watermark": 10, "pgalloc_normal": 32}
    assert list(c.snapshot()) == sorted(c.snapshot())
    assert c.format_vmstat() == "kswapd_wake 1\npcp_high_watermark 10\npgalloc_normal 32\n"
    assert Counters().format_vmstat() == ""


def test_kernel_counts_splats_in_vmstat() -> None:
    # On RT each CPU's uncontended spinlock_t under its raw lock is rt_spin_lock()'s
    # might-sleep report (kernel.md 8.3; this said scheduling_while_atomic before). vmstat
    # counts every violation, printed or rate-limited.
    k = run_kernel(_work_and_splat("a"), preempt_rt=True)
    assert k.vmstat["splat_sleeping_in_atomic"] == 4
    assert "splat_sleeping_in_atomic 4\n" in k.vmstat.format_vmstat()
