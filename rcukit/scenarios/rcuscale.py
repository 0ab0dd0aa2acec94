"""rcuscale's ``kfree_rcu_test``, on the simulated kernel.

The kernel's test (kernel.md section 5; ``kernel/rcu/rcuscale.c`` ``kfree_scale_thread``):
``kfree_nthreads`` threads, each bound to CPU ``me % nr_cpus``, run ``kfree_loops`` loops of
``kfree_alloc_num`` x (``kmalloc`` then a kfree variant) with a ``cond_resched()`` per loop.
All figures come from simulated time and simulated memory.

The three ways an object is freed (the ``mode``):

* ``kfree_rcu`` (default): ``kfree_rcu(p, rh)`` or ``kfree_rcu_mightsleep(p)``, chosen per
  object by ``kfree_rcu_test_single``/``_double`` (both equal: ``torture_random() & 0x800``
  picks single). Objects go into kvfree_rcu's per-CPU blocks and leave through
  ``kfree_bulk()``: few RCU callbacks (one ``rcu_work`` per batch), no per-object kfree().
* ``kfree_by_call_rcu`` (rcuscale.c, v6.2+ [inferred from the lazy-RCU series of 2022-10]):
  ``call_rcu(&p->rh, kfree_call_rcu)`` for *every* object, before the single/double choice
  is made (the thread ``continue``s), so those flags do nothing. The callback is a function:
  ``container_of()`` back to the object, then ``kfree()``. The kernel accepts the parameter
  only with ``CONFIG_RCU_LAZY``; laziness applies only on offloaded (``rcu_nocbs``) CPUs
  (``__call_rcu_common`` sends lazy callbacks to ``call_rcu_nocb`` only when
  ``rcu_rdp_is_offloaded``), and the simulated kernel offloads none, so these callbacks are
  queued and invoked like any other.
* ``no_batch``: kfree_rcu before batching. Up to v5.4 ``kfree_rcu(p, rh)`` was
  ``kfree_call_rcu(&p->rh, (rcu_callback_t)offsetof(..., rh))``; in v5.5 the old path stayed as
  ``kfree_call_rcu_nobatch()``, used by rcuperf's ``kfree_no_batch=1`` (removed in v5.6,
  "rcu: Remove kfree_call_rcu_nobatch()"). One callback per object whose "function" is the
  offset of the rcu_head; ``rcu_do_batch`` hands it to ``__rcu_reclaim`` (``kernel/rcu/rcu.h``),
  which sees ``__is_kfree_rcu_offset()`` and calls ``kfree(head - offset)`` itself instead of
  calling through the pointer. No single-argument form existed (v5.9).

The per-object modes therefore count the same things: one callback and one ``kfree()`` per
object, grace periods driven by the callback flood, and the memory the queued objects hold.
They differ in *which* callback runs (offset reclaim vs ``kfree_call_rcu``), which the result
counts separately; the simulation has no cost for the indirect call the offset trick saves, so
their closing lines match (as the kernel's would, apart from noise, on non-offloaded CPUs).

Measurement, as ``kfree_scale_thread`` does it, per thread: ``start_time`` on entry; the last
thread to start samples ``get_gp_seq()``; ``mem_begin = mem_during = si_mem_available()`` at the
first loop, then ``mem_during = (mem_during + si_mem_available()) / 2`` when ``loop %
(kfree_loops / 4) == 0``. These are the thread's locals. The last thread to finish
(``atomic_inc_return(&n_kfree_scale_thread_ended) >= kfree_nrealthreads``) samples
``get_gp_seq()`` again and prints, from *its own* locals, ``Total time taken by all kfree'ers:
%llu ns, loops: %d, batches: %ld, memory footprint: %lldMB`` (the text since the footprint
was added to rcuperf in 2020, v5.7 [inferred], and in every rcuscale.c since, v6.1 included;
v5.5's rcuperf line ended at ``batches: %ld``). ``batches`` is ``rcu_seq_diff(end, start)``;
the footprint is ``(mem_begin - mem_during) >> (20 - PAGE_SHIFT)``, a signed value the kernel
does not clamp.

Run-based execution (the default; ``per_call=True`` / ``--per-call`` runs the reference loop):
in the ``kfree_rcu`` mode each loop's ``kfree_alloc_num`` objects are one
``kvfree.kvfree_rcu_flood()`` (:mod:`rcukit.rcu.kvfree.runs`), which advances from one event
horizon to the next (a block boundary, the end of the cpu slab's free objects, the monitor,
the tick) instead of call by call, with the same counts and simulated time as the per-call loop
(``tests/kvfree/test_run_equivalence.py``). Loop boundaries, and with them the memory samples,
``cond_resched()`` and the start/end bookkeeping, are unchanged. One thing differs by design:
with both forms in play the kernel draws ``torture_random() & 0x800`` per object; a run draws
only how many of its calls were head-less (the popcount of as many random bits), and a call
taken on the per-call path (at a block boundary, where the form matters) draws its own bit.
Same seed, same result, but not the per-call loop's sequence of draws, so the two paths agree
exactly with ``kfree_rcu_test_single`` or ``_double`` alone and closely, not exactly, with
both. ``no_batch`` and ``kfree_by_call_rcu`` queue one ``call_rcu()`` callback per object and
stay per call (callback lists hold no runs yet). ``rcukit rcuscale`` runs with the KASAN
quarantine off (``mm.debug_quarantine = 0``) unless a ``--config`` file says otherwise.

What it prints is what the kernel's console shows with ``rcuscale.verbose=0``:
``kfree_scale_init()``'s two lines, the parameters as given (``"rcu-scale:--- kfree_rcu_test:
..."``, the form since v6.6, "rcuscale: Print out full set of kfree_rcu parameters", 2023-07)
and ``kfree object size=%zu, kfree_by_call_rcu=%d`` (since v6.2), then the last finisher's
closing line. With the default ``verbose=1`` the torture framework adds a line as each thread
is created, starts and stops (``Creating kfree_scale_thread task``, ``kfree_scale_thread task
started``, ``Stopping kfree_scale_thread``); those are left out. The lines are rcuscale.c's as
of v6.6 whatever kvfree_rcu profile runs under it: v5.5's rcuperf printed ``rcu-perf:`` and no
banner, and its closing line stopped at ``batches``.

``si_mem_available()`` is modelled as the free pages of the buddy allocator: the simulated
kernel has no page cache or reclaimable slab to add. With 2 or 3 loops the kernel's
``loop % (kfree_loops / 4)`` divides by zero on the second loop; the model skips the average
(as if ``kfree_loops < 4`` never samples again) rather than crashing.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs

from rcukit.config import KernelConfig
from rcukit.errors import ConfigError
from rcukit.kernel import Kernel, boot, run_sim
from rcukit.mm.gfp import GFP_KERNEL
from rcukit.rcu.gpseq import rcu_seq_diff
from rcukit.rcu.profiles import get_profile
from rcukit.rcu.segcblist import RcuHead
from rcukit.sched.sim import Task

_GFP_KERNEL = int(GFP_KERNEL)

#: ``scale_type`` (the RCU flavour tested) and ``SCALE_FLAG``: rcuscale's prefix of its own lines.
SCALE_TYPE = "rcu"
SCALE_FLAG = "-scale:"

#: ``struct kfree_obj { char kfree_obj[8]; struct rcu_head rh; }`` on 64-bit: 24 bytes.
KFREE_OBJ_SIZE = 24
KFREE_OBJ_RH_OFFSET = 8


def _is_int(name: str) -> Any:
    def check(inst: object, att: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{att.name} = {value!r}: it must be an integer")

    return check


def compute_real(n: int, nr_cpus: int) -> int:
    """rcuscale's ``compute_real()``: ``n`` itself if non-negative; otherwise that many CPUs
    fewer than all plus one (-1: every CPU, -2: all but one), but at least one."""
    if n >= 0:
        return n
    return max(nr_cpus + 1 + n, 1)


def _nonneg(name: str, lo: int) -> Any:
    def check(inst: object, att: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ConfigError(f"{att.name} = {value!r}: it must be an integer >= {lo}")

    return check


@attrs.frozen
class RcuscaleParams:
    """rcuscale's module parameters for the kfree test (same names, same defaults)."""

    #: Threads; a negative value counts back from the CPUs (:func:`compute_real`).
    kfree_nthreads: int = attrs.field(default=-1, validator=_is_int("kfree_nthreads"))
    kfree_alloc_num: int = attrs.field(default=8000, validator=_nonneg("kfree_alloc_num", 1))
    kfree_loops: int = attrs.field(default=10, validator=_nonneg("kfree_loops", 1))
    kfree_rcu_test_single: bool = False
    kfree_rcu_test_double: bool = False
    kfree_by_call_rcu: bool = False
    kfree_mult: int = attrs.field(default=1, validator=_nonneg("kfree_mult", 1))
    #: Pre-5.5 kfree_rcu: one offset-encoded callback per object (rcuperf's v5.5
    #: ``kfree_no_batch``).
    no_batch: bool = False

    def __attrs_post_init__(self) -> None:
        if self.no_batch and self.kfree_by_call_rcu:
            raise ConfigError(
                "no_batch and kfree_by_call_rcu together: rcuperf's kfree_no_batch (v5.5) and "
                "rcuscale's kfree_by_call_rcu (v6.2+) never existed in the same kernel"
            )

    @property
    def mode(self) -> str:
        """How each object is freed: ``kfree_rcu``, ``kfree_by_call_rcu`` or ``no_batch``."""
        if self.no_batch:
            return "no_batch"
        return "kfree_by_call_rcu" if self.kfree_by_call_rcu else "kfree_rcu"


