"""GFP flags as the 5.8-era kernel defines them, plus the RFC's ``__GFP_FAST_TRY``.

rcukit replays the August 2020 debate about allocating a page while holding kvfree_rcu()'s
``raw_spinlock_t`` (kernel.md §2.1, ``reference/rfc-gfp-fast-try.txt``). The competing proposals are
all expressed as GFP masks (``GFP_NOWAIT|__GFP_NOWARN``, ``0``, ``__GFP_FAST_TRY``, the v5.13 refill
mask ``0x92cc0``), so the simulation needs the exact bit values, the exact trace spelling and the
page allocator's translation of GFP bits into watermark/alloc flags.

Bit values follow kernel.md §3.1 (``include/linux/gfp.h`` of 5.8-5.10) with the RFC applied:
``___GFP_FAST_TRY = 0x800000`` and ``___GFP_NOLOCKDEP`` moved to ``0x1000000``, i.e.
``__GFP_BITS_SHIFT = 24 + CONFIG_LOCKDEP`` with lockdep on. ``___GFP_ATOMIC`` (0x200) is modelled
because 5.8 still has it (it was removed in v6.3).

Python mangles ``__GFP_*`` names inside classes, so enum members drop the prefix (``GFP.NOWARN``);
the exact kernel spellings live in :data:`KERNEL_NAMES`, and ``GFP_*`` masks are module constants.
"""

from __future__ import annotations

import enum
import re
import types
from collections.abc import Mapping
from typing import Final

from rcukit.errors import GfpError

__all__ = [
    "GFP",
    "GFPFLAG_NAMES",
    "GFP_ATOMIC",
    "GFP_BITS_MASK",
    "GFP_BITS_SHIFT",
    "GFP_COMPACT_NAMES",
    "GFP_DMA",
    "GFP_DMA32",
    "GFP_HIGHUSER",
    "GFP_HIGHUSER_MOVABLE",
    "GFP_KERNEL",
    "GFP_KERNEL_ACCOUNT",
    "GFP_MOVABLE_MASK",
    "GFP_MOVABLE_SHIFT",
    "GFP_NOFS",
    "GFP_NOIO",
    "GFP_NONE",
    "GFP_NOWAIT",
    "GFP_TRANSHUGE",
    "GFP_TRANSHUGE_LIGHT",
    "GFP_USER",
    "KERNEL_NAMES",
    "MIGRATETYPE_NAMES",
    "MIGRATE_HIGHATOMIC",
    "MIGRATE_MOVABLE",
    "MIGRATE_PCPTYPES",
    "MIGRATE_RECLAIMABLE",
    "MIGRATE_UNMOVABLE",
    "AllocFlags",
    "format_gfp",
    "format_gfp_short",
    "gfp_migratetype",
    "gfp_to_alloc_flags",
    "gfp_wakes_kswapd",
    "gfpflags_allow_blocking",
    "gfpflags_allow_spinning",
    "kernel_name",
    "parse_gfp",
    "validate_gfp",
]


