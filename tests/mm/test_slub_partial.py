"""SLUB's slab lists (rcukit.mm.slub_partial): cpu slabs, per-CPU partial lists, the node list.

Every number below follows from mm/slub.c's rules for the cache at hand, derived in the test's
docstring; none is read off a run.
"""

from __future__ import annotations

from typing import Any

import pytest
from simtools import cfg, mm_kernel, on_cpu

import rcukit.sim
from rcukit.kernel import Kernel
from rcukit.mm.gfp import GFP_KERNEL
from rcukit.mm.slab import SlabAllocator
from rcukit.mm.slub_partial import cpu_partial_limit, min_partial
from rcukit.sched.sim import Task

KERNEL = int(GFP_KERNEL)


def _slab(k: Kernel) -> SlabAllocator:
    return k.mm.slab


async def _alloc(k: Kernel, size: int, n: int, cpu: int = 0) -> list[int]:
    async def go(task: Task) -> list[int]:
        return [await _slab(k).kmalloc(task, size, KERNEL) for _ in range(n)]

    return await on_cpu(k, go, cpu)


def _slab_index(k: Kernel, ptrs: list[int]) -> list[int]:
    """Each pointer's slab as the slab's position among the cache's slabs by address."""
    slab = _slab(k)
    found = [slab.slab_index(p) for p in ptrs]
    bases = sorted({f[0].base for f in found if f is not None})
    return [bases.index(f[0].base) if f is not None else -1 for f in found]


def test_cpu_partial_limits_and_min_partial() -> None:
    """``set_cpu_partial()`` (mm/slub.c): before 5.16 ``s->cpu_partial`` is 30 free objects for
    objects under 256 bytes, 13 under 1024, 6 under PAGE_SIZE, 2 above; from 5.16 ("mm, slub:
    use slab count for cpu partial") 120/52/24/6 objects become ``cpu_partial_slabs`` =
    DIV_ROUND_UP(2 x objects, objects per slab): 2 slabs for kmalloc-32 (128 per 4 KiB page),
    4 for kmalloc-64. ``s->min_partial`` is ilog2(size) / 2 clamped to [5, 10]
    (``set_min_partial()``, MIN_PARTIAL / MAX_PARTIAL): 5 up to 2 KiB, 6 for 4 and 8 KiB."""
    assert cpu_partial_limit(32, 128, 4096, (5, 15)) == 30
    assert cpu_partial_limit(512, 8, 4096, (5, 15)) == 13
    assert cpu_partial_limit(2048, 16, 4096, (5, 15)) == 6
    assert cpu_partial_limit(8192, 4, 4096, (5, 15)) == 2
    assert cpu_partial_limit(32, 128, 4096, (5, 16)) == 2
    assert cpu_partial_limit(64, 64, 4096, (6, 1)) == 4
    assert cpu_partial_limit(192, 21, 4096, (6, 1)) == 12
    assert [min_partial(s) for s in (8, 32, 1024, 2048, 4096, 8192)] == [5, 5, 5, 5, 6, 6]


async def test_each_cpu_allocates_from_its_own_cpu_slab(autojump_clock: Any) -> None:
    """``kmem_cache_cpu->slab`` (mm/slub.c, ``___slab_alloc()``, every version): each CPU
    allocates from a slab of its own, so two CPUs allocating at once never share a slab
    page, and each CPU's objects are consecutive within its slab."""
    async with mm_kernel(cfg()) as k:
        a = await _alloc(k, 32, 10, cpu=0)
        b = await _alloc(k, 32, 10, cpu=1)
        a += await _alloc(k, 32, 10, cpu=0)
        where = _slab_index(k, a + b)
        sa, sb = set(where[:20]), set(where[20:])
        assert len(sa) == len(sb) == 1 and sa != sb
        assert a == list(range(a[0], a[0] + 20 * 32, 32))
        cache = _slab(k).cache_for(32)
        assert [s is not None and s.frozen for s in cache.cpu_slab] == [True, True]


