"""SLUB's slab lists (mm/slub.c): which slab a CPU allocates from next, and what a free does
with the slab it lands in.

Each cache has, per CPU, a *cpu slab* (``kmem_cache_cpu->slab``, frozen: only its CPU
allocates from it) and a *per-CPU partial list* (``c->partial``, CONFIG_SLUB_CPU_PARTIAL:
slabs this CPU freed into while they were full, also frozen), and one *node partial list*
(``kmem_cache_node->partial``: slabs with free objects that no CPU holds). A full slab is on
no list. So where an object goes back, and which objects a CPU hands out next, depend on which
CPU freed what: a CPU reuses the slabs it freed into before anything the node list holds.

- ``___slab_alloc()``, the cpu slab exhausted: it is unfrozen and forgotten (full); the next
  is the head of ``c->partial``, else :func:`get_partial_node` (the node list's head, plus more
  slabs onto ``c->partial`` up to half its limit), else a new slab.
- ``__slab_free()`` (and each detached freelist of ``kmem_cache_free_bulk()``): a frozen slab
  just takes the objects back; a slab that was full is frozen and put on the freeing CPU's
  partial list (:func:`put_cpu_partial`, which first moves the whole list to the node list
  once it is at its limit); a slab on the node list that the free empties is discarded when
  the node list holds at least ``s->min_partial`` slabs.

The limit of ``c->partial`` counts free objects before 5.16 (``s->cpu_partial``, against the
free objects each slab had when it was put there, ``page->pobjects``, never updated after) and
slabs from 5.16 ("mm, slub: change percpu partial accounting from objects to pages",
b47291ef02b0, with "mm/slub: increase default cpu partial list sizes"). 6.8 stopped freezing
the slabs on ``c->partial`` ("slub: Delay freezing of partial slabs"), which changes nothing
this model observes: a free into such a slab still leaves it where it is. 7.0 replaced all of
this with percpu sheaves; no profile models 7.0.

Not modelled: ``c->freelist`` apart from the slab's own (the cpu slab's objects, remote frees
included, are one LIFO freelist), NUMA nodes (one node), the ``list_lock`` (a spinlock_t taken
around node-list changes; its timing is not charged), percpu sheaves (6.18+, not used by the
kmalloc caches).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections import OrderedDict

    from rcukit.mm.slab import KmemCache, Slab

__all__ = [
    "MAX_PARTIAL",
    "MIN_PARTIAL",
    "cpu_partial_limit",
    "flush_cpu_slab",
    "get_partial",
    "min_partial",
    "put_cpu_partial",
    "slab_free_list_step",
    "unfreeze_partials",
]

#: ``MIN_PARTIAL`` and ``MAX_PARTIAL``: the bounds of ``s->min_partial``.
MIN_PARTIAL = 5
MAX_PARTIAL = 10


def min_partial(size: int) -> int:
    """``s->min_partial`` (``set_min_partial(s, ilog2(s->size) / 2)``, clamped to
    ``[MIN_PARTIAL, MAX_PARTIAL]``): empty slabs the node list keeps before frees discard."""
    return min(MAX_PARTIAL, max(MIN_PARTIAL, (size.bit_length() - 1) // 2))


def cpu_partial_limit(size: int, nobj: int, page_size: int, kernel: tuple[int, int]) -> int:
    """The limit of a per-CPU partial list (``set_cpu_partial()``): free objects before 5.16
    (``s->cpu_partial``: 2, 6, 13, 30 by object size), slabs from 5.16 (``cpu_partial_slabs``
    = DIV_ROUND_UP(2 x objects, objects per slab) of 6, 24, 52, 120 objects)."""
    if kernel < (5, 16):
        if size >= page_size:
            return 2
        if size >= 1024:
            return 6
        if size >= 256:
            return 13
        return 30
    if size >= page_size:
        nr = 6
    elif size >= 1024:
        nr = 24
    elif size >= 256:
        nr = 52
    else:
        nr = 120
    return -(-2 * nr // nobj)


def unfreeze_partials(cache: KmemCache, cpu: int, to_free: list[Slab]) -> None:
    """``unfreeze_partials()``: every slab of the CPU's partial list, head first, to the node
    list's tail, or, when it is empty and the node list holds ``min_partial`` slabs already,
    to ``to_free`` (``discard_slab()``, the pages freed by the caller)."""
    node = cache.partial
    floor = cache.min_partial
    plist = cache.cpu_partial[cpu]
    for slab in reversed(plist):
        slab.frozen = False
        if not slab.inuse and len(node) >= floor:
            to_free.append(slab)
        else:
            node[slab] = None
            slab.on_partial = True
    plist.clear()


def put_cpu_partial(
    cache: KmemCache, cpu: int, slab: Slab, to_free: list[Slab] | None
) -> None:
    """``put_cpu_partial()``: ``slab`` (frozen by the caller) onto the head of the CPU's
    partial list. A free drains (``to_free`` given): a list at its limit goes to the node list
    first; ``get_partial_node()`` does not (None)."""
    plist = cache.cpu_partial[cpu]
    limit = cache.cpu_partial_limit
    if cache.cpu_partial_objects:
        pobjects = plist[-1].pobjects if plist else 0
        if to_free is not None and pobjects > limit:
            unfreeze_partials(cache, cpu, to_free)
            pobjects = 0
        slab.pobjects = pobjects + slab.nobj - slab.inuse
    elif to_free is not None and len(plist) >= limit:
        unfreeze_partials(cache, cpu, to_free)
    plist.append(slab)


def get_partial(cache: KmemCache, cpu: int) -> Slab | None:
    """``___slab_alloc()`` once the CPU's cpu slab has no free object: that slab is unfrozen
    (a full slab is on no list), and the next comes from the head of the CPU's partial list,
    else from :func:`get_partial_node`; None when both are empty (then a new slab)."""
    cpu_slab = cache.cpu_slab
    old = cpu_slab[cpu]
    if old is not None:
        old.frozen = False
        cpu_slab[cpu] = None
    plist = cache.cpu_partial[cpu]
    if plist:
        slab = plist.pop()
    elif cache.partial:
        slab = get_partial_node(cache, cpu)
    else:
        return None
    cpu_slab[cpu] = slab
    return slab


def get_partial_node(cache: KmemCache, cpu: int) -> Slab:
    """``get_partial_node()``: the node list's head becomes the cpu slab; with per-CPU
    partial lists, more slabs from the head go onto the CPU's list (``put_cpu_partial()``
    without drain) until it holds more than half its limit (free objects before 5.16,
    slabs from 5.16)."""
    node = cache.partial
    slab = _freeze_node_head(node)
    limit = cache.cpu_partial_limit
    if not limit:
        return slab
    by_objects = cache.cpu_partial_objects
    held = len(slab.freelist) if by_objects else 0
    while held <= limit // 2 and node:
        more = _freeze_node_head(node)
        held += len(more.freelist) if by_objects else 1
        put_cpu_partial(cache, cpu, more, None)
    return slab


def _freeze_node_head(node: OrderedDict[Slab, None]) -> Slab:
    """The node list's head, taken off it and frozen (``acquire_slab()``)."""
    slab, _ = node.popitem(last=False)
    slab.on_partial = False
    slab.frozen = True
    return slab


