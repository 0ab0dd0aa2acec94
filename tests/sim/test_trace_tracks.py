"""Traces that cost what they show (issue 18): per-tracepoint static keys keep the fast paths a
default selection does not look at, traced rows run in worker processes with the same bytes,
and the Perfetto tracks a kernel engineer expects (pcp-lock holds, grace periods and per-CPU
quiescent states, one arrow per kvfree_rcu() block, counters)."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from simtools import boot_and_run, cfg, run_sim

from rcukit.kernel import Kernel
from rcukit.mm.gfp import GFP_KERNEL
from rcukit.rcu.segcblist import RcuHead
from rcukit.scenarios import compare as cmp
from rcukit.scenarios.trace_files import TraceFiles
from rcukit.sched.sim import Task
from rcukit.trace.events import DEFAULT_SELECTION, HIGH_RATE_EVENTS, Tracepoints, Tracer

TINY = cmp.Workload(flood_cpus=2, objects_per_cpu=600, barrier=True)


# -- static keys -----------------------------------------------------------------------------------


def test_tracepoint_keys_follow_the_selection() -> None:
    """A tracepoint's call site tests its own static key (``trace_<name>_enabled()``,
    include/linux/tracepoint.h), switched when the event is enabled in ``set_event``: the keys
    are set once by ``enable()``, every one off again after ``disable()``."""
    tr = Tracer()
    keys = Tracepoints.__slots__
    assert not any(getattr(tr.tp, n) for n in keys)
    tr.enable(DEFAULT_SELECTION)
    on = {n for n in keys if getattr(tr.tp, n)}
    assert on == {n for n in keys if n not in HIGH_RATE_EVENTS}
    assert "rcu_grace_period" in on and "kmem_cache_alloc" not in on
    tr.enable(["kmalloc", "rcu_*"])
    assert {n for n in keys if getattr(tr.tp, n)} == {
        "kmalloc", *(n for n in keys if n.startswith("rcu_"))}
    tr.disable()
    assert not any(getattr(tr.tp, n) for n in keys)


def _flood(events: frozenset[str] | None, *, runs: bool) -> tuple[Any, int, int, int]:
    """kvfree_rcu() of 3000 kmalloc'ed objects (by runs or call by call) on a kernel traced
    with ``events`` (None: untraced): its statistics, calls down the slow path, flood runs
    taken, events written."""
    async def body(k: Kernel) -> tuple[Any, int, int, int]:
        if events is not None:
            k.tracer.enable(events, keep=False)

        async def fn(t: Task) -> None:
            if runs:
                await k.kvfree.kvfree_rcu_flood(t, 64, GFP_KERNEL, 3000, 16)
            else:
                for _ in range(3000):
                    ptr = await k.mm.kmalloc(t, 64, GFP_KERNEL)
                    await k.kvfree.kvfree_rcu(t, ptr, ptr + 16)
            await k.kvfree.kvfree_rcu_barrier(t)

        k.spawn(fn, 0, "flood")
        await k.run()
        kv = k.kvfree
        return kv.statistics(), kv.counters.slow_calls, kv.flood.runs, k.tracer.written

    return boot_and_run(cfg(nr_cpus=2), body)


@pytest.mark.parametrize("runs", [False, True])
def test_tracing_keeps_kvfree_rcus_fast_path(runs: bool) -> None:
    """``kvfree_call_rcu()`` (kernel/rcu/tree.c, v5.9-v6.x) emits no tracepoint per call (its
    body has none; ``rcu_kvfree_callback`` is ``__call_rcu()``'s), so no trace selection
    changes its path: a trace without the per-object events takes the same fast path and
    the same run-based floods as no trace at all; one with every event still takes the fast
    path per call, while each kmalloc's own ``kmem_cache_alloc`` event (include/trace/events/
    kmem.h, a static key per call site) sends a run-based flood call by call. The counts
    are the same every time: tracing observes, never changes, a run."""
    plain, plain_slow, plain_runs, _ = _flood(None, runs=runs)
    traced, traced_slow, traced_runs, written = _flood(DEFAULT_SELECTION, runs=runs)
    every, every_slow, every_runs, written_all = _flood(frozenset({"*"}), runs=runs)
    assert plain_slow < 100
    assert traced == plain and (traced_slow, traced_runs) == (plain_slow, plain_runs)
    assert written > 0
    assert every_slow == plain_slow and every_runs == 0 and written_all > 10 * written
    assert every.calls == plain.calls and every.objects_freed == plain.objects_freed
    if runs:
        assert plain_runs > 0


# -- rows in workers ---------------------------------------------------------------------------


def _traced(tmp_path: Path, name: str, jobs: int, **kw: Any) -> tuple[bytes, bytes, Any]:
    t, f = tmp_path / f"{name}.json", tmp_path / f"{name}.txt"
    with TraceFiles(str(t), str(f), **kw) as files:
        res = cmp.run_compare(cmp.default_config(), TINY, ["nowait", "fast-try"],
                              ["default", "rt"], tracing=files.row, jobs=jobs)
    return t.read_bytes(), f.read_bytes(), res


def test_traced_rows_in_workers_write_the_same_bytes(tmp_path: Path) -> None:
    """Each row streams its own part of the files in the process that runs it; the parts are
    joined in row order, so the files are the same bytes with 1 or 2 worker processes, and a
    traced run's results are the untraced run's (tracing observes, never changes, a run)."""
    t1, f1, r1 = _traced(tmp_path, "one", 1)
    t2, f2, r2 = _traced(tmp_path, "two", 2)
    assert t1 == t2 and f1 == f2
    plain = cmp.run_compare(cmp.default_config(), TINY, ["nowait", "fast-try"],
                            ["default", "rt"], jobs=2)
    assert r1.to_json() == r2.to_json() == plain.to_json()
    doc = json.loads(t1)
    names = [e["args"]["name"] for e in doc["traceEvents"] if e.get("name") == "process_name"]
    assert names == [f"rfc/{v}/{c}: {p}" for v in ("nowait", "fast-try")
                     for c in ("default", "rt") for p in ("CPUs", "kthreads")]
    assert f1.decode().count("# ===== profile=rfc variant=") == 4
    assert not list(tmp_path.glob("rcukit-trace-*"))


# -- Perfetto tracks -------------------------------------------------------------------------------


def _perfetto(
    tmp_path: Path, profile: str, build: str, events: frozenset[str] = DEFAULT_SELECTION
) -> tuple[list[dict[str, Any]], Any]:
    t = tmp_path / "t.json"
    config = cmp.default_config().replace(**{"kvfree.profile": profile})
    with TraceFiles(str(t), None, events=events) as files:
        res = cmp.run_compare(config, TINY, ["nowait"], [build], tracing=files.row)
    evs: list[dict[str, Any]] = json.loads(t.read_text(encoding="utf-8"))["traceEvents"]
    return evs, res.rows[0]


def _threads(evs: list[dict[str, Any]]) -> dict[tuple[int, int], str]:
    return {(e["pid"], e["tid"]): e["args"]["name"] for e in evs if e.get("name") == "thread_name"}


@pytest.mark.parametrize(
    ("profile", "build", "lock"),
    [("rfc", "rt", "pa_lock.l"), ("v5.13", "rt", "pa_lock.l"), ("v6.1", "default", "&pcp->lock"),
     ("v6.1", "rt", "&pcp->lock")],
)
def test_pcp_lock_holds(tmp_path: Path, profile: str, build: str, lock: str) -> None:
    """The pcp lists' protection as the profile's kernel has it (mm/page_alloc.c): the -rt
    patchset's per-CPU ``pa_lock`` local_lock on 5.x PREEMPT_RT, a ``spinlock_t pcp->lock``
    per pcp from v6.0 ("mm/page_alloc: protect PCP lists with a spinlock"). Each CPU's lock
    gets a track of hold slices that never overlap (one holder at a time), each naming the
    function that took it; those taken inside ``krcp->lock`` (``lock_pcp_in_krcp``) are as
    many as vmstat's ``pcp_lock_in_krcp`` counts, the rest (``lock_pcp``) one per page."""
    evs, row = _perfetto(tmp_path, profile, build, frozenset({"lock_pcp*"}))
    tracks = {k: n for k, n in _threads(evs).items() if n.startswith(f"{lock}/")}
    assert set(tracks.values()) == {f"{lock}/{c}" for c in range(4)}
    for (pid, tid), name in tracks.items():
        holds = sorted((e["ts"], e["dur"], e["args"]["fields"]) for e in evs
                       if e["ph"] == "X" and e["pid"] == pid and e["tid"] == tid)
        assert holds, name
        assert all(f.startswith("ip=") for _, _, f in holds)
        for (t0, d0, _), (t1, _, _) in pairwise(holds):
            assert d0 >= 0 and t0 + d0 <= t1 + 1e-9, name
    inside = [e for e in evs if e.get("name") == "lock_pcp_in_krcp"]
    assert len(inside) == row["pcp_lock_in_krcp"]
    assert sum(1 for e in evs if e.get("name") == "lock_pcp") > 10 * len(inside)


