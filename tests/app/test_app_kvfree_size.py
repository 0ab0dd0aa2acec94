"""``kvfree_rcu(obj, size=n)``: a bad ``size`` is refused at the call, on every entry point,
and leaves every queue exactly as it was (on both event loops).

``size`` is the bytes an object counts for against the domain's ``max_pending_bytes`` (the
application's byte cap; the kernel's ``kvfree_rcu()`` takes no size, its objects are pointers
counted per page of ``kvfree_rcu_bulk_data``). A byte count is an ``int`` >= 0: a ``bool``, a
float (``nan`` included) or a string is a ``TypeError``, a negative count a ``ValueError``,
whether or not the domain weighs objects (a negative size used to be ignored silently on a
domain without a byte cap, and would have *lowered* the pending bytes on one with a cap).
``size=0`` is accepted: the object counts against ``max_pending`` only.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
from apptools import SpyPool, in_worker_thread
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rcukit import RcuPointer
from rcukit.app import RcuDomain, open_domain
from rcukit.errors import RcuArgumentError, RcuBackpressureError, RcukitError

pytestmark = pytest.mark.anyio

KB = 1 << 10

#: (bad size, the builtin it must be, what the message shows of it)
BAD_SIZES: list[tuple[object, type[Exception], str]] = [
    (-1, ValueError, "-1"),
    (-(1 << 70), ValueError, str(-(1 << 70))),
    (True, TypeError, "True"),
    (False, TypeError, "False"),
    (1.0, TypeError, "1.0"),
    (math.nan, TypeError, "nan"),
    (-math.inf, TypeError, "-inf"),
    ("64", TypeError, "'64'"),
]

#: Domains that weigh nothing, cap bytes, weigh with a function, and the debug domain (the
#: pytest plugin's default), all with a long drain so nothing moves between two snapshots.
DOMAINS: dict[str, dict[str, Any]] = {
    "plain": {},
    "byte-cap": {"max_pending_bytes": 64 * KB},
    "weight": {"weight": lambda obj: 8},
    "debug": {"debug": True},
}


def _kvfree_state(rcu: RcuDomain) -> tuple[object, ...]:
    """Everything a refused call must leave alone: the domain's kvfree_rcu statistics and each
    queue's count and blocks."""
    s = rcu.statistics()
    queues = rcu._kvfree.queues
    return (
        s.kvfree_queued,
        s.kvfree_pending,
        s.kvfree_pending_bytes,
        s.kvfree_freed,
        s.kvfree_batches,
        s.blocks_in_use,
        s.blocks_cached,
        s.kvfree_queues,
        s.backpressure_events,
        s.errors,
        s.gp_seq,
        [(q.count, q.blocks_in_use(), q.deadline) for q in queues],
    )


def _check_refusal(
    info: pytest.ExceptionInfo[BaseException], kind: type[Exception], shown: str
) -> None:
    err = info.value
    assert isinstance(err, kind) and isinstance(err, RcukitError)
    if kind is ValueError:
        assert not isinstance(err, TypeError)  # a negative int is the right type
    else:
        assert isinstance(err, RcuArgumentError)
    msg = str(err)
    assert f"size={shown}" in msg, msg
    assert "integer >= 0" in msg, msg


#: name -> a call of that entry point with the bad size (sync or async)
ENTRY_POINTS: dict[str, Callable[[RcuDomain, object, Any], Awaitable[None] | None]] = {
    "kvfree_rcu": lambda rcu, obj, size: rcu.kvfree_rcu(obj, size=size),
    "kvfree_rcu_wait": lambda rcu, obj, size: rcu.kvfree_rcu_wait(obj, size=size),
    "kvfree_rcu_mightsleep": lambda rcu, obj, size: rcu.kvfree_rcu_mightsleep(obj, None, size),
    "queue.kvfree_rcu": lambda rcu, obj, size: rcu._kvfree.queues[-1].kvfree_rcu(obj, None, size),
    "queue.kvfree_rcu_wait": lambda rcu, obj, size: rcu._kvfree.queues[-1].kvfree_rcu_wait(
        obj, None, size
    ),
}


