"""``warn_alloc()`` and what it prints: ``show_mem()`` / ``show_free_areas()`` (5.8).

An allocation that fails without ``__GFP_NOWARN`` ends at the slow path's ``nopage:`` label in
``warn_alloc(gfp_mask, ac->nodemask, "page allocation failure: order:%u", order)`` (5.8
``mm/page_alloc.c``). Unless the ``nopage_rs`` ratelimit says no (``static
DEFINE_RATELIMIT_STATE(nopage_rs, 10*HZ, 1)``: one report per 10 s, since 5.4's "mm/page_alloc.c:
ratelimit allocation failure warnings more aggressively"; before, the default 10 per 5*HZ), it
prints the headline, ``dump_stack()``, then ``warn_alloc_show_mem()`` -> ``show_mem()``
(``lib/show_mem.c``) -> ``show_free_areas()``, which copies each zone's free-area counts
**under** ``spin_lock_irqsave(&zone->lock)``.

That last lock is why the literal ``__get_free_page(0)`` of the RFC thread is not lock-free on
its failure path (kernel.md 8.5): called under ``krcp->lock`` (a ``raw_spinlock_t``), a failed
gfp-0 allocation takes the ``spinlock_t zone->lock``, which lockdep reports with
``CONFIG_PROVE_RAW_LOCK_NESTING`` and which sleeps on PREEMPT_RT. The zone lock is taken
through the page allocator's ``lock_zone()`` and so through the lock checker.

What is charged (module constants, since a report is rare and its cost is the console's): the
log-buffer store of each line printed, the stack unwind, and the free-area copy under the lock.
Console output itself (a serial console can take milliseconds a line) is not charged: printk
defers it when ``console_trylock()`` fails and a console driver is outside this model.
``__ratelimit()``'s own ``raw_spinlock_t`` is only ever trylocked: nothing to report.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Final

import attrs

from rcukit.mm.gfp import MIGRATE_MOVABLE, MIGRATE_RECLAIMABLE, MIGRATE_UNMOVABLE
from rcukit.mm.zone import MAX_ORDER
from rcukit.sched.sim import Task

if TYPE_CHECKING:
    from rcukit.mm.page_alloc import PageAlloc

__all__ = [
    "DEFAULT_RATELIMIT_BURST",
    "DEFAULT_RATELIMIT_INTERVAL_HZ",
    "DUMP_STACK_NS",
    "NOPAGE_RS_BURST",
    "NOPAGE_RS_INTERVAL_HZ",
    "PRINTK_LINE_NS",
    "SHOW_FREE_AREAS_SCAN_NS",
    "WARN_ALLOC_LINES",
    "RatelimitState",
    "WarnAlloc",
]

#: ``DEFAULT_RATELIMIT_INTERVAL`` is ``5 * HZ`` (include/linux/ratelimit.h).
DEFAULT_RATELIMIT_INTERVAL_HZ: Final = 5
#: ``DEFAULT_RATELIMIT_BURST``.
DEFAULT_RATELIMIT_BURST: Final = 10
#: ``warn_alloc()``'s own ``nopage_rs``: ``DEFINE_RATELIMIT_STATE(nopage_rs, 10*HZ, 1)`` in
#: mm/page_alloc.c from 5.4 on (every kernel the profiles model), one report per 10 s.
NOPAGE_RS_INTERVAL_HZ: Final = 10
NOPAGE_RS_BURST: Final = 1
#: One printk into the log buffer (``vprintk_store``: format, ``logbuf_lock``, copy), no
#: console: about a microsecond.
PRINTK_LINE_NS: Final = 1_000
#: ``dump_stack()``: the unwinder walks some twenty frames and resolves each symbol
#: (``kallsyms``), about a microsecond a frame, before printing them.
DUMP_STACK_NS: Final = 20_000
#: The copy under ``zone->lock``: ``MAX_ORDER`` free areas, each with its ``nr_free`` and a
#: ``free_area_empty()`` test per migratetype, a few cache lines.
SHOW_FREE_AREAS_SCAN_NS: Final = 300
#: Lines of one report on a one-node x86-64 5.8 machine: the headline and cpuset line, about
#: 22 from ``dump_stack()`` (header, registers-free call trace), about 16 from ``show_mem()``
#: (Mem-Info, the global, node and zone counters, lowmem_reserve, the free areas, page cache,
#: swap, RAM totals). Each is charged :data:`PRINTK_LINE_NS`; the model keeps a few of them.
WARN_ALLOC_LINES: Final = 40

#: ``show_migration_types()`` letters of the migratetypes the model has.
_MT_LETTERS = ((MIGRATE_UNMOVABLE, "U"), (MIGRATE_MOVABLE, "M"), (MIGRATE_RECLAIMABLE, "E"))


@attrs.define
class RatelimitState:
    """``struct ratelimit_state`` and ``___ratelimit()`` (lib/ratelimit.c): at most ``burst``
    yes per ``interval`` jiffies; the first call after a window with misses says how many."""

    interval: int
    burst: int
    #: ``rs->begin`` in jiffies; None until the first call (the kernel tests ``!rs->begin``).
    begin: int | None = None
    printed: int = 0
    missed: int = 0

    def ratelimit(self, jiffies: int) -> tuple[bool, int]:
        """``__ratelimit(rs)``: (allowed, callbacks suppressed in the window just closed)."""
        suppressed = 0
        if self.begin is None:
            self.begin = jiffies
        if jiffies > self.begin + self.interval:  # time_is_before_jiffies(begin + interval)
            suppressed, self.missed = self.missed, 0
            self.begin = jiffies
            self.printed = 0
        if self.burst and self.burst > self.printed:
            self.printed += 1
            return True, suppressed
        self.missed += 1
        return False, suppressed


class WarnAlloc:
    """``warn_alloc()`` of one kernel: ``nopage_rs`` and the reports it let through."""

    def __init__(self, pa: PageAlloc) -> None:
        self._pa = pa
        cfg = pa.kernel.config
        self._tick_ns = cfg.tick_ns
        self._kb_shift = cfg.page_size.bit_length() - 1 - 10
        #: ``static DEFINE_RATELIMIT_STATE(nopage_rs, ...)`` in ``warn_alloc()``.
        self.nopage_rs = RatelimitState(NOPAGE_RS_INTERVAL_HZ * cfg.hz, NOPAGE_RS_BURST)
        #: Each report as printed (its modelled lines), oldest first, capped.
        self.reports: list[list[str]] = []
        #: Reports the ratelimit swallowed.
        self.suppressed = 0

    def ratelimit(self, task: Task) -> bool:
        """``__ratelimit(&nopage_rs)``, printing "warn_alloc: N callbacks suppressed" when a
        window with misses has closed."""
        ok, missed = self.nopage_rs.ratelimit(task.now_ns // self._tick_ns)
        if missed:
            self.pr_warn(task, f"warn_alloc: {missed} callbacks suppressed")
        if not ok:
            self.suppressed += 1
        return ok

    def pr_warn(self, task: Task, line: str) -> None:
        """One line into the log: ``Mm.warnings``, the trace, and stderr if splats print."""
        pa = self._pa
        task.charge(PRINTK_LINE_NS)
        if len(pa.warnings) < 10_000:
            pa.warnings.append(line)
        if pa.tp.warn_alloc:
            pa.kernel.trace(task, "warn_alloc", line)
        if pa.kernel.config.print_splats:
            print(line, file=sys.stderr)

    async def warn_alloc(self, task: Task, gfp_nowarn: bool, headline: str) -> bool:
        """``warn_alloc()``: nothing for ``__GFP_NOWARN`` or past the ratelimit; else the
        headline, ``dump_stack()`` and ``show_mem()``. True when a report was printed."""
        if gfp_nowarn or not self.ratelimit(task):
            return False
        pa = self._pa
        pa.vmstat.inc("warn_alloc")
        self.pr_warn(task, headline)
        lines = [headline, *self.dump_stack(task)]
        lines += await self.show_mem(task)
        task.charge((WARN_ALLOC_LINES - 1) * PRINTK_LINE_NS)
        if len(self.reports) < 1_000:
            self.reports.append(lines)
        return True

    def dump_stack(self, task: Task) -> list[str]:
        """``dump_stack()``: the header (taint and release included, as every report of this
        kernel prints it: rcukit.panic) and the path that got here (the unwind is charged)."""
        task.charge(DUMP_STACK_NS)
        return self._pa.kernel.panic.dump_stack(
            task, ["warn_alloc", "__alloc_pages_slowpath", "__alloc_pages_nodemask"]
        )

    async def show_mem(self, task: Task) -> list[str]:
        """``show_mem()`` (lib/show_mem.c): "Mem-Info:", ``show_free_areas()``, RAM totals."""
        pa = self._pa
        pa.vmstat.inc("show_mem")
        lines = ["Mem-Info:", *await self.show_free_areas(task)]
        lines.append(f"{pa.zone.managed_pages} pages RAM")
        return lines

    async def show_free_areas(self, task: Task) -> list[str]:
        """``show_free_areas()``: zone counters read without a lock (free_pcp sums every
        CPU's pcp count as the kernel does), then each order's free blocks and their
        migratetypes copied under ``spin_lock_irqsave(&zone->lock)``."""
        pa = self._pa
        zone = pa.zone
        k = self._kb
        free_pcp = sum(p.count for p in pa.pcps)
        wm = zone.wmark
        lines = [
            f"Node 0 {zone.name} free:{k(zone.buddy.nr_free)}kB min:{k(wm.min)}kB "
            f"low:{k(wm.low)}kB high:{k(wm.high)}kB managed:{k(zone.managed_pages)}kB "
            f"free_pcp:{k(free_pcp)}kB local_pcp:{k(pa.pcps[task.cpu.id].count)}kB"
        ]
        lock = await pa.lock_zone(task, "show_free_areas", False)
        if lock is None:  # a zone_lock() that declines (the raw-zone-lock variant on RT)
            return lines
        area = zone.buddy.free_area
        nr = [sum(len(area[o][mt]) for mt, _ in _MT_LETTERS) for o in range(MAX_ORDER)]
        types = ["".join(c for mt, c in _MT_LETTERS if area[o][mt]) for o in range(MAX_ORDER)]
        task.charge(pa.spin_lock_cost + SHOW_FREE_AREAS_SCAN_NS)
        pa.locks.release(task, lock)
        parts = [
            f"{nr[o]}*{k(1 << o)}kB" + (f" ({types[o]})" if nr[o] else "")
            for o in range(MAX_ORDER)
        ]
        total = sum(n << o for o, n in enumerate(nr))
        lines.append(f"Node 0 {zone.name}: {' '.join(parts)} = {k(total)}kB")
        return lines

    def _kb(self, pages: int) -> int:
        """``K(x)``: pages to KiB."""
        return pages << self._kb_shift
