"""What each kvfree_rcu() profile takes from its kernel, release by release (issue 15 item 8).

Each test names the commit and the release that carries it; the releases were checked against
the mainline history (merge logs and the RCU pull requests of each merge window), which is where
the profiles differ from kernel.md 8.7: the ``need_wait_for_krwp_work()`` fix reached mainline
for v6.3-rc6, and ``rcu_gp_oldstate`` snapshots (507 records a block) are v6.5's.
"""

from __future__ import annotations

from typing import Any

import pytest
from simtools import MS, boot_and_run, cfg, freed, on_cpu

from rcukit.kernel import Kernel
from rcukit.mm.gfp import GFP_KERNEL
from rcukit.mm.versions import MM_5_8, MM_6_0, MM_6_2, MM_6_5
from rcukit.rcu.kvfree.core import (
    KfreeRcuCpu,
    KfreeRcuCpuWork,
    KvfreeCounters,
    KvfreePolicy,
    KvfreeRcuBulkData,
)
from rcukit.rcu.kvfree.krc import Bnode
from rcukit.rcu.profiles import PROFILES, get_profile
from rcukit.sched.sim import Task

G = int(GFP_KERNEL)


def test_every_profile_names_its_kernel_and_its_page_allocator() -> None:
    """A profile is a whole kernel version: mm/page_alloc.c of 5.8-5.13 (IRQ-off pcp), 6.0-6.4
    (``pcp->lock``, boosted watermarks wake kswapd on any gfp) and 6.5+ ("mm/page_alloc: don't
    wake kswapd from rmqueue() unless __GFP_KSWAPD_RECLAIM is specified"); its description
    starts with the release it stands for."""
    want = {
        "v5.5": MM_5_8, "rfc": MM_5_8, "v5.9": MM_5_8, "v5.11": MM_5_8, "v5.13": MM_5_8,
        "v6.1": MM_6_0, "v6.3": MM_6_2, "v6.4": MM_6_2,
        "v6.5": MM_6_5, "v6.12": MM_6_5, "v6.15": MM_6_5,
    }
    assert {n: p.mm for n, p in PROFILES.items()} == want
    for name, prof in PROFILES.items():
        assert prof.name == name
        assert prof.description.startswith("the RFC's world" if name == "rfc" else f"{name}:")
    assert "never calls it" in PROFILES["v6.15"].description


def test_the_krwp_fix_is_in_v6_3_and_not_before() -> None:
    """"rcu/kvfree: Avoid freeing new kfree_rcu() memory after old grace period"
    (5da7cb193db3, mainline for v6.3-rc6; kernel/rcu/tree.c ``kfree_rcu_monitor``,
    ``need_wait_for_krwp_work``): before it, a new slab block joins a krwp whose vmalloc block
    still waits for an older grace period; with it, that krwp is skipped and the free one
    takes the batch."""
    for name, joins_busy in (("v5.9", True), ("v6.1", True), ("v6.3", False), ("v6.4", False)):
        pol = KvfreePolicy.from_profile(get_profile(name), 8)
        assert pol.need_wait_for_krwp_work is not joins_busy
        krw = [KfreeRcuCpuWork[KvfreeRcuBulkData](i, 2) for i in range(2)]
        krc: KfreeRcuCpu[KvfreeRcuBulkData, Any, int] = KfreeRcuCpu(2, krw)
        krw[0].bulk_free[1] = [_blk(3)]  # batch 0 waits for its GP
        krc.bulk[0].append(_blk(5))
        queued: list[int] = []
        krc.kvfree_rcu_queue_batch(pol, KvfreeCounters(), lambda: 1, _recorder(queued))
        assert (len(krw[0].bulk_free[0]) == 1) is joins_busy
        assert queued == ([0] if joins_busy else [1])


def _blk(n: int) -> KvfreeRcuBulkData:
    return KvfreeRcuBulkData(list(range(n)))


def _recorder(queued: list[int]) -> Any:
    def queue_rcu_work(w: Any) -> bool:
        queued.append(w.idx)
        return True

    return queue_rcu_work


# -- fill_page_cache_func() ---------------------------------------------------------------------


