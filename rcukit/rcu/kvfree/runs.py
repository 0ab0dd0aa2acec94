"""Run-based floods: ``kmalloc()`` then ``kvfree_rcu()`` of the same object, n times, advanced
one *event horizon* at a time instead of one call at a time.

Between two calls of such a flood nothing observable happens except at a horizon (design.md,
"Run-based execution"): the current block fills (``KVFREE_BULK_MAX_ENTR`` records), the CPU's
cpu slab runs out of free objects (or its free objects stop being consecutive), the monitor would
have something to do (``krcp.mon_quiet_below``), the CPU reaches its next tick (timers, the RCU
tick, preemption: ``cpu.next_tick_ns``). Up to the nearest horizon the flood takes a run of k
consecutive slab objects (:meth:`~rcukit.mm.slab.SlabAllocator.kmalloc_run`), stores them in
the current block as one ``(slab, first index, k)`` segment (the pointer array is written only
when somebody reads it: ``Bnode.fill_records``), bumps the same counters by k and charges
k times the per-call costs (``kmalloc_ns`` and ``raw_lock_ns + kvfree_store_ns``: the CostModel
fields the per-call path charges), so simulated time is the per-call path's.

At a horizon it does exactly what the per-call path would do there: arms the monitor, takes the
preemption point, refills the cpu slab. Whatever is unusual (a new block, with its
allocation under the lock and fallbacks; a slab that cannot be refilled; tracing, debug objects,
polled snapshots, alloc-site tracking, failslab; a head-less call from atomic context) is one
call of the reference per-call path, after which the runs resume. Use-after-free checks and the
quarantine act in ``kfree_bulk()``, which is the same for both paths.
"""

from __future__ import annotations

import random
from array import array
from typing import TYPE_CHECKING

from rcukit.rcu.kvfree.krc import PTR_TYPECODE, KvfreePart
from rcukit.sched.sim import Task

if TYPE_CHECKING:
    from rcukit.mm.slab import Slab
    from rcukit.rcu.kvfree.sim import KvfreeRcu

__all__ = ["KvfreeFlood"]


