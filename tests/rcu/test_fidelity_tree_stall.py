"""Fidelity of RCU CPU stall warnings (``rcukit.rcu.tree_stall``) to ``kernel/rcu/tree_stall.h``.

Sources read: ``check_cpu_stall()`` of v5.9-v6.x (torvalds/linux history as quoted in the
"rcu: Do not print stall warning while printing" and later review threads on LKML, and the
v4.x/v5.x ``kernel/rcu/tree_stall.h`` copies found by the code search): the first deadline is
``rcu_state.jiffies_stall = gp_start + rcu_jiffies_till_stall_check()``
(``record_gp_stall_check_time()``); each report sets ``jn = jiffies + 3 *
rcu_jiffies_till_stall_check() + 3``.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from simtools import MS, US, Kernel, run_sim

from rcukit.sched.sim import Task


def _stuck_reader(stuck_ms: int, timeout_ms: int) -> dict[str, Any]:
    async def body(k: Kernel) -> dict[str, Any]:
        rcu = k.rcu
        out: dict[str, Any] = {}

        async def reader(task: Task) -> None:
            with rcu.read_lock(task):
                for _ in range(stuck_ms):
                    task.charge(1 * MS)
                    await task.sync()
            out["left"] = task.now_ns

        async def updater(task: Task) -> None:
            task.charge(500 * US)
            await task.cond_resched()
            out["gp_start"] = task.now_ns
            await rcu.synchronize_rcu(task)
            out["ret"] = task.now_ns
            await rcu.synchronize_rcu(task)  # a healthy GP afterwards: no report

        k.spawn(reader, 1, "stuck_reader")
        k.spawn(updater, 0)
        await k.run()
        reports = [s for s in k.locks.printed_reports if s.kind == "rcu_stall"]
        out["times"] = [s.time_ns for s in reports]
        out["stalls"] = rcu.statistics().stalls
        out["counted"] = k.splat_counts()["rcu_stall"]
        return out

    return run_sim(body, nr_cpus=4, rcu_stall_timeout_ms=timeout_ms)


def test_a_stall_that_lasts_is_reported_again_every_3_timeouts_plus_3_jiffies() -> None:
    """``check_cpu_stall()`` (kernel/rcu/tree_stall.h, v5.9-v6.x): once ``jiffies`` passes
    ``rcu_state.jiffies_stall`` (the GP start plus the stall timeout) the report is printed and
    the deadline becomes ``jiffies + 3 * rcu_jiffies_till_stall_check() + 3``, so a stall that
    goes on is reported again after three timeouts and three jiffies, until the GP ends; a
    healthy GP after it is not reported. (The kernel's timeout is whole seconds, 21 by
    default; the test uses rcukit's millisecond setting, HZ=1000.)"""
    out = _stuck_reader(stuck_ms=80, timeout_ms=10)
    times = out["times"]
    assert out["stalls"] == out["counted"] == len(times) == 3
    assert times[0] - out["gp_start"] < 11 * MS
    assert [b - a for a, b in pairwise(times)] == [33 * MS, 33 * MS]
    assert times[-1] < out["left"] <= out["ret"]


def test_a_stall_shorter_than_the_repeat_interval_is_reported_once() -> None:
    """The same rule seen from the other side: a GP that ends before ``3 * timeout + 3``
    jiffies after the first report gets exactly one (kernel/rcu/tree_stall.h
    ``check_cpu_stall()``, v5.9-v6.x)."""
    out = _stuck_reader(stuck_ms=30, timeout_ms=10)
    assert out["stalls"] == len(out["times"]) == 1
