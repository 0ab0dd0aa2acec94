"""A default ``rcukit compare`` run: model operations and Trio hand-offs per wall second.

The run is exactly ``rcukit compare``'s default: every allocator variant under every kernel
build, the default machine and workload (``--scale 1``; ``--quick`` uses 0.1), one
:func:`rcukit.scenarios.compare.run_row` per row as :func:`~rcukit.scenarios.compare.run_compare`
does, so the kernels stay inspectable. Three kinds of thing happen in it, counted apart:

* **model operations**, the kernel work the workload asks for: a ``kvfree_rcu()`` call and the
  ``kmalloc()``/``vmalloc()`` of the object it frees (the workload allocates exactly one object
  per call), an object freed by kvfree_rcu's reclaim (``objects_freed``), a page allocated or
  freed by the page allocator (``pgalloc_normal`` + ``pgfree``, including the "other kernel
  users" and kvfree_rcu's block pages), an RCU callback invoked, a grace period completed;
* **simulated scheduler events**: a context switch and a scheduler tick of a simulated CPU
  (summed over the CPUs). They are part of the model: a switch is charged simulated time and
  need not cost any real scheduling;
* **Trio hand-offs** (``Simulator.handoffs``): the times the simulator gave the baton to
  another simulated task, each a ``trio.lowlevel.reschedule()`` of that task and a park of the
  current one, i.e. a real pass of Trio's scheduler paid in wall time. (Not counted: one wake
  of the driver task per ``Kernel.run()``, two per row, and the first pass of each new Trio
  task.)

Figures:

* ``sim_model_ops_per_wall_second``: model operations per wall second (the wall includes the
  hand-offs); beside it, wall ns per model operation in bare-loop iterations (the bare loop of
  ``_common.bare_loop``, timed in the same process).
* ``sim_handoffs_per_wall_second``: Trio hand-offs per wall second; beside it, wall µs per
  hand-off (all the wall time divided by the hand-offs: how much model work runs per pass) and
  the cost of a bare Trio hand-off.
* ``sim_handoff_wall_share``: hand-offs × the cost of a bare Trio hand-off (two Trio tasks
  handing a baton back and forth with ``reschedule()`` + ``wait_task_rescheduled()``, the
  simulator's own mechanism, on the same ``MockClock`` ``rcukit`` runs under, timed in the same
  process) / the run's wall time, in per cent: the share of the wall time Trio's scheduling costs,
  estimated (a lower bound if a hand-off inside a busy run costs more than a bare one).
* ``sim_events_per_wall_second``: kept with its old meaning, for comparison with earlier
  tables: model operations + simulated scheduler events, per wall second. It counts no Trio
  hand-off; its simulated context switches are not hand-offs (read the split above instead).
"""

from __future__ import annotations

import time
from typing import Any

import trio
import trio.testing
from _common import Figure, Mode, bare_loop, best_of

from rcukit.config import KERNEL_CONFIG_NAMES
from rcukit.kernel import Kernel
from rcukit.scenarios.compare import VARIANTS, Workload, default_config, run_row

MODEL_OPS = (
    "kvfree_rcu_calls",
    "object_allocations",
    "objects_freed",
    "pages_allocated",
    "pages_freed",
    "rcu_callbacks",
    "grace_periods",
)
SCHED_EVENTS = ("context_switches", "ticks")


def events_of(k: Kernel) -> dict[str, int]:
    """The event counts of one finished row (see the module docstring)."""
    kv = k.kvfree.statistics()
    rcu = k.rcu.statistics()
    vm = k.vmstat
    return {
        "kvfree_rcu_calls": kv.calls,
        "object_allocations": kv.calls,
        "objects_freed": kv.objects_freed,
        "pages_allocated": vm["pgalloc_normal"],
        "pages_freed": vm["pgfree"],
        "rcu_callbacks": rcu.callbacks_invoked,
        "grace_periods": rcu.completed_gps,
        "context_switches": sum(c.nr_switches for c in k.cpus),
        "ticks": sum(c.ticks for c in k.cpus),
        "trio_handoffs": k.sim.handoffs,
    }


