"""kvfree_rcu(): the RFC's lock-nesting split, API misuse, shrinker, barrier and hotplug.

The lock tests build the RFC's situation on purpose (kernel.md 1.2, 2.1): this CPU's pcp list
is empty, the per-CPU page cache is used up, and the next object needs a new block, so the
variant is asked for a page while ``krcp->lock`` (a ``raw_spinlock_t``, IRQs off) is held.
"""

from __future__ import annotations

from typing import Any

import pytest
from simtools import MS, VARIANTS, boot_and_run, cfg, freed, on_cpu

from rcukit.config import KernelConfig
from rcukit.errors import MemoryDebugError, RcuUsageError
from rcukit.kernel import Kernel
from rcukit.locking.locks import LockKind
from rcukit.mm.gfp import GFP_KERNEL
from rcukit.mm.slab import ZERO_SIZE_PTR
from rcukit.sched.sim import Task

G = int(GFP_KERNEL)


# -- the RFC's split --------------------------------------------------------------------------

#: (variant, build) -> the splats a block allocation with an empty pcp list gives.
SPLIT: dict[str, dict[str, dict[str, int]]] = {
    build: {
        v: ({kind: 1} if kind and v in ("nowait", "gfp-zero") else {}) for v in VARIANTS
    }
    for build, kind in (
        ("default", ""),
        ("lockdep", "invalid_wait_context"),
        # rt_spin_lock()'s might-sleep check on the uncontended zone->lock (kernel.md 8.3);
        # this said scheduling_while_atomic before RT reports followed the kernel.
        ("rt", "sleeping_in_atomic"),
    )
}
# The rfc profile is a 5.8 kernel: on RT its pcp lists sit under the -rt patchset's pa_lock, a
# sleeping lock (kernel.md 8.1), so every variant that touches a pcp list under krcp->lock
# reports it, and one that refills under zone->lock reports both locks.
_RT_KIND = next(iter(SPLIT["rt"]["nowait"]))
for _v in SPLIT["rt"]:
    if _v not in ("page-cache", "nolock"):
        SPLIT["rt"][_v] = {_RT_KIND: 2 if _v in ("nowait", "gfp-zero") else 1}
# raw-zone-lock on RT takes pa_lock at each of its three freelist tries, then declines
# zone->lock each time.
SPLIT["rt"]["raw-zone-lock"] = {_RT_KIND: 3}


async def _need_a_block_with_pcp_empty(k: Kernel, *, single: bool) -> dict[str, Any]:
    """Use up the cached blocks, drain this CPU's pcp lists, then queue one more object."""
    kv = k.kvfree
    mm = k.mm

    async def work(task: Task) -> dict[str, Any]:
        await task.sleep_ns(MS)  # boot-time work (cache prefill) is done
        cached = len(kv.krcs[task.cpu.id].cache)
        n = cached * kv.capacity + 1
        ptrs = [await mm.kmalloc(task, 64, G) for _ in range(n)]
        await mm.drain_local_pages(task)
        assert mm.pcps[task.cpu.id].count == 0
        for p in ptrs[:-1]:
            await kv.kvfree_rcu(task, p, p + 16)
        before = dict(k.splat_counts())
        stats_before = kv.statistics()
        last = ptrs[-1]
        if single:
            await kv.kvfree_rcu_mightsleep(task, last)
        else:
            await kv.kvfree_rcu(task, last, last + 16)
        assert not task.held_locks and task.preempt_count == 0 and task.irqs_disabled == 0
        after = kv.statistics()
        await kv.kvfree_rcu_barrier(task)
        return {
            "cached": cached,
            "before": before,
            "attempts": after.block_alloc_attempts - stats_before.block_alloc_attempts,
            "rcu_head": after.fallback_rcu_head - stats_before.fallback_rcu_head,
            "sync": after.fallback_synchronize - stats_before.fallback_synchronize,
            "ptrs": ptrs,
        }

    return await on_cpu(k, work)


