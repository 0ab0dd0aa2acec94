"""Why kvfree_rcu() batches: three ways to free N objects after a grace period.

1. ``synchronize_rcu(); kfree(p)`` per object: what people wrote before a head-less
   kvfree_rcu() existed (the RFC's point c). Every object waits a whole grace period.
2. ``call_rcu(&p->rh, kfree_cb)`` per object: the pre-5.5 kfree_rcu(). No waiting, but every
   object is a callback, freed one ``kfree()`` at a time after a cache miss on its rcu_head.
3. ``kvfree_rcu(p, rh)``: pointers go into page-sized blocks and each block is freed with one
   ``kfree_bulk()`` (one synchronisation per slab page instead of per object).

Each runs the same number of objects on the same simulated 4-CPU machine; the table shows the
simulated time the freeing threads spent and the grace periods used, from the cost model.

Run: ``python demos/batching.py [--objects N]``
"""

from __future__ import annotations

import argparse

from rcukit.config import KernelConfig
from rcukit.kernel import simulate
from rcukit.mm.gfp import GFP_KERNEL
from rcukit.scenarios.rcuscale import RcuscaleParams, run_rcuscale
from rcukit.sched.sim import Task


def synchronize_each(objects: int, config: KernelConfig) -> tuple[int, int]:
    """Return (simulated ns of the slowest thread, grace periods) for synchronize-per-object."""
    holder: dict[str, object] = {}

    async def worker(task: Task) -> int:
        k = holder["k"]
        start = task.now_ns
        for _ in range(objects):
            ptr = await k.mm.kmalloc(task, 24, GFP_KERNEL)  # type: ignore[attr-defined]
            await k.rcu.synchronize_rcu(task)  # type: ignore[attr-defined]
            await k.mm.kfree(task, ptr)  # type: ignore[attr-defined]
        return task.now_ns - start

    res = simulate(worker, config, setup=lambda k: holder.__setitem__("k", k))
    return max(res.results), holder["k"].rcu.statistics().completed_gps  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=4000, help="objects per thread")
    args = ap.parse_args(argv)
    n = args.objects
    config = KernelConfig(nr_cpus=4).replace(**{"kvfree.profile": "v6.1",
                                                 "kvfree.variant": "page-cache"})
    rows = []
    sync_objs = max(1, n // 100)
    t, gps = synchronize_each(sync_objs, config)
    rows.append(("synchronize_rcu + kfree", sync_objs, t, gps))
    for name, params in (
        ("call_rcu per object", RcuscaleParams(kfree_alloc_num=n, kfree_loops=1, no_batch=True)),
        ("kvfree_rcu (kfree_bulk)", RcuscaleParams(kfree_alloc_num=n, kfree_loops=1,
                                                   kfree_rcu_test_double=True)),
    ):
        r = run_rcuscale(params, config)
        rows.append((name, n, r.total_time_ns, r.batches))
    print(f"{'method':28s} {'objects/thread':>14s} {'sim ns/object':>14s} {'grace periods':>14s}")
    for name, objs, t, gps in rows:
        print(f"{name:28s} {objs:14d} {t / objs:14.1f} {gps:14d}")
    base = rows[2][2] / rows[2][1]
    print()
    for name, objs, t, _ in rows[:2]:
        print(f"kvfree_rcu is {(t / objs) / base:.1f}x cheaper per object than {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