class GFP(enum.IntFlag):
    """One member per ``___GFP_*`` bit (kernel.md §3.1), named without the ``__GFP_`` prefix.

    ``ATOMIC_BIT`` is ``__GFP_ATOMIC``; the suffix keeps it from being mistaken for the
    ``GFP_ATOMIC`` mask (0xa20). ``RECLAIM`` is an alias for the two-bit ``__GFP_RECLAIM`` mask.
    Python's IntFlag keeps undefined bits (boundary KEEP), so ``GFP(x)`` never rejects anything:
    use :func:`validate_gfp` at API boundaries.
    """

    DMA = 0x01
    HIGHMEM = 0x02
    DMA32 = 0x04
    MOVABLE = 0x08
    RECLAIMABLE = 0x10
    HIGH = 0x20
    IO = 0x40
    FS = 0x80
    ZERO = 0x100
    ATOMIC_BIT = 0x200
    DIRECT_RECLAIM = 0x400
    KSWAPD_RECLAIM = 0x800
    WRITE = 0x1000
    NOWARN = 0x2000
    RETRY_MAYFAIL = 0x4000
    NOFAIL = 0x8000
    NORETRY = 0x10000
    MEMALLOC = 0x20000
    COMP = 0x40000
    NOMEMALLOC = 0x80000
    HARDWALL = 0x100000
    THISNODE = 0x200000
    ACCOUNT = 0x400000
    # The RFC takes 0x800000 and pushes NOLOCKDEP up one bit (rfc-gfp-fast-try.txt, gfp.h hunk).
    FAST_TRY = 0x800000
    NOLOCKDEP = 0x1000000
    # Alias: __GFP_RECLAIM = __GFP_DIRECT_RECLAIM | __GFP_KSWAPD_RECLAIM.
    RECLAIM = 0xC00


#: ``__GFP_BITS_SHIFT`` with the RFC and ``CONFIG_LOCKDEP=y`` (24 + 1).
GFP_BITS_SHIFT: Final = 25
#: Every defined bit; anything outside it is rejected by :func:`validate_gfp`.
GFP_BITS_MASK: Final = GFP((1 << GFP_BITS_SHIFT) - 1)

GFP_NONE: Final = GFP(0)

_RECLAIM: Final = GFP.DIRECT_RECLAIM | GFP.KSWAPD_RECLAIM

# Composite masks, built from the 5.8 definitions rather than typed in (kernel.md §3.1).
GFP_ATOMIC: Final = GFP.HIGH | GFP.ATOMIC_BIT | GFP.KSWAPD_RECLAIM
GFP_KERNEL: Final = _RECLAIM | GFP.IO | GFP.FS
GFP_KERNEL_ACCOUNT: Final = GFP_KERNEL | GFP.ACCOUNT
GFP_NOWAIT: Final = GFP.KSWAPD_RECLAIM
GFP_NOIO: Final = _RECLAIM
GFP_NOFS: Final = _RECLAIM | GFP.IO
GFP_USER: Final = _RECLAIM | GFP.IO | GFP.FS | GFP.HARDWALL
GFP_DMA: Final = GFP.DMA
GFP_DMA32: Final = GFP.DMA32
GFP_HIGHUSER: Final = GFP_USER | GFP.HIGHMEM
GFP_HIGHUSER_MOVABLE: Final = GFP_HIGHUSER | GFP.MOVABLE
GFP_TRANSHUGE_LIGHT: Final = GFP(
    int(GFP_HIGHUSER_MOVABLE | GFP.COMP | GFP.NOMEMALLOC | GFP.NOWARN) & ~int(_RECLAIM)
)
GFP_TRANSHUGE: Final = GFP_TRANSHUGE_LIGHT | GFP.DIRECT_RECLAIM

#: ``GFP_MOVABLE_MASK`` and ``GFP_MOVABLE_SHIFT`` feed :func:`gfp_migratetype` (kernel.md §3.1).
GFP_MOVABLE_MASK: Final = GFP.RECLAIMABLE | GFP.MOVABLE
GFP_MOVABLE_SHIFT: Final = 3

#: Bit member -> its ``__GFP_*`` spelling, in bit order: the enum's single-bit members (an
#: ``IntFlag`` iterates those only, so the ``RECLAIM`` alias is not among them).
_BIT_NAMES: Final[tuple[tuple[str, GFP], ...]] = tuple(
    ("__GFP_" + bit.name.removesuffix("_BIT"), bit) for bit in GFP if bit.name is not None
)

