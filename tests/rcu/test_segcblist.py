"""SegCbList against the kernel's rcu_segcblist rules, plus a model-based state machine."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from rcukit.errors import ConfigError, SegCbListError, SimulationError
from rcukit.rcu.gpseq import (
    ULONG_MASK,
    rcu_seq_done,
    rcu_seq_end,
    rcu_seq_snap,
    rcu_seq_start,
    rcu_seq_state,
    ulong_cmp_ge,
)
from rcukit.rcu.segcblist import (
    DEFAULT_MAX_RCU_BLIMIT,
    RCU_DONE_TAIL,
    RCU_NEXT_READY_TAIL,
    RCU_NEXT_TAIL,
    RCU_WAIT_TAIL,
    BatchLimits,
    RcuHead,
    SegCbList,
)


class Tagged(RcuHead):
    """A payload-carrying head, the container_of() pattern the docs describe."""

    __slots__ = ("must_follow", "name", "req")

    def __init__(
        self, name: object, req: int | None = None, must_follow: frozenset[int] = frozenset()
    ) -> None:
        super().__init__(_record)
        self.name = name
        self.req = req  # the gp_seq snapshot that must be reached before this may run
        self.must_follow = must_follow


def _record(head: RcuHead) -> object:
    assert isinstance(head, Tagged)
    return head.name


def names(cbs: list[RcuHead]) -> list[object]:
    return [h.name for h in cbs if isinstance(h, Tagged)]


def fill(cbl: SegCbList, *labels: object) -> None:
    for label in labels:
        cbl.enqueue(Tagged(label))


# ------------------------------------------------------------------------ RcuHead


def test_rcu_head_is_slotted_and_subclassable() -> None:
    h = RcuHead()
    assert h.func is None
    with pytest.raises(AttributeError):
        h.extra = 1  # type: ignore[attr-defined]
    t = Tagged("x")
    assert not hasattr(t, "__dict__")
    assert t.func is not None
    assert t.func(t) == "x"
    assert "Tagged" in repr(t)


# ------------------------------------------------------------------------ worked scenarios


def test_enqueue_accelerate_advance_extract() -> None:
    cbl = SegCbList()
    cur = 4
    fill(cbl, "a", "b", "c")
    assert cbl.segment_lengths() == (0, 0, 0, 3)
    assert cbl.first_pend_gp_seq() is None
    assert cbl.accelerate(rcu_seq_snap(cur))
    assert cbl.segment_lengths() == (0, 3, 0, 0)
    assert cbl.first_pend_gp_seq() == 8

    cur = rcu_seq_start(cur)  # 5: a GP is running that may predate d and e
    fill(cbl, "d", "e")
    assert cbl.accelerate(rcu_seq_snap(cur))
    assert cbl.segment_lengths() == (0, 3, 2, 0)
    assert cbl.segment_gp_seqs()[RCU_WAIT_TAIL:RCU_NEXT_TAIL] == (8, 12)

    fill(cbl, "f")
    assert cbl.accelerate(rcu_seq_snap(cur))  # joins NEXT_READY, same GP
    assert cbl.segment_lengths() == (0, 3, 3, 0)

    cbl.advance(cur)  # GP 5 still running: nothing is ready
    assert not cbl.ready_cbs()
    cur = rcu_seq_end(cur)  # 8
    cbl.advance(cur)
    assert cbl.segment_lengths() == (3, 3, 0, 0)  # NEXT_READY slid down into WAIT
    assert cbl.first_pend_gp_seq() == 12
    cbl.check_invariants()

    assert cbl.ready_cbs() and cbl.pend_cbs()
    assert names(cbl.extract_done(2)) == ["a", "b"]
    assert names(cbl.extract_done()) == ["c"]
    assert cbl.extract_done() == []

    cur = rcu_seq_end(rcu_seq_start(cur))  # 12
    cbl.advance(cur)
    assert names(cbl.extract_done(100)) == ["d", "e", "f"]
    assert cbl.n_cbs == 0 and len(cbl) == 0
    assert not cbl.pend_cbs()


def test_accelerate_cannot_move_next_past_an_older_next_ready() -> None:
    cbl = SegCbList()
    fill(cbl, "a")
    assert cbl.accelerate(8)
    fill(cbl, "b")
    assert cbl.accelerate(12)
    fill(cbl, "c")
    # WAIT waits for 8, NEXT_READY for 12; there is no segment left for 16.
    assert not cbl.accelerate(16)
    assert cbl.segment_lengths() == (0, 1, 1, 1)
    cbl.advance(16)  # even a far-later GP cannot make unassigned callbacks ready
    assert cbl.segment_lengths() == (2, 0, 0, 1)
    assert names(cbl.extract_done()) == ["a", "b"]


def test_accelerate_merges_segments_waiting_for_a_later_gp() -> None:
    cbl = SegCbList()
    fill(cbl, "a")
    assert cbl.accelerate(16)
    fill(cbl, "b")
    # More accurate information: GP 12 is enough for everything queued.
    assert cbl.accelerate(12)
    assert cbl.segment_lengths() == (0, 2, 0, 0)
    assert cbl.first_pend_gp_seq() == 12
    cbl.advance(12)
    assert names(cbl.extract_done()) == ["a", "b"]


def test_accelerate_with_nothing_pending() -> None:
    cbl = SegCbList()
    assert not cbl.accelerate(8)
    fill(cbl, "a")
    cbl.accelerate(8)
    # As in the kernel, True means "some callbacks wait for this seq", even if they already did.
    assert cbl.accelerate(8)
    # Everything waits for an earlier GP than 12 and nothing is new: nothing to do.
    assert not cbl.accelerate(12)
    assert cbl.segment_lengths() == (0, 1, 0, 0)


def test_advance_is_wrap_safe() -> None:
    cbl = SegCbList()
    cur = (ULONG_MASK - 3) & ~3  # idle, one GP before the wrap
    fill(cbl, "a")
    snap = rcu_seq_snap(cur)
    assert snap == 0  # the wrap
    assert cbl.accelerate(snap)
    cbl.advance(cur)
    assert not cbl.ready_cbs()
    cur = rcu_seq_end(rcu_seq_start(cur))
    assert cur == 0
    cbl.advance(cur)
    assert names(cbl.extract_done()) == ["a"]


def test_extract_done_rejects_negative_limit() -> None:
    cbl = SegCbList()
    with pytest.raises(SegCbListError, match="limit"):
        cbl.extract_done(-1)
    assert cbl.extract_done(0) == []


def test_entrain_on_empty_list_takes_nothing() -> None:
    cbl = SegCbList()
    assert not cbl.entrain(Tagged("barrier"))
    assert cbl.n_cbs == 0


def test_entrain_joins_newest_nonempty_segment() -> None:
    cbl = SegCbList()
    fill(cbl, "a")
    cbl.accelerate(8)
    cbl.advance(8)  # a is DONE, nothing else
    assert cbl.entrain(Tagged("b1"))
    assert cbl.segment_lengths() == (2, 0, 0, 0)
    assert names(cbl.extract_done()) == ["a", "b1"]

    fill(cbl, "c")
    cbl.accelerate(12)
    assert cbl.entrain(Tagged("b2"))
    assert cbl.segment_lengths() == (0, 2, 0, 0)  # shares c's GP, needs nothing more

    fill(cbl, "d")
    assert cbl.entrain(Tagged("b3"))
    assert cbl.segment_lengths() == (0, 2, 0, 2)
    cbl.accelerate(16)
    cbl.advance(16)
    assert names(cbl.extract_done()) == ["c", "b2", "d", "b3"]


def test_merge_from() -> None:
    dst, src = SegCbList(), SegCbList()
    fill(dst, "a1")
    dst.accelerate(8)
    dst.advance(8)
    fill(dst, "a2")
    fill(src, "b0", "b1")
    src.accelerate(8)
    src.advance(8)
    fill(src, "b2")
    src.accelerate(12)
    fill(src, "b3")
    assert src.segment_lengths() == (2, 1, 0, 1)

    dst.merge_from(src)
    assert src.n_cbs == 0
    assert src.segment_lengths() == (0, 0, 0, 0)
    assert dst.segment_lengths() == (3, 0, 0, 3)  # pending ones lose their GP numbers
    dst.check_invariants()
    src.check_invariants()
    assert names(dst.extract_done()) == ["b0", "b1", "a1"]
    dst.advance(12)
    assert not dst.ready_cbs()  # b2's old GP number no longer counts
    dst.accelerate(16)
    dst.advance(16)
    assert names(dst.extract_done()) == ["a2", "b2", "b3"]

    with pytest.raises(SegCbListError, match="itself"):
        dst.merge_from(dst)
    dst.merge_from(SegCbList())  # merging an empty list is a no-op
    assert dst.n_cbs == 0


def test_check_invariants_catches_corruption() -> None:
    cbl = SegCbList()
    fill(cbl, "a", "b")
    cbl.check_invariants()
    cbl._seglen[RCU_NEXT_TAIL] = 1
    with pytest.raises(SimulationError, match="add up"):
        cbl.check_invariants()
    cbl._seglen[:] = [0, 0, 2, 0]
    with pytest.raises(SimulationError, match="WAIT"):
        cbl.check_invariants()
    cbl._seglen[:] = [0, 1, 1, 0]
    cbl._gp_seq[RCU_WAIT_TAIL] = 12
    cbl._gp_seq[RCU_NEXT_READY_TAIL] = 8
    with pytest.raises(SimulationError, match="non-decreasing"):
        cbl.check_invariants()


def test_repr_is_short() -> None:
    cbl = SegCbList()
    fill(cbl, *range(1000))
    assert len(repr(cbl)) < 200


# ------------------------------------------------------------------------ batch limits


def test_batch_limits_hysteresis() -> None:
    """``rcu_do_batch`` (v5.9 and v6.1 ``kernel/rcu/tree.c``): ``bl = max(rdp->blimit, pending >>
    rcu_divisor)``; ``rdp->blimit`` is raised to ``DEFAULT_MAX_RCU_BLIMIT`` (10000) past
    ``qhimark`` and restored to ``blimit`` once at most ``qlowmark`` remain."""
    bl = BatchLimits()
    assert (bl.blimit, bl.qhimark, bl.qlowmark, bl.rcu_divisor) == (10, 10000, 100, 7)
    assert bl.limit_for(0) == 10
    assert bl.limit_for(1279) == 10  # 1279 >> 7 = 9
    assert bl.limit_for(10000) == 10000 >> 7 == 78  # at the mark, not above it
    assert bl.limit_for(10001) == DEFAULT_MAX_RCU_BLIMIT == 10000
    assert bl.raised
    assert bl.limit_for(5000) == DEFAULT_MAX_RCU_BLIMIT  # still draining the backlog
    assert bl.limit_for(101) == DEFAULT_MAX_RCU_BLIMIT
    assert bl.limit_for(100) == 10  # restored at qlowmark
    assert not bl.raised
    assert bl.limit_for(5000) == 5000 >> 7  # restored until qhimark again; the divisor rules
    assert bl.limit_for(2_000_000) == 2_000_000 >> 7  # more than the raised cap


def test_batch_limits_custom_and_validation() -> None:
    bl = BatchLimits(blimit=3, qhimark=50, qlowmark=5)
    assert bl.limit_for(10) == 3
    assert bl.limit_for(51) == DEFAULT_MAX_RCU_BLIMIT
    assert bl.limit_for(5) == 3
    assert BatchLimits(blimit=3, rcu_divisor=1).limit_for(10) == 5
    with pytest.raises(ConfigError, match="blimit"):
        BatchLimits(blimit=0)
    with pytest.raises(ValueError, match="qhimark"):
        BatchLimits(qhimark=100, qlowmark=100)
    with pytest.raises(ConfigError, match="qlowmark"):
        BatchLimits(qlowmark=-1)
    with pytest.raises(ConfigError, match="rcu_divisor"):
        BatchLimits(rcu_divisor=-1)


# ------------------------------------------------------------------------ model-based


class SegCbListMachine(RuleBasedStateMachine):
    """Two CPUs' lists and one global gp_seq, driven the way tree RCU drives them.

    The model tags each callback with the snapshot taken when it was queued (it may not run before
    that is reached) and with the callbacks queued ahead of it on the same list (it may not run
    before them). Barrier callbacks need no GP of their own.
    """

    NLISTS = 2

    def __init__(self) -> None:
        super().__init__()
        self.lists = [SegCbList() for _ in range(self.NLISTS)]
        self.on_list: list[set[int]] = [set() for _ in range(self.NLISTS)]
        self.invoked: set[int] = set()
        self.queued = 0
        self.dropped = 0  # barriers entrained on an empty list, which takes nothing
        self.cur = 0
        self.history: list[int] = []

    @initialize(
        start=st.one_of(
            st.sampled_from([0, 4, 5, (-300 << 2) & ULONG_MASK, ULONG_MASK - 3, ULONG_MASK - 2]),
            st.integers(0, ULONG_MASK),
        )
    )
    def set_start(self, start: int) -> None:
        self.cur = start
        self.history = [start]

    def _set_cur(self, value: int) -> None:
        self.cur = value
        self.history.append(value)

    def _new_cb(self, k: int, barrier: bool) -> Tagged:
        uid = self.queued
        self.queued += 1
        req = None if barrier else rcu_seq_snap(self.cur)
        return Tagged(uid, req, frozenset(self.on_list[k]))

    lst = st.integers(0, NLISTS - 1)

    @rule(k=lst, n=st.integers(1, 4))
    def enqueue(self, k: int, n: int) -> None:
        for _ in range(n):
            cb = self._new_cb(k, barrier=False)
            self.lists[k].enqueue(cb)
            self.on_list[k].add(cb.name)  # type: ignore[arg-type]

    @rule(k=lst)
    def entrain(self, k: int) -> None:
        cb = self._new_cb(k, barrier=True)
        was_empty = self.lists[k].n_cbs == 0
        assert self.lists[k].entrain(cb) is not was_empty
        if was_empty:
            self.dropped += 1
        else:
            self.on_list[k].add(cb.name)  # type: ignore[arg-type]

    @precondition(lambda self: rcu_seq_state(self.cur) == 0)
    @rule()
    def start_gp(self) -> None:
        self._set_cur(rcu_seq_start(self.cur))

    @precondition(lambda self: rcu_seq_state(self.cur) != 0)
    @rule()
    def end_gp(self) -> None:
        self._set_cur(rcu_seq_end(self.cur))

    @rule(k=lst)
    def accelerate(self, k: int) -> None:
        cbl = self.lists[k]
        before = cbl.segment_lengths()
        snap = rcu_seq_snap(self.cur)
        needs_gp = cbl.accelerate(snap)
        after = cbl.segment_lengths()
        assert after[RCU_DONE_TAIL] == before[RCU_DONE_TAIL]
        assert sum(after) == sum(before)
        gps = cbl.segment_gp_seqs()
        for seg in (RCU_WAIT_TAIL, RCU_NEXT_READY_TAIL):
            if after[seg]:
                assert ulong_cmp_ge(snap, gps[seg])  # never waits longer than needed
        if needs_gp:
            assert any(after[s] and gps[s] == snap for s in (RCU_WAIT_TAIL, RCU_NEXT_READY_TAIL))
            assert after[RCU_NEXT_TAIL] == 0
        if before[RCU_NEXT_TAIL] and not before[RCU_NEXT_READY_TAIL]:
            assert after[RCU_NEXT_TAIL] == 0  # there was room, so NEXT got a GP number

    @rule(k=lst, data=st.data())
    def advance(self, k: int, data: st.DataObject) -> None:
        # rnp->gp_seq may lag rcu_state.gp_seq, so sometimes use an older value.
        seq = data.draw(st.sampled_from(self.history[-6:]))
        cbl = self.lists[k]
        before = cbl.segment_lengths()
        cbl.advance(seq)
        after = cbl.segment_lengths()
        assert after[RCU_NEXT_TAIL] == before[RCU_NEXT_TAIL]  # unassigned never become ready
        assert after[RCU_DONE_TAIL] >= before[RCU_DONE_TAIL]
        assert sum(after) == sum(before)

    @rule(k=lst, limit=st.one_of(st.none(), st.integers(0, 5)))
    def extract(self, k: int, limit: int | None) -> None:
        cbl = self.lists[k]
        ready = cbl.segment_lengths()[RCU_DONE_TAIL]
        got = cbl.extract_done(limit)
        assert len(got) == (ready if limit is None else min(ready, limit))
        for head in got:
            self._invoke(k, head)

    def _invoke(self, k: int, head: RcuHead) -> None:
        assert isinstance(head, Tagged)
        assert head.func is not None and head.func(head) == head.name
        uid = head.name
        assert isinstance(uid, int)
        assert uid in self.on_list[k], f"callback {uid} came off a list it was not on"
        assert uid not in self.invoked, f"callback {uid} invoked twice"
        if head.req is not None:
            assert rcu_seq_done(self.cur, head.req), f"callback {uid} invoked before its GP"
        early = head.must_follow - self.invoked
        assert not early, f"callback {uid} invoked before {sorted(early)} queued ahead of it"
        self.invoked.add(uid)
        self.on_list[k].discard(uid)

    @rule(src=lst, dst=lst)
    def merge(self, src: int, dst: int) -> None:
        if src == dst:
            return
        total = self.lists[src].n_cbs + self.lists[dst].n_cbs
        self.lists[dst].merge_from(self.lists[src])
        assert self.lists[dst].n_cbs == total
        assert self.lists[src].n_cbs == 0
        self.on_list[dst] |= self.on_list[src]
        self.on_list[src] = set()

    @rule(k=lst)
    def full_gp_without_invoking(self, k: int) -> None:
        """One accelerate / full GP / advance round that leaves the ready callbacks queued."""
        cbl = self.lists[k]
        cbl.accelerate(rcu_seq_snap(self.cur))
        if rcu_seq_state(self.cur):
            self._set_cur(rcu_seq_end(self.cur))
        self._set_cur(rcu_seq_end(rcu_seq_start(self.cur)))
        cbl.advance(self.cur)

    @rule(k=lst)
    def drain(self, k: int) -> None:
        """Run the list to empty like a CPU that keeps noticing GPs; everything must come out."""
        cbl = self.lists[k]
        for _ in range(3):
            cbl.advance(self.cur)
            cbl.accelerate(rcu_seq_snap(self.cur))
            if rcu_seq_state(self.cur):
                self._set_cur(rcu_seq_end(self.cur))
            self._set_cur(rcu_seq_end(rcu_seq_start(self.cur)))
            cbl.advance(self.cur)
            for head in cbl.extract_done():
                self._invoke(k, head)
        assert cbl.n_cbs == 0
        assert not self.on_list[k]

    @invariant()
    def consistent(self) -> None:
        for k, cbl in enumerate(self.lists):
            cbl.check_invariants()
            assert cbl.n_cbs == sum(cbl.segment_lengths()) == len(self.on_list[k])
            assert cbl.ready_cbs() == (cbl.segment_lengths()[RCU_DONE_TAIL] > 0)
            assert cbl.pend_cbs() == (sum(cbl.segment_lengths()[1:]) > 0)

    def teardown(self) -> None:
        # Nothing may be lost: after draining every list, every callback ran exactly once.
        for k in range(self.NLISTS):
            self.drain(k)
        assert len(self.invoked) == self.queued - self.dropped
        assert all(not s for s in self.on_list)


SegCbListMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSegCbListModel = SegCbListMachine.TestCase
