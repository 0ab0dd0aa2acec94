"""The RFC's question, measured: every block-allocator variant under every kernel build.

One simulated machine and one workload for every row: ``flood_cpus`` CPUs flood
``kvfree_rcu()`` with a mix of head-less and two-argument calls on slab and vmalloc pointers,
while every CPU also runs "other kernel users" that allocate and free pages in bursts, so pcp
lists run dry and refill under ``zone->lock`` as they do in life. Only the variant (how a block
page is obtained inside ``krcp->lock``) and the build (default / PROVE_RAW_LOCK_NESTING /
PREEMPT_RT) change from row to row, so every difference in the table is theirs.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Callable, Sequence
from concurrent.futures import Future, as_completed
from typing import Any

import attrs

from rcukit.config import KERNEL_CONFIG_NAMES, KernelConfig, config_to_dict
from rcukit.errors import ConfigError
from rcukit.kernel import Kernel, boot, run_sim
from rcukit.mm.gfp import GFP_KERNEL
from rcukit.rcu.kvfree.variants import BlockPageSource, BlockSources
from rcukit.rcu.profiles import DEFAULT_PROFILES
from rcukit.scenarios.executors import open_executor
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

    flood_cpus: int = attrs.field(default=4, validator=_int_at_least(1))
    objects_per_cpu: int = attrs.field(default=40_000, validator=_int_at_least(1))
    single_fraction: float = attrs.field(default=0.25, validator=_fraction)
    vmalloc_fraction: float = attrs.field(default=0.02, validator=_fraction)
    object_size: int = attrs.field(default=64, validator=_int_at_least(1))
    rcu_head_offset: int = attrs.field(default=16, validator=_int_at_least(0))
    #: Work the caller does per object between calls (simulated ns), so a flood spans
    #: several drain periods instead of a fraction of a millisecond.
    think_ns: int = attrs.field(default=400, validator=_int_at_least(0))
    #: cond_resched() every N calls, as rcuscale's kfree loop does once per loop.
    resched_every: int = attrs.field(default=256, validator=_int_at_least(1))
    #: Finish with kvfree_rcu_barrier() so every object is accounted freed.
    barrier: bool = attrs.field(default=True, validator=_bool)

    def scaled(self, scale: float) -> Workload:
        if not scale > 0:
            raise ConfigError(f"scale = {scale!r}: it must be a number > 0")
        return attrs.evolve(self, objects_per_cpu=max(1, int(self.objects_per_cpu * scale)))


def default_config() -> KernelConfig:
    """The machine of ``rcukit compare``: 4 CPUs, a squeezed 256 MiB zone, busy neighbours."""
    base = KernelConfig(nr_cpus=4)
    return base.replace(
        **{
            "mm.zone_pages": 65_536,
            "mm.background_allocs_per_ms": 400,
            "mm.initial_used_fraction": 0.93,
            "kvfree.profile": DEFAULT_PROFILES["compare"],
        }
    )


@attrs.frozen
class Row:
    variant: str
    kernel_config: str
    data: dict[str, Any]


def _row_data(k: Kernel, variant: str, kernel_config: str, wall: float) -> dict[str, Any]:
    kv = k.kvfree.statistics()
    rcu_stats = k.rcu.statistics()
    splats = k.splat_counts()
    vm = k.vmstat
    attempts = kv.block_alloc_attempts
    return {
        "variant": variant,
        "kernel_config": kernel_config,
        "kvfree_calls": kv.calls,
        "kvfree_calls_single": kv.calls_single,
        "block_alloc_attempts": attempts,
        "block_alloc_failures": kv.block_alloc_failures,
        "block_alloc_failure_pct": round(100.0 * kv.block_alloc_failures / attempts, 2)
        if attempts
        else 0.0,
        "blocks_from_cache": kv.blocks_from_cache,
        "fallback_rcu_head": kv.fallback_rcu_head,
        "fallback_synchronize": kv.fallback_synchronize,
        "splats": {key: splats.get(key, 0) for key in SPLAT_KEYS},
        "splat_sites": k.locks.unique_sites(),
        "kswapd_wakeups": vm["kswapd_wake"],
        "zone_lock_acquisitions": vm["zone_lock_acquisitions"],
        "pcp_refills": vm["pcp_refill"],
        "grace_periods": rcu_stats.completed_gps,
        "batches": kv.batches_queued,
        "objects_freed": kv.objects_freed,
        "objects_pending": kv.pending,
        "records_per_block_mean": round(kv.records_per_block_mean, 2),
        "records_per_block": {str(n): c for n, c in kv.records_per_block.items()},
        "pending_peak": kv.pending_peak,
        "pages_peak": kv.pages_peak,
        "latency_ns": {
            "p50": kv.latency_percentile(0.50),
            "p99": kv.latency_percentile(0.99),
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
) -> tuple[dict[str, Any], Kernel]:
    cfg = config.with_kernel_config(kernel_config).replace(**{"kvfree.variant": variant})
    async with boot(cfg, block_sources=block_sources) as k:
        if trace:
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
        return _row_data(k, variant, kernel_config, 0.0), k


def run_row(
    config: KernelConfig, workload: Workload, variant: str, kernel_config: str,
    *, trace: bool = False, block_sources: Sequence[BlockPageSource] = (),
) -> tuple[dict[str, Any], Kernel]:
    box: dict[str, Any] = {}

    async def main() -> None:
        box["r"] = await run_row_async(
            config, workload, variant, kernel_config, trace=trace, block_sources=block_sources
        )

    run_sim(main)
    result: tuple[dict[str, Any], Kernel] = box["r"]
    return result


def row_data(
    config: KernelConfig, workload: Workload, variant: str, kernel_config: str,
    *, block_sources: Sequence[BlockPageSource] = (), load_sources: SourcesLoader | None = None,
) -> dict[str, Any]:
    """One row's data, its kernel released.

    A finished kernel is cyclic garbage (tasks, locks, CPUs and subsystems point at each other),
    which reference counting never frees: without a collection here, once per row after its
    data is extracted, the process grows row on row. Module-level and plain data in and out, so
    a worker process runs it too; ``load_sources`` (if given) supplies the block sources there.
    """
    sources = load_sources() if load_sources is not None else block_sources
    data, k = run_row(config, workload, variant, kernel_config, block_sources=sources)
    del k
    gc.collect()
    return data


def check_names(variants: Sequence[str], configs: Sequence[str], known: Sequence[str]) -> None:
    for v in variants:
        if v not in known:
            raise ConfigError(f"unknown variant {v!r}; allowed: {', '.join(known)}")
    for c in configs:
        if c not in KERNEL_CONFIG_NAMES:
            raise ConfigError(
                f"unknown kernel config {c!r}; allowed: {', '.join(KERNEL_CONFIG_NAMES)}"
            )


@attrs.frozen
class CompareResult:
    config: KernelConfig
    workload: Workload
    rows: tuple[dict[str, Any], ...]

    def to_json(self, *, timeline: bool = False) -> dict[str, Any]:
        rows = []
        for r in self.rows:
            r2 = dict(r)
            if not timeline:
                r2.pop("timeline", None)
            rows.append(r2)
        return {
            "config": config_to_dict(self.config),
            "seed": self.config.seed,
            "workload": attrs.asdict(self.workload),
            "rows": rows,
            "verdict": verdict(self.rows),
        }


def run_compare(
    config: KernelConfig | None = None,
    workload: Workload | None = None,
    variants: Sequence[str] = VARIANTS,
    configs: Sequence[str] = KERNEL_CONFIG_NAMES,
    *,
    progress: Callable[[str, str], None] | None = None,
    kernels: list[tuple[str, str, Kernel]] | None = None,
    block_sources: Sequence[BlockPageSource] = (),
    jobs: int = 1,
    load_sources: SourcesLoader | None = None,
) -> CompareResult:
    """Run every variant under every build; ``block_sources`` adds the user's variants, whose
    names ``variants`` may then list (each row boots a kernel with them registered).

    ``jobs > 1`` runs rows in that many worker processes (the sweep's pool, at most one per
    row); rows come back in the order asked for and hold the same data as inline, since each
    depends on its config, workload, variant and build alone. ``progress`` is then called as
    rows finish, in any order. Keeping ``kernels`` (for traces) needs them in this process, so
    it always runs inline. With user sources, workers need ``load_sources``, a picklable way to
    build them there (the objects are not sent).
    """
    cfg = config or default_config()
    wl = workload or Workload()
    sources = tuple(block_sources)
    check_names(variants, configs, BlockSources(sources).names())
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs = {jobs!r}: expected a positive number of processes")
    cells = [(variant, kc) for variant in variants for kc in configs]
    workers = 1 if kernels is not None else min(jobs, len(cells))
    if workers > 1 and sources and load_sources is None:
        raise ConfigError(
            "user block sources cannot be sent to worker processes as objects; pass "
            "load_sources= (a picklable callable that builds them) or jobs=1"
        )
    if workers == 1:
        rows = []
        for variant, kc in cells:
            if kernels is None:
                rows.append(row_data(cfg, wl, variant, kc, block_sources=sources))
            else:
                data, k = run_row(cfg, wl, variant, kc, trace=True, block_sources=sources)
                rows.append(data)
                kernels.append((variant, kc, k))
            if progress is not None:
                progress(variant, kc)
        return CompareResult(cfg, wl, tuple(rows))
    loader = load_sources if sources else None
    with open_executor(workers) as choice:
        futures: dict[Future[dict[str, Any]], int] = {
            choice.executor.submit(row_data, cfg, wl, variant, kc, load_sources=loader): i
            for i, (variant, kc) in enumerate(cells)
        }
        found: dict[int, dict[str, Any]] = {}
        for fut in as_completed(futures):
            i = futures[fut]
            found[i] = fut.result()
            if progress is not None:
                progress(*cells[i])
    return CompareResult(cfg, wl, tuple(found[i] for i in range(len(cells))))


def verdict(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Plain-language conclusions, each derived from the numbers in ``rows``."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_variant.setdefault(r["variant"], []).append(r)
    lines: list[str] = []
    clean = [v for v, rs in by_variant.items() if all(sum(r["splats"].values()) == 0 for r in rs)]
    dirty = [v for v in by_variant if v not in clean]
    if clean:
        lines.append(f"Splat-free in every build measured: {', '.join(clean)}.")
    for v in dirty:
        where = []
        for r in by_variant[v]:
            s = {k: n for k, n in r["splats"].items() if n}
            if s:
                kinds = ", ".join(f"{n} x {k.replace('_', ' ')}" for k, n in s.items())
                where.append(f"{r['kernel_config']}: {kinds}")
        lines.append(
            f"{v} splats ({'; '.join(where)}): it reaches zone->lock (a spinlock_t) "
            f"while krcp->lock (a raw_spinlock_t) is held."
        )
    for v, rs in by_variant.items():
        att = sum(r["block_alloc_attempts"] for r in rs)
        fail = sum(r["block_alloc_failures"] for r in rs)
        head = sum(r["fallback_rcu_head"] for r in rs)
        sync = sum(r["fallback_synchronize"] for r in rs)
        calls = sum(r["kvfree_calls"] for r in rs)
        kswapd = sum(r["kswapd_wakeups"] for r in rs)
        zl = sum(r["zone_lock_acquisitions"] for r in rs)
        p99 = max(r["latency_ns"]["p99"] for r in rs)
        worst = max(r["latency_ns"]["max"] for r in rs)
        fail_pct = 100.0 * fail / att if att else 0.0
        fb_pct = 100.0 * (head + sync) / calls if calls else 0.0
        lines.append(
            f"{v}: {fail_pct:.1f}% of {att} in-context block allocations failed; "
            f"{fb_pct:.2f}% of calls fell back ({head} rcu_head, {sync} synchronize_rcu); "
            f"{kswapd} kswapd wake-ups, {zl} zone-lock acquisitions, "
            f"latency p99 {p99 / 1000:.2f} us, max {worst / 1000:.2f} us."
        )
    return lines
