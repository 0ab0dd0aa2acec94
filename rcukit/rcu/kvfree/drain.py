"""Draining a ``krcp`` on request from outside its CPU: the shrinker, the barrier, hot-unplug.

Everything a ``krcp`` holds is touched only from its own CPU, so per-CPU local time never lets
another CPU see it early. The three requests that come from elsewhere therefore queue work on
the owner CPU (or, once it is offline, on an online one) and let that work act:

* memory pressure: ``kfree_rcu_shrink_count()`` / ``kfree_rcu_shrink_scan()`` (v5.14+ also back
  the page-cache refill off and drain the cache);
* ``kvfree_rcu_barrier()`` (v6.12): every object queued before the call is freed on return;
* CPU hot-unplug: an offlined CPU's monitor moves to an online CPU's kworker.
"""

from __future__ import annotations

from rcukit.errors import RcuUsageError
from rcukit.rcu.kvfree.krc import Krc, KvfreePart
from rcukit.sched.sim import Task
from rcukit.wq import Work

__all__ = ["KvfreeDrain"]


class KvfreeDrain(KvfreePart):
    """The shrinker's callbacks, ``kvfree_rcu_barrier`` and the hot-unplug callback."""

    def kfree_rcu_shrink_count(self, task: Task) -> int:
        """``kfree_rcu_shrink_count``: the objects each CPU has queued (``krcp->count``); from
        v5.14 (d0bfa8b3c411) plus its cached pages (``nr_bkv_objs``), and every CPU's refill
        is backed off."""
        total = 0
        backoff = self._policy.shrinker_backoff
        for krcp in self._kv.krcs:
            total += krcp.krc_count()
            if backoff:
                total += len(krcp.cache)
                krcp.backoff_page_cache_fill = True
        return total

    async def kfree_rcu_shrink_scan(self, task: Task, nr_to_scan: int) -> int:
        """``kfree_rcu_shrink_scan``: drain page caches and pull every CPU's monitor in, on the
        owning CPU."""
        freed = 0
        wq = self._wq
        drain_page_cache = self._kv.page_cache.drain_page_cache
        for krcp in self._kv.krcs:
            if nr_to_scan <= 0:
                break
            count = krcp.krc_count()
            if self._policy.shrinker_backoff and krcp.cache:
                count += len(krcp.cache)
                wq.queue_work(task, Work(f"drain_page_cache/{krcp.cpu}", drain_page_cache),
                              cpu=krcp.cpu)
            if krcp.need_offload_krc():
                wq.mod_delayed_work(task, krcp.monitor, 0, cpu=krcp.cpu)
                krcp.mon_quiet_below = 0
            freed += count
            nr_to_scan -= count
        return freed

    async def kvfree_rcu_barrier(self, task: Task) -> None:
        """Return only when every object queued before the call has been freed (v6.12).

        Each CPU's part runs on that CPU (a work item): queue its batches, waiting for batches
        in flight where both ``krwp`` slots are busy, then flush them.
        """
        if task.rcu_read_nesting:
            raise RcuUsageError("kvfree_rcu_barrier() inside an RCU read-side critical section")
        self._kernel.locks.might_sleep(task, "kvfree_rcu_barrier")
        await task.sync()
        works = []
        for krcp in self._kv.krcs:
            # Every possible CPU, offline ones too: their batches may still be in flight
            # (kernel.md 1.7, step 2 flushes both krw slots of every CPU).
            w = Work(f"kvfree_rcu_barrier/{krcp.cpu}", self._barrier_cpu_fn)
            self._wq.queue_work(task, w, cpu=self._owner_cpu(krcp))
            works.append(w)
        for w in works:
            await self._wq.flush_work(task, w)

    def _owner_cpu(self, krcp: Krc) -> int:
        if self._kernel.cpus[krcp.cpu].online:
            return krcp.cpu
        return next(c.id for c in self._kernel.cpus if c.online)

    async def _barrier_cpu_fn(self, task: Task, work: Work) -> None:
        krcp = self._kv.krcs[int(work.name.rsplit("/", 1)[1])]
        queue_batch = self._kv.monitor.kvfree_rcu_queue_batch
        while True:
            krcp.raw_spin_lock_irqsave(task)
            if not krcp.need_offload_krc():
                krcp.raw_spin_unlock_irqrestore(task)
                break
            queued = queue_batch(task, krcp)
            krcp.raw_spin_unlock_irqrestore(task)
            if queued:
                continue
            for krwp in krcp.krw:
                await self._rcu.flush_rcu_work(task, krwp.rwork)
        await self._wq.cancel_delayed_work_sync(task, krcp.monitor)
        krcp.monitor_todo = False
        krcp.mon_quiet_below = 0
        for krwp in krcp.krw:
            await self._rcu.flush_rcu_work(task, krwp.rwork)

    def cpu_hotplug(self, task: Task, cpu_id: int, online: bool) -> None:
        """An offlined CPU's pending monitor work, on an online CPU, at the same expiry.

        The kernel has no kvfree_rcu hotplug hook (kernel/rcu/tree.c, v5.9-v6.x): when a CPU
        dies its timers migrate to a live CPU (``timers_dead_cpu()``) and its per-CPU
        workqueue pool runs unbound, so ``monitor_work`` still fires when it was due (up to
        5 s later from v6.1) and drains the dead CPU's krcp from elsewhere. The simulator runs
        no kworker for an offline CPU, so the delayed work is moved here, its expiry kept."""
        if online:
            return
        krcp = self._kv.krcs[cpu_id]
        if not krcp.need_offload_krc():
            return
        dwork = krcp.monitor
        # (not pending at all, e.g. caught between its runs: queued now, so nothing waits for
        # a kvfree_rcu() call on a CPU that makes none)
        delay = 0
        timer = dwork.timer
        if timer.pending:
            tick = self._kernel.config.tick_ns
            delay = max(0, -((task.now_ns - timer.expires_ns) // tick))
        self._wq.mod_delayed_work(task, dwork, delay, cpu=self._owner_cpu(krcp))
        krcp.mon_quiet_below = 0
