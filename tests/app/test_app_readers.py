"""The read side of the application domain: phases, nesting, awaiting readers, misuse."""

from __future__ import annotations

import anyio
import pytest
from apptools import hold_reader, start_sync

import rcukit
from rcukit.app import RcuPointer, open_domain
from rcukit.errors import RcuClosedError, RcuUsageError

pytestmark = pytest.mark.anyio



async def test_grace_period_waits_for_a_reader_that_awaits_inside() -> None:
    async with open_domain() as rcu, anyio.create_task_group() as n:
        left = anyio.Event()
        release = anyio.Event()

        async def reader() -> None:
            with rcu.read_lock():
                await release.wait()  # preemptible: the section spans checkpoints
            left.set()

        n.start_soon(reader)
        await anyio.wait_all_tasks_blocked()
        done = await start_sync(rcu, n)
        assert not done.is_set()
        assert rcu.statistics().gp_in_progress
        release.set()
        await done.wait()
        assert left.is_set()


async def test_readers_that_start_after_the_gp_do_not_hold_it_up() -> None:
    async with open_domain() as rcu, anyio.create_task_group() as n:
        release_old = await hold_reader(rcu, n)
        done = await start_sync(rcu, n)
        await hold_reader(rcu, n)  # a new reader, never released
        assert rcu.statistics().readers == 2
        release_old.set()
        await done.wait()  # completes although the new reader is still inside
        assert rcu.statistics().readers == 1
        n.cancel_scope.cancel()


async def test_nested_sections_across_a_phase_flip() -> None:
    async with open_domain() as rcu, anyio.create_task_group() as n:
        inner_go = anyio.Event()
        finish = anyio.Event()

        async def reader() -> None:
            with rcu.read_lock():
                await inner_go.wait()
                with rcu.read_lock():  # entered after the GP flipped the phase
                    await finish.wait()

        n.start_soon(reader)
        await anyio.wait_all_tasks_blocked()
        done = await start_sync(rcu, n)
        inner_go.set()
        await anyio.wait_all_tasks_blocked()
        assert not done.is_set()  # the outer section still holds the old phase
        finish.set()
        await done.wait()
        assert rcu.statistics().readers == 0


async def test_explicit_lock_unlock_tokens_and_unbalanced_unlock() -> None:
    async with open_domain() as rcu:
        t1 = rcu.rcu_read_lock()
        t2 = rcu.rcu_read_lock()
        assert rcu.statistics().readers == 2
        rcu.rcu_read_unlock(t2)
        rcu.rcu_read_unlock(t1)
        assert rcu.statistics().readers == 0
        with pytest.raises(RcuUsageError, match="unbalanced unlock"):
            rcu.rcu_read_unlock(t1)
        assert rcu.statistics().readers == 0


async def test_a_guard_kept_past_a_grace_period_is_refused() -> None:
    async with open_domain() as rcu:
        guard = rcu.read_lock()
        await rcu.synchronize_rcu()
        with pytest.raises(RcuUsageError, match="enter it at once"), guard:
            pass  # pragma: no cover - never entered
        with rcu.read_lock():
            assert rcu.statistics().readers == 1


async def test_reader_cancelled_inside_its_section_releases_it() -> None:
    async with open_domain() as rcu, anyio.create_task_group() as n:
        n2 = anyio.CancelScope()

        async def reader() -> None:
            with n2, rcu.read_lock():
                await anyio.sleep_forever()

        n.start_soon(reader)
        await anyio.wait_all_tasks_blocked()
        done = await start_sync(rcu, n)
        assert rcu.statistics().readers == 1 and not done.is_set()
        n2.cancel()
        await done.wait()
        assert rcu.statistics().readers == 0


async def test_synchronize_inside_a_read_section_is_refused_in_debug_mode() -> None:
    async with open_domain(debug=True) as rcu:
        with rcu.read_lock():
            for call in (rcu.synchronize_rcu, rcu.rcu_barrier, rcu.kvfree_rcu_barrier):
                with pytest.raises(RcuUsageError, match="deadlock") as info:
                    await call()
                assert "test_app_readers.py" in str(info.value)  # names the section's site
            with pytest.raises(RcuUsageError, match="inside the RCU read section"):
                await rcu.cond_synchronize_rcu(rcu.start_poll_synchronize_rcu())
            with pytest.raises(RcuUsageError, match="inside the RCU read section"):
                await rcu.call_rcu_wait(print)
            with pytest.raises(RcuUsageError, match="inside the RCU read section"):
                await rcu.kvfree_rcu_wait(object())
        await rcu.synchronize_rcu()  # fine outside


async def test_debug_unlock_from_another_task_and_double_unlock() -> None:
    async with open_domain(debug=True) as rcu:
        token = rcu.rcu_read_lock()
        errors: list[BaseException] = []

        async def other() -> None:
            try:
                rcu.rcu_read_unlock(token)
            except RcuUsageError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as n:
            n.start_soon(other)
        assert len(errors) == 1 and "unlocked from task" in str(errors[0])
        assert rcu.statistics().readers == 0  # released anyway, so GPs keep moving
        with pytest.raises(RcuUsageError, match="already unlocked"):
            rcu.rcu_read_unlock(token)
        with pytest.raises(RcuUsageError, match="expected the token"):
            rcu.rcu_read_unlock(object())  # type: ignore[arg-type]
        section = rcu.read_lock()
        with pytest.raises(RcuUsageError, match="never entered"):
            section.__exit__(None, None, None)
        with section, pytest.raises(RcuUsageError, match="entered twice"), section:
            pass  # pragma: no cover


async def test_rcu_pointer_assign_and_dereference_checks() -> None:
    async with open_domain(debug=True) as rcu:
        ptr: RcuPointer[str] = rcukit.RcuPointer(rcu, "v1")
        with rcu.read_lock():
            assert ptr.dereference() == "v1"
        assert ptr.assign("v2") == "v1"
        assert ptr.dereference_protected() == "v2"
        with pytest.raises(RcuUsageError, match="outside an RCU read section"):
            ptr.dereference()
    async with open_domain() as fast:
        p2 = RcuPointer(fast, 1)
        assert p2.dereference() == 1  # non-debug: no check, no cost


async def test_read_lock_after_close_is_a_clear_error() -> None:
    async with open_domain() as rcu:
        pass
    with pytest.raises(RcuClosedError, match="closed"), rcu.read_lock():
        pass  # pragma: no cover
    async with open_domain(debug=True) as drcu:
        pass
    with pytest.raises(RcuClosedError), drcu.read_lock():
        pass  # pragma: no cover
