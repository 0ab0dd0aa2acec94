"""Kernel configuration and the cost model.

Everything a simulation depends on lives in one frozen :class:`KernelConfig`, so a run is
reproducible from ``(config, seed)`` alone and two kernels in one process never share a knob.
Values are validated on construction; a TOML file is checked key by key, so a typo is an error
that names the key instead of a silently ignored setting.
"""

from __future__ import annotations

import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs

from rcukit.errors import ConfigError, GfpError, did_you_mean
from rcukit.mm.gfp import parse_gfp, validate_gfp
from rcukit.mm.versions import MmVersion
from rcukit.mm.zoneinfo import largest_zone, parse_zoneinfo, read_host_zoneinfo
from rcukit.rcu.profiles import DEFAULT_PROFILES, get_profile, profile_validator

T = TypeVar("T")

#: HZ values the kernel offers in Kconfig (kernel/Kconfig.hz).
ALLOWED_HZ = (100, 250, 300, 1000)
#: Base page sizes of architectures that run Linux (x86/arm64 4K, arm64 16K and 64K, ppc64 64K).
ALLOWED_PAGE_SIZES = (4096, 16384, 65536)
ALLOWED_POINTER_SIZES = (4, 8)


def _in_range(lo: int | float, hi: int | float) -> Any:
    # Integer bounds mean an integer field: 2.5 CPUs or a float HZ must not slip through.
    integral = isinstance(lo, int) and isinstance(hi, int)
    what = "an integer" if integral else "a number"

    def check(inst: object, att: attrs.Attribute[Any], value: Any) -> None:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (integral and not isinstance(value, int))
        ):
            raise ConfigError(f"{att.name} = {value!r}: expected {what} between {lo} and {hi}")
        if not lo <= value <= hi:
            raise ConfigError(f"{att.name} = {value!r} is out of range; allowed: {lo} .. {hi}")

    return check


def _one_of(choices: tuple[Any, ...]) -> Any:
    def check(inst: object, att: attrs.Attribute[Any], value: Any) -> None:
        if not any(type(value) is type(c) and value == c for c in choices):
            allowed = ", ".join(repr(c) for c in choices)
            raise ConfigError(f"{att.name} = {value!r} is not allowed; allowed: {allowed}")

    return check


