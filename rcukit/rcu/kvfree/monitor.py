"""kvfree_rcu()'s monitor: the per-CPU delayed work that turns queued blocks into batches.

``schedule_delayed_monitor_work()`` arms it on every enqueue; ``kfree_rcu_monitor()`` runs on
the owning CPU, frees what is already safe (v6.3 ``kvfree_rcu_drain_ready()``) and detaches the
rest into a free ``krwp`` batch (``kvfree_rcu_queue_batch()``), whose ``rcu_work`` reclaims it
after a grace period (:mod:`rcukit.rcu.kvfree.reclaim`).
"""

from __future__ import annotations

from array import array
from typing import TYPE_CHECKING

from rcukit.rcu.kvfree.krc import Bnode, Krc, KrcWork, KvfreePart
from rcukit.sched.sim import Task
from rcukit.wq import Work

if TYPE_CHECKING:
    from rcukit.rcu.kvfree.sim import KvfreeRcu

__all__ = ["KvfreeMonitor"]

#: A ``mon_quiet_below`` no count reaches.
_NEVER = 1 << 62


class KvfreeMonitor(KvfreePart):
    """``schedule_delayed_monitor_work``, ``kfree_rcu_monitor`` and the batches it queues."""

    def __init__(self, kv: KvfreeRcu) -> None:
        super().__init__(kv)
        cfg = self._kernel.config
        self._kick = self._policy.kick
        self._polled = self._policy.polled_snapshots
        self._tick_ns = cfg.tick_ns
        self._capacity = kv.capacity
        self.drain_jiffies = kv.profile.drain_jiffies(cfg.hz)

    def arm_monitor(self, task: Task, krcp: Krc) -> None:
        """:meth:`schedule_delayed_monitor_work`, then note until when the next call would find
        nothing to do (``krcp.mon_quiet_below``, which the enqueue fast path tests)."""
        self.schedule_delayed_monitor_work(task, krcp)
        krcp.mon_quiet_below = self._monitor_quiet_below(task, krcp)

    def _monitor_quiet_below(self, task: Task, krcp: Krc) -> int:
        """The count below which :meth:`schedule_delayed_monitor_work` has nothing to do, as
        long as nobody else touches the monitor (whoever does resets ``krcp.mon_quiet_below``).

        Time only brings the timer closer, and a timer that fires queues the work; both keep
        "nothing to do" true. The work starting to run, a shrinker or hot-unplug pulling it in,
        and the barrier cancelling it are the changes that need a fresh look.
        """
        if not self._kick:
            return _NEVER if krcp.monitor_todo else 0
        mon = krcp.monitor
        if mon.queued:
            return _NEVER
        timer = mon.timer
        if not timer.pending:
            return 0
        if timer.expires_ns - task.cpu.local_ns <= self._tick_ns:
            return _NEVER
        return self._capacity

    def schedule_delayed_monitor_work(self, task: Task, krcp: Krc) -> None:
        """Arm the monitor: ``KFREE_DRAIN_JIFFIES``, or (v6.1 kick) 1 jiffy once a block's worth
        is queued, pulling a pending monitor in only if that is sooner than its timer."""
        mon = krcp.monitor
        if self._kick:
            if mon.queued:
                return
            timer = mon.timer
            kick = self._policy.kick_now(krcp.count)
            if timer.pending:
                if not kick:
                    return  # the delay would be KFREE_DRAIN_JIFFIES: never sooner
                if timer.expires_ns - task.cpu.local_ns <= self._tick_ns:
                    return
                self._wq.mod_delayed_work(task, mon, 1)
            else:
                self._wq.queue_delayed_work(task, mon, 1 if kick else self.drain_jiffies)
        elif not krcp.monitor_todo:
            krcp.monitor_todo = True
            self._wq.queue_delayed_work(task, mon, self.drain_jiffies)

    async def kfree_rcu_monitor(self, task: Task, work: Work) -> None:
        """``kfree_rcu_monitor``: free what is already safe (v6.3), detach the rest into a batch."""
        assert isinstance(work, KrcWork)
        krcp = work.krcp
        k = self._kernel
        krcp.mon_quiet_below = 0  # the work left the queue to run
        krcp.raw_spin_lock_irqsave(task)
        ready: list[tuple[int, list[Bnode]]] = []
        ready_head: array[int] | None = None
        if self._polled:
            ready, ready_head = self.kvfree_rcu_drain_ready(krcp)
        self.kvfree_rcu_queue_batch(task, krcp)
        if krcp.need_offload_krc():
            if self._kick:
                self.arm_monitor(task, krcp)
            else:
                krcp.monitor_todo = True
                self._wq.queue_delayed_work(task, krcp.monitor, self.drain_jiffies)
        else:
            krcp.monitor_todo = False
        krcp.mon_quiet_below = 0
        krcp.raw_spin_unlock_irqrestore(task)
        reclaim = self._kv.reclaim
        if ready or ready_head is not None:
            ctr = self._counters
            for idx, nodes in ready:
                for bnode in nodes:
                    ctr.freed_early_polled += bnode.nr_records
                    await reclaim.kvfree_rcu_bulk(task, krcp, idx, bnode)
            if ready_head is not None:
                ctr.freed_early_polled += len(ready_head)
                await reclaim.kvfree_rcu_list(task, ready_head)
        reclaim.sample_timeline(task)
        if k.tracer.tp.kfree_rcu_monitor:
            k.trace(task, "kfree_rcu_monitor", f"cpu={krcp.cpu} pending={krcp.krc_count()}")

    def kvfree_rcu_drain_ready(
        self, krcp: Krc
    ) -> tuple[list[tuple[int, list[Bnode]]], array[int] | None]:
        """``kvfree_rcu_drain_ready``: oldest blocks first, stop at the first not yet safe."""
        return krcp.kvfree_rcu_drain_ready(self._rcu.poll_state_synchronize_rcu)

    def kvfree_rcu_queue_batch(self, task: Task, krcp: Krc) -> bool:
        """Detach channels into free ``krwp`` slots and hand each to ``queue_rcu_work``."""
        rcu = self._rcu
        wq = self._wq
        return krcp.kvfree_rcu_queue_batch(
            self._policy,
            self._counters,
            lambda: rcu.get_state_synchronize_rcu(task),
            lambda krwp: rcu.queue_rcu_work(task, wq, krwp.rwork),
        )