def _fill(profile: str, cached: int, fail_first: bool) -> dict[str, int]:
    """Run one ``fill_page_cache_func`` on CPU 0 with ``cached`` pages already in its cache."""
    settings: dict[str, Any] = {"kvfree.profile": profile, "kvfree.variant": "nowait"}
    if fail_first:
        settings |= {"mm.fail_page_alloc_probability": 1.0, "mm.fail_page_alloc_times": 1}

    async def body(k: Kernel) -> dict[str, int]:
        kv = k.kvfree
        krcp = kv.krcs[0]
        for _ in range(cached):
            pfn = k.mm.alloc_pages_early()
            assert pfn is not None
            krcp.cache.append(k.mm.page_address(pfn))

        async def run(task: Task) -> None:
            await kv.page_cache.fill_page_cache_func(task, krcp.page_cache_work)

        await on_cpu(k, run)
        st = kv.statistics()
        return {"attempts": st.block_alloc_attempts, "failures": st.block_alloc_failures,
                "cached": len(krcp.cache)}

    return boot_and_run(cfg(**settings), body)


@pytest.mark.parametrize(("profile", "want"), [
    ("v5.11", {"attempts": 5, "failures": 1, "cached": 4}),
    ("v5.13", {"attempts": 5, "failures": 1, "cached": 4}),
    ("v6.1", {"attempts": 1, "failures": 1, "cached": 0}),
    ("v6.5", {"attempts": 1, "failures": 1, "cached": 0}),
])
def test_the_refill_stops_at_its_first_failure_only_from_v6_1(
    profile: str, want: dict[str, int]
) -> None:
    """``fill_page_cache_func()`` loops ``rcu_min_cached_objs`` (5) times; until v6.0 a NULL
    page just moves on to the next try (``if (bnode) {...}``), v6.1's "rcu/kvfree: Back off
    upon fill_page_cache_func() allocation failure" (093590c16b44) breaks out."""
    assert _fill(profile, 0, fail_first=True) == want


@pytest.mark.parametrize(("profile", "want"), [
    ("v6.1", {"attempts": 3, "failures": 0, "cached": 5}),
    ("v6.5", {"attempts": 2, "failures": 0, "cached": 5}),
])
def test_the_refill_counts_from_the_cached_pages_from_v6_5(
    profile: str, want: dict[str, int]
) -> None:
    """With 3 of 5 pages cached, v6.1's loop runs from 0: two pages go in, the third is
    refused by ``put_cached_bnode()``, freed, and ends the loop; v6.5's "rcu/kvfree: Make fill
    page cache start from krcp->nr_bkv_objs" (60888b77a06e) allocates only the two missing."""
    assert _fill(profile, 3, fail_first=False) == want


# -- the shrinker's count -----------------------------------------------------------------------


@pytest.mark.parametrize(("profile", "counts_cache"), [
    ("v5.9", False), ("v5.13", False), ("v6.1", True), ("v6.5", True),
])
def test_the_shrinker_counts_cached_pages_from_v5_14(profile: str, counts_cache: bool) -> None:
    """``kfree_rcu_shrink_count()`` returns Σ ``krcp->count`` until v5.13; "kvfree_rcu:
    Release a page cache under memory pressure" (d0bfa8b3c411, v5.14) adds each CPU's
    ``nr_bkv_objs`` and sets ``backoff_page_cache_fill``."""

    async def body(k: Kernel) -> tuple[int, list[bool], int]:
        kv = k.kvfree
        for krcp in kv.krcs:
            krcp.cache.clear()
        pfn = k.mm.alloc_pages_early()
        assert pfn is not None
        kv.krcs[1].cache.append(k.mm.page_address(pfn))

        async def run(task: Task) -> int:
            for _ in range(7):
                p = await k.mm.kmalloc(task, 64, G)
                await kv.kvfree_rcu(task, p, p + 8)
            return kv.drain.kfree_rcu_shrink_count(task)

        n = await on_cpu(k, run)
        backoff = [c.backoff_page_cache_fill for c in kv.krcs]
        await on_cpu(k, kv.kvfree_rcu_barrier)
        return n, backoff, kv.krcs[0].krc_count()

    c = cfg(**{"kvfree.profile": profile, "kvfree.variant": "nowait"})
    n, backoff, _ = boot_and_run(c, body)
    assert n == 7 + (1 if counts_cache else 0)
    assert backoff == [counts_cache, counts_cache]