def _is_bool(inst: object, att: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{att.name} = {value!r}: expected true or false")


def _variant_name(inst: object, att: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError(
            f"{att.name} = {value!r}: expected a non-empty allocator variant name"
        )


def _opt_range(lo: int, hi: int) -> Any:
    inner = _in_range(lo, hi)

    def check(inst: object, att: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            inner(inst, att, value)

    return check


@attrs.frozen
class CostModel:
    """Simulated nanoseconds charged for each primitive.

    The defaults are order-of-magnitude figures for a ~3 GHz x86-64 server, chosen so that the
    *ratios* the RFC argues about hold: a pcp hit is far cheaper than a zone-lock refill, a bulk
    free is cheaper per object than a single free, a cache miss costs a DRAM round trip, and a
    grace period costs milliseconds of waiting but microseconds of CPU. Every figure can be
    overridden from the ``[cost]`` table of a config file.
    """

    #: ``raw_spin_lock_irqsave`` + unlock, uncontended: an atomic RMW plus pushf/cli/popf.
    raw_lock_ns: int = attrs.field(default=20, validator=_in_range(0, 10**9))
    #: ``spin_lock`` + unlock of a ``spinlock_t``, uncontended (same as raw on !RT).
    spin_lock_ns: int = attrs.field(default=15, validator=_in_range(0, 10**9))
    #: Extra cost of an rt_mutex-based ``spinlock_t`` on PREEMPT_RT (slower fast path).
    rt_spin_lock_extra_ns: int = attrs.field(default=25, validator=_in_range(0, 10**9))
    #: One page off a pcp list (``rmqueue_pcplist`` hit): ~150-200 cycles with accounting.
    pcp_alloc_ns: int = attrs.field(default=60, validator=_in_range(0, 10**9))
    #: One page moved from the buddy lists in ``rmqueue_bulk`` (``__rmqueue`` under zone->lock).
    buddy_page_ns: int = attrs.field(default=45, validator=_in_range(0, 10**9))
    #: One page freed to the pcp list (``free_unref_page_commit``).
    pcp_free_ns: int = attrs.field(default=40, validator=_in_range(0, 10**9))
    #: One page given back to the buddy lists by ``free_pcppages_bulk`` (merging included).
    buddy_free_page_ns: int = attrs.field(default=45, validator=_in_range(0, 10**9))
    #: Clearing one 4 KiB page (``clear_page`` with ``rep stosb``, ~16 GB/s); scaled by page size.
    zero_page_ns_per_4k: int = attrs.field(default=250, validator=_in_range(0, 10**9))
    #: ``wakeup_kswapd`` -> ``wake_up_interruptible``: wait-queue lock and a remote wakeup.
    kswapd_wakeup_ns: int = attrs.field(default=300, validator=_in_range(0, 10**9))
    #: CPU time kswapd spends to reclaim one page (LRU scan, unmap, writeback amortised).
    reclaim_page_ns: int = attrs.field(default=600, validator=_in_range(0, 10**9))
    #: One ``try_to_free_pages`` pass of direct reclaim (SWAP_CLUSTER_MAX = 32 pages).
    direct_reclaim_ns: int = attrs.field(default=40_000, validator=_in_range(0, 10**10))
    #: ``kmalloc`` SLUB fast path (per-cpu freelist cmpxchg).
    kmalloc_ns: int = attrs.field(default=25, validator=_in_range(0, 10**9))
    #: ``kfree`` of one object: ~50 cycles (Brouer/Duyck slab_bulk_test01, single free).
    kfree_ns: int = attrs.field(default=17, validator=_in_range(0, 10**9))
    #: Per-object cost inside ``kfree_bulk``: ~17-18 cycles at bulk 8-32 (same measurement).
    kfree_bulk_per_object_ns: int = attrs.field(default=6, validator=_in_range(0, 10**9))
    #: Fixed cost of one ``kfree_bulk`` call (detached freelist build, one sync per slab page).
    kfree_bulk_call_ns: int = attrs.field(default=40, validator=_in_range(0, 10**9))
    #: A cache miss when walking an ``rcu_head`` list: one DRAM round trip.
    cache_miss_ns: int = attrs.field(default=90, validator=_in_range(0, 10**9))
    #: ``vmalloc`` of a small area: vmap_area search, page allocation, page-table set-up.
    vmalloc_ns: int = attrs.field(default=2_000, validator=_in_range(0, 10**9))
    #: ``vfree`` of a small area: ``remove_vm_area`` and page frees, TLB flush deferred (lazy).
    vfree_ns: int = attrs.field(default=1_200, validator=_in_range(0, 10**9))
    #: Each further area of a ``vfree_bulk`` batch: unlink from the busy tree and queue for the
    #: lazy purge; the lock round trip and TLB-flush accounting are paid once (in vfree_ns).
    vfree_bulk_per_area_ns: int = attrs.field(default=250, validator=_in_range(0, 10**9))
    #: Storing one pointer into a kvfree_rcu block (``records[nr_records++] = ptr``).
    kvfree_store_ns: int = attrs.field(default=8, validator=_in_range(0, 10**9))
    #: A context switch (``__schedule`` with switch_mm avoided for kthreads).
    context_switch_ns: int = attrs.field(default=1_500, validator=_in_range(0, 10**9))
    #: Enqueueing one ``call_rcu`` callback on the segmented list.
    call_rcu_ns: int = attrs.field(default=30, validator=_in_range(0, 10**9))
    #: Invoking one RCU callback from ``rcu_do_batch`` (excluding what the callback does).
    rcu_invoke_ns: int = attrs.field(default=20, validator=_in_range(0, 10**9))
    #: GP kthread work to start or end one grace period (``rcu_gp_init``/``rcu_gp_cleanup``).
    gp_init_ns: int = attrs.field(default=2_000, validator=_in_range(0, 10**9))
    #: One quiescent-state report propagated to the ``rcu_node`` tree.
    qs_report_ns: int = attrs.field(default=100, validator=_in_range(0, 10**9))
    #: Per-CPU cost of an expedited grace period (an IPI and its handler).
    expedited_ipi_ns: int = attrs.field(default=1_500, validator=_in_range(0, 10**9))
    #: ``queue_work``: insert into a worker pool list and maybe wake a kworker.
    queue_work_ns: int = attrs.field(default=150, validator=_in_range(0, 10**9))
    #: A tracepoint that is enabled and recording (ring-buffer reserve + commit).
    tracepoint_ns: int = attrs.field(default=0, validator=_in_range(0, 10**9))

    def zero_page_ns(self, page_size: int) -> int:
        return self.zero_page_ns_per_4k * page_size // 4096


def _gfp_filter(inst: object, att: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"{att.name} = {value!r}: expected a GFP string such as 'GFP_NOWAIT'")
    try:
        validate_gfp(parse_gfp(value))
    except GfpError as exc:
        raise ConfigError(f"{att.name} = {value!r}: {exc}") from None


@attrs.frozen
class MemoryConfig:
    """The simulated node: one zone (ZONE_NORMAL) and the load other kernel users put on it.

    Defaults give a 1 GiB zone with 90% in use, i.e. free memory well above the high
    watermark (kernel.md 3.4), so nothing reclaims until a workload or the background load
    pushes it down. Tests that need pressure set ``initial_free_pages`` directly.
    """

    #: Managed pages in the zone (default 1 GiB of 4 KiB pages: batch 63, high 378).
    zone_pages: int = attrs.field(default=262_144, validator=_in_range(64, 1 << 26))
    #: ``vm.min_free_kbytes``; None derives it as the kernel does from the zone size.
    min_free_kbytes: int | None = attrs.field(default=None, validator=_opt_range(0, 1 << 30))
    #: ``vm.watermark_scale_factor`` (default 10 = 0.1%).
    watermark_scale_factor: int = attrs.field(default=10, validator=_in_range(1, 3000))
    #: ``vm.watermark_boost_factor`` (5.1+; default 15000: a fragmenting steal may boost the
    #: watermarks by up to 150% of the high watermark, kernel.md 8.2); 0 disables boosting.
    watermark_boost_factor: int = attrs.field(default=15_000, validator=_in_range(0, 10**6))
    #: pcp batch in pages; None uses ``zone_batchsize()``.
    pcp_batch: int | None = attrs.field(default=None, validator=_opt_range(1, 1 << 20))
    #: pcp high mark in pages; None uses ``6 * batch`` (5.8-5.13 default).
    pcp_high: int | None = attrs.field(default=None, validator=_opt_range(1, 1 << 22))
    #: Fraction of the zone in use by other kernel users at boot (page cache, slab...). Those
    #: pages are what kswapd and direct reclaim take back.
    initial_used_fraction: float = attrs.field(default=0.90, validator=_in_range(0.0, 0.999))
    #: Free pages at boot, overriding ``initial_used_fraction`` (to start below a watermark).
    initial_free_pages: int | None = attrs.field(default=None, validator=_opt_range(0, 1 << 26))
    #: Order of the largest free block at boot. 10 (MAX_ORDER-1) is a freshly booted zone:
    #: other users hold one end, the free memory is whole 4 MiB blocks. Below
    #: ``pageblock_order`` (9) the free memory is scattered in blocks of 2^order pages between
    #: other users' pages, as on a long-running machine, so an unmovable request that finds no
    #: block of its own steals a small MOVABLE one and boosts the watermarks (kernel.md 8.2).
    #: Scattered, at most half the zone can be free.
    initial_free_max_order: int = attrs.field(default=10, validator=_in_range(0, 10))
    #: Background allocations per CPU per millisecond (other kernel users); 0 disables.
    background_allocs_per_ms: int = attrs.field(default=0, validator=_in_range(0, 10**6))
    #: Mean pages per background burst; None uses the pcp batch, so bursts empty pcp lists.
    background_burst: int | None = attrs.field(default=None, validator=_opt_range(1, 1 << 16))
    #: Mean time a background burst holds its pages before freeing them, in microseconds.
    background_hold_us: int = attrs.field(default=2_000, validator=_in_range(0, 10**9))
    #: Share of background bursts that use GFP_ATOMIC (the rest use GFP_KERNEL).
    background_atomic_fraction: float = attrs.field(default=0.2, validator=_in_range(0.0, 1.0))
    #: Share of background bursts that allocate movable pages (``GFP_HIGHUSER_MOVABLE``, as
    #: the page cache and anonymous memory do); the rest are split by
    #: ``background_atomic_fraction``. Movable users split the free blocks that unmovable
    #: allocations would otherwise take whole, so those fall back, steal and boost the
    #: watermarks (kernel.md 8.2). 0 keeps every background burst unmovable.
    background_movable_fraction: float = attrs.field(default=0.0, validator=_in_range(0.0, 1.0))
    #: Fault injection like ``fail_page_alloc``: probability in [0, 1].
    fail_page_alloc_probability: float = attrs.field(default=0.0, validator=_in_range(0.0, 1.0))
    #: ``fail_page_alloc`` interval: fail only every Nth eligible attempt (1 = every one).
    fail_page_alloc_interval: int = attrs.field(default=1, validator=_in_range(1, 10**9))
    #: ``fail_page_alloc`` times: stop after N failures (-1 = no limit).
    fail_page_alloc_times: int = attrs.field(default=-1, validator=_in_range(-1, 10**12))
    #: Only fail allocations whose GFP mask contains all these bits (perf-kmem or kernel names).
    fail_page_alloc_gfp_filter: str = attrs.field(default="none", validator=_gfp_filter)
    #: ``fail_page_alloc/min-order``. The kernel's debugfs default is 1, which would exempt
    #: every order-0 allocation this simulation is about, hence 0 here.
    fail_page_alloc_min_order: int = attrs.field(default=0, validator=_in_range(0, 10))
    #: ``fail_page_alloc/ignore-gfp-wait``: exempt __GFP_DIRECT_RECLAIM requests (kernel: Y).
    fail_page_alloc_ignore_gfp_reclaim: bool = attrs.field(default=False, validator=_is_bool)
    #: Slab fault injection like ``failslab``: probability in [0, 1].
    failslab_probability: float = attrs.field(default=0.0, validator=_in_range(0.0, 1.0))
    #: Record where every live slab/vmalloc object was allocated (costs a dict entry per
    #: object, so off by default: a benchmark may hold a million objects).
    debug_alloc_sites: bool = attrs.field(default=False, validator=_is_bool)
    #: Free sites remembered for double-free/use-after-free reports (KASAN's quarantine):
    #: the last N frees; 0 turns free-site tracking off (it costs about a microsecond per
    #: single kfree and a fraction of that per object in kfree_bulk; benchmarks may turn it off).
    debug_quarantine: int = attrs.field(default=65_536, validator=_in_range(0, 1 << 24))
    #: CONFIG_SLUB_CPU_PARTIAL (Kconfig default y): per-CPU partial lists in SLUB
    #: (:mod:`rcukit.mm.slub_partial`); off, frees put slabs straight on the node list.
    slub_cpu_partial: bool = attrs.field(default=True, validator=_is_bool)


KERNEL_CONFIG_NAMES = ("default", "lockdep", "rt")


@attrs.frozen
class KvfreeConfig:
    """kvfree_rcu(): which kernel version's mechanism and which block allocator."""

    #: Version profile (see ``rcukit.rcu.profiles``): rfc, v5.9, v5.11, v5.13, v6.1, v6.3.
    profile: str = attrs.field(default=DEFAULT_PROFILES["kernel"], validator=profile_validator)
    #: Allocator-core variant for block pages (see ``rcukit.rcu.kvfree.variants``): a built-in
    #: or a user's ``BlockPageSource`` name, resolved when the kernel is built (any non-empty
    #: name is accepted here, since user variants are registered with the kernel, not here).
    variant: str = attrs.field(default="nowait", validator=_variant_name)
    #: Block header: "profile" uses the version's struct size, "rfc" a header of zero.
    header: str = attrs.field(default="profile", validator=_one_of(("profile", "rfc")))
    #: ``rcutree.rcu_min_cached_objs``; None takes the profile's default (2 or 5).
    rcu_min_cached_objs: int | None = attrs.field(default=None, validator=_opt_range(0, 1 << 16))
    #: ``rcutree.rcu_delay_page_cache_fill_msec`` (clamped to [0, 100000] as the kernel does).
    rcu_delay_page_cache_fill_msec: int = attrs.field(default=5000, validator=_in_range(0, 100_000))
    #: ``CONFIG_DEBUG_OBJECTS_RCU_HEAD``-style checks: a double kvfree_rcu() is an error and
    #: every free is checked against the grace period its object waited for (costs memory).
    #: The kernel option covers call_rcu() too: a head queued twice is reported ("Double-freed
    #: CB", ``rcu.statistics().double_call_rcu``) and not queued again.
    debug_objects: bool = attrs.field(default=False, validator=_is_bool)


@attrs.frozen
class KernelConfig:
    """One simulated machine and kernel build.

    ``preempt_rt`` and ``prove_raw_lock_nesting`` are the two builds in which the RFC's problem
    shows (``BUG: scheduling while atomic`` and ``BUG: Invalid wait context``).
    """

    #: Possible CPUs (``nr_cpu_ids``), each with its krcp, pcp lists and RCU data.
    nr_cpus: int = attrs.field(default=4, validator=_in_range(1, 4096))
    #: ``CONFIG_HZ`` in ticks per second: one jiffy is 1/HZ s.
    hz: int = attrs.field(default=1000, validator=_one_of(ALLOWED_HZ))
    #: Base page size in bytes (``PAGE_SIZE``): a block page holds (size - header) / 8 pointers.
    page_size: int = attrs.field(default=4096, validator=_one_of(ALLOWED_PAGE_SIZES))
    #: ``sizeof(void *)`` in bytes.
    pointer_size: int = attrs.field(default=8, validator=_one_of(ALLOWED_POINTER_SIZES))
    preempt_rt: bool = attrs.field(default=False, validator=_is_bool)
    prove_raw_lock_nesting: bool = attrs.field(default=False, validator=_is_bool)
    #: ``CONFIG_PREEMPT_RCU``: readers may be preempted and block a GP (forced on by PREEMPT_RT).
    preempt_rcu: bool = attrs.field(default=False, validator=_is_bool)
    seed: int = attrs.field(default=0, validator=_in_range(0, 2**63 - 1))
    #: Raise :class:`rcukit.errors.SplatError` instead of printing a splat.
    strict_splats: bool = attrs.field(default=False, validator=_is_bool)
    #: Print splats to stderr as they happen (they are always recorded).
    print_splats: bool = attrs.field(default=False, validator=_is_bool)
    #: ``CONFIG_DEBUG_ATOMIC_SLEEP``: ``might_sleep()`` (and ``rt_spin_lock()``'s check on
    #: PREEMPT_RT) reports sleeping in atomic context; without it only a task that really
    #: blocks while atomic is reported ("scheduling while atomic").
    debug_atomic_sleep: bool = attrs.field(default=True, validator=_is_bool)
    #: ``kernel.panic_on_warn`` (sysctl, kernel/panic.c): the first WARNING or KASAN report
    #: (or "scheduling while atomic") panics and the run stops with
    #: :class:`rcukit.errors.KernelPanic`; otherwise the kernel reports, taints and goes on.
    panic_on_warn: bool = attrs.field(default=False, validator=_is_bool)
    #: ``CONFIG_RCU_CPU_STALL_TIMEOUT`` in milliseconds (kernel default 21 s).
    rcu_stall_timeout_ms: int = attrs.field(default=21_000, validator=_in_range(1, 10**7))
    #: Version string printed in splat headers, like ``init_utsname()->release``; empty
    #: derives ``X.Y.0-rcukit`` from the kernel the profile names (:attr:`kernel_version`).
    release: str = attrs.field(default="", validator=attrs.validators.instance_of(str))
    cost: CostModel = attrs.field(factory=CostModel)
    mm: MemoryConfig = attrs.field(factory=MemoryConfig)
    kvfree: KvfreeConfig = attrs.field(factory=KvfreeConfig)

    @property
    def tick_ns(self) -> int:
        return 1_000_000_000 // self.hz

    @property
    def mm_version(self) -> MmVersion:
        """The page allocator of the kernel that ``kvfree.profile`` names (kernel.md 8.1, 8.2)."""
        return get_profile(self.kvfree.profile).mm

    @property
    def kernel_version(self) -> tuple[int, int]:
        """(major, minor) of the kernel ``kvfree.profile`` names: ``vX.Y`` profiles say it, the
        others (``rfc``) are the kernel of their page allocator. Report formats key on it."""
        profile = get_profile(self.kvfree.profile)
        m = re.fullmatch(r"v(\d+)\.(\d+)", profile.name) or re.match(
            r"(\d+)\.(\d+)", profile.mm.kernel
        )
        assert m is not None, profile
        return int(m.group(1)), int(m.group(2))

    @property
    def kernel_release(self) -> str:
        """``utsname()->release`` as reports print it: :attr:`release`, or derived."""
        if self.release:
            return self.release
        major, minor = self.kernel_version
        return f"{major}.{minor}.0-rcukit"

    @property
    def rcu_preemptible(self) -> bool:
        return self.preempt_rcu or self.preempt_rt

    def with_kernel_config(self, name: str) -> KernelConfig:
        """Apply one of the named builds ``rcukit compare`` uses: default, lockdep, rt."""
        if name not in KERNEL_CONFIG_NAMES:
            raise ConfigError(
                f"kernel config {name!r} is unknown{did_you_mean(name, KERNEL_CONFIG_NAMES)}; "
                f"allowed: {', '.join(KERNEL_CONFIG_NAMES)}"
            )
        return attrs.evolve(
            self, prove_raw_lock_nesting=(name == "lockdep"), preempt_rt=(name == "rt")
        )

    def replace(self, **changes: Any) -> KernelConfig:
        """Return a copy with top-level or dotted (``"mm.pcp_batch"``) fields changed."""
        new: KernelConfig = _replace_dotted(self, changes)
        return new

    @classmethod
    def from_toml(cls, path: str | Path) -> KernelConfig:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from exc
        return cls.from_toml_text(text, source=str(path))

    @classmethod
    def from_toml_text(cls, text: str, source: str = "<toml>") -> KernelConfig:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: malformed TOML: {exc}") from exc
        return cls.from_mapping(data, source=source)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "<config>") -> KernelConfig:
        return _build(cls, data, source, "")

    @classmethod
    def from_zoneinfo(
        cls, text_or_path: str | Path | None = None, base: KernelConfig | None = None
    ) -> KernelConfig:
        """Seed the zone from a /proc/zoneinfo text (or the host's file when None).

        The simulation models one zone, so the largest zone with managed pages is taken; its
        size, min watermark and the pcp batch/high of its first CPU replace the defaults.
        """
        if text_or_path is None:
            infos = read_host_zoneinfo()
        elif isinstance(text_or_path, Path) or "\n" not in str(text_or_path):
            p = Path(text_or_path)
            try:
                text = p.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"cannot read zoneinfo {str(p)!r}: {exc.strerror}") from exc
            except UnicodeDecodeError as exc:  # a binary file: /proc/zoneinfo is ASCII text
                raise ConfigError(
                    f"{str(p)!r} is not a /proc/zoneinfo text: byte {exc.start} is not UTF-8"
                ) from None
            except ValueError as exc:  # a NUL in the name
                raise ConfigError(f"cannot read zoneinfo {str(p)!r}: {exc}") from None
            infos = parse_zoneinfo(text, source=str(p))
        else:
            infos = parse_zoneinfo(str(text_or_path))
        zone = largest_zone(infos)
        base = base or cls()
        page_kb = base.page_size // 1024
        mm = attrs.evolve(
            base.mm,
            zone_pages=max(64, min(zone.managed, 1 << 26)),
            min_free_kbytes=zone.min * page_kb,
            pcp_batch=zone.pcp[0][3] if zone.pcp and zone.pcp[0][3] > 0 else None,
            pcp_high=zone.pcp[0][2] if zone.pcp and zone.pcp[0][2] > 0 else None,
        )
        return attrs.evolve(base, mm=mm)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key, source)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} = {value!r}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} = {value!r}: expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key} = {value!r}: expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} = {value!r}: expected a string")
        return value
    return value


