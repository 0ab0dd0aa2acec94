"""Memory faults, injected and detected: ``fail_page_alloc``/``failslab`` and KASAN-style reports.

Injection follows ``lib/fault-inject.c``'s ``should_fail()``: the ``times`` budget is checked
first, then ``interval`` (only every Nth eligible attempt may fail), then ``probability``.
``should_fail_alloc_page()`` exempts ``__GFP_NOFAIL`` and orders below ``min-order`` (and, if
asked, ``__GFP_DIRECT_RECLAIM`` requests, ``ignore-gfp-wait``); ``alloc_pages_nolock()`` skips
injection altogether (kernel.md 2.4). The GFP filter is rcukit's: only masks containing all the
filter's bits are eligible, so one variant's flags can be targeted.

Detection keeps what KASAN keeps: where an object was freed (a bounded *quarantine* of the most
recent frees, like KASAN's) and, when asked, where it was allocated, so a double free or a use
after free names both sites. A "site" is the modelled caller: the innermost Python frame outside
``rcukit/mm`` plus the simulated time, CPU and task.
"""

from __future__ import annotations

import functools
import os
import random
import sys
from collections.abc import Sequence
from types import CodeType
from typing import TYPE_CHECKING

import attrs

from rcukit.errors import MemoryDebugError
from rcukit.mm.gfp import GFP, parse_gfp, validate_gfp

if TYPE_CHECKING:
    from rcukit.config import MemoryConfig
    from rcukit.sched.sim import Task

_MM_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


@attrs.define(slots=True)
class FaultAttr:
    """One ``struct fault_attr`` (``fail_page_alloc`` or ``failslab``) with its own RNG.

    ``require`` is a GFP mask the request must contain entirely to be eligible (0: all are).
    """

    probability: float
    interval: int = 1
    times: int = -1
    require: int = 0
    min_order: int = 0
    ignore_gfp_reclaim: bool = False
    rng: random.Random = attrs.field(factory=random.Random)
    #: Eligible attempts seen (``attr->count``, what ``interval`` is counted against).
    count: int = 0
    #: Failures injected so far.
    injected: int = 0

    @property
    def enabled(self) -> bool:
        return self.probability > 0.0

    def should_fail(self, gfp: int, order: int = 0) -> bool:
        """``should_fail_alloc_page()`` + ``should_fail()`` for one request."""
        if not self.probability > 0.0:
            return False
        if gfp & GFP.NOFAIL or order < self.min_order:
            return False
        if self.ignore_gfp_reclaim and gfp & GFP.DIRECT_RECLAIM:
            return False
        if gfp & self.require != self.require:
            return False
        if self.times == 0:
            return False
        if self.interval > 1:
            self.count += 1
            if self.count % self.interval:
                return False
        else:
            self.count += 1
        if self.probability < 1.0 and self.rng.random() >= self.probability:
            return False
        self.injected += 1
        if self.times > 0:
            self.times -= 1
        return True


@attrs.define(slots=True)
class FaultInjection:
    """The mm's two fault-injection points, each a debugfs directory in the kernel."""

    #: ``/sys/kernel/debug/fail_page_alloc`` (``should_fail_alloc_page()``).
    fail_page_alloc: FaultAttr
    #: ``/sys/kernel/debug/failslab`` (``should_failslab()``).
    failslab: FaultAttr

    @classmethod
    def from_config(cls, mmc: MemoryConfig, seed: int) -> FaultInjection:
        """Both attrs as configured, each with its own RNG seeded from the kernel's ``seed``."""
        return cls(
            FaultAttr(
                probability=mmc.fail_page_alloc_probability,
                interval=mmc.fail_page_alloc_interval,
                times=mmc.fail_page_alloc_times,
                require=int(validate_gfp(parse_gfp(mmc.fail_page_alloc_gfp_filter))),
                min_order=mmc.fail_page_alloc_min_order,
                ignore_gfp_reclaim=mmc.fail_page_alloc_ignore_gfp_reclaim,
                rng=random.Random(f"rcukit-fail_page_alloc:{seed}"),
            ),
            FaultAttr(
                probability=mmc.failslab_probability,
                rng=random.Random(f"rcukit-failslab:{seed}"),
            ),
        )


#: A site as recorded on hot paths: ``(code, instruction offset, time_ns, cpu, comm)``. A plain
#: tuple because one is made per free (and per allocation with ``debug_alloc_sites``), and the
#: line number is worked out only when a report needs it (``f_lineno`` walks the line table).
RawSite = tuple[CodeType, int, int, int, str]


@attrs.define(slots=True)
class Site:
    """Where something happened: Python ``file:line`` of the modelled caller, time, CPU, task."""

    file: str
    line: int
    time_ns: int
    cpu: int
    comm: str

    @classmethod
    def from_raw(cls, raw: RawSite) -> Site:
        code, lasti, time_ns, cpu, comm = raw
        return cls(code.co_filename, _line_at(code, lasti), time_ns, cpu, comm)

    @classmethod
    def of(cls, raw: RawSite | None) -> Site | None:
        return None if raw is None else cls.from_raw(raw)

    def __str__(self) -> str:
        return (
            f"{os.path.basename(self.file)}:{self.line} "
            f"(cpu {self.cpu}, {self.comm}, t={self.time_ns} ns)"
        )


