"""``warn_alloc()``, its ``nopage_rs`` ratelimit and ``show_mem()``/``show_free_areas()`` (5.8).

Kernel facts, from 5.8 ``mm/page_alloc.c`` (``warn_alloc``, ``warn_alloc_show_mem``,
``show_free_areas``; ``nopage_rs`` is ``DEFINE_RATELIMIT_STATE(nopage_rs, 10*HZ, 1)`` from 5.4,
read in 5.10's), ``lib/show_mem.c`` (``show_mem``), ``lib/ratelimit.c`` (``___ratelimit``) and
``include/linux/ratelimit.h`` (``DEFAULT_RATELIMIT_INTERVAL`` 5*HZ, ``DEFAULT_RATELIMIT_BURST``
10, the defaults other ratelimits use); kernel.md 8.5.
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from simtools import cfg, mm_kernel, on_cpu, pa

from rcukit.kernel import Kernel
from rcukit.locking.locks import LockKind
from rcukit.mm.gfp import GFP
from rcukit.mm.show_mem import (
    DEFAULT_RATELIMIT_BURST,
    DEFAULT_RATELIMIT_INTERVAL_HZ,
    DUMP_STACK_NS,
    NOPAGE_RS_BURST,
    NOPAGE_RS_INTERVAL_HZ,
    PRINTK_LINE_NS,
    WARN_ALLOC_LINES,
    RatelimitState,
)
from rcukit.sched.sim import Task

#: Below WMARK_MIN (1024 pages on the default zone): gfp 0 and GFP_NOWAIT both fail.
LOW = {"mm.initial_free_pages": 900}


async def _fail_under_raw_lock(k: Kernel, gfp: int) -> dict[str, Any]:
    """Drain this CPU's pcp lists and ask for a page with ``gfp`` while holding a raw lock."""
    mm = pa(k)

    async def work(task: Task) -> dict[str, Any]:
        await mm.drain_local_pages(task)
        before = (mm.zone.lock.acquisitions, task.now_ns)
        lock = k.new_lock("krc.lock", LockKind.RAW_SPINLOCK)
        k.locks.acquire(task, lock, "kvfree_call_rcu", irqsave=True)
        pfn = await mm.alloc_pages(task, gfp)
        k.locks.release(task, lock)
        return {"pfn": pfn, "zone_locks": mm.zone.lock.acquisitions - before[0],
                "ns": task.now_ns - before[1]}

    return await on_cpu(k, work)


async def test_gfp_zero_failure_runs_show_free_areas_under_zone_lock(autojump_clock: Any) -> None:
    """``__get_free_page(0)`` has no ``__GFP_NOWARN``: its failure prints the warn_alloc
    headline ("mode:%#x(%pGg)" prints 0 as "0()"), ``dump_stack()`` and ``show_mem()``, whose
    ``show_free_areas()`` takes ``spin_lock_irqsave(&zone->lock)``: under a raw lock with
    PROVE_RAW_LOCK_NESTING that is lockdep's invalid wait context, at show_free_areas."""
    async with mm_kernel(cfg(**LOW).with_kernel_config("lockdep")) as k:
        r = await _fail_under_raw_lock(k, 0)
        mm = pa(k)
        assert r["pfn"] is None
        assert r["zone_locks"] == 1  # the allocation itself never got past the watermarks
        assert mm.warnings == ["work/0: page allocation failure: order:0, mode:0(), "
                               "nodemask=(null)"]
        [report] = mm.page_alloc.warn.reports
        assert report[0] == mm.warnings[0]
        assert "Call Trace:" in report and "Mem-Info:" in report
        # "Node 0 Normal: 1*4kB (M) 0*8kB ... = NkB": every order, its migratetypes, the sum.
        free_kb = mm.nr_free_pages() * 4
        assert re.fullmatch(rf"Node 0 Normal: (\d+\*\d+kB( \([UME]+\))? ){{11}}= {free_kb}kB",
                            report[-2])
        assert k.splat_counts()["invalid_wait_context"] == 1
        [splat] = k.locks.splats
        assert (splat.lock_name, splat.ip) == ("&zone->lock", "show_free_areas")
        assert [h.name for h in splat.held] == ["krc.lock"]
        # The printk lines, the unwind and the copy under the zone lock are charged.
        assert r["ns"] >= WARN_ALLOC_LINES * PRINTK_LINE_NS + DUMP_STACK_NS
        assert k.vmstat["warn_alloc"] == k.vmstat["show_mem"] == 1


