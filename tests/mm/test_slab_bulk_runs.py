"""kfree_bulk's segment path against its per-pointer path: same groups, state, cost and errors."""

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
    KmemCache,
    Slab,
    _detached_groups,
    _detached_run_groups,
    _lanes,
)
from rcukit.sched.sim import Task

KERNEL = int(GFP_KERNEL)
#: 32: order 0, no tail; 96: a 64-byte tail per page; 512: order-1 (two-page) slabs.
SIZES = (32, 96, 512)


@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(1, 5)), min_size=1, max_size=12),
)
def test_run_groups_match_the_per_pointer_scan(spec: list[tuple[int, int]]) -> None:
    runs: list[tuple[int, int]] = []
    for label, n in spec:  # adjacent runs of one slab would be one run
        if runs and runs[-1][0] == label:
            runs[-1] = (label, runs[-1][1] + n)
        else:
            runs.append((label, n))
    slabs: list[Any] = [object() for _ in range(4)]
    per_ptr = [slabs[label] for label, n in runs for _ in range(n)]
    expected = _detached_groups(per_ptr, list(range(len(per_ptr))))
    starts = [sum(n for _, n in runs[:j]) for j in range(len(runs))]
    got = [
        (slab, [starts[j] + i for j in members for i in reversed(range(runs[j][1]))])
        for slab, members in _detached_run_groups(
            [slabs[label] for label, _ in runs], [n for _, n in runs]
        )
    ]
    assert got == expected


def _kernel_scan(slabs: list[Any], nulls: list[bool]) -> list[tuple[Any, list[int]]]:
    """mm/slub.c's loop, transcribed: ``kmem_cache_free_bulk`` calls
    ``build_detached_freelist`` until ``size`` is 0; each call skips NULLs at the top, takes the
    last object and looks back with ``lookahead = 3``, decremented on every miss *before* the
    first skipped index is recorded (so the first miss never ends the look). ``None`` stands
    for a large kmalloc (a group alone)."""
    done = nulls[:]
    groups: list[tuple[Any, list[int]]] = []
    size = len(slabs)
    while size:
        size -= 1
        while size >= 0 and done[size]:
            size -= 1
        if size < 0:
            break
        slab = slabs[size]
        done[size] = True
        if slab is None:
            groups.append((None, [size]))
            continue
        members = [size]
        lookahead = 3
        first_skipped = 0
        while size:
            size -= 1
            if done[size]:
                continue
            if slabs[size] is slab:
                members.append(size)
                done[size] = True
                continue
            lookahead -= 1
            if not lookahead:
                break
            if not first_skipped:
                first_skipped = size + 1
        groups.append((slab, members))
        size = first_skipped
    return groups


