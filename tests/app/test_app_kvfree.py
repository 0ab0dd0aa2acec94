"""kvfree_rcu for Python objects: blocks, the monitor, batches, snapshots, bulk release."""

from __future__ import annotations

import anyio
import pytest
from apptools import SpyPool, hold_reader

from rcukit.app import ObjectPool, open_domain
from rcukit.errors import MemoryDebugError, RcuArgumentError, RcuUsageError

pytestmark = pytest.mark.anyio



@pytest.mark.parametrize(
    ("profile", "page_size", "capacity"),
    [("v6.3", 4096, 508), ("v6.1", 4096, 510), ("v5.9", 4096, 510), ("v6.3", 256, 28)],
)
async def test_block_capacity_follows_the_kernel_formula(
    profile: str, page_size: int, capacity: int
) -> None:
    async with open_domain(profile=profile, page_size=page_size) as rcu:
        assert rcu.block_capacity == capacity


async def test_one_free_bulk_call_per_block() -> None:
    spy = SpyPool()
    async with open_domain(profile="v6.1", release=spy) as rcu:
        objs = [object() for _ in range(2 * 510 + 10)]
        for o in objs:
            rcu.kvfree_rcu(o)
        assert rcu.statistics().blocks_in_use == 3
        await rcu.kvfree_rcu_barrier()
        assert sorted(spy.calls) == [10, 510, 510]
        assert {id(o) for o in spy.freed} == {id(o) for o in objs}
        s = rcu.statistics()
        assert (s.kvfree_queued, s.kvfree_freed, s.kvfree_pending) == (1030, 1030, 0)
        assert s.blocks_in_use == 0 and 0 < s.blocks_cached <= 5  # rcu_min_cached_objs


async def test_released_block_shells_are_reused_within_the_caps_bound() -> None:
    """Beyond the kernel's page cache (``rcu_min_cached_objs``, still what ``blocks_cached``
    reports), released blocks are kept as spare shells and a second burst builds none: the
    page allocator's part (a freed page comes back hot). The spares never exceed the blocks the
    pending cap allows, so a burst cannot make the domain keep more than it could hold."""
    spy = SpyPool()
    blocks = 8  # more than the page cache's 5
    async with open_domain(profile="v6.1", release=spy, max_pending=blocks * 510) as rcu:
        q = rcu.kvfree_queue("burst")
        shells: set[int] = set()
        for burst in range(2):
            for _ in range(blocks * 510 - 1):
                q.kvfree_rcu(object())
            assert q.blocks_in_use() == blocks
            assert (len(q._spare), q.blocks_cached()) == (0, 0)  # every shell in use again
            seen = {id(b) for chan in q._krc.bulk for b in chan}
            if burst:
                assert seen == shells  # no block built anew
            shells = seen
            await rcu.kvfree_rcu_barrier()
            assert q.blocks_in_use() == 0 and q.blocks_cached() == 5
            assert len(q._spare) == blocks - 5
            assert len(q._spare) <= rcu.statistics().max_pending // 510 + 1
        assert len(spy.freed) == 2 * (blocks * 510 - 1)


async def test_rcu_barrier_does_not_cover_kvfree_but_kvfree_rcu_barrier_does() -> None:
    spy = SpyPool()
    # the kernel's timing (drain_delay=None: the v6.3 profile's 5 s), not the app's 20 ms
    async with open_domain(release=spy, drain_delay=None) as rcu:
        rcu.kvfree_rcu(object())
        rcu.call_rcu(lambda: None)
        await rcu.rcu_barrier()
        await rcu.synchronize_rcu()
        assert spy.freed == []  # still in its block: the monitor has not run
        assert rcu.statistics().kvfree_pending == 1
        await rcu.kvfree_rcu_barrier()
        assert len(spy.freed) == 1


async def test_monitor_drains_after_the_drain_delay() -> None:
    spy = SpyPool()
    async with open_domain(release=spy, drain_delay=0.05) as rcu:
        t0 = anyio.current_time()
        rcu.kvfree_rcu(object())
        with anyio.fail_after(5):
            await spy.event.wait()
        assert anyio.current_time() - t0 >= 0.05
        assert rcu.statistics().kvfree_batches == 1


