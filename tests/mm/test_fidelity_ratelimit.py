"""Fidelity of ``___ratelimit()`` (rcukit/mm/show_mem.py ``RatelimitState``) to 5.x
``lib/ratelimit.c``.

Source read: ``___ratelimit()`` of ``lib/ratelimit.c`` (the 5.x form: a window opens at the
first call, ``rs->begin = jiffies``; the first call with ``time_is_before_jiffies(rs->begin +
rs->interval)`` prints "%s: %d callbacks suppressed" if any were missed, clears ``missed``
and opens a new window at ``jiffies`` with ``printed = 0``; then ``burst > printed`` lets the
call through, else it counts as missed).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rcukit.mm.show_mem import RatelimitState


def _kernel_ratelimit(interval: int, burst: int, calls: list[int]) -> list[tuple[bool, int]]:
    """``___ratelimit()`` (5.x), returning (ret, the "callbacks suppressed" count printed)."""
    begin = 0
    printed = 0
    missed = 0
    out = []
    for jiffies in calls:
        suppressed = 0
        if not begin:
            begin = jiffies
        if jiffies > begin + interval:  # time_is_before_jiffies(begin + interval)
            if missed:
                suppressed = missed
                missed = 0
            begin = jiffies
            printed = 0
        if burst and burst > printed:
            printed += 1
            out.append((True, suppressed))
        else:
            missed += 1
            out.append((False, suppressed))
    return out


@given(
    interval=st.integers(1, 50),
    burst=st.integers(0, 5),
    gaps=st.lists(st.integers(0, 30), max_size=80),
)
def test_ratelimit_is_lib_ratelimit(interval: int, burst: int, gaps: list[int]) -> None:
    """``___ratelimit()`` (``lib/ratelimit.c``, 5.x): at most ``burst`` calls pass per window
    of ``interval`` jiffies, a window starting at the call that finds the previous one over;
    that call reports the calls the previous window refused, once. (Jiffies start above 0:
    the kernel's ``!rs->begin`` test would read a window opened at jiffy 0 as none.)"""
    calls = []
    j = 1
    for g in gaps:
        j += g
        calls.append(j)
    rs = RatelimitState(interval, burst)
    got = [rs.ratelimit(jiffies) for jiffies in calls]
    assert got == _kernel_ratelimit(interval, burst, calls)