#: ``__def_gfpflag_names`` of ``include/trace/events/mmflags.h`` in 5.x order (kernel.md §3.2), with
#: ``__GFP_FAST_TRY`` after ``__GFP_ACCOUNT`` as the RFC inserts it. ``__GFP_NOLOCKDEP`` is absent
#: in the kernel too, so it prints as leftover hex. Order matters: the first whole match wins.
GFPFLAG_NAMES: Final[tuple[tuple[str, GFP], ...]] = (
    ("GFP_TRANSHUGE", GFP_TRANSHUGE),
    ("GFP_TRANSHUGE_LIGHT", GFP_TRANSHUGE_LIGHT),
    ("GFP_HIGHUSER_MOVABLE", GFP_HIGHUSER_MOVABLE),
    ("GFP_HIGHUSER", GFP_HIGHUSER),
    ("GFP_USER", GFP_USER),
    ("GFP_KERNEL_ACCOUNT", GFP_KERNEL_ACCOUNT),
    ("GFP_KERNEL", GFP_KERNEL),
    ("GFP_NOFS", GFP_NOFS),
    ("GFP_ATOMIC", GFP_ATOMIC),
    ("GFP_NOIO", GFP_NOIO),
    ("GFP_NOWAIT", GFP_NOWAIT),
    ("GFP_DMA", GFP_DMA),
    ("__GFP_HIGHMEM", GFP.HIGHMEM),
    ("GFP_DMA32", GFP_DMA32),
    ("__GFP_HIGH", GFP.HIGH),
    ("__GFP_ATOMIC", GFP.ATOMIC_BIT),
    ("__GFP_IO", GFP.IO),
    ("__GFP_FS", GFP.FS),
    ("__GFP_NOWARN", GFP.NOWARN),
    ("__GFP_RETRY_MAYFAIL", GFP.RETRY_MAYFAIL),
    ("__GFP_NOFAIL", GFP.NOFAIL),
    ("__GFP_NORETRY", GFP.NORETRY),
    ("__GFP_COMP", GFP.COMP),
    ("__GFP_ZERO", GFP.ZERO),
    ("__GFP_NOMEMALLOC", GFP.NOMEMALLOC),
    ("__GFP_MEMALLOC", GFP.MEMALLOC),
    ("__GFP_HARDWALL", GFP.HARDWALL),
    ("__GFP_THISNODE", GFP.THISNODE),
    ("__GFP_RECLAIMABLE", GFP.RECLAIMABLE),
    ("__GFP_MOVABLE", GFP.MOVABLE),
    ("__GFP_ACCOUNT", GFP.ACCOUNT),
    ("__GFP_FAST_TRY", GFP.FAST_TRY),
    ("__GFP_WRITE", GFP.WRITE),
    ("__GFP_RECLAIM", GFP.RECLAIM),
    ("__GFP_DIRECT_RECLAIM", GFP.DIRECT_RECLAIM),
    ("__GFP_KSWAPD_RECLAIM", GFP.KSWAPD_RECLAIM),
)

#: perf kmem's ``gfp_compact_table[]`` (kernel.md §3.2) plus the RFC's ``FT``. "NF" and "R" each
#: appear twice in the kernel's table; :func:`parse_gfp` refuses them for that reason.
GFP_COMPACT_NAMES: Final[tuple[tuple[str, str], ...]] = (
    ("GFP_TRANSHUGE", "THP"),
    ("GFP_TRANSHUGE_LIGHT", "THL"),
    ("GFP_HIGHUSER_MOVABLE", "HUM"),
    ("GFP_HIGHUSER", "HU"),
    ("GFP_USER", "U"),
    ("GFP_KERNEL_ACCOUNT", "KAC"),
    ("GFP_KERNEL", "K"),
    ("GFP_NOFS", "NF"),
    ("GFP_ATOMIC", "A"),
    ("GFP_NOIO", "NI"),
    ("GFP_NOWAIT", "NW"),
    ("GFP_DMA", "D"),
    ("__GFP_HIGHMEM", "HM"),
    ("GFP_DMA32", "D32"),
    ("__GFP_HIGH", "H"),
    ("__GFP_ATOMIC", "_A"),
    ("__GFP_IO", "I"),
    ("__GFP_FS", "F"),
    ("__GFP_NOWARN", "NWR"),
    ("__GFP_RETRY_MAYFAIL", "R"),
    ("__GFP_NOFAIL", "NF"),
    ("__GFP_NORETRY", "NR"),
    ("__GFP_COMP", "C"),
    ("__GFP_ZERO", "Z"),
    ("__GFP_NOMEMALLOC", "NMA"),
    ("__GFP_MEMALLOC", "MA"),
    ("__GFP_HARDWALL", "HW"),
    ("__GFP_THISNODE", "TN"),
    ("__GFP_RECLAIMABLE", "RC"),
    ("__GFP_MOVABLE", "M"),
    ("__GFP_ACCOUNT", "AC"),
    ("__GFP_FAST_TRY", "FT"),
    ("__GFP_WRITE", "WR"),
    ("__GFP_RECLAIM", "R"),
    ("__GFP_DIRECT_RECLAIM", "DR"),
    ("__GFP_KSWAPD_RECLAIM", "KR"),
)

