"""Fidelity of the GFP vocabulary (rcukit/mm/gfp.py) to the 5.8-5.10 kernel.

Sources read (repository ``Rtoax/linux-5.10.13``, upstream 5.10.13 with added comments):
``include/linux/gfp.h`` (the bit values, identical in 5.8: kernel.md 3.1), ``mm/internal.h``
(the ``ALLOC_*`` flags) and ``mm/page_alloc.c`` (``gfp_to_alloc_flags()``). The RFC's
``__GFP_FAST_TRY`` takes 0x800000 and moves ``__GFP_NOLOCKDEP`` up one bit (kernel.md 2.1).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rcukit.mm.gfp import (
    GFP,
    GFP_ATOMIC,
    GFP_BITS_MASK,
    GFP_HIGHUSER_MOVABLE,
    GFP_KERNEL,
    GFP_NOFS,
    GFP_NOIO,
    GFP_NOWAIT,
    GFP_TRANSHUGE,
    GFP_TRANSHUGE_LIGHT,
    GFP_USER,
    MIGRATE_MOVABLE,
    MIGRATE_RECLAIMABLE,
    MIGRATE_UNMOVABLE,
    AllocFlags,
    gfp_migratetype,
    gfp_to_alloc_flags,
    gfpflags_allow_blocking,
)

#: ``___GFP_*`` of 5.8-5.10 ``include/linux/gfp.h`` (CONFIG_LOCKDEP puts NOLOCKDEP at
#: 0x800000; the RFC gives that bit to FAST_TRY and NOLOCKDEP the next).
KERNEL_5_10_BITS = {
    "DMA": 0x01,
    "HIGHMEM": 0x02,
    "DMA32": 0x04,
    "MOVABLE": 0x08,
    "RECLAIMABLE": 0x10,
    "HIGH": 0x20,
    "IO": 0x40,
    "FS": 0x80,
    "ZERO": 0x100,
    "ATOMIC_BIT": 0x200,
    "DIRECT_RECLAIM": 0x400,
    "KSWAPD_RECLAIM": 0x800,
    "WRITE": 0x1000,
    "NOWARN": 0x2000,
    "RETRY_MAYFAIL": 0x4000,
    "NOFAIL": 0x8000,
    "NORETRY": 0x10000,
    "MEMALLOC": 0x20000,
    "COMP": 0x40000,
    "NOMEMALLOC": 0x80000,
    "HARDWALL": 0x100000,
    "THISNODE": 0x200000,
    "ACCOUNT": 0x400000,
}

_masks = st.integers(0, int(GFP_BITS_MASK)).filter(
    lambda m: m & 0x18 != 0x18  # both mobility bits: the kernel VM_WARN_ONs
)


def test_gfp_bits_are_5_10s_plus_the_rfcs() -> None:
    """``___GFP_DMA`` 0x01 .. ``___GFP_ACCOUNT`` 0x400000 (5.8-5.10 ``include/linux/gfp.h``;
    ``___GFP_ATOMIC`` 0x200 exists until v6.3), ``__GFP_BITS_SHIFT`` ``23 +
    IS_ENABLED(CONFIG_LOCKDEP)``; the RFC's patch adds ``___GFP_FAST_TRY`` 0x800000 and moves
    ``___GFP_NOLOCKDEP`` to 0x1000000, one more bit in the mask."""
    for name, value in KERNEL_5_10_BITS.items():
        assert int(GFP[name]) == value, name
    assert int(GFP.FAST_TRY) == 0x800000
    assert int(GFP.NOLOCKDEP) == 0x1000000
    assert int(GFP_BITS_MASK) == (1 << (23 + 1 + 1)) - 1


def test_gfp_composites_are_5_10s() -> None:
    """The "useful GFP flag combinations" of 5.8-5.10 ``include/linux/gfp.h``: GFP_ATOMIC =
    HIGH|ATOMIC|KSWAPD_RECLAIM (0xa20), GFP_KERNEL = RECLAIM|IO|FS (0xcc0), GFP_NOWAIT =
    KSWAPD_RECLAIM (0x800), GFP_NOIO = RECLAIM, GFP_NOFS = RECLAIM|IO, GFP_USER = GFP_KERNEL |
    HARDWALL, GFP_HIGHUSER_MOVABLE = GFP_USER|HIGHMEM|MOVABLE, GFP_TRANSHUGE_LIGHT =
    (GFP_HIGHUSER_MOVABLE|COMP|NOMEMALLOC|NOWARN) & ~RECLAIM, GFP_TRANSHUGE = that |
    DIRECT_RECLAIM."""
    b = KERNEL_5_10_BITS
    reclaim = b["DIRECT_RECLAIM"] | b["KSWAPD_RECLAIM"]
    assert int(GFP.RECLAIM) == reclaim
    assert int(GFP_ATOMIC) == b["HIGH"] | b["ATOMIC_BIT"] | b["KSWAPD_RECLAIM"] == 0xA20
    assert int(GFP_KERNEL) == reclaim | b["IO"] | b["FS"] == 0xCC0
    assert int(GFP_NOWAIT) == b["KSWAPD_RECLAIM"] == 0x800
    assert int(GFP_NOIO) == reclaim
    assert int(GFP_NOFS) == reclaim | b["IO"]
    assert int(GFP_USER) == int(GFP_KERNEL) | b["HARDWALL"]
    assert int(GFP_HIGHUSER_MOVABLE) == int(GFP_USER) | b["HIGHMEM"] | b["MOVABLE"]
    light = (int(GFP_HIGHUSER_MOVABLE) | b["COMP"] | b["NOMEMALLOC"] | b["NOWARN"]) & ~reclaim
    assert int(GFP_TRANSHUGE_LIGHT) == light
    assert int(GFP_TRANSHUGE) == light | b["DIRECT_RECLAIM"]


@given(_masks)
def test_gfp_migratetype_and_blocking_are_gfp_hs(mask: int) -> None:
    """``gfp_migratetype()`` (5.8-5.10 ``include/linux/gfp.h``, mobility grouping on) is
    ``(gfp & (__GFP_RECLAIMABLE|__GFP_MOVABLE)) >> 3``: 0 UNMOVABLE, 1 MOVABLE, 2 RECLAIMABLE;
    ``gfpflags_allow_blocking()`` is ``!!(gfp & __GFP_DIRECT_RECLAIM)``."""
    assert gfp_migratetype(mask) == (mask & 0x18) >> 3
    assert gfpflags_allow_blocking(mask) == bool(mask & 0x400)
    assert (MIGRATE_UNMOVABLE, MIGRATE_MOVABLE, MIGRATE_RECLAIMABLE) == (0, 1, 2)


def test_alloc_flags_are_mm_internal_hs() -> None:
    """``mm/internal.h`` (5.8-5.10): ALLOC_WMARK_MIN/LOW/HIGH are the watermark indices
    0/1/2, ALLOC_NO_WATERMARKS 0x04, ALLOC_WMARK_MASK 0x03, ALLOC_OOM 0x08 (CONFIG_MMU),
    ALLOC_HARDER 0x10, ALLOC_HIGH 0x20, ALLOC_CPUSET 0x40, ALLOC_CMA 0x80, ALLOC_NOFRAGMENT
    0x100 (CONFIG_ZONE_DMA32), ALLOC_KSWAPD 0x800; ``gfp_to_alloc_flags()`` BUILD_BUG_ONs
    that ``__GFP_HIGH == ALLOC_HIGH`` and ``__GFP_KSWAPD_RECLAIM == ALLOC_KSWAPD``."""
    expected = {
        "WMARK_MIN": 0,
        "WMARK_LOW": 1,
        "WMARK_HIGH": 2,
        "WMARK_MASK": 3,
        "NO_WATERMARKS": 0x04,
        "OOM": 0x08,
        "HARDER": 0x10,
        "HIGH": 0x20,
        "CPUSET": 0x40,
        "CMA": 0x80,
        "NOFRAGMENT": 0x100,
        "KSWAPD": 0x800,
    }
    for name, value in expected.items():
        assert int(AllocFlags[name]) == value, name
    assert int(AllocFlags.HIGH) == int(GFP.HIGH)
    assert int(AllocFlags.KSWAPD) == int(GFP.KSWAPD_RECLAIM)


@given(mask=_masks, rt_task=st.booleans())
def test_gfp_to_alloc_flags_is_5_10s(mask: int, rt_task: bool) -> None:
    """``gfp_to_alloc_flags()`` (5.8-5.10 ``mm/page_alloc.c``, CONFIG_CMA off): start from
    ``ALLOC_WMARK_MIN | ALLOC_CPUSET``, copy ``__GFP_HIGH | __GFP_KSWAPD_RECLAIM`` straight
    across; with ``__GFP_ATOMIC`` add ALLOC_HARDER unless ``__GFP_NOMEMALLOC`` and drop
    ALLOC_CPUSET; else an RT task outside interrupt context gets ALLOC_HARDER."""
    flags = int(AllocFlags.WMARK_MIN) | int(AllocFlags.CPUSET)
    flags |= mask & (0x20 | 0x800)
    if mask & 0x200:
        if not mask & 0x80000:
            flags |= int(AllocFlags.HARDER)
        flags &= ~int(AllocFlags.CPUSET)
    elif rt_task:
        flags |= int(AllocFlags.HARDER)
    assert int(gfp_to_alloc_flags(mask, rt_task=rt_task)) == flags
