"""Allocator-core variants: each one's locking, failures and kswapd behaviour, and the registry.

The matrix is the RFC's argument made executable: a caller holding a ``raw_spinlock_t`` with
IRQs off (kvfree_rcu's ``krcp->lock``) asks each variant for a page, with this CPU's pcp list
empty or stocked, on a default, a ``PROVE_RAW_LOCK_NESTING`` and a ``PREEMPT_RT`` build.
"""

from __future__ import annotations

from typing import Any

import pytest
from simtools import mm_kernel, on_cpu, pa

import rcukit
import rcukit.sim
from rcukit.config import KernelConfig
from rcukit.errors import ConfigError
from rcukit.kernel import Kernel
from rcukit.locking.locks import LockKind
from rcukit.mm.gfp import GFP_KERNEL, format_gfp
from rcukit.rcu.kvfree.variants import (
    KVFREE_REFILL_GFP,
    NOLOCK_GFP,
    BlockPageSource,
    BlockSources,
    GfpPageSource,
    MempoolSource,
)
from rcukit.sched.sim import Task

NONE: dict[str, int] = {}
IWC = {"invalid_wait_context": 1}
#: On PREEMPT_RT the uncontended zone->lock is rt_spin_lock()'s might-sleep report
#: (kernel/locking/spinlock_rt.c, kernel.md 8.3), not "scheduling while atomic": nobody else holds
#: the lock, so the task never blocks. (These expectations said scheduling_while_atomic before
#: the RT reports were modelled as the kernel prints them.)
SLP = {"sleeping_in_atomic": 1}
SLP2 = {"sleeping_in_atomic": 2}

#: (variant, pcp stocked?) -> (gets a page?, splats on default, on lockdep, on rt)
#: The default profile is a 5.8-era kernel: on RT its pcp lists are the -rt patchset's
#: ``pa_lock`` local_lock, a sleeping lock taken for every pcp access (kernel.md 8.1), so on
#: RT every variant that touches a pcp list reports it, and a refill reports ``zone->lock``
#: too; ``alloc_pages_nolock()`` only trylocks.
EXPECTED: dict[tuple[str, bool], tuple[bool, dict[str, int], dict[str, int], dict[str, int]]] = {
    ("fast-try", False): (False, NONE, NONE, SLP),
    ("fast-try", True): (True, NONE, NONE, SLP),
    ("nowait", False): (True, NONE, IWC, SLP2),
    ("nowait", True): (True, NONE, NONE, SLP),
    ("gfp-zero", False): (True, NONE, IWC, SLP2),
    ("gfp-zero", True): (True, NONE, NONE, SLP),
    ("page-cache", False): (False, NONE, NONE, NONE),
    ("page-cache", True): (False, NONE, NONE, NONE),
    ("nolock", False): (True, NONE, NONE, NONE),
    ("nolock", True): (True, NONE, NONE, NONE),
}


async def get_under_raw_lock(k: Kernel, name: str, *, stock_pcp: bool) -> int | None:
    mm = pa(k)
    src = BlockSources().lookup(name)

    async def work(task: Task) -> int | None:
        if stock_pcp:  # a refill outside the lock leaves batch-1 pages on the list
            pfn = await mm.alloc_pages(task, int(GFP_KERNEL))
            assert pfn is not None
            await mm.free_pages(task, pfn)
        else:
            await mm.drain_local_pages(task)
            assert mm.pcps[task.cpu.id].count == 0
        lock = k.new_lock("krc.lock", LockKind.RAW_SPINLOCK)
        k.locks.acquire(task, lock, "kvfree_call_rcu", irqsave=True)
        assert task.irqs_disabled and task.in_atomic()
        addr = await src.get_page(task, mm)
        k.locks.release(task, lock)
        return addr

    return await on_cpu(k, work)


