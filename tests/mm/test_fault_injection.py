"""fail_page_alloc-style fault injection: probability, interval, times, min-order, GFP filter."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from simtools import cfg, marker_line, mm_kernel, on_cpu, pa

from rcukit.config import KernelConfig, MemoryConfig
from rcukit.errors import ConfigError
from rcukit.kernel import Kernel
from rcukit.mm.fault import FaultAttr, Quarantine, RawSite, caller_site, raw_site
from rcukit.mm.gfp import GFP, GFP_ATOMIC, GFP_KERNEL, GFP_NOWAIT
from rcukit.rcu.kvfree.variants import BlockSources
from rcukit.sched.sim import Task

NOWAIT = int(GFP_NOWAIT | GFP.NOWARN)
KERNEL = int(GFP_KERNEL)
ATOMIC = int(GFP_ATOMIC | GFP.NOWARN)


async def attempts(k: Kernel, gfps: list[int]) -> list[bool]:
    """Allocate once per mask (freeing again); True where the allocation succeeded."""

    async def work(task: Task) -> list[bool]:
        out = []
        for gfp in gfps:
            pfn = await pa(k).alloc_pages(task, gfp)
            out.append(pfn is not None)
            if pfn is not None:
                await pa(k).free_pages(task, pfn)
        return out

    return await on_cpu(k, work)


def fcfg(**mm: Any) -> KernelConfig:
    """A two-CPU config with these ``mm.`` fault-injection settings."""
    return cfg(**{f"mm.{k}": v for k, v in mm.items()})


async def test_probability_one_fails_every_eligible_and_zero_none(autojump_clock: Any) -> None:
    async with mm_kernel(fcfg(fail_page_alloc_probability=1.0)) as k:
        assert await attempts(k, [NOWAIT, KERNEL, ATOMIC] * 5) == [False] * 15
        assert k.vmstat["fail_page_alloc"] == 15
        assert k.vmstat["pgalloc_fail"] == 15
        assert pa(k).failures_by_gfp["GFP_KERNEL"] == 5
        assert k.vmstat["pcp_refill"] == 0  # failed before touching anything
        assert not pa(k).warnings  # an injected failure is not a warn_alloc
    async with mm_kernel(fcfg(fail_page_alloc_probability=0.0)) as k:
        assert await attempts(k, [NOWAIT, KERNEL, ATOMIC] * 5) == [True] * 15
        assert k.vmstat["fail_page_alloc"] == 0


async def test_nofail_and_nolock_are_never_injected(autojump_clock: Any) -> None:
    async with mm_kernel(fcfg(fail_page_alloc_probability=1.0)) as k:
        assert await attempts(k, [KERNEL | int(GFP.NOFAIL)]) == [True]

        async def nolock(task: Task) -> int | None:
            return await pa(k).alloc_pages_nolock(task)

        assert await on_cpu(k, nolock) is not None
        assert k.vmstat["fail_page_alloc"] == 0


async def test_interval_and_times(autojump_clock: Any) -> None:
    async with mm_kernel(fcfg(fail_page_alloc_probability=1.0, fail_page_alloc_interval=3)) as k:
        got = await attempts(k, [NOWAIT] * 9)
        assert got == [True, True, False] * 3
    async with mm_kernel(fcfg(fail_page_alloc_probability=1.0, fail_page_alloc_times=2)) as k:
        assert await attempts(k, [NOWAIT] * 5) == [False, False, True, True, True]
        assert pa(k).fail_page_alloc.times == 0
    c = fcfg(fail_page_alloc_probability=1.0, fail_page_alloc_interval=2, fail_page_alloc_times=2)
    async with mm_kernel(c) as k:
        assert await attempts(k, [NOWAIT] * 8) == [True, False, True, False] + [True] * 4


async def test_gfp_filter_min_order_and_ignore_reclaim(autojump_clock: Any) -> None:
    # Only masks containing __GFP_NOWARN|__GFP_KSWAPD_RECLAIM (perf short names) are eligible.
    async with mm_kernel(
        fcfg(fail_page_alloc_probability=1.0, fail_page_alloc_gfp_filter="NWR|KR")
    ) as k:
        got = await attempts(k, [NOWAIT, KERNEL, ATOMIC, int(GFP.NOWARN)])
        assert got == [False, True, False, True]
        assert pa(k).fail_page_alloc.require == int(GFP.NOWARN | GFP.KSWAPD_RECLAIM)
    async with mm_kernel(
        fcfg(fail_page_alloc_probability=1.0, fail_page_alloc_ignore_gfp_reclaim=True)
    ) as k:
        assert await attempts(k, [NOWAIT, KERNEL]) == [False, True]
    async with mm_kernel(fcfg(fail_page_alloc_probability=1.0, fail_page_alloc_min_order=1)) as k:

        async def work(task: Task) -> tuple[bool, bool]:
            small = await pa(k).alloc_pages(task, NOWAIT, 0)
            big = await pa(k).alloc_pages(task, NOWAIT, 1)
            return small is not None, big is not None

        assert await on_cpu(k, work) == (True, False)


async def test_fast_try_variant_is_targetable(autojump_clock: Any) -> None:
    async with mm_kernel(
        fcfg(fail_page_alloc_probability=1.0, fail_page_alloc_gfp_filter="__GFP_FAST_TRY")
    ) as k:
        mm = pa(k)

        async def work(task: Task) -> tuple[int | None, int | None]:
            await mm.alloc_pages(task, KERNEL)  # stock the pcp list
            return (
                await BlockSources().lookup("nowait").get_page(task, mm),
                await BlockSources().lookup("fast-try").get_page(task, mm),
            )

        nowait, fast = await on_cpu(k, work)
        assert nowait is not None and fast is None
        assert mm.failures_by_gfp == {"GFP_NOWAIT|__GFP_NOWARN|__GFP_FAST_TRY": 1}


async def test_partial_probability_is_seeded(autojump_clock: Any) -> None:
    runs = []
    for seed in (1, 1, 2):
        c = fcfg(fail_page_alloc_probability=0.5).replace(seed=seed)
        async with mm_kernel(c) as k:
            runs.append(await attempts(k, [NOWAIT] * 40))
    assert runs[0] == runs[1] != runs[2]
    assert 5 < runs[0].count(False) < 35


def test_bad_fault_config_is_rejected() -> None:
    with pytest.raises(ConfigError, match="fail_page_alloc_gfp_filter = 'NOPE'"):
        MemoryConfig(fail_page_alloc_gfp_filter="NOPE")
    with pytest.raises(ConfigError, match="contradictory"):
        MemoryConfig(fail_page_alloc_gfp_filter="__GFP_NOFAIL|__GFP_NORETRY")
    with pytest.raises(ConfigError, match="fail_page_alloc_probability"):
        MemoryConfig(fail_page_alloc_probability=1.5)
    with pytest.raises(ConfigError, match="fail_page_alloc_interval"):
        MemoryConfig(fail_page_alloc_interval=0)
    toml = '[mm]\nfail_page_alloc_probability = 1.0\nfail_page_alloc_gfp_filter = "FT"\n'
    assert KernelConfig.from_toml_text(toml).mm.fail_page_alloc_gfp_filter == "FT"


@given(
    interval=st.integers(1, 5),
    times=st.integers(-1, 6),
    n=st.integers(0, 40),
)
def test_fault_attr_counts(interval: int, times: int, n: int) -> None:
    attr = FaultAttr(probability=1.0, interval=interval, times=times, rng=random.Random(0))
    fails = [attr.should_fail(int(GFP_KERNEL)) for _ in range(n)]
    expect = n // interval if times < 0 else min(n // interval, times)
    assert sum(fails) == attr.injected == expect
    assert all(not f for i, f in enumerate(fails) if (i + 1) % interval)


def _site_here(now: int) -> RawSite:
    """raw_site() expects to be called by an allocator function, as this one stands in for."""
    return raw_site(None, now)


def test_quarantine_is_bounded_and_fifo() -> None:
    site = _site_here(1)
    other = _site_here(2)  # ANOTHER-SITE
    q = Quarantine(3)
    for ptr in range(1, 6):
        q.put(ptr, site, None, 8)
    assert len(q) == 3 and q.get(1) is None and q.get(5) is not None
    q.put(3, site, other, 16)  # re-freed: the newer record wins
    q.put(6, site, None, 8)
    q.put(7, site, None, 8)
    entry = q.get(3)
    assert entry is not None and entry.size == 16
    assert entry.alloc_site is not None and entry.alloc_site.time_ns == 2
    where = f"test_fault_injection.py:{marker_line(__file__, 'ANOTHER-SITE')} (cpu -1"
    assert str(entry.alloc_site).startswith(where)
    assert q.get(4) is None and q.get(5) is None
    assert len(q) == 3
    q.put_many([10, 11, 12, 13], [8, 8, 8, 8], site, None)  # only the last 3 can survive
    assert q.get(10) is None and [q.get(p) is not None for p in (11, 12, 13)] == [True] * 3


def test_caller_site_without_task() -> None:
    site = caller_site(None, 1234)
    assert site.file.endswith("test_fault_injection.py") and site.cpu == -1 and site.time_ns == 1234
    assert str(site).startswith("test_fault_injection.py:")