@attrs.frozen
class RcuscaleCounts:
    """What the run did, counted after the final barrier (every object freed)."""

    #: RCU callbacks invoked (all of them: per-object ones, kvfree's rcu_work, barriers).
    callbacks_invoked: int
    #: Per-object callbacks reclaimed by ``__rcu_reclaim``'s kfree-offset branch (no_batch).
    kfree_offset_callbacks: int
    #: Per-object callbacks that called rcuscale's ``kfree_call_rcu`` (kfree_by_call_rcu).
    kfree_call_rcu_callbacks: int
    #: Single-object ``kfree()``/``kvfree()`` calls: the per-object callbacks, plus kvfree_rcu's
    #: rcu_head-list fallback and head-less synchronous fallback.
    kfree_calls: int
    #: ``kfree_bulk()`` calls made by kvfree_rcu's reclaim work.
    kfree_bulk_calls: int
    #: Grace periods completed between boot and the end of the final barrier.
    grace_periods: int


@attrs.frozen
class RcuscaleResult:
    params: RcuscaleParams
    config: KernelConfig
    nthreads: int
    total_time_ns: int
    loops: int
    batches: int
    memory_footprint_mb: int
    records_per_block_mean: float
    objects: int
    counts: RcuscaleCounts
    #: Each thread's own ``(mem_begin - mem_during)`` in MB, by thread index.
    thread_footprints_mb: tuple[int, ...]
    #: The thread that finished last and printed the closing line.
    last_finisher: int

    def banner(self) -> str:
        """``kfree_scale_init()``'s two lines: the parameters as given (``kfree_nthreads`` raw,
        so -1 by default), with rcuscale's ``"%s" SCALE_FLAG`` prefix, then the object size."""
        p = self.params
        return (
            f"{SCALE_TYPE}{SCALE_FLAG}--- kfree_rcu_test: kfree_mult={p.kfree_mult} "
            f"kfree_by_call_rcu={int(p.kfree_by_call_rcu)} kfree_nthreads={p.kfree_nthreads} "
            "kfree_alloc_num="
            f"{p.kfree_alloc_num} kfree_loops={p.kfree_loops} kfree_rcu_test_double="
            f"{int(p.kfree_rcu_test_double)} kfree_rcu_test_single={int(p.kfree_rcu_test_single)}"
            f"\nkfree object size={p.kfree_mult * KFREE_OBJ_SIZE}, kfree_by_call_rcu="
            f"{int(p.kfree_by_call_rcu)}"
        )

    def closing_line(self) -> str:
        return (
            f"Total time taken by all kfree'ers: {self.total_time_ns} ns, loops: {self.loops}, "
            f"batches: {self.batches}, memory footprint: {self.memory_footprint_mb}MB"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "params": attrs.asdict(self.params),
            "mode": self.params.mode,
            "profile": self.config.kvfree.profile,
            "variant": self.config.kvfree.variant,
            "seed": self.config.seed,
            "nthreads": self.nthreads,
            "objects": self.objects,
            "total_time_ns": self.total_time_ns,
            "loops": self.loops,
            "batches": self.batches,
            "memory_footprint_mb": self.memory_footprint_mb,
            "thread_footprints_mb": list(self.thread_footprints_mb),
            "last_finisher": self.last_finisher,
            "records_per_block_mean": round(self.records_per_block_mean, 2),
            **attrs.asdict(self.counts),
        }