#: a few slab pages (labels), None for a large kmalloc: arrays where slabs repeat within the
#: look-ahead, far apart, alternate, or never
label_lists = st.one_of(
    st.lists(st.one_of(st.none(), st.integers(0, 3)), max_size=40),
    st.lists(st.integers(0, 40), max_size=60),
    st.integers(1, 30).flatmap(
        lambda n: st.permutations([j // 2 for j in range(2 * n)])  # every slab twice, shuffled
    ),
)


@settings(max_examples=300)
@given(label_lists, st.data())
def test_detached_groups_match_the_kernel_scan(labels: list[int | None], data: Any) -> None:
    slabs: list[Any] = [object() for _ in range(41)]
    per_ptr = [None if x is None else slabs[x] for x in labels]
    nulls = data.draw(st.lists(st.booleans(), min_size=len(labels), max_size=len(labels)))
    want_plain = _kernel_scan(per_ptr, [False] * len(labels))
    assert _detached_groups(per_ptr, list(range(len(labels)))) == want_plain
    idxs = [-1 if null else i for i, null in enumerate(nulls)]
    assert _detached_groups(per_ptr, idxs) == _kernel_scan(per_ptr, nulls)


def _state(k: Kernel, task: Task) -> dict[str, Any]:
    slab = pa(k).slab
    caches = {}
    for c in slab.caches:
        if not c.nr_slabs:
            continue
        slabs: set[Slab] = set(slab._slab_of.values())
        caches[c.name] = (
            [s.base if s is not None else None for s in c.cpu_slab],
            [[s.base for s in pl] for pl in c.cpu_partial],
            [s.base for s in c.partial],
            sorted(
                (s.base, bytes(s.used), list(s.freelist), s.inuse, s.on_partial, s.frozen)
                for s in slabs
                if s.cache is c
            ),
        )
    q = slab.quarantine
    assert q is not None
    return {
        "caches": caches,
        "nr_objects": slab.nr_objects,
        "large": dict(slab._large),
        "now": task.now_ns,
        "vmstat": k.vmstat.snapshot(),
        "quarantine": sorted((p, e.size) for p in q._d for e in [q.get(p)] if e is not None),
    }


Chunk = tuple[str, int, int, bool]
chunk = st.one_of(
    st.tuples(st.just("slice"), st.integers(0, 250), st.integers(1, 140), st.booleans()),
    # shuffled (the order frees arrive in), every other object, or pairs of neighbours
    st.tuples(
        st.sampled_from(["shuffled", "stride", "pairs"]),
        st.integers(0, 250),
        st.integers(2, 140),
        st.booleans(),
    ),
    st.tuples(
        st.sampled_from(["null", "zero", "freed", "large", "misaligned", "tail", "dup"]),
        st.integers(0, 250),
        st.just(1),
        st.just(False),
    ),
)


async def _run(chunks: list[Chunk], checked: bool, as_array: bool) -> tuple[Any, Any]:
    cfg = KernelConfig(nr_cpus=2).replace(**{"mm.zone_pages": 8192})
    out: dict[str, Any] = {}
    async with mm_kernel(cfg) as k:
        mm = pa(k)

        async def work(task: Task) -> None:
            live: list[int] = []
            for i in range(260):
                live.append(await mm.kmalloc(task, SIZES[(i // 50) % 3], KERNEL))
            freed = [live.pop(i) for i in (250, 170, 100, 60, 5)]
            for p in freed:
                await mm.kfree(task, p)
            large = await mm.kmalloc(task, 10000, KERNEL)
            p96 = next(p for p in live if mm.ksize(p) == 96)
            tail = p96 - (p96 % 4096) + (4096 // 96) * 96  # past the last object of its slab
            ptrs: list[int] = []
            for kind, a, n, rev in chunks:
                if kind in ("slice", "shuffled", "stride", "pairs"):
                    part = live[a : a + n]
                    if kind == "shuffled":
                        random.Random(a * 1000 + n).shuffle(part)
                    elif kind == "stride":
                        part = part[::2]
                    elif kind == "pairs":  # (k, k+1), (k+5, k+6), ...: runs of two
                        part = [p for j, p in enumerate(part) if j % 5 < 2]
                    ptrs += reversed(part) if rev else part
                elif kind == "dup" and ptrs:
                    ptrs.append(ptrs[a % len(ptrs)])
                else:
                    p = live[a % len(live)]
                    ptrs.append(
                        {
                            "null": 0,
                            "zero": ZERO_SIZE_PTR,
                            "freed": freed[a % len(freed)],
                            "large": large,
                            "misaligned": p + 8,
                            "tail": tail,
                            "dup": p,
                        }[kind]
                    )
            arg: Any = array("Q", ptrs) if as_array else ptrs
            free = mm.slab._kfree_bulk_checked if checked else mm.kfree_bulk
            try:
                await free(task, arg)  # one line: error reports name the caller's line
            except Exception as e:  # compared below
                out["error"] = (type(e).__name__, str(e))
            out["state"] = _state(k, task)

        await k.run_on_cpus(work, [0])
    return out.get("error"), out["state"]


@settings(max_examples=30, deadline=None)
@given(st.lists(chunk, min_size=1, max_size=6), st.booleans())
@example([("slice", 40, 30, False), ("tail", 0, 1, False)], False)
@example([("slice", 0, 140, False), ("slice", 100, 10, True), ("dup", 3, 1, False)], True)
@example([("shuffled", 0, 140, False)], True)
@example([("shuffled", 10, 100, False), ("dup", 7, 1, False)], False)
@example([("pairs", 0, 140, False), ("stride", 1, 140, True)], True)
def test_segment_path_matches_per_pointer_path(chunks: list[Chunk], as_array: bool) -> None:
    res: dict[bool, tuple[Any, Any]] = {}

    async def main() -> None:
        for checked in (False, True):
            res[checked] = await _run(chunks, checked, as_array)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert res[False] == res[True]


async def test_a_block_of_consecutive_objects_is_one_segment_per_slab(autojump_clock: Any) -> None:
    async with mm_kernel(KernelConfig(nr_cpus=2)) as k:
        mm = pa(k)

        async def work(task: Task) -> None:
            ptrs = [await mm.kmalloc(task, 32, KERNEL) for _ in range(300)]
            runs = mm.slab._slab_runs(array("Q", ptrs))
            assert runs is not None
            assert [(n, [(r.start, r.stop) for r in segs]) for _, n, segs in runs] == [
                (128, [(0, 128)]),
                (128, [(0, 128)]),
                (44, [(0, 44)]),
            ]
            # a repeat, a NULL or a freed object sends the call to the per-pointer path
            assert mm.slab._slab_runs([*ptrs[:10], ptrs[3]]) is None
            assert mm.slab._slab_runs([*ptrs[:10], 0]) is None
            await mm.kfree(task, ptrs[7])
            assert mm.slab._slab_runs(ptrs[:10]) is None
            # not an object start: misaligned, or in the 64-byte tail of a kmalloc-96 page
            assert mm.slab._slab_runs([ptrs[20] + 8]) is None
            p96 = await mm.kmalloc(task, 96, KERNEL)
            assert mm.slab._slab_runs([p96 - p96 % 4096 + 42 * 96]) is None

        await k.run_on_cpus(work, [0])


@given(
    st.sampled_from([(8, 0), (32, 0), (96, 0), (512, 1), (2048, 3)]),
    st.integers(0, 1 << 18),
    st.data(),
)
def test_lanes_integer_is_the_array_of_consecutive_objects(
    cache_spec: tuple[int, int], page: int, data: st.DataObject
) -> None:
    size, order = cache_spec
    cache = KmemCache(size, order, 4096)
    base = PAGE_OFFSET + (page << (12 + order))  # slabs are aligned to their size
    idx0 = data.draw(st.integers(0, cache.nobj - 1))
    m = data.draw(st.integers(1, cache.nobj - idx0))
    want = array("Q", [base + (idx0 + k) * size for k in range(m)]).tobytes()
    assert _lanes(cache, base, idx0, m) == int.from_bytes(want, "little")
