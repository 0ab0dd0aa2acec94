"""The RFC's question, measured: every block-allocator variant under every kernel build.

One simulated machine and one workload for every row: ``flood_cpus`` CPUs flood
``kvfree_rcu()`` with a mix of head-less and two-argument calls on slab and vmalloc pointers
for a second of simulated time (100,000 objects per CPU, one every 10 us), while every CPU also
runs "other kernel users" that allocate and free pages in bursts, so pcp lists run dry and
refill under ``zone->lock`` as they do in life. The machine is the RFC author's kind: a zone of
1 GiB (so the pcp lists have the RFC's batch of 63 pages and a high mark of 378) with little
free memory. Only the profile (which kernel), the variant (how a block page is obtained inside
``krcp->lock``) and the build (default / PROVE_RAW_LOCK_NESTING / PREEMPT_RT) change from row to
row, so every difference in the table is theirs.
"""

from __future__ import annotations

import gc
import math
import random
from collections.abc import Callable, Sequence
from concurrent.futures import Future, as_completed
from typing import Any, Protocol

import attrs

from rcukit.config import KERNEL_CONFIG_NAMES, KernelConfig, config_to_dict
from rcukit.errors import ConfigError, did_you_mean
from rcukit.kernel import Kernel, boot, run_sim
from rcukit.mm.gfp import GFP_KERNEL
from rcukit.rcu.kvfree.variants import BlockPageSource, BlockSources
from rcukit.rcu.profiles import DEFAULT_PROFILES, get_profile
from rcukit.scenarios.executors import open_executor
from rcukit.scenarios.verdict import judge
from rcukit.sched.sim import Task

_GFP_KERNEL = int(GFP_KERNEL)

#: How a worker process gets the users' block sources: a picklable callable (a module-level
#: function, or a functools.partial of one over plain data such as ``MODULE:ATTR`` specs).
#: Source objects themselves need not pickle (the mempool example holds a WeakKeyDictionary).
SourcesLoader = Callable[[], Sequence[BlockPageSource]]

VARIANTS = ("fast-try", "nowait", "gfp-zero", "raw-zone-lock", "page-cache", "nolock")
SPLAT_KEYS = ("invalid_wait_context", "scheduling_while_atomic", "sleeping_in_atomic")


