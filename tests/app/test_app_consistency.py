"""Consistency (issue 16 item 6): debug mode is never more lenient than production, bad input
is refused at the call, one callback's BaseException drops no other callback, and a pooled
object queued twice is never handed out twice."""

from __future__ import annotations

import anyio
import pytest
from apptools import on_both_loops, run_on

from rcukit.app import ObjectPool, open_domain
from rcukit.errors import MemoryDebugError, RcuArgumentError, RcuUsageError


@on_both_loops
@pytest.mark.parametrize("gps", [1, 2])
def test_a_guard_kept_across_grace_periods(backend: str, gps: int) -> None:
    """Production refuses a guard kept across an odd number of GPs (its phase is inactive; an
    even number brings the phase back, so entering it then is safe). Debug mode refuses it
    after any GP: it used to accept both."""

    async def main() -> None:
        with anyio.fail_after(10):
            for debug in (False, True):
                async with open_domain(debug=debug) as rcu:
                    guard = rcu.read_lock()
                    for _ in range(gps):
                        await rcu.synchronize_rcu()
                    if debug or gps % 2:
                        with pytest.raises(RcuUsageError, match=r"kept|later"), guard:
                            pass
                    else:
                        with guard:
                            assert rcu.statistics().readers == 1
                    assert rcu.statistics().readers == 0

    run_on(backend, main)


class Conn:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


@on_both_loops
@pytest.mark.parametrize("debug", [False, True])
def test_release_targets_are_checked_at_the_call(backend: str, debug: bool) -> None:
    """``kvfree_rcu(conn, conn.close)`` used to be accepted and then every release raised
    TypeError; a target that cannot be called as ``release(obj)`` (or is async) is refused at
    the call, and nothing is queued."""

    async def arelease(obj: object) -> None:  # pragma: no cover - never called
        pass

    async def main() -> None:
        with anyio.fail_after(10):
            async with open_domain(debug=debug) as rcu:
                c = Conn()
                for bad in (c.close, arelease, lambda: None):
                    with pytest.raises(RcuArgumentError):
                        rcu.kvfree_rcu(c, bad)
                assert rcu.statistics().kvfree_pending == 0
                rcu.kvfree_rcu(c, Conn.close)
                await rcu.kvfree_rcu_barrier()
                assert c.closed == 1

    run_on(backend, main)


class Interrupt(BaseException):
    """Stands for KeyboardInterrupt/SystemExit raised inside a callback."""


@on_both_loops
@pytest.mark.parametrize("kind", ["call_rcu", "kvfree_rcu"])
def test_a_base_exception_in_one_callback_drops_no_other(backend: str, kind: str) -> None:
    """A BaseException is not swallowed (it leaves ``open_domain``), but only after the other
    callbacks (release functions) queued with it have run."""
    ran: list[int] = []

    def cb(i: int) -> None:
        ran.append(i)
        if i == 3:
            raise Interrupt

    async def main() -> None:
        with anyio.fail_after(10):
            async with open_domain() as rcu:
                for i in range(10):
                    if kind == "call_rcu":
                        rcu.call_rcu(cb, i)
                    else:
                        rcu.kvfree_rcu(i, cb)

    with pytest.raises(BaseException) as ei:
        run_on(backend, main)
    leaves: list[BaseException] = []
    stack: list[BaseException] = [ei.value]
    while stack:
        e = stack.pop()
        if isinstance(e, BaseExceptionGroup):
            stack.extend(e.exceptions)
        else:
            leaves.append(e)
    assert any(isinstance(e, Interrupt) for e in leaves)
    assert sorted(ran) == list(range(10))


@on_both_loops
def test_a_pooled_object_queued_twice_is_never_handed_out_twice(backend: str) -> None:
    """Without debug mode the pool keeps one copy of a doubly-freed object and the release
    reports a MemoryDebugError (SLUB's freelist-hardened ``object == fp`` check is the same
    idea: a cheap test on every free, not the debug bookkeeping)."""
    pool: ObjectPool[object] = ObjectPool(object)
    errors: list[Exception] = []

    async def main() -> None:
        with anyio.fail_after(10):
            async with open_domain(on_error=errors.append) as rcu:
                a, b = pool.alloc(), pool.alloc()
                rcu.kvfree_rcu(a, pool)
                rcu.kvfree_rcu(a, pool)  # the bug: queued twice
                await rcu.synchronize_rcu()
                rcu.kvfree_rcu(b, pool)
                await rcu.kvfree_rcu_barrier()

    run_on(backend, main)
    assert len(errors) == 1 and isinstance(errors[0], MemoryDebugError)
    got = [pool.alloc(), pool.alloc(), pool.alloc()]
    assert len({id(o) for o in got}) == 3
    with pytest.raises(MemoryDebugError, match="double free"):
        pool.free(got[0])
        pool.free(got[0])


def test_a_value_compared_pooled_object_freed_twice_is_cached_once() -> None:
    """Objects that are unhashable or compare by value (``bytearray``) take the id-set path of
    the same check."""
    pool: ObjectPool[bytearray] = ObjectPool(lambda: bytearray(8))
    a, b = pool.alloc(), pool.alloc()
    with pytest.raises(MemoryDebugError, match="1 object"):
        pool.free_bulk([a, b, a])
    assert pool.statistics().cached == 2
    got = [pool.alloc(), pool.alloc(), pool.alloc()]
    assert len({id(o) for o in got}) == 3