class _KfreeObj(RcuHead):
    """The ``rh`` of one ``struct kfree_obj``: ``rh`` is its address, ``offset`` what a
    pre-5.5 kfree_rcu stored in ``rh.func`` (``offsetof(struct kfree_obj, rh)``)."""

    __slots__ = ("offset", "rh")

    def __init__(self, rh: int, offset: int = 0) -> None:
        super().__init__(None)
        self.rh = rh
        self.offset = offset


@attrs.define
class _Kfreer:
    """One ``kfree_scale_thread``'s locals."""

    start_ns: int = 0
    end_ns: int = 0
    mem_begin: int = 0
    mem_during: int = 0


def _check_profile(p: RcuscaleParams, config: KernelConfig) -> None:
    """Before v5.9 there was no head-less kvfree_rcu(), so no ``kfree_rcu_test_single``."""
    if p.kfree_rcu_test_single and not get_profile(config.kvfree.profile).headless:
        raise ConfigError(
            f"kfree_rcu_test_single: profile {config.kvfree.profile} has no head-less "
            "kvfree_rcu(ptr) (it arrived in v5.9); its kfree'ers pass the rcu_head"
        )


async def run_rcuscale_async(
    params: RcuscaleParams, config: KernelConfig, *, per_call: bool = False
) -> RcuscaleResult:
    """Run the test; ``per_call`` takes the reference path (one ``kmalloc`` and one
    ``kvfree_rcu`` call per object) instead of run-based floods (module docstring)."""
    _check_profile(params, config)
    async with boot(config) as k:
        return await _run(k, params, per_call)


