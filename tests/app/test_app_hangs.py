"""Never a silent hang (issue 16 item 3), on both event loops.

Each test runs under ``fail_after``: before this work every one of them hung.
"""

from __future__ import annotations

import logging

import anyio
import pytest
from apptools import on_both_loops, run_on, wait_blocked

from rcukit.app import open_domain
from rcukit.errors import RcuClosedError, RcuLeakError, RcuUsageError


@on_both_loops
@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize("call", ["synchronize_rcu", "rcu_barrier", "kvfree_rcu_barrier"])
def test_waiting_for_a_gp_inside_ones_own_read_section_raises(
    backend: str, debug: bool, call: str
) -> None:
    """``synchronize_rcu()`` (and a barrier with work queued) inside the caller's read section
    would wait for itself. The kernel catches it with lockdep ("Illegal synchronize_rcu() in
    RCU read-side critical section", kernel/rcu/tree.c ``synchronize_rcu``, v6.1, under
    CONFIG_PROVE_RCU); here it raises in every mode, found on the waiting side."""

    async def main() -> None:
        with anyio.fail_after(10):
            async with open_domain(debug=debug) as rcu:
                rcu.call_rcu(len, "queued")
                rcu.kvfree_rcu(object())
                with rcu.read_lock(), pytest.raises(RcuUsageError, match="deadlock"):
                    await getattr(rcu, call)()
                await getattr(rcu, call)()  # outside: fine

    run_on(backend, main)


@on_both_loops
@pytest.mark.parametrize("call", ["synchronize_rcu", "rcu_barrier"])
def test_a_reader_that_already_holds_a_running_gp_and_then_waits_raises(
    backend: str, call: str
) -> None:
    """The GP that waits for the reader started before the reader asked to wait (another task
    asked for it): the GP task looks again when a new waiter arrives."""

    async def main() -> None:
        with anyio.fail_after(10):
            async with open_domain() as rcu, anyio.create_task_group() as tg:
                rcu.call_rcu(len, "queued")
                entered = anyio.Event()
                go = anyio.Event()
                raised: list[BaseException] = []

                async def reader() -> None:
                    with rcu.read_lock():
                        entered.set()
                        await go.wait()
                        try:
                            await getattr(rcu, call)()
                        except RcuUsageError as exc:
                            raised.append(exc)

                async def other() -> None:
                    await rcu.synchronize_rcu()

                tg.start_soon(reader)
                await entered.wait()
                tg.start_soon(other)
                await wait_blocked()
                assert rcu.statistics().gp_in_progress
                go.set()
                await wait_blocked()
                assert len(raised) == 1 and "deadlock" in str(raised[0])

    run_on(backend, main)


@on_both_loops
def test_nested_and_deep_read_sections_are_found(backend: str) -> None:
    """The section may be entered several frames up the await chain, and nested."""

    async def main() -> None:
        with anyio.fail_after(10):
            async with open_domain() as rcu:

                async def deep(n: int) -> None:
                    if n:
                        await deep(n - 1)
                    else:
                        await rcu.synchronize_rcu()

                with rcu.read_lock(), rcu.read_lock(), pytest.raises(RcuUsageError):
                    await deep(5)
                # another task's reader is not the caller's: that GP just waits for it
                async with anyio.create_task_group() as tg:
                    leave = anyio.Event()

                    async def reader() -> None:
                        with rcu.read_lock():
                            await leave.wait()

                    tg.start_soon(reader)
                    await wait_blocked()

                    async def sync() -> None:
                        await rcu.synchronize_rcu()

                    tg.start_soon(sync)
                    await wait_blocked()
                    leave.set()

    run_on(backend, main)