def trio_handoff_seconds(n: int) -> float:
    """Wall seconds for ``n`` bare hand-offs between two Trio tasks (the baseline).

    Each hand-off is what ``Simulator._resume_next`` + ``_park`` do: reschedule the other task,
    park this one until rescheduled. Run under ``MockClock(autojump_threshold=0)``, as the
    simulator is; only the hand-off loop is timed.
    """
    box: dict[str, float] = {}

    def abort(_: Any) -> trio.lowlevel.Abort:
        return trio.lowlevel.Abort.SUCCEEDED

    async def main() -> None:
        tasks: list[trio.lowlevel.Task] = [trio.lowlevel.current_task()]
        state = {"left": n, "done": 0}

        async def player(me: int) -> None:
            other = 1 - me
            while state["left"] > 0:
                state["left"] -= 1
                trio.lowlevel.reschedule(tasks[other])
                await trio.lowlevel.wait_task_rescheduled(abort)
            if not state["done"]:
                state["done"] = 1
                trio.lowlevel.reschedule(tasks[other])  # it is parked: let it see the end

        async def second() -> None:
            tasks.append(trio.lowlevel.current_task())
            await trio.lowlevel.wait_task_rescheduled(abort)  # parked until the first pass
            await player(1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(second)
            while len(tasks) < 2:  # appended and parked in the same step
                await trio.lowlevel.checkpoint()
            t0 = time.perf_counter()
            await player(0)
            box["dt"] = time.perf_counter() - t0
        assert state["left"] == 0

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return box["dt"]


def run(mode: Mode) -> list[Figure]:
    scale = mode.pickf(1.0, 0.1, 0.005)
    cfg = default_config()
    workload = Workload().scaled(scale)
    totals: dict[str, int] = {}
    rows = 0
    t0 = time.perf_counter()
    for variant in VARIANTS:
        for kc in KERNEL_CONFIG_NAMES:
            _, k = run_row(cfg, workload, variant, kc)
            for name, n in events_of(k).items():
                totals[name] = totals.get(name, 0) + n
            rows += 1
            del k
    wall = time.perf_counter() - t0
    model_ops = sum(totals[k] for k in MODEL_OPS)
    sched_events = sum(totals[k] for k in SCHED_EVENTS)
    handoffs = totals["trio_handoffs"]
    events = model_ops + sched_events  # the old figure's sum
    reps = mode.pick(5, 3, 1)
    items = list(range(1_000_000 if mode.name != "tiny" else 10_000))
    bare = best_of(lambda: bare_loop(items), reps) / len(items)
    n_pass = mode.pick(200_000, 50_000, 1_000)
    trio_pass = best_of(lambda: trio_handoff_seconds(n_pass), reps) / n_pass
    # guard the tiny smoke run, whose rows may hand off rarely
    per_handoff = wall / max(handoffs, 1)
    share = handoffs * trio_pass / wall
    counts: dict[str, Any] = {
        "wall_s": round(wall, 2),
        "rows": rows,
        "scale": scale,
    }
    model_abs: dict[str, Any] = {
        "model_ops": model_ops,
        **counts,
        "bare_loop_iterations_per_s": round(1 / bare),
        "wall_ns_per_model_op_vs_bare_loop": round((wall / max(model_ops, 1)) / bare, 1),
        **{k: totals[k] for k in MODEL_OPS},
    }
    handoff_abs: dict[str, Any] = {
        "trio_handoffs": handoffs,
        **counts,
        "wall_us_per_handoff": round(per_handoff * 1e6, 2),
        "bare_trio_handoff_us": round(trio_pass * 1e6, 3),
        "wall_per_handoff_vs_bare_trio_handoff": round(per_handoff / trio_pass, 1),
        "model_ops_per_handoff": round(model_ops / max(handoffs, 1), 1),
        "context_switches": totals["context_switches"],
    }
    events_abs: dict[str, Any] = {
        "events": events,
        **counts,
        "bare_loop_iterations_per_s": round(1 / bare),
        "wall_ns_per_event_vs_bare_loop": round((wall / max(events, 1)) / bare, 1),
        **{k: totals[k] for k in (*MODEL_OPS, *SCHED_EVENTS)},
    }
    where = f"rcukit compare --scale {scale:g} ({rows} rows)"
    return [
        Figure(
            "sim_events_per_wall_second",
            round(events / wall),
            "events/s",
            None,
            events_abs,
            f"{where}: model operations + simulated context switches + ticks, per wall second "
            "(the old sum, kept for comparison; no Trio hand-off is counted in it)",
        ),
        Figure(
            "sim_model_ops_per_wall_second",
            round(model_ops / wall),
            "model ops/s",
            None,
            model_abs,
            f"{where}: kvfree_rcu calls + object allocations + objects freed + pages allocated "
            "+ pages freed + RCU callbacks + grace periods, per wall second (hand-offs included "
            "in the wall)",
        ),
        Figure(
            "sim_handoffs_per_wall_second",
            round(handoffs / wall),
            "hand-offs/s",
            None,
            handoff_abs,
            f"{where}: Trio hand-offs (Simulator.handoffs: a reschedule of another simulated "
            "task and a park, one real Trio scheduler pass each) per wall second",
        ),
        Figure(
            "sim_handoff_wall_share",
            round(share * 100, 2),
            "% of wall",
            None,
            handoff_abs,
            f"{where}: hand-offs x a bare Trio hand-off (two tasks, reschedule + "
            "wait_task_rescheduled, MockClock, same process) / the run's wall time",
        ),
    ]
