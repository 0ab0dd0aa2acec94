"""Wall cost of one grace period with 1024 idle CPUs or quiescent workers, against 16.

A grace period must not look at idle CPUs (or offline QSBR workers) one by one: the kernel
snapshots the non-idle CPUs (kernel.md §6), and rcukit keeps that set, so a mostly idle
1024-CPU machine costs what a 16-CPU one does.

* **sim**: a default kernel with ``nr_cpus`` = 16 or 1024 (booted before the clock starts);
  one task on CPU 0 calls ``synchronize_rcu()`` back to back while every other CPU is idle.
* **app**: an :func:`rcukit.app.open_domain` with 16 or 1024 registered QSBR workers, each a
  Trio task parked in an extended quiescent state (``with worker.extended_qs():``, liburcu's
  ``rcu_thread_offline``); the main task calls ``synchronize_rcu()`` back to back.

Each figure is (wall time per GP at 1024) / (wall time per GP at 16), the two sizes
interleaved, best of the repetitions. ``gp_scaling_1024_vs_16`` is the worse of the two.
"""

from __future__ import annotations

import time
from typing import Any

import trio
from _common import Figure, Mode, Target

from rcukit.app import open_domain
from rcukit.config import KernelConfig
from rcukit.kernel import boot, run_sim
from rcukit.sched.sim import Task

SMALL = 16
LARGE = 1024


def sim_gp_seconds(nr_cpus: int, gps: int) -> float:
    """Wall seconds per ``synchronize_rcu()`` on a booted ``nr_cpus`` machine, CPU 0 busy."""
    box: dict[str, Any] = {}

    async def main() -> None:
        async with boot(KernelConfig(nr_cpus=nr_cpus)) as k:

            async def caller(task: Task) -> None:
                await k.rcu.synchronize_rcu(task)  # the kthreads are up and idle after this
                t0 = time.perf_counter()
                for _ in range(gps):
                    await k.rcu.synchronize_rcu(task)
                box["wall"] = time.perf_counter() - t0

            k.spawn(caller, 0, "gp_caller")
            await k.run()
            box["completed"] = k.rcu.statistics().completed_gps

    run_sim(main)
    assert box["completed"] >= gps
    return float(box["wall"]) / gps


async def app_gp_seconds(workers: int, gps: int) -> float:
    """Wall seconds per ``synchronize_rcu()`` with ``workers`` offline QSBR workers."""
    async with open_domain() as rcu:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:

            async def worker(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                with rcu.register_qsbr() as w, w.extended_qs():
                    task_status.started()
                    await stop.wait()

            for _ in range(workers):
                await nursery.start(worker)
            assert rcu.statistics().qsbr_workers == workers
            await rcu.synchronize_rcu()
            t0 = time.perf_counter()
            for _ in range(gps):
                await rcu.synchronize_rcu()
            wall = time.perf_counter() - t0
            stop.set()
    return wall / gps


def run(mode: Mode) -> list[Figure]:
    reps = mode.pick(5, 3, 1)
    sim_gps = mode.pick(200, 50, 3)
    app_gps = mode.pick(2000, 500, 10)
    sim = {SMALL: float("inf"), LARGE: float("inf")}
    app = {SMALL: float("inf"), LARGE: float("inf")}
    for _ in range(reps):
        for n in (SMALL, LARGE):
            sim[n] = min(sim[n], sim_gp_seconds(n, sim_gps))
    for _ in range(reps):
        for n in (SMALL, LARGE):
            app[n] = min(app[n], trio.run(app_gp_seconds, n, app_gps))
    sim_ratio = round(sim[LARGE] / sim[SMALL], 2)
    app_ratio = round(app[LARGE] / app[SMALL], 2)
    absolute = {
        "sim_us_per_gp_16": round(sim[SMALL] * 1e6, 2),
        "sim_us_per_gp_1024": round(sim[LARGE] * 1e6, 2),
        "app_us_per_gp_16": round(app[SMALL] * 1e6, 2),
        "app_us_per_gp_1024": round(app[LARGE] * 1e6, 2),
        "sim_gps_timed": sim_gps,
        "app_gps_timed": app_gps,
    }
    target = Target("<=", 2)
    return [
        Figure(
            "gp_scaling_1024_vs_16",
            max(sim_ratio, app_ratio),
            "x",
            target,
            absolute,
            "wall per grace period, 1024 vs 16 (the worse of sim and app below)",
        ),
        Figure(
            "gp_scaling_1024_vs_16_sim",
            sim_ratio,
            "x",
            target,
            absolute,
            "sim: synchronize_rcu() from CPU 0, 1024 vs 16 CPUs, the others idle",
        ),
        Figure(
            "gp_scaling_1024_vs_16_app",
            app_ratio,
            "x",
            target,
            absolute,
            "app: synchronize_rcu() with 1024 vs 16 registered QSBR workers, all offline",
        ),
    ]
