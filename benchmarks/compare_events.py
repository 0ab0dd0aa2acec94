"""Simulated events per wall second over a default ``rcukit compare`` run.

The run is exactly ``rcukit compare``'s default: every allocator variant under every kernel
build, the default machine and workload (``--scale 1``; ``--quick`` uses 0.1), one
:func:`rcukit.scenarios.compare.run_row` per row as :func:`~rcukit.scenarios.compare.run_compare`
does, so the kernels stay inspectable. An *event* is one of:

* a ``kvfree_rcu()`` call, and the ``kmalloc()``/``vmalloc()`` of the object it frees (the
  workload allocates exactly one object per call);
* an object freed by kvfree_rcu's reclaim (``objects_freed``);
* a page allocated or freed by the page allocator (``pgalloc_normal`` + ``pgfree``, including
  the "other kernel users" and kvfree_rcu's block pages);
* an RCU callback invoked, a grace period completed;
* a context switch, a scheduler tick (summed over the CPUs).

The baseline is the bare loop's iterations per second, measured in the same process: the
``wall_ns_per_event_vs_bare_loop`` column says how many bare-loop iterations one simulated
event costs, which travels between machines better than the rate itself.
"""

from __future__ import annotations

import time
from typing import Any

from _common import Figure, Mode, bare_loop, best_of

from rcukit.config import KERNEL_CONFIG_NAMES
from rcukit.kernel import Kernel
from rcukit.scenarios.compare import VARIANTS, Workload, default_config, run_row


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
    }


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
    events = sum(totals.values())
    rate = events / wall
    items = list(range(1_000_000))
    bare = best_of(lambda: bare_loop(items), mode.pick(5, 3, 1)) / len(items)
    absolute: dict[str, Any] = {
        "events": events,
        "wall_s": round(wall, 2),
        "rows": rows,
        "scale": scale,
        "bare_loop_iterations_per_s": round(1 / bare),
        "wall_ns_per_event_vs_bare_loop": round((wall / events) / bare, 1),
        **totals,
    }
    return [
        Figure(
            "sim_events_per_wall_second",
            round(rate),
            "events/s",
            None,
            absolute,
            f"rcukit compare --scale {scale:g} ({rows} rows): kvfree_rcu calls + object "
            "allocations + objects freed + pages allocated + pages freed + RCU callbacks + "
            "grace periods + context switches + ticks, per wall second",
        )
    ]
