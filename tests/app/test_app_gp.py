"""Grace periods on the real clock: sharing, the polled API, cancellation, wrap, speed."""

from __future__ import annotations

import anyio
import pytest
import trio
from apptools import hold_reader

from rcukit.app import open_domain
from rcukit.errors import RcuArgumentError, RcuClosedError
from rcukit.rcu.gpcore import RCU_GP_SEQ_INIT
from rcukit.rcu.gpseq import RCU_GET_STATE_COMPLETED

pytestmark = pytest.mark.anyio



async def test_concurrent_synchronize_callers_share_grace_periods() -> None:
    async with open_domain() as rcu, anyio.create_task_group() as n:
        release = await hold_reader(rcu, n)
        before = rcu.statistics()
        finished = 0

        async def sync() -> None:
            nonlocal finished
            await rcu.synchronize_rcu()
            finished += 1

        async with anyio.create_task_group() as callers:
            for _ in range(50):
                callers.start_soon(sync)
            await anyio.wait_all_tasks_blocked()
            mid = rcu.statistics()
            assert finished == 0 and mid.gp_in_progress
            release.set()
        after = rcu.statistics()
        assert finished == 50
        assert after.sync_waits - before.sync_waits == 50
        # One caller asked for the GP; the other 49 rode on it.
        assert after.sync_shared - before.sync_shared == 49
        assert after.gps_completed - before.gps_completed == 1


@pytest.mark.parametrize("anyio_backend", ["trio"])  # counts passes with a Trio instrument
async def test_synchronize_with_no_readers_takes_a_few_scheduler_passes() -> None:
    class Passes(trio.abc.Instrument):
        def __init__(self) -> None:
            self.n = 0

        def after_io_wait(self, timeout: float) -> None:
            self.n += 1

    async with open_domain() as rcu:
        await rcu.synchronize_rcu()  # warm up
        passes = Passes()
        trio.lowlevel.add_instrument(passes)
        try:
            await rcu.synchronize_rcu()
        finally:
            trio.lowlevel.remove_instrument(passes)
        assert passes.n <= 3


async def test_polled_api() -> None:
    async with open_domain() as rcu:
        cookie = rcu.get_state_synchronize_rcu()
        await anyio.wait_all_tasks_blocked()
        assert not rcu.poll_state_synchronize_rcu(cookie)
        assert not rcu.statistics().gp_in_progress  # get_state does not start a GP
        gps = rcu.statistics().gps_completed
        cookie2 = rcu.start_poll_synchronize_rcu()
        assert cookie2 == cookie
        await anyio.wait_all_tasks_blocked()
        assert rcu.poll_state_synchronize_rcu(cookie)  # start_poll made a GP happen
        assert rcu.statistics().gps_completed == gps + 1
        await rcu.cond_synchronize_rcu(cookie)  # already done: no GP
        assert rcu.statistics().gps_completed == gps + 1
        late = rcu.get_state_synchronize_rcu()
        await rcu.cond_synchronize_rcu(late)  # not done: waits (and asks) for one
        assert rcu.poll_state_synchronize_rcu(late)
        assert rcu.statistics().gps_completed == gps + 2
        done = rcu.get_completed_synchronize_rcu()
        assert done == RCU_GET_STATE_COMPLETED and rcu.poll_state_synchronize_rcu(done)
        with pytest.raises(RcuArgumentError, match="cookie"):
            rcu.poll_state_synchronize_rcu("x")  # type: ignore[arg-type]
        with pytest.raises(RcuArgumentError):
            await rcu.cond_synchronize_rcu(True)


async def test_cookie_taken_during_a_gp_needs_the_next_one() -> None:
    async with open_domain() as rcu, anyio.create_task_group() as n:
        release = await hold_reader(rcu, n)
        first = rcu.start_poll_synchronize_rcu()
        await anyio.wait_all_tasks_blocked()
        assert rcu.statistics().gp_in_progress
        second = rcu.start_poll_synchronize_rcu()  # the running GP may predate our update
        assert second != first
        release.set()
        await rcu.cond_synchronize_rcu(first)
        await rcu.cond_synchronize_rcu(second)
        assert rcu.poll_state_synchronize_rcu(second)


async def test_cancelled_synchronize_leaves_the_domain_consistent() -> None:
    async with open_domain() as rcu, anyio.create_task_group() as n:
        release = await hold_reader(rcu, n)
        with anyio.move_on_after(0.01) as cs:
            await rcu.synchronize_rcu()
        assert cs.cancelled_caught
        release.set()
        with anyio.fail_after(5):
            await rcu.synchronize_rcu()
            await rcu.synchronize_rcu()
        s = rcu.statistics()
        assert s.readers == 0 and not s.gp_in_progress
        assert rcu._gp.state._events == {}


async def test_gp_seq_wraps_cleanly_from_the_kernels_initial_value() -> None:
    async with open_domain(initial_gp_seq=RCU_GP_SEQ_INIT) as rcu:
        cookies = []
        for _ in range(320):  # the kernel's start value wraps after 300 GPs
            cookies.append(rcu.start_poll_synchronize_rcu())
            await rcu.synchronize_rcu()
        assert rcu.statistics().gp_seq < RCU_GP_SEQ_INIT  # wrapped past 2**64
        assert all(rcu.poll_state_synchronize_rcu(c) for c in cookies)
        fresh = rcu.get_state_synchronize_rcu()
        assert not rcu.poll_state_synchronize_rcu(fresh)


async def test_grace_period_apis_after_close() -> None:
    async with open_domain() as rcu:
        cookie = rcu.start_poll_synchronize_rcu()
    assert rcu.closed and rcu.poll_state_synchronize_rcu(cookie)  # pure queries still work
    for call in (rcu.synchronize_rcu, rcu.rcu_barrier, rcu.kvfree_rcu_barrier):
        with pytest.raises(RcuClosedError, match="closed"):
            await call()
    with pytest.raises(RcuClosedError):
        rcu.start_poll_synchronize_rcu()
    with pytest.raises(RcuClosedError):
        rcu.register_qsbr()
