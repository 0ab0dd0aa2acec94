"""The grace-period engine: GpCore bookkeeping, the simulated kernel's RCU API and its costs."""

from __future__ import annotations

import re
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from simtools import MS, US, Kernel, run_sim

import rcukit
import rcukit.sim
from rcukit.errors import GpSeqError, RcuUsageError
from rcukit.panic import symbol_frame
from rcukit.rcu.gpcore import RCU_GP_SEQ_INIT, GpCore, RcuSeq, signed_seq
from rcukit.rcu.gpseq import RCU_GET_STATE_COMPLETED, ULONG_MASK, RcuGpOldState
from rcukit.rcu.segcblist import RcuHead
from rcukit.rcu.tree import RcuState, RcuWork
from rcukit.sched.sim import Task
from rcukit.wq import Work

# ====================================================================== GpCore (no clock)


def test_gpcore_starts_300_gps_below_the_wrap_and_survives_it() -> None:
    core: GpCore[str] = GpCore()
    assert core.gp_seq.current == RCU_GP_SEQ_INIT
    assert signed_seq(core.gp_seq.current) == -1200
    for _ in range(400):
        target = core.gp_seq.snap()
        assert core.gp_seq.add_waiter(target, "w")
        assert core.request_gp(target)
        core.gp_seq.start()
        assert not core.gp_seq.done(target)
        assert core.gp_seq.end() == ["w"]
        assert core.gp_seq.done(target)
    assert core.gp_seq.completed == 400
    assert core.gp_seq.current == (RCU_GP_SEQ_INIT + 400 * 4) & ULONG_MASK == 400 * 4 - 1200


def test_gpcore_wakes_exactly_the_waiters_whose_target_is_reached() -> None:
    core: GpCore[str] = GpCore(initial_gp_seq=(ULONG_MASK - 3) & ~3)  # one GP before the wrap
    first = core.gp_seq.snap()  # idle: the next GP
    core.gp_seq.add_waiter(first, "a")
    core.gp_seq.start()
    second = core.gp_seq.snap()  # mid-GP: this one and one more
    core.gp_seq.add_waiter(second, "b")
    core.gp_seq.add_waiter(first, "c")
    assert second != first and core.gp_seq.n_waiters() == 3
    assert core.gp_seq.end() == ["a", "c"]  # crosses 2**64 -> 0
    assert core.gp_seq.current == 0 and core.gp_seq.n_waiters() == 1
    core.gp_seq.start()
    assert core.gp_seq.end() == ["b"]
    assert not core.gp_seq.add_waiter(first, "late"), "a target already reached takes no waiter"


def test_gpcore_requests_say_whether_a_gp_must_start() -> None:
    core: GpCore[object] = GpCore(initial_gp_seq=0)
    assert not core.gp_needed()
    assert core.request_gp(core.gp_seq.snap())
    core.gp_seq.start()
    assert not core.gp_needed(), "the running GP satisfies a request made before it started"
    assert core.request_gp(core.gp_seq.snap()), "a request made mid-GP needs one more"
    core.gp_seq.end()
    assert core.gp_needed()
    core.gp_seq.start()
    core.gp_seq.end()
    assert not core.gp_needed() and core.gp_seq_needed == 8


def test_gpcore_refuses_impossible_transitions() -> None:
    core: GpCore[object] = GpCore()
    with pytest.raises(GpSeqError, match="while none is running"):
        core.gp_seq.end()
    core.gp_seq.start()
    with pytest.raises(GpSeqError, match="while one is running"):
        core.gp_seq.start()
    with pytest.raises(GpSeqError, match="must start idle"):
        GpCore(initial_gp_seq=5)


def test_gpcore_keeps_both_sequences_as_one_rcu_seq_type_with_their_own_waiters() -> None:
    core: GpCore[str] = GpCore(initial_gp_seq=0)
    gp, exp = core.gp_seq, core.expedited_sequence
    assert type(gp) is type(exp) is RcuSeq
    assert exp.add_waiter(exp.snap(), "exp") and gp.add_waiter(gp.snap(), "normal")
    assert exp.start() == 1
    assert exp.in_progress() and not gp.in_progress()
    assert exp.end() == ["exp"] and exp.completed == 1 and exp.done(4)
    assert gp.n_waiters() == 1 and gp.current == 0 and gp.completed == 0
    with pytest.raises(GpSeqError, match="expedited grace period while none is running"):
        exp.end()