async def _call(fn: Callable[[], Awaitable[None] | None]) -> None:
    res = fn()
    if res is not None:
        await res


@pytest.mark.parametrize("domain", list(DOMAINS))
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize(("size", "kind", "shown"), BAD_SIZES)
async def test_a_bad_size_is_refused_at_the_call_and_changes_nothing(
    domain: str, entry: str, size: object, kind: type[Exception], shown: str
) -> None:
    """Every entry point, on a queue that already has a channel (the fast path's grant is live:
    the case that used to append the object without looking at ``size``) and on a new one."""
    spy = SpyPool()
    async with open_domain(release=spy, drain_delay=60.0, **DOMAINS[domain]) as rcu:
        rcu.kvfree_queue("worker")
        for q in rcu._kvfree.queues:
            q.kvfree_rcu(object(), None, 8)  # a channel, a block, and (plain) a grant
        before = _kvfree_state(rcu)
        victim = object()
        with pytest.raises(Exception) as info:
            await _call(lambda: ENTRY_POINTS[entry](rcu, victim, size))
        _check_refusal(info, kind, shown)
        assert _kvfree_state(rcu) == before
        # the queue still works, and the refused object was never queued
        await _call(lambda: ENTRY_POINTS[entry](rcu, object(), 0))
        await rcu.kvfree_rcu_barrier()
        assert rcu.statistics().kvfree_pending_bytes == 0
    assert len(spy.freed) == 3 and all(o is not victim for o in spy.freed)


@pytest.mark.parametrize(("size", "kind", "shown"), BAD_SIZES)
async def test_a_bad_size_is_refused_on_a_fresh_domain(
    size: object, kind: type[Exception], shown: str
) -> None:
    """The first call of a domain takes the slow path: refused there too, no channel made."""
    async with open_domain(drain_delay=60.0) as rcu:
        before = _kvfree_state(rcu)
        with pytest.raises(Exception) as info:
            rcu.kvfree_rcu(object(), size=size)
        _check_refusal(info, kind, shown)
        assert _kvfree_state(rcu) == before
        assert not rcu._kvfree.default._channels


async def test_size_zero_counts_against_max_pending_only() -> None:
    """``size=0``: an object that weighs nothing against ``max_pending_bytes`` (an empty buffer);
    it still counts against ``max_pending`` and is released like any other."""
    spy = SpyPool()
    async with open_domain(release=spy, max_pending=2, max_pending_bytes=KB) as rcu:
        rcu.kvfree_rcu(object(), size=0)
        rcu.kvfree_rcu(object(), size=KB)  # the byte cap exactly
        st = rcu.statistics()
        assert (st.kvfree_pending, st.kvfree_pending_bytes) == (2, KB)
        with pytest.raises(RcuBackpressureError):
            rcu.kvfree_rcu(object(), size=0)  # the object cap still holds
        await rcu.kvfree_rcu_barrier()
    assert len(spy.freed) == 2


async def test_a_bad_size_from_a_worker_thread_is_refused_before_it_reaches_the_loop() -> None:
    """``rcu.kvfree_rcu`` and ``rcu.from_thread.kvfree_rcu_wait`` from a worker thread raise the
    same errors in the thread, and queue nothing."""
    async with open_domain(drain_delay=60.0) as rcu:
        rcu.kvfree_rcu(object())
        before = _kvfree_state(rcu)

        def work() -> list[BaseException]:
            errors: list[BaseException] = []
            for call in (rcu.kvfree_rcu, rcu.from_thread.kvfree_rcu_wait):
                for size in (-5, 2.5):
                    try:
                        call(object(), None, size)  # type: ignore[operator]
                    except (TypeError, ValueError) as exc:
                        errors.append(exc)
            return errors

        errors = await in_worker_thread(work)
        assert [type(e).__mro__[1:3] for e in errors] == [
            (RcukitError, ValueError),
            (RcukitError, TypeError),
        ] * 2
        assert all("size=" in str(e) for e in errors)
        assert _kvfree_state(rcu) == before


