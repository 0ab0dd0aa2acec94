"""Two reviewer proposals of the RFC thread as variants: literal gfp 0 and the raw zone lock.

Sources: the RFC (``reference/rfc-gfp-fast-try.txt``, 2020-08-03, which quotes Matthew Wilcox's
2020-07-31 proposal: "On non-RT, we could make that lock a raw spinlock. On RT, we could
decline to take the lock. We'd need to abstract the spin_lock() away behind zone_lock(zone)"),
Wilcox's "If you specify 0 in your GFP flags, then we won't wake kswapd" (kernel.md 2.2), and
5.8 ``mm/page_alloc.c`` (``warn_alloc``, ``show_free_areas``, ``wakeup_kswapd`` via the slow
path; kernel.md 8.5). Neither proposal was merged.
"""

from __future__ import annotations

from typing import Any

import pytest
from simtools import boot_and_run, cfg, mm_kernel, on_cpu

from rcukit.errors import ConfigError
from rcukit.kernel import Kernel
from rcukit.locking.locks import LockKind
from rcukit.mm.gfp import GFP_KERNEL
from rcukit.rcu.kvfree.variants import BlockSources, RawZoneLockSource
from rcukit.sched.sim import Task

G = int(GFP_KERNEL)
#: Below WMARK_MIN (1024 pages on the default zone): every mask without reserves fails.
BELOW_MIN = {"mm.initial_free_pages": 900}
#: Between WMARK_MIN (1024) and WMARK_LOW (1286): GFP_NOWAIT's slow path wakes kswapd and
#: then succeeds at the min watermark.
BELOW_LOW = {"mm.initial_free_pages": 1200}


async def _get_under_krc_lock(k: Kernel, *, stock_pcp: bool) -> dict[str, Any]:
    """The kernel's own variant (``k.kvfree.variant``) asked for a page under a raw lock."""
    mm = k.mm
    src = k.kvfree.variant

    async def work(task: Task) -> dict[str, Any]:
        if stock_pcp:
            pfn = await mm.alloc_pages(task, G)
            assert pfn is not None
            await mm.free_pages(task, pfn)
        else:
            await mm.drain_local_pages(task)
        locks = mm.zone.lock.acquisitions
        lock = k.new_lock("krc.lock", LockKind.RAW_SPINLOCK)
        k.locks.acquire(task, lock, "kvfree_call_rcu", irqsave=True)
        addr = await src.get_page(task, mm)
        k.locks.release(task, lock)
        return {"addr": addr, "zone_locks": mm.zone.lock.acquisitions - locks}

    return await on_cpu(k, work)


def _splats(k: Kernel) -> dict[str, int]:
    return {kind: n for kind, n in k.splat_counts().items() if n}


# -- gfp-zero: __get_free_page(0), literally -----------------------------------------------------


@pytest.mark.parametrize("build", ["default", "lockdep", "rt"])
async def test_gfp_zero_fails_through_warn_alloc_and_the_zone_lock(
    autojump_clock: Any, build: str
) -> None:
    """gfp 0 never wakes kswapd, but has no ``__GFP_NOWARN``: a failure under ``krcp->lock``
    runs ``warn_alloc()`` -> ``show_mem()`` -> ``show_free_areas()``, which takes
    ``zone->lock`` (a ``spinlock_t``): reported by lockdep with PROVE_RAW_LOCK_NESTING and a
    sleeping lock on RT; on a default build it only costs the report."""
    async with mm_kernel(cfg(**BELOW_MIN).with_kernel_config(build)) as k:
        src = BlockSources().lookup("gfp-zero")
        assert src.gfp == 0
        mm = k.mm

        async def work(task: Task) -> int | None:
            await mm.drain_local_pages(task)
            lock = k.new_lock("krc.lock", LockKind.RAW_SPINLOCK)
            k.locks.acquire(task, lock, "kvfree_call_rcu", irqsave=True)
            addr = await src.get_page(task, mm)
            k.locks.release(task, lock)
            return addr

        assert await on_cpu(k, work) is None
        assert mm.warnings == [
            "work/0: page allocation failure: order:0, mode:0(), nodemask=(null)"
        ]
        assert k.vmstat["kswapd_wake"] == 0
        assert mm.zone.lock.acquisitions == 1  # show_free_areas, nothing else
        got = _splats(k)
        if build == "default":
            assert got == {}
        else:
            assert sum(got.values()) == 1
            assert (k.locks.splats[0].lock_name, k.locks.splats[0].ip) == (
                "&zone->lock", "show_free_areas"
            )


# -- raw-zone-lock: Wilcox's zone_lock(zone) ------------------------------------------------------