def slab_free_list_step(cache: KmemCache, slab: Slab, cpu: int, to_free: list[Slab]) -> bool:
    """``__slab_free()``'s list step, after a free gave objects back to ``slab`` (its
    ``inuse`` already lowered) on ``cpu``. Returns True when ``slab`` itself went to
    ``to_free``: discarded, so its freelist need not be built.

    A frozen slab (a cpu slab or on a per-CPU partial list) stays where it is. A slab that was
    full (on no list) is frozen onto ``cpu``'s partial list, or, without per-CPU partial
    lists, goes to the node list's tail (discarded at once if the free emptied it and the node
    list is at ``min_partial``). A slab on the node list that the free emptied is discarded
    when the node list holds ``min_partial`` slabs or more (itself included).
    """
    if slab.frozen:
        return False
    node = cache.partial
    if not slab.on_partial:
        if cache.cpu_partial_limit:
            slab.frozen = True
            put_cpu_partial(cache, cpu, slab, to_free)
            return False
        if not slab.inuse and len(node) >= cache.min_partial:
            to_free.append(slab)
            return True
        node[slab] = None
        slab.on_partial = True
        return False
    if not slab.inuse and len(node) >= cache.min_partial:
        del node[slab]
        slab.on_partial = False
        to_free.append(slab)
        return True
    return False


def flush_cpu_slab(cache: KmemCache, cpu: int, to_free: list[Slab]) -> None:
    """``__flush_cpu_slab()`` (``slub_cpu_dead()``, a CPU going offline): the cpu slab is
    deactivated and the per-CPU partial list unfrozen (:func:`unfreeze_partials`).

    ``deactivate_slab()``: an empty slab is discarded when the node list holds ``min_partial``
    slabs, one with free objects goes to the node list's head, a full one to no list."""
    slab = cache.cpu_slab[cpu]
    if slab is not None:
        cache.cpu_slab[cpu] = None
        slab.frozen = False
        node = cache.partial
        if not slab.inuse and len(node) >= cache.min_partial:
            to_free.append(slab)
        elif slab.freelist:
            node[slab] = None
            node.move_to_end(slab, last=False)
            slab.on_partial = True
    unfreeze_partials(cache, cpu, to_free)