def test_gpcore_polled_cookies_need_a_full_grace_period() -> None:
    core: GpCore[object] = GpCore(initial_gp_seq=0)
    idle_cookie = core.gp_seq.snap()
    core.gp_seq.start()
    mid_cookie = core.gp_seq.snap()
    full = core.get_state_full()
    assert full.rgos_norm == mid_cookie
    assert not core.poll(idle_cookie) and not core.poll(mid_cookie)
    core.gp_seq.end()
    assert core.poll(idle_cookie), "one whole GP ran after the idle snapshot"
    assert not core.poll(mid_cookie), "the GP that was running may predate the snapshot"
    core.gp_seq.start()
    core.gp_seq.end()
    assert core.poll(mid_cookie)
    assert core.poll(GpCore.get_completed()) and GpCore.get_completed() == RCU_GET_STATE_COMPLETED
    # The _full cookie is also satisfied by an expedited GP alone.
    exp_only: GpCore[object] = GpCore(initial_gp_seq=0)
    old = exp_only.get_state_full()
    exp_only.expedited_sequence.start()
    exp_only.expedited_sequence.end()
    assert exp_only.poll_full(old) and not exp_only.poll(old.rgos_norm)
    assert exp_only.poll_full(RcuGpOldState.completed())


# ====================================================================== the simulated kernel


def test_boot_wires_the_engine_into_the_kernel() -> None:
    async def main() -> None:
        async with rcukit.sim.boot(nr_cpus=2, preempt_rcu=True) as k:
            assert isinstance(k.rcu, RcuState)
            assert k.rcu.name == "rcu_preempt"

            async def w(task: Task) -> None:
                await k.rcu.synchronize_rcu(task)

            await k.run_on_cpus(w, [0])
            assert k.rcu.statistics().completed_gps == 1

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("preempt", [False, True])
def test_gp_kthread_is_named_by_flavour_and_lives_on_the_last_cpu(preempt: bool) -> None:
    async def body(k: Kernel) -> tuple[str, int]:
        assert not any(t.comm.startswith("rcu_") for t in k.sim.tasks), "created on demand"

        async def w(task: Task) -> None:
            await k.rcu.synchronize_rcu(task)

        await k.run_on_cpus(w, [0])
        kt = next(t for t in k.sim.tasks if t.comm.startswith("rcu_"))
        return kt.comm, kt.cpu.id

    assert run_sim(body, nr_cpus=3, preempt_rcu=preempt) == (
        "rcu_preempt" if preempt else "rcu_sched",
        2,
    )


@pytest.mark.parametrize("preempt", [False, True])
@pytest.mark.parametrize("sync", ["synchronize_rcu", "synchronize_rcu_expedited"])
def test_synchronize_rcu_waits_for_preexisting_readers_only(sync: str, preempt: bool) -> None:
    async def body(k: Kernel) -> dict[str, Any]:
        rcu = k.rcu
        out: dict[str, Any] = {}

        async def old_reader(task: Task) -> None:
            task.charge(500 * US)
            with rcu.read_lock(task):
                for _ in range(10):
                    task.charge(500 * US)
                    await task.sync()
            out["old_end"] = task.now_ns

        async def new_reader(task: Task) -> None:
            # Busy (not idle) until its reader begins: a CPU idle at the GP start and running
            # at the first FQS scan must pass a QS, so an idle CPU's new reader would be
            # waited for, as the kernel's dyntick_save_progress_counter() would.
            while task.now_ns < 2 * MS:
                task.charge(100 * US)
                await task.cond_resched()
            with rcu.read_lock(task):
                for _ in range(100):
                    task.charge(500 * US)
                    await task.sync()
            out["new_end"] = task.now_ns

        async def writer(task: Task) -> None:
            task.charge(1 * MS)
            await task.cond_resched()
            out["call"] = task.now_ns
            await getattr(rcu, sync)(task)  # a reader caught inside its section is waited for
            out["ret"] = task.now_ns

        k.spawn(old_reader, 1)
        k.spawn(new_reader, 2)
        k.spawn(writer, 0)
        await k.run()
        return out

    out = run_sim(body, nr_cpus=4, preempt_rcu=preempt)
    assert out["call"] < out["old_end"] <= out["ret"], "the old reader must be waited for"
    assert out["ret"] < out["new_end"], "a reader that began after the call is not waited for"


def test_concurrent_synchronize_rcu_callers_share_grace_periods() -> None:
    async def body(k: Kernel) -> tuple[int, int]:
        rcu = k.rcu
        done = []

        async def caller(task: Task) -> None:
            task.charge(10 * US * (task.pid % 7))
            await rcu.synchronize_rcu(task)
            done.append(task.pid)

        for i in range(32):
            k.spawn(caller, i % 4, f"sync/{i}")
        await k.run()
        return len(done), rcu.statistics().completed_gps

    n, gps = run_sim(body, nr_cpus=4)
    assert n == 32
    assert 1 <= gps <= 2, f"32 concurrent callers needed {gps} grace periods"


