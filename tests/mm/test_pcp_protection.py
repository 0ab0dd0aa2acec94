"""Who protects the pcp lists, by kernel version and build (kernel.md 8.1).

A pcp hit under a held ``raw_spinlock_t`` (kvfree_rcu's ``krcp->lock``) reports exactly what
that kernel would: nothing on 5.8 mainline, the -rt patchset's sleeping ``pa_lock`` on 5.8-rt,
"Invalid wait context" for 5.14's ``pagesets.lock`` local_lock with PROVE_RAW_LOCK_NESTING (a
sleeping lock on RT), and nothing on 6.0+ where ``pcp->lock`` is only ever *tried* on these
paths (lockdep skips a trylock's wait context; ``rt_spin_trylock()`` never sleeps).
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from simtools import cfg, mm_kernel, on_cpu

from rcukit.config import KernelConfig
from rcukit.kernel import Kernel
from rcukit.locking.locks import LockKind
from rcukit.locking.splat import Splat
from rcukit.mm.gfp import GFP, GFP_NOWAIT
from rcukit.mm.page_alloc import (
    PCP_LOCK_LOCAL_LOCK,
    PCP_LOCK_RT_PATCH,
    PCP_LOCK_SPINLOCK,
)
from rcukit.mm.versions import MM_5_8, MM_5_14, MM_6_0, MM_6_2, MM_6_5, MmVersion
from rcukit.rcu import profiles
from rcukit.sched.sim import Task

NOWAIT = int(GFP_NOWAIT | GFP.NOWARN)
#: What PREEMPT_RT reports for a sleeping lock taken in atomic context (kernel.md 8.3: the
#: checker's wording is another module's; either title names the same violation).
RT_SLEEPING = {"scheduling_while_atomic", "sleeping_in_atomic"}


@pytest.fixture
def mm_config(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A config whose profile carries ``version`` (a test profile for versions no kvfree
    profile stands for yet, e.g. 5.14's local_lock)."""

    def make(version: MmVersion, *, rt: bool = False, prove: bool = False) -> KernelConfig:
        name = f"test-mm-{version.kernel}"
        base = profiles.PROFILES["v6.1" if version.kernel.startswith("6") else "v5.13"]
        monkeypatch.setitem(profiles.PROFILES, name, attrs.evolve(base, name=name, mm=version))
        c = cfg(**{"kvfree.profile": name})
        return attrs.evolve(c, preempt_rt=rt, prove_raw_lock_nesting=prove)

    return make


async def pcp_op_under_raw(k: Kernel, op: str) -> tuple[bool, list[Splat], int]:
    """Stock CPU 0's pcp list outside any lock, then do one pcp hit (``op`` "alloc") or one
    pcp free ("free") under a held raw_spinlock_t; the new splats and zone-lock count."""
    mm = k.mm

    async def work(task: Task) -> tuple[bool, list[Splat], int]:
        stock = await mm.alloc_pages(task, NOWAIT)
        assert stock is not None and mm.pcps[0].count > 0
        raw = k.new_lock("test_raw", LockKind.RAW_SPINLOCK)
        n0, zl0 = len(k.locks.splats), k.vmstat["zone_lock_acquisitions"]
        k.locks.acquire(task, raw, "test_caller", irqsave=True)
        if op == "alloc":
            ok = await mm.alloc_pages(task, NOWAIT) is not None
        else:
            await mm.free_pages(task, stock)
            ok = True
        k.locks.release(task, raw)
        assert not task.held_locks and not task.irqs_disabled and not task.preempt_count
        return ok, k.locks.splats[n0:], k.vmstat["zone_lock_acquisitions"] - zl0

    return await on_cpu(k, work)