#: Exact kernel spelling -> value: every ``__GFP_*`` bit, ``__GFP_RECLAIM`` and every ``GFP_*``
#: mask of the trace table. Read-only, so no module-level mutable state leaks out.
KERNEL_NAMES: Final[Mapping[str, GFP]] = types.MappingProxyType(
    {**dict(_BIT_NAMES), **dict(GFPFLAG_NAMES)}
)

_BIT_TO_NAME: Final[Mapping[int, str]] = types.MappingProxyType({int(v): n for n, v in _BIT_NAMES})
_LONG_TO_SHORT: Final[Mapping[str, str]] = types.MappingProxyType(dict(GFP_COMPACT_NAMES))


def _short_to_long() -> Mapping[str, tuple[str, ...]]:
    table: dict[str, tuple[str, ...]] = {}
    for long_name, short in GFP_COMPACT_NAMES:
        table[short] = (*table.get(short, ()), long_name)
    return types.MappingProxyType(table)


_SHORT_TO_LONG: Final = _short_to_long()

_HEX_RE: Final = re.compile(r"0[xX][0-9a-fA-F]+")
_DEC_RE: Final = re.compile(r"[0-9]+")


def _as_nonnegative(flags: int, what: str) -> int:
    # gfp_t is an unsigned int: a float would be truncated silently (2.5 -> 2) and a string
    # would fail inside int() with a message that names neither the mask nor the caller.
    # IntFlag members (GFP.NOWARN) and plain ints are masks; bool is not.
    if isinstance(flags, bool) or not isinstance(flags, int):
        raise GfpError(
            f"{what}: GFP flags must be an int mask (e.g. GFP_KERNEL | GFP.NOWARN), got "
            f"{type(flags).__name__} {flags!r}; parse_gfp() reads kernel names"
        )
    value = int(flags)
    if value < 0:
        raise GfpError(f"{what}: GFP flags must be a non-negative int, got {value}")
    return value


def format_gfp(flags: int) -> str:
    """Render ``flags`` exactly as ``show_gfp_flags()`` does in a 5.x trace (kernel.md §3.2).

    Walks :data:`GFPFLAG_NAMES` in order, emitting each entry whose whole mask is still present
    and clearing those bits (``trace_print_flags_seq``); remaining bits print as ``0x%x``; 0 prints
    ``none``. Matching the kernel text lets simulated traces be diffed against real ones.
    """
    value = _as_nonnegative(flags, "format_gfp")
    if value == 0:
        return "none"
    parts: list[str] = []
    for name, mask in GFPFLAG_NAMES:
        if not value:
            break
        m = int(mask)
        if value & m == m:
            parts.append(name)
            value &= ~m
    if value:
        parts.append(f"0x{value:x}")
    return "|".join(parts)


