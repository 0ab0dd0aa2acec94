"""Bounded memory: the pending cap, errors naming it, and the waiting variants."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest
from apptools import SpyPool, hold_reader, pending
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rcukit.app import open_domain
from rcukit.errors import RcuBackpressureError

pytestmark = pytest.mark.anyio



async def test_call_rcu_raises_at_the_cap_and_names_it() -> None:
    async with open_domain(max_pending=10) as rcu:
        for _ in range(10):
            rcu.call_rcu(lambda: None)
        with pytest.raises(RcuBackpressureError, match="max_pending=10") as info:
            rcu.call_rcu(lambda: None)
        assert "call_rcu_wait" in str(info.value)
        assert rcu.statistics().backpressure_events == 1
        await rcu.rcu_barrier()
        rcu.call_rcu(lambda: None)  # room again


async def test_kvfree_and_call_rcu_share_one_cap() -> None:
    async with open_domain(max_pending=600) as rcu:
        rcu.call_rcu(lambda: None)  # reserves a chunk of room for callbacks
        for _ in range(599):
            rcu.kvfree_rcu(object())  # the idle reservation is taken back
        assert pending(rcu) == 600
        with pytest.raises(RcuBackpressureError, match="kvfree_rcu_wait"):
            rcu.kvfree_rcu(object())
        with pytest.raises(RcuBackpressureError):
            rcu.call_rcu(lambda: None)
        await rcu.kvfree_rcu_barrier()
        await rcu.rcu_barrier()
        assert pending(rcu) == 0


async def test_call_rcu_wait_waits_for_room() -> None:
    async with open_domain(max_pending=50) as rcu, anyio.create_task_group() as n:
        ran = 0

        def cb() -> None:
            nonlocal ran
            ran += 1

        release = await hold_reader(rcu, n)
        queued = 0

        async def producer() -> None:
            nonlocal queued
            for _ in range(80):
                await rcu.call_rcu_wait(cb)
                queued += 1

        n.start_soon(producer)
        await anyio.wait_all_tasks_blocked()
        assert queued == 50 and pending(rcu) == 50  # blocked at the cap, not raising
        assert rcu.statistics().backpressure_events >= 1
        release.set()
        with anyio.fail_after(5):
            while queued < 80:
                await anyio.sleep(0.001)
                assert pending(rcu) <= 50
        await rcu.rcu_barrier()
        assert ran == 80


async def test_kvfree_rcu_wait_at_the_cap_frees_inline_after_a_gp() -> None:
    spy = SpyPool()
    async with open_domain(max_pending=5, release=spy, drain_delay=60.0) as rcu:
        for _ in range(5):
            rcu.kvfree_rcu(object())
        gps = rcu.statistics().gps_completed
        extra = object()
        await rcu.kvfree_rcu_wait(extra)  # the head-less path: synchronize, then free
        assert spy.freed[-1] is extra
        s = rcu.statistics()
        assert s.kvfree_freed_inline == 1 and s.gps_completed > gps
        assert s.kvfree_pending <= 5
        assert rcu.kvfree_rcu_mightsleep == rcu.kvfree_rcu_wait  # the kernel's name


async def test_a_cancelled_kvfree_rcu_wait_does_not_lose_its_object() -> None:
    spy = SpyPool()
    async with open_domain(max_pending=2, release=spy) as rcu, anyio.create_task_group() as n:
        release = await hold_reader(rcu, n)
        rcu.kvfree_rcu(object())
        rcu.kvfree_rcu(object())
        victim = object()
        with anyio.move_on_after(0.01):
            await rcu.kvfree_rcu_wait(victim)  # waits for a GP the reader holds up
        release.set()
        await rcu.kvfree_rcu_barrier()
        assert any(o is victim for o in spy.freed)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cap=st.integers(1, 40),
    ops=st.lists(st.sampled_from(["kv", "kv_wait", "cb", "cb_wait", "yield"]), max_size=120),
)
async def test_pending_never_exceeds_the_cap(cap: int, ops: list[str]) -> None:
    spy = SpyPool()
    ran = 0

    def cb() -> None:
        nonlocal ran
        ran += 1

    queued_kv = queued_cb = 0
    async with open_domain(max_pending=cap, release=spy, drain_delay=0.001) as rcu:
        for op in ops:
            try:
                if op == "kv":
                    rcu.kvfree_rcu(object())
                    queued_kv += 1
                elif op == "kv_wait":
                    await rcu.kvfree_rcu_wait(object())
                    queued_kv += 1
                elif op == "cb":
                    rcu.call_rcu(cb)
                    queued_cb += 1
                elif op == "cb_wait":
                    await rcu.call_rcu_wait(cb)
                    queued_cb += 1
                else:
                    await anyio.lowlevel.checkpoint()
            except RcuBackpressureError:
                assert op in ("kv", "cb") and pending(rcu) == cap
            assert pending(rcu) <= cap
    assert len(spy.freed) == queued_kv and ran == queued_cb  # nothing lost at exit
