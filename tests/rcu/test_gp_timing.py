"""Grace-period timing: FQS scans find idle CPUs, callbacks run on a later tick (kernel.md §8.6).

The kernel's GP kthread (``rcu_gp_kthread`` -> ``rcu_gp_fqs_loop``, ``kernel/rcu/tree.c`` of v5.9
and v6.1) waits ``jiffies_till_first_fqs`` and then ``jiffies_till_next_fqs`` jiffies between
force-quiescent-state scans, or less if the last QS report wakes it. Idle CPUs report nothing
themselves: a scan finds them (``dyntick_save_progress_counter``, ``rcu_implicit_dynticks_qs``).
After ``rcu_gp_cleanup`` each CPU notices the end on its next tick (``rcu_sched_clock_irq`` ->
``rcu_pending`` -> ``invoke_rcu_core``) and ``rcu_do_batch`` invokes at most its batch limit.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from simtools import MS, US, Kernel, run_sim

from rcukit.rcu.gpcore import signed_seq
from rcukit.rcu.segcblist import RcuHead
from rcukit.rcu.tree import rcu_jiffies_till_force_qs
from rcukit.sched.sim import Task

_GP_EVENTS = frozenset({"rcu_grace_period", "rcu_fqs", "rcu_batch_start", "rcu_invoke_callback"})


def _gps(events: list[Any]) -> list[tuple[int, int, int, int]]:
    """(gp_seq while running, gp_seq after it, start ns, end ns) of every normal GP traced."""
    out = []
    start = (0, 0)
    for e in events:
        if e.name != "rcu_grace_period":
            continue
        _, g, what = e.fields.split()
        if what == "start":
            start = (int(g), e.ts_ns)
        elif what == "end":  # one normal GP at a time
            out.append((start[0], int(g), start[1], e.ts_ns))
    return out


@pytest.mark.parametrize(
    ("hz", "nr_cpus", "expected"),
    [(1000, 4, 3), (300, 4, 2), (250, 4, 1), (100, 4, 1), (1000, 256, 4), (1000, 600, 5)],
)
def test_jiffies_till_fqs_defaults_are_the_kernels(hz: int, nr_cpus: int, expected: int) -> None:
    """``rcu_init_geometry`` (``kernel/rcu/tree.c``, v5.9 and v6.1): both FQS delays default to
    ``RCU_JIFFIES_TILL_FORCE_QS + nr_cpu_ids / RCU_JIFFIES_FQS_DIV``, where
    ``RCU_JIFFIES_TILL_FORCE_QS`` is ``1 + (HZ > 250) + (HZ > 500)`` and the divisor 256
    (``kernel/rcu/tree.h``): 3 jiffies at HZ=1000 on a small machine."""

    async def body(k: Kernel) -> tuple[int, int]:
        return k.rcu.jiffies_till_first_fqs, k.rcu.jiffies_till_next_fqs

    assert rcu_jiffies_till_force_qs(hz) + nr_cpus // 256 == expected
    assert run_sim(body, nr_cpus=nr_cpus, hz=hz) == (expected, expected)


@pytest.mark.parametrize("hz", [1000, 250])
def test_a_gp_with_an_idle_cpu_lasts_until_the_first_fqs_scan(hz: int) -> None:
    """Idle (dyntick-idle) CPUs do not report a QS: the GP kthread's first FQS scan
    (``rcu_gp_fqs(first_time)`` -> ``force_qs_rnp(dyntick_save_progress_counter)``) finds them
    ``jiffies_till_first_fqs`` jiffies after ``rcu_gp_fqs_loop`` set
    ``jiffies_force_qs = jiffies + j`` (v5.9 and v6.1 ``kernel/rcu/tree.c``). So a GP with an
    idle CPU lasts that many jiffies (as ``gp_end - gp_start`` counts them), and ends at that
    scan when the scan clears the last holdout."""

    async def body(k: Kernel) -> dict[str, Any]:
        rcu = k.rcu
        k.tracer.enable(_GP_EVENTS)

        async def w(task: Task) -> None:
            task.charge(300 * US)
            await rcu.synchronize_rcu(task)  # this CPU goes idle while it waits

        k.spawn(w, 0)
        await k.run()
        return {"events": list(k.tracer.events), "stats": rcu.statistics(),
                "first": rcu.jiffies_till_first_fqs, "durations": rcu.gp_durations_ns()}

    out = run_sim(body, nr_cpus=4, hz=hz)
    tick = 1_000_000_000 // hz
    [(g, _, start, end)] = _gps(out["events"])
    first = out["first"]
    assert end // tick - start // tick >= first, "the GP outlived jiffies_till_first_fqs"
    assert end - start < (first + 1) * tick, "and ended at the first scan"
    fqs = [e.fields for e in out["events"] if e.name == "rcu_fqs"]
    # CPU 3 runs the GP kthread; the caller's CPU 0 and CPUs 1-2 are idle, found by the scan.
    assert fqs == [f"rcu_sched {g} {c} dti" for c in (0, 1, 2)]
    st_ = out["stats"]
    assert st_.fqs_scans == 1 and st_.completed_gps == 1
    assert out["durations"] == [end - start]
    assert st_.gp_duration_p50_ns == st_.gp_duration_max_ns == end - start


def test_synchronize_rcu_returns_on_the_callers_first_tick_after_the_gp_end() -> None:
    """``synchronize_rcu`` is ``wait_rcu_gp(call_rcu)``: its ``wakeme_after_rcu`` callback
    completes the wait, and that callback runs from the caller's CPU's first tick after
    ``rcu_gp_cleanup`` (v5.9 and v6.1 ``kernel/rcu/update.c`` ``__wait_rcu_gp``,
    ``kernel/rcu/tree.c`` ``rcu_sched_clock_irq``)."""

    async def body(k: Kernel) -> dict[str, Any]:
        rcu = k.rcu
        k.tracer.enable(_GP_EVENTS)
        out: dict[str, Any] = {}

        async def w(task: Task) -> None:
            task.charge(300 * US)
            await rcu.synchronize_rcu(task)
            out["ret"] = task.now_ns

        k.spawn(w, 0)
        await k.run()
        out["events"] = list(k.tracer.events)
        return out

    out = run_sim(body, nr_cpus=2)
    [(_, _, _, end)] = _gps(out["events"])
    next_tick = (end // MS + 1) * MS
    assert next_tick <= out["ret"] < next_tick + 10 * US


@pytest.mark.parametrize("preempt", [False, True])
def test_a_gp_whose_cpus_are_all_busy_ends_on_their_ticks(preempt: bool) -> None:
    """Busy CPUs pass a QS at their schedule points and ticks (``rcu_note_context_switch``,
    ``rcu_all_qs``, ``rcu_flavor_sched_clock_irq``); the last report wakes the GP kthread
    early (``rcu_report_qs_rsp`` -> ``rcu_gp_kthread_wake``; ``rcu_gp_fqs_check_wake`` sees
    ``qsmask`` clear), so the GP ends on their ticks with no FQS scan (v5.9 and v6.1
    ``kernel/rcu/tree.c``)."""

    async def body(k: Kernel) -> dict[str, Any]:
        rcu = k.rcu
        k.tracer.enable(_GP_EVENTS)
        out: dict[str, Any] = {}

        async def busy(task: Task) -> None:
            while task.now_ns < 10 * MS:
                task.charge(50 * US)
                await task.cond_resched()

        async def poller(task: Task) -> None:
            task.charge(1500 * US)
            await task.cond_resched()
            cookie = rcu.start_poll_synchronize_rcu(task)
            while not rcu.poll_state_synchronize_rcu(cookie):  # busy, never idle
                task.charge(50 * US)
                await task.cond_resched()
            out["done"] = task.now_ns
            await busy(task)

        for c in (1, 2, 3):
            k.spawn(busy, c)
        k.spawn(poller, 0)
        await k.run()
        out["events"] = list(k.tracer.events)
        out["stats"] = rcu.statistics()
        out["first"] = rcu.jiffies_till_first_fqs
        return out

    out = run_sim(body, nr_cpus=4, preempt_rcu=preempt)
    [(_, _, start, end)] = _gps(out["events"])
    assert end - start < 2 * MS, "each busy CPU reported at its next tick"
    assert end - start < out["first"] * MS
    assert out["stats"].fqs_scans == 0
    assert not [e for e in out["events"] if e.name == "rcu_fqs"]
    assert out["stats"].qs_reports == 3, "CPUs 0-2; CPU 3 runs the GP kthread"
    assert end <= out["done"]


@pytest.mark.parametrize("queuer_busy", [True, False])
def test_callbacks_run_on_a_tick_after_the_gp_end_at_most_blimit_per_batch(
    queuer_busy: bool,
) -> None:
    """``rcu_gp_cleanup`` only advances ``gp_seq``; the CPU notices on its next tick
    (``rcu_sched_clock_irq`` -> ``rcu_pending`` -> ``invoke_rcu_core``; an idle CPU with
    callbacks keeps its tick, ``rcu_needs_cpu``), and each ``rcu_do_batch`` invokes at most
    ``blimit`` (10) callbacks while fewer than ``qhimark`` are queued, re-invoking RCU core for
    the rest (v5.9 and v6.1 ``kernel/rcu/tree.c``)."""

    async def body(k: Kernel) -> dict[str, Any]:
        rcu = k.rcu
        k.tracer.enable(_GP_EVENTS)
        ran: list[tuple[int, int]] = []

        def cb(task: Task, head: RcuHead) -> None:
            ran.append((task.now_ns, task.cpu.id))
            task.charge(1 * US)

        async def w(task: Task) -> None:
            task.charge(200 * US)
            for _ in range(25):
                rcu.call_rcu(task, RcuHead(), cb)
            if queuer_busy:
                while task.now_ns < 12 * MS:
                    task.charge(50 * US)
                    await task.cond_resched()
            else:
                await task.sleep_ns(12 * MS)

        k.spawn(w, 0)
        await k.run()
        return {"ran": ran, "events": list(k.tracer.events)}

    out = run_sim(body, nr_cpus=2)
    [(_, _, _, end)] = _gps(out["events"])
    ran = out["ran"]
    assert len(ran) == 25 and {cpu for _, cpu in ran} == {0}
    next_tick = (end // MS + 1) * MS
    assert ran[0][0] >= next_tick, "callbacks start on the CPU's first tick after the GP end"
    # Count the invocations between consecutive rcu_batch_start events.
    sizes: list[int] = []
    for e in out["events"]:
        if e.name == "rcu_batch_start":
            assert e.fields.endswith(" bl=10")
            sizes.append(0)
        elif e.name == "rcu_invoke_callback":
            sizes[-1] += 1
    assert sizes == [10, 10, 5]


ops = st.lists(
    st.tuples(
        st.sampled_from(["call", "busy", "sleep", "sync"]),
        st.integers(1, 2_500),  # microseconds, or callbacks for "call"
    ),
    max_size=8,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nr_cpus=st.integers(2, 4), plans=st.lists(ops, min_size=1, max_size=4),
       preempt=st.booleans())
@example(nr_cpus=2, plans=[[("busy", 1001)], [("call", 157), ("busy", 904), ("call", 1143),
                                              ("busy", 956)]], preempt=False)
# rcuc/0 finished a batch just before another CPU ended the next GP: rcu_do_batch() raises
# RCU_SOFTIRQ again only while ready callbacks remain, so the rest wait for CPU 0's tick
@example(nr_cpus=2, plans=[[("call", 1), ("busy", 1), ("call", 1), ("busy", 1901)],
                           [("busy", 1)], []], preempt=False)
# CPU 1's softirq was still working through a blimit-limited backlog when the GP of its last
# callback ended 40 ns earlier: the re-raised rcu_core() notices it and invokes it at once
@example(nr_cpus=2, plans=[[("busy", 1), ("busy", 851)], [("call", 21), ("busy", 1), ("call", 1)],
                           [("busy", 1)], [("sync", 1)]], preempt=False)
def test_no_callback_runs_before_its_gp_ends_or_before_its_cpus_next_tick(
    nr_cpus: int, plans: list[list[tuple[str, int]]], preempt: bool
) -> None:
    """Whatever the mix of busy, idle and waiting CPUs, a callback runs only after the GP its
    ``call_rcu`` needed ended (``rcu_seq_snap`` at enqueue, ``rcu_seq_done`` at invocation:
    ``kernel/rcu/rcu.h``), and not before its CPU's first tick after that end
    (``rcu_sched_clock_irq`` -> ``invoke_rcu_core``, v5.9 and v6.1 ``kernel/rcu/tree.c``)
    unless that CPU was already in ``rcu_core()`` when the GP ended: ``rcu_do_batch()`` raises
    RCU_SOFTIRQ again while ready callbacks remain, and the next ``rcu_core()`` calls
    ``rcu_check_quiescent_state()`` -> ``note_gp_changes()``, which advances the callbacks of a
    GP that ended meanwhile, so ``rcu_do_batch()`` invokes them in the same softirq run."""

    async def body(k: Kernel) -> dict[str, Any]:
        rcu = k.rcu
        k.tracer.enable(frozenset({"rcu_grace_period", "rcu_batch_start", "rcu_batch_end"}))
        ran: list[tuple[int, int, bool, int]] = []

        def make_cb(cookie: int) -> Any:
            def cb(task: Task, head: RcuHead) -> None:
                ran.append((task.now_ns, signed_seq(cookie),
                            rcu.poll_state_synchronize_rcu(cookie), task.cpu.id))
            return cb

        def plan_fn(plan: list[tuple[str, int]]) -> Any:
            async def run(task: Task) -> None:
                for op, n in plan:
                    if op == "call":
                        for _ in range(n):
                            rcu.call_rcu(task, RcuHead(), make_cb(
                                rcu.get_state_synchronize_rcu(task)))
                    elif op == "busy":
                        end = task.now_ns + n * US
                        while task.now_ns < end:
                            task.charge(50 * US)
                            await task.cond_resched()
                    elif op == "sleep":
                        await task.sleep_ns(n * US)
                    else:
                        await rcu.synchronize_rcu(task)
                await rcu.rcu_barrier(task)
            return run

        for i, plan in enumerate(plans):
            k.spawn(plan_fn(plan), i % nr_cpus)
        await k.run()
        return {"ran": ran, "events": list(k.tracer.events), "stats": rcu.statistics()}

    out = run_sim(body, nr_cpus=nr_cpus, preempt_rcu=preempt)
    ends = [(g, end) for _, g, _, end in _gps(out["events"])]
    # (cpu, start, blimit, invoked) of every batch: a batch that invoked its whole blimit
    # left ready callbacks behind, so its softirq went on
    batches: list[list[int]] = []
    for e in out["events"]:
        if e.name == "rcu_batch_start":
            batches.append([e.cpu, e.ts_ns, int(e.fields.rsplit("bl=", 1)[1]), -1])
        elif e.name == "rcu_batch_end":
            [open_] = [b for b in batches if b[0] == e.cpu and b[3] < 0]
            open_[3] = int(e.fields.rsplit("CBs-invoked=", 1)[1])
    for t, cookie, done, cpu in out["ran"]:
        assert done, "a callback ran before its grace period"
        end = min(e for g, e in ends if g >= cookie)
        # The first tick at or after the end: a GP that ends at a tick's own instant (its QS
        # came from another CPU's tick then) is seen by a later CPU's tick of that instant.
        tick = -(-end // MS) * MS
        if t < tick:
            # only in a softirq run under way when the GP ended: a full batch of it (ready
            # callbacks left, RCU_SOFTIRQ raised again) began on this CPU at or after the last
            # tick before the end, and before the end
            assert any(
                c == cpu and tick - MS <= s < end and invoked == bl
                for c, s, bl, invoked in batches
            ), (t, end, cpu)
    st_ = out["stats"]
    assert st_.callbacks_invoked == st_.callbacks_queued


@pytest.mark.parametrize("preempt", [False, True])
def test_a_cpu_idle_at_the_gp_start_but_running_at_the_first_scan_owes_a_qs(
    preempt: bool,
) -> None:
    """``dyntick_save_progress_counter`` (first FQS scan) clears only the CPUs in an extended
    QS at that moment; one that left idle after the GP started stays in ``qsmask`` and must
    pass a QS, so its reader holds the GP even though it began after the GP start. A CPU still
    idle at the first scan is cleared and its later reader is not waited for (v5.9 and v6.1
    ``kernel/rcu/tree.c``, ``rcu_gp_fqs``, ``force_qs_rnp``)."""

    async def body(k: Kernel) -> dict[str, Any]:
        rcu = k.rcu
        k.tracer.enable(_GP_EVENTS)
        out: dict[str, Any] = {}

        async def reader(task: Task, wake_ns: int, length_ns: int, key: str) -> None:
            await task.sleep_ns(wake_ns)
            with rcu.read_lock(task):
                end = task.now_ns + length_ns
                while task.now_ns < end:
                    task.charge(100 * US)
                    await task.sync()
            out[key] = task.now_ns
            for _ in range(20):  # schedule points: a QS outside the reader
                task.charge(100 * US)
                await task.cond_resched()

        async def early(task: Task) -> None:
            await reader(task, 1 * MS, 8 * MS, "early_end")  # wakes before the first scan

        async def late(task: Task) -> None:
            await reader(task, 4500 * US, 20 * MS, "late_end")  # idle at the first scan

        async def w(task: Task) -> None:
            task.charge(300 * US)
            await rcu.synchronize_rcu(task)

        k.spawn(early, 1)
        k.spawn(late, 2)
        k.spawn(w, 0)
        await k.run()
        out["events"] = list(k.tracer.events)
        out["stats"] = rcu.statistics()
        return out

    out = run_sim(body, nr_cpus=4, preempt_rcu=preempt)
    [(_, _, start, end)] = _gps(out["events"])
    assert start < 1 * MS, "CPU 1 was idle when the GP started"
    assert out["early_end"] <= end < out["late_end"]
    assert out["stats"].fqs_scans >= 2