@pytest.mark.parametrize("preempt", [False, True])
def test_expedited_is_much_faster_than_normal_and_counted_apart(preempt: bool) -> None:
    async def body(k: Kernel) -> tuple[int, int, Any, int]:
        rcu = k.rcu
        res: dict[str, int] = {}

        async def busy(task: Task) -> None:
            # Busy through both GPs: the normal one lasts until the first FQS scan finds the
            # waiter's idle CPU (3 jiffies), and the expedited one must still find them busy.
            for _ in range(200):
                task.charge(50 * US)
                await task.cond_resched()

        async def w(task: Task) -> None:
            task.charge(1500 * US)
            await task.cond_resched()
            t = task.now_ns
            await rcu.synchronize_rcu(task)
            res["normal"] = task.now_ns - t
            seq = rcu.expedited_sequence
            t = task.now_ns
            await rcu.synchronize_rcu_expedited(task)
            res["exp"] = task.now_ns - t
            res["exp_seq_delta"] = rcu.expedited_sequence - seq

        for c in (1, 2, 3):
            k.spawn(busy, c)
        k.spawn(w, 0)
        await k.run()
        return res["normal"], res["exp"], rcu.statistics(), res["exp_seq_delta"]

    normal, exp, stats, delta = run_sim(body, nr_cpus=4, preempt_rcu=preempt)
    ipi = rcukit.sim.CostModel().expedited_ipi_ns
    assert exp * 10 < normal, (exp, normal)
    assert exp >= 3 * ipi, "three busy CPUs were sent an IPI each"
    assert (stats.completed_gps, stats.expedited_gps, delta) == (1, 1, 4)


def test_concurrent_expedited_callers_share() -> None:
    async def body(k: Kernel) -> int:
        async def caller(task: Task) -> None:
            await k.rcu.synchronize_rcu_expedited(task)

        for i in range(12):
            k.spawn(caller, i)
        await k.run()
        return k.rcu.statistics().expedited_gps

    assert 1 <= run_sim(body, nr_cpus=12) <= 2


def test_polled_api_cookies() -> None:
    async def body(k: Kernel) -> dict[str, Any]:
        rcu = k.rcu
        out: dict[str, Any] = {}

        async def w(task: Task) -> None:
            c = rcu.get_state_synchronize_rcu(task)
            out["fresh"] = rcu.poll_state_synchronize_rcu(c)
            await task.sleep_ns(50 * MS)
            out["no_gp_started"] = rcu.statistics().started_gps
            out["after_idle"] = rcu.poll_state_synchronize_rcu(c)
            c2 = rcu.start_poll_synchronize_rcu(task)
            await task.sleep_ns(50 * MS)
            out["started_gp_done"] = rcu.poll_state_synchronize_rcu(c2)
            gps = rcu.statistics().completed_gps
            await rcu.cond_synchronize_rcu(task, c2)
            out["cond_needed_no_gp"] = rcu.statistics().completed_gps == gps
            await rcu.cond_synchronize_rcu(task, rcu.get_state_synchronize_rcu(task))
            out["cond_waited"] = rcu.statistics().completed_gps - gps
            out["completed"] = rcu.poll_state_synchronize_rcu(
                rcu.get_completed_synchronize_rcu()
            )
            full = rcu.get_state_synchronize_rcu_full(task)
            await rcu.synchronize_rcu_expedited(task)
            out["full_by_exp"] = rcu.poll_state_synchronize_rcu_full(full)
            out["norm_by_exp"] = rcu.poll_state_synchronize_rcu(full.rgos_norm)
            before = rcu.statistics().completed_gps
            await rcu.cond_synchronize_rcu_full(task, full)
            out["cond_full_no_gp"] = rcu.statistics().completed_gps == before
            full2 = rcu.start_poll_synchronize_rcu_full(task)
            await task.sleep_ns(50 * MS)
            out["full2"] = rcu.poll_state_synchronize_rcu_full(full2)
            out["full_completed"] = rcu.poll_state_synchronize_rcu_full(
                rcu.get_completed_synchronize_rcu_full()
            )

        k.spawn(w, 0)
        await k.run()
        return out

    out = run_sim(body, nr_cpus=2)
    assert out == {
        "fresh": False,
        "no_gp_started": 0,
        "after_idle": False,  # get_state does not start a GP
        "started_gp_done": True,  # start_poll does
        "cond_needed_no_gp": True,
        "cond_waited": 1,
        "completed": True,
        "full_by_exp": True,
        "norm_by_exp": False,
        "cond_full_no_gp": True,
        "full2": True,
        "full_completed": True,
    }


