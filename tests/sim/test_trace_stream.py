"""Streaming trace writers, the trace selection, the latency flags and the ``compare`` trace
options (issue 18): files that parse, stay small by default, and read as ftrace does."""

from __future__ import annotations

import io
import json
import re
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from clitools import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from simtools import boot_and_run, cfg

from rcukit.kernel import Kernel
from rcukit.locking.locks import LockKind
from rcukit.mm.gfp import GFP_KERNEL
from rcukit.scenarios import compare as cmp
from rcukit.scenarios.trace_files import TraceFiles, write_traces
from rcukit.sched.sim import Task
from rcukit.trace.events import (
    DEFAULT_SELECTION,
    HIGH_RATE_EVENTS,
    TraceEvent,
    Tracer,
    lat_flags,
    parse_cpu_list,
    parse_window_ms,
)
from rcukit.trace.export import (
    KERNEL_EVENTS,
    FtraceWriter,
    PerfettoWriter,
    ftrace_name,
    to_ftrace,
)

LINE_RE = re.compile(
    r"^ *(?P<comm>\S+)-(?P<pid>\d+) \[(?P<cpu>\d{3})\] (?P<flags>\S{5}) +"
    r"(?P<secs>\d+)\.(?P<usecs>\d{6}): (?P<name>\w+): (?P<fields>.*)$"
)
TINY = cmp.Workload(flood_cpus=2, objects_per_cpu=600, barrier=True)


# -- selection -------------------------------------------------------------------------------------


def _fill(tr: Tracer) -> None:
    for i, name in enumerate(["rcu_grace_period", "rcu_fqs", "kmalloc", "splat"] * 3):
        tr.emit(name, i * 1_000_000, i % 3, "t", 1, f"n={i}")


def test_event_globs_and_exclusions() -> None:
    """``set_event`` takes globs (``rcu_*``) and ``!name`` to leave one out
    (Documentation/trace/events.rst, "Via the 'set_event' interface")."""
    tr = Tracer()
    tr.enable(frozenset({"rcu_*"}))
    _fill(tr)
    assert {e.name for e in tr} == {"rcu_grace_period", "rcu_fqs"}
    tr = Tracer()
    tr.enable(frozenset({"*", "!kmalloc", "!rcu_f*"}))
    _fill(tr)
    assert {e.name for e in tr} == {"rcu_grace_period", "splat"}
    assert tr.written == 6


def test_cpu_and_window_selection() -> None:
    tr = Tracer()
    tr.enable(cpus={0, 2}, window_ns=(2_000_000, 9_000_000))
    _fill(tr)
    assert [e.ts_ns // 1_000_000 for e in tr] == [2, 3, 5, 6, 8]
    assert {e.cpu for e in tr} <= {0, 2}
    # a slice overlapping the window's start is kept, one that ends before it is not
    tr.emit("rcu_gp", 0, 0, "t", 1, "g", ph="X", dur_ns=2_500_000, track="rcu_gp")
    tr.emit("rcu_gp", 0, 0, "t", 1, "g", ph="X", dur_ns=1_000_000, track="rcu_gp")
    assert sum(e.name == "rcu_gp" for e in tr) == 1


def test_default_selection_leaves_out_the_per_object_events() -> None:
    tr = Tracer()
    tr.enable(DEFAULT_SELECTION)
    for name in (*HIGH_RATE_EVENTS, "rcu_grace_period", "kfree_rcu_monitor"):
        tr.emit(name, 0, 0, "t", 1, "")
    assert [e.name for e in tr] == ["rcu_grace_period", "kfree_rcu_monitor"]


def test_keep_false_holds_no_list_but_listeners_see_all() -> None:
    tr = Tracer()
    seen: list[TraceEvent] = []
    tr.listeners.append(seen.append)
    tr.enable(keep=False)
    _fill(tr)
    assert tr.events == [] and len(seen) == tr.written == 12


@pytest.mark.parametrize(
    ("text", "cpus"), [("0,2", {0, 2}), ("0-3", {0, 1, 2, 3}), ("1, 4-5", {1, 4, 5})]
)
def test_parse_cpu_list(text: str, cpus: set[int]) -> None:
    """The ``cpulist`` format of ``cpulist_parse()`` (lib/bitmap.c), as tracing_cpumask's
    documentation and ``taskset -c`` use it."""
    assert parse_cpu_list(text) == cpus


@pytest.mark.parametrize("text", ["", "a", "3-1", "1-", "-1", "1,,2", "0x1"])
def test_parse_cpu_list_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_cpu_list(text)


def test_parse_window_ms() -> None:
    assert parse_window_ms("5:10") == (5_000_000, 10_000_000)
    assert parse_window_ms(":0.5") == (0, 500_000)
    assert parse_window_ms("250:")[0] == 250_000_000
    for bad in ("5", "10:5", "a:b", "-1:3", "3:3", "nan:1", "1:inf "[:-1] + "x", "inf:"):
        with pytest.raises(ValueError):
            parse_window_ms(bad)


# -- writers ---------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 3)), max_size=60),
       st.integers(1, 7))
