"""Fences between the CPUs' local virtual time and grace-period starts and ends.

Not a kernel file: the kernel's CPUs share one clock. Here (see :mod:`rcukit.sched.sim`) most
RCU events happen where the scheduler is not synced (a context switch, ``rcu_read_unlock``,
``call_rcu`` under a raw lock). Two fences keep them honest without forcing a hand-off on each
one, for the normal GPs (:mod:`rcukit.rcu.tree`) and the expedited ones
(:mod:`rcukit.rcu.tree_exp`) alike:

* *end fence* (kept by :class:`Holdouts`): a QS reported at a CPU's local time ``t`` means the
  GP may not end before ``t``; the kthread (and the expedited driver) wait until the latest
  report time, then sync, then end.
* *start fence* (:class:`StartFence`): a snapshot (``get_state``, ``call_rcu``'s acceleration)
  taken at ``t`` counts on a GP that starts at ``t`` or later; the time is recorded against the
  snapshot value. The driver announces that it is about to start, waits until the latest time
  recorded for the GP it starts, syncs and starts. Snapshots taken while a start is announced
  count on the GP after it (and fence that one), so the wait cannot be moved by later snapshots.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rcukit.rcu.gpseq import ulong_cmp_ge
from rcukit.sched.sim import WaitQueue

if TYPE_CHECKING:
    from rcukit.sched.sim import Task

__all__ = ["Holdouts", "StartFence", "wait_until"]


class StartFence:
    """For each snapshot value handed out, the latest local time it was read."""

    __slots__ = ("_times", "announced")

    def __init__(self) -> None:
        self._times: dict[int, int] = {}
        #: The driver is about to start a GP: snapshots count on the one after it.
        self.announced = False

    def record(self, s: int, t: int) -> int:
        """Snapshot ``s`` was read at ``t``: the GP ending at ``s`` may not start before."""
        times = self._times
        if times.get(s, -1) < t:
            times[s] = t
        return s

    def consume(self, end: int) -> int:
        """The latest snapshot time among those a GP ending at ``end`` satisfies (consumed)."""
        times = self._times
        f = 0
        for target in [x for x in times if ulong_cmp_ge(end, x)]:
            f = max(f, times.pop(target))
        return f


async def wait_until(task: Task, t: int) -> None:
    """Let ``task``'s local clock reach ``t`` (a fence) by sleeping, if it is behind."""
    if task.now_ns < t:
        await task.sleep_ns(t - task.now_ns)


class Holdouts:
    """Who the current GP still waits for, and its end fence.

    For a normal GP ``rnp->qsmask`` and ``rnp->gp_tasks``, for an expedited one ``rnp->expmask``
    and ``rnp->exp_tasks`` (one leaf ``rcu_node``); the last report wakes the task that ends
    the GP, which then waits out the end fence (:meth:`wait`).
    """

    __slots__ = ("cpus", "end_fence", "tasks", "wq")

    def __init__(self, wq_name: str) -> None:
        #: CPUs that owe the GP a quiescent state.
        self.cpus: set[int] = set()
        #: Readers blocked inside a read section the GP started under.
        self.tasks: dict[Task, None] = {}
        #: The latest local time of a report: the GP may not end before it.
        self.end_fence = 0
        self.wq = WaitQueue(wq_name)

    def fence(self, t: int) -> None:
        """A quiescent state seen at local time ``t``."""
        if t > self.end_fence:
            self.end_fence = t

    def report_cpu(self, cpu_id: int, t: int) -> None:
        """``cpu_id`` passed a quiescent state at ``t``; the last report wakes the GP's end."""
        self.fence(t)
        self.cpus.discard(cpu_id)
        if not self.cpus and not self.tasks:
            self.wq.wake_one(t)

    def report_task(self, task: Task, t: int) -> None:
        """``task`` left the read section it blocked in at ``t``, if the GP waited for it."""
        tasks = self.tasks
        if task in tasks:
            del tasks[task]
            self.fence(t)
            if not tasks and not self.cpus:
                self.wq.wake_one(t)

    async def wait(self, task: Task, what: str) -> None:
        """Block ``task`` until every holdout reported, then let it reach the end fence."""
        while self.cpus or self.tasks:
            await task.block(self.wq, what)
        await wait_until(task, self.end_fence)
