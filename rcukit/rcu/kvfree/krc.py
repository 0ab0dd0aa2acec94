"""The simulated kernel's ``krcp`` and what every kvfree_rcu() mechanism shares.

``mm/slab_common.c`` keeps kvfree_rcu() in one file, its mechanisms all working on the per-CPU
``struct kfree_rcu_cpu``. Here that struct (:class:`Krc`, with its blocks and batches) lives
apart from the mechanisms, so that each one (:mod:`.monitor`, :mod:`.reclaim`,
:mod:`.page_cache`, :mod:`.drain`, :mod:`.debug`) is a small :class:`KvfreePart` of the
:class:`~rcukit.rcu.kvfree.sim.KvfreeRcu` that composes them, as :mod:`rcukit.rcu.tree` composes
``RcuState`` from :class:`~rcukit.rcu.tree_part.RcuStatePart`\\ s.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import TYPE_CHECKING

from rcukit.locking.locks import HeldLock, LockKind
from rcukit.mm.slab import segment_pointers
from rcukit.rcu.kvfree.core import (
    FREE_N_CHANNELS,
    KfreeRcuCpu,
    KfreeRcuCpuWork,
    KvfreeRcuBulkData,
)
from rcukit.rcu.tree import RcuWork
from rcukit.sched.sim import Task, Timer
from rcukit.wq import DelayedWork, WorkFn

if TYPE_CHECKING:
    from rcukit.machine import Machine
    from rcukit.mm.mm import Mm
    from rcukit.mm.slab import Slab
    from rcukit.rcu.kvfree.core import KvfreeCounters, KvfreePolicy
    from rcukit.rcu.kvfree.sim import KvfreeRcu
    from rcukit.rcu.tree import RcuState
    from rcukit.wq import Workqueue

__all__ = ["PTR_TYPECODE", "VMALLOC_START", "Bnode", "Krc", "KrcWork", "Krwp", "KrwpWork",
           "KvfreePart"]

#: ``array`` typecode of a block's pointer records: an unsigned 8-byte integer. "L" where C's
#: long has 8 bytes, since storing a pointer-sized int converts faster than with "Q".
PTR_TYPECODE = "L" if array("L").itemsize == 8 else "Q"
#: x86-64's ``VMALLOC_START``: pointers at or above it are vmalloc'ed (``is_vmalloc_addr``).
VMALLOC_START = 0xFFFFC90000000000


class KrcWork(DelayedWork):
    """A delayed work that knows its ``krcp`` (container_of in the kernel)."""

    __slots__ = ("krcp",)

    def __init__(self, name: str, func: WorkFn, krcp: Krc) -> None:
        super().__init__(name, func)
        self.krcp = krcp


class KrwpWork(RcuWork):
    """``krwp->rcu_work``: the reclaim of one batch after its grace period."""

    __slots__ = ("idx", "krcp")

    def __init__(self, name: str, func: WorkFn, krcp: Krc, idx: int) -> None:
        super().__init__(name, func)
        self.krcp = krcp
        self.idx = idx


class Bnode(KvfreeRcuBulkData):
    """A ``kvfree_rcu_bulk_data`` block: one page of pointer records (a preallocated array).

    The array holds exactly ``capacity`` records and never grows: the enqueue fast path lets a
    full block refuse the store (IndexError) instead of comparing with the capacity per call.
    """

    __slots__ = ("nr_records", "page", "seg_end", "segs")

    def __init__(self, page: int, capacity: int) -> None:
        super().__init__(array(PTR_TYPECODE, (0,)) * capacity)  # zeros: 12x faster than from bytes
        self.page = page
        self.nr_records = 0
        #: What run-based floods stored, as ``(slab, first index, count)`` segments that tile
        #: ``records[:seg_end]`` (:mod:`.runs`); None once a per-call store broke the tiling.
        #: While they tile, the records they stand for are not written (runs store nothing
        #: else): :meth:`fill_records` writes them when somebody needs the array itself. A
        #: block whose segments cover all its records is freed without them.
        self.segs: list[tuple[Slab, int, int]] | None = []
        self.seg_end = 0

    def fill_records(self) -> None:
        """Write ``records[:seg_end]`` from the segments (each a slice of its slab's pointer
        array, :meth:`~rcukit.mm.slab.SlabAllocator.pointers`), before the array is read or
        the segments are dropped. The records past ``seg_end`` are the per-call path's."""
        segs = self.segs
        if segs:
            self.records[: self.seg_end] = segment_pointers(segs)

    def __len__(self) -> int:
        return self.nr_records


class Krwp(KfreeRcuCpuWork[Bnode]):
    """A ``kfree_rcu_cpu_work``: one batch in flight, with its ``rcu_work``."""

    __slots__ = ("krcp", "rwork")

    def __init__(self, krcp: Krc, idx: int, rwork: KrwpWork) -> None:
        super().__init__(idx, FREE_N_CHANNELS)
        self.krcp = krcp
        self.rwork = rwork


