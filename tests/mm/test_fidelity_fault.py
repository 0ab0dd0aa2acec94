"""Fidelity of fault injection (rcukit/mm/fault.py) to ``lib/fault-inject.c`` and
``should_fail_alloc_page()``.

Sources read: ``should_fail()`` of ``lib/fault-inject.c`` (its 5.x form: ``times``, then
``space``, then ``interval``, then ``probability``; ``times`` decremented per injected failure
unless -1), and ``__should_fail_alloc_page()`` of 5.10 ``mm/page_alloc.c`` (``order <
min_order``, ``__GFP_NOFAIL``, ``ignore_gfp_reclaim`` with ``__GFP_DIRECT_RECLAIM``). rcukit's
GFP ``require`` filter and its float probability are its own (documented in fault.py); the
tests use probability 1 (the kernel's 100 percent), where both agree.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rcukit.mm.fault import FaultAttr
from rcukit.mm.gfp import GFP, GFP_KERNEL, GFP_NOWAIT


def _kernel_should_fail(interval: int, times: int, attempts: int) -> list[bool]:
    """``should_fail()`` (5.x lib/fault-inject.c) at probability 100, no task/stack filter,
    ``space`` 0."""
    count = 0
    out = []
    for _ in range(attempts):
        if times == 0:
            out.append(False)
            continue
        if interval > 1:
            count += 1
            if count % interval:
                out.append(False)
                continue
        out.append(True)
        if times != -1:
            times -= 1
    return out


@given(
    interval=st.integers(1, 10),
    times=st.integers(-1, 12),
    attempts=st.integers(0, 60),
)
def test_should_fail_counts_interval_then_times(interval: int, times: int, attempts: int) -> None:
    """``should_fail()`` (``lib/fault-inject.c``, 5.x): nothing once ``times`` is 0; with
    ``interval > 1`` only every ``interval``-th attempt may fail (``attr->count++``, ``count %
    interval``); each injected failure decrements ``times`` unless it is -1 (no limit)."""
    attr = FaultAttr(probability=1.0, interval=interval, times=times)
    got = [attr.should_fail(int(GFP_NOWAIT)) for _ in range(attempts)]
    assert got == _kernel_should_fail(interval, times, attempts)
    assert attr.injected == sum(got)


def test_should_fail_alloc_page_exemptions() -> None:
    """``__should_fail_alloc_page()`` (5.10 ``mm/page_alloc.c``): ``order <
    fail_page_alloc.min_order`` and ``__GFP_NOFAIL`` never fail; with ``ignore_gfp_reclaim``
    (debugfs ``ignore-gfp-wait``) neither does a ``__GFP_DIRECT_RECLAIM`` request; the rest
    goes to ``should_fail(&fail_page_alloc.attr, 1 << order)``."""
    attr = FaultAttr(probability=1.0, min_order=1, ignore_gfp_reclaim=True)
    assert not attr.should_fail(int(GFP_NOWAIT), 0)  # below min-order
    assert attr.should_fail(int(GFP_NOWAIT), 1)
    assert not attr.should_fail(int(GFP_NOWAIT | GFP.NOFAIL), 3)
    assert not attr.should_fail(int(GFP_KERNEL), 2)  # ignore-gfp-wait
    assert attr.injected == 1
    off = FaultAttr(probability=0.0)
    assert not off.enabled and not off.should_fail(int(GFP_NOWAIT), 5)