CASES = [
    # (version, rt, prove) -> (pcp lock name or None, splat kinds expected for that lock)
    (MM_5_8, False, False, None, set()),
    (MM_5_8, False, True, None, set()),
    (MM_5_8, True, False, PCP_LOCK_RT_PATCH, RT_SLEEPING),
    (MM_5_14, False, False, PCP_LOCK_LOCAL_LOCK, set()),
    (MM_5_14, False, True, PCP_LOCK_LOCAL_LOCK, {"invalid_wait_context"}),
    (MM_5_14, True, False, PCP_LOCK_LOCAL_LOCK, RT_SLEEPING),
    (MM_6_0, False, False, PCP_LOCK_SPINLOCK, set()),
    (MM_6_0, False, True, PCP_LOCK_SPINLOCK, set()),
    (MM_6_0, True, False, PCP_LOCK_SPINLOCK, set()),
    (MM_6_5, True, False, PCP_LOCK_SPINLOCK, set()),
]


@pytest.mark.parametrize("op", ["alloc", "free"])
@pytest.mark.parametrize(("version", "rt", "prove", "lock_name", "kinds"), CASES)
async def test_pcp_access_under_a_raw_lock_reports_what_the_kernel_does(
    autojump_clock: Any,
    mm_config: Any,
    op: str,
    version: MmVersion,
    rt: bool,
    prove: bool,
    lock_name: str | None,
    kinds: set[str],
) -> None:
    """A pcp hit (``rmqueue_pcplist``) and a pcp free (``free_unref_page``) under a raw lock.

    Kernel facts (kernel.md 8.1): 5.8 ``mm/page_alloc.c`` ``rmqueue_pcplist()`` and
    ``free_unref_page()`` use ``local_irq_save()`` only; the 5.x -rt patchset ("mm: page_alloc:
    rt-friendly per-cpu pages") takes ``local_lock_irqsave(&pa_lock.l)``, a ``spinlock_t`` on
    PREEMPT_RT; 5.14 takes ``local_lock_irqsave(&pagesets.lock)``, lockdep wait type
    LD_WAIT_CONFIG (``INIT_LOCAL_LOCK``), so with PROVE_RAW_LOCK_NESTING it is "Invalid wait
    context" under a raw lock; 6.0 ("mm/page_alloc: replace local_lock with normal spinlock")
    takes ``pcp_spin_trylock()`` on both paths, and lockdep's ``check_wait_context()``
    returns early for a trylock while ``rt_spin_trylock()`` (``kernel/locking/spinlock_rt.c``)
    never calls might-sleep: no report on any build.
    """
    async with mm_kernel(mm_config(version, rt=rt, prove=prove)) as k:
        pa = k.mm.page_alloc
        if lock_name is None:
            assert pa.pcp_locks is None
        else:
            assert pa.pcp_locks is not None
            assert {lk.name for lk in pa.pcp_locks} == {lock_name}
            assert len({id(lk) for lk in pa.pcp_locks}) == k.config.nr_cpus  # per CPU
        ok, splats, zone_locks = await pcp_op_under_raw(k, op)
        assert ok and zone_locks == 0  # a pcp hit / a free below high: no zone->lock
        ip = "rmqueue_pcplist" if op == "alloc" else "free_unref_page"
        got = {s.kind for s in splats}
        if kinds is RT_SLEEPING:  # one report, in RT's words
            assert len(splats) == 1 and got <= RT_SLEEPING
            assert splats[0].lock_name in (lock_name, "")
        else:
            assert got == kinds
        for s in splats:
            assert s.ip == ip
            assert s.held[0].name == "test_raw"
        if "invalid_wait_context" in kinds:
            [s] = splats
            assert (s.lock_name, s.lock_outer, s.lock_inner) == (lock_name, 3, 3)


