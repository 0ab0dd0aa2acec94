"""Runs of consecutive slab objects: ``SlabAllocator.kmalloc_run`` and ``kfree_bulk_segments``.

Kernel facts the runs rest on (mm/slub.c, v5.9 to v6.x): a fresh slab's freelist links its
objects in address order (``shuffle_freelist()`` only with ``CONFIG_SLAB_FREELIST_RANDOM``,
which the model does not enable), so consecutive ``kmalloc()`` calls from one active slab return
ascending addresses ``size`` apart; ``kfree_bulk()`` (``build_detached_freelist()``) gives a
slab page's objects back in one go. A run must hand out exactly what that many ``kmalloc()``
calls would, and freeing a block by its segments must leave what ``kfree_bulk()`` leaves.
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import example, given, settings
from hypothesis import strategies as st
from simtools import cfg, mm_kernel, on_cpu

from rcukit.errors import MemoryDebugError
from rcukit.kernel import Kernel
from rcukit.mm.gfp import GFP_KERNEL
from rcukit.mm.slab import Slab, _consecutive_tail, segment_pointers
from rcukit.sched.sim import Task

KERNEL = int(GFP_KERNEL)


def _state(k: Kernel) -> tuple[Any, ...]:
    slab = k.mm.slab
    cache = slab.cache_for(32)
    slabs = sorted({id(s): s for s in slab._slab_of.values()}.values(), key=lambda s: s.base)
    return (
        slab.nr_objects,
        [
            (s.base, bytes(s.used), list(s.freelist), s.inuse, s.on_partial, s.frozen)
            for s in slabs
        ],
        [s.base if s is not None else None for s in cache.cpu_slab],
        [[s.base for s in pl] for pl in cache.cpu_partial],
        [s.base for s in cache.partial],
        k.mm.nr_free_pages(),
        [c.local_ns for c in k.sim.cpus],
    )


async def _alloc(k: Kernel, n: int, runs: bool) -> list[int]:
    """``n`` kmalloc(32) calls, or the same through ``kmalloc_run`` (refilling as kmalloc),
    each run checked to be as long as the freelist's consecutive tail allows."""

    async def go(task: Task) -> list[int]:
        slab = k.mm.slab
        if not runs:
            return [await slab.kmalloc(task, 32, KERNEL) for _ in range(n)]
        cache = slab.cache_for(32)
        out: list[int] = []
        while len(out) < n:
            cpu_slab = cache.cpu_slab[task.cpu.id]
            if cpu_slab is None or not cpu_slab.freelist:
                assert await slab.kmalloc_refill(task, cache, KERNEL) is not None
                continue
            # a run is the freelist's whole consecutive tail (up to what is asked): the
            # flood's horizons and random draws follow its length
            fl = cpu_slab.freelist
            want = 1
            while want < min(n - len(out), len(fl)) and fl[-want - 1] == fl[-1] + want:
                want += 1
            p0, got = slab.kmalloc_run(task, cache, KERNEL, n - len(out))
            assert got == want
            out += range(p0, p0 + got * 32, 32)
        return out

    return await on_cpu(k, go)


async def test_kmalloc_run_hands_out_what_kmalloc_would(autojump_clock: Any) -> None:
    """Fresh slabs: same pointers, same slab state, same simulated time as n kmalloc calls."""
    async with mm_kernel(cfg(**{"mm.debug_quarantine": 0})) as a, \
            mm_kernel(cfg(**{"mm.debug_quarantine": 0})) as b:
        pa = await _alloc(a, 700, runs=False)
        pb = await _alloc(b, 700, runs=True)
        assert pa == pb
        assert _state(a) == _state(b)