def test_default_trace_shows_pcp_holds_inside_krcp_lock(tmp_path: Path) -> None:
    """The RFC's question is what the block allocator does under ``krcp->lock``: the default
    trace keeps those pcp-lock holds (the -rt ``pa_lock``, a sleeping lock under a raw one on
    v5.9 PREEMPT_RT) and leaves out the per-page holds of everyone else."""
    evs, row = _perfetto(tmp_path, "rfc", "rt")
    names = {e.get("name") for e in evs}
    assert "lock_pcp" not in names
    inside = [e for e in evs if e.get("name") == "lock_pcp_in_krcp"]
    assert len(inside) == row["pcp_lock_in_krcp"] > 0
    threads = _threads(evs)
    assert {threads[(e["pid"], e["tid"])].split("/")[0] for e in inside} == {"pa_lock.l"}


def test_no_pcp_lock_where_irqs_off_protect_the_lists(tmp_path: Path) -> None:
    """5.8-5.13 on !RT: ``rmqueue_pcplist()`` protects the lists with ``local_irq_save()``
    (mm/page_alloc.c, v5.9), no lock, so there is no pcp-lock track to draw."""
    evs, _ = _perfetto(tmp_path, "rfc", "default")
    assert not [n for n in _threads(evs).values() if n.startswith(("pa_lock", "&pcp", "lock#"))]
    assert "&zone->lock" in _threads(evs).values()