def test_callbacks_run_in_rcuc_in_blimit_batches_after_their_gp() -> None:
    async def body(k: Kernel) -> dict[str, Any]:
        rcu = k.rcu
        k.tracer.enable(frozenset({"rcu_batch_start", "rcu_invoke_callback"}))
        ran: list[tuple[str, int, bool]] = []
        cookies: dict[int, int] = {}

        def cb(task: Task, head: RcuHead) -> None:
            ran.append((task.comm, task.cpu.id, rcu.poll_state_synchronize_rcu(cookies[id(head)])))
            task.charge(1 * US)

        heads = [RcuHead() for _ in range(25)]

        async def w(task: Task) -> None:
            for h in heads:
                cookies[id(h)] = rcu.get_state_synchronize_rcu(task)
                rcu.call_rcu(task, h, cb)
            await rcu.rcu_barrier(task)

        k.spawn(w, 1)
        await k.run()
        return {
            "ran": ran,
            "batches": [e.fields for e in k.tracer.events if e.name == "rcu_batch_start"],
            "stats": rcu.statistics(),
        }

    out = run_sim(body, nr_cpus=2)
    assert len(out["ran"]) == 25
    assert {(comm, cpu) for comm, cpu, _ in out["ran"]} == {("rcuc/1", 1)}
    assert all(done for _, _, done in out["ran"]), "a callback ran before its grace period"
    # 25 callbacks plus the barrier's own, at most blimit=10 per pass.
    assert out["batches"] == [
        "rcu_sched CBs=26 bl=10",
        "rcu_sched CBs=16 bl=10",
        "rcu_sched CBs=6 bl=10",
    ]
    st = out["stats"]
    assert (st.callbacks_queued, st.callbacks_invoked, st.callbacks_pending) == (26, 26, 0)
    assert st.barriers == 1


def test_call_rcu_charges_enqueue_and_invocation_costs() -> None:
    cost = rcukit.sim.CostModel(call_rcu_ns=100, rcu_invoke_ns=1000, gp_init_ns=0, qs_report_ns=0)

    async def body(k: Kernel) -> tuple[int, int]:
        rcu = k.rcu
        box: dict[str, int] = {}

        async def w(task: Task) -> None:
            t0 = task.now_ns
            for _ in range(7):
                rcu.call_rcu(task, RcuHead(), lambda t, h: None)
            box["enqueue"] = task.now_ns - t0
            await rcu.rcu_barrier(task)

        k.spawn(w, 0)
        await k.run()
        rcuc = next(t for t in k.sim.tasks if t.comm == "rcuc/0")
        return box["enqueue"], rcuc.cpu.busy_ns()

    enqueue, busy = run_sim(body, nr_cpus=2, cost=cost)
    assert enqueue == 700
    assert busy >= 8 * 1000  # 7 callbacks + the barrier's, at rcu_invoke_ns each


def test_rcu_barrier_with_nothing_queued_returns_without_a_gp() -> None:
    async def body(k: Kernel) -> tuple[int, int, int]:
        box: dict[str, int] = {}

        async def w(task: Task) -> None:
            t = task.now_ns
            await k.rcu.rcu_barrier(task)
            box["dt"] = task.now_ns - t

        k.spawn(w, 0)
        await k.run()
        st = k.rcu.statistics()
        return box["dt"], st.started_gps, st.barriers

    assert run_sim(body, nr_cpus=4) == (0, 0, 1)


def test_rcu_barrier_waits_for_callbacks_queued_on_every_cpu() -> None:
    async def body(k: Kernel) -> tuple[list[int], int]:
        rcu = k.rcu
        ran: list[int] = []
        box: dict[str, int] = {}

        async def q(task: Task) -> None:
            for _ in range(3):
                rcu.call_rcu(task, RcuHead(), lambda t, h: ran.append(t.now_ns))
            await task.sleep_ns(100 * MS)

        async def b(task: Task) -> None:
            await task.sleep_ns(10 * US)
            await rcu.rcu_barrier(task)
            box["n_at_return"] = len(ran)
            box["ret"] = task.now_ns

        for c in range(4):
            k.spawn(q, c)
        k.spawn(b, 0)
        await k.run()
        assert all(t <= box["ret"] for t in ran)
        return ran, box["n_at_return"]

    ran, n = run_sim(body, nr_cpus=4)
    assert n == len(ran) == 12