async def test_kmalloc_run_stops_where_the_freelist_stops_being_consecutive(
    autojump_clock: Any,
) -> None:
    """After frees in scattered order, the freelist's tail is not one progression: a run
    takes only the consecutive part, and runs plus kmalloc calls still match kmalloc alone."""
    async with mm_kernel(cfg(**{"mm.debug_quarantine": 0})) as a, \
            mm_kernel(cfg(**{"mm.debug_quarantine": 0})) as b:
        for k in (a, b):
            ptrs = await _alloc(k, 128, runs=False)

            async def give_back(task: Task, k: Kernel = k, ptrs: list[int] = ptrs) -> None:
                # objects 5, 6, 7, then 2, then 9 (LIFO: 9 is handed out first)
                for i in (5, 6, 7, 2, 9):
                    await k.mm.kfree(task, ptrs[i])

            await on_cpu(k, give_back)
        cache = b.mm.slab.cache_for(32)
        cpu_slab = cache.cpu_slab[0]
        assert cpu_slab is not None
        assert cpu_slab.freelist[-5:] == [5, 6, 7, 2, 9]  # kfree appends; kmalloc pops

        async def one_run(task: Task) -> tuple[int, int]:
            return b.mm.slab.kmalloc_run(task, cache, KERNEL, 5)

        p0, got = await on_cpu(b, one_run)
        assert got == 1  # 9, then 2: not consecutive
        first = [await on_cpu(a, lambda t: a.mm.kmalloc(t, 32, KERNEL))]
        assert [p0] == first
        assert _state(a) == _state(b)


@pytest.mark.parametrize("cut", [False, True])
async def test_whole_slab_refill_leaves_what_nobj_kmallocs_leave(
    autojump_clock: Any, cut: bool
) -> None:
    """A run-based flood whose next horizon is a slab or more away has
    ``kmalloc_refill_nowait`` hand a new slab out whole. mm/slub.c (v6.1,
    ``___slab_alloc()``, ``allocate_slab()``): a new slab's objects go out in freelist order,
    all of them before the next refill, so a whole slab must leave what ``nobj`` kmalloc
    calls leave (pointers, slab state, lists, free pages, time). Past ``whole_below`` (the
    flood's tick would cut the run) the refill is an ordinary one."""
    async with mm_kernel(cfg(**{"mm.debug_quarantine": 0})) as a, \
            mm_kernel(cfg(**{"mm.debug_quarantine": 0})) as b:
        cache = b.mm.slab.cache_for(32)
        nobj = cache.nobj
        first = await _alloc(a, 1, runs=False) + await _alloc(b, 1, runs=False)
        assert first[0] == first[1]  # the pcp list now holds pages: the refills are hits
        pa = await _alloc(a, nobj - 1 + 3 * nobj + 5, runs=False)

        async def go(task: Task) -> list[int]:
            slab = b.mm.slab
            p0, got = slab.kmalloc_run(task, cache, KERNEL, nobj - 1)
            out = list(range(p0, p0 + got * 32, 32))
            per = slab.kmalloc_cost(cache, KERNEL)
            for _ in range(3):
                below = task.cpu.local_ns if cut else task.cpu.local_ns + 10**9
                new = slab.kmalloc_refill_nowait(task, cache, KERNEL, below)
                assert new is not None and new is cache.cpu_slab[task.cpu.id]
                if cut:
                    assert len(new.freelist) == nobj
                    p0, got = slab.kmalloc_run(task, cache, KERNEL, nobj)
                else:
                    assert not new.freelist and new.inuse == nobj
                    task.cpu.local_ns += nobj * per  # the caller charges the kmallocs
                    p0, got = new.base, nobj
                out += range(p0, p0 + got * 32, 32)
            return out + [await slab.kmalloc(task, 32, KERNEL) for _ in range(5)]

        assert pa == await on_cpu(b, go)
        assert _state(a) == _state(b)


