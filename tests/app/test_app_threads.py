"""Worker threads on both event loops: every public call from a thread works or raises
``RcuUsageError`` before changing anything, and none can wedge the domain (issue 16 item 2).

The threads are the loop's own kind (``trio.to_thread.run_sync`` / ``asyncio.to_thread``), and
every test runs under ``fail_after`` so that a wedge fails instead of hanging CI. liburcu's
model (peers.md §1): readers in any registered thread; ``call_rcu`` hands the callback to a
worker that runs it after a grace period; ``synchronize_rcu`` blocks the calling thread.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from apptools import in_worker_thread, on_both_loops, run_on, wait_blocked

from rcukit.app import ObjectPool, RcuPointer, open_domain
from rcukit.errors import (
    MemoryDebugError,
    RcuArgumentError,
    RcuBackpressureError,
    RcuClosedError,
    RcuUsageError,
)


@on_both_loops
@pytest.mark.parametrize("debug", [False, True])
def test_a_thread_reader_leaving_while_a_gp_waits_wakes_the_gp(backend: str, debug: bool) -> None:
    """A worker thread's read section holds a grace period, and leaving it ends the GP (it used
    to leave the GP task asleep forever: every later GP hung)."""

    async def main() -> None:
        with anyio.fail_after(10):
            async with open_domain(debug=debug) as rcu, anyio.create_task_group() as tg:
                inside = threading.Event()
                leave = threading.Event()
                ended = anyio.Event()

                def reader() -> None:
                    with rcu.read_lock():
                        inside.set()
                        leave.wait(10)

                async def sync() -> None:
                    await rcu.synchronize_rcu()
                    ended.set()

                async def run_reader() -> None:
                    await in_worker_thread(reader)

                tg.start_soon(run_reader)
                await anyio.to_thread.run_sync(inside.wait, 10)
                tg.start_soon(sync)
                await wait_blocked()
                assert not ended.is_set() and rcu.statistics().readers == 1
                leave.set()
                await ended.wait()
                await rcu.synchronize_rcu()  # and later GPs still work

    run_on(backend, main)


@on_both_loops
def test_many_thread_readers_and_loop_updates_never_see_a_released_value(backend: str) -> None:
    """The read-side guarantee across threads: a value a thread reader holds is never released
    while it holds it (the GIL makes each guard's check-and-count atomic)."""

    class Box:
        __slots__ = ("alive",)

        def __init__(self) -> None:
            self.alive = True

    def kill(b: Box) -> None:
        b.alive = False

    async def main() -> None:
        with anyio.fail_after(30):
            async with open_domain() as rcu:
                ptr: RcuPointer[Box] = RcuPointer(rcu, Box())
                stop = threading.Event()
                bad: list[int] = []

                def reader() -> None:
                    while not stop.is_set():
                        with rcu.read_lock():
                            b = ptr.dereference()
                            for _ in range(50):
                                if not b.alive:
                                    bad.append(1)
                        time.sleep(0)  # let the loop's thread have the GIL now and then

                async with anyio.create_task_group() as tg:
                    for _ in range(3):
                        tg.start_soon(in_worker_thread, reader)
                    for i in range(100):
                        old = ptr.assign(Box())
                        if i % 2:
                            rcu.kvfree_rcu(old, kill)
                        else:
                            rcu.call_rcu(kill, old)
                        await rcu.synchronize_rcu()
                    stop.set()
                assert not bad

    run_on(backend, main)


@on_both_loops
def test_call_rcu_from_a_thread_runs_and_barrier_and_exit_finish(backend: str) -> None:
    """``call_rcu()`` in a worker thread used to raise after queuing and leave the callback task
    flagged awake: ``rcu_barrier()`` and the exit hung. Now it runs on the loop."""
    ran: list[tuple[str, int]] = []

    async def main() -> None:
        with anyio.fail_after(10):
            async with open_domain() as rcu:

                def worker() -> None:
                    for i in range(3):
                        rcu.call_rcu(ran.append, (threading.current_thread().name, i))

                await in_worker_thread(worker)
                await rcu.rcu_barrier()
                assert [i for _, i in ran] == [0, 1, 2]
                assert all(name != threading.current_thread().name for name, _ in ran)
                await in_worker_thread(lambda: rcu.call_rcu(ran.append, ("late", 3)))

    run_on(backend, main)
    assert ran[-1] == ("late", 3)


@on_both_loops
def test_refused_thread_updates_change_nothing(backend: str) -> None:
    """What fails in a thread fails before anything is queued: a bad callback, the pending cap,
    a closed domain."""

    async def main() -> None:
        with anyio.fail_after(10):
            async with open_domain(max_pending=1) as rcu:

                def bad() -> None:
                    with pytest.raises(RcuArgumentError):
                        rcu.call_rcu(42)  # type: ignore[arg-type]
                    rcu.call_rcu(print)  # takes the only slot...
                    with pytest.raises(RcuBackpressureError):
                        rcu.kvfree_rcu(object())  # ...so this one is refused

                async with rcu_blocked(rcu):
                    await in_worker_thread(bad)
                    s = rcu.statistics()
                    assert s.callbacks_pending == 1 and s.kvfree_pending == 0
            assert rcu.statistics().callbacks_pending == 0

            def late() -> None:
                with pytest.raises(RcuClosedError):
                    rcu.call_rcu(print)
                with pytest.raises(RcuClosedError):
                    rcu.kvfree_rcu(object())

            await in_worker_thread(late)

    run_on(backend, main)


class rcu_blocked:
    """Hold a reader in a task so nothing queued can be released meanwhile."""

    def __init__(self, rcu: Any) -> None:
        self.rcu = rcu
        self.leave = anyio.Event()

    async def __aenter__(self) -> None:
        self.tg = anyio.create_task_group()
        await self.tg.__aenter__()

        async def reader() -> None:
            with self.rcu.read_lock():
                await self.leave.wait()

        self.tg.start_soon(reader)
        await wait_blocked()

    async def __aexit__(self, *exc: object) -> None:
        self.leave.set()
        await self.tg.__aexit__(None, None, None)


@on_both_loops
def test_kvfree_rcu_from_a_thread_releases_each_object_once(backend: str) -> None:
    """``kvfree_rcu()`` from a thread used to raise after queuing (a retry released twice)."""
    pool: ObjectPool[object] = ObjectPool(object)

    async def main() -> None:
        with anyio.fail_after(10):
            async with open_domain() as rcu:
                objs = [pool.alloc() for _ in range(1200)]
                q_box: list[Any] = []

                def worker() -> None:
                    for o in objs[:600]:
                        rcu.kvfree_rcu(o, pool)
                    q = rcu.kvfree_queue("thread")
                    q_box.append(q)
                    for o in objs[600:]:
                        q.kvfree_rcu(o, pool)

                await in_worker_thread(worker)
                await rcu.kvfree_rcu_barrier()
                s = pool.statistics()
                assert s.in_use == 0 and s.cached == 1200 and s.frees == 1200
                assert rcu.statistics().kvfree_queues == 2

    run_on(backend, main)


@on_both_loops
def test_thread_kvfree_rcu_racing_the_loops_fast_path_releases_each_object_once(
    backend: str,
) -> None:
    """The kernel inserts into the krcp of the CPU it runs on, under that krcp's lock
    (``add_ptr_to_bulk_krc_lock()`` begins with ``*krcp = krc_this_cpu_lock(flags)``;
    kernel/rcu/tree.c, v6.3). Here only the loop thread's channel map is ever filled, so a
    worker thread inserting into the same queue and release target while the loop thread fills
    its grant on the fast path (thread switches forced every microsecond, grace periods moving
    ``gp_seq`` under both) never appends to the loop's block itself: its calls run on the loop,
    every object is released exactly once and the accounts come out even."""
    n_loop, n_thread = 20_000, 1_500
    pool: ObjectPool[object] = ObjectPool(object)

    async def main() -> None:
        with anyio.fail_after(60):
            async with open_domain() as rcu:
                q = rcu.kvfree_queue("shared")
                loop_objs = [pool.alloc() for _ in range(n_loop)]
                thread_objs = [pool.alloc() for _ in range(n_thread)]
                started = threading.Event()
                thread_maps: list[int] = []

                def worker() -> None:
                    started.set()
                    for o in thread_objs:
                        q.kvfree_rcu(o, pool)
                    # the fast path's lookup never found (or made) a channel in this thread
                    thread_maps.append(len(vars(q._thread_recs)))

                switch = sys.getswitchinterval()
                sys.setswitchinterval(1e-6)
                try:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(in_worker_thread, worker)
                        await anyio.to_thread.run_sync(started.wait, 10)
                        for i, o in enumerate(loop_objs):
                            q.kvfree_rcu(o, pool)
                            if i % 2_000 == 1_999:
                                await rcu.synchronize_rcu()  # gp_seq moves: grants withdrawn
                            elif i % 50 == 49:
                                await anyio.lowlevel.checkpoint()  # worker calls run
                finally:
                    sys.setswitchinterval(switch)
                await rcu.kvfree_rcu_barrier()
                assert thread_maps == [0]
                s = pool.statistics()
                assert s.in_use == 0 and s.frees == s.cached == n_loop + n_thread
                st = rcu.statistics()
                assert st.kvfree_pending == 0 and st.kvfree_freed == n_loop + n_thread

    run_on(backend, main)


@on_both_loops
def test_blocking_portal_calls_from_a_thread(backend: str) -> None:
    """``rcu.from_thread``: synchronize_rcu, cond_synchronize_rcu, both barriers and the two
    waiting enqueues block the thread, not the loop; the polled API and statistics work too."""
    freed: list[object] = []

    async def main() -> None:
        with anyio.fail_after(10):
            async with open_domain() as rcu:

                def worker() -> int:
                    ft = rcu.from_thread
                    cookie = rcu.get_state_synchronize_rcu()
                    ft.synchronize_rcu()
                    assert rcu.poll_state_synchronize_rcu(cookie)
                    c2 = rcu.start_poll_synchronize_rcu()
                    ft.cond_synchronize_rcu(c2)
                    assert rcu.poll_state_synchronize_rcu(c2)
                    rcu.call_rcu(freed.append, "cb")
                    ft.rcu_barrier()
                    assert freed == ["cb"]
                    ft.call_rcu_wait(freed.append, "cb2")
                    ft.kvfree_rcu_wait("obj", freed.append)
                    ft.rcu_barrier()
                    ft.kvfree_rcu_barrier()
                    return rcu.statistics().gps_completed

                gps = await in_worker_thread(worker)
                assert gps >= 2 and sorted(map(str, freed)) == ["cb", "cb2", "obj"]
                with pytest.raises(RcuUsageError, match="own thread"):
                    rcu.from_thread.synchronize_rcu()

    run_on(backend, main)


@on_both_loops
def test_async_apis_awaited_on_another_loop_are_refused(backend: str) -> None:
    """A thread that runs the domain's coroutines on a loop of its own gets RcuUsageError
    before anything is queued (it must use ``rcu.from_thread``)."""

    async def main() -> None:
        with anyio.fail_after(10):
            async with open_domain() as rcu:

                def worker() -> None:
                    for make in (
                        rcu.synchronize_rcu,
                        rcu.rcu_barrier,
                        rcu.kvfree_rcu_barrier,
                        lambda: rcu.call_rcu_wait(print),
                        lambda: rcu.kvfree_rcu_wait(object()),
                    ):
                        with pytest.raises(RcuUsageError, match="from_thread"):
                            asyncio.run(make())  # type: ignore[arg-type]
                    with pytest.raises(RcuUsageError, match="worker thread"):
                        rcu.register_qsbr()

                await in_worker_thread(worker)
                s = rcu.statistics()
                assert s.callbacks_pending == 0 and s.kvfree_pending == 0

    run_on(backend, main)


@on_both_loops
def test_pointer_and_token_read_sections_from_a_thread(backend: str) -> None:
    """``assign``/``dereference`` and the SRCU-style token pair work in a thread (debug mode
    checks the thread's own section, as it does a task's)."""

    async def main() -> None:
        with anyio.fail_after(10):
            async with open_domain(debug=True) as rcu:
                ptr = RcuPointer(rcu, 1)

                def worker() -> int:
                    tok = rcu.rcu_read_lock()
                    v = ptr.dereference()
                    rcu.rcu_read_unlock(tok)
                    with pytest.raises(RcuUsageError, match="outside an RCU read section"):
                        ptr.dereference()
                    old = ptr.assign(2)
                    rcu.call_rcu(print, "retired", old)
                    return v

                assert await in_worker_thread(worker) == 1
                with rcu.read_lock():
                    assert ptr.dereference() == 2

    run_on(backend, main)


@on_both_loops
@pytest.mark.parametrize("debug", [False, True])
def test_a_blocking_call_inside_the_threads_own_read_section_raises(
    backend: str, debug: bool
) -> None:
    """``rcu.from_thread.synchronize_rcu()`` (or a barrier) inside the thread's own section
    would wedge the domain; it raises instead, in every mode, and works outside."""

    class Holder:
        def __init__(self, rcu: Any) -> None:
            self.rcu = rcu

    async def main() -> None:
        with anyio.fail_after(10):
            async with open_domain(debug=debug) as rcu:
                h = Holder(rcu)

                def nested() -> None:
                    rcu.from_thread.rcu_barrier()

                def worker() -> None:
                    with rcu.read_lock():
                        with pytest.raises(RcuUsageError, match="own RCU read section"):
                            rcu.from_thread.synchronize_rcu()
                        with pytest.raises(RcuUsageError, match="own RCU read section"):
                            nested()
                    with h.rcu.read_lock(), pytest.raises(RcuUsageError):
                        rcu.from_thread.kvfree_rcu_barrier()
                    rcu.from_thread.synchronize_rcu()  # outside: fine
                    other = threading.Lock()
                    with other:
                        rcu.from_thread.synchronize_rcu()  # another `with`: fine

                await in_worker_thread(worker)

    run_on(backend, main)


@on_both_loops
def test_a_thread_that_races_a_phase_flip_waits_for_its_phase(backend: str) -> None:
    """A worker thread whose guard's phase flipped between ``read_lock()`` and ``__enter__``
    (possible only across threads) asks for a grace period and enters once its phase is
    current again, instead of raising; in the loop's thread the same is a guard kept for
    later, and raises."""

    async def main() -> None:
        with anyio.fail_after(10):
            async with open_domain() as rcu:
                got = threading.Event()
                flipped = threading.Event()

                def worker() -> int:
                    g = rcu.read_lock()
                    got.set()
                    flipped.wait(10)
                    with g:
                        return rcu.statistics().readers

                async with anyio.create_task_group() as tg:
                    out: list[int] = []

                    async def run() -> None:
                        out.append(await in_worker_thread(worker))

                    tg.start_soon(run)
                    await anyio.to_thread.run_sync(got.wait, 10)
                    gps = rcu.statistics().gps_completed
                    await rcu.synchronize_rcu()  # one flip: the thread's guard is now stale
                    flipped.set()
                assert out == [1]
                assert rcu.statistics().gps_completed >= gps + 2  # the thread asked for one

    run_on(backend, main)


@on_both_loops
def test_debug_double_kvfree_from_a_thread_names_the_threads_call_sites(backend: str) -> None:
    """Debug mode's double-kvfree check sees a worker thread's calls with their own sites."""

    async def main() -> None:
        with anyio.fail_after(10):
            async with open_domain(debug=True) as rcu:
                obj = object()

                def worker() -> str:
                    rcu.kvfree_rcu(obj)
                    with pytest.raises(MemoryDebugError) as ei:
                        rcu.kvfree_rcu(obj)
                    return str(ei.value)

                msg = await in_worker_thread(worker)
                assert msg.count("test_app_threads.py") == 2 and "in worker" in msg

    run_on(backend, main)


@on_both_loops
def test_qsbr_worker_calls_from_another_thread_are_refused(backend: str) -> None:
    """A QSBR worker is a task of the loop (liburcu: a registered thread reports for itself);
    reports from another thread raise before changing the GP's accounting."""

    async def main() -> None:
        with anyio.fail_after(10):
            async with open_domain() as rcu:
                with rcu.register_qsbr() as w:
                    await rcu.synchronize_rcu()  # the worker is quiescent while it waits
                    rcu.start_poll_synchronize_rcu()  # a GP that owes us a report
                    await wait_blocked()

                    def worker() -> None:
                        for call in (w.quiescent_state, w.offline, w.online, w.unregister):
                            with pytest.raises(RcuUsageError, match=r"worker thread|own task"):
                                call()
                        assert rcu.get_completed_synchronize_rcu() is not None

                    await in_worker_thread(worker)
                    assert w.is_online and rcu.statistics().gp_in_progress
                    w.quiescent_state()
                    await rcu.synchronize_rcu()

    run_on(backend, main)