def test_queue_rcu_work_runs_the_work_after_a_gp_on_the_queueing_cpu() -> None:
    """``queue_rcu_work(wq, rwork)`` (kernel/workqueue.c, v5.9-v6.x) sets the work's PENDING
    bit and ``call_rcu(&rwork->rcu, rcu_work_rcufn)``, returning false if the work was already
    pending; ``rcu_work_rcufn()`` queues the work (``__queue_work(WORK_CPU_UNBOUND, ...)``, the
    invoking CPU for a per-CPU workqueue) once the grace period has passed;
    ``flush_rcu_work()`` waits for both (``rcu_barrier()`` then ``flush_work()``) and returns
    whether there was anything to wait for."""

    async def body(k: Kernel) -> dict[str, Any]:
        rcu = k.rcu
        out: dict[str, Any] = {"runs": []}

        async def fn(task: Task, work: Work) -> None:
            out["runs"].append((task.cpu.id, rcu.poll_state_synchronize_rcu(out["cookie"])))

        rw = RcuWork("rw", fn)

        async def w(task: Task) -> None:
            out["cookie"] = rcu.get_state_synchronize_rcu(task)
            out["first"] = rcu.queue_rcu_work(task, k.system_wq, rw)
            out["second"] = rcu.queue_rcu_work(task, k.system_wq, rw)
            out["pending"] = rw.pending
            out["flushed"] = await rcu.flush_rcu_work(task, rw)
            out["pending_after"] = rw.pending
            out["flush_idle"] = await rcu.flush_rcu_work(task, rw)
            out["runs_before_requeue"] = len(out["runs"])
            # once it has run, the work can be queued again (PENDING was cleared)
            out["requeue"] = rcu.queue_rcu_work(task, k.system_wq, rw)
            await rcu.flush_rcu_work(task, rw)

        k.spawn(w, 2)
        await k.run()
        return out

    out = run_sim(body, nr_cpus=4)
    assert out == {
        "runs": [(2, True), (2, True)],
        "cookie": out["cookie"],
        "first": True,
        "second": False,
        "pending": True,
        "flushed": True,
        "pending_after": False,
        "flush_idle": False,
        "runs_before_requeue": 1,
        "requeue": True,
    }


# ====================================================================== misuse and splats


@pytest.mark.parametrize(
    "call",
    ["synchronize_rcu", "synchronize_rcu_expedited", "rcu_barrier", "cond_synchronize_rcu"],
)
def test_blocking_inside_a_read_section_is_an_error(call: str) -> None:
    async def body(k: Kernel) -> str:
        rcu = k.rcu

        async def w(task: Task) -> str:
            with rcu.read_lock(task), pytest.raises(RcuUsageError) as exc:
                if call == "cond_synchronize_rcu":
                    await rcu.cond_synchronize_rcu(task, rcu.get_state_synchronize_rcu(task))
                else:
                    await getattr(rcu, call)(task)
            assert task.rcu_read_nesting == 0
            return str(exc.value)

        t = k.spawn(w, 0, "misuser")
        await k.run()
        return str(t.result)

    msg = run_sim(body, nr_cpus=2)
    assert msg.startswith(f"{call}() called by misuser/")
    assert "inside an RCU read-side critical section (nesting 1)" in msg


def test_sleeping_in_a_nonpreemptible_reader_splats_like_might_sleep() -> None:
    async def body(k: Kernel) -> tuple[list[str], int, int, int]:
        rcu = k.rcu
        box: dict[str, int] = {}

        async def reader(task: Task) -> None:
            with rcu.read_lock(task):
                await task.sleep_ns(3 * MS)  # the bug under test
            box["end"] = task.now_ns

        async def w(task: Task) -> None:
            await task.sleep_ns(1 * MS)
            await rcu.synchronize_rcu(task)
            box["ret"] = task.now_ns

        k.spawn(reader, 1, "sleepy")
        k.spawn(w, 0)
        await k.run()
        return [s.format() for s in k.locks.splats], k.locks.counts["sleeping_in_atomic"], \
            box["end"], box["ret"]

    splats, n, end, ret = run_sim(body, nr_cpus=2)
    assert n == 1
    # schedule() inside the reader is also __schedule_bug()'s report, printed first (its
    # schedule_debug() runs before rcu_note_context_switch() in __schedule())
    assert len(splats) == 2 and splats[0].startswith("BUG: scheduling while atomic: sleepy/")
    text = splats[1]
    assert text.startswith("BUG: sleeping function called from invalid context at "
                           "test_rcu_tree.py:")
    # 5.9's ___might_sleep(): no "preempt_count:"/"RCU nest depth:" lines (5.17 added them,
    # the latter only with CONFIG_PREEMPT_RCU); CONFIG_DEBUG_PREEMPT names where preemption
    # went off (rcu_read_lock() is preempt_disable() on !PREEMPT_RCU).
    assert "RCU nest depth" not in text and "preempt_count:" not in text
    assert "in_atomic(): 1" in text
    assert "Preemption disabled at:\n[<" in text
    assert f"] {symbol_frame('rcu_read_lock')}\n" in text
    assert end <= ret, "the grace period still waits for the (buggy) reader"


# ====================================================================== stalls


def _stall_run(preempt: bool) -> dict[str, Any]:
    async def body(k: Kernel) -> dict[str, Any]:
        rcu = k.rcu
        out: dict[str, Any] = {}

        async def reader(task: Task) -> None:
            with rcu.read_lock(task):
                for _ in range(30):
                    task.charge(1 * MS)
                    if preempt:
                        await task.sleep_ns(0)
                    else:
                        await task.sync()
            out["left"] = task.now_ns

        async def w(task: Task) -> None:
            task.charge(500 * US)
            await task.cond_resched()
            await rcu.synchronize_rcu(task)
            out["ret"] = task.now_ns
            await rcu.synchronize_rcu(task)  # a healthy GP afterwards: no report

        r = k.spawn(reader, 1, "long_reader")
        k.spawn(w, 0)
        await k.run()
        out["pid"] = r.pid
        out["reports"] = [s.format() for s in k.locks.splats if s.kind == "rcu_stall"]
        out["count"] = k.splat_counts()["rcu_stall"]
        out["vmstat"] = k.vmstat["splat_rcu_stall"]
        out["stats"] = rcu.statistics()
        return out

    return run_sim(body, nr_cpus=4, preempt_rcu=preempt, rcu_stall_timeout_ms=10)


