"""call_rcu and rcu_barrier; errors raised by callbacks."""

from __future__ import annotations

import functools

import anyio
import pytest
from apptools import hold_reader

from rcukit.app import open_domain
from rcukit.errors import RcuArgumentError

pytestmark = pytest.mark.anyio



async def test_call_rcu_runs_after_a_grace_period_that_covers_every_earlier_reader() -> None:
    async with open_domain() as rcu, anyio.create_task_group() as n:
        release = anyio.Event()
        ran: list[int] = []
        reader_left = False

        async def reader() -> None:
            nonlocal reader_left
            with rcu.read_lock():
                await release.wait()
                reader_left = True

        n.start_soon(reader)
        await anyio.wait_all_tasks_blocked()

        def cb(i: int) -> None:
            assert reader_left  # never before the pre-existing reader left
            ran.append(i)

        for i in range(5):
            rcu.call_rcu(cb, i)
        await anyio.wait_all_tasks_blocked()
        assert ran == [] and rcu.statistics().callbacks_pending == 5
        release.set()
        await rcu.rcu_barrier()
        assert ran == [0, 1, 2, 3, 4]  # in order
        s = rcu.statistics()
        assert (s.callbacks_queued, s.callbacks_invoked, s.callbacks_pending) == (5, 5, 0)


async def test_many_callbacks_are_batched_onto_few_grace_periods() -> None:
    async with open_domain() as rcu:
        hits = 0

        def cb() -> None:
            nonlocal hits
            hits += 1

        before = rcu.statistics().gps_completed
        for _ in range(20_000):
            rcu.call_rcu(cb)
        await rcu.rcu_barrier()
        assert hits == 20_000
        assert rcu.statistics().gps_completed - before <= 2


async def test_rcu_barrier_returns_at_once_when_nothing_is_queued() -> None:
    async with open_domain() as rcu:
        before = rcu.statistics().gps_completed
        await rcu.rcu_barrier()
        assert rcu.statistics().gps_completed == before


async def test_rcu_barrier_waits_for_callbacks_queued_by_any_task_before_it() -> None:
    async with open_domain() as rcu, anyio.create_task_group() as n:
        ran: list[str] = []

        async def other() -> None:
            rcu.call_rcu(ran.append, "other")

        n.start_soon(other)
        await anyio.wait_all_tasks_blocked()
        rcu.call_rcu(ran.append, "mine")
        await rcu.rcu_barrier()
        assert sorted(ran) == ["mine", "other"]


async def test_a_cancelled_barrier_leaves_nothing_behind() -> None:
    async with open_domain() as rcu, anyio.create_task_group() as n:
        release = await hold_reader(rcu, n)
        rcu.call_rcu(lambda: None)
        with anyio.move_on_after(0.01):
            await rcu.rcu_barrier()
        release.set()
        await rcu.rcu_barrier()
        assert rcu.statistics().callbacks_pending == 0
        assert rcu._callbacks._barrier_heads == 0


async def test_callback_exceptions_are_reported_and_raised_at_exit() -> None:
    ran: list[int] = []

    def bad(i: int) -> None:
        raise ValueError(f"boom {i}")

    with pytest.RaisesGroup(
        pytest.RaisesExc(ValueError, match="boom 1"), pytest.RaisesExc(ValueError, match="boom 3")
    ) as info:
        async with open_domain() as rcu:
            for i in range(5):
                rcu.call_rcu(bad if i in (1, 3) else ran.append, i)
            await rcu.rcu_barrier()
            assert ran == [0, 2, 4]  # the rest of the batch ran
            assert rcu.statistics().errors == 2
            rcu.call_rcu(ran.append, 5)  # the machinery survived
            await rcu.rcu_barrier()
    assert ran == [0, 2, 4, 5]
    notes = info.value.exceptions[0].__notes__
    assert any("call_rcu() callback" in n for n in notes)


async def test_on_error_handler_takes_callback_exceptions() -> None:
    seen: list[Exception] = []
    async with open_domain(on_error=seen.append, debug=True) as rcu:
        rcu.call_rcu(int, "not a number")
        await rcu.rcu_barrier()
    assert len(seen) == 1 and isinstance(seen[0], ValueError)
    assert any("queued at" in n and "test_app_callbacks.py" in n for n in seen[0].__notes__)


async def test_a_failing_on_error_handler_is_itself_reported() -> None:
    def handler(exc: Exception) -> None:
        raise RuntimeError("handler broke")

    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="handler broke")):
        async with open_domain(on_error=handler) as rcu:
            rcu.call_rcu(int, "x")


async def test_async_and_non_callable_callbacks_are_refused() -> None:
    """Refused at the call (issue 16 item 6; it used to be reported only when invoked): an
    ``async def``, a method or partial of one; a callable returning an awaitable anyway is
    still reported when invoked."""
    seen: list[Exception] = []

    async def coro() -> None:  # pragma: no cover - never awaited
        pass

    class Obj:
        async def method(self) -> None:  # pragma: no cover - never awaited
            pass

    async with open_domain(on_error=seen.append) as rcu:
        with pytest.raises(RcuArgumentError, match="must be callable"):
            rcu.call_rcu(42)  # type: ignore[arg-type]
        for fn in (coro, Obj().method, functools.partial(coro)):
            with pytest.raises(RcuArgumentError, match="async function"):
                rcu.call_rcu(fn)
        assert rcu.statistics().callbacks_pending == 0
        rcu.call_rcu(lambda: coro())
        await rcu.rcu_barrier()
    assert len(seen) == 1 and "returned an awaitable" in str(seen[0])


async def test_callbacks_can_queue_more_work_while_the_domain_exits() -> None:
    ran: list[str] = []
    async with open_domain() as rcu:

        def first() -> None:
            ran.append("first")
            rcu.call_rcu(ran.append, "second")
            rcu.kvfree_rcu(object(), release=lambda o: ran.append("freed"))

        rcu.call_rcu(first)
    assert ran == ["first", "second", "freed"] or sorted(ran) == ["first", "freed", "second"]
    assert rcu.statistics().callbacks_pending == 0 and rcu.statistics().kvfree_pending == 0
