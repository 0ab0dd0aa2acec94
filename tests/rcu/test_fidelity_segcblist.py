"""Fidelity of ``rcukit.rcu.segcblist`` to ``kernel/rcu/rcu_segcblist.c``.

Source read: torvalds/linux ``kernel/rcu/rcu_segcblist.c`` @ 0ccfdcf968b3 (``enqueue``,
``entrain``, ``extract_done_cbs``/``extract_pend_cbs``, ``insert_done_cbs``/
``insert_pend_cbs``, ``advance``, ``accelerate``, ``merge``); the functions have had this shape
since v5.9 (the per-segment lengths came in v5.10, and do not change the behaviour).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rcukit.rcu.gpseq import rcu_seq_end, rcu_seq_snap, rcu_seq_start
from rcukit.rcu.segcblist import (
    RCU_DONE_TAIL,
    RCU_NEXT_READY_TAIL,
    RCU_NEXT_TAIL,
    RCU_WAIT_TAIL,
    RcuHead,
    SegCbList,
)


class Cb(RcuHead):
    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        super().__init__(None)
        self.n = n


def _queue(cbl: SegCbList, *ns: int) -> None:
    for n in ns:
        cbl.enqueue(Cb(n))


def _drain(cbl: SegCbList) -> list[int]:
    return [h.n for h in cbl.extract_done() if isinstance(h, Cb)]


def test_segment_numbering() -> None:
    """``RCU_DONE_TAIL 0``, ``RCU_WAIT_TAIL 1``, ``RCU_NEXT_READY_TAIL 2``, ``RCU_NEXT_TAIL 3``
    (include/linux/rcu_segcblist.h, v5.9-v6.x)."""
    assert (RCU_DONE_TAIL, RCU_WAIT_TAIL, RCU_NEXT_READY_TAIL, RCU_NEXT_TAIL) == (0, 1, 2, 3)


def test_enqueue_goes_to_next_and_advance_never_moves_next() -> None:
    """``rcu_segcblist_enqueue()`` appends to ``RCU_NEXT_TAIL``; ``rcu_segcblist_advance()``
    scans only ``RCU_WAIT_TAIL`` .. ``RCU_NEXT_READY_TAIL`` ("for (i = RCU_WAIT_TAIL; i <
    RCU_NEXT_TAIL; i++)"), so a callback with no GP number assigned is never made ready,
    whatever the completed sequence (kernel/rcu/rcu_segcblist.c, v5.9-v6.x)."""
    cbl = SegCbList()
    _queue(cbl, 1, 2)
    assert cbl.segment_lengths() == (0, 0, 0, 2)
    cbl.advance(1 << 40)
    assert cbl.segment_lengths() == (0, 0, 0, 2) and not cbl.ready_cbs() and cbl.pend_cbs()


def test_accelerate_cases_of_the_kernel() -> None:
    """``rcu_segcblist_accelerate(rsclp, seq)`` (kernel/rcu/rcu_segcblist.c, v5.9-v6.x) finds,
    from ``RCU_NEXT_READY_TAIL`` down, the newest non-empty segment waiting for a GP before
    ``seq``; everything after it, NEXT included, is merged into the segment just after it and
    gets ``seq``. It returns false if nothing is pending, or if that segment is
    ``RCU_NEXT_READY_TAIL`` itself (NEXT cannot move: no free segment)."""
    # Only NEXT: it becomes WAIT for seq.
    cbl = SegCbList()
    assert not cbl.accelerate(8)  # restempty(DONE)
    _queue(cbl, 1)
    assert cbl.accelerate(8)
    assert cbl.segment_lengths() == (0, 1, 0, 0) and cbl.segment_gp_seqs()[RCU_WAIT_TAIL] == 8
    # WAIT waits for 8 < 12: NEXT goes to NEXT_READY for 12.
    _queue(cbl, 2)
    assert cbl.accelerate(12)
    assert cbl.segment_lengths() == (0, 1, 1, 0)
    assert cbl.segment_gp_seqs()[1:3] == (8, 12)
    # NEXT_READY already waits for 12 < 16: nothing can move, NEXT keeps no GP number.
    _queue(cbl, 3)
    assert not cbl.accelerate(16)
    assert cbl.segment_lengths() == (0, 1, 1, 1)
    # With seq 12 NEXT_READY (12) is not earlier: NEXT merges into it, both waiting for 12.
    assert cbl.accelerate(12)
    assert cbl.segment_lengths() == (0, 1, 2, 0)
    # An over-conservative WAIT (waiting for 16 >= seq 12) is merged with what follows and
    # made to wait for the earlier seq.
    over = SegCbList()
    _queue(over, 1)
    over.accelerate(16)
    _queue(over, 2)
    assert over.accelerate(12)
    assert over.segment_lengths() == (0, 2, 0, 0) and over.segment_gp_seqs()[1] == 12


def test_advance_moves_completed_segments_and_slides_the_rest_down() -> None:
    """``rcu_segcblist_advance(rsclp, seq)`` (kernel/rcu/rcu_segcblist.c, v5.9-v6.x) moves each
    segment from WAIT on whose ``gp_seq`` is not after ``seq`` into DONE, stops at the first one
    still waiting, then copies the later segments down into the gap with their ``gp_seq``."""
    cbl = SegCbList()
    _queue(cbl, 1)
    cbl.accelerate(8)
    _queue(cbl, 2, 3)
    cbl.accelerate(12)
    _queue(cbl, 4)
    assert cbl.segment_lengths() == (0, 1, 2, 1)
    cbl.advance(4)
    assert cbl.segment_lengths() == (0, 1, 2, 1)  # nothing completed yet
    cbl.advance(8)
    assert cbl.segment_lengths() == (1, 2, 0, 1)
    assert cbl.segment_gp_seqs()[RCU_WAIT_TAIL] == 12
    assert _drain(cbl) == [1]
    cbl.advance(12)
    assert cbl.segment_lengths() == (2, 0, 0, 1)
    assert _drain(cbl) == [2, 3]


def test_entrain_joins_the_last_non_empty_segment() -> None:
    """``rcu_segcblist_entrain()`` (kernel/rcu/rcu_segcblist.c, v5.9-v6.x, used by
    ``rcu_barrier()``): "Entrain the specified callback ... at the end of the last non-empty
    segment. If the entire rcu_segcblist is empty, make no change, but return false"; the
    callback "will wait for all prior callbacks, NOT necessarily for a grace period"."""
    cbl = SegCbList()
    assert not cbl.entrain(Cb(0)) and len(cbl) == 0
    _queue(cbl, 1)
    cbl.accelerate(8)
    assert cbl.entrain(Cb(2))
    assert cbl.segment_lengths() == (0, 2, 0, 0)  # joins WAIT, sharing its GP
    _queue(cbl, 3)
    assert cbl.entrain(Cb(4))
    assert cbl.segment_lengths() == (0, 2, 0, 2)  # joins NEXT
    cbl.advance(8)
    assert _drain(cbl) == [1, 2]
    done_only = SegCbList()
    _queue(done_only, 5)
    done_only.accelerate(8)
    done_only.advance(8)
    assert done_only.entrain(Cb(6))
    assert done_only.segment_lengths() == (2, 0, 0, 0)  # DONE only: runs with it
    assert _drain(done_only) == [5, 6]


def test_merge_puts_done_first_and_restarts_pending_callbacks() -> None:
    """``rcu_segcblist_merge(dst, src)`` (kernel/rcu/rcu_segcblist.c, v5.9-v6.x; CPU hotplug's
    ``rcutree_migrate_callbacks()``) extracts ``src``'s done and pending callbacks, inserts the
    done ones "to the beginning of the done-callbacks segment" of ``dst`` and the pending ones
    "to the end of the new-callbacks segment" ("Any pending callbacks from the source get to
    start over"), then re-initialises ``src``."""
    src = SegCbList()
    _queue(src, 10)
    src.accelerate(8)
    src.advance(8)  # 10 is done
    _queue(src, 11)
    src.accelerate(12)  # 11 waits for 12
    _queue(src, 12)  # 12 has no GP yet
    dst = SegCbList()
    _queue(dst, 1)
    dst.accelerate(8)
    dst.advance(8)  # 1 is done
    _queue(dst, 2)
    dst.accelerate(12)
    dst.merge_from(src)
    assert len(src) == 0 and src.segment_lengths() == (0, 0, 0, 0)
    assert dst.segment_lengths() == (2, 1, 0, 2)
    assert _drain(dst) == [10, 1]
    dst.advance(1 << 20)
    assert _drain(dst) == [2]  # 11 and 12 lost their GP: NEXT again
    assert dst.segment_lengths() == (0, 0, 0, 2)


ops = st.lists(st.sampled_from(["enqueue", "accelerate", "gp_start", "gp_end", "advance"]),
               max_size=60)


@given(ops)
def test_callbacks_run_in_order_and_only_after_their_grace_period(seq: list[str]) -> None:
    """The kernel's callback list is one singly linked list whose segments only move
    boundaries (include/linux/rcu_segcblist.h, kernel/rcu/rcu_segcblist.c, v5.9-v6.x), so
    callbacks are invoked in ``call_rcu()`` order; and a callback accelerated with
    ``rcu_seq_snap(&gp_seq)`` (``rcu_accelerate_cbs()``, kernel/rcu/tree.c) is ready only once
    ``gp_seq`` has reached that snapshot, i.e. after a full GP that started after it was
    queued."""
    gp_seq = 0
    cbl = SegCbList()
    queued_at: dict[int, int] = {}  # callback -> the snapshot it needs at the latest
    n = 0
    out: list[int] = []
    for op in seq:
        if op == "enqueue":
            cbl.enqueue(Cb(n))
            queued_at[n] = rcu_seq_snap(gp_seq)
            n += 1
        elif op == "accelerate":
            cbl.accelerate(rcu_seq_snap(gp_seq))
        elif op == "gp_start" and not gp_seq & 3:
            gp_seq = rcu_seq_start(gp_seq)
        elif op == "gp_end" and gp_seq & 3:
            gp_seq = rcu_seq_end(gp_seq)
        elif op == "advance":
            cbl.advance(gp_seq)
            for cb in _drain(cbl):
                assert gp_seq >= queued_at[cb]
                out.append(cb)
        cbl.check_invariants()
    assert out == sorted(out) == list(range(len(out)))