@pytest.mark.parametrize("build", ["default", "lockdep", "rt"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_block_allocation_under_krcp_lock_splits_the_variants(variant: str, build: str) -> None:
    """nowait and gfp-zero reach zone->lock under the raw lock; the others never do (the
    raw-zone-lock proposal makes it a raw_spinlock_t on !RT and declines it on RT)."""
    c = cfg(**{"kvfree.profile": "rfc", "kvfree.variant": variant}).with_kernel_config(build)

    async def body(k: Kernel) -> None:
        r = await _need_a_block_with_pcp_empty(k, single=False)
        assert r["cached"] >= 2  # the RFC world prefills the cache at boot
        assert not any(r["before"].values())  # nothing until the cache ran out
        got = {kind: n for kind, n in k.splat_counts().items() if n}
        assert got == SPLIT[build][variant]
        for s in k.locks.splats:  # lockdep names both locks, as in the RFC's report
            assert s.lock_name in ("&zone->lock", "pa_lock.l")
            assert s.held[0].name == "krc.lock"
        if variant == "page-cache":  # never allocates here: arms its worker, falls back
            assert (r["attempts"], r["rcu_head"]) == (0, 1)
        elif variant == "fast-try" or (variant, build) == ("raw-zone-lock", "rt"):
            # pcp empty: fails at once (raw-zone-lock on RT declines zone->lock), the
            # rcu_head takes it
            assert (r["attempts"], r["rcu_head"]) == (1, 1)
        else:
            assert (r["attempts"], r["rcu_head"]) == (1, 0)
        st = k.kvfree.statistics()
        assert st.objects_freed == st.calls and st.pending == 0
        assert all(freed(k, p) for p in r["ptrs"])

    boot_and_run(c, body)


def test_splat_text_is_lockdeps() -> None:
    c = cfg(**{"kvfree.profile": "rfc", "kvfree.variant": "nowait"}).with_kernel_config("lockdep")

    async def body(k: Kernel) -> str:
        await _need_a_block_with_pcp_empty(k, single=False)
        [s] = k.locks.splats
        return str(s.format())

    text = boot_and_run(c, body)
    assert "[ BUG: Invalid wait context ]" in text
    assert "(&zone->lock){....}-{3:3}" in text
    assert "(krc.lock){....}-{2:2}, at: kvfree_call_rcu" in text


def test_single_argument_form_splits_the_same_way() -> None:
    """The head-less form fails over to synchronize_rcu() where the two-argument one links."""
    out: dict[str, Any] = {}
    for variant in ("nowait", "fast-try"):
        c = cfg(**{"kvfree.profile": "rfc", "kvfree.variant": variant})

        async def body(k: Kernel) -> tuple[dict[str, int], dict[str, Any]]:
            r = await _need_a_block_with_pcp_empty(k, single=True)
            return k.splat_counts(), r

        out[variant] = boot_and_run(c.with_kernel_config("lockdep"), body)
    nw_splats, nw = out["nowait"]
    ft_splats, ft = out["fast-try"]
    assert nw_splats["invalid_wait_context"] == 1 and nw["sync"] == 0
    assert sum(ft_splats.values()) == 0 and ft["sync"] == 1 and ft["rcu_head"] == 0


def test_v59_on_preempt_rt_skips_the_in_lock_allocation() -> None:
    """v5.9 returned early on PREEMPT_RT instead of calling the allocator under the raw lock."""
    c = cfg(**{"kvfree.profile": "v5.9", "kvfree.variant": "nowait"}).with_kernel_config("rt")

    async def body(k: Kernel) -> dict[str, Any]:
        return await _need_a_block_with_pcp_empty(k, single=False)

    r = boot_and_run(c, body)
    assert (r["attempts"], r["rcu_head"]) == (0, 1)


@pytest.mark.parametrize("how", ["raw_spinlock", "irqs_off", "rcu_read_lock"])
def test_single_argument_from_atomic_context_splats(how: str) -> None:
    """``kvfree_rcu(ptr)`` may sleep (might_sleep()); the two-argument form may not sleep."""

    async def body(k: Kernel) -> tuple[dict[str, int], dict[str, int], str]:
        kv = k.kvfree
        lock = k.new_lock("caller_lock", LockKind.RAW_SPINLOCK)

        async def atomically(task: Task, single: bool) -> None:
            p = await k.mm.kmalloc(task, 64, G)
            if how == "raw_spinlock":
                k.locks.acquire(task, lock, "caller", irqsave=True)
                await kv.kvfree_rcu(task, p, None if single else p + 8)
                k.locks.release(task, lock)
            elif how == "irqs_off":
                with k.locks.irq_disabled(task):
                    await kv.kvfree_rcu(task, p, None if single else p + 8)
            else:
                with k.rcu.read_lock(task):
                    await kv.kvfree_rcu(task, p, None if single else p + 8)

        async def work(task: Task) -> tuple[dict[str, int], dict[str, int], str]:
            await atomically(task, single=False)
            two = dict(k.splat_counts())
            await atomically(task, single=True)
            one = dict(k.splat_counts())
            await kv.kvfree_rcu_barrier(task)
            st = kv.statistics()
            assert st.objects_freed == st.calls == 2
            return two, one, str(k.locks.splats[-1].format())

        return await on_cpu(k, work)

    two, one, text = boot_and_run(cfg(**{"kvfree.profile": "v5.9"}), body)
    assert sum(two.values()) == 0
    assert one["sleeping_in_atomic"] == 1
    assert sum(one.values()) == 1
    assert "BUG: sleeping function called from invalid context" in text


# -- API edges --------------------------------------------------------------------------------


def test_kvfree_rcu_none_does_nothing() -> None:
    async def body(k: Kernel) -> None:
        kv = k.kvfree

        async def work(task: Task) -> None:
            t0 = task.now_ns
            await kv.kvfree_rcu(task, None)
            await kv.kvfree_rcu(task, 0)
            await kv.kvfree_rcu_mightsleep(task, None)
            await kv.kvfree_rcu(task, None, 0x1234)
            assert task.now_ns == t0
            assert not kv.krcs[task.cpu.id].monitor.pending

        await on_cpu(k, work)
        st = kv.statistics()
        assert (st.calls, st.pending, st.objects_freed) == (0, 0, 0)
        assert not k.locks.splats

    boot_and_run(cfg(**{"kvfree.debug_objects": True}), body)


@pytest.mark.parametrize("profile", ["v5.9", "v6.1"])
@pytest.mark.parametrize("debug", [False, True])
def test_kvfree_rcu_of_zero_size_ptr_is_queued_and_freed_as_nothing(
    profile: str, debug: bool
) -> None:
    """``kmalloc(0)`` returns ``ZERO_SIZE_PTR`` ((void *)16) and ``kfree()`` / ``kvfree()`` of
    it do nothing (``ZERO_OR_NULL_PTR`` in include/linux/slab.h; mm/slub.c ``kfree``).
    ``kvfree_call_rcu()`` (v5.9 and v6.1, kernel/rcu/tree.c) has no such test: it queues the
    pointer like any other, ``debug_rcu_head_queue()`` tracks it by address, and KASAN's
    queue-time hook (``kasan_record_aux_stack``, v6.1 mm/kasan/generic.c) returns for an
    address that is not ``virt_addr_valid``. So no report at queue time, on either build.

    At reclaim the block goes to ``kfree_bulk()``; rcukit skips ZERO_SIZE_PTR there as
    ``kfree()`` does (v5.9/v6.1 ``build_detached_freelist`` skips only NULL and asks "Do we
    need !ZERO_OR_NULL_PTR(object) here? (for kfree)"): nothing is freed and the allocator
    is left as it was."""

    async def body(k: Kernel) -> None:
        kv = k.kvfree
        slab = k.mm.slab

        async def work(task: Task) -> None:
            before = slab.nr_objects
            p = await k.mm.kmalloc(task, 0, G)
            assert p == ZERO_SIZE_PTR and slab.nr_objects == before
            await kv.kvfree_rcu(task, p)
            q = await k.mm.kmalloc(task, 64, G)
            await kv.kvfree_rcu(task, q, q + 8)
            await kv.kvfree_rcu_barrier(task)
            assert freed(k, q) and slab.nr_objects == before
            # a second one after the first was reclaimed is no double kvfree_rcu
            await kv.kvfree_rcu_mightsleep(task, p)
            await kv.kvfree_rcu_barrier(task)
            await k.mm.kvfree(task, p)
            await k.mm.kfree(task, p)
            assert slab.nr_objects == before

        await on_cpu(k, work)
        st = kv.statistics()
        assert st.pending == 0 and st.gp_violations == 0 and st.calls == 3
        assert not k.locks.splats

    boot_and_run(cfg(**{"kvfree.profile": profile, "kvfree.debug_objects": debug}), body)


def test_zero_size_ptr_queued_twice_is_a_double_kvfree_rcu_under_debug_objects() -> None:
    """``debug_rcu_head_queue()`` (v6.1, kernel/rcu/rcu.h) is ``debug_object_activate()`` on
    the address: ZERO_SIZE_PTR is one address, so two ``kvfree_rcu()`` of it in flight are a
    "Double-freed call" like any other double queueing (lib/debugobjects.c,
    ``debug_object_activate``: an already active object). The two-argument form of a zero-size
    object has no room for its rcu_head (ksize(ZERO_SIZE_PTR) == 0): a usage error."""

    async def body(k: Kernel) -> None:
        kv = k.kvfree

        async def work(task: Task) -> None:
            p = await k.mm.kmalloc(task, 0, G)
            with pytest.raises(RcuUsageError, match="rcu_head is not inside the object"):
                await kv.kvfree_rcu(task, p, p + 8)
            await kv.kvfree_rcu(task, p)
            with pytest.raises(MemoryDebugError, match="double kvfree_rcu"):
                await kv.kvfree_rcu(task, p)
            assert not task.held_locks and task.preempt_count == 0
            await kv.kvfree_rcu_barrier(task)

        await on_cpu(k, work)
        assert kv.statistics().pending == 0

    boot_and_run(cfg(**{"kvfree.profile": "v6.1", "kvfree.debug_objects": True}), body)


@pytest.mark.parametrize("where", ["past_end", "before_start", "vmalloc_past_end"])
def test_head_outside_the_object_is_a_usage_error(where: str) -> None:
    async def body(k: Kernel) -> None:
        kv = k.kvfree
        mm = k.mm

        async def work(task: Task) -> None:
            if where == "vmalloc_past_end":
                p = await mm.vmalloc(task, 100)
                bad = p + mm.vmap.area_size(p)
            else:
                p = await mm.kmalloc(task, 64, G)
                bad = p + mm.ksize(p) if where == "past_end" else p - 8
            with pytest.raises(RcuUsageError, match="rcu_head is not inside the object"):
                await kv.kvfree_rcu(task, p, bad)
            # Nothing was queued, nothing is held: the system is still usable.
            assert not task.held_locks and task.preempt_count == 0 and task.irqs_disabled == 0
            assert kv.statistics().pending == 0 and not freed(k, p)
            await kv.kvfree_rcu(task, p, p + 8)
            await kv.kvfree_rcu_barrier(task)
            assert freed(k, p)

        await on_cpu(k, work)
        st = kv.statistics()
        assert st.objects_freed == st.calls == 1 and st.gp_violations == 0

    boot_and_run(cfg(**{"kvfree.debug_objects": True}), body)


@pytest.mark.parametrize("second", ["two_arg", "single"])
def test_double_kvfree_rcu_is_caught_by_debug_objects(second: str) -> None:
    async def body(k: Kernel) -> None:
        kv = k.kvfree

        async def work(task: Task) -> None:
            p = await k.mm.kmalloc(task, 64, G)
            await kv.kvfree_rcu(task, p, p + 8)
            with pytest.raises(MemoryDebugError, match="double kvfree_rcu"):
                if second == "single":
                    await kv.kvfree_rcu_mightsleep(task, p)
                else:
                    await kv.kvfree_rcu(task, p, p + 8)
            assert not task.held_locks and task.preempt_count == 0
            q = await k.mm.kmalloc(task, 64, G)
            await kv.kvfree_rcu(task, q, q + 8)
            await kv.kvfree_rcu_barrier(task)  # the slab layer raises if p is freed twice
            assert freed(k, p) and freed(k, q)

        await on_cpu(k, work)
        st = kv.statistics()
        assert st.objects_freed == 2 and st.pending == 0 and st.gp_violations == 0

    boot_and_run(cfg(**{"kvfree.debug_objects": True}), body)


def test_kvfree_rcu_of_a_freed_object_is_a_use_after_free() -> None:
    async def body(k: Kernel) -> None:
        async def work(task: Task) -> None:
            p = await k.mm.kmalloc(task, 64, G)
            await k.mm.kfree(task, p)
            with pytest.raises(MemoryDebugError):
                await k.kvfree.kvfree_rcu(task, p, p + 8)
            assert not task.held_locks

        await on_cpu(k, work)

    boot_and_run(cfg(**{"kvfree.debug_objects": True}), body)


def test_rcu_barrier_alone_does_not_free_kvfree_objects() -> None:
    """kernel.md 1.7: "a kfree_rcu() followed by an rcu_barrier() does not imply that memory
    will be freed"; kvfree_rcu_barrier() does promise it."""

    async def body(k: Kernel) -> None:
        kv = k.kvfree

        async def work(task: Task) -> None:
            ptrs = [await k.mm.kmalloc(task, 64, G) for _ in range(100)]
            for p in ptrs:
                await kv.kvfree_rcu(task, p, p + 8)
            await k.rcu.rcu_barrier(task)
            assert kv.statistics().pending == 100  # v6.1: the monitor waits 5 s
            assert not any(freed(k, p) for p in ptrs)
            await kv.kvfree_rcu_barrier(task)
            assert kv.statistics().pending == 0
            assert all(freed(k, p) for p in ptrs)
            assert task.now_ns < 1000 * MS  # long before the 5 s drain

        await on_cpu(k, work)

    boot_and_run(cfg(**{"kvfree.profile": "v6.1", "kvfree.debug_objects": True}), body)


def test_kvfree_rcu_barrier_inside_a_read_section_is_a_usage_error() -> None:
    async def body(k: Kernel) -> None:
        async def work(task: Task) -> None:
            with k.rcu.read_lock(task), pytest.raises(RcuUsageError):
                await k.kvfree.kvfree_rcu_barrier(task)

        await on_cpu(k, work)

    boot_and_run(cfg(), body)


# -- the shrinker -----------------------------------------------------------------------------


async def _squeeze(k: Kernel) -> dict[str, Any]:
    """Fill this CPU's page cache, then push free memory below the low watermark."""
    kv = k.kvfree
    mm = k.mm

    async def work(task: Task) -> dict[str, Any]:
        for _ in range(50):  # a cache miss arms the refill worker
            p = await mm.kmalloc(task, 64, G)
            await kv.kvfree_rcu(task, p, p + 8)
        await task.sleep_ns(10 * MS)
        out: dict[str, Any] = {"cache_before": len(kv.krcs[0].cache)}
        pages = []
        while mm.nr_free_pages() > mm.zone.wmark.low - 8:
            pages.append(await mm.alloc_pages(task, G))
        await task.sleep_ns(5 * MS)
        out["cache_after"] = len(kv.krcs[0].cache)
        out["drained"] = kv.counters.cache_pages_drained
        out["scans"] = kv.shrinker.scans
        out["backoff"] = [c.backoff_page_cache_fill for c in kv.krcs]
        out["kswapd"] = k.vmstat["kswapd_wake"]
        for pfn in pages:
            await mm.free_pages(task, pfn)
        # The next cache miss: with the back-off the refill waits 5 s and takes one page.
        p = await mm.kmalloc(task, 64, G)
        await kv.kvfree_rcu(task, p, p + 8)
        await task.sleep_ns(1000 * MS)
        out["refill_1s"] = len(kv.krcs[0].cache)
        await task.sleep_ns(5000 * MS)
        out["refill_6s"] = len(kv.krcs[0].cache)
        await kv.kvfree_rcu_barrier(task)
        st = kv.statistics()
        assert st.objects_freed == st.calls == 51
        return out

    return await on_cpu(k, work)


def _pressure_cfg(profile: str) -> KernelConfig:
    return cfg(
        **{
            "kvfree.profile": profile,
            "kvfree.variant": "page-cache",
            "mm.zone_pages": 16384,
            "mm.initial_used_fraction": 0.95,
        }
    )


def test_shrinker_drains_the_page_cache_and_backs_off_v61() -> None:
    r = boot_and_run(_pressure_cfg("v6.1"), _squeeze)
    assert r["cache_before"] == 5  # v5.11+: rcu_min_cached_objs = 5
    assert r["kswapd"] > 0 and r["scans"] > 0
    assert r["drained"] == 5 and r["cache_after"] == 0
    assert r["backoff"] == [True, True]  # kfree_rcu_shrink_count sets it on every CPU
    # backoff_page_cache_fill: the refill is delayed by rcu_delay_page_cache_fill_msec and
    # takes a single page.
    assert r["refill_1s"] == 0
    assert r["refill_6s"] == 1


def test_v513_shrinker_does_not_touch_the_page_cache() -> None:
    """Draining the cache from the shrinker and the back-off came with v5.14."""
    r = boot_and_run(_pressure_cfg("v5.13"), _squeeze)
    assert r["kswapd"] > 0 and r["scans"] > 0
    assert r["drained"] == 0 and r["cache_after"] == r["cache_before"] == 5
    assert r["backoff"] == [False, False]


# -- CPU hotplug ------------------------------------------------------------------------------


@pytest.mark.parametrize(("profile", "drain_ms"), [("v5.9", 20), ("v6.1", 5000), ("v6.3", 5000)])
def test_objects_queued_on_an_offlined_cpu_are_freed_when_their_monitor_was_due(
    profile: str, drain_ms: int
) -> None:
    """kvfree_rcu() has no CPU-hotplug hook (kernel/rcu/tree.c, v5.9-v6.x): a dead CPU's
    timers migrate to a live one (``timers_dead_cpu()``) and its workqueue pool runs unbound,
    so the krcp's ``monitor_work`` fires when it was due, ``KFREE_DRAIN_JIFFIES`` after the
    first object (HZ/50 in v5.9; 5*HZ from v6.1, with fewer than a block queued: no kick),
    and the objects are freed after their grace period from another CPU, none early."""
    async def body(k: Kernel) -> None:
        kv = k.kvfree
        mm = k.mm
        ptrs: list[int] = []
        seen: dict[str, Any] = {}

        async def queuer(task: Task) -> None:
            for i in range(300):  # less than a block: no kick
                p = await (mm.vmalloc(task, 100) if i % 10 == 0 else mm.kmalloc(task, 64, G))
                ptrs.append(p)
                if i % 2:
                    await kv.kvfree_rcu(task, p, p + 8)
                else:
                    await kv.kvfree_rcu_mightsleep(task, p)
            seen["cookie"] = k.rcu.get_state_synchronize_rcu(task)
            await task.sleep_ns(100 * MS)

        async def admin(task: Task) -> None:
            await task.sleep_ns(MS)
            seen["pending_at_down"] = kv.statistics().pending
            await k.rcu.cpu_down(task, 1)
            await task.sleep_ns((drain_ms - 5) * MS)
            seen["pending_before_due"] = kv.statistics().pending
            await task.sleep_ns(100 * MS)
            seen["pending_after"] = kv.statistics().pending
            seen["gp_passed"] = k.rcu.poll_state_synchronize_rcu(seen["cookie"])

        k.spawn(queuer, 1, "queuer")
        k.spawn(admin, 0, "admin")
        await k.run()
        assert seen["pending_at_down"] == seen["pending_before_due"] == 300
        assert seen["pending_after"] == 0 and seen["gp_passed"]
        assert all(freed(k, p) for p in ptrs)
        st = kv.statistics()
        assert st.objects_freed == st.calls == 300 and st.gp_violations == 0

    boot_and_run(cfg(**{"kvfree.profile": profile, "kvfree.debug_objects": True}), body)


@pytest.mark.parametrize("down_after_ns", [3_000, 4_400, 5_800])
def test_cpu_goes_down_during_the_head_less_direct_allocation(down_after_ns: int) -> None:
    """v5.13+ drops krcp->lock to allocate; the task may come back on another CPU.

    Regression: the engine used to re-lock one krcp and unlock another (ValueError). It now
    keeps the krcp whose lock it re-took, as current kernels do, and the object is still freed
    after its grace period without a barrier.
    """

    async def body(k: Kernel) -> None:
        kv = k.kvfree
        mm = k.mm
        seen: dict[str, Any] = {}

        async def queuer(task: Task) -> None:
            await task.sleep_ns(MS)
            ps = [await mm.kmalloc(task, 64, G) for _ in range(3)]
            await mm.drain_local_pages(task)
            await kv.kvfree_rcu_mightsleep(task, ps[0])
            assert not task.held_locks and task.preempt_count == 0 and task.irqs_disabled == 0
            seen["cpu"] = task.cpu.id
            seen["ptr"] = ps[0]
            await task.sleep_ns(6000 * MS)  # past v6.1's 5 s drain, no barrier
            seen["freed"] = freed(k, ps[0])

        async def admin(task: Task) -> None:
            await task.sleep_ns(MS + down_after_ns)
            await k.rcu.cpu_down(task, 1)

        k.spawn(queuer, 1, "queuer")
        k.spawn(admin, 0, "admin")
        await k.run()
        assert seen["cpu"] == 0  # it did migrate
        assert seen["freed"]
        st = kv.statistics()
        assert st.block_alloc_attempts >= 1 and st.fallback_synchronize == 0
        assert st.objects_freed == st.calls == 1 and st.gp_violations == 0

    boot_and_run(cfg(**{"kvfree.profile": "v6.1", "kvfree.debug_objects": True}), body)
