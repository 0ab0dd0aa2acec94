"""kfree_bulk's scattered path (unordered arrays) against its per-pointer path.

Kernel fact (v6.1, mm/slub.c ``kmem_cache_free_bulk`` -> ``build_detached_freelist``): the
array is scanned from its end; each round starts a detached freelist at the last unprocessed
object and takes every other object of the same slab page it meets going down, giving up after
``lookahead = 3`` misses; each detached freelist is then handed to its slab with one
synchronisation (``do_slab_free``). So every slab gets its objects newest first whatever the
grouping, and only the number of rounds (the cost) depends on the look-ahead.
"""

from __future__ import annotations

import random
from array import array
from typing import Any

import trio
import trio.testing
from hypothesis import example, given, settings
from hypothesis import strategies as st
from simtools import Kernel, mm_kernel, pa

from rcukit.config import KernelConfig
from rcukit.mm.gfp import GFP_KERNEL
from rcukit.mm.memmap import PAGE_OFFSET
from rcukit.mm.slab import (
    ZERO_SIZE_PTR,
    Slab,
    _build_detached_freelists,
    _detached_groups,
    _near_keys,
    _near_repeats,
)
from rcukit.sched.sim import Task

KERNEL = int(GFP_KERNEL)
#: kmalloc-32 slabs hold 128 objects (one page, 2 CPUs).
NOBJ = 128
NSLABS = 12


def _state(k: Kernel, task: Task) -> dict[str, Any]:
    slab = pa(k).slab
    caches = {}
    slabs: set[Slab] = set(slab._slab_of.values())
    for c in slab.caches:
        if not c.nr_slabs:
            continue
        caches[c.name] = (
            c.nr_slabs,
            [s.base if s is not None else None for s in c.cpu_slab],
            [[s.base for s in pl] for pl in c.cpu_partial],
            [s.base for s in c.partial],
            sorted(
                (
                    s.base, bytes(s.used), list(s.freelist), s.inuse, s.on_partial, s.frozen,
                    s.pobjects, s.fresh,
                )
                for s in slabs
                if s.cache is c
            ),
        )
    q = slab.quarantine
    return {
        "caches": caches,
        "nr_objects": slab.nr_objects,
        "large": dict(slab._large),
        "now": task.now_ns,
        "vmstat": k.vmstat.snapshot(),
        "quarantine": None
        if q is None
        else sorted((p, e.size) for p in q._d for e in [q.get(p)] if e is not None),
    }


#: What a hypothesis example frees: which slabs' objects (a fraction of each, or all, so that
#: slabs empty and are discarded), a shuffle seed, and one bad entry to insert (or none).
BAD = ("none", "dup", "freed", "other_cache", "misaligned", "null", "zero", "large",
       "outside", "vmalloc")


