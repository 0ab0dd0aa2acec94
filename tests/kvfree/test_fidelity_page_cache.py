"""Fidelity of kvfree_rcu()'s page cache (``rcukit.rcu.kvfree.page_cache``) and its fallback
paths to ``kernel/rcu/tree.c``, release by release.

Sources read: Rtoax/linux-5.10.13 ``kernel/rcu/tree.c`` @ 2a957306e1fc (``kfree_rcu_work``,
``schedule_page_work_fn``, ``fill_page_cache_func``, ``run_page_cache_worker``,
``kvfree_call_rcu``, ``kfree_rcu_shrink_count``/``_scan``); the v5.11 patch "rcu/tree: Add a
work to allocate pages from regular context" (removal of v5.9's boot-time prefill from
``kfree_rcu_batch_init()``); v5.14's d0bfa8b3c411 "kvfree_rcu: Release a page cache under
memory pressure" (``backoff_page_cache_fill``, delayed refill on ``system_wq``); v6.5's
021a5ff84743 "rcu/kvfree: Do not run a page work if a cache is disabled"; kernel.md 1.2-1.6.
"""

from __future__ import annotations

from typing import Any

import pytest
from simtools import MS, Kernel, boot_and_run, cfg, freed, on_cpu

from rcukit.mm.gfp import GFP_KERNEL
from rcukit.sched.sim import Task

G = int(GFP_KERNEL)


@pytest.mark.parametrize(("profile", "at_boot"), [
    ("rfc", 2), ("v5.9", 2), ("v5.11", 0), ("v6.1", 0), ("v6.12", 0),
])
def test_the_boot_time_prefill_is_v5_9s(profile: str, at_boot: int) -> None:
    """v5.9 ``kfree_rcu_batch_init()`` (kernel/rcu/tree.c) fills each possible CPU's cache with
    ``rcu_min_cached_objs`` (2 in v5.9) pages from ``__get_free_page(GFP_NOWAIT |
    __GFP_NOWARN)``; v5.11 ("rcu/tree: Add a work to allocate pages from regular context")
    removed the prefill, leaving the caches empty until the refill worker runs."""

    async def body(k: Kernel) -> list[int]:
        return [len(krcp.cache) for krcp in k.kvfree.krcs]

    c = cfg(nr_cpus=3, **{"kvfree.profile": profile, "kvfree.variant": "nowait"})
    assert boot_and_run(c, body) == [at_boot] * 3


def _miss(profile: str, **settings: Any) -> dict[str, Any]:
    """Two two-argument ``kvfree_rcu()`` calls on CPU 0 with an empty cache, then 10 ms."""

    async def body(k: Kernel) -> dict[str, Any]:
        kv = k.kvfree
        k.tracer.enable(["workqueue_execute_start", "mm_page_alloc"])
        out: dict[str, Any] = {}

        async def run(task: Task) -> None:
            for krcp in kv.krcs:
                krcp.cache.clear()
            for _ in range(2):
                p = await k.mm.kmalloc(task, 64, G)
                await kv.kvfree_rcu(task, p, p + 8)
                out.setdefault("armed", kv.krcs[0].work_in_progress)
            await task.sleep_ns(10 * MS)
            out["cached"] = [len(krcp.cache) for krcp in kv.krcs]
            out["in_progress"] = kv.krcs[0].work_in_progress

        await on_cpu(k, run)
        st = kv.statistics()
        out["attempts"] = st.block_alloc_attempts
        out["fallback_rcu_head"] = st.fallback_rcu_head
        ev = k.tracer.events
        out["fills"] = [e.comm for e in ev if e.name == "workqueue_execute_start"
                        and e.fields.endswith("fill_page_cache_func")]
        out["refill_gfp"] = {e.fields.split("gfp_flags=")[1] for e in ev
                             if e.name == "mm_page_alloc" and e.comm.startswith("kworker")}
        return out

    return boot_and_run(cfg(**{"kvfree.profile": profile, "kvfree.variant": "nowait",
                               **settings}), body)


@pytest.mark.parametrize(("profile", "gfp"), [
    ("v5.11", "GFP_KERNEL|__GFP_NOWARN"),
    ("v5.13", "GFP_KERNEL|__GFP_NOWARN|__GFP_NORETRY|__GFP_NOMEMALLOC"),
    ("v6.1", "GFP_KERNEL|__GFP_NOWARN|__GFP_NORETRY|__GFP_NOMEMALLOC"),
])
def test_a_cache_miss_arms_one_refill_on_system_highpri_wq(profile: str, gfp: str) -> None:
    """v5.11+ ``kvfree_call_rcu()`` (kernel/rcu/tree.c): when ``add_ptr_to_bulk`` finds no
    cached page it calls ``run_page_cache_worker()`` (and a two-argument call links its
    ``rcu_head`` on ``krcp->head``). That arms the hrtimer only if ``!atomic_xchg(
    &krcp->work_in_progress, 1)``, so one refill at a time; ``schedule_page_work_fn()`` queues
    ``fill_page_cache_func()`` on ``system_highpri_wq`` (an "H" kworker), which allocates
    ``rcu_min_cached_objs`` (5) pages with ``GFP_KERNEL | __GFP_NOWARN`` (v5.11), from v5.13
    ``GFP_KERNEL | __GFP_NORETRY | __GFP_NOMEMALLOC | __GFP_NOWARN``, and clears
    ``work_in_progress``."""
    out = _miss(profile)
    assert out["armed"] is True
    assert out["fallback_rcu_head"] == 2
    assert out["fills"] == ["kworker/0:0H"]
    assert out["attempts"] == 5 and out["cached"] == [5, 0]
    assert out["refill_gfp"] == {gfp}
    assert out["in_progress"] is False