@pytest.mark.parametrize(
    ("profile", "use_bulk", "pages"),
    [
        # before 5.16: a free of one object into a full slab puts it on the CPU's partial list
        # counted as 1 free object, one of the whole slab as 21
        ("v5.9", False, 26),
        ("v5.9", True, 41),
        # from 5.16 the list is counted in slabs: the same slabs go back either way
        ("v6.1", False, 31),
        ("v6.1", True, 31),
    ],
)
async def test_freed_full_slabs_go_to_the_cpu_partial_list_until_it_drains(
    autojump_clock: Any, profile: str, use_bulk: bool, pages: int
) -> None:
    """``__slab_free()`` puts a slab that was full on the freeing CPU's partial list
    (``put_cpu_partial()``, CONFIG_SLUB_CPU_PARTIAL); a free never discards a slab there, even
    an empty one. A put finding the list at its limit first moves all of it to the node list
    (``unfreeze_partials()``), discarding the empty slabs once the node list holds
    ``min_partial`` (mm/slub.c, 5.x and 6.x).

    1000 kmalloc-192 objects fill 47 slabs of 21 (and 13 of a 48th, the cpu slab). Freed one
    by one, oldest first, each of the 47 is put once with 1 free object (``page->pobjects``)
    on 5.9 (limit 30 objects): the 32nd put drains 31 slabs, 5 to the node list, 26
    discarded, 16 stay on the CPU's list. One ``kfree_bulk()`` frees a slab per detached
    freelist, 21 objects, so every third put drains two: 23 drains, 46 slabs, 41 discarded.
    From 5.16 the limit is 12 slabs whatever they hold: puts 13, 25, 37 drain 12 each, 31
    discarded, in either order."""
    async with mm_kernel(cfg(**{"kvfree.profile": profile})) as k:
        slab = _slab(k)
        ptrs = await _alloc(k, 192, 1000)
        cache = slab.cache_for(192)
        assert cache.nr_slabs == 48 and cache.nobj == 21

        async def free(task: Task) -> None:
            if use_bulk:
                await slab.kfree_bulk(task, ptrs)
            else:
                for p in ptrs:
                    await slab.kfree(task, p)

        before = k.vmstat["pgfree"]
        await on_cpu(k, free)
        assert k.vmstat["pgfree"] - before == pages
        assert cache.nr_slabs == 48 - pages
        assert len(cache.partial) == cache.min_partial == 5
        assert all(s.inuse == 0 and s.frozen for s in cache.cpu_partial[0])
        assert cache.nr_slabs == 5 + len(cache.cpu_partial[0]) + 1  # + the cpu slab


async def test_a_cpu_reuses_the_slabs_it_freed_into(autojump_clock: Any) -> None:
    """``___slab_alloc()`` (mm/slub.c): once its cpu slab is exhausted a CPU takes the head
    of its own partial list before the node list. So objects of CPU 0's (full) slabs that CPU
    1 frees go onto CPU 1's partial list: CPU 1's next slab is the last one it freed into.
    CPU 0 does not see that slab; a remote free into its own cpu slab (frozen: left there)
    it does (``get_freelist()``: the slab's freelist once ``c->freelist`` is empty)."""
    async with mm_kernel(cfg(**{"kvfree.profile": "v6.1"})) as k:
        cache = _slab(k).cache_for(32)
        a = await _alloc(k, 32, 2 * cache.nobj)  # CPU 0: two full slabs
        first, second = _slab(k).slab_index(a[0]), _slab(k).slab_index(a[-1])
        assert first is not None and second is not None

        async def free_two(task: Task) -> None:
            await _slab(k).kfree(task, a[0])
            await _slab(k).kfree(task, a[-1])

        await on_cpu(k, free_two, 1)
        # the second slab is CPU 0's exhausted cpu slab, frozen: the free left it there
        assert [s.base for s in cache.cpu_partial[1]] == [first[0].base]
        assert cache.cpu_partial[0] == [] and not cache.partial
        b = await _alloc(k, 32, 1, cpu=1)
        assert b == [a[0]]
        assert await _alloc(k, 32, 1, cpu=0) == [a[-1]]
        cpu0 = cache.cpu_slab[0]
        assert cpu0 is not None and cpu0.base == second[0].base


