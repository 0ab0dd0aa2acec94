"""Fidelity of the requests that drain a ``krcp`` early (``rcukit.rcu.kvfree.drain``):
``kvfree_rcu_barrier()`` and the shrinker's ``kfree_rcu_shrink_scan()``.

Sources read: Rtoax/linux-5.10.13 ``kernel/rcu/tree.c`` @ 2a957306e1fc
(``kfree_rcu_shrink_count``/``kfree_rcu_shrink_scan``, ``kfree_rcu_drain_unlock``); kernel.md
1.6-1.7 (``__kvfree_rcu_barrier()`` of 2b55d6a42d14, "rcu/kvfree: Add kvfree_rcu_barrier()
API", v6.12, as in ColinIanKing/linux-next ``mm/slab_common.c`` @ 022ab5e1bb95; Joel
Fernandes' v5.5 commit message on ``rcu_barrier()``).
"""

from __future__ import annotations

from typing import Any

import pytest
from simtools import MS, Kernel, boot_and_run, cfg, freed

from rcukit.mm.gfp import GFP_KERNEL
from rcukit.sched.sim import Task

G = int(GFP_KERNEL)


def _queue_on_three_cpus(k: Kernel, ptrs: list[int], n: int) -> None:
    async def queuer(task: Task) -> None:
        for i in range(n):
            p = await (k.mm.vmalloc(task, 100) if i % 7 == 0 else k.mm.kmalloc(task, 64, G))
            ptrs.append(p)
            await k.kvfree.kvfree_rcu(task, p, p + 8)

    for c in range(3):
        k.spawn(queuer, c)


@pytest.mark.parametrize("profile", ["v6.1", "v6.12"])
def test_rcu_barrier_does_not_wait_for_kvfree_rcu_but_kvfree_rcu_barrier_does(
    profile: str,
) -> None:
    """``rcu_barrier()`` waits only for callbacks already handed to RCU: "a kfree_rcu()
    followed by an rcu_barrier() does not imply that memory will be freed once rcu_barrier()
    returns" (Joel Fernandes, v5.5 kfree_rcu batching). v6.12's ``kvfree_rcu_barrier()``
    (2b55d6a42d14; ``__kvfree_rcu_barrier()``: queue each CPU's batch with
    ``kvfree_rcu_queue_batch()``, flushing in-flight ``krwp`` work when both slots are busy,
    then ``cancel_delayed_work_sync()`` the monitor and ``flush_rcu_work()`` both slots) returns
    only once every object queued before it was freed, long before v6.1's 5-second
    ``KFREE_DRAIN_JIFFIES`` would have drained them."""

    async def body(k: Kernel) -> dict[str, Any]:
        ptrs: list[int] = []
        out: dict[str, Any] = {}
        _queue_on_three_cpus(k, ptrs, 60)
        await k.run()

        async def barriers(task: Task) -> None:
            t0 = task.now_ns
            await k.rcu.rcu_barrier(task)
            out["after_rcu_barrier"] = sum(freed(k, p) for p in ptrs)
            await k.kvfree.kvfree_rcu_barrier(task)
            out["after_kvfree_rcu_barrier"] = sum(freed(k, p) for p in ptrs)
            out["took_ms"] = (task.now_ns - t0) / MS

        k.spawn(barriers, 0)
        await k.run()
        out["n"] = len(ptrs)
        return out

    out = boot_and_run(cfg(nr_cpus=3, **{"kvfree.profile": profile}), body)
    assert out["after_rcu_barrier"] == 0
    assert out["after_kvfree_rcu_barrier"] == out["n"] == 180
    assert out["took_ms"] < 100


def test_the_shrinker_drains_every_cpu_early_and_counts_its_objects() -> None:
    """``kfree_rcu_shrink_count()`` sums each CPU's ``krcp->count``; ``kfree_rcu_shrink_scan()``
    (v5.10 kernel/rcu/tree.c) takes each CPU's count, runs ``kfree_rcu_drain_unlock()`` where
    ``monitor_todo`` is set (the batch goes to RCU now instead of after
    ``KFREE_DRAIN_JIFFIES``), subtracts the count from ``nr_to_scan`` and stops once that is
    <= 0, returning the sum. v5.13 here (no page-cache terms, which came with v5.14). The
    kernel drains synchronously from the shrinker; rcukit runs each CPU's part on that CPU
    (``drain.py``), so the test lets that run before scanning again."""

    async def body(k: Kernel) -> dict[str, Any]:
        ptrs: list[int] = []
        out: dict[str, Any] = {}
        _queue_on_three_cpus(k, ptrs, 40)
        await k.run()

        async def shrink(task: Task) -> None:
            drain = k.kvfree.drain
            out["count"] = drain.kfree_rcu_shrink_count(task)
            out["partial"] = await drain.kfree_rcu_shrink_scan(task, 30)
            await task.sleep_ns(100_000)  # the model drains on the owning CPU (drain.py)
            out["rest"] = await drain.kfree_rcu_shrink_scan(task, 1000)
            await task.sleep_ns(10 * MS)
            out["freed_early"] = sum(freed(k, p) for p in ptrs)

        k.spawn(shrink, 0)
        await k.run()
        return out

    c = cfg(nr_cpus=3, **{"kvfree.profile": "v5.13"})  # KFREE_DRAIN_JIFFIES = HZ/50: 20 ms
    out = boot_and_run(c, body)
    assert out["count"] == 120
    assert out["partial"] == 40  # CPU 0's 40 brings nr_to_scan (30) to <= 0: stop
    assert out["rest"] == 80  # CPU 0's count was reset when its batch was detached
    assert out["freed_early"] == 120
