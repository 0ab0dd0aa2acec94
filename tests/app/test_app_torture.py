"""The RCU guarantee on Trio's real clock, rcutorture-style, checked by pool poisoning.

Readers (lock-based and QSBR) dereference RCU pointers, hold the objects across awaits, and
re-check them with the debug pool after every await: ``pool.check(obj, generation)`` raises if
the object was freed (or freed and reallocated) since the reader took it, and the object's
version bytes must not have changed (a freed bytearray is poisoned with 0x6b). Writers publish
new versions and retire the old ones through every mechanism the domain has, cycling like
rcutorture's writer: kvfree_rcu (default and per-worker queues, the waiting form), call_rcu,
synchronize_rcu, the polled API. The negative control shows the checks catch a writer that
frees without waiting for a grace period.
"""

from __future__ import annotations

import random
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rcukit.app import ObjectPool, RcuPointer, open_domain
from rcukit.errors import MemoryDebugError

MODES = ("kvfree", "kvfree_queue", "kvfree_wait", "call_rcu", "sync", "poll", "cond")

pytestmark = pytest.mark.anyio



def _version(buf: bytearray) -> int:
    return int.from_bytes(buf[:8], "little")


async def _hold(rng: random.Random, steps: int) -> None:
    for _ in range(steps):
        if rng.random() < 0.2:
            await anyio.sleep(rng.random() * 0.0005)
        else:
            await anyio.lowlevel.checkpoint()


async def torture(
    *,
    seed: int,
    readers: int,
    qsbr_readers: int,
    writers: int,
    updates: int,
    modes: tuple[str, ...] = MODES,
    debug_domain: bool = True,
    broken: bool = False,
    max_pending: int = 1 << 20,
) -> dict[str, Any]:
    pool: ObjectPool[bytearray] = ObjectPool(lambda: bytearray(16), debug=True, name="torture")
    counts: dict[str, Any] = {"reads": 0, "qsbr_reads": 0, "updates": 0}
    async with open_domain(
        debug=debug_domain, release=pool, drain_delay=0.002, max_pending=max_pending
    ) as rcu:
        ptrs = []
        for i in range(max(1, writers)):
            buf = pool.alloc()
            buf[:8] = (i << 32).to_bytes(8, "little")
            ptrs.append(RcuPointer(rcu, buf))
        stop = anyio.Event()

        def check(obj: bytearray, gen: int, version: int) -> None:
            pool.check(obj, gen)
            assert _version(obj) == version, "object changed under a reader"

        async def reader(k: int) -> None:
            rng = random.Random(seed * 1000 + k)
            while not stop.is_set():
                with rcu.read_lock():
                    ptr = ptrs[rng.randrange(len(ptrs))]
                    obj = ptr.dereference()
                    gen, version = pool.generation(obj), _version(obj)
                    for _ in range(rng.randrange(1, 6)):
                        await _hold(rng, 1)
                        check(obj, gen, version)
                    if rng.random() < 0.3:
                        with rcu.read_lock():  # nested
                            inner = ptrs[rng.randrange(len(ptrs))].dereference()
                            ig, iv = pool.generation(inner), _version(inner)
                            await _hold(rng, 2)
                            check(inner, ig, iv)
                        check(obj, gen, version)
                counts["reads"] += 1
                await _hold(rng, rng.randrange(0, 3))

        async def qsbr_reader(k: int) -> None:
            rng = random.Random(seed * 2000 + k)
            with rcu.register_qsbr() as w:
                while not stop.is_set():
                    obj = ptrs[rng.randrange(len(ptrs))].dereference()
                    gen, version = pool.generation(obj), _version(obj)
                    for _ in range(rng.randrange(1, 4)):
                        await _hold(rng, 1)  # online: references survive awaits
                        check(obj, gen, version)
                    counts["qsbr_reads"] += 1
                    w.quiescent_state()
                    if rng.random() < 0.2:
                        with w.extended_qs():
                            await anyio.sleep(rng.random() * 0.001)

        async def writer(k: int) -> None:
            rng = random.Random(seed * 3000 + k)
            queue = rcu.kvfree_queue(f"writer{k}")
            ptr = ptrs[k]
            for n in range(1, updates + 1):
                new = pool.alloc()
                new[:8] = ((k << 32) | n).to_bytes(8, "little")
                old = ptr.assign(new)
                mode = modes[rng.randrange(len(modes))]
                if broken:
                    pool.free(old)  # no grace period: readers must catch this
                elif mode == "kvfree":
                    rcu.kvfree_rcu(old)
                elif mode == "kvfree_queue":
                    queue.kvfree_rcu(old, release=pool)
                elif mode == "kvfree_wait":
                    await rcu.kvfree_rcu_wait(old)
                elif mode == "call_rcu":
                    await rcu.call_rcu_wait(pool.free, old)
                elif mode == "sync":
                    await rcu.synchronize_rcu()
                    pool.free(old)
                elif mode == "poll":
                    cookie = rcu.start_poll_synchronize_rcu()
                    # Polling is what the polled API is for.
                    while not rcu.poll_state_synchronize_rcu(cookie):  # noqa: ASYNC110
                        await anyio.sleep(0.0002)
                    pool.free(old)
                else:
                    cookie = rcu.get_state_synchronize_rcu()
                    await _hold(rng, rng.randrange(0, 4))
                    await rcu.cond_synchronize_rcu(cookie)
                    pool.free(old)
                counts["updates"] += 1
                await _hold(rng, rng.randrange(0, 3))

        async with anyio.create_task_group() as n:
            for k in range(readers):
                n.start_soon(reader, k)
            for k in range(qsbr_readers):
                n.start_soon(qsbr_reader, k)
            async with anyio.create_task_group() as wn:
                for k in range(writers):
                    wn.start_soon(writer, k)
            stop.set()
        counts["stats"] = rcu.statistics()
    counts["final"] = rcu.statistics()
    counts["pool"] = pool.statistics()
    return counts


