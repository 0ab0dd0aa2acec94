"""Faults the system must survive with nothing lost (issue: reliability).

Simulated kernel: page-allocation failure from 0 to 100 percent, CPU hotplug in the middle of a
kvfree_rcu/call_rcu flood, and memory pressure (the kfree_rcu shrinker). Application domain:
cancellation (readers, synchronize_rcu, barriers, the whole domain), exceptions raised by
callbacks and release functions, and the pending cap under pressure.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from apptools import hold_reader
from simtools import MS, freed

from rcukit.app import ObjectPool, open_domain
from rcukit.errors import RcuLeakError
from rcukit.kernel import Kernel
from rcukit.mm.gfp import GFP_KERNEL
from rcukit.mm.vmalloc import VMALLOC_START
from rcukit.rcu.segcblist import RcuHead
from rcukit.sched.sim import Task
from rcukit.sim import KernelConfig, boot

_GFP_KERNEL = int(GFP_KERNEL)


async def _on(k: Kernel, cpu: int, fn: Any) -> Any:
    t = k.spawn(fn, cpu, getattr(fn, "__name__", "fn"))
    await k.run()
    return t.result


async def _barriers(task: Task) -> None:
    k: Kernel = task.data["k"]
    await k.kvfree.kvfree_rcu_barrier(task)
    await k.rcu.rcu_barrier(task)


class _Obj(RcuHead):
    __slots__ = ("cookie", "ptr", "runs")

    def __init__(self, ptr: int, cookie: int) -> None:
        super().__init__(None)
        self.ptr = ptr
        self.cookie = cookie
        self.runs = 0


# ------------------------------------------------------------------- page allocation failure


@pytest.mark.parametrize("profile", ["v5.9", "v6.3"])
@pytest.mark.parametrize("rate", [0.0, 0.3, 1.0])
async def test_page_allocation_failure_at_any_rate_loses_nothing(
    autojump_clock: Any, rate: float, profile: str
) -> None:
    cfg = KernelConfig().replace(**{
        "mm.fail_page_alloc_probability": rate,
        "mm.fail_page_alloc_times": 0,  # armed after the objects exist
        "kvfree.profile": profile,
        "kvfree.rcu_min_cached_objs": 0,  # no boot-time cache: every block is an allocation
        "kvfree.debug_objects": True,
    })
    async with boot(cfg) as k:
        ptrs: dict[int, list[int]] = {}

        async def alloc(task: Task) -> None:
            mine = [await k.mm.kmalloc(task, 64, _GFP_KERNEL) for _ in range(120)]
            mine += [await k.mm.vmalloc(task, 8192) for _ in range(6)]
            assert all(mine)
            ptrs[task.cpu.id] = mine

        await k.run_on_cpus(alloc)
        nr_slab = k.mm.slab.nr_objects
        k.mm.fail_page_alloc.times = -1

        async def flood(task: Task) -> None:
            for i, p in enumerate(ptrs[task.cpu.id]):
                if i % 2:
                    await k.kvfree.kvfree_rcu(task, p)
                else:
                    await k.kvfree.kvfree_rcu(task, p, p + 16)
                if i % 16 == 0:
                    await task.cond_resched()

        await k.run_on_cpus(flood)
        t = k.spawn(_barriers, 0, "barrier")
        t.data["k"] = k
        await k.run()
        everything = [p for mine in ptrs.values() for p in mine]
        st = k.kvfree.statistics()
        assert all(freed(k, p) for p in everything)
        assert st.objects_freed == st.calls == len(everything) and st.pending == 0
        assert st.gp_violations == 0
        assert k.mm.slab.nr_objects == nr_slab - sum(1 for p in everything if p < VMALLOC_START)
        fallbacks = st.fallback_rcu_head + st.fallback_synchronize
        if rate == 1.0:
            assert fallbacks == len(everything), "every kvfree_rcu must fall back"
            assert st.blocks_in_use == 0 and k.mm.fail_page_alloc.injected > 0
        elif rate == 0.0:
            assert k.mm.fail_page_alloc.injected == 0
            if profile == "v5.9":  # allocates under the lock; v6.3 waits for its refill worker
                assert fallbacks == 0


# ------------------------------------------------------------------- CPU hotplug


@pytest.mark.parametrize("profile", ["v5.9", "v6.1"])
async def test_an_offlined_cpus_krcp_and_callbacks_are_freed_after_their_gp(
    autojump_clock: Any, profile: str
) -> None:
    cfg = KernelConfig().replace(**{"kvfree.profile": profile, "kvfree.debug_objects": True})
    async with boot(cfg) as k:
        rcu = k.rcu
        kv = k.kvfree
        objs: list[_Obj] = []
        kv_ptrs: list[int] = []
        seen: dict[str, int] = {}

        def cb(task: Task, head: RcuHead) -> Any:
            assert isinstance(head, _Obj)
            head.runs += 1
            assert rcu.poll_state_synchronize_rcu(head.cookie), "callback before its GP"
            return k.mm.kfree(task, head.ptr)

        async def flood(task: Task) -> None:
            for i in range(600):
                p = await k.mm.kmalloc(task, 32, _GFP_KERNEL)
                kv_ptrs.append(p)
                await kv.kvfree_rcu(task, p, None if i % 3 else p + 8)
            for _ in range(150):
                p = await k.mm.kmalloc(task, 32, _GFP_KERNEL)
                o = _Obj(p, rcu.get_state_synchronize_rcu(task))
                objs.append(o)
                rcu.call_rcu(task, o, cb)

        async def admin(task: Task) -> None:
            while len(objs) < 150:
                await task.sleep_ns(MS // 100)
            await task.sync()
            seen["krc"] = kv.krcs[2].krc_count() + sum(
                1 for w in kv.krcs[2].krw if w.busy()
            )
            seen["cbs"] = rcu.rcu_data(2).cblist.n_cbs
            await rcu.cpu_down(task, 2)
            await task.sleep_ns(200 * MS)  # no barrier: the grace periods alone must do it
            await task.sync()
            seen["pending"] = kv.statistics().pending
            seen["ran"] = sum(o.runs for o in objs)
            await rcu.cpu_up(task, 2)

        k.spawn(flood, 2, "flood")
        k.spawn(admin, 0, "admin")
        await k.run()
        assert seen["krc"] > 0 and seen["cbs"] > 0, "the CPU went down with work queued"
        assert seen["pending"] == 0 and seen["ran"] == 150
        assert all(o.runs == 1 for o in objs)
        assert all(freed(k, p) for p in kv_ptrs + [o.ptr for o in objs])
        assert kv.statistics().gp_violations == 0

        async def again(task: Task) -> None:  # the CPU is usable when it comes back
            p = await k.mm.kmalloc(task, 32, _GFP_KERNEL)
            await kv.kvfree_rcu(task, p)
            task.data["k"] = k
            await _barriers(task)
            assert freed(k, p)

        await _on(k, 2, again)


async def test_kvfree_rcu_barrier_waits_for_the_batches_of_an_offline_cpu(
    autojump_clock: Any,
) -> None:
    async with boot() as k:
        kv = k.kvfree
        ptrs: list[int] = []

        async def flood(task: Task) -> None:
            for _ in range(50):
                p = await k.mm.kmalloc(task, 64, _GFP_KERNEL)
                ptrs.append(p)
                await kv.kvfree_rcu(task, p)
            await task.sleep_ns(30 * MS)  # the monitor hands them to a batch in flight

        async def reader(task: Task) -> None:  # keeps the batch's grace period open
            with k.rcu.read_lock(task):
                for _ in range(60):
                    task.charge(MS)
                    await task.sync()

        async def admin(task: Task) -> None:
            await task.sleep_ns(25 * MS)
            await task.sync()
            assert any(w.busy() for w in kv.krcs[1].krw) and not kv.krcs[1].need_offload_krc()
            await k.rcu.cpu_down(task, 1)
            await kv.kvfree_rcu_barrier(task)
            assert all(freed(k, p) for p in ptrs), "the barrier skipped the offline CPU"

        k.spawn(flood, 1, "flood")
        k.spawn(reader, 2, "reader")
        k.spawn(admin, 0, "admin")
        await k.run()


# ------------------------------------------------------------------- memory pressure (sim)


@pytest.mark.parametrize("shrink", [False, True])
async def test_the_shrinker_frees_pending_batches(autojump_clock: Any, shrink: bool) -> None:
    # v6.1 drains every 5 s: without pressure the objects sit in their blocks that long.
    cfg = KernelConfig().replace(**{"kvfree.profile": "v6.1", "kvfree.variant": "page-cache"})
    async with boot(cfg) as k:
        kv = k.kvfree
        ptrs: list[int] = []

        async def flood(task: Task) -> None:
            for _ in range(300):
                p = await k.mm.kmalloc(task, 64, _GFP_KERNEL)
                ptrs.append(p)
                await kv.kvfree_rcu(task, p, p)

        await k.run_on_cpus(flood, [1, 2])
        before = kv.statistics().pending

        async def pressure(task: Task) -> None:
            for _ in range(4 if shrink else 0):  # reclaim passes, SHRINK_BATCH objects each
                await k.mm.kswapd.shrink_slab(task, 1 << 20)
                await task.sleep_ns(MS)
            await task.sleep_ns(100 * MS)

        await _on(k, 0, pressure)
        st = kv.statistics()
        assert before == 600
        if shrink:
            assert st.pending == 0 and all(freed(k, p) for p in ptrs)
        else:
            assert st.pending == 600, "nothing drains before KFREE_DRAIN_JIFFIES"


async def test_app_pending_stays_under_the_cap_under_pressure(autojump_clock: Any) -> None:
    pool: ObjectPool[bytearray] = ObjectPool(lambda: bytearray(8), debug=True)
    peak = 0
    async with open_domain(max_pending=64, release=pool, drain_delay=0.05) as rcu:
        done = trio.Event()

        async def watch() -> None:
            nonlocal peak
            while not done.is_set():
                s = rcu.statistics()
                peak = max(peak, s.kvfree_pending + s.callbacks_pending)
                await trio.sleep(0.0001)

        async def slow_reader() -> None:
            with rcu.read_lock():
                await trio.sleep(0.05)

        async with trio.open_nursery() as n:
            n.start_soon(watch)
            n.start_soon(slow_reader)
            for i in range(500):
                obj = pool.alloc()
                if i % 2:
                    await rcu.kvfree_rcu_wait(obj)
                else:
                    await rcu.call_rcu_wait(pool.free, obj)
                if i % 50 == 0:
                    await trio.sleep(0.001)
            done.set()
        s = rcu.statistics()
        assert s.backpressure_events > 0
    assert 0 < peak <= 64
    assert pool.statistics().in_use == 0


# ------------------------------------------------------------------- cancellation (app)


async def test_cancellation_anywhere_leaves_the_engine_consistent(autojump_clock: Any) -> None:
    pool: ObjectPool[bytearray] = ObjectPool(lambda: bytearray(8), debug=True)
    async with open_domain(release=pool, debug=True) as rcu:
        # A reader cancelled inside its section releases it.
        with trio.move_on_after(0.01) as cs:
            with rcu.read_lock():
                await trio.sleep(10)
        assert cs.cancelled_caught and rcu.statistics().readers == 0
        with trio.fail_after(1):
            await rcu.synchronize_rcu()

        # synchronize_rcu and both barriers cancelled mid-wait (a reader holds the GP).
        ran: list[int] = []
        async with trio.open_nursery() as n:
            release = await hold_reader(rcu, n)
            for i in range(20):
                rcu.call_rcu(ran.append, i)
                rcu.kvfree_rcu(pool.alloc())
            for wait in (rcu.synchronize_rcu, rcu.rcu_barrier, rcu.kvfree_rcu_barrier):
                with trio.move_on_after(0.01) as cs:
                    await wait()
                assert cs.cancelled_caught, wait
            gp = rcu.statistics().gps_completed
            release.set()
        with trio.fail_after(1):
            await rcu.synchronize_rcu()
            await rcu.rcu_barrier()
            await rcu.kvfree_rcu_barrier()
        s = rcu.statistics()
        assert sorted(ran) == list(range(20)) and s.gps_completed > gp
        assert s.callbacks_pending == s.kvfree_pending == 0 and s.errors == 0
        assert pool.statistics().in_use == 0


async def test_a_domain_cancelled_from_outside_frees_every_queued_object(
    autojump_clock: Any,
) -> None:
    pool: ObjectPool[bytearray] = ObjectPool(lambda: bytearray(8), debug=True)
    ran: list[int] = []
    with trio.move_on_after(0.5):
        async with open_domain(release=pool, drain_delay=5.0) as rcu:
            for i in range(300):
                rcu.kvfree_rcu(pool.alloc())
                rcu.call_rcu(ran.append, i)
            await trio.sleep_forever()
    assert pool.statistics().in_use == 0 and len(ran) == 300


async def test_a_cancelled_domain_with_a_stuck_reader_reports_what_it_could_not_free(
    autojump_clock: Any,
) -> None:
    pool: ObjectPool[bytearray] = ObjectPool(lambda: bytearray(8), debug=True)
    errors: list[Exception] = []
    async with trio.open_nursery() as outer:  # the reader lives outside the cancelled scope
        with trio.move_on_after(0.5):
            async with open_domain(
                release=pool, close_timeout=0.1, on_error=errors.append
            ) as rcu:

                async def stuck() -> None:
                    with rcu.read_lock():
                        await trio.sleep_forever()

                outer.start_soon(stuck)
                await trio.testing.wait_all_tasks_blocked()
                for _ in range(40):
                    rcu.kvfree_rcu(pool.alloc())
                await trio.sleep_forever()
        outer.cancel_scope.cancel()
    leak = [e for e in errors if isinstance(e, RcuLeakError)]
    assert len(leak) == 1 and "40 kvfree_rcu objects were not released" in str(leak[0])


# ------------------------------------------------------------------- exceptions in callbacks


async def test_callback_and_release_exceptions_are_counted_and_lose_nothing() -> None:
    pool: ObjectPool[bytearray] = ObjectPool(lambda: bytearray(8), debug=True)
    ran: list[int] = []

    def cb(i: int) -> None:
        ran.append(i)
        if i % 10 == 0:
            raise ValueError(f"callback {i} failed")

    def release(obj: bytearray) -> None:
        fail = obj[0] == 1
        pool.free(obj)  # (poisons obj)
        if fail:
            raise KeyError("release failed")

    with pytest.raises(ExceptionGroup) as info:
        async with open_domain(debug=True) as rcu:
            for i in range(100):
                rcu.call_rcu(cb, i)
                obj = pool.alloc()
                obj[0] = 1 if i % 25 == 0 else 0
                rcu.kvfree_rcu(obj, release=release)
            await rcu.rcu_barrier()
            await rcu.kvfree_rcu_barrier()
            assert rcu.statistics().errors == 14
            # The machinery still works after the errors.
            rcu.call_rcu(ran.append, 1000)
            await rcu.rcu_barrier()
    excs = info.value.exceptions
    assert sorted(type(e).__name__ for e in excs) == ["KeyError"] * 4 + ["ValueError"] * 10
    assert all(e.__traceback__ is not None for e in excs)
    assert all(getattr(e, "__notes__", None) for e in excs)
    assert sorted(ran) == [*range(100), 1000]
    assert pool.statistics().in_use == 0

    handled: list[Exception] = []
    async with open_domain(on_error=handled.append) as rcu:
        for i in range(30):
            rcu.call_rcu(cb, i)
    assert len(handled) == 3  # a handler means nothing is raised at exit
