"""Checks of the hints a slab keeps about its own freelist (not model state: two paths that
leave the same freelist may leave different hints, but each hint must be true)."""

from __future__ import annotations

from itertools import pairwise

from rcukit.mm.slab import Slab


def stretches_hold(slab: Slab) -> bool:
    """Whether ``slab.stretched`` tells the truth: if set, the freelist cut at the live
    ``slab.seams`` (ascending; those at or above its length are stale) is stretches that each
    pop as consecutive ascending indices, as ``kmalloc_run`` takes them without looking."""
    if not slab.stretched:
        return True
    fl = slab.freelist
    live = [c for c in slab.seams if c < len(fl)]
    if live != sorted(set(live)) or slab.seams[: len(live)] != live:
        return False
    cuts = [0, *live, len(fl)]
    return all(
        fl[i] == fl[i + 1] + 1 for lo, hi in pairwise(cuts) for i in range(lo, hi - 1)
    )
