"""CPU hotplug and RCU: callbacks migrate and run exactly once, never early; tasks move on."""

from __future__ import annotations

from typing import Any

import pytest
from simtools import MS, US, Kernel, run_sim

from rcukit.errors import CpuHotplugError, RcukitError
from rcukit.rcu.segcblist import RcuHead
from rcukit.sched.sim import Task


class Cb(RcuHead):
    __slots__ = ("cookie", "n", "queued", "ran_cpu", "ran_ns")

    def __init__(self) -> None:
        super().__init__(None)
        self.n = 0
        self.cookie = 0
        self.queued = 0
        self.ran_ns = -1
        self.ran_cpu = -1


def _queue(k: Kernel, task: Task, cbs: list[Cb], n: int, cost_ns: int = 0) -> None:
    rcu = k.rcu

    def fn(t: Task, head: RcuHead) -> None:
        assert isinstance(head, Cb)
        head.n += 1
        head.ran_ns = t.now_ns
        head.ran_cpu = t.cpu.id
        assert rcu.poll_state_synchronize_rcu(head.cookie), "ran before its grace period"
        t.charge(cost_ns)

    for _ in range(n):
        cb = Cb()
        cb.queued = task.now_ns
        cb.cookie = rcu.get_state_synchronize_rcu(task)
        cbs.append(cb)
        rcu.call_rcu(task, cb, fn)


@pytest.mark.parametrize("preempt", [False, True])
def test_callbacks_of_an_offlined_cpu_run_once_after_their_gp(preempt: bool) -> None:
    async def body(k: Kernel) -> dict[str, Any]:
        rcu = k.rcu
        cbs: list[Cb] = []
        later: list[Cb] = []
        out: dict[str, Any] = {"events": [], "online": []}

        def on_hotplug(task: Task, cpu: int, online: bool) -> None:
            out["events"].append((task.comm, cpu, online))

        rcu.add_hotplug_callback(on_hotplug)

        async def reader(task: Task) -> None:
            s = task.now_ns
            with rcu.read_lock(task):
                for _ in range(16):
                    task.charge(500 * US)
                    await task.sync()
            out["reader"] = (s, task.now_ns)

        async def queuer(task: Task) -> None:
            task.charge(200 * US)
            _queue(k, task, cbs, 40)
            await task.sleep_ns(5 * MS)  # asleep when its CPU goes away
            out["queuer_woke_on"] = task.cpu.id

        async def again(task: Task) -> None:
            _queue(k, task, later, 5)
            await rcu.rcu_barrier(task)

        async def admin(task: Task) -> None:
            await task.sleep_ns(1 * MS)
            await rcu.cpu_down(task, 2)
            out["online"].append(rcu.statistics().cpus_online)
            await rcu.rcu_barrier(task)
            out["after_barrier"] = [c.n for c in cbs]
            await rcu.cpu_up(task, 2)
            out["online"].append(rcu.statistics().cpus_online)
            k.spawn(again, 2, "again")

        k.spawn(reader, 1)
        k.spawn(queuer, 2, "queuer")
        k.spawn(admin, 0, "admin")
        await k.run()
        out["cbs"] = cbs
        out["later"] = later
        out["stats"] = rcu.statistics()
        return out

    out = run_sim(body, nr_cpus=4, preempt_rcu=preempt)
    cbs: list[Cb] = out["cbs"]
    assert len(cbs) == 40
    assert out["after_barrier"] == [1] * 40, "every migrated callback ran exactly once"
    assert {c.ran_cpu for c in cbs} == {0}, "the CPU doing the hot-unplug adopted them"
    rs, re = out["reader"]
    assert all(rs < c.queued and re <= c.ran_ns for c in cbs)
    assert out["queuer_woke_on"] != 2
    assert [c.ran_cpu for c in out["later"]] == [2] * 5, "the CPU is usable again"
    assert all(c.n == 1 for c in out["later"])
    assert out["events"] == [("admin", 2, False), ("admin", 2, True)]
    assert out["online"] == [3, 4]
    st = out["stats"]
    assert st.callbacks_pending == 0 and st.callbacks_invoked == st.callbacks_queued


def test_offlining_a_cpu_in_the_middle_of_invoking_its_callbacks() -> None:
    async def body(k: Kernel) -> list[Cb]:
        rcu = k.rcu
        cbs: list[Cb] = []

        async def queuer(task: Task) -> None:
            _queue(k, task, cbs, 100, cost_ns=100 * US)  # 1 ms per blimit batch
            await task.sleep_ns(50 * MS)

        async def admin(task: Task) -> None:
            # Every CPU is idle, so the GP lasts until the first FQS scan (3 jiffies at HZ=1000)
            # and the callbacks start on CPU 2's next tick: unplug a few batches after that.
            await task.sleep_ns(6 * MS)
            ran = sum(c.n for c in cbs)
            assert 0 < ran < 100, f"{ran} callbacks ran before the unplug; the test needs some"
            await rcu.cpu_down(task, 2)
            await rcu.rcu_barrier(task)

        k.spawn(queuer, 2)
        k.spawn(admin, 0)
        await k.run()
        return cbs

    cbs = run_sim(body, nr_cpus=4)
    assert [c.n for c in cbs] == [1] * 100
    cpus = [c.ran_cpu for c in cbs]
    assert cpus[0] == 2 and cpus[-1] == 0
    assert cpus == sorted(cpus, reverse=True), "callbacks still run in queue order"


