"""GFP flags: values, trace formatting, perf short names, parsing, validation, alloc flags."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rcukit.errors import GfpError
from rcukit.mm import gfp as g
from rcukit.mm.gfp import (
    GFP,
    GFP_ATOMIC,
    GFP_KERNEL,
    GFP_NOWAIT,
    KERNEL_NAMES,
    AllocFlags,
    format_gfp,
    format_gfp_short,
    gfp_migratetype,
    gfp_to_alloc_flags,
    kernel_name,
    parse_gfp,
    validate_gfp,
)

REFILL = GFP_KERNEL | GFP.NORETRY | GFP.NOMEMALLOC | GFP.NOWARN


# --- values (kernel.md 3.1 and the RFC diff) ---


@pytest.mark.parametrize(
    ("member", "value"),
    [
        (GFP.DMA, 0x01),
        (GFP.HIGHMEM, 0x02),
        (GFP.DMA32, 0x04),
        (GFP.MOVABLE, 0x08),
        (GFP.RECLAIMABLE, 0x10),
        (GFP.HIGH, 0x20),
        (GFP.IO, 0x40),
        (GFP.FS, 0x80),
        (GFP.ZERO, 0x100),
        (GFP.ATOMIC_BIT, 0x200),
        (GFP.DIRECT_RECLAIM, 0x400),
        (GFP.KSWAPD_RECLAIM, 0x800),
        (GFP.WRITE, 0x1000),
        (GFP.NOWARN, 0x2000),
        (GFP.RETRY_MAYFAIL, 0x4000),
        (GFP.NOFAIL, 0x8000),
        (GFP.NORETRY, 0x10000),
        (GFP.MEMALLOC, 0x20000),
        (GFP.COMP, 0x40000),
        (GFP.NOMEMALLOC, 0x80000),
        (GFP.HARDWALL, 0x100000),
        (GFP.THISNODE, 0x200000),
        (GFP.ACCOUNT, 0x400000),
        (GFP.FAST_TRY, 0x800000),
        (GFP.NOLOCKDEP, 0x1000000),
        (GFP.RECLAIM, 0xC00),
    ],
)
def test_bit_values(member: GFP, value: int) -> None:
    assert int(member) == value


def test_bits_are_distinct_and_fill_the_mask() -> None:
    bits = [int(m) for m in GFP]
    assert len(bits) == 25 == len(set(bits))
    assert all(b & (b - 1) == 0 for b in bits)
    assert sum(bits) == int(g.GFP_BITS_MASK) == 0x1FFFFFF


@pytest.mark.parametrize(
    ("mask", "value"),
    [
        (g.GFP_NONE, 0),
        (GFP_KERNEL, 0xCC0),
        (GFP_ATOMIC, 0xA20),
        (GFP_NOWAIT, 0x800),
        (g.GFP_NOIO, 0xC00),
        (g.GFP_NOFS, 0xC40),
        (g.GFP_USER, 0x100CC0),
        (g.GFP_KERNEL_ACCOUNT, 0x400CC0),
        (g.GFP_DMA, 0x1),
        (g.GFP_DMA32, 0x4),
        (g.GFP_HIGHUSER, 0x100CC2),
        (g.GFP_HIGHUSER_MOVABLE, 0x100CCA),
        (g.GFP_TRANSHUGE_LIGHT, 0x1C20CA),
        (g.GFP_TRANSHUGE, 0x1C24CA),
        (REFILL, 0x92CC0),
    ],
)
def test_composite_values(mask: GFP, value: int) -> None:
    assert int(mask) == value
    assert isinstance(mask, GFP)


def test_kernel_names_mapping() -> None:
    assert KERNEL_NAMES["__GFP_NOWARN"] == GFP.NOWARN
    assert KERNEL_NAMES["GFP_NOWAIT"] == 0x800
    assert KERNEL_NAMES["__GFP_FAST_TRY"] == 0x800000
    assert KERNEL_NAMES["__GFP_RECLAIM"] == 0xC00
    assert KERNEL_NAMES["__GFP_ATOMIC"] == GFP.ATOMIC_BIT
    assert KERNEL_NAMES["GFP_ATOMIC"] == 0xA20
    assert KERNEL_NAMES["__GFP_NOLOCKDEP"] == 0x1000000
    assert KERNEL_NAMES["GFP_TRANSHUGE"] == g.GFP_TRANSHUGE
    with pytest.raises(TypeError):
        KERNEL_NAMES["X"] = GFP(0)  # type: ignore[index]


def test_kernel_name() -> None:
    assert kernel_name(GFP.DMA) == "__GFP_DMA"
    assert kernel_name(GFP.ATOMIC_BIT) == "__GFP_ATOMIC"
    assert kernel_name(GFP.FAST_TRY) == "__GFP_FAST_TRY"
    assert kernel_name(GFP.KSWAPD_RECLAIM) == "__GFP_KSWAPD_RECLAIM"
    assert kernel_name(GFP_KERNEL) == "GFP_KERNEL"
    assert kernel_name(GFP_ATOMIC) == "GFP_ATOMIC"
    assert kernel_name(g.GFP_TRANSHUGE) == "GFP_TRANSHUGE"
    for bad in (0, REFILL):
        with pytest.raises(GfpError, match="format_gfp"):
            kernel_name(bad)
    for name, value in KERNEL_NAMES.items():
        assert KERNEL_NAMES[kernel_name(value)] == value, name


# --- show_gfp_flags (kernel.md 3.2) ---


@pytest.mark.parametrize(
    ("flags", "text"),
    [
        (0, "none"),
        (0x2800, "GFP_NOWAIT|__GFP_NOWARN"),
        (0x92CC0, "GFP_KERNEL|__GFP_NOWARN|__GFP_NORETRY|__GFP_NOMEMALLOC"),
        (GFP_NOWAIT | GFP.NOWARN | GFP.FAST_TRY, "GFP_NOWAIT|__GFP_NOWARN|__GFP_FAST_TRY"),
        (GFP.FAST_TRY, "__GFP_FAST_TRY"),
        (GFP_ATOMIC, "GFP_ATOMIC"),
        (GFP_ATOMIC | GFP.NOWARN, "GFP_ATOMIC|__GFP_NOWARN"),
        (GFP.DIRECT_RECLAIM, "__GFP_DIRECT_RECLAIM"),
        (GFP.RECLAIM, "GFP_NOIO"),
        (GFP.HIGH | GFP.ATOMIC_BIT, "__GFP_HIGH|__GFP_ATOMIC"),
        (g.GFP_TRANSHUGE, "GFP_TRANSHUGE"),
        (g.GFP_TRANSHUGE_LIGHT, "GFP_TRANSHUGE_LIGHT"),
        (g.GFP_HIGHUSER_MOVABLE | GFP.ZERO, "GFP_HIGHUSER_MOVABLE|__GFP_ZERO"),
        (GFP_KERNEL | GFP.ACCOUNT | GFP.FAST_TRY, "GFP_KERNEL_ACCOUNT|__GFP_FAST_TRY"),
        (GFP.DMA | GFP.WRITE, "GFP_DMA|__GFP_WRITE"),
        # NOLOCKDEP is not in the trace table: leftover hex.
        (GFP_KERNEL | GFP.NOLOCKDEP, "GFP_KERNEL|0x1000000"),
        (GFP.NOLOCKDEP, "0x1000000"),
        (0x2000000 | 0x800, "GFP_NOWAIT|0x2000000"),
    ],
)
def test_format_gfp(flags: int, text: str) -> None:
    assert format_gfp(flags) == text


def test_format_gfp_rejects_negative() -> None:
    with pytest.raises(GfpError, match="non-negative"):
        format_gfp(-1)


@pytest.mark.parametrize(
    ("flags", "text"),
    [
        (0, "none"),
        (0x2800, "NW|NWR"),
        (GFP_NOWAIT | GFP.NOWARN | GFP.FAST_TRY, "NW|NWR|FT"),
        (0x92CC0, "K|NWR|NR|NMA"),
        (GFP_ATOMIC, "A"),
        (GFP.HIGH | GFP.ATOMIC_BIT, "H|_A"),
        (GFP_KERNEL | GFP.NOLOCKDEP, "K|0x1000000"),
        (g.GFP_TRANSHUGE, "THP"),
    ],
)
def test_format_gfp_short(flags: int, text: str) -> None:
    assert format_gfp_short(flags) == text


# --- parsing ---


@pytest.mark.parametrize(
    ("text", "flags"),
    [
        ("none", 0),
        ("0", 0),
        ("GFP_KERNEL", 0xCC0),
        ("GFP_NOWAIT|__GFP_NOWARN", 0x2800),
        ("GFP_NOWAIT | __GFP_NOWARN | __GFP_FAST_TRY", 0x802800),
        ("NW|NWR", 0x2800),
        ("NW|NWR|FT", 0x802800),
        ("K|NWR|NR|NMA", 0x92CC0),
        ("0x92cc0", 0x92CC0),
        ("0X800|NWR", 0x2800),
        ("2048", 0x800),
        ("__GFP_RECLAIM", 0xC00),
        ("_A|H|KR", 0xA20),
        ("GFP_KERNEL|0x1000000", 0x1000CC0),
    ],
)
def test_parse_gfp(text: str, flags: int) -> None:
    parsed = parse_gfp(text)
    assert parsed == flags
    assert isinstance(parsed, GFP)


@pytest.mark.parametrize(
    ("short", "longs"),
    [("NF", ("GFP_NOFS", "__GFP_NOFAIL")), ("R", ("__GFP_RETRY_MAYFAIL", "__GFP_RECLAIM"))],
)
def test_parse_ambiguous_short_names(short: str, longs: tuple[str, str]) -> None:
    with pytest.raises(GfpError) as info:
        parse_gfp(f"K|{short}")
    message = str(info.value)
    assert "ambiguous" in message
    assert repr(short) in message
    for name in longs:
        assert name in message


@pytest.mark.parametrize("text", ["GFP_BOGUS", "K|nowarn", "__GFP_NO_LOCKS", "0xzz", "-1"])
def test_parse_unknown_names(text: str) -> None:
    with pytest.raises(GfpError) as info:
        parse_gfp(text)
    message = str(info.value)
    bad = next(t.strip() for t in text.split("|") if t.strip() != "K")
    assert f"unknown GFP flag {bad!r}" in message
    assert "__GFP_FAST_TRY" in message and "GFP_KERNEL" in message and "NWR" in message


@pytest.mark.parametrize("text", ["", "   ", "K||NWR", "K|"])
def test_parse_empty(text: str) -> None:
    with pytest.raises(GfpError, match="empty"):
        parse_gfp(text)


def test_gfp_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        parse_gfp("nope")


@given(st.integers(min_value=0, max_value=int(g.GFP_BITS_MASK)))
def test_round_trip_all_defined_masks(flags: int) -> None:
    assert parse_gfp(format_gfp(flags)) == flags


@given(st.integers(min_value=0, max_value=int(g.GFP_BITS_MASK)))
def test_round_trip_valid_masks(flags: int) -> None:
    try:
        valid = validate_gfp(flags)
    except GfpError:
        return
    text = format_gfp(valid)
    assert parse_gfp(text) == valid
    assert validate_gfp(parse_gfp(text)) == valid


@given(st.integers(min_value=0, max_value=(1 << 32) - 1))
def test_round_trip_with_unknown_bits(flags: int) -> None:
    assert parse_gfp(format_gfp(flags)) == flags


# --- validation ---


@pytest.mark.parametrize(
    "flags",
    [
        0,
        GFP_KERNEL,
        GFP_ATOMIC,
        GFP_NOWAIT | GFP.NOWARN,
        REFILL,
        GFP.FAST_TRY,
        GFP_NOWAIT | GFP.NOWARN | GFP.FAST_TRY,
        g.GFP_TRANSHUGE,
        GFP_KERNEL | GFP.NOLOCKDEP,
        # NOFAIL without DIRECT_RECLAIM: the kernel only warns, so this is allowed.
        GFP_NOWAIT | GFP.NOFAIL,
    ],
)
def test_validate_accepts(flags: int) -> None:
    result = validate_gfp(flags)
    assert result == flags
    assert isinstance(result, GFP)


def test_validate_unknown_bits() -> None:
    with pytest.raises(GfpError) as info:
        validate_gfp(0x2000000 | 0x800 | 0x80000000)
    message = str(info.value)
    assert "0x82000000" in message
    assert "0x1ffffff" in message


def test_validate_negative() -> None:
    with pytest.raises(GfpError, match="non-negative"):
        validate_gfp(-4)


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (GFP.FAST_TRY | GFP.DIRECT_RECLAIM, ("__GFP_FAST_TRY", "__GFP_DIRECT_RECLAIM")),
        (GFP_KERNEL | GFP.FAST_TRY, ("__GFP_FAST_TRY", "__GFP_DIRECT_RECLAIM")),
        (GFP_KERNEL | GFP.NOFAIL | GFP.NORETRY, ("__GFP_NOFAIL", "__GFP_NORETRY")),
        (GFP.MEMALLOC | GFP.NOMEMALLOC, ("__GFP_MEMALLOC", "__GFP_NOMEMALLOC")),
        (GFP.DMA | GFP.DMA32, ("__GFP_DMA", "__GFP_DMA32")),
        (GFP.MOVABLE | GFP.RECLAIMABLE, ("__GFP_MOVABLE", "__GFP_RECLAIMABLE")),
    ],
)
def test_validate_contradictions(flags: int, names: tuple[str, str]) -> None:
    with pytest.raises(GfpError) as info:
        validate_gfp(flags)
    message = str(info.value)
    assert "contradictory" in message
    for name in names:
        assert name in message


def test_validate_reports_every_contradiction() -> None:
    with pytest.raises(GfpError) as info:
        validate_gfp(GFP.DMA | GFP.DMA32 | GFP.MEMALLOC | GFP.NOMEMALLOC)
    message = str(info.value)
    assert "__GFP_DMA32" in message and "__GFP_NOMEMALLOC" in message
    assert "__GFP_NOFAIL" not in message


# --- helpers ---


def test_migratetype() -> None:
    assert g.MIGRATE_UNMOVABLE == 0
    assert g.MIGRATE_MOVABLE == 1
    assert g.MIGRATE_RECLAIMABLE == 2
    assert g.MIGRATE_PCPTYPES == g.MIGRATE_HIGHATOMIC == 3
    assert gfp_migratetype(GFP_KERNEL) == g.MIGRATE_UNMOVABLE
    assert gfp_migratetype(g.GFP_HIGHUSER_MOVABLE) == g.MIGRATE_MOVABLE
    assert gfp_migratetype(GFP_KERNEL | GFP.RECLAIMABLE) == g.MIGRATE_RECLAIMABLE
    assert g.MIGRATETYPE_NAMES[gfp_migratetype(GFP.MOVABLE)] == "Movable"
    assert g.MIGRATETYPE_NAMES[g.MIGRATE_HIGHATOMIC] == "HighAtomic"
    with pytest.raises(GfpError, match="__GFP_MOVABLE with __GFP_RECLAIMABLE"):
        gfp_migratetype(GFP.MOVABLE | GFP.RECLAIMABLE)


def test_blocking_spinning_kswapd() -> None:
    cases = {
        # flags: (allow_blocking, allow_spinning, wakes_kswapd)
        0: (False, True, False),
        int(GFP.FAST_TRY): (False, True, False),
        int(GFP_NOWAIT): (False, False, True),
        int(GFP_ATOMIC): (False, False, True),
        int(GFP_KERNEL): (True, False, True),
        int(GFP.DIRECT_RECLAIM): (True, False, False),
        int(GFP.NOWARN | GFP.ZERO | GFP.NOMEMALLOC): (False, True, False),
    }
    for flags, expected in cases.items():
        got = (
            g.gfpflags_allow_blocking(flags),
            g.gfpflags_allow_spinning(flags),
            g.gfp_wakes_kswapd(flags),
        )
        assert got == expected, format_gfp(flags)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WMARK_MIN", 0),
        ("WMARK_LOW", 1),
        ("WMARK_HIGH", 2),
        ("WMARK_MASK", 3),
        ("NO_WATERMARKS", 0x4),
        ("OOM", 0x8),
        ("HARDER", 0x10),
        ("HIGH", 0x20),
        ("CPUSET", 0x40),
        ("CMA", 0x80),
        ("NOFRAGMENT", 0x100),
        ("TRYLOCK", 0x400),
        ("KSWAPD", 0x800),
    ],
)
def test_alloc_flag_values(name: str, value: int) -> None:
    assert int(AllocFlags[name]) == value


def test_alloc_flags_mirror_gfp_bits() -> None:
    assert int(AllocFlags.HIGH) == int(GFP.HIGH)
    assert int(AllocFlags.KSWAPD) == int(GFP.KSWAPD_RECLAIM)


@pytest.mark.parametrize(
    ("gfp", "expected"),
    [
        (GFP_KERNEL, AllocFlags.WMARK_MIN | AllocFlags.CPUSET | AllocFlags.KSWAPD),
        (
            GFP_ATOMIC,
            AllocFlags.WMARK_MIN | AllocFlags.HIGH | AllocFlags.HARDER | AllocFlags.KSWAPD,
        ),
        (GFP_NOWAIT, AllocFlags.WMARK_MIN | AllocFlags.CPUSET | AllocFlags.KSWAPD),
        (GFP_NOWAIT | GFP.NOWARN, AllocFlags.CPUSET | AllocFlags.KSWAPD),
        (0, AllocFlags.WMARK_MIN | AllocFlags.CPUSET),
        (GFP.FAST_TRY, AllocFlags.CPUSET),
        # __GFP_NOMEMALLOC withholds HARDER but the atomic request still ignores cpusets.
        (GFP_ATOMIC | GFP.NOMEMALLOC, AllocFlags.HIGH | AllocFlags.KSWAPD),
        (GFP.HIGH, AllocFlags.HIGH | AllocFlags.CPUSET),
    ],
)
def test_gfp_to_alloc_flags(gfp: int, expected: AllocFlags) -> None:
    got = gfp_to_alloc_flags(gfp)
    assert got == expected
    assert isinstance(got, AllocFlags)
    assert int(got) & int(AllocFlags.WMARK_MASK) == int(AllocFlags.WMARK_MIN)


def test_gfp_to_alloc_flags_numeric() -> None:
    assert int(gfp_to_alloc_flags(GFP_KERNEL)) == 0x840
    assert int(gfp_to_alloc_flags(GFP_ATOMIC)) == 0x830
    assert int(gfp_to_alloc_flags(GFP_NOWAIT)) == 0x840
    assert int(gfp_to_alloc_flags(0)) == 0x40


def test_gfp_to_alloc_flags_rt_and_cma() -> None:
    assert gfp_to_alloc_flags(GFP_KERNEL, rt_task=True) & AllocFlags.HARDER
    # An atomic request's HARDER depends on NOMEMALLOC, not on being RT.
    assert not gfp_to_alloc_flags(GFP_ATOMIC | GFP.NOMEMALLOC, rt_task=True) & AllocFlags.HARDER
    assert gfp_to_alloc_flags(g.GFP_HIGHUSER_MOVABLE, cma=True) & AllocFlags.CMA
    assert not gfp_to_alloc_flags(g.GFP_HIGHUSER_MOVABLE) & AllocFlags.CMA
    assert not gfp_to_alloc_flags(GFP_KERNEL, cma=True) & AllocFlags.CMA


@pytest.mark.parametrize("bad", [2.5, 3.0, "0x10", "GFP_KERNEL", None, True])
def test_a_mask_that_is_not_an_int_is_refused_by_name(bad: object) -> None:
    """gfp_t is an unsigned int (include/linux/types.h): a float must not be truncated into a
    mask, nor a string fail inside int(); both are GfpError naming the type and parse_gfp()."""
    for fn in (validate_gfp, format_gfp):
        with pytest.raises(GfpError, match=f"got {type(bad).__name__}.*parse_gfp"):
            fn(bad)  # type: ignore[arg-type]
