"""Other kernel users: a per-CPU background load of page allocations and frees.

On a real machine kvfree_rcu() is never alone with the page allocator: networking, the page
cache and slab users allocate in bursts and free a little later, so a CPU's pcp list is often
empty when kvfree_rcu() wants a page, and refills (``rmqueue_bulk`` under ``zone->lock``) and
drains (``free_pcppages_bulk``) happen all the time (kernel.md 3.3). That is what makes
``__GFP_FAST_TRY`` fail and ``GFP_NOWAIT`` take the zone lock in practice.

Each CPU gets one non-workload task (``memload/N``) that, at ``background_allocs_per_ms`` pages
per millisecond on average, allocates bursts of about ``background_burst`` order-0 pages (the
pcp batch by default, so bursts empty the list), ``GFP_HIGHUSER_MOVABLE`` (page cache,
anonymous memory) for a ``background_movable_fraction`` share of bursts, and of the rest
``GFP_ATOMIC|__GFP_NOWARN`` for a ``background_atomic_fraction`` share and ``GFP_KERNEL``
otherwise; it holds each burst for an exponentially distributed time of mean
``background_hold_us`` and frees it. Everything is drawn from a per-CPU ``random.Random`` seeded
from the kernel's RNG and the CPU number, so a run is the same for a given seed whatever else
runs (with no movable share, no draw is spent on it: runs without it are unchanged).

Movable bursts refill the MOVABLE pcp lists from the MOVABLE free lists, splitting the large
free blocks; unmovable requests (kvfree_rcu's blocks, slab pages) then find no block of their
own and fall back, stealing smaller MOVABLE blocks, and each steal of a block below a
pageblock boosts the zone's watermarks and wakes kswapd from ``rmqueue()`` (kernel.md 8.2).
"""

from __future__ import annotations

import heapq
import random
from typing import TYPE_CHECKING

from rcukit.mm.gfp import GFP, GFP_ATOMIC, GFP_HIGHUSER_MOVABLE, GFP_KERNEL
from rcukit.sched.sim import Task

if TYPE_CHECKING:
    from rcukit.mm.mm import Mm

ATOMIC_GFP = int(GFP_ATOMIC | GFP.NOWARN)
KERNEL_GFP = int(GFP_KERNEL)
MOVABLE_GFP = int(GFP_HIGHUSER_MOVABLE)


class BackgroundLoad:
    """The ``memload/N`` tasks; counters land in vmstat as ``background_*``."""

    def __init__(self, mm: Mm, seed: int) -> None:
        self.mm = mm
        self.seed = seed
        cfg = mm.kernel.config.mm
        self.rate_per_ms = cfg.background_allocs_per_ms
        self.burst = cfg.background_burst or mm.pcps[0].batch
        self.hold_ns = cfg.background_hold_us * 1000
        self.atomic_fraction = cfg.background_atomic_fraction
        self.movable_fraction = cfg.background_movable_fraction
        self.tasks: list[Task] = []
        #: Pages each CPU's task holds right now.
        self.held = [0] * len(mm.pcps)

    def start(self) -> None:
        sim = self.mm.kernel.sim
        for cpu in range(len(self.mm.pcps)):
            self.tasks.append(sim.spawn(self._main, cpu, f"memload/{cpu}", workload=False))

    async def _main(self, task: Task) -> None:
        mm = self.mm
        cpu = task.cpu.id
        rng = random.Random(f"rcukit-memload:{self.seed}:{cpu}")
        vmstat = mm.vmstat
        # n x alloc_pages() / free_pages() of single pages, the pcp hits in one frame
        alloc_pages_each = mm.page_alloc.alloc_pages_each
        free_pages_each = mm.page_alloc.free_pages_each
        burst_mean = self.burst
        lo, hi = max(1, burst_mean // 2), max(1, burst_mean + burst_mean // 2)
        # Mean ns between bursts so that bursts * burst_mean = rate pages per ms.
        interval = max(1, burst_mean * 1_000_000 // self.rate_per_ms)
        held: list[tuple[int, int, list[int]]] = []
        seq = 0
        next_burst = task.now_ns + rng.randrange(interval)
        while True:
            now = task.now_ns
            while held and held[0][0] <= now:
                _, _, pfns = heapq.heappop(held)
                self.held[cpu] -= len(pfns)
                await free_pages_each(task, pfns)
                vmstat.inc("background_freed", len(pfns))
            if now >= next_burst:
                n = rng.randint(lo, hi)
                if self.movable_fraction and rng.random() < self.movable_fraction:
                    gfp = MOVABLE_GFP
                else:
                    gfp = ATOMIC_GFP if rng.random() < self.atomic_fraction else KERNEL_GFP
                hold = int(rng.expovariate(1.0 / self.hold_ns)) if self.hold_ns else 0
                got = await alloc_pages_each(task, gfp, n)
                if len(got) < n:
                    vmstat.inc("background_failed")
                vmstat.inc("background_allocated", len(got))
                if got:
                    seq += 1
                    heapq.heappush(held, (task.now_ns + hold, seq, got))
                    self.held[cpu] += len(got)
                next_burst += rng.randint(max(1, interval // 2), interval + interval // 2)
            wake = next_burst
            if held and held[0][0] < wake:
                wake = held[0][0]
            await task.sleep_ns(max(0, wake - task.now_ns))