@pytest.mark.parametrize("preempt", [False, True])
def test_a_reader_on_an_offlined_cpu_still_holds_the_gp(preempt: bool) -> None:
    async def body(k: Kernel) -> tuple[dict[str, int], dict[str, int]]:
        rcu = k.rcu
        box: dict[str, int] = {}

        async def reader(task: Task) -> None:
            with rcu.read_lock(task):
                for _ in range(20):
                    task.charge(300 * US)
                    await task.sync()
            box["end"] = task.now_ns
            box["end_cpu"] = task.cpu.id

        async def writer(task: Task) -> None:
            await task.sleep_ns(1 * MS)
            box["call"] = task.now_ns
            await rcu.synchronize_rcu(task)
            box["ret"] = task.now_ns

        async def admin(task: Task) -> None:
            await task.sleep_ns(2 * MS)
            await rcu.cpu_down(task, 2)

        k.spawn(reader, 2)
        k.spawn(writer, 1)
        k.spawn(admin, 0)
        await k.run()
        return box, k.splat_counts()

    box, splats = run_sim(body, nr_cpus=4, preempt_rcu=preempt)
    assert box["end_cpu"] == 0, "the reader finished on the CPU that took its CPU down"
    assert box["call"] < box["end"] <= box["ret"]
    assert sum(splats.values()) == 0, "being migrated is not the reader's bug"


def test_offlining_the_gp_kthreads_cpu_keeps_grace_periods_going() -> None:
    async def body(k: Kernel) -> tuple[int, int, int]:
        rcu = k.rcu

        async def w(task: Task) -> None:
            await rcu.synchronize_rcu(task)
            await rcu.cpu_down(task, 3)  # the GP kthread's CPU
            for _ in range(3):
                await rcu.synchronize_rcu(task)
            ran: list[int] = []
            rcu.call_rcu(task, RcuHead(), lambda t, h: ran.append(t.cpu.id))
            await rcu.rcu_barrier(task)
            assert ran == [0]

        k.spawn(w, 0)
        await k.run()
        kt = next(t for t in k.sim.tasks if t.comm == "rcu_sched")
        return rcu.statistics().completed_gps, kt.cpu.id, rcu.statistics().cpus_online

    gps, kt_cpu, online = run_sim(body, nr_cpus=4)
    assert gps == 4 + 1  # the barrier's callback needed one more
    assert kt_cpu != 3
    assert online == 3


def test_timers_and_runnable_tasks_of_an_offlined_cpu_carry_on() -> None:
    async def body(k: Kernel) -> dict[str, Any]:
        rcu = k.rcu
        out: dict[str, Any] = {}

        async def spinner(task: Task) -> None:
            for _ in range(40):
                task.charge(100 * US)
                await task.cond_resched()
            out["spinner_cpu"] = task.cpu.id
            out["spinner_end"] = task.now_ns

        async def sleeper(task: Task) -> None:
            await task.sleep_ns(6 * MS)
            out["sleeper"] = (task.cpu.id, task.now_ns)

        async def admin(task: Task) -> None:
            await task.sleep_ns(1 * MS)
            await rcu.cpu_down(task, 2)
            out["down_at"] = task.now_ns

        k.spawn(spinner, 2)
        k.spawn(sleeper, 2)
        k.spawn(admin, 0)
        await k.run()
        return out

    out = run_sim(body, nr_cpus=4)
    assert out["spinner_cpu"] == 0
    assert out["spinner_end"] >= 4 * MS  # all its CPU time was spent, on one CPU or the other
    cpu, t = out["sleeper"]
    assert cpu != 2 and t >= 6 * MS


def test_hotplug_misuse_is_refused_with_clear_errors() -> None:
    async def body(k: Kernel) -> list[str]:
        rcu = k.rcu
        msgs: list[str] = []

        async def admin(task: Task) -> None:
            for args in ((-1,), (2,), (True,), (0,)):
                with pytest.raises(CpuHotplugError) as exc:
                    await rcu.cpu_down(task, *args)
                msgs.append(str(exc.value))
            await rcu.cpu_down(task, 1)
            with pytest.raises(CpuHotplugError) as exc:
                await rcu.cpu_down(task, 1)
            msgs.append(str(exc.value))
            with pytest.raises(CpuHotplugError) as exc:
                await rcu.cpu_up(task, 0)
            msgs.append(str(exc.value))

        k.spawn(admin, 0, "admin")
        await k.run()

        # Now only CPU 0 is online: taking it down too is refused.
        async def refuse(task: Task) -> None:
            with pytest.raises(CpuHotplugError) as exc:
                await rcu.cpu_down(task, 0)
            msgs.append(str(exc.value))

        k.spawn(refuse, 0)
        await k.run()
        return msgs

    msgs = run_sim(body, nr_cpus=2)
    assert msgs[0] == "cpu_down(-1): no such CPU; allowed: 0 .. 1"
    assert msgs[1] == "cpu_down(2): no such CPU; allowed: 0 .. 1"
    assert msgs[2] == "cpu_down(True): no such CPU; allowed: 0 .. 1"
    assert msgs[3].startswith("cpu_down(0) called from admin/") and "on another CPU" in msgs[3]
    assert msgs[4] == "cpu_down(1): CPU 1 is already offline"
    assert msgs[5] == "cpu_up(0): CPU 0 is already online"
    assert msgs[6] == (
        "cpu_down(0): CPU 0 is the last online CPU; at least one CPU must stay online"
    )
    assert issubclass(CpuHotplugError, RcukitError) and issubclass(CpuHotplugError, ValueError)
