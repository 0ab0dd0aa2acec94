"""Fidelity of the kmalloc caches (rcukit/mm/slab.py, slub_partial.py) to SLUB of 5.8-5.10.

Sources read: ``mm/slub.c`` ``calculate_order()``/``slab_order()`` and ``set_min_partial()``
(the 5.x form, without the ``reserved`` argument), ``mm/slab_common.c`` ``kmalloc_slab()``
with its ``size_index[24]`` table and ``kmalloc_info[]``; ``include/linux/slab.h`` for
``KMALLOC_MAX_CACHE_SIZE`` (SLUB: ``2 * PAGE_SIZE``) and ``KMALLOC_MAX_SIZE`` (``1 <<
(MAX_ORDER + PAGE_SHIFT - 1)``). The reference arithmetic is the kernel's, transcribed.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from simtools import cfg, mm_kernel

from rcukit.mm.slab import SLUB_MAX_ORDER, kmalloc_sizes, slab_order
from rcukit.mm.slub_partial import MAX_PARTIAL, MIN_PARTIAL, min_partial


def _get_order(size: int, page_size: int) -> int:
    """``get_order()``: the order of the smallest block holding ``size`` bytes."""
    return max(0, ((size - 1) // page_size).bit_length())


def _kernel_slab_order(
    size: int, min_objects: int, max_order: int, fract_leftover: int, page_size: int
) -> int:
    """``slab_order()`` of 5.x ``mm/slub.c`` (``slub_min_order`` 0; MAX_OBJS_PER_PAGE never
    bites for kmalloc sizes)."""
    order = max(0, _get_order(min_objects * size, page_size))
    while order <= max_order:
        slab_size = page_size << order
        if slab_size % size <= slab_size // fract_leftover:
            break
        order += 1
    return order


def _kernel_calculate_order(size: int, nr_cpu_ids: int, page_size: int) -> int:
    """``calculate_order()`` of 5.x ``mm/slub.c`` with ``slub_min_objects`` unset."""
    min_objects = 4 * (nr_cpu_ids.bit_length() + 1)  # fls(nr_cpu_ids)
    max_objects = (page_size << SLUB_MAX_ORDER) // size  # order_objects()
    min_objects = min(min_objects, max_objects)
    while min_objects > 1:
        fraction = 16
        while fraction >= 4:
            order = _kernel_slab_order(size, min_objects, SLUB_MAX_ORDER, fraction, page_size)
            if order <= SLUB_MAX_ORDER:
                return order
            fraction //= 2
        min_objects -= 1
    return _kernel_slab_order(size, 1, SLUB_MAX_ORDER, 1, page_size)


@given(nr_cpus=st.integers(1, 8192), page_size=st.sampled_from([4096, 16384, 65536]))
def test_kmalloc_slab_orders_are_calculate_order(nr_cpus: int, page_size: int) -> None:
    """``calculate_order()`` (5.x ``mm/slub.c``): ``min_objects = 4 * (fls(nr_cpu_ids) +
    1)``, at most what ``slub_max_order`` (``PAGE_ALLOC_COSTLY_ORDER`` = 3) holds; the first
    order from ``get_order(min_objects * size)`` up whose leftover is at most 1/16, then 1/8,
    then 1/4 of the slab, with ``min_objects`` lowered until one fits. For every kmalloc
    cache (whose ``s->size`` is the object size: no debug, no red zone) the model's order is
    the kernel's."""
    for size in kmalloc_sizes(page_size):
        assert slab_order(size, page_size, nr_cpus) == _kernel_calculate_order(
            size, nr_cpus, page_size
        ), size


def test_kmalloc_size_classes_are_kmalloc_info() -> None:
    """``kmalloc_info[]`` (5.x ``mm/slab_common.c``) with SLUB's ``KMALLOC_MIN_SIZE`` 8 and
    ``KMALLOC_SHIFT_HIGH = PAGE_SHIFT + 1``: kmalloc-8 .. kmalloc-8k for 4 KiB pages, plus
    kmalloc-96 and kmalloc-192 (``KMALLOC_MIN_SIZE <= 32`` / ``<= 64``)."""
    assert kmalloc_sizes(4096) == (8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192)
    assert kmalloc_sizes(65536)[-1] == 2 * 65536


async def test_kmalloc_slab_follows_size_index(autojump_clock: Any) -> None:
    """``kmalloc_slab()`` (5.x ``mm/slab_common.c``): up to 192 bytes the cache is
    ``size_index[size_index_elem(size)]`` = ``(size - 1) / 8``, whose table maps 1-8 to
    kmalloc-8, 9-16 to 16, 17-32 to 32, 33-64 to 64, 65-96 to 96, 97-128 to 128 and 129-192
    to 192; above it is ``fls(size - 1)``, the next power of two. Requests above
    ``KMALLOC_MAX_CACHE_SIZE`` (2 * PAGE_SIZE for SLUB) go to ``kmalloc_large()``, up to
    ``KMALLOC_MAX_SIZE`` = one MAX_ORDER-1 block (4 MiB)."""
    async with mm_kernel(cfg()) as k:
        slab = k.mm.slab
        classes = (8, 16, 32, 64, 96, 128, 192)
        for size in range(1, 193):
            assert slab.cache_for(size).size == min(c for c in classes if c >= size), size
        for size in range(193, 8193):
            assert slab.cache_for(size).size == 1 << (size - 1).bit_length(), size
        assert slab.max_cache_size == 2 * 4096
        assert slab.kmalloc_max_size == 1 << (11 + 12 - 1)


@given(size=st.integers(8, 1 << 23))
def test_min_partial_is_set_min_partial(size: int) -> None:
    """``kmem_cache_open()`` (5.x ``mm/slub.c``) calls ``set_min_partial(s, ilog2(s->size) /
    2)``, which clamps to ``MIN_PARTIAL`` 5 .. ``MAX_PARTIAL`` 10: the empty slabs a node list
    keeps before a free discards one."""
    assert (MIN_PARTIAL, MAX_PARTIAL) == (5, 10)
    assert min_partial(size) == min(10, max(5, (size.bit_length() - 1) // 2))