@pytest.mark.parametrize(("profile", "armed", "fills"), [("v6.1", True, 1), ("v6.5", False, 0)])
def test_no_page_work_when_the_cache_is_disabled_from_v6_5(
    profile: str, armed: bool, fills: int
) -> None:
    """``rcutree.rcu_min_cached_objs=0`` disables the cache. Until v6.4
    ``run_page_cache_worker()`` still queued ``fill_page_cache_func()``, whose loop then ran
    zero times; v6.5's "rcu/kvfree: Do not run a page work if a cache is disabled"
    (021a5ff84743, kernel/rcu/tree.c) returns first: "If cache disabled, bail out"."""
    out = _miss(profile, **{"kvfree.rcu_min_cached_objs": 0})
    assert out["armed"] is armed
    assert len(out["fills"]) == fills
    assert out["attempts"] == 0 and out["cached"] == [0, 0]


@pytest.mark.parametrize("delay_ms", [5000, 800])
def test_the_shrinker_backs_the_refill_off(delay_ms: int) -> None:
    """v5.14 (d0bfa8b3c411, kernel/rcu/tree.c; v6.1 here): ``kfree_rcu_shrink_count()`` sets
    every CPU's ``backoff_page_cache_fill``; then ``run_page_cache_worker()`` queues the refill
    on ``system_wq`` after ``msecs_to_jiffies(rcu_delay_page_cache_fill_msec)`` (5000 by
    default) instead of at once on ``system_highpri_wq``, ``fill_page_cache_func()`` takes
    ``nr_pages = 1`` and clears the back-off of its own CPU only."""

    async def body(k: Kernel) -> dict[str, Any]:
        kv = k.kvfree
        k.tracer.enable(["workqueue_execute_start"])
        out: dict[str, Any] = {}

        async def run(task: Task) -> None:
            for krcp in kv.krcs:
                krcp.cache.clear()
            kv.drain.kfree_rcu_shrink_count(task)
            p = await k.mm.kmalloc(task, 64, G)
            t0 = task.now_ns
            await kv.kvfree_rcu(task, p, p + 8)
            await task.sleep_ns(delay_ms * MS - (task.now_ns - t0) - 1)
            out["before"] = len(kv.krcs[0].cache)
            await task.sleep_ns(2 * MS)
            out["after"] = len(kv.krcs[0].cache)
            out["backoff"] = [krcp.backoff_page_cache_fill for krcp in kv.krcs]

        await on_cpu(k, run)
        out["fills"] = [e.comm for e in k.tracer.events
                        if e.fields.endswith("fill_page_cache_func")]
        return out

    c = cfg(**{"kvfree.profile": "v6.1", "kvfree.variant": "nowait",
               "kvfree.rcu_delay_page_cache_fill_msec": delay_ms})
    out = boot_and_run(c, body)
    assert out["before"] == 0 and out["after"] == 1
    assert out["fills"] == ["kworker/0:0"]  # system_wq, not the highpri pool
    assert out["backoff"] == [False, True]


@pytest.mark.parametrize("profile", ["v5.9", "v6.1", "v6.5"])
def test_the_rcu_head_list_is_freed_one_by_one_after_the_grace_period(profile: str) -> None:
    """Channel 3, the "emergency" ``krcp->head`` list of ``rcu_head``s (``kfree_rcu_work()``,
    v5.9-v6.2, kernel/rcu/tree.c; ``kvfree_rcu_list()`` from v6.3): after the batch's grace
    period each object is freed with its own ``kvfree()`` (no bulk free), and not before:
    an object queued while a reader on another CPU is inside its critical section survives
    until that reader has left."""

    async def body(k: Kernel) -> dict[str, Any]:
        kv = k.kvfree
        rcu = k.rcu
        out: dict[str, Any] = {}
        ptrs: list[int] = []
        k.tracer.enable(["rcu_invoke_kvfree_callback", "kfree", "kmem_cache_free"])

        async def reader(task: Task) -> None:
            with rcu.read_lock(task):
                task.charge(60 * MS)
                await task.sync()
            out["reader_end"] = task.now_ns
            out["freed_at_reader_end"] = [freed(k, p) for p in ptrs]

        async def updater(task: Task) -> None:
            for krcp in kv.krcs:
                krcp.cache.clear()
            for _ in range(3):
                p = await k.mm.kmalloc(task, 64, G)
                ptrs.append(p)
                await kv.kvfree_rcu(task, p, p + 8)
            await task.sleep_ns(1 * MS)
            await kv.kvfree_rcu_barrier(task)
            out["freed_after_barrier"] = [freed(k, p) for p in ptrs]

        k.spawn(reader, 1)
        k.spawn(updater, 0)
        await k.run()
        st = kv.statistics()
        out["list"] = st.fallback_rcu_head
        out["invoked"] = [e.fields for e in k.tracer.events
                          if e.name == "rcu_invoke_kvfree_callback"]
        return out

    c = cfg(**{"kvfree.profile": profile, "kvfree.variant": "page-cache",
               "kvfree.rcu_min_cached_objs": 0})
    out = boot_and_run(c, body)
    assert out["list"] == 3
    assert out["freed_at_reader_end"] == [False, False, False]
    assert out["freed_after_barrier"] == [True, True, True]
    assert len(out["invoked"]) == 3  # one rcu_invoke_kvfree_callback per object