async def test_gfp_zero_failure_takes_the_sleeping_zone_lock_on_rt(autojump_clock: Any) -> None:
    """On PREEMPT_RT ``zone->lock`` is a sleeping ``spinlock_t``: the failure path's
    ``show_free_areas()`` takes it in atomic context (5.8-rt, kernel.md 8.3/8.5)."""
    async with mm_kernel(cfg(**LOW).with_kernel_config("rt")) as k:
        r = await _fail_under_raw_lock(k, 0)
        assert r["pfn"] is None and r["zone_locks"] == 1
        splats = {kind: n for kind, n in k.splat_counts().items() if n}
        assert len(splats) == 1 and sum(splats.values()) == 1
        assert k.locks.splats[0].lock_name == "&zone->lock"


async def test_nowarn_failure_prints_nothing_and_takes_no_lock(autojump_clock: Any) -> None:
    """``warn_alloc()`` returns at once for ``__GFP_NOWARN`` (before the ratelimit): the
    ``__GFP_NOWARN``-only mask rcukit used to call gfp-zero fails silently and lock-free,
    which the literal gfp 0 does not."""
    async with mm_kernel(cfg(**LOW).with_kernel_config("lockdep")) as k:
        r = await _fail_under_raw_lock(k, int(GFP.NOWARN))
        mm = pa(k)
        assert r["pfn"] is None and r["zone_locks"] == 0
        assert mm.warnings == [] and mm.page_alloc.warn.reports == []
        assert not k.locks.splats
        assert mm.page_alloc.warn.nopage_rs.printed == 0  # the ratelimit was not consulted


async def test_nopage_rs_lets_one_through_per_ten_seconds(autojump_clock: Any) -> None:
    """``nopage_rs`` is ``static DEFINE_RATELIMIT_STATE(nopage_rs, 10*HZ, 1)`` in 5.8's
    ``warn_alloc()`` (mm/page_alloc.c; 5.4's "mm/page_alloc.c: ratelimit allocation failure
    warnings more aggressively" replaced the default 10 per 5*HZ): one report per 10 s; the
    first report after the window says "warn_alloc: N callbacks suppressed" (``___ratelimit``).
    """
    assert (NOPAGE_RS_INTERVAL_HZ, NOPAGE_RS_BURST) == (10, 1)
    async with mm_kernel(cfg(**LOW)) as k:
        mm = pa(k)

        async def work(task: Task) -> None:
            for _ in range(13):
                assert await mm.alloc_pages(task, 0) is None
            # 5 s later, still inside the window: suppressed too
            await task.sleep_ns(5_002_000_000)
            assert await mm.alloc_pages(task, 0) is None
            await task.sleep_ns(5_002_000_000)
            assert await mm.alloc_pages(task, 0) is None

        await on_cpu(k, work)
        warn = mm.page_alloc.warn
        assert len(warn.reports) == 2
        assert warn.suppressed == 13
        assert mm.warnings[-2:] == [
            "warn_alloc: 13 callbacks suppressed",
            "work/0: page allocation failure: order:0, mode:0(), nodemask=(null)",
        ]
        assert k.vmstat["show_mem"] == 2 == mm.zone.lock.acquisitions


@given(st.lists(st.integers(0, 20), min_size=1, max_size=200))
def test_ratelimit_never_allows_more_than_burst_per_window(gaps: list[int]) -> None:
    """``___ratelimit()``: a window opens at a call (``rs->begin``) and the first call more
    than ``interval`` jiffies later opens the next (``time_is_before_jiffies(begin +
    interval)``); within a window at most ``burst`` calls pass, and every refused call is
    reported once as suppressed when the next window opens."""
    hz = 100
    rs = RatelimitState(DEFAULT_RATELIMIT_INTERVAL_HZ * hz, DEFAULT_RATELIMIT_BURST)
    jiffies = 0
    per_window: dict[int, int] = {}
    refused = reported = 0
    for gap in gaps:
        jiffies += gap
        ok, missed = rs.ratelimit(jiffies)
        assert rs.begin is not None and rs.begin <= jiffies <= rs.begin + rs.interval
        reported += missed
        per_window.setdefault(rs.begin, 0)
        if ok:
            per_window[rs.begin] += 1
        else:
            refused += 1
    assert reported + rs.missed == refused
    assert all(n <= DEFAULT_RATELIMIT_BURST for n in per_window.values())
    assert all(n >= 1 for n in per_window.values())  # a new window always lets its first through