def _rzl(build: str, **settings: Any) -> Any:
    return cfg(**{"kvfree.variant": "raw-zone-lock", **settings}).with_kernel_config(build)


@pytest.mark.parametrize("build", ["default", "lockdep"])
def test_raw_zone_lock_makes_the_zone_lock_raw_on_non_rt(build: str) -> None:
    """On !RT ``zone->lock`` is a ``raw_spinlock_t`` for the whole machine, so the refill
    under ``krcp->lock`` (raw in raw) is legal even with PROVE_RAW_LOCK_NESTING, and the other
    variants keep the ``spinlock_t``."""

    async def body(k: Kernel) -> dict[str, Any]:
        assert k.mm.zone.lock.kind is LockKind.RAW_SPINLOCK
        assert k.mm.zone_lock is k.mm.zone.lock
        return await _get_under_krc_lock(k, stock_pcp=False)

    r = boot_and_run(_rzl(build), body)
    assert r["addr"] is not None and r["zone_locks"] == 1  # rmqueue_bulk, raw in raw

    async def other(k: Kernel) -> LockKind:
        return k.mm.zone.lock.kind

    nowait = cfg(**{"kvfree.variant": "nowait"}).with_kernel_config(build)
    assert boot_and_run(nowait, other) is LockKind.SPINLOCK


def test_raw_zone_lock_still_wakes_kswapd_through_a_spinlock_t() -> None:
    """The RFC on GFP_NOWAIT: "there is at least one path that does it outside of the page
    allocator ... wakeup_kswapd() -> wake_up_interruptible(&pgdat->kswapd_wait)" takes a
    sleepable lock: a raw zone lock does not cover the slow path's kswapd wake-up."""

    async def body(k: Kernel) -> tuple[dict[str, Any], dict[str, int], str]:
        r = await _get_under_krc_lock(k, stock_pcp=False)
        return r, _splats(k), k.locks.splats[0].lock_name

    r, got, lock = boot_and_run(_rzl("lockdep", **BELOW_LOW), body)
    assert r["addr"] is not None  # served at the min watermark after the wake-up
    assert got == {"invalid_wait_context": 1} and lock == "&pgdat->kswapd_wait"


def test_raw_zone_lock_declines_the_zone_lock_on_rt() -> None:
    """On RT the zone lock stays a sleeping lock and the in-krcp allocation declines it: a
    stocked pcp list serves it, an empty one fails it without touching zone->lock; other
    callers (a sleepable GFP_KERNEL allocation) still take the lock."""

    async def body(k: Kernel) -> dict[str, Any]:
        assert k.mm.zone.lock.kind is LockKind.SPINLOCK
        stocked = await _get_under_krc_lock(k, stock_pcp=True)
        empty = await _get_under_krc_lock(k, stock_pcp=False)
        declined = k.vmstat["zone_lock_declined"]

        async def sleepable(task: Task) -> int:
            before = k.mm.zone.lock.acquisitions
            await k.mm.drain_local_pages(task)
            assert await k.mm.alloc_pages(task, G) is not None
            return k.mm.zone.lock.acquisitions - before

        return {"stocked": stocked, "empty": empty, "declined": declined,
                "other": await on_cpu(k, sleepable),
                "zone_splats": [s for s in k.locks.splats if s.lock_name == "&zone->lock"],
                "decliners": set(k.mm.page_alloc.zone_lock_decliners)}

    r = boot_and_run(_rzl("rt"), body)
    assert r["stocked"]["addr"] is not None and r["stocked"]["zone_locks"] == 0  # a pcp page
    assert r["empty"] == {"addr": None, "zone_locks": 0}
    # Every rmqueue_bulk() of the attempt declines: the fast try, the slow path's first try
    # and its one retry (no direct reclaim for GFP_NOWAIT).
    assert r["declined"] == 3
    assert r["other"] == 1  # its rmqueue_bulk refill (the pcp list was already empty)
    # Nothing on zone->lock (what the pcp protection of the profile's kernel does on RT is
    # the page allocator's business, not the proposal's).
    assert r["zone_splats"] == [] and r["decliners"] == set()


def test_raw_zone_lock_changes_the_class_only_before_first_use() -> None:
    """A lock's class is fixed once lockdep has seen it: the boot hook refuses a zone lock
    that was already taken."""

    async def body(k: Kernel) -> None:
        async def take(task: Task) -> None:
            await k.mm.drain_local_pages(task)
            assert await k.mm.alloc_pages(task, G) is not None

        await on_cpu(k, take)
        with pytest.raises(ConfigError, match="before first use"):
            RawZoneLockSource().boot_mm(k.mm)

    boot_and_run(cfg(**{"kvfree.variant": "nowait"}), body)
