"""Workqueues: per-CPU kworkers, pending semantics, delayed work, flush and cancel."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

import rcukit
import rcukit.sim
from rcukit.config import KernelConfig
from rcukit.kernel import Kernel
from rcukit.sched import Task
from rcukit.wq import DelayedWork, Work

TICK = 1_000_000  # HZ=1000
SWITCH = KernelConfig().cost.context_switch_ns
QUEUE = KernelConfig().cost.queue_work_ns

Seen = list[tuple[str, int, str, int]]


def recorder(seen: Seen, charge: int = 0) -> Callable[[Task, Work], Awaitable[None]]:
    """A work function that logs (work, cpu, comm, time at start) and then runs ``charge`` ns."""

    async def fn(task: Task, work: Work) -> None:
        seen.append((work.name, task.cpu.id, task.comm, task.now_ns))
        task.charge(charge)

    return fn


def run(
    body: Callable[[Kernel, Task], Awaitable[object]],
    cpus: list[int] | None = None,
    **cfg: Any,
) -> tuple[Kernel, list[Task]]:
    """Boot a 4-CPU kernel and run ``body`` as a workload task on each of ``cpus``."""
    box: dict[str, Any] = {}

    async def main() -> None:
        async with rcukit.sim.boot(KernelConfig(nr_cpus=4, **cfg)) as k:

            def make() -> Callable[[Task], Awaitable[object]]:
                async def fn(task: Task) -> object:
                    return await body(k, task)

                return fn

            tasks = [k.spawn(make(), c, f"user{c}") for c in (cpus or [0])]
            await k.run()
            box["k"], box["tasks"] = k, tasks

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return box["k"], box["tasks"]


def test_queue_work_runs_on_the_queueing_cpus_kworker() -> None:
    seen: Seen = []

    async def body(k: Kernel, t: Task) -> bool:
        w = Work(f"w{t.cpu.id}", recorder(seen))
        ok = k.system_wq.queue_work(t, w)
        assert w.pending
        assert await k.system_wq.flush_work(t, w)
        assert not w.pending and not w.running
        return ok

    k, tasks = run(body, cpus=[2, 3])
    assert [t.result for t in tasks] == [True, True]
    assert sorted((name, cpu) for name, cpu, _, _ in seen) == [("w2", 2), ("w3", 3)]
    for _, cpu, comm, _ in seen:
        assert comm.startswith(f"kworker/{cpu}:")
        assert not comm.endswith("H")
    assert k.system_wq.items_run == 2


def test_queue_work_on_another_cpu_and_highpri_naming() -> None:
    seen: Seen = []

    async def body(k: Kernel, t: Task) -> None:
        w = Work("remote", recorder(seen))
        h = Work("hi", recorder(seen))
        await t.sync()
        assert k.system_wq.queue_work(t, w, cpu=3)
        assert k.system_highpri_wq.queue_work(t, h, cpu=1)
        await k.system_wq.flush_work(t, w)
        await k.system_highpri_wq.flush_work(t, h)

    run(body, cpus=[0])
    by_name = {name: (cpu, comm) for name, cpu, comm, _ in seen}
    assert by_name["remote"][0] == 3
    assert by_name["remote"][1].startswith("kworker/3:")
    assert by_name["hi"][0] == 1
    assert by_name["hi"][1].startswith("kworker/1:")
    assert by_name["hi"][1].endswith("H")


def test_queue_twice_while_pending_returns_false() -> None:
    seen: Seen = []

    async def body(k: Kernel, t: Task) -> list[bool]:
        w = Work("w", recorder(seen))
        r = [k.system_wq.queue_work(t, w), k.system_wq.queue_work(t, w)]
        await k.system_wq.flush_work(t, w)
        r.append(k.system_wq.queue_work(t, w))  # idle again: queued again
        await k.system_wq.flush_work(t, w)
        r.append(await k.system_wq.flush_work(t, w))  # nothing left to wait for
        assert w.runs == 2
        return r

    _, tasks = run(body)
    assert tasks[0].result == [True, False, True, False]
    assert [name for name, *_ in seen] == ["w", "w"]


def test_kworker_runs_at_the_next_schedule_point_of_a_busy_cpu() -> None:
    seen: Seen = []

    async def body(k: Kernel, t: Task) -> list[int]:
        w = Work("w", recorder(seen, charge=7000))
        k.system_wq.queue_work(t, w)  # charges queue_work_ns
        t.charge(100_000)
        assert seen == []  # the caller still has the CPU
        await t.cond_resched()  # need_resched: switch to the kworker
        return [len(seen), t.now_ns]

    _, tasks = run(body)
    # Preempted at the schedule point: the switch costs context_switch_ns.
    assert seen[0][3] == QUEUE + 100_000 + SWITCH
    assert tasks[0].result == [1, QUEUE + 100_000 + SWITCH + 7000]


@pytest.mark.parametrize(("hz", "delay"), [(1000, 5), (250, 3), (100, 1)])
def test_delayed_work_fires_after_n_jiffies(hz: int, delay: int) -> None:
    seen: Seen = []
    tick = 1_000_000_000 // hz

    async def body(k: Kernel, t: Task) -> int:
        dw = DelayedWork("dw", recorder(seen))
        t.charge(1234)
        assert k.system_wq.queue_delayed_work(t, dw, delay)
        assert not k.system_wq.queue_delayed_work(t, dw, delay)  # already pending
        assert k.system_wq.delayed_work_pending(dw)
        await k.system_wq.flush_work(t, dw)
        return t.now_ns

    _, tasks = run(body, cpus=[1], hz=hz)
    assert seen == [("dw", 1, seen[0][2], 1234 + delay * tick)]
    # The flusher shares CPU 1 with the kworker: it gets the CPU back after a context switch.
    assert tasks[0].result == 1234 + delay * tick + SWITCH


def test_delayed_work_with_zero_delay_is_queued_at_once() -> None:
    seen: Seen = []

    async def body(k: Kernel, t: Task) -> None:
        dw = DelayedWork("dw0", recorder(seen))
        assert k.system_wq.queue_delayed_work(t, dw, 0)
        assert dw.queued and not dw.timer.pending
        await k.system_wq.flush_work(t, dw)

    run(body)
    assert seen[0][3] == QUEUE


def test_mod_delayed_work_pulls_a_long_delay_in() -> None:
    seen: Seen = []

    async def body(k: Kernel, t: Task) -> list[object]:
        dw = DelayedWork("dw", recorder(seen))
        r: list[object] = [k.system_wq.queue_delayed_work(t, dw, 1000)]
        t.charge(50_000)
        r.append(k.system_wq.mod_delayed_work(t, dw, 2))  # was pending: True
        await k.system_wq.flush_work(t, dw)
        r.append(t.now_ns)
        await t.sleep_ns(1200 * TICK)  # past the original expiry: no second run
        r.append(dw.runs)
        r.append(k.system_wq.mod_delayed_work(t, dw, 1))  # idle: False, but queues it
        await k.system_wq.flush_work(t, dw)
        r.append(dw.runs)
        return r

    _, tasks = run(body)
    assert tasks[0].result == [True, True, 50_000 + 2 * TICK + SWITCH, 1, False, 2]
    assert seen[0][3] == 50_000 + 2 * TICK
    assert seen[1][3] == 50_000 + SWITCH + (2 + 1200 + 1) * TICK


def test_cancel_delayed_work_sync_prevents_the_run() -> None:
    seen: Seen = []

    async def body(k: Kernel, t: Task) -> list[bool]:
        dw = DelayedWork("dw", recorder(seen))
        queued = DelayedWork("queued", recorder(seen))
        r = [k.system_wq.queue_delayed_work(t, dw, 5)]
        r.append(await k.system_wq.cancel_delayed_work_sync(t, dw))
        r.append(dw.pending)
        r.append(await k.system_wq.cancel_delayed_work_sync(t, dw))  # nothing to cancel
        # Also a work already on the pool list (delay 0), not yet run.
        r.append(k.system_wq.queue_delayed_work(t, queued, 0))
        r.append(await k.system_wq.cancel_delayed_work_sync(t, queued))
        await t.sleep_ns(10 * TICK)
        r.extend([dw.runs == 0, queued.runs == 0])
        return r

    _, tasks = run(body)
    assert tasks[0].result == [True, True, False, False, True, True, True, True]
    assert seen == []


def test_cancel_delayed_work_sync_waits_for_a_running_work() -> None:
    seen: Seen = []

    async def slow(task: Task, work: Work) -> None:
        seen.append((work.name, task.cpu.id, task.comm, task.now_ns))
        await task.sleep_ns(3 * TICK)
        task.charge(10)

    async def body(k: Kernel, t: Task) -> list[object]:
        dw = DelayedWork("slow", slow)
        await t.sync()
        k.system_wq.queue_delayed_work(t, dw, 1, cpu=1)
        await t.sleep_ns(2 * TICK)  # it is running now (asleep inside)
        await t.sync()
        running = dw.running
        was = await k.system_wq.cancel_delayed_work_sync(t, dw)
        return [running, was, dw.running, dw.runs, t.now_ns]

    _, tasks = run(body)
    # Not pending (so False), but the caller returns only once it has finished.
    assert tasks[0].result == [True, False, False, 1, TICK + 3 * TICK + 10]


def test_flush_work_waits_for_completion() -> None:
    seen: Seen = []

    async def body(k: Kernel, t: Task) -> list[object]:
        w = Work("w", recorder(seen, charge=500_000))
        await t.sync()
        k.system_wq.queue_work(t, w, cpu=1)
        t.charge(1000)
        r: list[object] = [await k.system_wq.flush_work(t, w), w.runs, t.now_ns]
        r.append(await k.system_wq.flush_work(t, w))
        return r

    _, tasks = run(body)
    start = seen[0][3]
    assert start == QUEUE
    # The flusher resumes exactly when the work finished on CPU 1.
    assert tasks[0].result == [True, 1, QUEUE + 500_000, False]


def test_work_items_run_in_fifo_order() -> None:
    seen: Seen = []

    async def body(k: Kernel, t: Task) -> None:
        works = [Work(f"w{i}", recorder(seen, charge=100)) for i in range(6)]
        for w in works:
            assert k.system_wq.queue_work(t, w)
        await k.system_wq.flush_work(t, works[-1])
        assert all(w.runs == 1 for w in works)

    run(body, cpus=[2])
    assert [name for name, *_ in seen] == [f"w{i}" for i in range(6)]
    times = [ts for *_, ts in seen]
    assert times == sorted(times)
    assert len({comm for _, _, comm, _ in seen}) == 1  # one kworker ran them all


def test_flusher_is_released_when_the_work_is_cancelled() -> None:
    async def body(k: Kernel, t: Task) -> object:
        box: dict[str, Any] = k.sim.cpus[0].data
        if t.cpu.id == 0:
            dw = box["dw"] = DelayedWork("dw", recorder([]))
            k.system_wq.queue_delayed_work(t, dw, 100)
            return await k.system_wq.flush_work(t, dw)
        t.charge(TICK)
        await t.sync()
        return await k.system_wq.cancel_delayed_work_sync(t, box["dw"])

    _, tasks = run(body, cpus=[0, 1])
    assert [t.result for t in tasks] == [True, True]
    assert tasks[0].now_ns == TICK
