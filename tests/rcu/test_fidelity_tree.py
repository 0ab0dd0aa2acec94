"""Fidelity of the RCU engine's kernel API (``rcukit.rcu.tree``, ``tree_exp``, ``tree_hotplug``)
to ``kernel/rcu/tree.c``, ``tree_exp.h`` and ``kernel/workqueue.c``: what torture and the
kvfree_rcu() reclaim rely on (expedited GPs, the polled API, ``rcu_barrier()``,
``queue_rcu_work()``, callback migration on CPU hot-unplug).

Sources read: torvalds/linux ``kernel/rcu/rcu.h`` @ 00c1d298d486; the v5.12 polled-API patch
("start_poll_synchronize_rcu", Paul E. McKenney, 2021-03) and its tiny/tree implementations;
``kernel/rcu/rcu_segcblist.c`` @ 0ccfdcf968b3; kernel.md section 6 (``rcu_barrier()``,
``synchronize_rcu_expedited()`` and ``rcu_exp_gp_seq_snap()`` as read in T-5.1x, and the
tree_exp.h IPI handler).
"""

from __future__ import annotations

from typing import Any

import pytest
from simtools import MS, US, Kernel, run_sim

import rcukit.sim
from rcukit.rcu.segcblist import RcuHead
from rcukit.sched.sim import Task


@pytest.mark.parametrize("preempt", [False, True])
def test_an_expedited_gp_waits_for_a_reader_caught_by_its_ipi(preempt: bool) -> None:
    """``synchronize_rcu_expedited()`` (kernel/rcu/tree_exp.h, v5.9-v6.x):
    ``sync_rcu_exp_select_cpus()`` IPIs every online non-idle CPU but its own;
    ``rcu_exp_handler()`` on a CPU inside a read-side critical section cannot report a
    quiescent state (!PREEMPT_RCU: it sets ``cpu_no_qs.b.exp`` and asks for a reschedule;
    PREEMPT_RCU: ``rcu_read_unlock_special()`` reports it), so the expedited GP ends only once
    that reader has left, and well before a normal GP's tick-driven end."""

    async def body(k: Kernel) -> dict[str, int]:
        rcu = k.rcu
        out: dict[str, int] = {}

        async def reader(task: Task) -> None:
            with rcu.read_lock(task):
                task.charge(3 * MS)
                await task.sync()
            out["reader_end"] = task.now_ns

        async def updater(task: Task) -> None:
            task.charge(1 * MS)
            await task.sync()
            out["start"] = task.now_ns
            await rcu.synchronize_rcu_expedited(task)
            out["end"] = task.now_ns

        k.spawn(reader, 1)
        k.spawn(updater, 0)
        await k.run()
        out["exp_gps"] = rcu.statistics().expedited_gps
        return out

    out = run_sim(body, nr_cpus=2, preempt_rcu=preempt)
    assert out["start"] < out["reader_end"] <= out["end"]
    assert out["end"] - out["reader_end"] < 1 * MS
    assert out["exp_gps"] == 1


def test_an_expedited_gp_sends_no_ipi_to_idle_cpus() -> None:
    """``sync_rcu_exp_select_node_cpus()`` (kernel/rcu/tree_exp.h, v5.9-v6.x): a CPU whose
    ``rcu_dynticks_snap()`` says it is in an extended quiescent state (idle), and the CPU
    running the selection itself, are counted quiescent without an IPI; only the others are
    sent ``rcu_exp_handler()``. With every other CPU idle the expedited GP costs no IPI."""

    async def body(k: Kernel) -> int:
        box: dict[str, int] = {}

        async def updater(task: Task) -> None:
            t = task.now_ns
            await k.rcu.synchronize_rcu_expedited(task)
            box["dt"] = task.now_ns - t

        k.spawn(updater, 0)
        await k.run()
        return box["dt"]

    ipi = rcukit.sim.CostModel().expedited_ipi_ns
    assert run_sim(body, nr_cpus=8) < ipi


