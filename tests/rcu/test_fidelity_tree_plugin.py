"""Fidelity of preemptible RCU's blocked readers (``rcukit.rcu.tree_plugin``) to
``kernel/rcu/tree_plugin.h`` and ``rcu_gp_init()`` (kernel/rcu/tree.c), CONFIG_PREEMPT_RCU,
v5.9-v6.x, as summarised in kernel.md section 6 ("With PREEMPT_RCU, readers preempted inside
a critical section keep blocking the GP through ``rnp->blkd_tasks``").
"""

from __future__ import annotations

from simtools import MS, US, Kernel, run_sim

from rcukit.sched.sim import Task


def test_a_reader_preempted_before_a_gp_starts_blocks_it_until_it_unlocks() -> None:
    """``rcu_note_context_switch()`` -> ``rcu_preempt_ctxt_queue()`` puts a task switched out
    inside a read section on ``rnp->blkd_tasks``; ``rcu_gp_init()`` points ``rnp->gp_tasks`` at
    it when the next GP starts, so that GP cannot end before the task's outermost
    ``rcu_read_unlock()`` -> ``rcu_read_unlock_special()`` -> ``rcu_report_unblock_qs_rnp()``,
    although its CPU is idle (quiescent) meanwhile."""

    async def body(k: Kernel) -> dict[str, int]:
        rcu = k.rcu
        out: dict[str, int] = {}

        async def reader(task: Task) -> None:
            with rcu.read_lock(task):
                await task.sleep_ns(20 * MS)
                out["blocked"] = rcu.statistics().blocked_readers
            out["unlock"] = task.now_ns

        async def updater(task: Task) -> None:
            await task.sleep_ns(1 * MS)
            await rcu.synchronize_rcu(task)
            out["ret"] = task.now_ns

        k.spawn(reader, 1)
        k.spawn(updater, 0)
        await k.run()
        out["splats"] = sum(k.splat_counts().values())
        return out

    out = run_sim(body, nr_cpus=2, preempt_rcu=True)
    assert out["blocked"] == 1 and out["splats"] == 0
    assert out["unlock"] <= out["ret"] < out["unlock"] + 5 * MS


def test_a_reader_preempted_after_its_cpu_reported_does_not_block_that_gp() -> None:
    """``rcu_preempt_ctxt_queue()`` (kernel/rcu/tree_plugin.h) makes a newly blocked reader
    block the current GP only if its CPU has not yet reported a quiescent state for it
    (``rnp->qsmask & rdp->grpmask``); otherwise the task is queued for later GPs only. A GP
    whose CPUs have all reported ends while that reader is still switched out; a GP started
    afterwards waits for it."""

    async def body(k: Kernel) -> dict[str, int]:
        rcu = k.rcu
        out: dict[str, int] = {}

        async def long_reader(task: Task) -> None:  # running, never switched out: holds GP 1
            with rcu.read_lock(task):
                for _ in range(10):
                    task.charge(1 * MS)
                    await task.sync()
            out["long_unlock"] = task.now_ns

        async def busy_then_reader(task: Task) -> None:
            for _ in range(10):  # ticks and schedule points: CPU 1 reports its QS
                task.charge(500 * US)
                await task.cond_resched()
            with rcu.read_lock(task):
                out["lock"] = task.now_ns
                await task.sleep_ns(50 * MS)
            out["unlock"] = task.now_ns

        async def updater(task: Task) -> None:
            await task.sleep_ns(1 * MS)
            out["gp1_start"] = task.now_ns
            await rcu.synchronize_rcu(task)
            out["gp1_ret"] = task.now_ns
            await task.sleep_ns(10 * MS)
            await rcu.synchronize_rcu(task)
            out["gp2_ret"] = task.now_ns

        k.tracer.enable(["rcu_grace_period"])
        k.spawn(long_reader, 2)
        k.spawn(busy_then_reader, 1)
        k.spawn(updater, 0)
        await k.run()
        ends = [e.ts_ns for e in k.tracer.events if e.fields.endswith(" end")]
        out["gp1_end"] = ends[0]
        return out

    out = run_sim(body, nr_cpus=4, preempt_rcu=True)
    assert out["gp1_start"] < out["lock"] < out["long_unlock"] <= out["gp1_end"]
    assert out["gp1_end"] <= out["gp1_ret"] < out["unlock"]
    assert out["gp2_ret"] >= out["unlock"]