def test_ftrace_writer_sorts_through_spills(stamps: list[tuple[int, int]], chunk: int) -> None:
    """Lines come out in timestamp order, ties in emission order, whatever the chunk size:
    the kernel's trace file merges its per-CPU buffers by timestamp (``trace_find_next_entry``,
    kernel/trace/trace.c); here chunks spilled to disk are merged the same way."""
    events = [TraceEvent(ts, cpu, "t", 1, "rcu_fqs", f"i={i}") for i, (ts, cpu) in
              enumerate(stamps)]
    buf = io.StringIO()
    w = FtraceWriter(buf, chunk=chunk)
    w.begin(4)
    for ev in events:
        w.write(ev)
    w.end()
    assert len(w._buf) == 0 and w._spills == []
    body = [ln for ln in buf.getvalue().splitlines() if not ln.startswith("#")]
    want = sorted(events, key=lambda e: e.ts_ns)
    assert [ln.rsplit("i=", 1)[1] for ln in body] == [e.fields[2:] for e in want]
    assert buf.getvalue() == to_ftrace(events, 4)
    assert f"entries-in-buffer/entries-written: {len(events)}/{len(events)}   #P:4" in (
        buf.getvalue())


def test_perfetto_writer_streams_runs_as_process_pairs() -> None:
    buf = io.StringIO()
    w = PerfettoWriter(buf)
    for run in ("a", "b"):
        w.begin(2, run)
        w.write(TraceEvent(1000, 1, "t", 1, "rcu_fqs", "x"))
        w.write(TraceEvent(0, 0, "t", 1, "rcu_gp", "g", ph="X", dur_ns=500, track="rcu_gp"))
        w.write(TraceEvent(0, 0, "t", 1, "nr_free_pages", "nr_free_pages=12", ph="C"))
    w.close()
    doc = json.loads(buf.getvalue())
    procs = {e["pid"]: e["args"]["name"] for e in doc["traceEvents"]
             if e.get("name") == "process_name"}
    assert procs == {1: "a: CPUs", 2: "a: kthreads", 11: "b: CPUs", 12: "b: kthreads"}
    counters = [e for e in doc["traceEvents"] if e["ph"] == "C"]
    assert [(c["pid"], c["args"]) for c in counters] == [(2, {"nr_free_pages": 12}),
                                                         (12, {"nr_free_pages": 12})]
    cats = {e["name"]: e["cat"] for e in doc["traceEvents"] if e["ph"] != "M"}
    assert cats["rcu_fqs"] == "rcu" and cats["rcu_gp"] == "rcukit"


def test_rcukit_events_are_named_apart_from_tracepoints() -> None:
    assert ftrace_name("rcu_kvfree_callback") == "rcu_kvfree_callback"
    assert ftrace_name("splat") == "rcukit_splat"
    assert not any(n.startswith("rcukit_") for n in KERNEL_EVENTS)


# -- latency flags ---------------------------------------------------------------------------------


