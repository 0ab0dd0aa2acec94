"""Parse /proc/zoneinfo so a simulation can be seeded with a real machine's zone geometry.

Only what the model needs is read: free pages, the min/low/high watermarks, the zone sizes and
each CPU's pcp ``count``/``high``/``batch`` (kernel.md 3.3 and 3.4). Everything else the kernel
prints there (per-node and per-zone vmstat counters, ``protection:``, ``high_min:`` and
``high_max:`` of 6.7+, ``vm stats threshold``, ``start_pfn``...) differs between versions and is
ignored, so texts from 4.x to 6.x kernels parse alike.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

import attrs

from rcukit.errors import ConfigError, ZoneinfoParseError

_NODE_RE = re.compile(r"Node\s+(\S+),\s*zone\s+(\S+)")
_INT_RE = re.compile(r"[0-9]+")
_ZONE_KEYS = ("min", "low", "high", "spanned", "present", "managed")
_PCP_KEYS = ("count", "high", "batch")
_REQUIRED = ("pages free", *_ZONE_KEYS)


#: One CPU's pcp as printed under ``pagesets``: ``(cpu, count, high, batch)``.
PagesetInfo = tuple[int, int, int, int]


@attrs.frozen
class ZoneInfo:
    """One zone of /proc/zoneinfo; sizes and watermarks in pages."""

    node: int
    name: str
    pages_free: int
    min: int
    low: int
    high: int
    spanned: int
    present: int
    managed: int
    #: ``(cpu, count, high, batch)`` per CPU, in file order; empty for zones without pagesets.
    pcp: tuple[PagesetInfo, ...]

    @property
    def is_empty(self) -> bool:
        """No managed pages (ZONE_MOVABLE/ZONE_DEVICE placeholders): kept, but unusable."""
        return self.managed == 0


def _int(text: str, what: str, where: str) -> int:
    if not _INT_RE.fullmatch(text):
        raise ZoneinfoParseError(
            f"{where}: expected a non-negative integer for {what}, got {text!r}"
        )
    return int(text)


@attrs.define
class _PendingCpu:
    lineno: int
    cpu: int
    values: dict[str, int] = attrs.field(factory=dict)


@attrs.define
class _PendingZone:
    lineno: int
    node: int
    name: str
    values: dict[str, int] = attrs.field(factory=dict)
    in_pagesets: bool = False
    cpu: _PendingCpu | None = None
    pcp: list[PagesetInfo] = attrs.field(factory=list)


@attrs.define
class _Parser:
    source: str
    zones: list[ZoneInfo] = attrs.field(factory=list)
    cur: _PendingZone | None = None

    def where(self, lineno: int) -> str:
        return f"{self.source}:{lineno}"

    def finish_cpu(self, zone: _PendingZone) -> None:
        cpu = zone.cpu
        if cpu is None:
            return
        missing = [k for k in _PCP_KEYS if k not in cpu.values]
        if missing:
            raise ZoneinfoParseError(
                f"{self.where(cpu.lineno)}: pageset of cpu {cpu.cpu} is truncated: no "
                f"{', '.join(k + ':' for k in missing)} line (expected count:, high: and batch:)"
            )
        v = cpu.values
        zone.pcp.append((cpu.cpu, v["count"], v["high"], v["batch"]))
        zone.cpu = None

    def finish_zone(self) -> None:
        zone = self.cur
        if zone is None:
            return
        self.finish_cpu(zone)
        missing = [k for k in _REQUIRED if k not in zone.values]
        if missing:
            raise ZoneinfoParseError(
                f"{self.where(zone.lineno)}: zone {zone.name} of node {zone.node} has no "
                f"{', '.join(repr(k) for k in missing)} line (expected {', '.join(_REQUIRED)})"
            )
        v = zone.values
        self.zones.append(
            ZoneInfo(
                node=zone.node,
                name=zone.name,
                pages_free=v["pages free"],
                min=v["min"],
                low=v["low"],
                high=v["high"],
                spanned=v["spanned"],
                present=v["present"],
                managed=v["managed"],
                pcp=tuple(zone.pcp),
            )
        )
        self.cur = None

    def line(self, lineno: int, raw: str) -> None:
        text = raw.strip()
        if not text:
            return
        m = _NODE_RE.fullmatch(text)
        if m:
            self.finish_zone()
            node = _int(m.group(1), "the node number", self.where(lineno))
            self.cur = _PendingZone(lineno=lineno, node=node, name=m.group(2))
            return
        parts = text.split()
        zone = self.cur
        if parts[:2] == ["pages", "free"]:
            if zone is None:
                raise ZoneinfoParseError(
                    f"{self.where(lineno)}: 'pages free' before any 'Node N, zone NAME' header"
                )
            self.set(zone.values, "pages free", parts[2:], lineno)
            return
        if zone is None:
            return  # nothing of interest precedes the first header
        if text == "pagesets":
            zone.in_pagesets = True
            return
        if zone.in_pagesets:
            self.pageset_line(zone, text, lineno)
        elif parts[0] in _ZONE_KEYS and "pages free" in zone.values:
            self.set(zone.values, parts[0], parts[1:], lineno)

    def pageset_line(self, zone: _PendingZone, text: str, lineno: int) -> None:
        key, colon, rest = text.partition(":")
        if not colon:
            return
        key = key.strip()
        if key == "cpu":
            self.finish_cpu(zone)
            cpu = _int(rest.strip(), "'cpu:'", self.where(lineno))
            zone.cpu = _PendingCpu(lineno=lineno, cpu=cpu)
        elif key in _PCP_KEYS:
            if zone.cpu is None:
                raise ZoneinfoParseError(
                    f"{self.where(lineno)}: '{key}:' outside a pageset (expected a 'cpu: N' line "
                    "first)"
                )
            self.set(zone.cpu.values, key, rest.split(), lineno)

    def set(self, values: dict[str, int], key: str, rest: list[str], lineno: int) -> None:
        where = self.where(lineno)
        if len(rest) != 1:
            raise ZoneinfoParseError(
                f"{where}: expected '{key}' followed by one integer, got {' '.join(rest)!r}"
            )
        if key in values:
            raise ZoneinfoParseError(f"{where}: duplicate '{key}' in the same zone or pageset")
        values[key] = _int(rest[0], repr(key), where)


def parse_zoneinfo(text: str, source: str = "<zoneinfo>") -> list[ZoneInfo]:
    """Every zone in a /proc/zoneinfo text, in file order, empty zones included.

    Raises ``ZoneinfoParseError`` naming ``source:line`` for a malformed value, a truncated
    pageset, a zone missing one of the required lines, or a text with no zone at all.
    """
    parser = _Parser(source=source)
    lineno = 0
    for lineno, raw in enumerate(text.splitlines(), start=1):
        parser.line(lineno, raw)
    parser.finish_zone()
    if not parser.zones:
        raise ZoneinfoParseError(
            f"{source}:{max(lineno, 1)}: no 'Node N, zone NAME' header found (not a zoneinfo text)"
        )
    return parser.zones


def read_host_zoneinfo(path: str | os.PathLike[str] = "/proc/zoneinfo") -> list[ZoneInfo]:
    """Parse this machine's zoneinfo (or another file); an unreadable file is a ``ConfigError``."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read zoneinfo {os.fspath(path)!r}: {exc.strerror}") from exc
    return parse_zoneinfo(text, source=os.fspath(path))


def largest_zone(infos: Iterable[ZoneInfo]) -> ZoneInfo:
    """The zone with the most managed pages (first on a tie): the one zone the model simulates."""
    best: ZoneInfo | None = None
    for info in infos:
        if not info.is_empty and (best is None or info.managed > best.managed):
            best = info
    if best is None:
        raise ConfigError("zoneinfo has no zone with managed pages: nothing to simulate")
    return best