def test_a_cpu_stuck_in_a_reader_gets_exactly_one_stall_report() -> None:
    out = _stall_run(preempt=False)
    assert out["count"] == out["vmstat"] == out["stats"].stalls == 1
    lines = out["reports"][0].split("\n")
    assert lines[0] == "INFO: rcu_sched detected stalls on CPUs/tasks:"
    assert re.fullmatch(r"\t1-\.\.\.[.!]: \(\d+ ticks this GP\) idle=\w+/1/0x[0-9a-f]+ "
                        r"softirq=\d+/\d+ fqs=\d+", lines[1])
    assert re.fullmatch(r"\t\(detected by 3, t=1\d jiffies, g=-1199, q=0\)", lines[2])
    assert out["left"] <= out["ret"], "the GP still ends, once the reader leaves"
    assert out["stats"].completed_gps == 2


def test_a_preempted_reader_task_gets_exactly_one_stall_report() -> None:
    out = _stall_run(preempt=True)
    assert out["count"] == 1
    text = out["reports"][0]
    assert text.startswith("INFO: rcu_preempt detected stalls on CPUs/tasks:\n")
    assert f"\tP{out['pid']} long_reader\n" in text
    assert out["left"] <= out["ret"]


# ====================================================================== scale, traces


def _handoffs_for_gps(nr_cpus: int) -> tuple[int, int]:
    async def body(k: Kernel) -> tuple[int, int]:
        rcu = k.rcu

        async def w(task: Task) -> None:
            for _ in range(5):
                task.charge(300 * US)
                await task.cond_resched()
                await rcu.synchronize_rcu(task)

        h0 = k.sim.handoffs
        for c in range(4):
            k.spawn(w, c)
        await k.run()
        return k.sim.handoffs - h0, rcu.statistics().completed_gps

    return run_sim(body, nr_cpus=nr_cpus)


def test_idle_cpus_cost_a_grace_period_nothing() -> None:
    small, gps_small = _handoffs_for_gps(16)
    big, gps_big = _handoffs_for_gps(1024)
    assert gps_small == gps_big == 5
    assert big <= small + 2, (small, big)


def test_traces_use_the_kernel_wording() -> None:
    async def body(k: Kernel) -> list[Any]:
        rcu = k.rcu
        k.tracer.enable()

        def my_cb(task: Task, head: RcuHead) -> None:
            pass

        async def w(task: Task) -> None:
            rcu.call_rcu(task, RcuHead(), my_cb)
            await rcu.synchronize_rcu(task)
            await rcu.rcu_barrier(task)

        async def busy(task: Task) -> None:
            for _ in range(5):
                task.charge(400 * US)
                await task.cond_resched()

        k.spawn(busy, 1)
        k.spawn(w, 0)
        await k.run()
        return list(k.tracer.events)

    events = run_sim(body, nr_cpus=3, preempt_rcu=True)
    gp = [e.fields for e in events if e.name == "rcu_grace_period"]
    assert gp[:2] == ["rcu_preempt -1199 start", "rcu_preempt -1199 cpustart"]
    assert "rcu_preempt -1199 cpuqs" in gp and "rcu_preempt -1196 end" in gp
    cb = next(e for e in events if e.name == "rcu_callback")
    assert re.fullmatch(r"rcu_preempt rhp=0xffff8880[0-9a-f]{8} func=\S*my_cb 1", cb.fields)
    inv = next(e for e in events if e.name == "rcu_invoke_callback")
    assert inv.fields == cb.fields.rsplit(" ", 1)[0] and inv.comm == "rcuc/0"
    sl = next(e for e in events if e.name == "rcu_gp")
    assert (sl.ph, sl.track) == ("X", "rcu_gp") and sl.dur_ns > 0
    assert sl.fields == "rcu_preempt g=-1196"