def _int_at_least(lo: int) -> Any:
    # A [compare] table is user input: a string or a negative count must be named, not crash.
    def check(inst: object, att: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ConfigError(f"compare.{att.name} = {value!r}: expected an integer >= {lo}")

    return check


def _fraction(inst: object, att: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"compare.{att.name} = {value!r}: expected a number from 0 to 1")


def _bool(inst: object, att: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"compare.{att.name} = {value!r}: expected true or false")


@attrs.frozen
class Workload:
    """What every row runs. ``scale`` multiplies the number of objects."""

    #: CPUs flooding kvfree_rcu() (the first ones; at most the machine's).
    flood_cpus: int = attrs.field(default=4, validator=_int_at_least(1))
    #: Objects each flooding CPU allocates and frees.
    objects_per_cpu: int = attrs.field(default=100_000, validator=_int_at_least(1))
    #: Share of head-less kvfree_rcu(ptr) calls (from v5.9; the rest pass their rcu_head).
    single_fraction: float = attrs.field(default=0.25, validator=_fraction)
    #: Share of objects from vmalloc() rather than kmalloc().
    vmalloc_fraction: float = attrs.field(default=0.02, validator=_fraction)
    #: Object size in bytes.
    object_size: int = attrs.field(default=64, validator=_int_at_least(1))
    #: Offset of the object's rcu_head in bytes.
    rcu_head_offset: int = attrs.field(default=16, validator=_int_at_least(0))
    #: Work the caller does per object between calls (simulated ns): with the default count a
    #: flood lasts a second, so blocks fill, drain and refill (and the shrinker, kswapd and
    #: many grace periods run) while it goes on, as in a kernel's life.
    think_ns: int = attrs.field(default=10_000, validator=_int_at_least(0))
    #: cond_resched() every N calls, as rcuscale's kfree loop does once per loop.
    resched_every: int = attrs.field(default=256, validator=_int_at_least(1))
    #: Finish with kvfree_rcu_barrier() so every object is accounted freed.
    barrier: bool = attrs.field(default=True, validator=_bool)

    def scaled(self, scale: float) -> Workload:
        if not (scale > 0 and math.isfinite(scale)):
            raise ConfigError(f"scale = {scale!r}: it must be a finite number > 0")
        return attrs.evolve(self, objects_per_cpu=max(1, int(self.objects_per_cpu * scale)))


def default_config() -> KernelConfig:
    """The machine of ``rcukit compare``: 4 CPUs, a squeezed 1 GiB zone, busy neighbours.

    1 GiB of 4 KiB pages is the smallest zone whose pcp batch is the RFC's 63 pages (high 378,
    kernel.md 3.3); 96.5 % of it is in use at boot, which leaves a few times WMARK_MIN free, the
    squeeze the RFC's allocations meet. Debug features that cost time per object (KASAN-style
    quarantine) are off: the question is about locks and failures, not use-after-free.
    """
    base = KernelConfig(nr_cpus=4)
    return base.replace(
        **{
            "mm.zone_pages": 262_144,
            # Neighbours take 50 pages a millisecond per CPU in bursts of 320, most of a pcp
            # list's high mark of 378, so the lists run dry now and then and a block
            # allocation may meet one empty (the RFC's rmqueue_bulk() under zone->lock).
            "mm.background_allocs_per_ms": 50,
            "mm.background_burst": 320,
            "mm.initial_used_fraction": 0.965,
            "mm.debug_quarantine": 0,
            # A long-running machine: free memory scattered in small MOVABLE blocks, half the
            # neighbours' pages movable, so unmovable requests steal, boost the watermark and
            # wake kswapd from rmqueue() (kernel.md 8.2).
            "mm.initial_free_max_order": 8,
            "mm.background_movable_fraction": 0.5,
            "kvfree.profile": DEFAULT_PROFILES["compare"],
        }
    )


def _row_data(k: Kernel, variant: str, kernel_config: str) -> dict[str, Any]:
    kv = k.kvfree.statistics()
    rcu_stats = k.rcu.statistics()
    splats = k.splat_counts()
    locks = k.locks.statistics()
    vm = k.vmstat
    attempts = kv.block_alloc_in_lock
    return {
        "profile": k.config.kvfree.profile,
        "variant": variant,
        "kernel_config": kernel_config,
        "kvfree_calls": kv.calls,
        "kvfree_calls_single": kv.calls_single,
        # The variant's calls under krcp->lock: what the RFC is about.
        "block_alloc_attempts": attempts,
        "block_alloc_failures": kv.block_alloc_in_lock_failures,
        "block_alloc_failure_pct": round(100.0 * kv.block_alloc_in_lock_failures / attempts, 2)
        if attempts
        else 0.0,
        # Every block page allocated: the in-lock ones, the page-cache worker's refills and
        # the v5.13+ head-less allocations made with the lock dropped.
        # In-lock block pages of another migratetype than asked for (unmovable blocks in
        # movable or reclaimable pageblocks), kept apart as the kernel would report them: the
        # RFC loop's picks from another pcp list (no kernel event), and fragmenting
        # __rmqueue_fallback() steals (mm_page_alloc_extfrag fragmenting=1).
        "block_pages_other_mt_pcp": vm["pcp_alloc_other_mt_in_krcp"],
        "block_alloc_extfrag": vm["extfrag_fragmenting_in_krcp"],
        "block_alloc_all": kv.block_alloc_attempts,
        "block_alloc_all_failures": kv.block_alloc_failures,
        "blocks_from_cache": kv.blocks_from_cache,
        "fallback_rcu_head": kv.fallback_rcu_head,
        "fallback_synchronize": kv.fallback_synchronize,
        "splats": {key: splats.get(key, 0) for key in SPLAT_KEYS},
        "splat_sites": k.locks.unique_sites(),
        "reports_printed": locks.reports_printed,
        "first_report": locks.first_report,
        # The kernel's taint letters at the end ("" untainted; W from a printed might-sleep or
        # scheduling-while-atomic report, B from KASAN: rcukit.panic).
        "tainted": k.panic.taint,
        "violations": [
            {"kind": kind, "lock": lock, "ip": ip}
            for kind, lock, ip in dict.fromkeys(
                (sp.kind, sp.lock_name, sp.ip) for sp in k.locks.splats if sp.kind in SPLAT_KEYS
            )
        ],
        "kswapd_wakeups": vm["kswapd_wake"],
        "kswapd_wakeups_in_krcp": vm["kswapd_wakeups_in_krcp"],
        "kswapd_wake_boosted": vm["kswapd_wake_boosted"],
        "watermark_boosts": vm["watermark_boosts"],
        "zone_lock_acquisitions": vm["zone_lock_acquisitions"],
        "zone_lock_in_krcp": vm["zone_lock_in_krcp"],
        "pcp_lock_in_krcp": vm["pcp_lock_in_krcp"],
        "pcp_refills": vm["pcp_refill"],
        "grace_periods": rcu_stats.completed_gps,
        "gp_duration_ns": {
            "p50": rcu_stats.gp_duration_p50_ns,
            "max": rcu_stats.gp_duration_max_ns,
        },
        "batches": kv.batches_queued,
        "objects_freed": kv.objects_freed,
        # Blocks (or rcu_head lists) reclaimed before a full grace period since they were
        # detached: the pre-6.3 krwp reuse bug when it strikes (kernel.md 8.7).
        "gp_violations": kv.gp_violations,
        "objects_pending": kv.pending,
        "records_per_block_mean": round(kv.records_per_block_mean, 2),
        "records_per_block": {str(n): c for n, c in kv.records_per_block.items()},
        "pending_peak": kv.pending_peak,
        "pages_peak": kv.pages_peak,
        "latency_ns": {
            "p50": kv.latency_percentile(0.50),
            "p99": kv.latency_percentile(0.99),
            "p999": kv.latency_percentile(0.999),
            "p9999": kv.latency_percentile(0.9999),
            "max": max(kv.latency_ns) if kv.latency_ns else 0,
        },
        "sim_time_ns": k.now_ns,
        "timeline": [list(t) for t in k.kvfree.timeline],
    }


async def _flood(k: Kernel, w: Workload, task: Task) -> int:
    rng = random.Random(f"{k.config.seed}:{task.cpu.id}")
    mm = k.mm
    kv = k.kvfree
    # Before v5.9 there is no head-less kvfree_rcu(): every call passes its rcu_head.
    single_f = w.single_fraction if kv.policy.headless else 0.0
    vm_f = w.vmalloc_fraction
    size = w.object_size
    off = w.rcu_head_offset
    every = w.resched_every
    think = w.think_ns
    for i in range(w.objects_per_cpu):
        task.charge(think)
        if vm_f and rng.random() < vm_f:
            ptr = await mm.vmalloc(task, size)
        else:
            ptr = await mm.kmalloc(task, size, _GFP_KERNEL)
        if single_f and rng.random() < single_f:
            await kv.kvfree_rcu_mightsleep(task, ptr)
        else:
            await kv.kvfree_rcu(task, ptr, ptr + off)
        if i % every == every - 1:
            await task.cond_resched()
    return w.objects_per_cpu


async def run_row_async(
    config: KernelConfig, workload: Workload, variant: str, kernel_config: str,
    *, trace: bool = False, block_sources: Sequence[BlockPageSource] = (),
    tracing: Callable[[Kernel], None] | None = None,
) -> tuple[dict[str, Any], Kernel]:
    """``tracing`` (if given) sets up the booted kernel's tracer instead of ``trace``."""
    cfg = config.with_kernel_config(kernel_config).replace(**{"kvfree.variant": variant})
    async with boot(cfg, block_sources=block_sources) as k:
        if tracing is not None:
            tracing(k)
        elif trace:
            k.tracer.enable()
        cpus = list(range(min(workload.flood_cpus, cfg.nr_cpus)))

        async def flood(task: Task) -> int:
            n = await _flood(k, workload, task)
            return n

        tasks = [k.spawn(flood, c, f"kvfree_flood/{c}") for c in cpus]
        await k.run()
        if workload.barrier:
            async def barrier(task: Task) -> None:
                await k.kvfree.kvfree_rcu_barrier(task)

            k.spawn(barrier, 0, "kvfree_barrier")
            await k.run()
        del tasks
        return _row_data(k, variant, kernel_config), k


def run_row(
    config: KernelConfig, workload: Workload, variant: str, kernel_config: str,
    *, trace: bool = False, block_sources: Sequence[BlockPageSource] = (),
    tracing: Callable[[Kernel], None] | None = None,
) -> tuple[dict[str, Any], Kernel]:
    box: dict[str, Any] = {}

    async def main() -> None:
        box["r"] = await run_row_async(
            config, workload, variant, kernel_config, trace=trace, block_sources=block_sources,
            tracing=tracing,
        )

    run_sim(main)
    result: tuple[dict[str, Any], Kernel] = box["r"]
    return result


class RowTracing(Protocol):
    """A row's trace (:class:`rcukit.scenarios.trace_files.RowTrace`): plain data, so it goes
    to the worker process with the row; hooked to the row's kernel once booted, closed after."""

    def attach(self, k: Kernel) -> None: ...
    def close(self) -> None: ...


def row_data(
    config: KernelConfig, workload: Workload, variant: str, kernel_config: str,
    *, block_sources: Sequence[BlockPageSource] = (), load_sources: SourcesLoader | None = None,
    trace: RowTracing | None = None,
) -> dict[str, Any]:
    """One row's data, its kernel released; ``trace`` (if given) traces the row's kernel.

    A finished kernel is cyclic garbage (tasks, locks, CPUs and subsystems point at each other),
    which reference counting never frees: without a collection here, once per row after its
    data is extracted, the process grows row on row. Module-level and plain data in and out, so
    a worker process runs it too; ``load_sources`` (if given) supplies the block sources there.
    """
    sources = load_sources() if load_sources is not None else block_sources
    if trace is None:
        data, k = run_row(config, workload, variant, kernel_config, block_sources=sources)
    else:
        try:
            data, k = run_row(config, workload, variant, kernel_config, block_sources=sources,
                              tracing=trace.attach)
        finally:
            trace.close()
    del k
    gc.collect()
    return data


def check_names(
    variants: Sequence[str], configs: Sequence[str], known: Sequence[str],
    profiles: Sequence[str] = (),
) -> None:
    for v in variants:
        if v not in known:
            raise ConfigError(
                f"unknown variant {v!r}{did_you_mean(v, known)}; allowed: {', '.join(known)}"
            )
    for c in configs:
        if c not in KERNEL_CONFIG_NAMES:
            raise ConfigError(
                f"unknown kernel config {c!r}{did_you_mean(c, KERNEL_CONFIG_NAMES)}; "
                f"allowed: {', '.join(KERNEL_CONFIG_NAMES)}"
            )
    for p in profiles:
        get_profile(p)


#: One row's coordinates: (profile, variant, kernel build).
Cell = tuple[str, str, str]


@attrs.frozen
class CompareResult:
    config: KernelConfig
    workload: Workload
    rows: tuple[dict[str, Any], ...]

    @property
    def profiles(self) -> list[str]:
        return list(dict.fromkeys(r["profile"] for r in self.rows))

    def to_json(self, *, timeline: bool = False) -> dict[str, Any]:
        rows = []
        for r in self.rows:
            r2 = dict(r)
            if not timeline:
                r2.pop("timeline", None)
            rows.append(r2)
        judged = judge(self.rows)
        return {
            "config": config_to_dict(self.config),
            "seed": self.config.seed,
            "profiles": {p: get_profile(p).description for p in self.profiles},
            "workload": attrs.asdict(self.workload),
            "rows": rows,
            "verdict": judged.to_json(),
            "verdict_text": judged.lines(),
        }


def run_compare(
    config: KernelConfig | None = None,
    workload: Workload | None = None,
    variants: Sequence[str] = VARIANTS,
    configs: Sequence[str] = KERNEL_CONFIG_NAMES,
    *,
    profiles: Sequence[str] | None = None,
    progress: Callable[[Cell], None] | None = None,
    kernels: list[tuple[Cell, Kernel]] | None = None,
    block_sources: Sequence[BlockPageSource] = (),
    jobs: int = 1,
    load_sources: SourcesLoader | None = None,
    tracing: Callable[[Cell], RowTracing] | None = None,
) -> CompareResult:
    """Run every variant under every build of every profile (default: the config's profile);
    ``block_sources`` adds the user's variants, whose names ``variants`` may then list (each
    row boots a kernel with them registered).

    ``jobs > 1`` runs rows in that many worker processes (the sweep's pool, at most one per
    row); rows come back in the order asked for and hold the same data as inline, since each
    depends on its config, workload, profile, variant and build alone. ``progress`` is then
    called as rows finish, in any order. Keeping ``kernels`` (for traces) needs them in this
    process, so it always runs inline. ``tracing`` (``TraceFiles.row``) is called here with
    each row's cell, in order, for the row's trace, which whichever process runs the row
    streams to its own part of the files. With user sources, workers need ``load_sources``, a
    picklable way to build them there (the objects are not sent).
    """
    cfg = config or default_config()
    wl = workload or Workload()
    sources = tuple(block_sources)
    names = list(profiles) if profiles is not None else [cfg.kvfree.profile]
    if not names:
        raise ConfigError("profiles is empty; name at least one kvfree_rcu profile")
    # An empty list would run no row and print empty tables with exit status 0.
    if not variants:
        raise ConfigError(
            "variants is empty; allowed: " + ", ".join(BlockSources(sources).names())
        )
    if not configs:
        raise ConfigError(
            f"configs is empty; allowed: {', '.join(KERNEL_CONFIG_NAMES)}"
        )
    check_names(variants, configs, BlockSources(sources).names(), names)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs = {jobs!r}: expected a positive number of processes")
    cells: list[Cell] = [(p, v, kc) for p in names for v in variants for kc in configs]
    workers = 1 if kernels is not None else min(jobs, len(cells))
    if workers > 1 and sources and load_sources is None:
        raise ConfigError(
            "user block sources cannot be sent to worker processes as objects; pass "
            "load_sources= (a picklable callable that builds them) or jobs=1"
        )

    def cfg_of(profile: str) -> KernelConfig:
        return cfg.replace(**{"kvfree.profile": profile})

    traces: list[RowTracing | None] = [
        tracing(cell) if tracing is not None and kernels is None else None for cell in cells
    ]
    if workers == 1:
        rows = []
        for cell, trace in zip(cells, traces, strict=True):
            profile, variant, kc = cell
            if kernels is None:
                rows.append(row_data(cfg_of(profile), wl, variant, kc, block_sources=sources,
                                     trace=trace))
            else:
                data, k = run_row(cfg_of(profile), wl, variant, kc, trace=True,
                                  block_sources=sources)
                rows.append(data)
                kernels.append((cell, k))
            if progress is not None:
                progress(cell)
        return CompareResult(cfg, wl, tuple(rows))
    loader = load_sources if sources else None
    with open_executor(workers) as choice:
        futures: dict[Future[dict[str, Any]], int] = {
            choice.executor.submit(row_data, cfg_of(p), wl, v, kc, load_sources=loader,
                                   trace=traces[i]): i
            for i, (p, v, kc) in enumerate(cells)
        }
        found: dict[int, dict[str, Any]] = {}
        for fut in as_completed(futures):
            i = futures[fut]
            found[i] = fut.result()
            if progress is not None:
                progress(cells[i])
    return CompareResult(cfg, wl, tuple(found[i] for i in range(len(cells))))