def test_lat_flags_of_contexts() -> None:
    """``trace_print_lat_fmt()`` (kernel/trace/trace_output.c, v6.1): irqs-off ``d``,
    need-resched ``N``, ``h``/``s``/``H``, preempt depth from ``preempt_count() & 0xff``
    (a served softirq's SOFTIRQ_OFFSET is above it), migrate-disable depth."""

    async def body(k: Kernel) -> list[str]:
        out: list[str] = []

        async def fn(t: Task) -> None:
            out.append(lat_flags(t))
            with t.hardirq():
                out.append(lat_flags(t))
                with t.softirq():
                    out.append(lat_flags(t))
            with t.softirq():
                out.append(lat_flags(t))
            raw = k.new_lock("raw", LockKind.RAW_SPINLOCK)
            with k.locks.locked(t, raw, "x", irqsave=True):
                out.append(lat_flags(t))
                t.cpu.need_resched = True
                out.append(lat_flags(t))
                t.cpu.need_resched = False

        k.spawn(fn, 0, "flags")
        await k.run()
        return out

    flags = boot_and_run(cfg(nr_cpus=2), body)
    assert flags == [".....", "d.h..", "d.H..", "..s..", "d..1.", "dN.1."]


def test_lat_flags_rt_spinlock_is_migrate_disable() -> None:
    """On PREEMPT_RT ``spin_lock()`` is ``rt_spin_lock()``: ``migrate_disable()``, no
    preempt_disable, IRQs on (kernel/locking/spinlock_rt.c, v6.1), so ftrace shows ``....1``."""

    async def body(k: Kernel) -> str:
        box: list[str] = []

        async def fn(t: Task) -> None:
            lock = k.new_lock("s", LockKind.SPINLOCK)
            with k.locks.locked(t, lock, "x", irqsave=True):
                box.append(lat_flags(t))

        k.spawn(fn, 0, "rt")
        await k.run()
        return box[0]

    assert boot_and_run(cfg(nr_cpus=2, preempt_rt=True), body) == "....1"


def _kvfree_trace(**settings: Any) -> list[TraceEvent]:
    async def body(k: Kernel) -> list[TraceEvent]:
        k.tracer.enable()

        async def fn(t: Task) -> None:
            for _ in range(40):
                ptr = await k.mm.kmalloc(t, 64, GFP_KERNEL)
                await k.kvfree.kvfree_rcu(t, ptr, ptr + 16)
            await k.kvfree.kvfree_rcu_barrier(t)

        k.spawn(fn, 0, "flood")
        await k.run()
        return list(k.tracer.events)

    return boot_and_run(cfg(nr_cpus=2, **settings), body)


@pytest.mark.parametrize("settings", [{}, {"preempt_rt": True}])
def test_kvfree_call_rcu_traces_no_event_per_call(settings: dict[str, Any]) -> None:
    """``kvfree_call_rcu()`` (kernel/rcu/tree.c, v5.9-v6.x) emits no tracepoint per call:
    ``trace_rcu_kvfree_callback()`` is ``__call_rcu()``'s, for a kfree offset passed to
    ``call_rcu()``; the batched path traces the reclaim instead
    (``rcu_invoke_kfree_bulk_callback`` per block). So a trace of every event shows the
    kmallocs (outside any lock: ``.`` flags) and the blocks, never a per-call kvfree event."""
    events = _kvfree_trace(**settings)
    assert not [e for e in events if e.name == "rcu_kvfree_callback"]
    assert [e for e in events if e.name == "rcu_invoke_kfree_bulk_callback"]
    kmallocs = [e for e in events if e.name == "kmem_cache_alloc"]
    assert len(kmallocs) == 40 and {e.flags[0] for e in kmallocs} == {"."}