def run_rcuscale(
    params: RcuscaleParams, config: KernelConfig | None = None, *, per_call: bool = False
) -> RcuscaleResult:
    cfg = config or KernelConfig()
    _check_profile(params, cfg)
    box: dict[str, RcuscaleResult] = {}

    async def main() -> None:
        box["r"] = await run_rcuscale_async(params, cfg, per_call=per_call)

    run_sim(main)
    return box["r"]


#: ``gc.set_threshold()`` inside :func:`fewer_gc_passes`: a young pass per 100,000 container
#: allocations (default 700), the middle one every 50 of those, the full one every 100 middle
#: ones.
GC_THRESHOLDS = (100_000, 50, 100)


@contextmanager
def fewer_gc_passes() -> Iterator[None]:
    """Python's cyclic collector runs less often inside the block (thresholds restored after).

    A run-based flood allocates and drops a few container objects per slab page and per
    block (slabs, segments, blocks), none of them in a cycle, so the collector's passes find
    almost nothing and cost 3-7 % of the wall time. Nothing in the simulation depends on when
    garbage is collected (no finalizers, no weak references), so results are the same: only
    fewer, larger passes. The thresholds are the interpreter's, so the library never sets
    them itself: ``rcukit rcuscale`` (a process of its own) wraps its run in this, and so may
    a caller of :func:`run_rcuscale` that owns its process."""
    old = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*old)


