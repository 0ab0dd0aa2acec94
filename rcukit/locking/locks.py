"""Lock objects and lockdep's wait types (``include/linux/lockdep_types.h``).

The RFC's whole problem is a *nesting* rule: a ``raw_spinlock_t`` (LD_WAIT_SPIN) may not be held
while taking a ``spinlock_t`` (LD_WAIT_CONFIG), because on PREEMPT_RT the latter sleeps. The lock
objects here carry just enough for the checker to decide that, plus contention bookkeeping.
"""

from __future__ import annotations

import enum

import attrs


class WaitType(enum.IntEnum):
    """``enum lockdep_wait_type`` as numbered with ``CONFIG_PROVE_RAW_LOCK_NESTING=y``."""

    INV = 0
    FREE = 1
    SPIN = 2
    CONFIG = 3
    SLEEP = 4
    MAX = 5

    def effective(self, prove_raw_lock_nesting: bool) -> int:
        """The number lockdep compares: without the option CONFIG collapses onto SPIN."""
        if prove_raw_lock_nesting or self < WaitType.CONFIG:
            return int(self)
        return int(self) - 1


class LockKind(enum.Enum):
    RAW_SPINLOCK = "raw_spinlock_t"
    SPINLOCK = "spinlock_t"
    MUTEX = "mutex"
    RCU = "rcu_read_lock"
    #: ``local_lock_t`` on !PREEMPT_RT: a lockdep map of wait type LD_WAIT_CONFIG
    #: (``INIT_LOCAL_LOCK``) over ``local_irq_save()``/``preempt_disable()``; it never spins
    #: and never leaves preemption counted. On PREEMPT_RT a ``local_lock_t`` is a per-CPU
    #: ``spinlock_t`` (a sleeping lock), so RT builds construct it as :attr:`SPINLOCK`.
    LOCAL_LOCK = "local_lock_t"

    @property
    def wait_inner(self) -> WaitType:
        return _INNER[self]

    @property
    def wait_outer(self) -> WaitType:
        return WaitType.FREE if self is LockKind.RCU else _INNER[self]


_INNER = {
    LockKind.RAW_SPINLOCK: WaitType.SPIN,
    LockKind.SPINLOCK: WaitType.CONFIG,
    LockKind.MUTEX: WaitType.SLEEP,
    LockKind.RCU: WaitType.CONFIG,
    LockKind.LOCAL_LOCK: WaitType.CONFIG,
}

@attrs.define(eq=False)
class Lock:
    """One lock instance. ``name`` is the lockdep class name (``&zone->lock``, ``krc.lock``)."""

    name: str
    kind: LockKind
    #: A kernel-looking address for reports; the Kernel hands them out so runs are reproducible.
    addr: int = 0
    owner: object | None = attrs.field(default=None, init=False)
    #: Simulated time at which the last holder released it (contention is charged against it).
    free_at_ns: int = attrs.field(default=0, init=False)
    acquisitions: int = attrs.field(default=0, init=False)
    contentions: int = attrs.field(default=0, init=False)
    wait_ns: int = attrs.field(default=0, init=False)

    def __repr__(self) -> str:
        return f"<{self.kind.value} {self.name}>"


@attrs.define(slots=True)
class HeldLock:
    """An entry of ``current->held_locks``: the lock, where it was taken, what it changed."""

    lock: Lock
    ip: str
    irqsave: bool
    preempt: bool
    #: Non-zero when this is a nested acquisition (``raw_spin_lock_nested``); lockdep ignores
    #: the class but still checks the wait context.
    subclass: int = 0