async def _run(
    fractions: list[int],
    seed: int,
    bad: str,
    at: int,
    checked: bool,
    quarantine: bool,
    profile: str = "v5.9",
) -> tuple[Any, Any]:
    cfg = KernelConfig(nr_cpus=2).replace(
        **{
            "mm.zone_pages": 8192,
            "mm.debug_quarantine": 64 if quarantine else 0,
            "kvfree.profile": profile,
        }
    )
    out: dict[str, Any] = {}
    async with mm_kernel(cfg) as k:
        mm = pa(k)

        async def work(task: Task) -> None:
            live = [await mm.kmalloc(task, 32, KERNEL) for _ in range(NSLABS * NOBJ - 5)]
            other = await mm.kmalloc(task, 64, KERNEL)
            large = await mm.kmalloc(task, 10000, KERNEL)
            rng = random.Random(seed)
            freed = live.pop(rng.randrange(len(live)))
            await mm.kfree(task, freed)  # a non-fresh slab, and a free object
            ptrs: list[int] = []
            for j, f in enumerate(fractions):  # f / 4 of slab j's objects (4: all of them)
                mine = live[j * NOBJ : (j + 1) * NOBJ]
                ptrs += rng.sample(mine, len(mine) * f // 4)
            rng.shuffle(ptrs)
            if bad != "none":
                p = ptrs[at % len(ptrs)] if ptrs else live[0]
                ptrs.insert(
                    at % (len(ptrs) + 1),
                    {
                        "dup": p,
                        "freed": freed,
                        "other_cache": other,
                        "misaligned": p + 8,
                        "null": 0,
                        "zero": ZERO_SIZE_PTR,
                        "large": large,
                        "outside": p + (PAGE_OFFSET & -PAGE_OFFSET),
                        "vmalloc": 0xFFFFC90000000000 + 4096 * at,
                    }[bad],
                )
            if not ptrs:
                ptrs = [live[0]]
            arg = array("Q", ptrs)
            free = mm.slab._kfree_bulk_checked if checked else mm.kfree_bulk
            try:
                await free(task, arg)  # one line: error reports name the caller's line
            except Exception as e:  # compared below
                out["error"] = (type(e).__name__, str(e))
            out["state"] = _state(k, task)

        await k.run_on_cpus(work, [0])
    return out.get("error"), out["state"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 4), min_size=1, max_size=NSLABS),
    st.integers(0, 2**16),
    st.sampled_from(BAD),
    st.integers(0, 10_000),
    st.booleans(),
    st.sampled_from(["v5.9", "v6.1"]),
)
@example([4, 4, 4, 4, 4, 4, 4, 4, 1, 2], 1, "none", 0, False, "v5.9")  # emptied, discarded
@example([4, 4, 4, 4, 4, 4, 4, 4, 4, 4], 2, "dup", 700, True, "v5.9")  # undone near the end
@example([1, 2, 3], 3, "other_cache", 5, False, "v5.9")
@example([2, 2], 4, "dup", 0, False, "v5.9")  # the repeat is the newest entry
@example([0, 0, 4], 5, "freed", 1, True, "v5.9")
@example([4, 1, 4, 2, 4, 3, 4, 4, 0, 4], 6, "none", 0, False, "v6.1")  # drains of 2 slabs
def test_scattered_path_matches_per_pointer_path(
    fractions: list[int], seed: int, bad: str, at: int, quarantine: bool, profile: str
) -> None:
    """The same objects freed into the same freelists in the same order, the same slabs on
    the per-CPU and node partial lists in the same order and discarded in the same order, the
    same cost, and the same error with the allocator unchanged, whichever path an array takes
    (per-CPU partial lists counted in objects, 5.9, and in slabs, 6.1)."""
    res: dict[bool, tuple[Any, Any]] = {}

    async def main() -> None:
        for checked in (False, True):
            res[checked] = await _run(fractions, seed, bad, at, checked, quarantine, profile)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert res[False] == res[True]


async def test_a_shuffled_block_takes_the_scattered_path(autojump_clock: Any) -> None:
    """A shuffled array of live kmalloc-32 objects is parsed without the per-pointer path, and
    one with an object listed twice is undone: the allocator is left as it was, for the
    per-pointer path to report (kfree_bulk checks every pointer before freeing anything)."""
    async with mm_kernel(KernelConfig(nr_cpus=2)) as k:
        mm = pa(k)

        async def work(task: Task) -> None:
            slab = mm.slab
            ptrs = [await mm.kmalloc(task, 32, KERNEL) for _ in range(4 * NOBJ)]
            random.Random(0).shuffle(ptrs)
            twice = array("Q", ptrs[:100] + ptrs[50:51] + ptrs[100:200])
            parsed = slab._slab_objects(twice)
            assert parsed is not None
            before = _state(k, task)
            assert not await slab._kfree_bulk_scattered(task, twice, parsed)
            assert _state(k, task) == before
            block = array("Q", ptrs[:200])
            parsed = slab._slab_objects(block)
            assert parsed is not None
            assert await slab._kfree_bulk_scattered(task, block, parsed)
            assert slab.nr_objects == before["nr_objects"] - 200
            # another cache's object in the array: parsed, then refused when its slab is seen
            mixed = array("Q", [*ptrs[200:300], await mm.kmalloc(task, 64, KERNEL)])
            parsed = slab._slab_objects(mixed)
            assert parsed is not None
            before = _state(k, task)
            assert not await slab._kfree_bulk_scattered(task, mixed, parsed)
            assert _state(k, task) == before

        await k.run_on_cpus(work, [0])