def format_gfp_short(flags: int) -> str:
    """perf kmem's compact rendering: :func:`format_gfp` with each name mapped to its short form.

    Real perf silently drops names it has no short form for; here hex leftovers (and ``none``)
    pass through so no bit disappears from the output. The result is for humans: "NF" and "R"
    are ambiguous, so it does not always parse back.
    """
    long_form = format_gfp(flags)
    if long_form == "none":
        return long_form
    return "|".join(_LONG_TO_SHORT.get(tok, tok) for tok in long_form.split("|"))


def _allowed_names_hint() -> str:
    shorts = sorted(s for s, longs in _SHORT_TO_LONG.items() if len(longs) == 1)
    return (
        "allowed: kernel names "
        + ", ".join(KERNEL_NAMES)
        + "; perf short names "
        + ", ".join(shorts)
        + "; 'none'; hex (0x...) or decimal numbers"
    )


def _parse_token(token: str, text: str) -> int:
    if token in KERNEL_NAMES:
        return int(KERNEL_NAMES[token])
    longs = _SHORT_TO_LONG.get(token)
    if longs is not None:
        if len(longs) > 1:
            raise GfpError(
                f"ambiguous perf short name {token!r} in {text!r}: it could mean "
                + " or ".join(longs)
                + "; use the long name"
            )
        return int(KERNEL_NAMES[longs[0]])
    if token.lower() == "none":
        return 0
    if _HEX_RE.fullmatch(token):
        return int(token[2:], 16)
    if _DEC_RE.fullmatch(token):
        return int(token)
    raise GfpError(f"unknown GFP flag {token!r} in {text!r}; {_allowed_names_hint()}")


def parse_gfp(text: str) -> GFP:
    """Inverse of :func:`format_gfp` (and of hand-written masks in configs and CLI options).

    Accepts ``|``-joined long kernel names, unambiguous perf short names, hex/decimal numbers and
    ``none``. It does not check for contradictions; pass the result to :func:`validate_gfp`.
    """
    if not text.strip():
        raise GfpError(f"empty GFP string; {_allowed_names_hint()}")
    value = 0
    for raw in text.split("|"):
        token = raw.strip()
        if not token:
            raise GfpError(f"empty flag between '|' separators in {text!r}")
        value |= _parse_token(token, text)
    return GFP(value)


def kernel_name(flag: int) -> str:
    """The kernel's own name for ``flag``, for messages that should read like kernel source.

    A single bit gets its ``__GFP_*`` name (``GFP.DMA`` -> ``__GFP_DMA``); a multi-bit value gets
    the name ``show_gfp_flags`` would print for it alone (0xc00 -> ``GFP_NOIO``, as in traces).
    Values without one name (including 0) raise :class:`GfpError`; use :func:`format_gfp` there.
    """
    value = _as_nonnegative(flag, "kernel_name")
    name = _BIT_TO_NAME.get(value)
    if name is not None:
        return name
    rendered = format_gfp(value)
    if value and "|" not in rendered and rendered in KERNEL_NAMES:
        return rendered
    raise GfpError(
        f"0x{value:x} ({rendered}) has no single kernel name; "
        "kernel_name() takes one __GFP_* bit or one GFP_* mask, use format_gfp() for combinations"
    )


# (a, b, why): both set at once is a contradiction.
_CONFLICTS: Final[tuple[tuple[GFP, GFP, str], ...]] = (
    (
        GFP.FAST_TRY,
        GFP.DIRECT_RECLAIM,
        "fast-try never leaves the pcp lists, so it cannot reclaim "
        "(Hocko: no NO_LOCK|RECLAIM combinations)",
    ),
    (GFP.NOFAIL, GFP.NORETRY, "an allocation cannot both never fail and give up early"),
    (GFP.MEMALLOC, GFP.NOMEMALLOC, "reserves cannot be both granted and forbidden"),
    (GFP.DMA, GFP.DMA32, "a request targets one zone, ZONE_DMA or ZONE_DMA32"),
    (
        GFP.MOVABLE,
        GFP.RECLAIMABLE,
        "migratetype 3 is MIGRATE_HIGHATOMIC, not a per-CPU list type",
    ),
)