async def _run(k: Kernel, p: RcuscaleParams, per_call: bool) -> RcuscaleResult:
    nr = k.config.nr_cpus
    nthreads = compute_real(p.kfree_nthreads, nr)
    if nthreads == 0:
        raise ConfigError("kfree_nthreads = 0: at least one kfree'er thread is needed")
    size = p.kfree_mult * KFREE_OBJ_SIZE
    mode = p.mode
    # The kernel's atomics and globals: started/ended counters, b_rcu_gp_test_*.
    shared = {"started": 0, "ended": 0, "gp_start": 0, "gp_end": 0, "last": -1}
    ctr = {"offset": 0, "call_rcu": 0}
    mb_shift = 20 - (k.config.page_size.bit_length() - 1)
    mm = k.mm
    kv = k.kvfree
    rcu = k.rcu
    # Before v5.9 every kfree_rcu() passes its rcu_head (there is no head-less form).
    headless = kv.policy.headless
    threads = [_Kfreer() for _ in range(nthreads)]

    async def rcu_reclaim_kfree_offset(task: Task, head: RcuHead) -> None:
        # __rcu_reclaim(): head->func is an offset, so kfree((void *)head - offset) directly.
        assert isinstance(head, _KfreeObj)
        ctr["offset"] += 1
        await mm.slab.kfree(task, head.rh - head.offset, cache_miss=True)

    async def kfree_call_rcu(task: Task, head: RcuHead) -> None:
        # rcuscale.c's callback: container_of(rh, struct kfree_obj, rh), then kfree().
        assert isinstance(head, _KfreeObj)
        ctr["call_rcu"] += 1
        await mm.slab.kfree(task, head.rh - KFREE_OBJ_RH_OFFSET, cache_miss=True)

    async def si_mem_available(task: Task) -> int:
        await task.sync()  # a global counter: read it at this CPU's time
        return mm.nr_free_pages()

    runs = not per_call and mode == "kfree_rcu"

    async def kfree_flood(task: Task, rng: random.Random, both: bool) -> None:
        # One loop's kfree_alloc_num objects as one run-based flood; with both forms in play,
        # the flood draws head-less vs two-argument from the thread's generator (per run, see
        # KvfreeFlood.kvfree_rcu_flood), not bit by bit in the per-call loop's sequence.
        n = p.kfree_alloc_num
        if p.kfree_rcu_test_single and not p.kfree_rcu_test_double:
            await kv.kvfree_rcu_flood(task, size, _GFP_KERNEL, n)
            return
        mix = rng if both and headless else None
        await kv.kvfree_rcu_flood(task, size, _GFP_KERNEL, n, KFREE_OBJ_RH_OFFSET, mix)

    async def kfree_scale_thread(task: Task) -> None:
        me: int = task.data["me"]
        mine = threads[me]
        rng = random.Random(f"{k.config.seed}:kfree:{me}")
        both = p.kfree_rcu_test_single == p.kfree_rcu_test_double
        mine.start_ns = task.now_ns
        await task.sync()
        shared["started"] += 1
        if shared["started"] >= nthreads:
            shared["gp_start"] = rcu.gp_seq
        quarter = p.kfree_loops // 4
        for loop in range(p.kfree_loops):
            if loop == 0:
                mine.mem_begin = mine.mem_during = await si_mem_available(task)
            elif quarter and loop % quarter == 0:
                mine.mem_during = (mine.mem_during + await si_mem_available(task)) // 2
            if runs:
                await kfree_flood(task, rng, both)
                await task.cond_resched()
                continue
            for _ in range(p.kfree_alloc_num):
                ptr = await mm.kmalloc(task, size, _GFP_KERNEL)
                rh = ptr + KFREE_OBJ_RH_OFFSET
                if mode == "kfree_by_call_rcu":
                    rcu.call_rcu(task, _KfreeObj(rh), kfree_call_rcu)
                    continue
                if mode == "no_batch":
                    head = _KfreeObj(rh, KFREE_OBJ_RH_OFFSET)
                    rcu.call_rcu(task, head, rcu_reclaim_kfree_offset)
                    continue
                if p.kfree_rcu_test_single and not p.kfree_rcu_test_double:
                    single = True
                else:
                    single = both and headless and bool(rng.getrandbits(16) & 0x800)
                if single:
                    await kv.kvfree_rcu_mightsleep(task, ptr)
                else:
                    await kv.kvfree_rcu(task, ptr, rh)
            await task.cond_resched()
        await task.sync()
        mine.end_ns = task.now_ns
        shared["ended"] += 1
        if shared["ended"] >= nthreads:
            shared["gp_end"] = rcu.gp_seq
            shared["last"] = me

    for me in range(nthreads):
        t = k.spawn(kfree_scale_thread, me % nr, f"kfree_scale_thread/{me}")
        t.data["me"] = me
    await k.run()
    last = shared["last"]
    lt = threads[last]

    async def barrier(task: Task) -> None:
        await kv.kvfree_rcu_barrier(task)
        await rcu.rcu_barrier(task)

    k.spawn(barrier, 0, "rcuscale_barrier")
    await k.run()
    # After the barrier: every block has been through kfree_bulk() and is in the histogram.
    stats = kv.statistics()
    rstats = rcu.statistics()
    counts = RcuscaleCounts(
        callbacks_invoked=rstats.callbacks_invoked,
        kfree_offset_callbacks=ctr["offset"],
        kfree_call_rcu_callbacks=ctr["call_rcu"],
        kfree_calls=ctr["offset"] + ctr["call_rcu"] + stats.fallback_rcu_head
        + stats.fallback_synchronize,
        kfree_bulk_calls=stats.bulk_calls,
        grace_periods=rstats.completed_gps,
    )
    return RcuscaleResult(
        params=p,
        config=k.config,
        nthreads=nthreads,
        total_time_ns=lt.end_ns - lt.start_ns,
        loops=p.kfree_loops,
        batches=rcu_seq_diff(shared["gp_end"], shared["gp_start"]),
        memory_footprint_mb=(lt.mem_begin - lt.mem_during) >> mb_shift,
        records_per_block_mean=stats.records_per_block_mean,
        objects=nthreads * p.kfree_loops * p.kfree_alloc_num,
        counts=counts,
        thread_footprints_mb=tuple((t.mem_begin - t.mem_during) >> mb_shift for t in threads),
        last_finisher=last,
    )
