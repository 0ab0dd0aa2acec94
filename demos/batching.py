"""Why kvfree_rcu() batches: three ways to free objects after a grace period.

1. ``synchronize_rcu(); kfree(p)`` per object: what people wrote before a head-less
   kvfree_rcu() existed (the RFC's point c). Every object waits a whole grace period.
2. ``call_rcu(&p->rh, kfree_cb)`` per object: the pre-5.5 kfree_rcu(). No waiting, but every
   object is a callback, freed by one ``kfree()`` after a cache miss on its rcu_head.
3. ``kvfree_rcu(p)``: pointers go into page-sized blocks and each block is freed with one
   ``kfree_bulk()`` (one synchronisation per slab page instead of per object). The head-less
   form is used so that the v6.1 profile allocates its blocks directly; a two-argument flood
   that outruns the page cache falls back to the rcu_head list and pays per-object frees.

Each method frees objects on the same simulated 4-CPU machine; the table shows the CPU time all
CPUs spent (callers, callbacks and reclaim work together, from the cost model), the simulated
time the callers took, and the grace periods used.

Run: ``python demos/batching.py [--objects N]``
"""

from __future__ import annotations

import argparse

from rcukit.config import KernelConfig
from rcukit.kernel import Kernel, boot, run_sim
from rcukit.mm.gfp import GFP_KERNEL
from rcukit.rcu.segcblist import RcuHead
from rcukit.sched.sim import Task

_GFP = int(GFP_KERNEL)


class _Obj(RcuHead):
    __slots__ = ("ptr",)

    def __init__(self, ptr: int) -> None:
        super().__init__(None)
        self.ptr = ptr


def measure(method: str, objects: int, config: KernelConfig) -> tuple[int, int, int]:
    """(CPU ns over all CPUs, caller ns, grace periods) to free ``objects`` per CPU."""
    box: dict[str, int] = {}

    async def main() -> None:
        async with boot(config) as k:
            await _run(k, method, objects, box)

    run_sim(main)
    return box["cpu_ns"], box["caller_ns"], box["gps"]


async def _run(k: Kernel, method: str, objects: int, box: dict[str, int]) -> None:
    async def kfree_cb(task: Task, head: RcuHead) -> None:
        assert isinstance(head, _Obj)
        await k.mm.slab.kfree(task, head.ptr, cache_miss=True)

    ptrs: dict[int, list[int]] = {}

    async def alloc(task: Task) -> None:
        ptrs[task.cpu.id] = [await k.mm.kmalloc(task, 32, _GFP) for _ in range(objects)]

    await k.run_on_cpus(alloc)

    async def caller(task: Task) -> int:
        start = task.now_ns
        for p in ptrs[task.cpu.id]:
            if method == "synchronize":
                await k.rcu.synchronize_rcu(task)
                await k.mm.kfree(task, p)
            elif method == "call_rcu":
                k.rcu.call_rcu(task, _Obj(p), kfree_cb)
            else:
                await k.kvfree.kvfree_rcu(task, p)
        return task.now_ns - start

    base = sum(c.busy_ns() for c in k.cpus)
    results = await k.run_on_cpus(caller)

    async def barrier(task: Task) -> None:
        await k.kvfree.kvfree_rcu_barrier(task)
        await k.rcu.rcu_barrier(task)

    k.spawn(barrier, 0, "barrier")
    await k.run()
    box["cpu_ns"] = sum(c.busy_ns() for c in k.cpus) - base
    box["caller_ns"] = max(results)
    box["gps"] = k.rcu.statistics().completed_gps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=4000, help="objects per CPU")
    args = ap.parse_args(argv)
    if args.objects < 1:
        ap.error(f"--objects {args.objects}: expected a number of objects >= 1")
    n = args.objects
    config = KernelConfig(nr_cpus=4).replace(
        **{"kvfree.profile": "v6.1", "kvfree.variant": "page-cache", "mm.debug_quarantine": 0}
    )
    rows = []
    for method, objs in (("synchronize", max(1, n // 50)), ("call_rcu", n), ("kvfree_rcu", n)):
        cpu_ns, caller_ns, gps = measure(method, objs, config)
        rows.append((method, objs, cpu_ns / (objs * 4), caller_ns / objs, gps))
    print(f"{'method':14s} {'objects/CPU':>11s} {'CPU ns/object':>14s} "
          f"{'caller ns/object':>17s} {'grace periods':>14s}")
    for method, objs, cpu, caller, gps in rows:
        print(f"{method:14s} {objs:11d} {cpu:14.1f} {caller:17.1f} {gps:14d}")
    kv = rows[2]
    print()
    for method, _, cpu, caller, _ in rows[:2]:
        print(f"kvfree_rcu vs {method}: {cpu / kv[2]:.1f}x less CPU time per object, "
              f"{caller / kv[3]:.1f}x less caller time per object")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
