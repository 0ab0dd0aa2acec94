"""/proc/zoneinfo parsing: a captured real file, the live host file, old formats and bad input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from simtools import FIXTURES

from rcukit.errors import ConfigError, ZoneinfoParseError
from rcukit.mm.zone import compute_watermarks, pageset_set_batch, zone_batchsize
from rcukit.mm.zoneinfo import ZoneInfo, largest_zone, parse_zoneinfo, read_host_zoneinfo

FIXTURE = FIXTURES / "zoneinfo.txt"
HOST = Path("/proc/zoneinfo")

# A 4.x-era layout: no per-node stats block, `scanned`, `all_unreclaimable:`, `inactive_ratio:`.
OLD_FORMAT = """\
Node 0, zone      DMA
  pages free     3977
        min      5
        low      6
        high     7
        scanned  0
        spanned  4095
        present  3998
        managed  3977
    nr_free_pages 3977
        protection: (0, 2991, 3937, 3937)
  pagesets
    cpu: 0
              count: 0
              high:  0
              batch: 1
  vm stats threshold: 6
  all_unreclaimable: 1
  start_pfn:         1
  inactive_ratio:    1
Node 0, zone   Normal
  pages free     200000
        min      4000
        low      5000
        high     6000
        spanned  262144
        present  262144
        managed  250000
  pagesets
    cpu: 0
              count: 12
              high:  186
              batch: 31
    cpu: 1
              count: 40
              high:  186
              batch: 31
"""


def test_fixture_pins_real_values() -> None:
    zones = parse_zoneinfo(FIXTURE.read_text(encoding="utf-8"), source=str(FIXTURE))
    assert [(z.node, z.name) for z in zones] == [
        (0, "DMA"), (0, "DMA32"), (0, "Normal"), (0, "Movable"), (0, "Device")
    ]  # fmt: skip
    dma, dma32, normal, movable, device = zones
    assert (dma.min, dma.low, dma.high, dma.spanned, dma.present, dma.managed) == (
        62, 77, 92, 4095, 3998, 3840
    )  # fmt: skip
    assert dma.pcp == ((0, 0, 0, 1), (1, 0, 0, 1))
    assert (dma32.pages_free, dma32.min, dma32.managed) == (772917, 12570, 772917)
    assert dma32.pcp == ((0, 0, 7856, 63), (1, 0, 7856, 63))
    assert (normal.min, normal.low, normal.high, normal.managed) == (4263, 5328, 6393, 262144)
    assert [(cpu, high, batch) for cpu, _, high, batch in normal.pcp] == [
        (0, 2790, 63), (1, 2790, 63)
    ]  # fmt: skip
    assert movable.is_empty and device.is_empty and movable.pcp == ()
    assert not normal.is_empty
    assert largest_zone(zones) is dma32


def test_fixture_agrees_with_the_zone_model() -> None:
    zones = read_host_zoneinfo(FIXTURE)
    for z in zones:
        if z.is_empty:
            continue
        wm = compute_watermarks(z.managed, z.min)
        assert (wm.low, wm.high) == (z.low, z.high), z.name
        # pageset_set_batch() stores max(1, zone_batchsize()): ZONE_DMA's 0 shows as 1
        stored = pageset_set_batch(zone_batchsize(z.managed, 4096))[1]
        assert all(batch == stored for *_, batch in z.pcp), z.name


def test_host_zoneinfo_parses() -> None:
    # Without /proc/zoneinfo (non-Linux CI), the captured fixture stands in for it.
    path = HOST if HOST.exists() else FIXTURE
    assert path.exists()
    zones = read_host_zoneinfo(path)
    assert zones and all(isinstance(z, ZoneInfo) for z in zones)
    for z in zones:
        assert z.min <= z.low <= z.high, z.name
        assert z.managed <= z.present <= z.spanned, z.name
        assert all(batch >= 1 for *_, batch in z.pcp), z.name
    big = largest_zone(zones)
    assert big.managed == max(z.managed for z in zones) > 0


def test_old_format_parses() -> None:
    zones = parse_zoneinfo(OLD_FORMAT)
    assert [z.name for z in zones] == ["DMA", "Normal"]
    assert zones[0].pcp == ((0, 0, 0, 1),)
    assert zones[1].pcp == ((0, 12, 186, 31), (1, 40, 186, 31))
    assert largest_zone(zones).managed == 250000


def _lines(text: str) -> list[str]:
    return text.splitlines()


@pytest.mark.parametrize(
    ("edit", "lineno", "what"),
    [
        # Truncated at EOF after `count:` of cpu 1 (line 34 is `cpu: 1`).
        (lambda ls: ls[:35], 34, "pageset of cpu 1 is truncated: no high:, batch:"),
        # cpu 0 of Normal (line 30) loses its batch line, so `cpu: 1` arrives too early.
        (lambda ls: ls[:32] + ls[33:], 30, "pageset of cpu 0 is truncated: no batch:"),
        (lambda ls: [*ls[:2], "        min      abc", *ls[3:]], 3, "got 'abc'"),
        (lambda ls: [*ls[:2], "        min      -5", *ls[3:]], 3, "got '-5'"),
        (lambda ls: [*ls[:30], "              count: 1.5", *ls[31:]], 31, "got '1.5'"),
        (lambda ls: [*ls[:2], "        min      5 6", *ls[3:]], 3, "one integer, got '5 6'"),
        (lambda ls: [*ls[:3], "        min      5", *ls[3:]], 4, "duplicate 'min'"),
        (lambda ls: [*ls[:4], *ls[5:]], 1, "zone DMA of node 0 has no 'high' line"),
        (lambda ls: ["Node x, zone DMA", *ls[1:]], 1, "for the node number, got 'x'"),
    ],
)
def test_malformed_input_names_the_line(
    edit: Callable[[list[str]], list[str]], lineno: int, what: str
) -> None:
    text = "\n".join(edit(_lines(OLD_FORMAT))) + "\n"
    with pytest.raises(ZoneinfoParseError) as info:
        parse_zoneinfo(text, source="bad.txt")
    assert f"bad.txt:{lineno}: " in str(info.value)
    assert what in str(info.value)


def test_pages_free_before_any_node_header() -> None:
    text = "  per-node stats\n      nr_dirty 4\n  pages free     3977\n        min 5\n"
    with pytest.raises(ZoneinfoParseError, match=r"^z:3: 'pages free' before any 'Node"):
        parse_zoneinfo(text, source="z")


def test_pcp_value_outside_pageset_and_empty_text() -> None:
    text = OLD_FORMAT.replace("    cpu: 0\n              count: 0\n", "              count: 0\n", 1)
    with pytest.raises(ZoneinfoParseError, match=r"^<zoneinfo>:13: 'count:' outside a pageset"):
        parse_zoneinfo(text)
    with pytest.raises(ZoneinfoParseError, match=r"^e:1: no 'Node N, zone NAME' header"):
        parse_zoneinfo("", source="e")
    # A parse error is also a ConfigError/ValueError for callers that do not know rcukit.
    assert issubclass(ZoneinfoParseError, ConfigError)
    assert issubclass(ZoneinfoParseError, ValueError)


def test_unreadable_file_and_no_usable_zone(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match=r"cannot read zoneinfo .*nope"):
        read_host_zoneinfo(missing)
    empty_zones = [z for z in read_host_zoneinfo(FIXTURE) if z.is_empty]
    assert len(empty_zones) == 2
    with pytest.raises(ConfigError, match="no zone with managed pages"):
        largest_zone(empty_zones)
    with pytest.raises(ConfigError, match="no zone with managed pages"):
        largest_zone([])