def validate_gfp(flags: int) -> GFP:
    """Reject masks the simulated allocator could not give a meaning to.

    Unknown bits (outside :data:`GFP_BITS_MASK`) and contradictory pairs raise :class:`GfpError`
    naming the culprits. ``__GFP_NOFAIL`` without ``__GFP_DIRECT_RECLAIM`` is accepted on purpose:
    the 5.x kernel merely warns once in the slow path (no current user is non-blocking) and then
    behaves like a non-blocking request, and the simulator should reproduce that, not refuse it.
    """
    value = _as_nonnegative(flags, "validate_gfp")
    unknown = value & ~int(GFP_BITS_MASK)
    if unknown:
        raise GfpError(
            f"unknown GFP bits 0x{unknown:x} in 0x{value:x}; defined bits are "
            f"0x{int(GFP_BITS_MASK):x} ({', '.join(n for n, _ in _BIT_NAMES)})"
        )
    problems = [
        f"{_BIT_TO_NAME[int(a)]} with {_BIT_TO_NAME[int(b)]}: {why}"
        for a, b, why in _CONFLICTS
        if value & a and value & b
    ]
    if problems:
        raise GfpError(
            f"contradictory GFP flags in 0x{value:x} ({format_gfp(value)}): " + "; ".join(problems)
        )
    return GFP(value)


MIGRATE_UNMOVABLE: Final = 0
MIGRATE_MOVABLE: Final = 1
MIGRATE_RECLAIMABLE: Final = 2
#: Number of migratetypes with their own per-CPU page list (kernel.md §3.1, §3.3).
MIGRATE_PCPTYPES: Final = 3
#: Shares the value of MIGRATE_PCPTYPES, which is why it has no pcp list.
MIGRATE_HIGHATOMIC: Final = MIGRATE_PCPTYPES
#: Indexed by migratetype; spelled as in /proc/pagetypeinfo [inferred: kernel's migratetype_names].
MIGRATETYPE_NAMES: Final[tuple[str, ...]] = ("Unmovable", "Movable", "Reclaimable", "HighAtomic")


def gfp_migratetype(flags: int) -> int:
    """Pick the pcp/buddy list a request draws from: ``(flags & GFP_MOVABLE_MASK) >> 3``.

    The kernel ``VM_BUG_ON``s when both mobility bits are set (the result would alias
    MIGRATE_HIGHATOMIC); this raises :class:`GfpError` instead.
    """
    value = _as_nonnegative(flags, "gfp_migratetype")
    mt = (value & int(GFP_MOVABLE_MASK)) >> GFP_MOVABLE_SHIFT
    if mt >= MIGRATE_PCPTYPES:
        raise GfpError(
            "__GFP_MOVABLE with __GFP_RECLAIMABLE gives migratetype 3 (MIGRATE_HIGHATOMIC); "
            "set at most one of them"
        )
    return mt


def gfpflags_allow_blocking(flags: int) -> bool:
    """Only ``__GFP_DIRECT_RECLAIM`` lets the allocator sleep (reclaim, compaction, OOM)."""
    return bool(int(flags) & GFP.DIRECT_RECLAIM)


def gfpflags_allow_spinning(flags: int) -> bool:
    """``!(gfp & __GFP_RECLAIM)``: the ``alloc_pages_nolock()`` test for trylock-only requests.

    Stronger than "not blocking": even waking kswapd is unsafe from arbitrary context, so
    GFP_NOWAIT and GFP_ATOMIC do *not* pass it (kernel.md §2.4).
    """
    return not int(flags) & int(GFP.RECLAIM)