@settings(max_examples=300)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=80), st.integers(0, 3))
def test_near_keys_give_the_detached_groups(labels: list[int], alias: int) -> None:
    """Comparing the pfns' low bytes, then the whole pfns of the candidates, finds exactly the
    near repeats (slab pages 256 pfns apart share a low byte and are told apart), and the scan
    with them yields exactly build_detached_freelist's groups."""
    pfns = [(x % 8) + (x // 8) * (1 << 8) * (alias + 1) + 0x100000 for x in labels]
    slabs: list[Any] = [object() for _ in range(41)]
    per_ptr = [slabs[x] for x in labels]
    n = len(labels)
    raw = b"".join(p.to_bytes(8, "little") for p in pfns)
    near = _near_keys(raw, pfns, n)
    assert near == _near_repeats(per_ptr)
    singles: list[range] = []
    groups = _build_detached_freelists(per_ptr, [False] * n, [1] * n, near, singles)
    expanded = sorted(
        groups + [(per_ptr[i], [i]) for r in singles for i in r], key=lambda g: -g[1][0]
    )
    assert expanded == _detached_groups(per_ptr, list(range(n)))


async def _run_sequence(blocks: list[tuple[int, int, int, int]], checked: bool) -> Any:
    """One allocator frees several shuffled blocks one after another: ``(object size, length,
    seed, offset)`` each, taken from the live objects of that size; a nonzero offset adds a
    pointer that far into one of the block's objects (an invalid free)."""
    out: dict[str, Any] = {}
    async with mm_kernel(KernelConfig(nr_cpus=2).replace(**{"mm.zone_pages": 8192})) as k:
        mm = pa(k)

        async def work(task: Task) -> None:
            live = {
                size: [await mm.kmalloc(task, size, KERNEL) for _ in range(800)]
                for size in (32, 64, 128)
            }
            free = mm.slab._kfree_bulk_checked if checked else mm.kfree_bulk
            results = []
            for size, n, seed, offset in blocks:
                mine = live[size]
                rng = random.Random(seed)
                rng.shuffle(mine)
                block = mine[: max(n, 1)]
                if offset:
                    # into a live object the block does not list
                    block.insert(rng.randrange(len(block)), mine[-1] + offset)
                error = None
                try:
                    await free(task, array("Q", block))  # one line: reports name it
                    live[size] = mine[len(block) :]
                except Exception as e:  # compared below
                    error = (type(e).__name__, str(e))
                results.append((error, _state(k, task)))
            out["results"] = results

        await k.run_on_cpus(work, [0])
    return out["results"]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from((32, 64, 128)),
            st.integers(0, 120),
            st.integers(0, 2**16),
            st.sampled_from((0, 0, 8, 32, 64)),
        ).map(lambda b: (b[0], b[1], b[2], b[3] if b[3] < b[0] else 0)),
        min_size=1,
        max_size=6,
    )
)
# the masks kept, made for another cache of the same length (a pointer half-way into a 64-byte
# object is 32-byte aligned), for the same cache of another length
@example([(32, 100, 1, 0), (32, 100, 2, 0), (64, 99, 3, 32), (32, 60, 4, 0), (32, 60, 5, 8)])
@example([(32, 100, 1, 0), (128, 100, 2, 64), (128, 100, 3, 0), (64, 120, 6, 0)])
def test_consecutive_scattered_blocks_match_per_pointer_path(
    blocks: list[tuple[int, int, int, int]],
) -> None:
    """Shuffled blocks of different lengths and caches, some with a pointer into the middle of
    an object, freed one after another by one allocator (the scattered path keeps its lane
    masks from one array to the next while the length and cache stay the same) leave after
    each block the state and the error the per-pointer path leaves: the same freelists,
    partial lists, discards and cost, and the same invalid-free report.

    Kernel fact (v6.1, mm/slub.c ``kmem_cache_free_bulk`` -> ``build_detached_freelist``):
    each call is independent; whatever array came before, the objects of one slab go back
    newest first in detached freelists built with a look-ahead of 3."""
    res: dict[bool, Any] = {}

    async def main() -> None:
        for checked in (False, True):
            res[checked] = await _run_sequence(blocks, checked)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert res[False] == res[True]
