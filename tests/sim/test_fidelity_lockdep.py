"""Fidelity of the lock model (``rcukit.locking``) to lockdep's wait-context check.

Sources: ``include/linux/lockdep_types.h`` (``enum lockdep_wait_type``, v5.7+),
``kernel/locking/lockdep.c`` (``task_wait_context()``, ``check_wait_context()``, v5.7-v6.x),
``include/linux/local_lock_internal.h`` (``LD_WAIT_CONFIG`` for ``local_lock_t``, v5.8+),
``include/linux/rcupdate.h``/``kernel/rcu/update.c`` (``rcu_lock_map``: outer LD_WAIT_FREE,
inner LD_WAIT_CONFIG), as summarised with their examples in kernel.md section 7.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from simtools import FakeLockContext

from rcukit.locking import Lock, LockKind, WaitType
from rcukit.locking.checker import LockChecker

IWC = "invalid_wait_context"

#: ``enum lockdep_wait_type`` with and without CONFIG_PROVE_RAW_LOCK_NESTING.
LD = {
    True: {"INV": 0, "FREE": 1, "SPIN": 2, "CONFIG": 3, "SLEEP": 4, "MAX": 5},
    False: {"INV": 0, "FREE": 1, "SPIN": 2, "CONFIG": 2, "SLEEP": 3, "MAX": 4},
}
#: (outer, inner) wait types of each lock class lockdep sees.
CLASS = {
    LockKind.RAW_SPINLOCK: ("SPIN", "SPIN"),
    LockKind.SPINLOCK: ("CONFIG", "CONFIG"),
    LockKind.LOCAL_LOCK: ("CONFIG", "CONFIG"),
    LockKind.MUTEX: ("SLEEP", "SLEEP"),
    LockKind.RCU: ("FREE", "CONFIG"),
}
#: ``task_wait_context()``: a non-threaded hardirq, a softirq, task context.
CONTEXT = {"hardirq": "SPIN", "softirq": "CONFIG", "task": "MAX"}


def _ctx(where: str) -> FakeLockContext:
    return FakeLockContext(in_hardirq=int(where == "hardirq"), in_softirq=int(where == "softirq"))


def _lock(kind: LockKind, n: int) -> Lock:
    return Lock(f"{kind.value}#{n}", kind, addr=0x1000 + n)


@pytest.mark.parametrize("prove", [True, False])
def test_wait_type_numbers(prove: bool) -> None:
    """``enum lockdep_wait_type`` (include/linux/lockdep_types.h, v5.7+): LD_WAIT_INV 0,
    LD_WAIT_FREE, LD_WAIT_SPIN, LD_WAIT_CONFIG, LD_WAIT_SLEEP, LD_WAIT_MAX in that order;
    without CONFIG_PROVE_RAW_LOCK_NESTING ``LD_WAIT_CONFIG = LD_WAIT_SPIN``, so SLEEP and MAX
    move down by one (what the report's ``-{outer:inner}`` numbers show)."""
    got = {w.name: w.effective(prove) for w in WaitType}
    assert got == LD[prove]


def test_lock_classes_wait_types() -> None:
    """Wait types per lock type (v5.7-v6.x): ``raw_spinlock_t`` LD_WAIT_SPIN, ``spinlock_t``
    LD_WAIT_CONFIG ("preemptible in PREEMPT_RT"), ``local_lock_t`` LD_WAIT_CONFIG
    (``INIT_LOCAL_LOCK``, v5.8+), ``struct mutex`` LD_WAIT_SLEEP; ``rcu_read_lock()``'s
    ``rcu_lock_map`` has outer LD_WAIT_FREE and inner LD_WAIT_CONFIG, printed ``{1:3}``."""
    for kind, (outer, inner) in CLASS.items():
        assert (kind.wait_outer.name, kind.wait_inner.name) == (outer, inner)


def _expected(prove: bool, where: str, held: list[LockKind], nxt: LockKind) -> bool:
    """``check_wait_context()``: report iff ``next_outer > curr_inner``, ``curr_inner`` being
    ``min(task_wait_context(curr), inner of every held lock)``."""
    ld = LD[prove]
    curr_inner = min([ld[CONTEXT[where]], *(ld[CLASS[h][1]] for h in held)])
    return ld[CLASS[nxt][0]] > curr_inner


kinds = st.sampled_from(list(CLASS))


@given(prove=st.booleans(), where=st.sampled_from(list(CONTEXT)),
       order=st.lists(kinds, min_size=1, max_size=4))
def test_check_wait_context(prove: bool, where: str, order: list[LockKind]) -> None:
    """``check_wait_context()`` (kernel/locking/lockdep.c, v5.7-v6.x): starting from
    ``task_wait_context()`` (hardirq LD_WAIT_SPIN unless threaded, softirq LD_WAIT_CONFIG,
    task LD_WAIT_MAX), ``curr_inner`` is lowered to the inner wait type of each held lock;
    taking a lock whose outer wait type is greater is "BUG: Invalid wait context". Each
    acquisition in any nesting order is judged against what is held at that moment."""
    checker = LockChecker(prove_raw_lock_nesting=prove, preempt_rt=False)
    ctx = _ctx(where)
    want = 0
    for n, kind in enumerate(order):
        want += _expected(prove, where, order[:n], kind)
        checker.acquire(ctx, _lock(kind, n), f"site{n}")
    assert checker.counts[IWC] == want


@pytest.mark.parametrize(("prove", "where", "held", "nxt", "reported"), [
    # kfree_rcu's RFC: krcp->lock (raw) held, the page allocator takes zone->lock.
    (True, "task", [LockKind.RAW_SPINLOCK], LockKind.SPINLOCK, True),
    (False, "task", [LockKind.RAW_SPINLOCK], LockKind.SPINLOCK, False),
    # 5.14-rc reports: pcp local_lock under a raw spinlock, PROVE_RAW_LOCK_NESTING only.
    (True, "task", [LockKind.RAW_SPINLOCK], LockKind.LOCAL_LOCK, True),
    (False, "task", [LockKind.RAW_SPINLOCK], LockKind.LOCAL_LOCK, False),
    # 5.8-rc3 example: a mutex under rcu_read_lock, option off: context-{4:4}, -{3:3}, {1:2}.
    (False, "task", [LockKind.RCU], LockKind.MUTEX, True),
    (True, "task", [LockKind.RCU], LockKind.SPINLOCK, False),
    (True, "task", [LockKind.RAW_SPINLOCK], LockKind.RCU, False),
    # A mutex in a softirq (always threaded: LD_WAIT_CONFIG), a spinlock_t in a hardirq.
    (False, "softirq", [], LockKind.MUTEX, True),
    (True, "softirq", [], LockKind.SPINLOCK, False),
    (True, "hardirq", [], LockKind.SPINLOCK, True),
    (False, "hardirq", [], LockKind.SPINLOCK, False),
])
def test_check_wait_context_kernel_examples(
    prove: bool, where: str, held: list[LockKind], nxt: LockKind, reported: bool
) -> None:
    """The cases kernel.md section 7 and 8.1 cite (kernel/locking/lockdep.c
    ``check_wait_context()``, v5.7-v6.x): krcp->lock then zone->lock is reported only with
    CONFIG_PROVE_RAW_LOCK_NESTING (3 > 2); likewise a pcp ``local_lock_t`` under a raw lock
    (5.14-rc ``rmqueue_pcplist()`` reports); a mutex inside an RCU reader always (5.8-rc3:
    ``context-{4:4}``, mutex ``-{3:3}``, ``rcu_read_lock -{1:2}``); ``rcu_read_lock()`` itself
    (outer LD_WAIT_FREE) nests anywhere."""
    checker = LockChecker(prove_raw_lock_nesting=prove, preempt_rt=False)
    ctx = _ctx(where)
    for n, kind in enumerate(held):
        checker.acquire(ctx, _lock(kind, n), "outer")
    before = checker.counts[IWC]
    assert before == 0
    checker.acquire(ctx, _lock(nxt, 9), "inner")
    assert checker.counts[IWC] == int(reported)


@pytest.mark.parametrize("prove", [True, False])
def test_a_trylock_is_not_checked(prove: bool) -> None:
    """``check_wait_context()`` returns early for ``next->trylock`` (kernel/locking/lockdep.c,
    v5.7-v6.x): a trylock cannot block, so a ``spin_trylock()`` of a ``spinlock_t`` under a
    raw lock is never an invalid wait context (what makes ``alloc_pages_nolock()`` legal
    there, kernel.md 2.4)."""
    checker = LockChecker(prove_raw_lock_nesting=prove, preempt_rt=False)
    ctx = _ctx("task")
    checker.acquire(ctx, _lock(LockKind.RAW_SPINLOCK, 0), "kvfree_call_rcu")
    assert checker.trylock(ctx, _lock(LockKind.SPINLOCK, 1), "rmqueue_bulk")
    assert checker.counts[IWC] == 0