async def test_a_blocks_worth_kicks_the_monitor() -> None:
    spy = SpyPool()
    async with open_domain(release=spy, drain_delay=60.0) as rcu:
        cap = rcu.block_capacity
        for _ in range(cap - 1):
            rcu.kvfree_rcu(object())
        await anyio.wait_all_tasks_blocked()
        assert spy.freed == []  # below a block's worth: waits for the 60 s drain
        rcu.kvfree_rcu(object())  # the kick
        with anyio.fail_after(5):
            await spy.event.wait()
        assert len(spy.freed) == cap and spy.calls == [cap]  # one block, one bulk call


async def test_no_kick_before_v6_1() -> None:
    spy = SpyPool()
    async with open_domain(release=spy, profile="v5.13", drain_delay=60.0) as rcu:
        for _ in range(3 * rcu.block_capacity):
            rcu.kvfree_rcu(object())
        await anyio.sleep(0.02)
        assert spy.freed == []
        await rcu.kvfree_rcu_barrier()
        assert len(spy.freed) == 3 * rcu.block_capacity


@pytest.mark.parametrize("profile", ["v6.1", "v6.3"])
async def test_at_most_two_batches_in_flight(profile: str) -> None:
    spy = SpyPool()
    async with open_domain(release=spy, drain_delay=60.0, page_size=256, profile=profile) as rcu:
        cap = rcu.block_capacity
        async with anyio.create_task_group() as n:
            release = await hold_reader(rcu, n)
            for _ in range(4):
                for _ in range(cap):
                    rcu.kvfree_rcu(object())
                await anyio.wait_all_tasks_blocked()
            s = rcu.statistics()
            assert s.kvfree_batches == 2  # the third and fourth kicks found both krwp busy
            assert s.kvfree_pending == 4 * cap and spy.freed == []
            release.set()
        await rcu.kvfree_rcu_barrier()
        assert len(spy.freed) == 4 * cap
        s = rcu.statistics()
        if profile == "v6.1":
            assert s.kvfree_batches == 3  # the leftover blocks needed a third batch
        else:
            # v6.3: the leftover blocks were stamped during the first GP, so the second GP
            # (batch 2's) covered them and the monitor freed them without a third batch.
            assert s.kvfree_batches == 2 and s.kvfree_freed_early == 2 * cap


@pytest.mark.parametrize(("profile", "early"), [("v6.3", True), ("v6.1", False)])
async def test_blocks_whose_gp_already_passed_are_freed_without_a_new_gp(
    profile: str, early: bool
) -> None:
    spy = SpyPool()
    async with open_domain(release=spy, profile=profile, drain_delay=0.02) as rcu:
        for _ in range(10):
            rcu.kvfree_rcu(object())
        await rcu.synchronize_rcu()
        await rcu.synchronize_rcu()  # the blocks' snapshot GP has completed
        gps = rcu.statistics().gps_completed
        with anyio.fail_after(5):
            await spy.event.wait()
        s = rcu.statistics()
        assert len(spy.freed) == 10
        if early:
            assert s.kvfree_freed_early == 10 and s.kvfree_batches == 0
            assert s.gps_completed == gps  # no new grace period was needed
        else:
            assert s.kvfree_freed_early == 0 and s.kvfree_batches == 1


async def test_objects_queued_during_a_gp_wait_for_the_next_one() -> None:
    """The block stamp is the snapshot of the *last* insert, taken after the GP started."""
    spy = SpyPool()
    async with open_domain(release=spy, drain_delay=0.01) as rcu, anyio.create_task_group() as n:
        r1_go, r2_go = anyio.Event(), anyio.Event()

        async def r1() -> None:
            with rcu.read_lock():
                await r1_go.wait()

        n.start_soon(r1)
        await anyio.wait_all_tasks_blocked()
        rcu.kvfree_rcu(object())  # stamped before GP1: GP1 suffices
        n.start_soon(rcu.synchronize_rcu)
        await anyio.wait_all_tasks_blocked()  # GP1 running, waiting for r1

        async def r2() -> None:
            with rcu.read_lock():  # a reader in the new phase
                await r2_go.wait()

        n.start_soon(r2)
        await anyio.wait_all_tasks_blocked()
        late = object()
        rcu.kvfree_rcu(late)  # r2 may hold it: needs a GP that waits for r2
        r1_go.set()
        await anyio.sleep(0.05)  # GP1 ends; the monitor runs
        assert all(o is not late for o in spy.freed)
        assert rcu.statistics().kvfree_pending >= 1
        r2_go.set()
        await rcu.kvfree_rcu_barrier()
        assert any(o is late for o in spy.freed)