@pytest.mark.parametrize("debug_domain", [True, False])
async def test_rcu_guarantee_with_many_readers_and_writers(debug_domain: bool) -> None:
    result = await torture(
        seed=1, readers=24, qsbr_readers=4, writers=4, updates=150, debug_domain=debug_domain
    )
    assert result["updates"] == 600
    assert result["reads"] > 600 and result["qsbr_reads"] > 100
    final = result["final"]
    assert final.errors == 0 and final.kvfree_pending == 0 and final.callbacks_pending == 0
    # Every retired version went back to the pool; only the 4 published ones are live.
    assert result["pool"].in_use == 4
    stats = result["stats"]
    assert stats.gps_completed > 0 and stats.kvfree_freed > 0 and stats.callbacks_invoked > 0


async def test_the_checks_catch_a_writer_that_skips_the_grace_period() -> None:
    with pytest.raises(BaseExceptionGroup) as info:
        await torture(seed=2, readers=8, qsbr_readers=0, writers=2, updates=200, broken=True)
    caught, _ = info.value.split(MemoryDebugError)
    assert caught is not None
    assert "use after free" in repr(caught)


async def test_guarantee_holds_under_backpressure() -> None:
    result = await torture(
        seed=3,
        readers=8,
        qsbr_readers=2,
        writers=3,
        updates=120,
        max_pending=16,
        modes=("kvfree_wait", "call_rcu"),
    )
    assert result["updates"] == 360
    assert result["final"].errors == 0 and result["pool"].in_use == 3


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    readers=st.integers(1, 8),
    qsbr_readers=st.integers(0, 2),
    writers=st.integers(1, 3),
    modes=st.lists(st.sampled_from(MODES), min_size=1, max_size=4, unique=True).map(tuple),
)
async def test_guarantee_over_random_schedules(
    seed: int, readers: int, qsbr_readers: int, writers: int, modes: tuple[str, ...]
) -> None:
    result = await torture(
        seed=seed,
        readers=readers,
        qsbr_readers=qsbr_readers,
        writers=writers,
        updates=25,
        modes=modes,
    )
    assert result["updates"] == 25 * writers
    assert result["final"].errors == 0
    assert result["pool"].in_use == writers
