"""Memory-aware reclamation: the application drain default, the byte cap, ``flush()`` and
``synchronize_rcu_expedited()`` (issue 16, item 4), on both event loops."""

from __future__ import annotations

import anyio
import attrs
import pytest
from apptools import SpyPool, hold_reader, in_worker_thread

from rcukit.app import APP_DRAIN_DELAY, RcuDomain, open_domain
from rcukit.errors import (
    ConfigError,
    RcuArgumentError,
    RcuBackpressureError,
    RcuUsageError,
    RcuValueError,
)

pytestmark = pytest.mark.anyio

MB = 1 << 20


@attrs.define(eq=False)
class Config:
    """A config version that stands for ``nbytes`` of memory (without allocating them)."""

    version: int
    nbytes: int = 4 * MB


async def _reload_at_50hz(rcu: RcuDomain, seconds: float, sized: bool) -> tuple[int, int]:
    """Reload a 4 MB config every 20 ms; return the peaks of pending kvfree_rcu bytes (as the
    domain weighed them) and of pending versions."""
    peak = versions = 0
    n = round(seconds * 50)
    for v in range(1, n + 1):
        await anyio.sleep(0.02)
        old = Config(v)
        if sized:
            rcu.kvfree_rcu(old, size=old.nbytes)
        else:
            rcu.kvfree_rcu(old)
        st = rcu.statistics()
        peak = max(peak, st.kvfree_pending_bytes)
        versions = max(versions, st.kvfree_pending)
    return peak, versions


async def test_a_4mb_config_at_50hz_stays_a_few_versions_by_default() -> None:
    """The kernel's monitor drains every ``KFREE_DRAIN_JIFFIES`` = 5*HZ from v6.1 (commit
    51824b780b71, kernel/rcu/tree.c ``schedule_delayed_monitor_work``) and kicks only at
    ``KVFREE_BULK_MAX_ENTR`` objects: with that timing a 4 MB config reloaded at 50 Hz keeps
    hundreds of MB pending. The application default drains every 20 ms, so what is pending
    stays within a few versions; ``drain_delay=None`` still selects the kernel's timing."""
    assert APP_DRAIN_DELAY == 0.02
    async with open_domain() as rcu:  # every default, nothing weighed
        _, versions = await _reload_at_50hz(rcu, 0.6, sized=True)
    assert 1 <= versions <= 4  # at most 16 MB waiting, never the 508 versions of a kick
    async with open_domain(weight=lambda c: c.nbytes) as rcu:  # the same, weighed
        peak, _ = await _reload_at_50hz(rcu, 0.6, sized=False)
        await rcu.kvfree_rcu_barrier()
        assert rcu.statistics().kvfree_pending_bytes == 0
    assert 4 * MB <= peak <= 16 * MB
    async with open_domain(max_pending_bytes=1 << 40, drain_delay=None, profile="v6.3") as rcu:
        kernel_peak, versions = await _reload_at_50hz(rcu, 0.6, sized=True)
    # the kernel's 5 s drain: every version of the run is still pending at its end
    assert (kernel_peak, versions) == (30 * 4 * MB, 30)


async def test_the_byte_cap_raises_like_the_object_cap() -> None:
    """Backpressure by weight: ``kvfree_rcu`` refuses at ``max_pending_bytes`` before anything
    is queued (and kicks the monitor); ``kvfree_rcu_wait`` does what the kernel's head-less
    path does without a block (``kvfree_call_rcu`` -> ``synchronize_rcu()`` then free inline,
    mm/slab_common.c v6.14): it waits a GP and releases the object itself."""
    spy = SpyPool()
    async with open_domain(max_pending_bytes=10 * MB, release=spy, drain_delay=60.0) as rcu:
        rcu.kvfree_rcu(Config(1), size=4 * MB)
        rcu.kvfree_rcu(Config(2), size=4 * MB)
        assert rcu.statistics().kvfree_pending_bytes == 8 * MB
        with pytest.raises(RcuBackpressureError, match="max_pending_bytes=10485760") as info:
            rcu.kvfree_rcu(Config(3), size=4 * MB)
        assert "kvfree_rcu_wait" in str(info.value)
        st = rcu.statistics()
        assert (st.kvfree_pending, st.kvfree_pending_bytes, st.backpressure_events) == (
            2,
            8 * MB,
            1,
        )
        rcu.kvfree_rcu(Config(4), size=2 * MB)  # what still fits goes in
        # the refusal kicked the monitor despite the 60 s drain: the batch goes out now
        with anyio.fail_after(5):
            await rcu.kvfree_rcu_wait(Config(5), size=4 * MB)
        assert rcu.statistics().kvfree_pending_bytes <= 10 * MB
        await rcu.kvfree_rcu_barrier()
        st = rcu.statistics()
        assert (st.kvfree_pending_bytes, st.kvfree_freed) == (0, 4)
        assert {c.version for c in spy.freed} == {1, 2, 4, 5}


async def test_kvfree_rcu_wait_at_the_byte_cap_waits_then_releases_inline() -> None:
    spy = SpyPool()
    async with (
        open_domain(max_pending_bytes=4 * MB, release=spy, drain_delay=60.0) as rcu,
        anyio.create_task_group() as tg,
    ):
        rcu.kvfree_rcu(Config(1), size=4 * MB)
        release = await hold_reader(rcu, tg)
        done = anyio.Event()

        async def waiter() -> None:
            await rcu.kvfree_rcu_wait(Config(2), size=4 * MB)
            done.set()

        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert not done.is_set()  # a grace period is held by the reader
        release.set()
        with anyio.fail_after(5):
            await done.wait()
        st = rcu.statistics()
        assert st.kvfree_freed_inline == 1 and st.kvfree_pending_bytes <= 4 * MB


