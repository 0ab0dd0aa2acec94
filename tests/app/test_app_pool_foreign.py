"""``ObjectPool`` given objects it never handed out: refused with an error, statistics never
negative, in production mode as in debug mode (and through ``kvfree_rcu``, on both loops).

The kernel's SLUB trusts ``kmem_cache_free(s, x)`` unless hardening or debugging is on:
``cache_from_obj()`` (mm/slab.h, v4.14 as stored, commit 00ed905ab8e5) returns ``s`` without
looking at the object unless ``SLAB_CONSISTENCY_CHECKS`` (or memcg) is set; only then does it
read the object's page (``page->slab_cache``) and WARN "Wrong slab cache. %s but object is
from %s". The production pool does what it can at no per-object cost: it refuses the objects
of a free beyond those it has out (``allocs - frees``); the debug pool (the consistency-checks
case) knows every object and refuses a foreign one wherever it comes.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rcukit.app import ObjectPool, open_domain
from rcukit.errors import MemoryDebugError


class Buf:
    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = 0


def _books(pool: ObjectPool[Any]) -> tuple[int, int, int, int, int]:
    s = pool.statistics()
    return (s.in_use, s.cached, s.allocs, s.frees, s.dropped)


@pytest.mark.parametrize("factory", [Buf, bytearray], ids=["by-identity", "by-value"])
@pytest.mark.parametrize("debug", [False, True], ids=["production", "debug"])
def test_a_foreign_object_freed_once_or_twice_is_refused(factory: Any, debug: bool) -> None:
    """The reported defect: ``in_use`` became -1 after a foreign free (production pool)."""
    pool: ObjectPool[Any] = ObjectPool(factory, debug=debug, name="bufs", prefill=2)
    mine = pool.alloc()
    pool.free(mine)
    before = _books(pool)
    foreign = factory()
    for _ in range(2):
        with pytest.raises(MemoryDebugError, match="'bufs'") as info:
            pool.free(foreign)
        assert info.value.kind == "invalid-free"
        assert _books(pool) == before
    kinds: list[str] = []
    try:
        pool.free_bulk([foreign, factory()])  # debug mode: one error per object, grouped
    except* MemoryDebugError as group:
        kinds = [e.kind for e in group.exceptions if isinstance(e, MemoryDebugError)]
    assert kinds and set(kinds) == {"invalid-free"}
    assert _books(pool) == before
    assert pool.statistics().in_use == 0
    assert all(pool.alloc() is not foreign for _ in range(4))  # never cached


def test_production_refusal_says_what_it_can_and_cannot_tell() -> None:
    pool = ObjectPool(Buf, name="bufs")
    with pytest.raises(MemoryDebugError) as info:
        pool.free(Buf())
    msg = str(info.value)
    assert "has 0 object(s) out" in msg and "1 more" in msg
    assert "foreign" in msg and "debug=True" in msg


def test_production_pool_counts_a_foreign_free_while_objects_are_out() -> None:
    """The documented limit: with objects out, a foreign free is indistinguishable from a real
    one without per-object bookkeeping. It takes an out object's place in the books, and the
    free that then finds nothing out is the one refused; the statistics stay true to the books
    (in_use = allocs - frees >= 0) and no object is ever cached twice."""
    pool = ObjectPool(Buf)
    a, b = pool.alloc(), pool.alloc()
    pool.free(Buf())  # undetected: two are out
    assert pool.statistics().in_use == 1
    pool.free(a)
    with pytest.raises(MemoryDebugError, match="has 0 object"):
        pool.free(b)
    s = pool.statistics()
    assert (s.in_use, s.allocs, s.frees, s.cached) == (0, 2, 2, 2)


def test_free_bulk_keeps_the_objects_that_fit_in_order_and_refuses_the_rest() -> None:
    pool = ObjectPool(Buf)
    a, b = pool.alloc(), pool.alloc()
    f1, f2 = Buf(), Buf()
    with pytest.raises(MemoryDebugError, match="2 more") as info:
        pool.free_bulk([a, b, f1, a, f2])  # two out; a repeated; two foreign
    msg = str(info.value)
    assert "already free" in msg  # the repeat is a double free, named as such
    assert _books(pool)[:4] == (0, 2, 2, 2)
    got = {id(pool.alloc()), id(pool.alloc())}
    assert got == {id(a), id(b)}


def test_an_unhashable_foreign_object_is_refused_like_any_other() -> None:
    pool = ObjectPool(Buf, prefill=1)
    pool.free(pool.alloc())  # the pool now keeps its free objects in a set
    with pytest.raises(MemoryDebugError, match="list object"):
        pool.free([1, 2])  # type: ignore[arg-type]
    assert _books(pool)[:2] == (0, 1)


def test_prefill_is_not_a_free() -> None:
    pool = ObjectPool(Buf, prefill=3, max_cached=2)
    s = pool.statistics()
    assert (s.in_use, s.cached, s.frees, s.dropped, s.created) == (0, 2, 0, 1, 3)
    with pytest.raises(MemoryDebugError):
        pool.free(Buf())


@pytest.mark.anyio
@pytest.mark.parametrize("debug", [False, True], ids=["production", "debug"])
async def test_a_foreign_object_given_to_kvfree_rcu_is_reported_and_its_block_kept(
    debug: bool,
) -> None:
    """Through ``kvfree_rcu(obj, pool)``: the block's ``free_bulk`` keeps the pool's own
    objects, refuses the foreign one, and the error reaches ``on_error``."""
    pool = ObjectPool(Buf, debug=debug)
    errors: list[Exception] = []
    async with open_domain(release=pool, on_error=errors.append) as rcu:
        objs = [pool.alloc() for _ in range(3)]
        for o in objs:
            rcu.kvfree_rcu(o)
        await rcu.kvfree_rcu_barrier()
        rcu.kvfree_rcu(Buf())
        await rcu.kvfree_rcu_barrier()
    assert len(errors) == 1 and isinstance(errors[0], MemoryDebugError)
    assert errors[0].kind == "invalid-free"
    s = pool.statistics()
    assert (s.in_use, s.cached, s.frees) == (0, 3, 3)


@settings(max_examples=150, deadline=None)
@given(
    debug=st.booleans(),
    by_value=st.booleans(),
    max_cached=st.none() | st.integers(0, 4),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["alloc", "free", "bulk", "double", "foreign", "mixed"]),
            st.integers(0, 9),
        ),
        max_size=60,
    ),
)
def test_any_sequence_of_valid_and_invalid_frees_keeps_the_books(
    debug: bool, by_value: bool, max_cached: int | None, ops: list[tuple[str, int]]
) -> None:
    """Property: whatever is freed (own objects, cached ones again, foreign ones, mixtures),
    ``in_use`` is ``allocs - frees``, never negative, never above what is really out; each
    refused free changes nothing it refused; no object is handed to two holders at once; and
    the debug pool's ``in_use`` is exactly what is out."""
    factory: Any = bytearray if by_value else Buf
    pool: ObjectPool[Any] = ObjectPool(factory, debug=debug, max_cached=max_cached)
    out: dict[int, Any] = {}  # id -> object the pool handed out and was not given back
    gone: list[Any] = []  # objects given back (cached, or dropped by max_cached)
    misused = False
    for op, k in ops:
        batch: list[Any] = []
        if op == "alloc":
            obj = pool.alloc()
            assert id(obj) not in out  # never handed out twice at once
            out[id(obj)] = obj
            continue
        if op in ("free", "bulk", "mixed") and out:
            n = 1 if op == "free" else k % (len(out) + 1)
            batch = list(out.values())[:n]
        if op == "double" and gone:
            batch = [gone[k % len(gone)]]
        if op in ("foreign", "mixed"):
            batch.insert(k % (len(batch) + 1), factory())
        if not batch:
            continue
        before = pool.statistics()
        try:
            if len(batch) == 1 and op != "bulk":
                pool.free(batch[0])
            else:
                pool.free_bulk(batch)
            refused = False
        except* MemoryDebugError:
            refused = True
        after = pool.statistics()
        accepted = after.frees - before.frees
        assert 0 <= accepted <= len(batch)
        assert refused or accepted == len(batch)
        assert after.cached <= before.cached + accepted
        for obj in batch:
            if out.pop(id(obj), None) is not None or op != "double":
                gone.append(obj)
        misused = misused or op in ("double", "foreign", "mixed")
        # a refused free of a foreign object with nothing out is certain
        if op == "foreign" and before.in_use == 0:
            assert refused and accepted == 0
    s = pool.statistics()
    assert s.in_use == s.allocs - s.frees >= 0
    assert s.in_use <= len(out)
    if max_cached is not None:
        assert s.cached <= max_cached
    if debug or not misused:
        assert s.in_use == len(out)
    if not misused:
        assert s.created == s.in_use + s.cached + s.dropped


def test_a_debug_pool_refuses_a_foreign_object_even_with_objects_out() -> None:
    """The debug pool knows its objects (the SLAB_CONSISTENCY_CHECKS case of
    ``cache_from_obj``): the foreign free is refused where it happens, not later."""
    pool = ObjectPool(Buf, debug=True)
    a = pool.alloc()
    with pytest.raises(MemoryDebugError, match="foreign free"):
        pool.free(Buf())
    pool.free(a)
    assert pool.statistics().in_use == 0