def test_the_rcu_head_list_traces_each_rcu_head_and_its_offset() -> None:
    """``kvfree_rcu_list()`` (kernel/rcu/tree.c, v5.9-v6.x; ``kfree_rcu_work()``'s loop
    before v6.3) frees ``(void *)head - head->func`` and traces
    ``trace_rcu_invoke_kvfree_callback(rcu_state.name, head, offset)``, printed as ``rhp=%p
    func=%ld``: the rcu_head's address and its offset in the object, in decimal. v5.5 has no
    blocks, so every two-argument kvfree_rcu() goes on that list."""
    async def body(k: Kernel) -> tuple[list[int], list[TraceEvent]]:
        k.tracer.enable()
        ptrs: list[int] = []

        async def fn(t: Task) -> None:
            for _ in range(10):
                ptr = await k.mm.kmalloc(t, 64, GFP_KERNEL)
                ptrs.append(ptr)
                await k.kvfree.kvfree_rcu(t, ptr, ptr + 24)
            await k.rcu.rcu_barrier(t)
            await t.sleep_ns(100_000_000)

        k.spawn(fn, 0, "flood")
        await k.run()
        return ptrs, list(k.tracer.events)

    ptrs, events = boot_and_run(cfg(nr_cpus=2, **{"kvfree.profile": "v5.5"}), body)
    lines = [e.fields for e in events if e.name == "rcu_invoke_kvfree_callback"]
    assert sorted(lines) == sorted(f"rcu_sched rhp=0x{p + 24:x} func=24" for p in ptrs)
    assert all(e.name != "rcu_kvfree_callback" for e in events)


@pytest.mark.parametrize(("settings", "flavour"),
                         [({}, "rcu_sched"), ({"preempt_rcu": True}, "rcu_preempt"),
                          ({"preempt_rt": True}, "rcu_preempt")])
def test_one_rcu_flavour_per_run(settings: dict[str, Any], flavour: str) -> None:
    """A kernel has one Tree RCU flavour: ``rcu_preempt`` with CONFIG_PREEMPT_RCU,
    ``rcu_sched`` without (``rcu_state.name``, kernel/rcu/tree.c since v4.20), and every rcu
    tracepoint prints it first."""
    events = _kvfree_trace(**settings)
    rcu = [e for e in events if KERNEL_EVENTS.get(e.name) == "rcu"]
    assert {e.name for e in rcu} >= {"rcu_invoke_kfree_bulk_callback", "rcu_grace_period"}
    assert {e.fields.split()[0] for e in rcu} == {flavour}


def test_call_site_is_symbol_offset_and_stable() -> None:
    """kmem events print ``call_site=%pS`` (include/trace/events/kmem.h, v6.1): symbol+off/size.
    rcukit's offsets are made up (bytecode offsets) but the same on every run."""
    a = [e.fields for e in _kvfree_trace() if e.name in ("kmem_cache_alloc", "kfree")]
    b = [e.fields for e in _kvfree_trace() if e.name in ("kmem_cache_alloc", "kfree")]
    assert a and a == b
    for f in a:
        assert re.match(r"call_site=\w+\+0x[0-9a-f]+/0x[0-9a-f]+ ptr=0x", f), f


# -- compare's trace files -------------------------------------------------------------------------


def _rows_with(files: TraceFiles) -> None:
    with files:
        cmp.run_compare(cmp.default_config(), TINY, ["nowait"], ["default", "rt"],
                        tracing=files.row)


def test_trace_files_stream_rows(tmp_path: Path) -> None:
    t, f = tmp_path / "t.json", tmp_path / "f.txt"
    _rows_with(TraceFiles(str(t), str(f)))
    doc = json.loads(t.read_text(encoding="utf-8"))
    names = {e["args"]["name"] for e in doc["traceEvents"] if e.get("name") == "process_name"}
    assert names == {"rfc/nowait/default: CPUs", "rfc/nowait/default: kthreads",
                     "rfc/nowait/rt: CPUs", "rfc/nowait/rt: kthreads"}
    assert any(e["name"] == "rcu_gp" and e["ph"] == "X" for e in doc["traceEvents"])
    assert not {e["name"] for e in doc["traceEvents"]} & set(HIGH_RATE_EVENTS)
    text = f.read_text(encoding="utf-8")
    sections = text.split("# ===== ")[1:]
    assert len(sections) == 2
    for sec in sections:
        n = int(re.search(r"entries-in-buffer/entries-written: (\d+)/\1 ", sec)[1])  # type: ignore[index]
        body = [ln for ln in sec.splitlines()[1:] if not ln.startswith("#")]
        assert len(body) == n > 0
        for ln in body:
            m = LINE_RE.match(ln)
            assert m is not None, ln
            assert m["name"] in KERNEL_EVENTS or m["name"].startswith("rcukit_"), ln
    assert "rcu_preempt " in sections[1] and "rcu_sched " not in sections[1]  # rt
    assert "rcu_sched " in sections[0] and "rcu_preempt " not in sections[0]