def test_each_cpu_prints_its_own_cpustart_before_its_cpuqs() -> None:
    """``rcu_gp_init()`` calls ``__note_gp_changes()`` only for the rcu_data of its own CPU
    (``if (rnp == rdp->mynode)``, one leaf node below CONFIG_RCU_FANOUT_LEAF CPUs), which
    prints that CPU's ``cpustart``; every other CPU prints its own when its ``rcu_core()`` runs
    ``note_gp_changes()``, before it can report ``cpuqs`` (v5.9 and v6.1
    ``kernel/rcu/tree.c``)."""

    async def body(k: Kernel) -> list[Any]:
        rcu = k.rcu
        k.tracer.enable(frozenset({"rcu_grace_period"}))

        async def busy(task: Task) -> None:
            for _ in range(8):
                task.charge(300 * US)
                await task.cond_resched()

        async def w(task: Task) -> None:
            for _ in range(2):
                await rcu.synchronize_rcu(task)

        for cpu in (1, 2, 3):
            k.spawn(busy, cpu)
        k.spawn(w, 0)
        await k.run()
        return list(k.tracer.events)

    events = run_sim(body, nr_cpus=4)
    gps = [e for e in events if e.name == "rcu_grace_period"]
    starts = [e for e in gps if e.fields.endswith(" start")]
    assert len(starts) >= 2
    for start in starts:
        g = start.fields.split()[1]
        mine = [e for e in gps if e.fields.split()[1] == g]
        cpustarts = [e for e in mine if e.fields.endswith(" cpustart")]
        # the GP kthread prints one, for its own CPU, at rcu_gp_init()
        by_kthread = [e for e in cpustarts if e.comm == start.comm]
        assert [(e.cpu, e.ts_ns) for e in by_kthread] == [(start.cpu, start.ts_ns)]
        for qs in (e for e in mine if e.fields.endswith(" cpuqs")):
            own = [e for e in cpustarts if e.cpu == qs.cpu]
            assert own and own[0].ts_ns <= qs.ts_ns, (qs, cpustarts)
            assert own[0].comm == qs.comm or own[0].comm == start.comm
        assert len({e.cpu for e in cpustarts}) == len(cpustarts)  # once per CPU per GP


def test_runs_are_deterministic() -> None:
    def once() -> list[tuple[int, int, str, str]]:
        async def body(k: Kernel) -> list[tuple[int, int, str, str]]:
            rcu = k.rcu
            k.tracer.enable()

            async def w(task: Task) -> None:
                for i in range(4):
                    with rcu.read_lock(task):
                        task.charge(200 * US * (task.cpu.id + 1))
                        await task.sleep_ns(100 * US)
                    rcu.call_rcu(task, RcuHead(), lambda t, h: None)
                    if i % 2:
                        await rcu.synchronize_rcu(task)
                await rcu.rcu_barrier(task)

            await k.run_on_cpus(w)
            return [(e.ts_ns, e.cpu, e.name, e.fields) for e in k.tracer.events]

        return run_sim(body, nr_cpus=4, preempt_rcu=True)

    a, b = once(), once()
    assert a == b and len(a) > 50


def test_statistics_is_a_frozen_snapshot() -> None:
    async def body(k: Kernel) -> Any:
        return k.rcu.statistics()

    st = run_sim(body, nr_cpus=2)
    assert st.gp_seq == RCU_GP_SEQ_INIT and st.cpus_online == 2
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        st.completed_gps = 3


# ====================================================================== local time


def _ahead(announce_case: bool) -> dict[str, Any]:
    """A CPU that ran ahead snapshots gp_seq before the GP kthread, further back, starts a GP.

    CPU 3's task lets the GP kthread run at 3 ms; CPU 0 queues a callback at 9 ms (before, in
    the order things run, the kthread starts). A GP started at 3 ms must not satisfy it: the
    reader on CPU 1 that entered at 5 ms (idle at 3 ms) could hold the old data. In the second
    case CPU 2 queues at 15 ms while the kthread already announced its start.
    """

    async def body(k: Kernel) -> dict[str, Any]:
        rcu = k.rcu
        out: dict[str, Any] = {"cbs": []}

        class Head(RcuHead):
            __slots__ = ("queued",)

            def __init__(self, queued: int) -> None:
                super().__init__(None)
                self.queued = queued

        def cb(task: Task, head: RcuHead) -> None:
            assert isinstance(head, Head)
            out["cbs"].append((head.queued, task.now_ns))

        def queue(task: Task) -> None:
            rcu.call_rcu(task, Head(task.now_ns), cb)

        async def busy_last(task: Task) -> None:
            task.charge(3 * MS)
            await task.sleep_ns(100 * MS)

        async def ahead(task: Task) -> None:
            task.charge(9 * MS)
            queue(task)
            await task.sleep_ns(100 * MS)

        async def ahead2(task: Task) -> None:
            await task.sleep_ns(4 * MS)
            task.charge(11 * MS)
            queue(task)
            await task.sleep_ns(100 * MS)

        async def reader(task: Task) -> None:
            await task.sleep_ns((10 if announce_case else 5) * MS)
            s = task.now_ns
            with rcu.read_lock(task):
                task.charge(2 * MS)
                await task.sync()
                task.charge(18 * MS)
            out["reader"] = (s, task.now_ns)

        k.spawn(busy_last, 3)
        k.spawn(ahead, 0)
        k.spawn(reader, 1)
        if announce_case:
            k.spawn(ahead2, 2)
        await k.run()

        async def drain(task: Task) -> None:
            await rcu.rcu_barrier(task)

        k.spawn(drain, 0)
        await k.run()
        return out

    return run_sim(body, nr_cpus=4, hz=100)