async def test_pooled_objects_return_to_their_pool_in_bulk() -> None:
    pool: ObjectPool[bytearray] = ObjectPool(lambda: bytearray(64))
    async with open_domain(release=pool) as rcu:
        bufs = [pool.alloc() for _ in range(1000)]
        assert pool.statistics().in_use == 1000
        for b in bufs:
            rcu.kvfree_rcu(b)
        await rcu.kvfree_rcu_barrier()
        st = pool.statistics()
        assert st.in_use == 0 and st.cached == 1000
        assert pool.alloc() in bufs  # reused, not new


async def test_release_functions_and_their_errors() -> None:
    closed: list[int] = []

    class Conn:
        def __init__(self, i: int) -> None:
            self.i = i

        def close(self) -> None:
            if self.i == 3:
                raise OSError("close failed")
            closed.append(self.i)

    seen: list[Exception] = []
    async with open_domain(on_error=seen.append) as rcu:
        for i in range(6):
            rcu.kvfree_rcu(Conn(i), release=Conn.close)
        await rcu.kvfree_rcu_barrier()
        assert closed == [0, 1, 2, 4, 5]  # one failure does not lose the rest of the block
        assert rcu.statistics().errors == 1
    assert isinstance(seen[0], OSError)
    assert any("release function" in n for n in seen[0].__notes__)


async def test_release_errors_without_a_handler_are_raised_at_exit() -> None:
    def bad(obj: object) -> None:
        raise KeyError("nope")

    with pytest.RaisesGroup(KeyError, KeyError):
        async with open_domain() as rcu:
            rcu.kvfree_rcu(object(), release=bad)
            rcu.kvfree_rcu(object(), release=bad)


async def test_per_worker_queues_are_covered_by_the_barrier() -> None:
    spy = SpyPool()
    async with open_domain(release=spy) as rcu:
        q1, q2 = rcu.kvfree_queue("w1"), rcu.kvfree_queue()
        q1.kvfree_rcu(object())
        q2.kvfree_rcu(object())
        rcu.kvfree_rcu(object())
        assert rcu.statistics().kvfree_queues == 3
        assert rcu.statistics().blocks_in_use == 3  # each queue has its own block
        await rcu.kvfree_rcu_barrier()
        assert len(spy.freed) == 3 and len(spy.calls) == 3


async def test_bad_release_targets() -> None:
    async with open_domain() as rcu:
        with pytest.raises(RcuArgumentError, match="free_bulk"):
            rcu.kvfree_rcu(object(), release=42)

        class Unhashable:
            __hash__ = None  # type: ignore[assignment]

            def __call__(self, obj: object) -> None:  # pragma: no cover - never called
                pass

        with pytest.raises(RcuArgumentError, match="not hashable"):
            rcu.kvfree_rcu(object(), release=Unhashable())
        with pytest.raises(RcuUsageError, match="distinct release targets"):
            for i in range(300):
                rcu.kvfree_rcu(i, release=lambda o: None)


async def test_debug_catches_double_kvfree_and_kvfree_of_a_freed_object() -> None:
    pool: ObjectPool[bytearray] = ObjectPool(lambda: bytearray(8), debug=True)
    async with open_domain(debug=True, release=pool) as rcu:
        buf = pool.alloc()
        rcu.kvfree_rcu(buf)
        with pytest.raises(MemoryDebugError, match="double kvfree_rcu") as info:
            rcu.kvfree_rcu(buf)
        assert str(info.value).count("test_app_kvfree.py") == 2  # both sites
        other = pool.alloc()
        pool.free(other)
        with pytest.raises(MemoryDebugError, match="already free"):
            rcu.kvfree_rcu(other)
        await rcu.kvfree_rcu_barrier()
        assert pool.is_freed(buf)
        assert "kvfree_rcu() at" in (pool.describe(buf) or "")
        with pytest.raises(MemoryDebugError, match="double free"):
            pool.free(buf)