@pytest.mark.parametrize("build", ["default", "lockdep", "rt"])
@pytest.mark.parametrize(("variant", "stocked"), list(EXPECTED))
async def test_variant_under_raw_lock(
    autojump_clock: Any, build: str, variant: str, stocked: bool
) -> None:
    gets, *splats = EXPECTED[(variant, stocked)]
    want = dict(zip(("default", "lockdep", "rt"), splats, strict=True))[build]
    c = KernelConfig(nr_cpus=2).with_kernel_config(build)
    async with mm_kernel(c) as k:
        locks_before = pa(k).zone_lock.acquisitions
        addr = await get_under_raw_lock(k, variant, stock_pcp=stocked)
        assert (addr is not None) == gets
        assert {kind: n for kind, n in k.splat_counts().items() if n} == want
        for s in k.locks.splats:  # the splat names the zone or pcp lock, krc.lock held
            assert s.lock_name in ("&zone->lock", "pa_lock.l")
            assert s.held[0].name == "krc.lock"
        took_zone_lock = pa(k).zone_lock.acquisitions - locks_before > (1 if stocked else 0)
        assert took_zone_lock == (variant in ("nowait", "gfp-zero", "nolock") and not stocked)
        if addr is not None:
            assert pa(k).page_state(pa(k).virt_to_pfn(addr)) == "allocated"
        assert k.vmstat["kswapd_wake"] == 0  # plenty of free memory: nobody wakes kswapd


@pytest.mark.parametrize(("variant", "wakes"), [("nowait", True), ("gfp-zero", False)])
@pytest.mark.parametrize("build", ["lockdep", "rt"])
async def test_kswapd_wakeup_below_low(
    autojump_clock: Any, variant: str, wakes: bool, build: str
) -> None:
    """Below the low watermark nowait also takes ``&pgdat->kswapd_wait``; gfp-zero never.
    On RT the 5.8-rt ``pa_lock`` around the pcp lists is a sleeping lock as well."""
    c = KernelConfig(nr_cpus=2).with_kernel_config(build).replace(**{"mm.initial_free_pages": 1200})
    async with mm_kernel(c) as k:
        assert pa(k).zone.wmark.min < 1200 < pa(k).zone.wmark.low
        addr = await get_under_raw_lock(k, variant, stock_pcp=False)
        assert addr is not None
        assert k.vmstat["kswapd_wake"] == (1 if wakes else 0)
        locks = {s.lock_name for s in k.locks.splats}
        expect = {"&pgdat->kswapd_wait", "&zone->lock"} if wakes else {"&zone->lock"}
        if build == "rt":  # the 5.8-rt pcp lists' pa_lock (kernel.md 8.1) is reported too
            expect.add("pa_lock.l")
        # (A set: on RT the kswapd just woken may hold zone->lock when the refill wants it,
        # which adds a report of another kind on the same lock.)
        assert locks == expect


async def test_fast_try_and_nolock_never_wake_kswapd_below_low(autojump_clock: Any) -> None:
    c = KernelConfig(nr_cpus=2, prove_raw_lock_nesting=True).replace(
        **{"mm.initial_free_pages": 1200}
    )
    async with mm_kernel(c) as k:
        for name in ("fast-try", "nolock", "page-cache"):
            await get_under_raw_lock(k, name, stock_pcp=False)
        assert k.vmstat["kswapd_wake"] == 0
        assert not k.locks.splats


async def test_builtin_flags_and_descriptions(autojump_clock: Any) -> None:
    async with mm_kernel(KernelConfig(nr_cpus=1)) as k:
        assert pa(k) is not None
        v = {s.name: s for s in BlockSources()}
        assert list(v) == [
            "fast-try", "nowait", "gfp-zero", "raw-zone-lock", "page-cache", "nolock"
        ]
        assert format_gfp(v["fast-try"].gfp) == "GFP_NOWAIT|__GFP_NOWARN|__GFP_FAST_TRY"
        assert format_gfp(v["nowait"].gfp) == "GFP_NOWAIT|__GFP_NOWARN"
        # Wilcox's literal __get_free_page(0) (kernel.md 8.5): no __GFP_NOWARN.
        assert v["gfp-zero"].gfp == 0
        assert format_gfp(v["raw-zone-lock"].gfp) == "GFP_NOWAIT|__GFP_NOWARN"
        assert v["page-cache"].gfp == KVFREE_REFILL_GFP == 0x92CC0
        assert v["nolock"].gfp == NOLOCK_GFP
        assert [n for n, s in v.items() if s.defers_to_worker] == ["page-cache"]
        for s in v.values():
            assert isinstance(s, BlockPageSource)
            assert s.description and "\n" not in s.description


