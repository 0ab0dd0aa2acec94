"""ObjectPool: the fast slab-like cache and the KASAN/SLUB-style debug mode."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rcukit.app import POISON_FREE, ObjectPool
from rcukit.errors import ConfigError, MemoryDebugError

pytestmark = pytest.mark.anyio



class Buf:
    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = 0


def test_fast_pool_reuses_and_counts() -> None:
    pool = ObjectPool(Buf, prefill=3, max_cached=4)
    assert pool.statistics().cached == 3 and pool.statistics().created == 3
    objs = [pool.alloc() for _ in range(6)]
    s = pool.statistics()
    assert (s.created, s.in_use, s.cached) == (6, 6, 0)
    pool.free(objs[0])
    pool.free_bulk(objs[1:])
    s = pool.statistics()
    assert (s.in_use, s.cached, s.dropped) == (0, 4, 2)  # max_cached trimmed the rest
    assert pool.alloc() in objs
    pool.check(objs[0])  # a no-op without debug mode
    assert pool.generation(objs[0]) == 0 and not pool.is_freed(objs[0])


def test_debug_double_free_names_all_three_sites() -> None:
    pool = ObjectPool(Buf, debug=True, name="bufs")
    b = pool.alloc()
    pool.free(b)
    with pytest.raises(MemoryDebugError, match="double free") as info:
        pool.free(b)
    msg = str(info.value)
    assert "allocated at" in msg and "freed at" in msg and "freed again at" in msg
    assert msg.count("test_app_pool.py") == 3
    assert "'bufs'" in msg


def test_debug_use_after_free_names_alloc_and_free_sites() -> None:
    pool = ObjectPool(Buf, debug=True)
    b = pool.alloc()
    gen = pool.generation(b)
    pool.check(b, gen)
    pool.free(b)
    with pytest.raises(MemoryDebugError, match="use after free") as info:
        pool.check(b)
    assert str(info.value).count("test_app_pool.py") == 3  # alloc, free, use


def test_debug_generation_catches_a_reference_that_survived_reallocation() -> None:
    pool = ObjectPool(Buf, debug=True)
    b = pool.alloc()
    gen = pool.generation(b)
    pool.free(b)
    again = pool.alloc()  # the quarantine hands the same object back
    assert again is b
    pool.check(again)  # live: fine for its new owner
    with pytest.raises(MemoryDebugError, match="allocated again"):
        pool.check(b, gen)  # but not for the stale reference


def test_debug_poison_and_write_after_free() -> None:
    pool = ObjectPool(lambda: bytearray(b"hello"), debug=True)
    b = pool.alloc()
    pool.free(b)
    assert b == bytes([POISON_FREE]) * 5  # poisoned like SLUB's POISON_FREE
    b[0] = 1  # a write after free
    with pytest.raises(MemoryDebugError, match="write after free"):
        pool.alloc()
    c = pool.alloc()  # the corrupted object was taken out of circulation
    assert c is not b


def test_debug_custom_poison_hook_and_foreign_free() -> None:
    poisoned: list[Buf] = []
    pool = ObjectPool(Buf, debug=True, poison=poisoned.append)
    b = pool.alloc()
    pool.free(b)
    assert poisoned == [b]
    with pytest.raises(MemoryDebugError, match="foreign free"):
        pool.free(Buf())
    with pytest.raises(MemoryDebugError, match="not allocated from pool"):
        pool.check(Buf())


def test_debug_free_bulk_frees_the_good_and_reports_the_bad() -> None:
    pool = ObjectPool(Buf, debug=True)
    a, b, c = pool.alloc(), pool.alloc(), pool.alloc()
    pool.free(b)
    with pytest.raises(MemoryDebugError, match="double free"):
        pool.free_bulk([a, b, c])
    assert pool.is_freed(a) and pool.is_freed(c)
    d = pool.alloc()
    pool.free(d)
    with pytest.RaisesGroup(MemoryDebugError, MemoryDebugError):
        pool.free_bulk([d, Buf()])


def test_bad_pool_configuration() -> None:
    with pytest.raises(ConfigError):
        ObjectPool(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        ObjectPool(Buf, max_cached=-1)
    with pytest.raises(ConfigError):
        ObjectPool(Buf, prefill=True)


@given(
    debug=st.booleans(),
    ops=st.lists(
        st.tuples(st.sampled_from(["alloc", "free", "bulk", "double"]), st.integers(0, 9))
    ),
)
def test_pool_accounting_under_any_op_sequence(debug: bool, ops: list[tuple[str, int]]) -> None:
    pool = ObjectPool(Buf, debug=debug)
    live: list[Buf] = []
    freed: list[Buf] = []
    for op, k in ops:
        if op == "alloc":
            live.append(pool.alloc())
        elif op == "free" and live:
            obj = live.pop(k % len(live))
            pool.free(obj)
            freed.append(obj)
        elif op == "bulk" and live:
            n = k % (len(live) + 1)
            batch, live[:] = live[:n], live[n:]
            pool.free_bulk(batch)
            freed.extend(batch)
        elif op == "double" and freed and debug:
            victim = freed[k % len(freed)]
            if pool.is_freed(victim):
                with pytest.raises(MemoryDebugError, match="double free"):
                    pool.free(victim)
        s = pool.statistics()
        assert s.in_use == len(live)
        assert s.created == s.in_use + s.cached + s.dropped
        if debug:
            for obj in live:
                pool.check(obj)