@pytest.mark.parametrize("announce_case", [False, True])
def test_a_snapshot_from_a_cpu_running_ahead_is_not_satisfied_by_an_older_gp(
    announce_case: bool,
) -> None:
    out = _ahead(announce_case)
    rs, re_ = out["reader"]
    assert len(out["cbs"]) == (2 if announce_case else 1)
    checked = 0
    for queued, ran in out["cbs"]:
        if rs < queued:
            checked += 1
            assert re_ <= ran, f"callback queued at {queued} ran at {ran} inside [{rs}, {re_}]"
    assert checked == 1


# -- CONFIG_DEBUG_OBJECTS_RCU_HEAD: an rcu_head queued twice ---------------------------------------


@pytest.mark.parametrize("debug", [False, True])
def test_double_call_rcu_is_reported_and_dropped_with_debug_objects(debug: bool) -> None:
    """``__call_rcu()`` (v5.9 and v6.1, kernel/rcu/tree.c) starts with
    ``debug_rcu_head_queue(head)`` (kernel/rcu/rcu.h: ``debug_object_activate()``): with
    CONFIG_DEBUG_OBJECTS_RCU_HEAD a head still queued is refused, "Double-freed CB %p->%pS()!!!"
    is printed (v5.9 WARN_ONCE; v5.12+ pr_err for the first three), the queued head's func is
    set to ``rcu_leak_callback`` and the second call returns without queueing. So neither
    callback runs (the object leaks instead of being freed twice). ``rcu_do_batch()``'s
    ``debug_rcu_head_unqueue()`` lets an invoked head be queued again. Without the option the
    head is linked twice and its callback runs twice."""

    async def body(k: Kernel) -> dict[str, Any]:
        rcu = k.rcu
        ran: list[str] = []

        def first(task: Task, head: RcuHead) -> None:
            ran.append("first")

        def second(task: Task, head: RcuHead) -> None:
            ran.append("second")

        h = RcuHead()

        async def w(task: Task) -> None:
            rcu.call_rcu(task, h, first)
            rcu.call_rcu(task, h, second)
            await rcu.rcu_barrier(task)
            rcu.call_rcu(task, h, second)  # invoked (or leaked) already: a fresh queueing
            await rcu.rcu_barrier(task)

        k.spawn(w, 0)
        await k.run()
        return {
            "ran": ran,
            "stats": rcu.statistics(),
            "reports": list(rcu.cbs.double_call_rcu_reports),
        }

    out = run_sim(body, nr_cpus=2, **{"kvfree.debug_objects": debug})
    st = out["stats"]
    if debug:
        assert out["ran"] == ["second"]
        assert st.double_call_rcu == 1
        assert st.callbacks_queued == st.callbacks_invoked
        (msg,) = out["reports"]
        assert re.match(r"__call_rcu\(\): Double-freed CB 0x[0-9a-f]+->.*first\(\)!!!", msg)
    else:
        # the same head linked twice: the list holds it twice and the second func runs twice
        assert out["ran"] == ["second", "second", "second"]
        assert st.double_call_rcu == 0 and not out["reports"]


@pytest.mark.parametrize(("profile", "printed"), [("v5.9", 1), ("v6.1", 3)])
def test_double_call_rcu_reports_are_limited_like_the_kernels(profile: str, printed: int) -> None:
    """v5.9 ``__call_rcu()`` reports a double-queued head with ``WARN_ONCE`` (kernel/rcu/tree.c);
    from v5.12 ("rcu: Make call_rcu() print mem_dump_obj() info for double-freed callback")
    it prints while ``atomic_inc_return(&doublefrees) < 4``, so v6.1 prints the first three.
    Every one is counted and dropped."""

    async def body(k: Kernel) -> tuple[int, int, int]:
        rcu = k.rcu
        heads = [RcuHead() for _ in range(5)]

        async def w(task: Task) -> None:
            for h in heads:
                rcu.call_rcu(task, h, lambda t, hd: None)
                rcu.call_rcu(task, h, lambda t, hd: None)
            await rcu.rcu_barrier(task)

        k.spawn(w, 1)
        await k.run()
        st = rcu.statistics()
        return st.double_call_rcu, len(rcu.cbs.double_call_rcu_reports), st.callbacks_pending

    doubles, reports, pending = run_sim(
        body, nr_cpus=2, **{"kvfree.debug_objects": True, "kvfree.profile": profile}
    )
    assert (doubles, reports, pending) == (5, printed, 0)