async def test_registry_unknown_duplicate_and_user_variants(autojump_clock: Any) -> None:
    reg = BlockSources()
    with pytest.raises(ConfigError, match="unknown allocator variant 'atomic'; known: "):
        reg.lookup("atomic")
    try:
        reg.lookup("bogus")
    except ConfigError as exc:
        for name in ("fast-try", "nowait", "gfp-zero", "raw-zone-lock", "page-cache", "nolock"):
            assert name in str(exc)
    atomic = GfpPageSource("atomic", 0xA20, "GFP_ATOMIC, for comparison")
    reg.register(atomic)
    assert reg.lookup("atomic") is atomic
    assert reg.names() == [
        "fast-try", "nowait", "gfp-zero", "raw-zone-lock", "page-cache", "nolock", "atomic"
    ]
    with pytest.raises(ConfigError, match="already registered"):
        reg.register(GfpPageSource("atomic", 0, "again"))
    reg.register(GfpPageSource("atomic", 0, "again"), replace=True)
    assert reg.lookup("atomic").description == "again"
    with pytest.raises(ConfigError, match="without spaces"):
        reg.register(GfpPageSource("two words", 0, "x"))
    with pytest.raises(ConfigError, match="not a BlockPageSource"):
        reg.register(object())  # type: ignore[arg-type]
    # Registries are per kernel: a user's source is known only where it was passed.
    async with rcukit.sim.boot(KernelConfig(nr_cpus=1), block_sources=[atomic]) as k:
        assert k.kvfree.block_sources.lookup("atomic") is atomic
    async with rcukit.sim.boot(KernelConfig(nr_cpus=1)) as k2:
        assert "atomic" not in k2.kvfree.block_sources


async def test_mempool_user_variant(autojump_clock: Any) -> None:
    async with mm_kernel(KernelConfig(nr_cpus=2, prove_raw_lock_nesting=True)) as k:
        mm = pa(k)
        pool = MempoolSource(mm, 4)
        reg = BlockSources([pool])
        assert [len(p) for p in pool.pools] == [4, 4]
        assert "GFP_KERNEL|__GFP_NOWARN|__GFP_NORETRY|__GFP_NOMEMALLOC" in pool.description

        async def work(task: Task) -> list[int | None]:
            lock = k.new_lock("krc.lock", LockKind.RAW_SPINLOCK)
            got: list[int | None] = []
            k.locks.acquire(task, lock, "kvfree_call_rcu", irqsave=True)
            for _ in range(5):  # one more than the reserve holds
                got.append(await reg.lookup("mempool").get_page(task, mm))
            k.locks.release(task, lock)
            await task.sleep_ns(1_000_000)  # let the refill worker run
            return got

        got = await on_cpu(k, work)
        assert got[4] is None and all(a is not None for a in got[:4])
        assert not k.locks.splats  # no page allocator call under the raw lock
        assert len(pool.pools[0]) == 4 and pool.refills == 4
        assert len(pool.pools[1]) == 4
        with pytest.raises(ConfigError, match="must be >= 1"):
            MempoolSource(mm, 0)


async def test_matrix_holds_in_a_fully_booted_kernel(autojump_clock: Any) -> None:
    """With RCU and kvfree_rcu booted too (their boot-time prefill stocks the pcp lists)."""
    async with rcukit.sim.boot(KernelConfig(nr_cpus=2, prove_raw_lock_nesting=True)) as k:
        mm = pa(k)

        async def work(task: Task) -> tuple[int | None, int | None, int]:
            await task.sleep_ns(1_000_000)  # let boot-time work finish
            await mm.drain_local_pages(task)
            before = k.locks.counts["invalid_wait_context"]
            lock = k.new_lock("krc.lock", LockKind.RAW_SPINLOCK)
            k.locks.acquire(task, lock, "kvfree_call_rcu", irqsave=True)
            fast = await BlockSources().lookup("fast-try").get_page(task, mm)
            nowait = await BlockSources().lookup("nowait").get_page(task, mm)
            k.locks.release(task, lock)
            return fast, nowait, k.locks.counts["invalid_wait_context"] - before

        fast, nowait, splats = await on_cpu(k, work)
        assert fast is None and nowait is not None and splats == 1
