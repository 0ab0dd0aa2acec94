"""What every piece of tree RCU split out of :mod:`rcukit.rcu.tree` starts from.

The kernel ``#include``\\ s ``tree_plugin.h``, ``tree_exp.h`` and ``tree_stall.h`` into ``tree.c``,
so they all see ``rcu_state`` and the per-CPU ``rcu_data``. Here each of those files is a small
class owning its own state, and :class:`RcuStatePart` is how it reaches the shared state: through
the :class:`~rcukit.rcu.tree.RcuState` it belongs to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rcukit.machine import Machine
    from rcukit.rcu.tree import RcuData, RcuState

__all__ = ["RcuStatePart"]


class RcuStatePart:
    """A part of one ``rcu_state`` (readers, expedited GPs, stall warnings, callbacks, hotplug)."""

    def __init__(self, rcu: RcuState) -> None:
        self._rcu = rcu
        self._kernel: Machine = rcu.kernel
        #: The per-CPU ``rcu_data``, as ``tree.c`` keeps them (``rcu_state._rdp``).
        self._rdp: list[RcuData] = rcu._rdp