def _build(cls: type[T], data: Mapping[str, Any], source: str, prefix: str) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: [{prefix.rstrip('.')}] must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in attrs.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = prefix + key
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            hint = did_you_mean(key, fields)
            raise ConfigError(f"{source}: unknown key {full!r}{hint}; allowed here: {allowed}")
        tp = hints[key]
        if attrs.has(tp):
            kwargs[key] = _build(tp, value, source, full + ".")
        else:
            kwargs[key] = _coerce(value, tp, full, source)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(f"{source}: {prefix}{msg}" if prefix else f"{source}: {msg}") from None


def _in_a_table(obj: Any, key: str) -> str:
    """`` (did you mean 'kvfree.variant'?)`` for a field given without its table's name."""
    for f in attrs.fields(type(obj)):
        inner = getattr(obj, f.name)
        if attrs.has(type(inner)) and key in {g.name for g in attrs.fields(type(inner))}:
            return f" (did you mean {f.name + '.' + key!r}?)"
    return ""


def _replace_dotted(obj: Any, changes: Mapping[str, Any]) -> Any:
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    names = {f.name for f in attrs.fields(type(obj))}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if head not in names:
            hint = did_you_mean(head, names) or (
                "" if rest else _in_a_table(obj, key)
            )
            raise ConfigError(
                f"unknown config field {key!r}{hint}; allowed: {', '.join(sorted(names))}"
            )
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, sub in nested.items():
        inner = getattr(obj, head)
        if not attrs.has(type(inner)):
            raise ConfigError(f"config field {head!r} has no sub-fields")
        direct[head] = _replace_dotted(inner, sub)
    return attrs.evolve(obj, **direct)


def config_to_dict(obj: Any) -> dict[str, Any]:
    """Plain-data form (for ``--json`` output and sweeps); nested tables stay nested."""
    return attrs.asdict(obj, recurse=True)