def test_trace_files_filters(tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    _rows_with(TraceFiles(None, str(f), events=frozenset({"rcu_*"}), cpus=frozenset({1}),
                          window_ns=(5_000_000, 20_000_000)))
    lines = [LINE_RE.match(ln) for ln in f.read_text(encoding="utf-8").splitlines()
             if not ln.startswith("#")]
    assert lines and all(m is not None for m in lines)
    for m in lines:
        assert m is not None
        assert m["name"].startswith("rcu_") and m["cpu"] == "001"
        assert 5_000 <= int(m["secs"]) * 1_000_000 + int(m["usecs"]) < 20_000


def test_everything_is_bigger_than_the_default(tmp_path: Path) -> None:
    """The default selection is what keeps a default trace small: per-object events are most
    of a flood's trace."""
    small, big = tmp_path / "s.json", tmp_path / "b.json"
    _rows_with(TraceFiles(str(small), None))
    _rows_with(TraceFiles(str(big), None, events=frozenset({"*"})))
    assert big.stat().st_size > 5 * small.stat().st_size
    assert json.loads(big.read_text(encoding="utf-8"))["traceEvents"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--trace-events", ""], "argument --trace-events:"),
        (["--trace-events", "rcu_grace_periodz"], "unknown event 'rcu_grace_periodz'"),
        (["--trace-events", "rcu_*,"], "argument --trace-events:"),
        (["--trace-events", "a b"], "argument --trace-events:"),
        (["--trace-cpus", "x"], "argument --trace-cpus:"),
        (["--trace-cpus", "3-1"], "argument --trace-cpus:"),
        (["--trace-cpus", "99"], "--trace-cpus 99: the machine has CPUs 0-"),
        (["--trace-window", "5"], "argument --trace-window:"),
        (["--trace-window", "10:5"], "argument --trace-window:"),
        (["--trace-window", "a:b"], "argument --trace-window:"),
    ],
)
def test_bad_trace_options_exit_2_before_running(
    args: list[str], needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*a: Any, **k: Any) -> None:
        raise AssertionError("ran")

    monkeypatch.setattr(cmp, "run_compare", boom)
    rc, _, err = run_cli(["compare", "--trace", str(tmp_path / "t.json"), *args])
    assert rc == 2 and needle in err, err
    assert not (tmp_path / "t.json").exists()


def test_trace_options_need_a_trace_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cmp, "run_compare", lambda *a, **k: None)
    rc, _, err = run_cli(["compare", "--trace-cpus", "0"])
    assert rc == 2 and "--trace-cpus needs --trace or --ftrace" in err


def test_compare_cli_trace_with_filters(tmp_path: Path) -> None:
    t, f = tmp_path / "t.json", tmp_path / "f.txt"
    rc, _, err = run_cli(["compare", "--variants", "nowait", "--configs", "lockdep",
                          "--scale", "0.01", "--trace", str(t), "--ftrace", str(f),
                          "--trace-events", "rcu_invoke_*,kmem_*", "--trace-cpus", "0",
                          "--trace-window", "0:30"])
    assert rc == 0, err
    evs = [e for e in json.loads(t.read_text(encoding="utf-8"))["traceEvents"]
           if e["ph"] != "M"]
    names = {e["name"] for e in evs}
    assert "kmem_cache_alloc" in names
    assert names <= {"rcu_invoke_kfree_bulk_callback", "rcu_invoke_kvfree_callback",
                     "rcu_invoke_callback", "kmem_cache_alloc", "kmalloc"}
    # instants sit on their CPU's track (the CPUs process's thread tid == CPU)
    assert all(e["tid"] == 0 and e["ts"] < 30_000 for e in evs)
    text = f.read_text(encoding="utf-8")
    n = int(re.search(r"entries-written: (\d+)/", text)[1])  # type: ignore[index]
    assert n == len(evs)


