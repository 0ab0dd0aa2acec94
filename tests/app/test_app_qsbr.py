"""QSBR workers: quiescent states, offline/online, and GPs that never scan the worker list."""

from __future__ import annotations

import anyio
import pytest
from apptools import hold_reader, start_sync

from rcukit.app import RcuPointer, open_domain
from rcukit.errors import RcuUsageError

pytestmark = pytest.mark.anyio



async def test_gp_waits_for_each_online_worker_to_report_once() -> None:
    async with open_domain() as rcu, anyio.create_task_group() as n:
        report = [anyio.Event(), anyio.Event()]
        registered = anyio.Event()
        count = 0

        async def worker(i: int) -> None:
            nonlocal count
            with rcu.register_qsbr() as w:
                count += 1
                if count == 2:
                    registered.set()
                await report[i].wait()
                w.quiescent_state()
                w.quiescent_state()  # a second report in the same GP changes nothing
                await anyio.sleep_forever()

        n.start_soon(worker, 0)
        n.start_soon(worker, 1)
        await registered.wait()
        assert rcu.statistics().qsbr_online == 2
        done = await start_sync(rcu, n)
        report[0].set()
        await anyio.wait_all_tasks_blocked()
        assert not done.is_set()  # worker 1 still owes its quiescent state
        report[1].set()
        await done.wait()
        n.cancel_scope.cancel()
    assert rcu.statistics().qsbr_workers == 0  # unregistered on exit


async def test_offline_and_idle_workers_do_not_hold_up_gps() -> None:
    async with open_domain() as rcu, anyio.create_task_group() as n:
        ready = anyio.Event()
        go_online = anyio.Event()

        async def worker() -> None:
            with rcu.register_qsbr() as w:
                with w.extended_qs():
                    assert not w.is_online
                    ready.set()
                    await go_online.wait()
                assert w.is_online
                await anyio.sleep_forever()

        n.start_soon(worker)
        await ready.wait()
        for _ in range(3):
            await rcu.synchronize_rcu()  # an offline worker costs nothing
        go_online.set()
        await anyio.wait_all_tasks_blocked()
        done = await start_sync(rcu, n)
        assert not done.is_set()  # online again: GPs wait for it
        n.cancel_scope.cancel()


async def test_going_offline_mid_gp_counts_as_a_quiescent_state() -> None:
    async with open_domain() as rcu, anyio.create_task_group() as n:
        w_box: list[object] = []
        go = anyio.Event()

        async def worker() -> None:
            w = rcu.register_qsbr()
            w_box.append(w)
            await go.wait()
            w.offline()
            await anyio.sleep_forever()

        n.start_soon(worker)
        await anyio.wait_all_tasks_blocked()
        done = await start_sync(rcu, n)
        assert not done.is_set()
        go.set()
        await done.wait()
        assert rcu.statistics().qsbr_online == 0
        n.cancel_scope.cancel()


async def test_a_worker_that_comes_online_mid_gp_is_not_waited_for() -> None:
    async with open_domain() as rcu, anyio.create_task_group() as n:
        release = await hold_reader(rcu, n)
        done = await start_sync(rcu, n)  # GP now in progress, waiting for the reader

        async def late_worker() -> None:
            rcu.register_qsbr()  # online after the GP started
            await anyio.sleep_forever()

        n.start_soon(late_worker)
        await anyio.wait_all_tasks_blocked()
        release.set()
        await done.wait()
        n.cancel_scope.cancel()


async def test_gp_cost_does_not_grow_with_idle_workers() -> None:
    """A thousand offline workers: GP start/end never walk them (only the owed count)."""
    async with open_domain() as rcu, anyio.create_task_group() as n:
        ready = anyio.Event()
        registered = 0

        async def idle() -> None:
            nonlocal registered
            w = rcu.register_qsbr()
            w.offline()
            registered += 1
            if registered == 1000:
                ready.set()
            await anyio.sleep_forever()

        for _ in range(1000):
            n.start_soon(idle)
        await ready.wait()
        readers = rcu._readers
        before = rcu.statistics().gps_completed
        for _ in range(20):
            await rcu.synchronize_rcu()
            assert readers.qs_owed == 0
        assert rcu.statistics().gps_completed >= before + 20
        assert rcu.statistics().qsbr_workers == 1000 and rcu.statistics().qsbr_online == 0
        n.cancel_scope.cancel()


async def test_synchronize_from_an_online_worker_is_quiescent_not_a_deadlock() -> None:
    async with open_domain() as rcu:
        with rcu.register_qsbr() as w:
            with anyio.fail_after(5):
                await rcu.synchronize_rcu()
                await rcu.kvfree_rcu_barrier()
            assert w.is_online  # back online afterwards, as liburcu does


async def test_qsbr_misuse() -> None:
    async with open_domain(debug=True) as rcu:
        w = rcu.register_qsbr()
        with pytest.raises(RcuUsageError, match="already registered"):
            rcu.register_qsbr()
        ptr = RcuPointer(rcu, 1)
        assert ptr.dereference() == 1  # an online worker counts as a reader
        with rcu.read_lock(), pytest.raises(RcuUsageError, match="inside the read section"):
            w.quiescent_state()
        errors: list[BaseException] = []

        async def other() -> None:
            try:
                w.quiescent_state()
            except RcuUsageError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as n:
            n.start_soon(other)
        assert errors and "its own task" in str(errors[0])
        w.unregister()
        with pytest.raises(RcuUsageError, match="unregistered"):
            w.online()
        with pytest.raises(RcuUsageError, match="outside an RCU read section"):
            ptr.dereference()
