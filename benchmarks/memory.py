"""Memory per pending ``kvfree_rcu()`` pointer, measured with tracemalloc.

The machine of :mod:`sim_kvfree` (8 CPUs, v6.1, nowait) kmallocs 1,000,000 objects (125,000
per CPU) with tracemalloc already tracing, so every block the flood frees or resizes is known
to it. The traced size after the allocation is the baseline; every CPU then floods head-less
``kvfree_rcu()`` over its objects, and the traced size after the flood, less the baseline,
divided by the objects still pending (queued, not yet freed), is the figure; the 8 bytes of
the pointer itself (its slot in a block's pointer array, as in the kernel's page of pointers)
are subtracted. The three source lines that grew most say what dominates.
"""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

from _common import Figure, Mode, Target
from sim_kvfree import NR_CPUS, OBJECT_SIZE, config

from rcukit.kernel import boot, run_sim
from rcukit.mm.gfp import GFP_KERNEL
from rcukit.sched.sim import Task

POINTER_BYTES = 8


def measure(objects: int) -> dict[str, Any]:
    per_cpu = objects // NR_CPUS
    box: dict[str, Any] = {}
    gfp = int(GFP_KERNEL)

    async def main() -> None:
        async with boot(config()) as k:
            ptrs: dict[int, list[int]] = {}

            async def alloc(task: Task) -> None:
                mine = [await k.mm.kmalloc(task, OBJECT_SIZE, gfp) for _ in range(per_cpu)]
                ptrs[task.cpu.id] = mine

            await k.run_on_cpus(alloc)
            kv = k.kvfree

            async def flood(task: Task) -> None:
                f = kv.kvfree_rcu
                for p in ptrs[task.cpu.id]:
                    await f(task, p)

            gc.collect()
            before = tracemalloc.take_snapshot()
            base = tracemalloc.get_traced_memory()[0]
            await k.run_on_cpus(flood)
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
            snap = tracemalloc.take_snapshot()
            box["delta"] = after - base
            box["pending"] = kv.pending
            box["calls"] = kv.statistics().calls
            box["blocks"] = kv.counters.blocks_in_use
            box["top"] = snap.compare_to(before, "lineno")[:3]

    tracemalloc.start()
    try:
        run_sim(main)
    finally:
        tracemalloc.stop()
    return box


def _where(stat: tracemalloc.StatisticDiff) -> str:
    frame = stat.traceback[0]
    name = frame.filename.rsplit("/", 2)
    return f"{'/'.join(name[-2:])}:{frame.lineno} {stat.size_diff:+d} B"


def run(mode: Mode) -> list[Figure]:
    objects = mode.pick(1_000_000, 100_000, 4_000)
    r = measure(objects)
    pending = r["pending"]
    assert pending > 0, "the flood drained before it was measured"
    per = r["delta"] / pending
    top = "; ".join(_where(s) for s in r["top"])
    return [
        Figure(
            "sim_bytes_per_pending_object",
            round(per - POINTER_BYTES, 2),
            "bytes",
            Target("<=", 20),
            {
                "objects": objects,
                "pending": pending,
                "traced_growth_bytes": r["delta"],
                "bytes_per_pending_incl_pointer": round(per, 2),
                "blocks_in_use": r["blocks"],
            },
            f"tracemalloc growth over a {objects}-object kvfree_rcu() flood, per pending "
            f"pointer, beyond its 8 bytes; largest: {top}",
        )
    ]