@pytest.mark.parametrize(
    ("version", "rt", "irqs_off"),
    [
        (MM_5_14, False, True),
        (MM_6_0, False, True),
        (MM_6_0, True, False),
        (MM_6_2, False, False),
        (MM_6_5, False, False),
    ],
)
async def test_the_pcp_lock_disables_irqs_until_6_2(
    autojump_clock: Any, mm_config: Any, version: MmVersion, rt: bool, irqs_off: bool
) -> None:
    """IRQs while ``rmqueue_pcplist()`` / ``free_unref_page()`` hold the pcp protection.

    Kernel facts (mm/page_alloc.c): 5.14 ``local_lock_irqsave(&pagesets.lock)``; 6.0's "mm/
    page_alloc: replace local_lock with normal spinlock" ``pcp_spin_trylock_irqsave()`` ("in
    place as a preparation step before converting pcp locking to spin_trylock to protect
    against IRQ reentry"), which 6.1 keeps; 6.2's "mm/page_alloc: leave IRQs enabled for
    per-cpu page allocations" ``pcp_spin_trylock()``, IRQs left on (6.5 the same). On
    PREEMPT_RT a ``spinlock_t``'s ``_irqsave`` leaves IRQs on (an rtmutex).
    """
    async with mm_kernel(mm_config(version, rt=rt)) as k:
        pa = k.mm.page_alloc

        async def work(task: Task) -> bool:
            lock = pa.pcp_lock(task, "rmqueue_pcplist", True)
            assert lock is not None
            off = task.irqs_disabled > 0
            k.locks.release(task, lock)
            assert not task.irqs_disabled and not task.held_locks
            return off

        assert await on_cpu(k, work) is irqs_off


async def test_local_lock_is_a_lockdep_map_on_non_rt_and_a_spinlock_on_rt(
    autojump_clock: Any, mm_config: Any
) -> None:
    """5.14+ ``local_lock_t``: on !RT a lockdep map (LD_WAIT_CONFIG) over ``local_irq_save()``,
    which disables IRQs but leaves the preempt count alone; on PREEMPT_RT a per-CPU
    ``spinlock_t`` (``include/linux/local_lock_internal.h``, 5.14)."""
    async with mm_kernel(mm_config(MM_5_14)) as k:
        lk = k.mm.page_alloc.pcp_locks[0]  # type: ignore[index]
        assert lk.kind is LockKind.LOCAL_LOCK

        async def work(task: Task) -> tuple[int, int]:
            k.locks.acquire(task, lk, "rmqueue_pcplist", irqsave=True)
            state = (task.irqs_disabled, task.preempt_count)
            k.locks.release(task, lk)
            return state

        assert await on_cpu(k, work) == (1, 0)
    async with mm_kernel(mm_config(MM_5_14, rt=True)) as k:
        assert {lk.kind for lk in k.mm.page_alloc.pcp_locks or []} == {LockKind.SPINLOCK}


async def test_refill_holds_the_pcp_lock_around_zone_lock(
    autojump_clock: Any, mm_config: Any
) -> None:
    """``rmqueue_bulk()`` runs inside the pcp protection: the zone lock's report lists the pcp
    lock as held, as syzbot's 6.12 reports show ``&pcp->lock`` (taken by ``spin_trylock`` in
    ``rmqueue_pcplist``) held under ``&zone->lock`` (kernel.md 8.1; 6.x ``mm/page_alloc.c``)."""
    async with mm_kernel(mm_config(MM_6_0, prove=True)) as k:
        mm = k.mm

        async def work(task: Task) -> list[Splat]:
            raw = k.new_lock("test_raw", LockKind.RAW_SPINLOCK)
            k.locks.acquire(task, raw, "test_caller", irqsave=True)
            assert await mm.alloc_pages(task, NOWAIT) is not None  # empty list: refill
            k.locks.release(task, raw)
            return list(k.locks.splats)

        [s] = await on_cpu(k, work)
        assert (s.kind, s.lock_name) == ("invalid_wait_context", "&zone->lock")
        assert s.ip == "rmqueue_bulk"
        assert [h.name for h in s.held] == ["test_raw", PCP_LOCK_SPINLOCK]


