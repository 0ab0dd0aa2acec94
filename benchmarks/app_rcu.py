"""Application RCU on the real clock of both event loops: the read side, and releasing objects
after a GP. Every measurement runs once under ``trio.run`` (figures ``app_*``) and once under
``asyncio.run`` (figures ``app_asyncio_*``), in the same process.

Read side: ``with rcu.read_lock(): pass`` against the cheapest ``with`` there is (a pre-built
object whose ``__enter__``/``__exit__`` do nothing) and against an uncontended ``trio.Lock``
taken two ways, each loop timed in the same Trio task, interleaved, best of the repetitions:

* ``async with lock: pass``: what a Trio user writes. ``Lock.acquire()`` ends in
  ``cancel_shielded_checkpoint()``, so every round trip includes one pass of Trio's scheduler
  (the fair comparison: a Trio app that wants mutual exclusion pays it);
* ``lock.acquire_nowait(); lock.release()``: the same lock without the scheduler pass (the
  flattering comparison for the lock: only the bookkeeping of ownership is left).

Under asyncio the lock is an uncontended ``asyncio.Lock`` taken with ``async with`` (its
``acquire()`` returns without yielding to the loop when the lock is free).

Release: objects from an :class:`~rcukit.app.ObjectPool` (allocated before the clock starts)
are retired three ways and the wall time runs until every one is back in its pool:

* ``rcu.kvfree_rcu(obj, pool)`` for each, then ``await rcu.kvfree_rcu_barrier()`` (blocks of
  objects go back with one ``pool.free_bulk()`` each, after shared grace periods);
* ``rcu.call_rcu(pool.free, obj)`` for each, then ``await rcu.rcu_barrier()``;
* ``await rcu.synchronize_rcu(); pool.free(obj)`` for each (on fewer objects: one grace period
  per object is the point).

The figures are release rates (objects per second) divided one by the other. Every way
retires the same objects of one pool in one domain, the two batched ways alternate which goes
first, and each figure is the best of the repetitions; the details split kvfree_rcu's time
into the calls themselves (enqueue) and the barrier that waits for the bulk releases (drain).

Serving: ``demos/rcu_table_server.py``'s server on 127.0.0.1 under its bounded load generator,
the RCU-protected table then the lock-protected one (same clients, same reload schedule):
the figure is RCU's p99 request latency over the lock's (at most 1: RCU's readers never queue
behind a reload).
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import trio
from _common import Figure, Mode, Target, ns

from rcukit.app import DEFAULT_MAX_PENDING, ObjectPool, RcuDomain, open_domain

DEMO = Path(__file__).resolve().parents[1] / "demos" / "rcu_table_server.py"


def _table_server() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rcu_table_server", DEMO)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


async def _serving(mode: Mode) -> dict[str, float]:
    """The demo server's latency and rate with each table kind, the same bounded load."""
    demo = _table_server()
    clients = mode.pick(8, 8, 2)
    requests = mode.pick(1000, 300, 20)
    out: dict[str, float] = {}
    for table in ("rcu", "lock"):
        r = await demo.run(clients, requests, 0, table=table)
        assert r["dead"] == r["errors"] == r["wrong"] == 0, r
        out[f"{table}_p50_us"] = round(r["p50_us"], 1)
        out[f"{table}_p99_us"] = round(r["p99_us"], 1)
        out[f"{table}_requests_per_s"] = round(r["requests_per_s"])
        out[f"{table}_released_tables_seen"] = r["dead"]
    out["requests"] = clients * requests
    return out