async def test_rcu_pointer_update_with_a_bad_size_publishes_nothing() -> None:
    """``RcuPointer.update(fn, size=...)`` checks ``size`` before it calls ``fn`` or swaps: the
    old value is never published-over and then lost to a refused ``kvfree_rcu_wait``."""
    async with open_domain(max_pending_bytes=KB) as rcu:
        ptr = RcuPointer(rcu, {"v": 1})
        calls: list[object] = []

        def fn(old: dict[str, int]) -> dict[str, int]:
            calls.append(old)
            return {"v": old["v"] + 1}

        before = _kvfree_state(rcu)
        with pytest.raises(ValueError, match=r"size=-64"):
            await ptr.update(fn, size=-64)
        with pytest.raises(TypeError, match=r"size=64\.0"):
            await ptr.update(fn, size=64.0)  # type: ignore[arg-type]
        assert ptr.dereference_protected() == {"v": 1} and calls == []
        assert _kvfree_state(rcu) == before
        assert await ptr.update(fn, size=64) == {"v": 2}


async def test_a_bad_weight_result_is_refused_and_changes_nothing() -> None:
    """``weight(obj)`` stands in for ``size=``: the same checks, the same untouched queue."""
    results: list[object] = [-1, 2.0, 16]
    async with open_domain(weight=lambda obj: results.pop(0), drain_delay=60.0) as rcu:
        before = _kvfree_state(rcu)
        with pytest.raises(ValueError, match=r"weight\(.*\) returned -1"):
            rcu.kvfree_rcu(object())
        with pytest.raises(TypeError, match=r"weight\(.*\) returned 2\.0"):
            rcu.kvfree_rcu(object())
        assert _kvfree_state(rcu) == before
        assert not rcu._kvfree.default._channels
        rcu.kvfree_rcu(object())
        assert rcu.statistics().kvfree_pending_bytes == 16


@attrs.frozen
class _Call:
    size: object
    wait: bool
    queue: int


_sizes = st.one_of(
    st.none(),
    st.integers(-(1 << 40), 1 << 12),
    st.booleans(),
    st.floats(allow_nan=True),
    st.text(max_size=3),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    capped=st.booleans(),
    calls=st.lists(st.builds(_Call, _sizes, st.booleans(), st.integers(0, 1)), max_size=60),
)
async def test_any_mix_of_valid_and_invalid_sizes_keeps_the_accounts(
    capped: bool, calls: list[_Call]
) -> None:
    """Property: after any sequence of valid and invalid ``size=`` calls on two queues, the
    pending count is the number of accepted calls, the pending bytes their sizes (with a byte
    cap), every refusal left the state as it found it, and every accepted object is released."""
    spy = SpyPool()
    opts: dict[str, Any] = {"max_pending_bytes": 1 << 30, "weight": lambda o: 1} if capped else {}
    accepted = nbytes = 0
    async with open_domain(release=spy, drain_delay=60.0, **opts) as rcu:
        queues = [rcu._kvfree.default, rcu.kvfree_queue("other")]
        for c in calls:
            q = queues[c.queue]
            before = _kvfree_state(rcu)
            valid = c.size is None or (
                type(c.size) is int and c.size >= 0  # bool is refused
            )
            try:
                if c.wait:
                    await q.kvfree_rcu_wait(object(), None, c.size)  # type: ignore[arg-type]
                else:
                    q.kvfree_rcu(object(), None, c.size)  # type: ignore[arg-type]
            except (TypeError, ValueError) as exc:
                assert not valid and "size=" in str(exc)
                assert _kvfree_state(rcu) == before
                continue
            assert valid
            accepted += 1
            if capped:  # the weight (1) without size=, else the size accepted
                nbytes += 1 if c.size is None else int(c.size)
            st_ = rcu.statistics()
            assert st_.kvfree_queued == accepted
            assert st_.kvfree_pending_bytes == nbytes >= 0
        await rcu.kvfree_rcu_barrier()
        assert rcu.statistics().kvfree_pending_bytes == 0
    assert len(spy.freed) == accepted
