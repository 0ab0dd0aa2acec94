"""Simulated ``kvfree_rcu()`` per call, flood and drain, against a bare Python loop.

The machine: 8 CPUs, the ``v6.1`` profile, the ``nowait`` allocator variant, no KASAN
quarantine, a zone large enough that nothing is reclaimed. Each CPU kmallocs its objects first
(not timed), then every CPU floods head-less ``kvfree_rcu(ptr)`` over them (timed: "flood"),
then one ``kvfree_rcu_barrier()`` waits for the grace periods and frees every block through
``kfree_bulk()`` (timed: "drain"). The per-call cost is (flood + drain) / calls, the best of the
repetitions. The baseline is :func:`_common.bare_loop` over as many pointers, timed right before
the flood and right before the drain of each repetition; the ratio is taken per repetition
(against that repetition's faster bare loop) and the best repetition's ratio is reported.
"""

from __future__ import annotations

import time
from typing import Any

from _common import Figure, Mode, Target, bare_loop, ns

from rcukit.config import KernelConfig
from rcukit.kernel import boot, run_sim
from rcukit.mm.gfp import GFP_KERNEL
from rcukit.sched.sim import Task

NR_CPUS = 8
OBJECT_SIZE = 32


def config() -> KernelConfig:
    return KernelConfig(nr_cpus=NR_CPUS).replace(
        **{
            "kvfree.profile": "v6.1",
            "kvfree.variant": "nowait",
            "mm.debug_quarantine": 0,
            "mm.zone_pages": 1 << 20,
            "mm.initial_used_fraction": 0.5,
        }
    )


def one_run(per_cpu: int) -> dict[str, Any]:
    """One boot, flood and drain; wall seconds of each phase and of the two bare loops."""
    box: dict[str, Any] = {}
    gfp = int(GFP_KERNEL)

    async def main() -> None:
        async with boot(config()) as k:
            ptrs: dict[int, list[int]] = {}

            async def alloc(task: Task) -> None:
                mine = [await k.mm.kmalloc(task, OBJECT_SIZE, gfp) for _ in range(per_cpu)]
                ptrs[task.cpu.id] = mine

            await k.run_on_cpus(alloc)
            everything = [p for cpu in sorted(ptrs) for p in ptrs[cpu]]
            kv = k.kvfree

            async def flood(task: Task) -> None:
                f = kv.kvfree_rcu
                for p in ptrs[task.cpu.id]:
                    await f(task, p)

            async def barrier(task: Task) -> None:
                await kv.kvfree_rcu_barrier(task)

            box["bare_flood"] = bare_loop(everything)
            t0 = time.perf_counter()
            await k.run_on_cpus(flood)
            box["flood"] = time.perf_counter() - t0
            box["pending_after_flood"] = kv.pending
            box["bare_drain"] = bare_loop(everything)
            t0 = time.perf_counter()
            k.spawn(barrier, 0, "kvfree_rcu_barrier")
            await k.run()
            box["drain"] = time.perf_counter() - t0
            st = kv.statistics()
            calls = len(everything)
            # the figure is only meaningful if the calls took the modelled path and all drained
            assert st.calls == calls and st.objects_freed == calls and st.pending == 0, st
            box["calls"] = calls
            box["fast_calls"] = kv.counters.fast_calls
            box["bulk_calls"] = st.bulk_calls
            box["grace_periods"] = k.rcu.statistics().completed_gps
            box["sim_ns"] = k.now_ns

    run_sim(main)
    return box


def run(mode: Mode) -> list[Figure]:
    per_cpu = mode.pick(50_000, 12_500, 200)
    reps = mode.pick(7, 3, 1)
    best: dict[str, Any] = {}
    bare = ratio = float("inf")
    for _ in range(reps):
        r = one_run(per_cpu)
        # the ratio pairs each repetition with its own bare loops: a noisy neighbour that
        # slows one repetition slows both sides of its ratio
        rep_bare = min(r["bare_flood"], r["bare_drain"])
        ratio = min(ratio, (r["flood"] + r["drain"]) / rep_bare)
        bare = min(bare, rep_bare)
        if not best or r["flood"] + r["drain"] < best["flood"] + best["drain"]:
            best = r
    calls = best["calls"]
    per_call = ns(best["flood"] + best["drain"], calls)
    bare_ns = ns(bare, calls)
    absolute = {
        "calls": calls,
        "flood_ns_per_call": ns(best["flood"], calls),
        "drain_ns_per_call": ns(best["drain"], calls),
        "bare_loop_ns_per_iteration": bare_ns,
        "fast_path_calls": best["fast_calls"],
        "kfree_bulk_calls": best["bulk_calls"],
        "grace_periods": best["grace_periods"],
        "repetitions": reps,
    }
    what = (
        f"{NR_CPUS} CPUs, v6.1, nowait: head-less kvfree_rcu() flood + kvfree_rcu_barrier() "
        f"drain through kfree_bulk(), {calls} calls, best of {reps}"
    )
    return [
        Figure(
            "sim_kvfree_ns_per_call",
            per_call,
            "ns/call",
            None,
            absolute,
            what + "; wall ns per call (flood + drain)",
        ),
        Figure(
            "sim_kvfree_vs_bare_loop",
            round(ratio, 2),
            "x bare loop",
            Target("<=", 25),
            absolute,
            what + "; per call / a bare loop appending to a list and counting, timed in the same "
            "repetition (aim: 10x)",
        ),
    ]