def test_concurrent_expedited_callers_share_grace_periods() -> None:
    """``synchronize_rcu_expedited()`` (kernel/rcu/tree_exp.h, v5.9-v6.x) takes ``s =
    rcu_exp_gp_seq_snap()`` (``rcu_seq_snap(&rcu_state.expedited_sequence)``) and returns as
    soon as ``sync_exp_work_done(s)``; ``exp_funnel_lock()`` lets one caller drive while the
    others wait ("Someone else did our work for us"). Callers arriving together need at most
    the GP in progress and one more, and ``expedited_sequence`` moves by one
    ``rcu_seq_start()``/``rcu_seq_end()`` pair (4) per expedited GP."""

    async def body(k: Kernel) -> tuple[int, int]:
        seq0 = k.rcu.expedited_sequence

        async def caller(task: Task) -> None:
            await k.rcu.synchronize_rcu_expedited(task)

        for i in range(12):
            k.spawn(caller, i)
        await k.run()
        gps = k.rcu.statistics().expedited_gps
        return gps, (k.rcu.expedited_sequence - seq0) % (1 << 64)

    gps, delta = run_sim(body, nr_cpus=12)
    assert 1 <= gps <= 2
    assert delta == 4 * gps


def test_the_polled_api() -> None:
    """kernel/rcu/tree.c polled grace periods: ``get_state_synchronize_rcu()`` returns
    ``rcu_seq_snap(&rcu_state.gp_seq)`` and starts nothing (v5.9+); v5.12's
    ``start_poll_synchronize_rcu()`` takes the same snapshot and "if the needed grace period is
    not already slated to start, notifies RCU core of the need for that grace period";
    ``poll_state_synchronize_rcu()`` never blocks; ``cond_synchronize_rcu()`` calls
    ``synchronize_rcu()`` only if the cookie's GP has not completed; v6.0's
    ``get_completed_synchronize_rcu()`` returns ``RCU_GET_STATE_COMPLETED``, always done."""

    async def body(k: Kernel) -> dict[str, Any]:
        rcu = k.rcu
        out: dict[str, Any] = {}

        async def w(task: Task) -> None:
            c = rcu.get_state_synchronize_rcu(task)
            await task.sleep_ns(50 * MS)
            out["get_state_alone"] = (rcu.poll_state_synchronize_rcu(c),
                                      rcu.statistics().started_gps)
            c2 = rcu.start_poll_synchronize_rcu(task)
            assert c2 == c, "the same snapshot: no GP ran in between"
            await task.sleep_ns(50 * MS)
            out["start_poll"] = (rcu.poll_state_synchronize_rcu(c2),
                                 rcu.statistics().completed_gps)
            t = task.now_ns
            await rcu.cond_synchronize_rcu(task, c2)
            out["cond_done_ns"] = task.now_ns - t
            gps = rcu.statistics().completed_gps
            await rcu.cond_synchronize_rcu(task, rcu.get_state_synchronize_rcu(task))
            out["cond_pending_gps"] = rcu.statistics().completed_gps - gps
            out["completed"] = rcu.poll_state_synchronize_rcu(
                rcu.get_completed_synchronize_rcu())

        k.spawn(w, 0)
        await k.run()
        return out

    assert run_sim(body, nr_cpus=2) == {
        "get_state_alone": (False, 0),
        "start_poll": (True, 1),
        "cond_done_ns": 0,
        "cond_pending_gps": 1,
        "completed": True,
    }


def test_the_full_polled_api_takes_a_normal_or_an_expedited_gp() -> None:
    """v6.1 kernel/rcu/tree.c ``get_state_synchronize_rcu_full()`` snapshots both
    ``rcu_state.gp_seq`` and ``rcu_state.expedited_sequence`` into ``struct rcu_gp_oldstate``;
    ``poll_state_synchronize_rcu_full()`` is satisfied by either GP, whereas the plain cookie
    (``rgos_norm``) needs a normal one."""

    async def body(k: Kernel) -> tuple[bool, bool, int]:
        rcu = k.rcu
        box: dict[str, Any] = {}

        async def w(task: Task) -> None:
            full = rcu.get_state_synchronize_rcu_full(task)
            await rcu.synchronize_rcu_expedited(task)
            box["r"] = (rcu.poll_state_synchronize_rcu_full(full),
                        rcu.poll_state_synchronize_rcu(full.rgos_norm),
                        rcu.statistics().completed_gps)

        k.spawn(w, 0)
        await k.run()
        r: tuple[bool, bool, int] = box["r"]
        return r

    assert run_sim(body, nr_cpus=2) == (True, False, 0)


