"""Updates that await: ``RcuPointer.compare_and_set``/``update`` and ``RcuDict`` (issue 16,
item 5), on both event loops."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest
from apptools import SpyPool, hold_reader, in_worker_thread

import rcukit
from rcukit.app import RcuDict, RcuPointer, open_domain
from rcukit.errors import RcuUsageError

pytestmark = pytest.mark.anyio


async def test_compare_and_set_publishes_only_over_the_expected_value() -> None:
    """``rcu_replace_pointer``'s lock-free form: a ``cmpxchg()`` on the RCU-protected pointer
    (include/linux/rcupdate.h documents the publish; the cmpxchg idiom is the lock-free
    updater's, e.g. ``rcu_cmpxchg_pointer`` in liburcu's urcu/pointer.h)."""
    async with open_domain() as rcu:
        a, b, c = {"v": 1}, {"v": 2}, {"v": 3}
        ptr = RcuPointer(rcu, a)
        assert ptr.compare_and_set(a, b) is True
        assert ptr.dereference_protected() is b
        assert ptr.compare_and_set(a, c) is False  # a is no longer current
        assert ptr.dereference_protected() is b
        assert ptr.compare_and_set({"v": 2}, c) is False  # identity, not equality


async def _slow_increment(old: dict[str, int]) -> dict[str, int]:
    await anyio.sleep(0.001)  # an updater that awaits between its read and its write
    return {"n": old["n"] + 1}


async def test_awaiting_updaters_lose_writes_with_assign_but_not_with_update() -> None:
    async with open_domain() as rcu:
        ptr = RcuPointer(rcu, {"n": 0})

        async def naive() -> None:
            old = ptr.dereference_protected()
            new = await _slow_increment(old)
            rcu.kvfree_rcu(ptr.assign(new))

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(naive)
        assert ptr.dereference_protected()["n"] < 10  # the lost writes the issue describes

        ptr2 = RcuPointer(rcu, {"n": 0})
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(ptr2.update, _slow_increment)
        assert ptr2.dereference_protected()["n"] == 10
        await rcu.kvfree_rcu_barrier()
        st = rcu.statistics()
        assert st.kvfree_pending == 0 and st.kvfree_freed == 20  # every old version retired


async def test_update_retires_the_old_value_after_readers_leave() -> None:
    spy = SpyPool()
    async with open_domain() as rcu, anyio.create_task_group() as tg:
        first = {"n": 0}
        ptr = RcuPointer(rcu, first)
        release = await hold_reader(rcu, tg)
        new = await ptr.update(lambda old: {"n": old["n"] + 1}, spy)  # a plain function too
        assert new == {"n": 1} and ptr.dereference_protected() is new
        await anyio.sleep(0.1)
        assert spy.freed == []  # a reader that began before the update still runs
        release.set()
        await rcu.kvfree_rcu_barrier()
        assert spy.freed == [first]


async def test_rcudict_reads_one_version_and_writes_new_ones() -> None:
    async with open_domain(debug=True) as rcu:
        table: RcuDict[str, str] = RcuDict(rcu, {"a": "1"})
        assert isinstance(table, rcukit.RcuDict)
        with rcu.read_lock():
            snap = table.snapshot()
        table.set("b", "2")
        table.set_many({"c": "3", "d": "4"})
        table.delete("a")
        with pytest.raises(KeyError):
            table.delete("zz")
        assert dict(snap) == {"a": "1"}  # the version a reader took never changes
        assert dict(table) == {"b": "2", "c": "3", "d": "4"}
        assert table["b"] == "2" and "c" in table and len(table) == 3
        assert table.get("a") is None and table.get("a", "-") == "-"
        with pytest.raises(TypeError):
            snap["x"] = "y"  # type: ignore[index]
        with pytest.raises(RcuUsageError):
            table.snapshot()  # debug mode: rcu_dereference_check() outside a read section
        table.replace({"z": "26"})
        assert dict(table) == {"z": "26"}
        await rcu.kvfree_rcu_barrier()
        st = rcu.statistics()
        assert st.kvfree_freed == 4  # set, set_many, delete, replace; the failed delete none


async def test_rcudict_retires_versions_in_bulk() -> None:
    """Old versions go through kvfree_rcu: the kernel packs retired pointers into blocks and
    frees each block with one ``kfree_bulk()`` after a grace period (kvfree_rcu_bulk,
    kernel/rcu/tree.c v6.3)."""
    spy = SpyPool()
    async with open_domain(drain_delay=60.0) as rcu:
        table: RcuDict[int, int] = RcuDict(rcu, release=spy)
        for i in range(300):
            table.set(i, i)
        rcu.flush()
        await rcu.kvfree_rcu_barrier()
        assert len(spy.freed) == 300 and spy.calls == [300]  # one free_bulk for 300 versions
        assert len(table) == 300


async def test_rcudict_awaiting_updates_lose_nothing() -> None:
    async with open_domain() as rcu:
        routes: RcuDict[str, int] = RcuDict(rcu, {"hits": 0})

        async def bump(d: dict[str, int]) -> None:
            n = d["hits"]
            await anyio.sleep(0.001)
            d["hits"] = n + 1

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(routes.update, bump)
        assert routes["hits"] == 20


async def test_rcudict_updates_from_worker_threads() -> None:
    async with open_domain() as rcu:
        table: RcuDict[str, int] = RcuDict(rcu)
        start = threading.Barrier(4)

        def writer(k: int) -> None:
            start.wait()
            for i in range(50):
                table.set(f"t{k}-{i}", i)
                with rcu.read_lock():
                    assert table.snapshot() is not None

        async def one(k: int) -> None:
            await in_worker_thread(lambda: writer(k))

        async with anyio.create_task_group() as tg:
            for k in range(4):
                tg.start_soon(one, k)
        assert len(table) == 200
        await rcu.kvfree_rcu_barrier()
        assert rcu.statistics().kvfree_freed == 200


def test_the_names_are_exported() -> None:
    for name in ("RcuDict", "RcuPointer", "APP_DRAIN_DELAY"):
        assert name in rcukit.__all__ and hasattr(rcukit, name)
    x: Any = rcukit.RcuDict
    assert x is RcuDict