async def test_a_flood_under_the_byte_cap_never_exceeds_it() -> None:
    async with open_domain(max_pending_bytes=64 * MB, weight=lambda c: c.nbytes) as rcu:
        peak = 0
        for v in range(200):
            await rcu.kvfree_rcu_wait(Config(v))
            peak = max(peak, rcu.statistics().kvfree_pending_bytes)
        await rcu.kvfree_rcu_barrier()
        st = rcu.statistics()
    assert peak <= 64 * MB
    assert st.kvfree_freed == 200 and st.kvfree_pending_bytes == 0


async def test_weights_are_checked_at_the_call() -> None:
    async with open_domain(max_pending_bytes=MB) as rcu:
        with pytest.raises(RcuArgumentError, match="no size= and open_domain"):
            rcu.kvfree_rcu(Config(1))
        # a negative count is the right type with a wrong value: ValueError, not TypeError
        # (tests/app/test_app_kvfree_size.py covers every bad size on every entry point)
        with pytest.raises(RcuValueError, match="size=-1; expected an integer >= 0"):
            rcu.kvfree_rcu(Config(1), size=-1)
        assert rcu.statistics().kvfree_pending == 0
    async with open_domain(weight=lambda c: "big") as rcu:
        with pytest.raises(RcuArgumentError, match="weight"):
            rcu.kvfree_rcu(Config(1))
    with pytest.raises(ConfigError, match="max_pending_bytes"):
        async with open_domain(max_pending_bytes=0):
            pass


async def test_without_byte_accounting_size_is_checked_and_nothing_is_weighed() -> None:
    async with open_domain() as rcu:
        rcu.kvfree_rcu(Config(1), size=4 * MB)
        st = rcu.statistics()
        assert (st.kvfree_pending, st.kvfree_pending_bytes, st.max_pending_bytes) == (1, 0, None)


async def test_flush_starts_reclaim_now() -> None:
    """``kfree_rcu_shrink_scan`` runs ``kfree_rcu_monitor()`` on every CPU at once instead of
    waiting for the drain timer (kernel/rcu/tree.c v6.1; mm/slab_common.c v6.14): flush() does
    the same for every queue, and gets pending callbacks their grace period."""
    spy = SpyPool()
    async with open_domain(release=spy, drain_delay=60.0) as rcu:
        q = rcu.kvfree_queue("worker")
        rcu.kvfree_rcu(object())
        q.kvfree_rcu(object())
        ran: list[int] = []
        rcu.call_rcu(ran.append, 1)
        await anyio.sleep(0.05)
        assert spy.freed == [] and rcu.statistics().kvfree_batches == 0
        t0 = anyio.current_time()
        rcu.flush()
        with anyio.fail_after(5):
            while len(spy.freed) < 2:
                await spy.event.wait()
                spy.event = anyio.Event()
        assert anyio.current_time() - t0 < 1.0  # not the 60 s drain
        # the call_rcu GP already covers their blocks' snapshots: the monitors free them early
        # (kvfree_rcu_drain_ready, v6.3) or batch them; either way at once
        assert rcu.statistics().kvfree_freed == 2
        await rcu.rcu_barrier()
        assert ran == [1]


async def test_synchronize_rcu_expedited_waits_for_readers_and_drains() -> None:
    """``synchronize_rcu_expedited()`` (kernel/rcu/tree_exp.h) guarantees what
    ``synchronize_rcu()`` does — every reader that began before it has left — and here also
    starts the reclaim of what was retired before it."""
    spy = SpyPool()
    async with (
        open_domain(release=spy, drain_delay=60.0) as rcu,
        anyio.create_task_group() as tg,
    ):
        rcu.kvfree_rcu(object())
        release = await hold_reader(rcu, tg)
        done = anyio.Event()

        async def updater() -> None:
            await rcu.synchronize_rcu_expedited()
            done.set()

        tg.start_soon(updater)
        await anyio.wait_all_tasks_blocked()
        assert not done.is_set()
        release.set()
        with anyio.fail_after(5):
            await done.wait()
            await spy.event.wait()  # the flushed batch rides on the next GP, not a 60 s drain
        with rcu.read_lock(), pytest.raises(RcuUsageError, match="deadlock"):
            await rcu.synchronize_rcu_expedited()


async def test_the_memory_calls_from_a_worker_thread() -> None:
    """flush(), kvfree_rcu(obj, size=) and the expedited GP from a worker thread: run on the
    loop (a refusal at the byte cap changes nothing), or block the thread, never the loop."""
    spy = SpyPool()
    async with open_domain(max_pending_bytes=8 * MB, release=spy, drain_delay=60.0) as rcu:

        def work() -> str:
            rcu.kvfree_rcu(Config(1), size=6 * MB)
            try:
                rcu.kvfree_rcu(Config(2), size=6 * MB)
            except RcuBackpressureError:
                refused = "refused"
            # nothing queued (the refusal's kick may already have released the first one)
            assert rcu.statistics().kvfree_queued == 1
            rcu.flush()
            rcu.from_thread.synchronize_rcu_expedited()
            rcu.from_thread.kvfree_rcu_barrier()
            return refused

        assert await in_worker_thread(work) == "refused"
        assert [c.version for c in spy.freed] == [1]
        st = rcu.statistics()
        assert (st.kvfree_pending_bytes, st.backpressure_events) == (0, 1)