def test_perfetto_tracks_of_locks_work_and_counters(tmp_path: Path) -> None:
    """Lock holds of each CPU's ``krcp->lock`` and of ``zone->lock`` as slices (one holder at
    a time: they never overlap on a track), work items as slices on their worker's track, and
    counter tracks for the zone's free pages and kvfree_rcu()'s pending objects."""
    t = tmp_path / "t.json"
    _rows_with(TraceFiles(str(t), None, events=frozenset(
        {"lock_*", "nr_free_pages", "krc_pending", "workqueue_*"})))
    doc = json.loads(t.read_text(encoding="utf-8"))
    evs = doc["traceEvents"]
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in evs
               if e.get("name") == "thread_name"}
    for pid in (2, 12):  # each row's kthreads process
        names = {n for (p, _), n in threads.items() if p == pid}
        assert {"krc.lock/0", "krc.lock/1", "&zone->lock"} <= names
        assert any(n.startswith("kworker/") for n in names)
    for (pid, tid), name in threads.items():
        if "lock" not in name:
            continue
        holds = sorted((e["ts"], e["dur"]) for e in evs
                       if e["ph"] == "X" and e["pid"] == pid and e.get("tid") == tid)
        assert holds, name
        for (t0, d0), (t1, _) in pairwise(holds):
            assert d0 >= 0 and t0 + d0 <= t1 + 1e-9, name
    counters = {next(iter(e["args"])) for e in evs if e["ph"] == "C"}
    assert counters == {"nr_free_pages", "krc_pending"}
    begins = sum(e["ph"] == "B" for e in evs)
    assert begins and begins == sum(e["ph"] == "E" for e in evs)


def test_trace_files_are_deterministic(tmp_path: Path) -> None:
    """Same config and seed, same trace, byte for byte (lock slices and counters included)."""
    outs = []
    for i in range(2):
        t, f = tmp_path / f"t{i}.json", tmp_path / f"f{i}.txt"
        _rows_with(TraceFiles(str(t), str(f), events=frozenset({"*"})))
        outs.append((t.read_bytes(), f.read_bytes()))
    assert outs[0] == outs[1]


def test_write_traces_from_kept_kernels(tmp_path: Path) -> None:
    """``run_compare(kernels=...)`` keeps each row's events in memory; ``write_traces`` streams
    them to the same files the CLI writes."""
    ks: list[Any] = []
    cmp.run_compare(cmp.default_config(), TINY, ["nowait"], ["default"], kernels=ks)
    t, f = tmp_path / "t.json", tmp_path / "f.txt"
    write_traces(ks, str(t), str(f))
    doc = json.loads(t.read_text(encoding="utf-8"))
    # Perfetto shows a work item's start and end as its slice (B/E), not as instants too
    n = sum(1 for e in doc["traceEvents"] if e["ph"] == "i")
    work = sum(1 for e in ks[0][1].tracer.events if e.name.startswith("workqueue_execute"))
    assert n + work == sum(1 for e in ks[0][1].tracer.events if e.ph == "i") > work > 0
    assert sum(1 for e in doc["traceEvents"] if e["ph"] in "BE") == work
    assert (f"entries-in-buffer/entries-written: {n + work}/{n + work} "
            in f.read_text(encoding="utf-8"))


def test_trace_files_leave_an_existing_file_alone_when_no_row_ran(tmp_path: Path) -> None:
    """A run that fails before its first row (a bad plugin, a config check, Ctrl-C at boot)
    loses nothing: a file already at the ``--trace``/``--ftrace`` path keeps its bytes, and a
    file the run created for the check is removed again."""
    old = tmp_path / "old.json"
    old.write_text("yesterday's trace")
    new = tmp_path / "new.txt"
    with pytest.raises(RuntimeError), TraceFiles(str(old), str(new)):
        assert new.exists()  # created now: a path that cannot be written fails here
        raise RuntimeError("the run failed before any row")
    assert old.read_text() == "yesterday's trace"
    assert not new.exists()


def test_trace_files_of_finished_rows_replace_the_old_file(tmp_path: Path) -> None:
    """Once a row has run, the files hold the rows that ran, even if a later one failed."""
    old = tmp_path / "old.txt"
    old.write_text("yesterday's trace")
    with pytest.raises(RuntimeError), TraceFiles(None, str(old)) as files:
        files.row(("rfc", "nowait", "default"))
        raise RuntimeError("the second row failed")
    assert old.read_text() != "yesterday's trace"