# -- the head-less path's re-lock ---------------------------------------------------------------


@pytest.mark.parametrize(("profile", "lands_on"), [("v5.13", 0), ("v6.1", 0), ("v6.4", 0),
                                                    ("v6.5", 1), ("v6.12", 1)])
def test_the_head_less_allocation_relocks_this_cpus_krcp_until_v6_5(
    profile: str, lands_on: int
) -> None:
    """``add_ptr_to_bulk_krc_lock()`` drops the lock to allocate and may come back on another
    CPU: 5.13-6.4 re-take ``*krcp = krc_this_cpu_lock(flags)``, the krcp of the CPU now
    running (here CPU 0, after CPU 1 went down); v6.5's "rcu/kvfree: Use consistent krcp when
    growing kfree_rcu() page cache" (309a43165077) re-takes the krcp it dropped (CPU 1's). The
    new block goes on that krcp's channel; either way the object is freed after its GP."""

    async def body(k: Kernel) -> dict[str, Any]:
        kv = k.kvfree
        mm = k.mm
        seen: dict[str, Any] = {}

        async def queuer(task: Task) -> None:
            await task.sleep_ns(MS)
            ps = [await mm.kmalloc(task, 64, G) for _ in range(3)]
            await mm.drain_local_pages(task)
            await kv.kvfree_rcu_mightsleep(task, ps[0])
            seen["cpu"] = task.cpu.id
            seen["blocks"] = [len(c.bulk[0]) for c in kv.krcs]
            await task.sleep_ns(6000 * MS)
            seen["freed"] = freed(k, ps[0])

        async def admin(task: Task) -> None:
            await task.sleep_ns(MS + 4_000)
            await k.rcu.cpu_down(task, 1)

        k.spawn(queuer, 1, "queuer")
        k.spawn(admin, 0, "admin")
        await k.run()
        seen["stats"] = kv.statistics()
        return seen

    seen = boot_and_run(cfg(**{"kvfree.profile": profile, "kvfree.debug_objects": True}), body)
    assert seen["cpu"] == 0  # the allocation slept and the task came back on CPU 0
    want = [0, 0]
    want[lands_on] = 1
    assert seen["blocks"] == want
    assert seen["freed"]
    st = seen["stats"]
    assert st.fallback_synchronize == 0 and st.objects_freed == st.calls == 1
    assert st.gp_violations == 0


# -- v6.5: a block is freed only once its snapshot's GP has completed ---------------------------


@pytest.mark.parametrize(("profile", "frees_early"), [("v6.3", True), ("v6.5", False)])
def test_v6_5_does_not_free_a_block_whose_snapshot_gp_is_pending(
    profile: str, frees_early: bool
) -> None:
    """v6.5's "rcu/kvfree: Add debug to check grace periods" (cdfa0f6fa6b7) wraps the free
    in ``kvfree_rcu_bulk()`` in ``if (!WARN_ON_ONCE(!poll_state_synchronize_rcu_full(
    &bnode->gp_snap)))``: a block reaching reclaim before its GP is left alone (its page is
    still recycled); v6.3 had no check and freed it. Both count the violation."""

    async def body(k: Kernel) -> dict[str, Any]:
        kv = k.kvfree

        async def run(task: Task) -> dict[str, Any]:
            krcp = kv.krcs[task.cpu.id]
            p = await k.mm.kmalloc(task, 64, G)
            page = await k.mm.get_free_page(task, G)
            assert p and page
            bnode = Bnode(page, kv.capacity)
            bnode.records[0] = p
            bnode.nr_records = 1
            bnode.gp_snap = k.rcu.get_state_synchronize_rcu(task)  # a GP not yet over
            kv.counters.note_block()
            kv.counters.pending += 1
            await kv.reclaim.kvfree_rcu_bulk(task, krcp, 0, bnode)
            return {"freed": freed(k, p), "violations": kv.counters.gp_violations,
                    "blocks": kv.counters.blocks_in_use}

        return await on_cpu(k, run)

    r = boot_and_run(cfg(**{"kvfree.profile": profile}), body)
    assert r == {"freed": frees_early, "violations": 1, "blocks": 0}