@pytest.mark.parametrize("bulk", [False, True])
async def test_kmalloc_run_after_frees_into_the_active_slab(
    autojump_clock: Any, bulk: bool
) -> None:
    """Objects freed back into the active slab (``kfree()`` or ``kfree_bulk()``: SLUB pushes
    them on the freelist, mm/slub.c ``do_slab_free()``/``build_detached_freelist()``) are
    handed out first and are not consecutive with the rest: runs must notice that the slab is
    no longer fresh, so runs plus kmalloc calls keep matching kmalloc calls alone."""
    async with mm_kernel(cfg(**{"mm.debug_quarantine": 0})) as a, \
            mm_kernel(cfg(**{"mm.debug_quarantine": 0})) as b:
        for k in (a, b):
            ptrs = await _alloc(k, 100, runs=False)

            async def give_back(task: Task, k: Kernel = k, ptrs: list[int] = ptrs) -> None:
                back = [ptrs[i] for i in (40, 12, 13, 14, 90)]
                if bulk:
                    await k.mm.kfree_bulk(task, back)
                else:
                    for p in back:
                        await k.mm.kfree(task, p)

            await on_cpu(k, give_back)
        assert await _alloc(a, 60, runs=False) == await _alloc(b, 60, runs=True)
        assert _state(a) == _state(b)


@pytest.mark.parametrize("seed", range(8))
async def test_kmalloc_run_after_scattered_frees(autojump_clock: Any, seed: int) -> None:
    """``kfree()`` pushes each object on the slab's freelist (mm/slub.c v6.1
    ``do_slab_free()``: LIFO), so after frees in a random order the freelist's tail pops as
    short ascending stretches here and there: runs must find each stretch's length exactly
    (``_consecutive_tail``), so that runs hand out what kmalloc() calls hand out."""
    rng = random.Random(seed)
    async with mm_kernel(cfg(**{"mm.debug_quarantine": 0})) as a, \
            mm_kernel(cfg(**{"mm.debug_quarantine": 0})) as b:
        picks = sorted(rng.sample(range(120), rng.randint(5, 110)))
        # some ascending stretches freed last-first (they pop ascending), some shuffled
        order = picks[::-1] if seed % 2 else rng.sample(picks, len(picks))
        for k in (a, b):
            ptrs = await _alloc(k, 120, runs=False)

            async def give_back(task: Task, k: Kernel = k, ptrs: list[int] = ptrs) -> None:
                for i in order:
                    await k.mm.kfree(task, ptrs[i])

            await on_cpu(k, give_back)
        assert await _alloc(a, 150, runs=False) == await _alloc(b, 150, runs=True)
        assert _state(a) == _state(b)


async def _free(k: Kernel, what: str, gone: list[int]) -> None:
    """``gone`` freed by one kfree() (its one pointer), kfree_bulk(), or kfree_bulk_segments()
    of one-object segments (merged there as a flood's block would be)."""
    segs: list[tuple[Slab, int, int]] = []
    for p in gone:
        where = k.mm.slab.slab_index(p)
        assert where is not None
        segs.append((where[0], where[1], 1))

    async def go(task: Task) -> None:
        if what == "kfree":
            await k.mm.kfree(task, gone[0])
        elif what == "bulk":
            await k.mm.kfree_bulk(task, array("Q", gone))
        else:
            await k.mm.slab.kfree_bulk_segments(task, segs)

    await on_cpu(k, go)


#: One step of :func:`test_kmalloc_run_after_mixed_frees`: (what, position, count).
_Op = tuple[str, int, int]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["alloc", "bulk", "segments", "kfree"]),
            st.integers(0, 400),
            st.integers(1, 300),
        ),
        min_size=1,
        max_size=12,
    )
)
@example([("alloc", 0, 300), ("segments", 10, 50), ("segments", 70, 50), ("kfree", 5, 1),
          ("alloc", 0, 120)])
@example([("alloc", 0, 300), ("bulk", 60, 40), ("alloc", 0, 10), ("bulk", 20, 30),
          ("alloc", 0, 100)])