class KvfreeFlood(KvfreePart):
    """``kvfree_rcu_flood()``: n x (``kmalloc(size, gfp)``; ``kvfree_rcu(p[, p + head])``)."""

    def __init__(self, kv: KvfreeRcu) -> None:
        super().__init__(kv)
        #: Runs taken and calls that went down the per-call path (for profiles and tests).
        self.runs = 0
        self.per_call = 0

    async def kvfree_rcu_flood(
        self,
        task: Task,
        size: int,
        gfp: int,
        n: int,
        head_offset: int | None = None,
        mix: random.Random | None = None,
    ) -> int:
        """Allocate ``n`` objects of ``size`` bytes and queue each with ``kvfree_rcu()``, as
        ``for _ in range(n): p = kmalloc(size, gfp); kvfree_rcu(p, p + head_offset)`` would
        (head-less ``kvfree_rcu_mightsleep(p)`` when ``head_offset`` is None).

        ``mix`` (with ``head_offset``): each call is head-less with probability 1/2, as
        rcuscale's ``kfree_scale_thread`` picks per object. A call of the per-call path draws
        its own bit from ``mix``; a run of k calls draws only how many of its k were head-less
        (the popcount of k random bits), since inside a run both forms do the same thing. So
        the draws are reproducible for a seed but not the per-call loop's sequence.

        Returns when all ``n`` are queued (or freed inline by the head-less fallback), with
        the number of non-NULL objects. Counts, simulated time and the state left behind are
        the per-call loop's (``tests/kvfree/test_run_equivalence.py`` holds them equal).
        """
        kv = self._kv
        mm = self._mm
        slab = mm.slab
        if type(gfp) is not int:
            gfp = int(gfp)
        single = head_offset is None
        if single:
            mix = None
        cache = slab.cache_for(size) if 0 < size <= slab.max_cache_size else None
        may_single = single or mix is not None
        # what the per-call path would reject (no head-less form, an rcu_head outside the
        # object) is left to it, call by call, so it raises the same errors
        runnable = (
            cache is not None
            and (kv._headless or not may_single)
            and (head_offset is None or 0 <= head_offset < cache.size)
        )
        allowed = runnable and slab.runs_allowed(gfp)
        fast_ns = kv._fast_ns
        # what one call charges: kmalloc's cost, then kvfree_rcu's lock and store
        per = (slab.kmalloc_cost(cache, gfp) if cache is not None else 0) + fast_ns
        cap = kv.capacity
        nobj = cache.nobj if cache is not None else 0
        pointers = slab.pointers
        take_run = slab.take_run
        ctr = self._counters
        krcs = kv.krcs
        slow = kv._slow_double
        got = 0
        remaining = n
        while remaining > 0:
            cpu = task.cpu
            krcp = krcs[cpu.id]
            chan = krcp.bulk[0]
            if (
                not allowed
                or cache is None
                or slow
                or (
                    may_single
                    and (task.preempt_count or task.irqs_disabled or task.rcu_read_nesting)
                )
            ):
                got += await self._one(task, size, gfp, head_offset, mix)
                remaining -= 1
                # the first kmalloc validated gfp; debugfs knobs may have changed meanwhile
                allowed = runnable and slab.runs_allowed(gfp)
                continue
            if not chan or chan[-1].nr_records == cap:
                # No block with room: one call of the per-call path. Its kmalloc() from a
                # cpu slab with a free object is a run of one (the same steps and charge),
                # and its kvfree_rcu() would take the slow path at once (the fast path needs
                # a block with room, and nothing in between can yield), so that is called
                # directly. With no free object in the cpu slab it is _one() itself.
                active = cache.cpu_slab[cpu.id]
                if active is None or not active.freelist:
                    got += await self._one(task, size, gfp, head_offset, mix)
                else:
                    self.per_call += 1
                    ptr, _ = slab.kmalloc_run(task, cache, gfp, 1)
                    a = (ptr - active.base) // cache.size
                    head = head_offset
                    if mix is not None and mix.getrandbits(16) & 0x800:
                        head = None
                    await kv._kvfree_slow(task, None if head is None else ptr + head, ptr)
                    # still allocated (not freed by the head-less fallback), it is object a
                    self._tile_one(task, ptr, (active, a) if active.used[a] == 1 else None)
                    got += 1
                remaining -= 1
                allowed = runnable and slab.runs_allowed(gfp)
                continue
            # Runs follow one another here while nothing can have changed what the checks
            # above read: no sleep, no preemption point, no per-call step, no monitor arming.
            # Nothing else runs either, so what only those read stays in locals until the
            # loop ends: the monitor's threshold and the tick cannot move, the block is the
            # channel's last one (only a per-call step adds one) and stays tiled if it was;
            # its record count, the krcp count, the clock, the counters and the run count are
            # written back before anything that could read them. Each run adds as many to
            # the block's records as to the krcp's count and takes as many calls off the
            # flood, so the count-based horizons are record counts of the block: the monitor
            # is armed at quiet_nr, the flood ends at end_nr, the block is full at cap.
            cpu_slab = cache.cpu_slab
            cpu_id = cpu.id
            next_tick = cpu.next_tick_ns
            count = krcp.count
            t = cpu.local_ns
            bnode = chan[-1]
            nr0 = nr = bnode.nr_records
            quiet_nr = krcp.quiet_nr  # mon_quiet_below as a record count of bnode
            end_nr = nr + remaining
            lim = cap if cap < end_nr else end_nr
            stop_nr = quiet_nr if quiet_nr < end_nr else end_nr
            # a new slab is handed out whole (no count-based horizon within it) up to here
            whole_nr = (lim if lim < quiet_nr else quiet_nr) - nobj
            segs = bnode.segs
            tiles = segs if segs is not None and bnode.seg_end == nr else None
            singles = nruns = k = 0
            # a new slab's run is cut by the tick (below) unless its page leaves the clock
            # under this
            whole_below = next_tick - (nobj - 1) * per
            while True:
                active = cpu_slab[cpu_id]
                if active is None or not active.freelist:
                    # kmalloc()'s first step when the cpu slab is full: a partial or new
                    # slab. Without a sleep nothing above has changed: the run goes on. A new
                    # slab that no horizon (below) cuts is handed out whole: a run of all of
                    # it, its freelist never built.
                    cpu.local_ns = t
                    active = slab.kmalloc_refill_nowait(
                        task, cache, gfp, whole_below if nr <= whole_nr else 0
                    )
                    t = cpu.local_ns  # a new slab's page was charged
                    if active is None:
                        break  # the refill may sleep
                fl = active.freelist
                if not fl:
                    a = 0  # handed out whole
                    k = nobj
                else:
                    # k: up to the nearest horizon (plain comparisons: min() costs more)
                    k = lim - nr
                    if k == 0:
                        break  # a new block: the per-call path's
                    if len(fl) < k:
                        k = len(fl)
                    # the call whose count reaches mon_quiet_below arms the monitor: the run
                    # ends
                    quiet = quiet_nr - nr
                    if quiet < k:
                        k = quiet if quiet > 1 else 1
                    # the call whose charge reaches the tick takes the preemption point: ends
                    # too (that call is within k exactly when k - 1 calls' charge reaches it)
                    if t + (k - 1) * per >= next_tick:
                        tick = -((t - next_tick) // per)
                        k = tick if tick > 1 else 1
                    a = fl[-1]
                    k = take_run(active, k)
                if tiles is not None:
                    # the records stay unwritten while segments tile them (Bnode.fill_records)
                    tiles.append((active, a, k))
                else:
                    # a per-call store sits in between: the array is the record from here on
                    if segs is not None:
                        bnode.fill_records()
                        bnode.segs = segs = None
                    run = pointers(active)[8 * a : 8 * (a + k)]
                    bnode.records[nr : nr + k] = array(PTR_TYPECODE, run)
                nr += k
                if mix is not None:
                    singles += mix.getrandbits(k).bit_count()
                t += k * per  # kmalloc's charge and kvfree_rcu's
                nruns += 1
                if nr >= stop_nr or t >= next_tick:
                    break
            taken = nr - nr0
            cpu.local_ns = t
            bnode.nr_records = nr
            krcp.count = count + taken
            if tiles is not None:
                bnode.seg_end = nr
            if single:
                ctr.fast_single += taken
            elif mix is None:
                ctr.fast_double += taken
            else:
                ctr.fast_single += singles
                ctr.fast_double += taken - singles
            self.runs += nruns
            got += taken
            remaining -= taken
            if active is None:
                if await slab.kmalloc_refill(task, cache, gfp) is None:
                    # kmalloc() returned NULL; kvfree_rcu(NULL) does nothing
                    remaining -= 1
                    if mix is not None:
                        mix.getrandbits(16)
            elif k:  # (a full block is the next pass's per-call step)
                if nr >= quiet_nr:
                    kv._arm_monitor(task, krcp)
                if t >= next_tick:
                    await task.preempt_point()
        return got

    async def _one(
        self, task: Task, size: int, gfp: int, head_offset: int | None, mix: random.Random | None
    ) -> int:
        """One call of the reference path: ``kmalloc`` then ``kvfree_rcu``; with ``mix``, a
        head-less one when the drawn bit says so (rcuscale's ``torture_random() & 0x800``)."""
        self.per_call += 1
        slab = self._mm.slab
        ptr = await slab.kmalloc(task, size, gfp)
        if mix is not None and mix.getrandbits(16) & 0x800:
            head_offset = None
        kv = self._kv
        await kv.kvfree_rcu(task, ptr, None if head_offset is None else ptr + head_offset)
        if not ptr:
            return 0
        self._tile_one(task, ptr)
        return 1

    def _tile_one(self, task: Task, ptr: int, where: tuple[Slab, int] | None = None) -> None:
        """If ``ptr`` went into a block right after that block's segments (typically as the
        first record of a new block), it is a one-object segment: the block stays tiled.
        ``where``: its ``(slab, index)`` when the caller knows it."""
        kv = self._kv
        chan = kv.krcs[task.cpu.id].bulk[0]
        if chan:
            bnode = chan[-1]
            end = bnode.seg_end
            if (
                bnode.segs is not None
                and end == bnode.nr_records - 1
                and bnode.records[end] == ptr
            ):
                if where is None:
                    where = self._mm.slab.slab_index(ptr)
                if where is not None:
                    bnode.segs.append((where[0], where[1], 1))
                    bnode.seg_end = end + 1