class Krc(KfreeRcuCpu[Bnode, Krwp, int]):
    """``struct kfree_rcu_cpu``: the core's channels and batches, plus this CPU's raw lock,
    monitor work, page-cache refill work and hrtimer (each mechanism's work function is its
    part's)."""

    def __init__(self, kv: KvfreeRcu, cpu: int) -> None:
        #: ``bulk[0][-1]`` (None for an empty channel): the block the enqueue fast path stores
        #: into, read with one load instead of two subscripts. Exact wherever channel 0 gains
        #: or loses its last block: ``KvfreeRcu._new_block`` and the two detaches below.
        self.cur_bnode: Bnode | None = None
        # ``count`` and ``mon_quiet_below`` (properties, below) as of the last write, and
        # cur_bnode's record count then: the fast path's stores add to ``count`` unwritten.
        self._count = 0
        self._cur_nr0 = 0
        self._mon_quiet_below = 0
        #: ``mon_quiet_below`` as a record count of cur_bnode: the fast path arms the monitor
        #: once its store makes ``nr_records`` reach this (``count`` then reaches the other).
        self.quiet_nr = 0
        super().__init__(FREE_N_CHANNELS, [])
        self.cpu = cpu
        self.lock = kv.kernel.new_lock("krc.lock", LockKind.RAW_SPINLOCK)
        self.held = HeldLock(self.lock, "kvfree_call_rcu", True, True)
        self.lock_ns = kv.kernel.config.cost.raw_lock_ns
        #: ``bkvcache``: spare block pages (addresses).
        self.cache: list[int] = []
        self.monitor = KrcWork(f"kfree_rcu_monitor/{cpu}", kv.monitor.kfree_rcu_monitor, self)
        self.monitor_todo = False
        self.mon_quiet_below = 0
        reclaim = kv.reclaim.kfree_rcu_work
        self.krw = [
            Krwp(self, i, KrwpWork(f"kfree_rcu_work/{cpu}.{i}", reclaim, self, i))
            for i in range(kv.policy.n_batches)
        ]
        page_cache = kv.page_cache
        self.page_cache_work = KrcWork(
            f"fill_page_cache_func/{cpu}", page_cache.fill_page_cache_func, self
        )
        self.work_in_progress = False
        self.backoff_page_cache_fill = False
        self.hrtimer = Timer(
            f"schedule_page_work_fn/{cpu}", lambda _t: page_cache.schedule_page_work_fn(self)
        )
        self.initialized = True

    def kvfree_rcu_drain_ready(
        self, poll: Callable[[int], bool]
    ) -> tuple[list[tuple[int, list[Bnode]]], array[int] | None]:
        """The core's ``kvfree_rcu_drain_ready()``; then ``cur_bnode`` follows channel 0."""
        out = super().kvfree_rcu_drain_ready(poll)
        self.note_bulk0()
        return out

    def kvfree_rcu_queue_batch(
        self,
        policy: KvfreePolicy,
        counters: KvfreeCounters,
        snapshot: Callable[[], int],
        queue_rcu_work: Callable[[Krwp], bool],
    ) -> bool:
        """The core's ``kvfree_rcu_queue_batch()``; then ``cur_bnode`` follows channel 0."""
        queued = super().kvfree_rcu_queue_batch(policy, counters, snapshot, queue_rcu_work)
        self.note_bulk0()
        return queued

    def note_bulk0(self) -> None:
        """Channel 0 changed: re-read its current block into ``cur_bnode`` (``count`` kept)."""
        count = self.count
        chan = self.bulk[0]
        self.cur_bnode = chan[-1] if chan else None
        self.count = count

    @property
    def count(self) -> int:
        """``krcp->count``: what was written, plus the fast path's stores since (each one call
        into cur_bnode, which bumps nothing else), so the per-call path writes one field."""
        cur = self.cur_bnode
        if cur is None:
            return self._count
        return self._count + cur.nr_records - self._cur_nr0

    @count.setter
    def count(self, value: int) -> None:
        cur = self.cur_bnode
        nr0 = self._cur_nr0 = cur.nr_records if cur is not None else 0
        self._count = value
        self.quiet_nr = self._mon_quiet_below - value + nr0

    @property
    def mon_quiet_below(self) -> int:
        """While ``count`` stays below this, arming the monitor would return at once: it is
        queued, or its timer fires within a tick, or (kick mode) fires later but the count has
        not reached a block yet. Set by ``KvfreeMonitor.arm_monitor``; 0 (check) whenever
        anything else changes the monitor's state. Writing it moves ``quiet_nr``."""
        return self._mon_quiet_below

    @mon_quiet_below.setter
    def mon_quiet_below(self, value: int) -> None:
        self._mon_quiet_below = value
        self.quiet_nr = value - self._count + self._cur_nr0

    def raw_spin_lock_irqsave(self, task: Task) -> None:
        """``raw_spin_lock_irqsave(&krcp->lock)`` (lockdep-free: a raw lock with IRQs off can
        never be an invalid wait context); charges the lock's cost to the CPU."""
        task.irqs_disabled += 1
        task.preempt_count += 1
        task.held_locks.append(self.held)
        task.cpu.local_ns += self.lock_ns

    def raw_spin_unlock_irqrestore(self, task: Task) -> None:
        """``raw_spin_unlock_irqrestore(&krcp->lock)``."""
        held = task.held_locks
        if held and held[-1] is self.held:
            held.pop()
        else:
            held.remove(self.held)
        task.preempt_count -= 1
        task.irqs_disabled -= 1


class KvfreePart:
    """A mechanism of one kvfree_rcu() (monitor, reclaim, page cache, drain, debug objects).

    Each reaches what the kernel's file-scope ``krc`` and its helpers share through the
    :class:`~rcukit.rcu.kvfree.sim.KvfreeRcu` it belongs to, and owns the rest of its state.
    """

    def __init__(self, kv: KvfreeRcu) -> None:
        self._kv = kv
        self._kernel: Machine = kv.kernel
        self._mm: Mm = kv.mm
        self._rcu: RcuState = kv.rcu
        self._wq: Workqueue = kv.wq
        self._policy: KvfreePolicy = kv.policy
        self._counters: KvfreeCounters = kv.counters