def test_grace_periods_and_quiescent_states(tmp_path: Path) -> None:
    """A normal grace period ends only once every CPU that owed it a quiescent state at its
    start has reported one (``rcu_report_qs_rnp()`` clears ``rnp->qsmask`` bits; the GP kthread
    ends the GP when it is empty; ``force_qs_rnp()`` reports idle CPUs; kernel/rcu/tree.c,
    v5.9). Each ``rcu_qs`` slice, on its CPU's track, runs from a GP's start (an ``rcu_gp``
    slice's) to that CPU's report, within the GP."""
    evs, row = _perfetto(tmp_path, "rfc", "default")
    threads = _threads(evs)
    gps = {e["ts"]: e["dur"] for e in evs if e["ph"] == "X" and e["name"] == "rcu_gp"}
    assert len(gps) >= row["grace_periods"] > 0
    qs = [e for e in evs if e["ph"] == "X" and e["name"] == "rcu_qs"]
    # the flooding CPUs 0 and 1 owe every GP a QS; an idle CPU owes none (the model leaves a
    # CPU idle at a GP's start out of its holdouts; force_qs_rnp() may report it, "dti")
    tracks = {threads[(e["pid"], e["tid"])] for e in qs}
    assert {"rcu_qs/CPU 0", "rcu_qs/CPU 1"} <= tracks <= {f"rcu_qs/CPU {c}" for c in range(4)}
    how = defaultdict(int)
    for e in qs:
        assert e["ts"] in gps
        assert 0 <= e["dur"] <= gps[e["ts"]] + 1e-9
        how[e["args"]["fields"].rsplit(" ", 1)[1]] += 1
    assert how["cpuqs"] > 0 and set(how) <= {"cpuqs", "dti"}


def test_one_flow_arrow_per_block(tmp_path: Path) -> None:
    """kvfree_rcu() stores pointers in page-sized blocks and ``kfree_rcu_work()`` frees each
    block's records with one ``kfree_bulk()`` after a grace period (kvfree_rcu_bulk(),
    kernel/rcu/tree.c v5.9 / mm/slab_common.c v6.12): one arrow per block, from the call that
    attached it to the bulk free, never per object. Every block freed is an arrow's end; each
    end comes after its start and on a kworker."""
    evs, row = _perfetto(tmp_path, "rfc", "default")
    threads = _threads(evs)
    starts = {e["bind_id"]: e for e in evs if e.get("flow_out")}
    ends = {e["bind_id"]: e for e in evs if e.get("flow_in")}
    assert {e["name"] for e in starts.values()} == {"kvfree_block"}
    assert {e["name"] for e in ends.values()} == {"kfree_bulk"}
    assert len(starts) == sum(1 for e in evs if e.get("name") == "kvfree_block")
    freed_blocks = sum(row["records_per_block"].values())
    assert len(ends) == freed_blocks > 0
    assert ends.keys() <= starts.keys()
    for i, end in ends.items():
        assert end["ts"] >= starts[i]["ts"] + starts[i]["dur"]
        assert threads[(end["pid"], end["tid"])].startswith("kworker/")
        nr = int(re.search(r"nr_records=(\d+)", end["args"]["fields"])[1])  # type: ignore[index]
        assert 0 < nr <= max(int(n) for n in row["records_per_block"])


