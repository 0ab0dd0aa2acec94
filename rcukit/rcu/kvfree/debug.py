"""kvfree_rcu()'s debug objects (``CONFIG_DEBUG_OBJECTS_RCU_HEAD``-style checking).

``kvfree_call_rcu()`` calls ``debug_rcu_head_queue()`` and reclaim calls
``debug_rcu_head_unqueue()``: the first catches a double ``kvfree_rcu`` and a queued object
that is no longer allocated; the pair (with the GP cookie taken at queue time) catches an object
freed before its grace period ended.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rcukit.errors import MemoryDebugError
from rcukit.mm.slab import ZERO_SIZE_PTR
from rcukit.rcu.kvfree.krc import KvfreePart
from rcukit.sched.sim import Task

if TYPE_CHECKING:
    from rcukit.rcu.kvfree.sim import KvfreeRcu

__all__ = ["KvfreeDebugObjects"]


class KvfreeDebugObjects(KvfreePart):
    """Every object queued and not yet freed, with the GP cookie of its queueing."""

    def __init__(self, kv: KvfreeRcu) -> None:
        super().__init__(kv)
        self.enabled: bool = kv.kernel.config.kvfree.debug_objects
        #: ptr -> GP cookie at queue time.
        self._pending: dict[int, int] = {}

    def debug_rcu_head_queue(self, task: Task, ptr: int) -> None:
        """``debug_rcu_head_queue``: refuse an object already queued or not allocated."""
        if ptr in self._pending:
            raise MemoryDebugError(
                f"kvfree_rcu(0x{ptr:x}) from {task.comm}/{task.pid}: the object is already "
                f"queued for freeing after a grace period (double kvfree_rcu)"
            )
        # kmalloc(0)'s ZERO_SIZE_PTR is no object to check: the kernel's KASAN hook at queue
        # time (kasan_record_aux_stack) returns for an address that is not virt_addr_valid.
        if ptr != ZERO_SIZE_PTR:
            self._mm.check_access(ptr, task)
        self._pending[ptr] = self._rcu.get_state_synchronize_rcu(task)

    def debug_rcu_head_unqueue(self, ptr: int) -> None:
        """``debug_rcu_head_unqueue``: count a free whose grace period has not ended."""
        cookie = self._pending.pop(ptr, None)
        if cookie is not None and not self._rcu.poll_state_synchronize_rcu(cookie):
            self._counters.gp_violations += 1
