"""The RCU guarantee itself, checked over many random schedules (hypothesis).

Every CPU runs a reader task: read sections of random simulated length (sleeping or preempted
inside them with preemptible RCU) separated by random gaps with schedule points. Writer tasks on
random CPUs mix ``synchronize_rcu``, ``synchronize_rcu_expedited``, ``cond_synchronize_rcu``,
``call_rcu`` and ``rcu_barrier``, while CPUs go offline and come back. Afterwards, in simulated
time:

* if a read section started before a grace-period wait began (the ``synchronize_rcu`` call, the
  ``call_rcu`` enqueue), the whole section ended before the wait returned / the callback ran;
* a cookie taken when a callback was queued reads as done when the callback runs;
* ``rcu_barrier`` returns only after every callback queued before it ran.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from simtools import US, Kernel, run_sim

from rcukit.rcu.segcblist import RcuHead
from rcukit.sched.sim import Task

reader_op = st.one_of(
    st.tuples(
        st.just("read"),
        st.integers(0, 3_000 * US),  # CPU time inside the section
        st.integers(0, 4_000 * US),  # sleep inside (preemptible only)
        st.booleans(),  # nested inner section
        st.booleans(),  # sync with the other CPUs inside (as before taking a shared lock)
    ),
    st.tuples(st.just("gap"), st.integers(0, 2_000 * US), st.booleans()),  # charge, then sleep?
)

writer_op = st.one_of(
    st.tuples(st.just("sync"), st.just(0)),
    st.tuples(st.just("exp"), st.just(0)),
    st.tuples(st.just("cond"), st.integers(0, 2_000 * US)),
    st.tuples(st.just("call"), st.integers(1, 12)),
    st.tuples(st.just("barrier"), st.just(0)),
    st.tuples(st.just("gap"), st.integers(0, 3_000 * US)),
)


@st.composite
def schedules(draw: st.DrawFn) -> dict[str, Any]:
    nr_cpus = draw(st.integers(2, 4))
    return {
        "nr_cpus": nr_cpus,
        "preempt_rcu": draw(st.booleans()),
        # HZ=100 lets CPUs run up to 10 ms ahead of each other between ticks: stale views.
        "hz": draw(st.sampled_from([100, 1000])),
        "readers": [draw(st.lists(reader_op, max_size=8)) for _ in range(nr_cpus)],
        "writers": draw(
            st.lists(
                st.tuples(st.integers(0, nr_cpus - 1), st.lists(writer_op, max_size=8)),
                min_size=1,
                max_size=3,
            )
        ),
        # CPU hotplug from CPU 0: after each delay, toggle that CPU (down if online, else up).
        "hotplug": draw(
            st.lists(
                st.tuples(st.integers(0, 3_000 * US), st.integers(1, nr_cpus - 1)), max_size=4
            )
        ),
    }


class Cb(RcuHead):
    __slots__ = ("cookie", "queued_ns", "ran_ns")

    def __init__(self) -> None:
        super().__init__(None)
        self.queued_ns = 0
        self.ran_ns = -1
        self.cookie = 0


def run_schedule(sched: dict[str, Any]) -> dict[str, Any]:
    sections: list[tuple[int, int]] = []
    waits: list[tuple[str, int, int]] = []
    cbs: list[Cb] = []
    barriers: list[tuple[int, list[Cb]]] = []
    bad_cookies: list[Cb] = []

    async def body(k: Kernel) -> None:
        rcu = k.rcu
        preemptible = rcu.preemptible

        def cb_fn(task: Task, head: RcuHead) -> None:
            assert isinstance(head, Cb)
            head.ran_ns = task.now_ns
            if not rcu.poll_state_synchronize_rcu(head.cookie):
                bad_cookies.append(head)

        async def reader(task: Task) -> None:
            for op in sched["readers"][task.cpu.id]:
                if op[0] == "read":
                    _, cpu_ns, sleep_ns, nested, sync_inside = op
                    start = task.now_ns
                    with rcu.read_lock(task):
                        task.charge(cpu_ns // 2)
                        if sync_inside:
                            await task.sync()
                        if preemptible:
                            await task.preempt_point()
                            if sleep_ns:
                                await task.sleep_ns(sleep_ns)
                        if nested:
                            with rcu.read_lock(task):
                                task.charge(cpu_ns // 4)
                        task.charge(cpu_ns // 2)
                    sections.append((start, task.now_ns))
                else:
                    _, ns, sleep = op
                    if sleep:
                        await task.sleep_ns(ns)
                    else:
                        task.charge(ns)
                        await task.cond_resched()

        async def writer(task: Task) -> None:
            for op in task.data["ops"]:
                kind = op[0]
                if kind in ("sync", "exp"):
                    s = task.now_ns
                    if kind == "sync":
                        await rcu.synchronize_rcu(task)
                    else:
                        await rcu.synchronize_rcu_expedited(task)
                    waits.append((kind, s, task.now_ns))
                elif kind == "cond":
                    cookie = rcu.get_state_synchronize_rcu(task)
                    s = task.now_ns
                    task.charge(op[1])
                    await task.cond_resched()
                    await rcu.cond_synchronize_rcu(task, cookie)
                    waits.append((kind, s, task.now_ns))
                elif kind == "call":
                    for _ in range(op[1]):
                        cb = Cb()
                        cb.queued_ns = task.now_ns
                        cb.cookie = rcu.get_state_synchronize_rcu(task)
                        cbs.append(cb)
                        rcu.call_rcu(task, cb, cb_fn)
                elif kind == "barrier":
                    b = task.now_ns
                    before = [c for c in cbs if c.queued_ns < b]
                    await rcu.rcu_barrier(task)
                    barriers.append((task.now_ns, [c for c in before if c.ran_ns < 0]))
                else:
                    task.charge(op[1])
                    await task.cond_resched()

        for cpu in range(sched["nr_cpus"]):
            k.spawn(reader, cpu, f"reader/{cpu}")
        async def admin(task: Task) -> None:
            for delay, c in sched.get("hotplug", ()):
                await task.sleep_ns(delay)
                if not k.cpus[c].online:
                    await rcu.cpu_up(task, c)
                elif rcu.statistics().cpus_online > 1:
                    await rcu.cpu_down(task, c)

        for i, (cpu, ops) in enumerate(sched["writers"]):
            t = k.spawn(writer, cpu, f"writer/{i}")
            t.data["ops"] = ops
        if sched.get("hotplug"):
            k.spawn(admin, 0, "admin")
        await k.run()

        # Drain: every callback queued must eventually run.
        async def drain(task: Task) -> None:
            await rcu.rcu_barrier(task)

        k.spawn(drain, 0, "drain")
        await k.run()

    run_sim(
        body, nr_cpus=sched["nr_cpus"], preempt_rcu=sched["preempt_rcu"], hz=sched.get("hz", 1000)
    )
    return {
        "sections": sections,
        "waits": waits,
        "cbs": cbs,
        "barriers": barriers,
        "bad_cookies": bad_cookies,
    }


def check(out: dict[str, Any]) -> None:
    sections = out["sections"]
    for kind, s, e in out["waits"]:
        for rs, re in sections:
            if rs < s:
                assert re <= e, f"{kind} [{s}, {e}] returned before reader [{rs}, {re}] ended"
    for cb in out["cbs"]:
        assert cb.ran_ns >= 0, "a callback never ran"
        for rs, re in sections:
            if rs < cb.queued_ns:
                assert re <= cb.ran_ns, (
                    f"callback queued at {cb.queued_ns} ran at {cb.ran_ns}, "
                    f"before reader [{rs}, {re}] ended"
                )
    assert not out["bad_cookies"], "a callback ran before its cookie's grace period ended"
    for _, missed in out["barriers"]:
        assert not missed, "rcu_barrier() returned before a callback queued before it ran"


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(schedules())
def test_readers_that_precede_a_grace_period_end_before_it(sched: dict[str, Any]) -> None:
    check(run_schedule(sched))


def test_a_busy_schedule_exercises_every_path() -> None:
    """One fixed, dense schedule: proves the property test's checks bite on real overlap."""
    ms = 1_000_000
    sched = {
        "nr_cpus": 3,
        "preempt_rcu": True,
        "readers": [
            [("read", 2 * ms, 3 * ms, True, False), ("gap", ms, False)] * 3,
            [("read", 5 * ms, 0, False, True), ("gap", 0, True)] * 3,
            [("gap", ms // 2, False), ("read", ms, 2 * ms, False, True)] * 3,
        ],
        "writers": [
            (0, [("sync", 0), ("call", 5), ("exp", 0), ("barrier", 0)]),
            (2, [("gap", ms), ("cond", ms), ("call", 3), ("sync", 0)]),
        ],
    }
    out = run_schedule(sched)
    check(out)
    overlapping = [
        (s, e)
        for _, s, e in out["waits"]
        for rs, re in out["sections"]
        if rs < s < re
    ]
    assert overlapping, "no grace period overlapped a reader: the schedule tests nothing"
    assert len(out["cbs"]) == 8
    assert all(cb.ran_ns > cb.queued_ns for cb in out["cbs"])