async def test_without_cpu_partial_the_node_list_is_first_in_first_out(
    autojump_clock: Any,
) -> None:
    """Without CONFIG_SLUB_CPU_PARTIAL, ``__slab_free()`` adds a slab that was full to the node
    list's tail (``add_partial(n, slab, DEACTIVATE_TO_TAIL)``) and ``get_partial_node()``
    takes from its head (mm/slub.c): the slab freed into first is allocated from first."""
    async with mm_kernel(cfg(**{"mm.slub_cpu_partial": False})) as k:
        cache = _slab(k).cache_for(32)
        assert cache.cpu_partial_limit == 0
        a = await _alloc(k, 32, 3 * cache.nobj)
        s0, s1 = (_slab(k).slab_index(a[i * cache.nobj]) for i in (0, 1))
        assert s0 is not None and s1 is not None

        async def free(task: Task) -> None:
            await _slab(k).kfree(task, a[cache.nobj])  # into slab 1 first
            await _slab(k).kfree(task, a[0])  # then slab 0

        await on_cpu(k, free)
        assert [s.base for s in cache.partial] == [s1[0].base, s0[0].base]
        assert [s.base for s in cache.cpu_partial[0]] == []
        assert await _alloc(k, 32, 1) == [a[cache.nobj]]


@pytest.mark.parametrize(("profile", "drained"), [("v6.1", 4), ("v5.9", 7)])
async def test_get_partial_node_fills_the_cpu_partial_list_to_half(
    autojump_clock: Any, profile: str, drained: int
) -> None:
    """``get_partial_node()`` (mm/slub.c): the node list's head becomes the cpu slab and, with
    per-CPU partial lists, more slabs from the head go onto the CPU's list (no drain) until
    it holds more than half its limit: from 5.16 slabs (kmalloc-64: limit 4, so 3 more),
    before that free objects (limit 30: 5 + 5 + 5 + 5 > 15, so 3 more).

    CPU 1 frees 5 objects of each of CPU 0's 8 full slabs, a ``kfree_bulk()`` per slab; its
    puts drain its list to the node list (6.1: the 5th put drains 4 slabs; 5.9: the 8th,
    when 35 > 30 objects, drains 7), head first, so the node list's head is the last slab
    drained."""
    async with mm_kernel(cfg(**{"kvfree.profile": profile})) as k:
        cache = _slab(k).cache_for(64)
        nobj = cache.nobj
        a = await _alloc(k, 64, 9 * nobj)

        async def free(task: Task) -> None:
            for s in range(8):
                await _slab(k).kfree_bulk(task, a[s * nobj : s * nobj + 5])

        await on_cpu(k, free, 1)
        node = [s.base for s in cache.partial]
        assert len(node) == drained
        cpu1 = list(cache.cpu_partial[1])
        await _alloc(k, 64, 1, cpu=0)  # CPU 0's cpu slab is exhausted: a refill
        cpu_slab = cache.cpu_slab[0]
        assert cpu_slab is not None and cpu_slab.base == node[0]
        assert [s.base for s in cache.cpu_partial[0]] == node[1:4]  # head last
        assert [s.base for s in cache.partial] == node[4:]
        assert cache.cpu_partial[1] == cpu1


async def test_an_offlined_cpu_gives_its_slabs_to_the_node_list(autojump_clock: Any) -> None:
    """``slub_cpu_dead()`` (mm/slub.c, CPUHP_SLUB_DEAD) flushes the dead CPU's slabs
    (``__flush_cpu_slab``): its cpu slab is deactivated (``deactivate_slab()``: with free
    objects, to the node list's head) and its per-CPU partial list unfrozen to the node list's
    tail (``unfreeze_partials()``); nothing of it stays frozen for a CPU that is gone."""
    async with rcukit.sim.boot(cfg(**{"kvfree.profile": "v6.1"})) as k:
        cache = _slab(k).cache_for(32)
        nobj = cache.nobj
        a = await _alloc(k, 32, nobj + 72, cpu=1)  # slab 0 full, slab 1 its cpu slab
        s0, s1 = _slab(k).slab_index(a[0]), _slab(k).slab_index(a[-1])
        assert s0 is not None and s1 is not None

        async def free_one(task: Task) -> None:
            await _slab(k).kfree(task, a[0])  # slab 0 was full: onto CPU 1's list

        await on_cpu(k, free_one, 1)
        assert cache.cpu_partial[1] == [s0[0]] and cache.cpu_slab[1] is s1[0]

        async def down(task: Task) -> None:
            await k.rcu.cpu_down(task, 1)

        await on_cpu(k, down, 0)
        assert cache.cpu_slab[1] is None and cache.cpu_partial[1] == []
        assert list(cache.partial) == [s1[0], s0[0]]
        assert not s0[0].frozen and not s1[0].frozen
        assert s0[0].on_partial and s1[0].on_partial