def test_rcu_barrier_waits_only_for_callbacks_already_queued() -> None:
    """``rcu_barrier()`` (kernel/rcu/tree.c, v5.9-v6.x) entrains a callback behind each CPU's
    queued callbacks (``rcu_segcblist_entrain()``, which skips a CPU with none) and waits for
    ``barrier_cpu_count`` to drop to zero: it returns after every callback queued before it was
    invoked; with nothing queued anywhere "rcu_barrier() is within its rights to return
    immediately", starting no grace period."""

    async def body(k: Kernel) -> dict[str, Any]:
        rcu = k.rcu
        ran: list[int] = []
        out: dict[str, Any] = {}

        async def idle_barrier(task: Task) -> None:
            t = task.now_ns
            await rcu.rcu_barrier(task)
            out["idle"] = (task.now_ns - t, rcu.statistics().started_gps)

        async def queuer(task: Task) -> None:
            await task.sleep_ns(1 * MS)
            for _ in range(3):
                rcu.call_rcu(task, RcuHead(), lambda t, h: ran.append(t.cpu.id))
            await task.sleep_ns(100 * MS)

        async def barrier(task: Task) -> None:
            await task.sleep_ns(1 * MS + 10 * US)
            await rcu.rcu_barrier(task)
            out["at_return"] = sorted(ran)

        k.spawn(idle_barrier, 0)
        await k.run()
        for c in range(1, 4):
            k.spawn(queuer, c)
        k.spawn(barrier, 0)
        await k.run()
        return out

    out = run_sim(body, nr_cpus=4)
    assert out["idle"] == (0, 0)
    assert out["at_return"] == [1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_an_offlined_cpus_callbacks_migrate_and_run_after_their_gp() -> None:
    """``rcutree_migrate_callbacks()`` (kernel/rcu/tree.c, v5.9-v6.x; ``rcu_segcblist_merge()``)
    moves a dead CPU's callbacks to a surviving CPU's list: the done ones first, the pending
    ones to its NEXT segment to be re-accelerated, so each one still runs exactly once and never
    before the grace period it needed when it was queued."""

    async def body(k: Kernel) -> dict[str, Any]:
        rcu = k.rcu
        runs: dict[int, list[tuple[int, bool]]] = {}
        cookies: dict[int, int] = {}

        class Cb(RcuHead):
            __slots__ = ("n",)

            def __init__(self, n: int) -> None:
                super().__init__(None)
                self.n = n

        def fn(task: Task, head: RcuHead) -> None:
            assert isinstance(head, Cb)
            runs.setdefault(head.n, []).append(
                (task.cpu.id, rcu.poll_state_synchronize_rcu(cookies[head.n])))

        async def queuer(task: Task) -> None:
            for n in range(20):
                cookies[n] = rcu.get_state_synchronize_rcu(task)
                rcu.call_rcu(task, Cb(n), fn)
            await task.sleep_ns(10 * MS)

        async def admin(task: Task) -> None:
            await task.sleep_ns(100 * US)
            await rcu.cpu_down(task, 2)
            await rcu.rcu_barrier(task)

        k.spawn(queuer, 2)
        k.spawn(admin, 0)
        await k.run()
        return {"runs": runs}

    runs = run_sim(body, nr_cpus=4)["runs"]
    assert sorted(runs) == list(range(20))
    for n, r in runs.items():
        assert len(r) == 1, (n, r)
        cpu, after_gp = r[0]
        assert after_gp and cpu != 2


def test_concurrent_rcu_barriers_share_through_barrier_sequence() -> None:
    """``rcu_barrier()`` (kernel/rcu/tree.c, v5.9-v6.x) takes ``s =
    rcu_seq_snap(&rcu_state.barrier_sequence)`` before ``mutex_lock(&barrier_mutex)`` and
    returns at once if ``rcu_seq_done(&barrier_sequence, s)`` ("Did someone else do our work
    for us?"). Callers arriving while a barrier is in progress snapshot the end of the *next*
    barrier, so they cannot use the running one, but all of them share that next one: three
    callers, the last two during the first's barrier, make two barriers, not three."""

    async def body(k: Kernel) -> tuple[int, list[int]]:
        rcu = k.rcu
        done: list[int] = []

        async def first(task: Task) -> None:
            rcu.call_rcu(task, RcuHead(), lambda t, h: None)  # its barrier waits for a GP
            await rcu.rcu_barrier(task)
            done.append(task.cpu.id)

        async def during(task: Task) -> None:
            await task.sleep_ns(1 * MS)  # the first barrier is waiting for its GP
            await rcu.rcu_barrier(task)
            done.append(task.cpu.id)

        k.spawn(first, 0)
        k.spawn(during, 1)
        k.spawn(during, 2)
        await k.run()
        return rcu.statistics().barriers, done

    barriers, done = run_sim(body, nr_cpus=3)
    assert barriers == 2
    assert done[0] == 0 and sorted(done) == [0, 1, 2]