@example([("alloc", 0, 300), ("bulk", 20, 10), ("segments", 10, 10), ("alloc", 0, 300)])
def test_kmalloc_run_after_mixed_frees(ops: list[_Op]) -> None:
    """Bulk frees push consecutive stretches on a slab's freelist (mm/slub.c v6.1
    ``build_detached_freelist()``, one detached freelist per slab page), ``kfree()`` pushes
    single objects (``do_slab_free()``), and ``kmalloc()`` pops from the same end: whatever
    mix of them came before, in any order (so the stretch starts ``kmalloc_run`` remembers
    are sometimes stale), runs hand out exactly what kmalloc() calls hand out."""

    async def main() -> None:
        async with mm_kernel(cfg(**{"mm.debug_quarantine": 0})) as a, \
                mm_kernel(cfg(**{"mm.debug_quarantine": 0})) as b:
            live: list[int] = []
            for what, pos, n in ops:
                if what == "alloc":
                    got = await _alloc(a, n, runs=False)
                    assert got == await _alloc(b, n, runs=True)
                    live += got
                    continue
                pos = min(pos, len(live))
                if what == "kfree":
                    n = 1
                gone = live[pos : pos + n]
                del live[pos : pos + n]
                if not gone:
                    continue
                await _free(a, "bulk" if what == "segments" else what, gone)
                await _free(b, what, gone)
                assert _state(a) == _state(b)
            assert await _alloc(a, 200, runs=False) == await _alloc(b, 200, runs=True)
            assert _state(a) == _state(b)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def _block_of(k: Kernel, n: int) -> tuple[array[int], list[tuple[Slab, int, int]]]:
    ptrs = await _alloc(k, n, runs=False)
    segs: list[tuple[Slab, int, int]] = []
    for p in ptrs:
        where = k.mm.slab.slab_index(p)
        assert where is not None
        s, i = where
        if segs and segs[-1][0] is s and segs[-1][1] + segs[-1][2] == i:
            segs[-1] = (s, segs[-1][1], segs[-1][2] + 1)
        else:
            segs.append((s, i, 1))
    return array("Q", ptrs), segs


async def _free_alike(
    a: Kernel, ptrs: Sequence[int], b: Kernel, segs: Sequence[tuple[Slab, int, int]]
) -> None:
    """``kfree_bulk(ptrs)`` on ``a``, ``kfree_bulk_segments(segs)`` on ``b`` (the same
    objects), then the same allocator state on both."""
    await on_cpu(a, lambda t: a.mm.kfree_bulk(t, ptrs))
    await on_cpu(b, lambda t: b.mm.slab.kfree_bulk_segments(t, segs))
    assert _state(a) == _state(b)