@functools.lru_cache(maxsize=4096)
def _line_at(code: CodeType, lasti: int) -> int:
    """The source line of bytecode offset ``lasti`` in ``code``: a walk of the line table
    (tens of microseconds in a long function), remembered because a run asks for the same
    few call sites again and again (every vfree() of a --kvfree-torture run)."""
    line = code.co_firstlineno
    for start, end, lineno in code.co_lines():
        if start <= lasti < end:
            return lineno if lineno is not None else line
    return line


def raw_site(task: Task | None, now_ns: int = 0) -> RawSite:
    """The innermost frame outside ``rcukit/mm`` (who called the allocator), as a raw tuple.

    Without a task (a check made from plain Python) the CPU is -1 and the time ``now_ns``.
    Always called from an mm function, so the walk starts at *its* caller: asking for the
    frame of the running coroutine would make CPython materialise (and later copy out) a
    frame object on every free, which costs more than the free itself.
    """
    f = sys._getframe(2)
    while f.f_code.co_filename.startswith(_MM_DIR) and f.f_back is not None:
        f = f.f_back
    if task is None:
        return (f.f_code, f.f_lasti, now_ns, -1, "?")
    cpu = task.cpu
    return (f.f_code, f.f_lasti, cpu.local_ns, cpu.id, task.name)


def caller_site(task: Task | None, now_ns: int = 0) -> Site:
    """:func:`raw_site` as a :class:`Site`."""
    return Site.from_raw(raw_site(task, now_ns))


def describe_site(site: Site | None, *, what: str) -> str:
    """``"<what> at <site>"`` or why the site is unknown (so the report says how to get it)."""
    if site is not None:
        return f"{what} at {site}"
    if what.startswith("allocated"):
        return f"{what} at an unrecorded site (set mm.debug_alloc_sites = true to record it)"
    return f"{what} at an unrecorded site (older than the quarantine, mm.debug_quarantine)"


@attrs.define(slots=True)
class FreedObject:
    """What is known about a freed object: the free site, the allocation site, the size."""

    free_site: Site
    alloc_site: Site | None
    size: int


class Quarantine:
    """KASAN's quarantine as a record: the last ``capacity`` frees, oldest forgotten first.

    Objects are reused immediately (unlike KASAN, which delays reuse); an entry only matters
    while its object is free, and a later free of the same pointer replaces it, so a stale entry
    is never reported. Storage is a fixed ring of parallel lists plus ``ptr -> slot``: a put
    allocates nothing, because it runs once per freed object.
    """

    __slots__ = ("_allocs", "_d", "_pos", "_ptrs", "_sites", "_sizes", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._d: dict[int, int] = {}
        self._ptrs = [0] * capacity
        self._sites: list[RawSite | None] = [None] * capacity
        self._allocs: list[RawSite | None] = [None] * capacity
        self._sizes = [0] * capacity
        self._pos = 0

    def put(self, ptr: int, free: RawSite, alloc: RawSite | None, size: int) -> None:
        pos = self._pos
        d = self._d
        old = self._ptrs[pos]
        if old and d.get(old) == pos:
            del d[old]
        d[ptr] = pos
        self._ptrs[pos] = ptr
        self._sites[pos] = free
        self._allocs[pos] = alloc
        self._sizes[pos] = size
        pos += 1
        self._pos = 0 if pos == self.capacity else pos

    def put_many(
        self,
        ptrs: Sequence[int],
        sizes: Sequence[int],
        free: RawSite,
        allocs: Sequence[RawSite | None] | None,
    ) -> None:
        """:meth:`put` for a bulk free (one site); only the last ``capacity`` can survive."""
        cap = self.capacity
        start = max(0, len(ptrs) - cap)
        d = self._d
        optrs, sites, oallocs, osizes = self._ptrs, self._sites, self._allocs, self._sizes
        pos = self._pos
        for i in range(start, len(ptrs)):
            ptr = ptrs[i]
            old = optrs[pos]
            if old and d.get(old) == pos:
                del d[old]
            d[ptr] = pos
            optrs[pos] = ptr
            sites[pos] = free
            oallocs[pos] = allocs[i] if allocs is not None else None
            osizes[pos] = sizes[i]
            pos += 1
            if pos == cap:
                pos = 0
        self._pos = pos

    def get(self, ptr: int) -> FreedObject | None:
        pos = self._d.get(ptr)
        if pos is None:
            return None
        free = self._sites[pos]
        assert free is not None
        return FreedObject(Site.from_raw(free), Site.of(self._allocs[pos]), self._sizes[pos])

    def __len__(self) -> int:
        return len(self._d)


def memory_error(
    kind: str,
    ptr: int,
    *,
    where: str,
    site: Site,
    alloc_site: Site | None = None,
    free_site: Site | None = None,
    detail: str = "",
    show_alloc: bool = True,
    show_free: bool = True,
) -> MemoryDebugError:
    """A KASAN-style report as an exception: the bug, the pointer, and every site known."""
    parts = [f"BUG: KASAN: {kind} in {where}: ptr {ptr:#x} at {site}"]
    if detail:
        parts.append(detail)
    if show_alloc:
        parts.append(describe_site(alloc_site, what="allocated"))
    if show_free:
        parts.append(describe_site(free_site, what="freed"))
    sites = ((("Allocated", alloc_site),) if show_alloc else ()) + (
        (("Freed", free_site),) if show_free else ()
    )
    return MemoryDebugError(
        "; ".join(parts), kind=kind, ptr=ptr, where=where, detail=detail, sites=sites
    )