def test_counter_tracks(tmp_path: Path) -> None:
    """Counters as ``/proc/zoneinfo`` and kvfree_rcu() have them: the zone's free pages
    (``NR_FREE_PAGES``), each CPU's ``pcp->count``, the objects queued and not yet freed
    (``krcp->count`` summed) and the block pages in use; each sampled at most once per tick
    period (HZ=1000: 1 ms) and only when it changed."""
    evs, row = _perfetto(tmp_path, "rfc", "default")
    series: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for e in evs:
        if e["ph"] == "C":
            for key, value in e["args"].items():
                series[f"{e['name']} {key}"].append((e["ts"], value))
    assert set(series) == {"nr_free_pages nr_free_pages", "krc_pending krc_pending",
                           "kvfree_blocks kvfree_blocks",
                           *(f"pcp_count cpu{c}" for c in range(4))}
    for name, points in series.items():
        assert min(v for _, v in points) >= 0, name
        stamps = sorted(t for t, _ in points)
        assert all(b - a >= 1000.0 - 1e-6 for a, b in pairwise(stamps)), name  # us
        assert len(points) <= row["sim_time_ns"] // 1_000_000 + 1, name
    for name in ("nr_free_pages", "krc_pending", "kvfree_blocks"):
        values = [v for _, v in sorted(series[f"{name} {name}"])]
        assert all(a != b for a, b in pairwise(values)), name
    assert max(v for _, v in series["krc_pending krc_pending"]) <= row["pending_peak"]
    assert max(v for _, v in series["kvfree_blocks kvfree_blocks"]) <= row["pages_peak"]
    assert max(v for _, v in series["pcp_count cpu0"]) > 0


# -- ftrace text -----------------------------------------------------------------------------------


def test_rcu_callback_prints_a_symbol() -> None:
    """``rcu_callback`` and ``rcu_invoke_callback`` print ``func=%ps`` (include/trace/events/
    rcu.h, v5.9): the callback's bare symbol, no class, module or enclosing function."""
    async def body(k: Kernel) -> list[str]:
        k.tracer.enable(["rcu_callback", "rcu_invoke_callback"])

        def my_cb(task: Task, head: RcuHead) -> None:
            pass

        async def w(task: Task) -> None:
            k.rcu.call_rcu(task, RcuHead(), my_cb)
            await k.rcu.rcu_barrier(task)

        k.spawn(w, 0)
        await k.run()
        return [f"{e.name}: {e.fields}" for e in k.tracer.events]

    lines = run_sim(body, nr_cpus=2)
    assert [ln.split(":")[0] for ln in lines if "my_cb" in ln] == [
        "rcu_callback", "rcu_invoke_callback"]
    for ln in lines:
        assert re.fullmatch(r"rcu_\w+: rcu_sched rhp=0x[0-9a-f]+ func=\w+( \d+)?", ln), ln


@pytest.mark.parametrize(("preempt", "flavour"), [(False, "rcu_sched"), (True, "rcu_preempt")])
def test_stall_title_names_the_flavour(preempt: bool, flavour: str) -> None:
    """``print_other_cpu_stall()`` prints ``INFO: %s detected stalls on CPUs/tasks:`` with
    ``rcu_state.name`` (kernel/rcu/tree_stall.h, v5.9): the report's title, which the trace's
    ``rcukit_splat`` line and the tables print, names the run's flavour."""
    async def body(k: Kernel) -> list[str]:
        rcu = k.rcu

        async def reader(task: Task) -> None:
            with rcu.read_lock(task):
                for _ in range(30):
                    task.charge(1_000_000)
                    await task.sync()

        async def w(task: Task) -> None:
            task.charge(500_000)
            await task.cond_resched()
            await rcu.synchronize_rcu(task)

        k.spawn(reader, 1, "long_reader")
        k.spawn(w, 0)
        await k.run()
        return [sp.title for sp in k.locks.splats if sp.kind == "rcu_stall"]

    titles = run_sim(body, nr_cpus=4, preempt_rcu=preempt, rcu_stall_timeout_ms=10)
    assert titles == [f"INFO: {flavour} detected stalls on CPUs/tasks"]