@pytest.mark.parametrize("quarantine", [0, 64])
@pytest.mark.parametrize("cut", [0, 1, 7])
async def test_kfree_bulk_segments_leaves_what_kfree_bulk_leaves(
    autojump_clock: Any, cut: int, quarantine: int
) -> None:
    """Same freelists, partial lists, discarded slabs, page counts and charged time; also
    when segments of one slab are cut where a run stopped (a tick, or the block's first
    record stored by the per-call path): ``cut`` splits every segment that often. Without
    the quarantine the block (each slab one stretch) takes the one-pass stretches path, with
    it the general parse: both are kfree_bulk()'s detached freelists (mm/slub.c v6.1,
    ``build_detached_freelist()``)."""
    async with mm_kernel(cfg(**{"mm.debug_quarantine": quarantine})) as a, \
            mm_kernel(cfg(**{"mm.debug_quarantine": quarantine})) as b:
        ptrs_a, _ = await _block_of(a, 900)
        ptrs_b, whole = await _block_of(b, 900)
        assert len(whole) > 1
        segs: list[tuple[Slab, int, int]] = []
        for s, i, n in whole:
            step = max(1, n // (cut + 1))
            segs += [(s, j, min(step, i + n - j)) for j in range(i, i + n, step)]
        assert len(segs) > len(whole) or not cut
        # the segments stand for the same pointer array (the quarantine gets it from them)
        assert segment_pointers(segs).tolist() == list(ptrs_b)
        await _free_alike(a, ptrs_a, b, segs)


async def test_kfree_bulk_segments_with_a_full_pcp_list_leaves_what_kfree_bulk_leaves(
    autojump_clock: Any,
) -> None:
    """Emptied slabs beyond ``min_partial`` go back to the page allocator one page at a time
    (mm/slub.c v6.1 ``discard_slab()`` -> ``__free_pages()``); with the pcp list at ``high``
    each free drains a batch under ``zone->lock`` (mm/page_alloc.c
    ``free_unref_page_commit()``), which may sleep: the slabs that survive still get their
    freelists first, so the state is kfree_bulk()'s."""
    async with mm_kernel(cfg(**{"mm.debug_quarantine": 0})) as a, \
            mm_kernel(cfg(**{"mm.debug_quarantine": 0})) as b:
        ptrs_a, _ = await _block_of(a, 1500)
        _, segs = await _block_of(b, 1500)
        for k in (a, b):
            for pcp in k.mm.page_alloc.pcps:
                pcp.high = min(pcp.high, pcp.count + 1)
        await _free_alike(a, ptrs_a, b, segs)
        assert b.mm.vmstat["pgfree"] > 0


async def test_kfree_bulk_segments_with_a_slab_twice_leaves_what_kfree_bulk_leaves(
    autojump_clock: Any,
) -> None:
    """A slab whose objects come back later in the block (two detached freelists for it,
    mm/slub.c v6.1 ``build_detached_freelist()`` looks ahead only 3 objects) is not one
    stretch: the general parse frees it, as kfree_bulk() does the pointer array."""
    async with mm_kernel(cfg(**{"mm.debug_quarantine": 0})) as a, \
            mm_kernel(cfg(**{"mm.debug_quarantine": 0})) as b:
        _, whole_a = await _block_of(a, 900)
        _, whole_b = await _block_of(b, 900)
        assert len(whole_b) > 2

        def interleaved(whole: list[tuple[Slab, int, int]]) -> list[tuple[Slab, int, int]]:
            s, i, n = whole[0]
            half = n // 2
            return [(s, i, half), whole[1], (s, i + half, n - half), *whole[2:]]

        ptrs_a = segment_pointers(interleaved(whole_a))
        await _free_alike(a, ptrs_a, b, interleaved(whole_b))


@pytest.mark.parametrize("quarantine", [0, 64])
async def test_kfree_bulk_segments_reports_a_double_free_like_kfree_bulk(
    autojump_clock: Any, quarantine: int
) -> None:
    """A segment whose object is no longer allocated falls back to kfree_bulk's checks: the
    same KASAN double-free report (or, without the quarantine, the invalid-free of a free
    object), and nothing freed."""
    async with mm_kernel(cfg(**{"mm.debug_quarantine": quarantine})) as k:
        ptrs, segs = await _block_of(k, 300)
        await on_cpu(k, lambda t: k.mm.kfree(t, ptrs[200]))

        async def again(task: Task) -> None:
            before = _state(k)[:4]
            kind = "double-free" if quarantine else "invalid-free"
            with pytest.raises(MemoryDebugError, match=f"{kind} in kfree_bulk") as info:
                await k.mm.slab.kfree_bulk_segments(task, segs)
            assert f"{ptrs[200]:#x}" in str(info.value)
            assert _state(k)[:4] == before

        await on_cpu(k, again)


def _with_gaps(whole: list[tuple[Slab, int, int]]) -> list[tuple[Slab, int, int]]:
    """Each slab's stretch as its thirds, the middle one left out and the last third first
    when the slab has room: the shapes a flood takes from a freelist refilled by several
    bulk frees (stretches in any order, not adjacent)."""
    segs: list[tuple[Slab, int, int]] = []
    for s, i, n in whole:
        third = n // 3
        if third == 0:
            segs.append((s, i, n))
            continue
        first, last = (s, i, third), (s, i + 2 * third, n - 2 * third)
        segs += [last, first] if n % 2 else [first, last]
    return segs


async def test_kfree_bulk_segments_with_gaps_leaves_what_kfree_bulk_leaves(
    autojump_clock: Any,
) -> None:
    """A slab's objects in a block as several stretches that are not adjacent (each slab
    still one detached freelist: mm/slub.c v6.1 ``build_detached_freelist()`` takes every
    object of the page it finds within its look-ahead) free as kfree_bulk() of the same
    pointers does: freelists, partial lists, discarded slabs, page counts, charged time."""
    async with mm_kernel(cfg(**{"mm.debug_quarantine": 0})) as a, \
            mm_kernel(cfg(**{"mm.debug_quarantine": 0})) as b:
        _, whole_a = await _block_of(a, 900)
        _, whole_b = await _block_of(b, 900)
        segs_b = _with_gaps(whole_b)
        assert any(x[0] is y[0] for x, y in pairwise(segs_b))
        ptrs_a = segment_pointers(_with_gaps(whole_a))
        await _free_alike(a, ptrs_a, b, segs_b)


async def test_kfree_bulk_segments_reports_an_object_listed_twice_in_a_slabs_stretches(
    autojump_clock: Any,
) -> None:
    """Two stretches of one slab sharing an object (a pointer queued twice) are caught before
    anything is freed, as kfree_bulk() catches it (mm/slub.c v6.1: the second free of the
    object is a double free; KASAN reports it): the same error, the allocator unchanged."""
    async with mm_kernel(cfg(**{"mm.debug_quarantine": 0})) as a, \
            mm_kernel(cfg(**{"mm.debug_quarantine": 0})) as b:
        _, whole_a = await _block_of(a, 300)
        _, whole_b = await _block_of(b, 300)

        def twice(whole: list[tuple[Slab, int, int]]) -> list[tuple[Slab, int, int]]:
            s, i, n = whole[0]
            return [(s, i + n // 2, n - n // 2), (s, i, n // 2 + 1), *whole[1:]]

        ptrs_a = segment_pointers(twice(whole_a))
        errors: list[str] = []

        async def bulk(task: Task) -> None:
            with pytest.raises(MemoryDebugError) as info:
                await a.mm.kfree_bulk(task, ptrs_a)
            errors.append(str(info.value))

        async def segments(task: Task) -> None:
            before = _state(b)
            with pytest.raises(MemoryDebugError) as info:
                await b.mm.slab.kfree_bulk_segments(task, twice(whole_b))
            errors.append(str(info.value))
            assert _state(b) == before

        await on_cpu(a, bulk)
        await on_cpu(b, segments)
        # the same report but for the caller's site (file, line, task)
        head, tail = (e.split(" at ", 1)[0] for e in errors), (e.split(";")[1:] for e in errors)
        assert len(set(head)) == 1 and len({tuple(t) for t in tail}) == 1
        assert "appears twice" in errors[1]
        assert _state(a) == _state(b)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 8).flatmap(
        lambda nobj_log: st.tuples(
            st.just(8 << nobj_log),
            st.lists(st.tuples(st.integers(0, 10**6), st.booleans()), min_size=1, max_size=9),
            st.randoms(use_true_random=False),
        )
    )
)
def test_consecutive_tail_is_the_longest_ascending_tail(
    case: tuple[int, list[tuple[int, bool]], random.Random],
) -> None:
    """The run a slab's freelist hands out is its longest tail that pops as consecutive
    objects (SLUB pops the freelist: mm/slub.c v6.1 ``slab_alloc_node()``), for freelists
    made of stretches pushed by bulk frees (``build_detached_freelist()``, one stretch per
    slab page), in any order, and single objects pushed by ``kfree()`` in between: the fast
    candidate and the fallback search agree with popping one object at a time."""
    nobj, cuts, rng = case
    descending = list(range(nobj - 1, -1, -1))
    bounds = sorted({c % nobj for c, _ in cuts} | {0, nobj})
    # one piece more than cuts at most: the last one is a stretch
    singles = [single for _, single in cuts] + [False]
    pieces = [(list(range(x, y)), singles[i]) for i, (x, y) in enumerate(pairwise(bounds))]
    rng.shuffle(pieces)
    fl: list[int] = []
    for objs, single in pieces:
        fl += rng.sample(objs, len(objs)) if single else objs[::-1]
    a = fl[-1]
    longest = 1
    while longest < len(fl) and fl[-longest - 1] == a + longest:
        longest += 1
    for k in range(longest + 1, len(fl) + 1):
        assert _consecutive_tail(fl, k, descending) == longest