class _Bare:
    """The baseline context manager: the least a ``with`` statement can call."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class Obj:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


def _time_bare_with(n: int) -> float:
    cm = _Bare()
    t0 = time.perf_counter()
    for _ in range(n):
        with cm:
            pass
    return time.perf_counter() - t0


def _time_read_lock(rcu: RcuDomain, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        with rcu.read_lock():
            pass
    return time.perf_counter() - t0


async def _time_trio_lock(n: int) -> float:
    lock = trio.Lock()
    t0 = time.perf_counter()
    for _ in range(n):
        async with lock:
            pass
    return time.perf_counter() - t0


def _time_trio_lock_nowait(n: int) -> float:
    # written as a user would: no pre-bound methods (``with rcu.read_lock()`` gets none either)
    lock = trio.Lock()
    t0 = time.perf_counter()
    for _ in range(n):
        lock.acquire_nowait()
        try:
            pass
        finally:
            lock.release()
    return time.perf_counter() - t0


async def _time_asyncio_lock(n: int) -> float:
    lock = asyncio.Lock()
    t0 = time.perf_counter()
    for _ in range(n):
        async with lock:
            pass
    return time.perf_counter() - t0


async def _read_side(mode: Mode, backend: str) -> dict[str, float]:
    n = mode.pick(1_000_000, 200_000, 2_000)
    n_lock = n // 20  # a trio.Lock round trip is a scheduler pass: microseconds
    reps = mode.pick(7, 5, 1)
    best = dict.fromkeys(("bare", "read_lock", "lock", "lock_nowait"), float("inf"))
    async with open_domain() as rcu:
        for _ in range(reps):
            gc.collect()
            best["bare"] = min(best["bare"], _time_bare_with(n) / n)
            best["read_lock"] = min(best["read_lock"], _time_read_lock(rcu, n) / n)
            if backend == "trio":
                best["lock"] = min(best["lock"], await _time_trio_lock(n_lock) / n_lock)
                best["lock_nowait"] = min(best["lock_nowait"], _time_trio_lock_nowait(n) / n)
            else:
                best["lock"] = min(best["lock"], await _time_asyncio_lock(n) / n)
    return {k: ns(v, 1) for k, v in best.items() if v != float("inf")}


async def _retire_kvfree(
    rcu: RcuDomain, pool: ObjectPool[Obj], objs: list[Obj]
) -> tuple[float, float]:
    """``kvfree_rcu`` each of ``objs``, then the barrier: (enqueue, drain) wall seconds."""
    gc.collect()
    t0 = time.perf_counter()
    kvfree = rcu.kvfree_rcu
    for o in objs:
        kvfree(o, pool)
    t1 = time.perf_counter()
    await rcu.kvfree_rcu_barrier()
    return t1 - t0, time.perf_counter() - t1


async def _retire_call_rcu(rcu: RcuDomain, pool: ObjectPool[Obj], objs: list[Obj]) -> float:
    """``call_rcu(pool.free, obj)`` for each of ``objs``, then the barrier: wall seconds."""
    gc.collect()
    t0 = time.perf_counter()
    call_rcu = rcu.call_rcu
    free = pool.free
    for o in objs:
        call_rcu(free, o)
    await rcu.rcu_barrier()
    return time.perf_counter() - t0


async def _release(
    rcu: RcuDomain, pool: ObjectPool[Obj], n_objects: int, n_sync: int, kvfree_first: bool
) -> dict[str, float]:
    """Wall seconds per object for each way of releasing (one repetition).

    Every way retires the same objects of the same pool (each allocation takes all of the
    prefilled ones); which of the two batched ways runs first alternates between repetitions.
    """
    out: dict[str, float] = {}
    for way in ("kvfree_rcu", "call_rcu") if kvfree_first else ("call_rcu", "kvfree_rcu"):
        objs = [pool.alloc() for _ in range(n_objects)]
        if way == "kvfree_rcu":
            enqueue, drain = await _retire_kvfree(rcu, pool, objs)
            out["kvfree_rcu"] = (enqueue + drain) / n_objects
            out["kvfree_rcu_enqueue"] = enqueue / n_objects
            out["kvfree_rcu_drain"] = drain / n_objects
        else:
            out["call_rcu"] = await _retire_call_rcu(rcu, pool, objs) / n_objects
        assert pool.statistics().in_use == 0
    # synchronize_rcu() per object
    objs = [pool.alloc() for _ in range(n_sync)]
    gc.collect()
    t0 = time.perf_counter()
    free = pool.free
    for o in objs:
        await rcu.synchronize_rcu()
        free(o)
    out["synchronize_each"] = (time.perf_counter() - t0) / n_sync
    assert pool.statistics().in_use == 0
    return out


async def _release_best(mode: Mode) -> dict[str, float]:
    n_objects = mode.pick(1_000_000, 200_000, 2_000)
    n_sync = mode.pick(2_000, 500, 20)
    pool: ObjectPool[Obj] = ObjectPool(Obj, prefill=n_objects)
    best: dict[str, float] = {}
    async with open_domain(max_pending=max(DEFAULT_MAX_PENDING, 2 * n_objects)) as rcu:
        for rep in range(mode.pick(5, 2, 1)):
            r = await _release(rcu, pool, n_objects, n_sync, kvfree_first=rep % 2 == 0)
            for k, v in r.items():
                best[k] = min(best.get(k, float("inf")), v)
        best["grace_periods"] = rcu.statistics().gps_completed
    assert pool.statistics().created == n_objects  # the same objects every time
    best["objects"] = n_objects
    best["synchronize_each_objects"] = n_sync
    return best


def _run_on(backend: str, main: Callable[[], Awaitable[None]]) -> None:
    anyio.run(main, backend=backend)


def _measure(
    mode: Mode, backend: str
) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    box: dict[str, Any] = {}

    async def main() -> None:
        box["read"] = await _read_side(mode, backend)
        box["release"] = await _release_best(mode)
        box["serving"] = await _serving(mode)

    _run_on(backend, main)
    return box["read"], box["release"], box["serving"]


def _serving_figure(name: str, loop: str, sv: dict[str, float]) -> Figure:
    return Figure(
        name,
        round(sv["rcu_p99_us"] / sv["lock_p99_us"], 2),
        "x lock p99",
        Target("<=", 1),
        sv,
        f"under {loop}: demos/rcu_table_server.py on 127.0.0.1, {int(sv['requests'])} requests "
        "from a bounded load generator while a writer reloads the 1024-route table: p99 "
        "latency with the RCU-protected table / with the lock-protected one",
    )


def run(mode: Mode) -> list[Figure]:
    return _figures_trio(mode) + _figures_asyncio(mode)


def _rates(rel: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    rate = {k: 1 / rel[k] for k in ("kvfree_rcu", "call_rcu", "synchronize_each")}
    rel_abs = {
        "kvfree_rcu_objects_per_s": round(rate["kvfree_rcu"]),
        "call_rcu_objects_per_s": round(rate["call_rcu"]),
        "kvfree_rcu_enqueue_ns": ns(rel["kvfree_rcu_enqueue"], 1),
        "kvfree_rcu_drain_ns": ns(rel["kvfree_rcu_drain"], 1),
        "call_rcu_ns": ns(rel["call_rcu"], 1),
        "synchronize_each_objects_per_s": round(rate["synchronize_each"]),
        "objects": rel["objects"],
        "synchronize_each_objects": rel["synchronize_each_objects"],
    }
    return rate, rel_abs


def _figures_asyncio(mode: Mode) -> list[Figure]:
    rd, rel, sv = _measure(mode, "asyncio")
    read_abs = {
        "read_lock_ns": rd["read_lock"],
        "bare_with_ns": rd["bare"],
        "asyncio_lock_ns": rd["lock"],
    }
    rate, rel_abs = _rates(rel)
    return [
        Figure(
            "app_asyncio_read_lock_vs_bare_with",
            round(rd["read_lock"] / rd["bare"], 2),
            "x bare with",
            Target("<=", 1.5),
            read_abs,
            "under asyncio.run: `with rcu.read_lock(): pass` / `with cm: pass`",
        ),
        Figure(
            "app_asyncio_read_lock_vs_asyncio_lock",
            round(rd["lock"] / rd["read_lock"], 2),
            "x cheaper",
            None,
            read_abs,
            "`async with asyncio.Lock()` (uncontended: no loop pass) / `with rcu.read_lock()`",
        ),
        Figure(
            "app_asyncio_kvfree_vs_call_rcu",
            round(rate["kvfree_rcu"] / rate["call_rcu"], 2),
            "x objects/s",
            Target(">=", 10),
            rel_abs,
            f"under asyncio.run: release rate of {rel['objects']} pooled objects, "
            "kvfree_rcu(obj, pool) / call_rcu(pool.free, obj)",
        ),
        Figure(
            "app_asyncio_kvfree_vs_synchronize_each",
            round(rate["kvfree_rcu"] / rate["synchronize_each"], 2),
            "x objects/s",
            Target(">=", 50),
            rel_abs,
            "under asyncio.run: kvfree_rcu(obj, pool) / `await synchronize_rcu(); "
            f"pool.free(obj)` per object ({rel['synchronize_each_objects']} objects)",
        ),
        _serving_figure("app_asyncio_table_server_rcu_p99_vs_lock", "asyncio.run", sv),
    ]


def _figures_trio(mode: Mode) -> list[Figure]:
    rd, rel, sv = _measure(mode, "trio")
    read_abs = {
        "read_lock_ns": rd["read_lock"],
        "bare_with_ns": rd["bare"],
        "trio_lock_ns": rd["lock"],
        "trio_lock_nowait_ns": rd["lock_nowait"],
    }
    rate, rel_abs = _rates(rel)
    return [
        Figure(
            "app_read_lock_vs_bare_with",
            round(rd["read_lock"] / rd["bare"], 2),
            "x bare with",
            Target("<=", 1.5),
            read_abs,
            "`with rcu.read_lock(): pass` / `with cm: pass` (cm's __enter__/__exit__ do nothing)",
        ),
        Figure(
            "app_read_lock_vs_trio_lock",
            round(rd["lock"] / rd["read_lock"], 2),
            "x cheaper",
            Target(">=", 10),
            read_abs,
            "`async with trio.Lock()` (uncontended; a scheduler pass per round trip) / "
            "`with rcu.read_lock()`",
        ),
        Figure(
            "app_read_lock_vs_trio_lock_nowait",
            round(rd["lock_nowait"] / rd["read_lock"], 2),
            "x cheaper",
            Target(">=", 3),
            read_abs,
            "`lock.acquire_nowait(); lock.release()` on an uncontended trio.Lock (no scheduler "
            "pass) / `with rcu.read_lock()`",
        ),
        Figure(
            "app_kvfree_vs_call_rcu",
            round(rate["kvfree_rcu"] / rate["call_rcu"], 2),
            "x objects/s",
            Target(">=", 10),
            rel_abs,
            f"release rate of {rel['objects']} pooled objects: kvfree_rcu(obj, pool) + "
            "kvfree_rcu_barrier() / call_rcu(pool.free, obj) + rcu_barrier()",
        ),
        Figure(
            "app_kvfree_vs_synchronize_each",
            round(rate["kvfree_rcu"] / rate["synchronize_each"], 2),
            "x objects/s",
            Target(">=", 50),
            rel_abs,
            "release rate: kvfree_rcu(obj, pool) / `await synchronize_rcu(); pool.free(obj)` "
            f"per object ({rel['synchronize_each_objects']} objects)",
        ),
        _serving_figure("app_table_server_rcu_p99_vs_lock", "trio.run", sv),
    ]