@on_both_loops
@pytest.mark.parametrize("debug", [False, True])
def test_stall_warning_names_what_holds_the_gp_and_repeats(
    backend: str, debug: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """``rcu_cpu_stall_timeout``: a GP stuck longer than the timeout is reported, then again
    three timeouts later (kernel/rcu/tree_stall.h ``print_other_cpu_stall`` re-arms
    ``jiffies_stall`` at 3 * ``rcu_jiffies_till_stall_check()``, v6.1). Debug mode names the
    task and the ``read_lock()`` site; production gives counts."""
    caplog.set_level(logging.WARNING, logger="rcukit")

    async def main() -> None:
        with anyio.fail_after(10):
            async with (
                open_domain(debug=debug, stall_timeout=0.1) as rcu,
                anyio.create_task_group() as tg,
            ):
                leave = anyio.Event()

                async def stuck_reader() -> None:
                    with rcu.read_lock():
                        await leave.wait()

                async def sync() -> None:
                    await rcu.synchronize_rcu()

                tg.start_soon(stuck_reader)
                await wait_blocked()
                tg.start_soon(sync)
                await anyio.sleep(0.55)
                assert rcu.stalls == 2  # at 0.1 s, then at 0.1 + 3 * 0.1 s
                assert rcu.statistics().stall_warnings == 2
                leave.set()

    run_on(backend, main)
    recs = [r for r in caplog.records if r.name == "rcukit"]
    msgs = [r.getMessage() for r in recs]
    assert recs[1].created - recs[0].created >= 0.29
    assert len(msgs) == 2 and all("RCU grace period stall" in m for m in msgs)
    assert "1 read section(s) of the old phase" in msgs[0]
    if debug:
        assert "stuck_reader" in msgs[0] and "test_app_hangs.py" in msgs[0]


@on_both_loops
def test_a_normal_exit_that_cannot_finish_raises_a_leak_error(backend: str) -> None:
    """A reader that never leaves used to make a normal exit wait forever, silently. Now the
    exit gives up after ``close_timeout`` and raises RcuLeakError saying what is pending."""

    async def main() -> None:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as outer:
                with pytest.raises(RcuLeakError, match="1 call_rcu callbacks"):
                    async with open_domain(close_timeout=0.2, stall_timeout=None) as rcu:
                        leave = anyio.Event()

                        async def stuck_reader() -> None:
                            with rcu.read_lock():
                                await leave.wait()
                            # the domain is gone by now

                        outer.start_soon(stuck_reader)
                        await wait_blocked()
                        rcu.call_rcu(len, "never")
                leave.set()

    run_on(backend, main)


@on_both_loops
def test_a_self_requeueing_callback_does_not_keep_the_barrier_or_the_exit_waiting(
    backend: str,
) -> None:
    """kernel/rcu/tree.c ``rcu_barrier`` (v6.1) entrains its callback behind the callbacks
    already queued; a callback queued by a callback lands behind it, so the barrier returns
    (Documentation/RCU/rcubarrier.rst: stop re-posting, then rcu_barrier()). The exit runs
    its barriers, then the final GP; a chain that checks ``rcu.closing`` stops cleanly."""
    runs: list[int] = []

    async def main() -> None:
        with anyio.fail_after(10):
            async with open_domain() as rcu:

                def again() -> None:
                    runs.append(1)
                    if not rcu.closing:
                        rcu.call_rcu(again)

                rcu.call_rcu(again)
                for _ in range(3):
                    await rcu.rcu_barrier()
                assert rcu.statistics().callbacks_pending == 1  # re-queued behind each barrier

    run_on(backend, main)
    assert len(runs) >= 4


@on_both_loops
def test_a_chain_that_ignores_closing_still_lets_the_exit_finish(backend: str) -> None:
    """A chain that never stops: the exit still finishes; its last re-queue on the closed
    domain is reported (RcuClosedError), not lost and not a hang."""

    async def main() -> None:
        with anyio.fail_after(10):
            with pytest.raises(ExceptionGroup) as ei:
                async with open_domain() as rcu:

                    def again() -> None:
                        rcu.call_rcu(again)

                    rcu.call_rcu(again)
            assert ei.group_contains(RcuClosedError)

    run_on(backend, main)