async def test_pcp_trylock_busy_falls_back_to_the_buddy_lists(
    autojump_clock: Any, mm_config: Any
) -> None:
    """6.0+: when ``pcp_spin_trylock()`` fails, ``rmqueue()`` goes to ``rmqueue_buddy()``
    (``spin_lock_irqsave(&zone->lock)``) and ``free_unref_page()`` to ``free_one_page()``
    (6.x ``mm/page_alloc.c``). The busy case here is re-entry on the same CPU."""
    async with mm_kernel(mm_config(MM_6_0)) as k:
        mm = k.mm
        pa = mm.page_alloc

        async def work(task: Task) -> tuple[int, int, int]:
            stock = await mm.alloc_pages(task, NOWAIT)
            assert stock is not None
            count = mm.pcps[0].count
            lk = pa.pcp_locks[0]  # type: ignore[index]
            k.locks.acquire(task, lk, "test_holder")
            zl = k.vmstat["zone_lock_acquisitions"]
            pfn = await mm.alloc_pages(task, NOWAIT)
            assert pfn is not None and mm.pcps[0].count == count  # not from the pcp list
            await mm.free_pages(task, pfn)
            assert mm.pcps[0].count == count  # not onto it either
            k.locks.release(task, lk)
            return k.vmstat["zone_lock_acquisitions"] - zl, k.vmstat["pcp_trylock_fail"], count

        zone_locks, fails, _ = await on_cpu(k, work)
        assert (zone_locks, fails) == (2, 2)
        assert not k.locks.splats
        mm.check()


async def test_alloc_pages_nolock_fails_only_when_pcp_and_zone_locks_are_busy(
    autojump_clock: Any, mm_config: Any
) -> None:
    """``alloc_pages_nolock()`` (6.15, kernel.md 2.4): ``pcp_spin_trylock()`` first; if it
    fails, ``rmqueue_buddy()`` tries ``spin_trylock_irqsave(&zone->lock)`` and returns NULL
    under ALLOC_TRYLOCK when that fails too. No report either way."""
    async with mm_kernel(mm_config(MM_6_5, prove=True)) as k:
        mm = k.mm
        pa = mm.page_alloc

        async def work(task: Task) -> tuple[bool, bool]:
            assert await mm.alloc_pages(task, NOWAIT) is not None  # stock the pcp list
            lk = pa.pcp_locks[0]  # type: ignore[index]
            k.locks.acquire(task, lk, "test_holder")
            from_buddy = await mm.alloc_pages_nolock(task) is not None
            k.locks.acquire(task, mm.zone_lock, "test_holder")
            none = await mm.alloc_pages_nolock(task) is None
            k.locks.release(task, mm.zone_lock)
            k.locks.release(task, lk)
            return from_buddy, none

        assert await on_cpu(k, work) == (True, True)
        assert k.vmstat["pgalloc_fail_nolock"] == 1
        assert not k.locks.splats


@pytest.mark.parametrize("version", [MM_5_14, MM_6_0])
async def test_drain_takes_the_pcp_lock(
    autojump_clock: Any, mm_config: Any, version: MmVersion
) -> None:
    """``drain_pages_zone()`` takes the pcp protection too: the local_lock before 6.0
    (5.14 ``local_lock_irqsave(&pagesets.lock)``), ``spin_lock(&pcp->lock)`` from 6.0."""
    async with mm_kernel(mm_config(version, prove=True)) as k:
        mm = k.mm

        async def work(task: Task) -> int:
            assert await mm.alloc_pages(task, NOWAIT) is not None
            lk = mm.page_alloc.pcp_locks[0]  # type: ignore[index]
            before = lk.acquisitions
            assert await mm.drain_local_pages(task) > 0
            return lk.acquisitions - before

        assert await on_cpu(k, work) == 1
        mm.check()


async def test_irq_only_pcp_hits_stay_lock_free_and_cheap(autojump_clock: Any) -> None:
    """5.8 mainline !RT: ``rmqueue_pcplist()`` is ``local_irq_save()`` only, so a hit takes
    no lock at all and costs only ``pcp_alloc_ns`` (5.8 ``mm/page_alloc.c``)."""
    async with mm_kernel(cfg()) as k:
        mm = k.mm
        assert k.config.mm_version == MM_5_8 and mm.page_alloc.pcp_locks is None

        async def work(task: Task) -> int:
            assert await mm.alloc_pages(task, NOWAIT) is not None
            t0 = task.now_ns
            assert await mm.alloc_pages(task, NOWAIT) is not None
            return task.now_ns - t0

        assert await on_cpu(k, work) == k.config.cost.pcp_alloc_ns