def gfp_wakes_kswapd(flags: int) -> bool:
    """Whether the slow path's ``wake_all_kswapds()`` runs (``ALLOC_KSWAPD``, kernel.md §3.4).

    This is the RFC's complaint about GFP_NOWAIT: the wake takes a sleeping lock on PREEMPT_RT.
    It ignores the 5.x boosted-watermark wake in ``rmqueue()``, which fires regardless of gfp.
    """
    return bool(int(flags) & GFP.KSWAPD_RECLAIM)


class AllocFlags(enum.IntFlag):
    """The page allocator's internal ``ALLOC_*`` flags (``mm/internal.h``), 5.8 values.

    The low two bits are a watermark *index* (ALLOC_WMARK_MIN/LOW/HIGH = WMARK_MIN/LOW/HIGH =
    0/1/2, extracted with ALLOC_WMARK_MASK), not independent flags. ``HIGH`` and ``KSWAPD`` equal
    ``__GFP_HIGH`` and ``__GFP_KSWAPD_RECLAIM`` on purpose: the kernel copies those GFP bits
    straight across (BUILD_BUG_ON-checked). ``TRYLOCK`` (0x400) is the v6.15
    ``alloc_pages_nolock()`` flag (kernel.md §2.4), a slot unused in 5.8.
    """

    WMARK_MIN = 0  # ALLOC_WMARK_MIN
    WMARK_LOW = 1  # ALLOC_WMARK_LOW
    WMARK_HIGH = 2  # ALLOC_WMARK_HIGH
    WMARK_MASK = 3  # ALLOC_WMARK_MASK (= ALLOC_NO_WATERMARKS - 1)
    NO_WATERMARKS = 0x04  # ALLOC_NO_WATERMARKS
    OOM = 0x08  # ALLOC_OOM (CONFIG_MMU)
    HARDER = 0x10  # ALLOC_HARDER (ALLOC_NON_BLOCK from v6.3)
    HIGH = 0x20  # ALLOC_HIGH (ALLOC_MIN_RESERVE from v6.3)
    CPUSET = 0x40  # ALLOC_CPUSET
    CMA = 0x80  # ALLOC_CMA
    NOFRAGMENT = 0x100  # ALLOC_NOFRAGMENT (CONFIG_ZONE_DMA32; else 0)
    TRYLOCK = 0x400  # ALLOC_TRYLOCK (v6.15)
    KSWAPD = 0x800  # ALLOC_KSWAPD


def gfp_to_alloc_flags(gfp: int, *, rt_task: bool = False, cma: bool = False) -> AllocFlags:
    """Translate a mask as the 5.8 slow path does on entry (``gfp_to_alloc_flags``, kernel.md §3.4).

    Start at the min watermark with cpuset checks, copy ``__GFP_HIGH``/``__GFP_KSWAPD_RECLAIM``,
    then for ``__GFP_ATOMIC`` add HARDER unless ``__GFP_NOMEMALLOC`` and drop CPUSET either way
    (the kernel ignores cpusets for atomic requests rather than fail). ``rt_task`` means "current
    is an RT task outside interrupt context", which also earns HARDER for non-atomic requests.
    ``cma`` models CONFIG_CMA: movable requests may then use CMA pageblocks.
    """
    value = _as_nonnegative(gfp, "gfp_to_alloc_flags")
    alloc = AllocFlags.WMARK_MIN | AllocFlags.CPUSET
    alloc |= AllocFlags(value & int(GFP.HIGH | GFP.KSWAPD_RECLAIM))
    if value & GFP.ATOMIC_BIT:
        if not value & GFP.NOMEMALLOC:
            alloc |= AllocFlags.HARDER
        alloc &= ~AllocFlags.CPUSET
    elif rt_task:
        alloc |= AllocFlags.HARDER
    if cma and (value & int(GFP_MOVABLE_MASK)) >> GFP_MOVABLE_SHIFT == MIGRATE_MOVABLE:
        alloc |= AllocFlags.CMA
    return alloc
