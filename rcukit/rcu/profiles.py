"""kvfree_rcu() version profiles: the knobs that changed between kernel releases.

Each profile is a documented set of switches taken from kernel.md section 1 (the timeline and
the per-version code walk-throughs). The allocator-core *variant* is an independent knob: a
profile says *whether and where* the enqueue path allocates a block page, the variant says
*how* it does so when it does.

``rfc`` is the RFC's world: the v5.9 mechanism with one code path for RT and !RT (the patch's
stated aim: "make the kfree_rcu() code common for RT and regular kernel"), so the variant is
called under ``krcp->lock`` on every build and the builds can be compared. ``v5.9`` itself
skipped the in-lock allocation on PREEMPT_RT.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from rcukit.errors import ConfigError
from rcukit.mm.gfp import GFP, GFP_KERNEL, GFP_NOWAIT

#: ``GFP_KERNEL|__GFP_NORETRY|__GFP_NOMEMALLOC|__GFP_NOWARN``: v5.13+ head-less path and refill.
REFILL_GFP_5_13 = GFP_KERNEL | GFP.NORETRY | GFP.NOMEMALLOC | GFP.NOWARN
#: v5.11's ``fill_page_cache_func`` mask.
REFILL_GFP_5_11 = GFP_KERNEL | GFP.NOWARN
#: v5.9's boot-time prefill mask.
PREFILL_GFP_5_9 = GFP_NOWAIT | GFP.NOWARN


@attrs.frozen
class KvfreeProfile:
    """The mechanism of one kernel version (see the module docstring)."""

    name: str
    description: str
    #: ``sizeof(struct kvfree_rcu_bulk_data)`` without the records: 16 (5.9-6.2), 32 (6.3).
    header_bytes: int
    #: ``KFREE_DRAIN_JIFFIES`` as a fraction of HZ: HZ/50 before v6.1, 5*HZ after.
    drain_hz_num: int
    drain_hz_den: int
    #: v6.1: pull the monitor in to 1 jiffy once a block's worth is queued.
    kick: bool
    #: v5.9: the enqueue path calls the allocator under ``krcp->lock`` on a cache miss.
    alloc_under_lock: bool
    #: v5.9 returned early on PREEMPT_RT instead of allocating under the raw lock.
    rt_skips_alloc: bool
    #: ``rcu_min_cached_objs`` default: 2 (5.9), 5 (5.11+).
    min_cached_objs: int
    #: v5.9 prefilled the per-CPU cache at boot; removed in v5.11.
    boot_prefill: bool
    #: v5.11+: a cache miss arms the page-cache refill worker (hrtimer -> system_highpri_wq).
    refill_worker: bool
    #: GFP mask of the refill worker.
    refill_gfp: int
    #: v5.13+: the single-argument path drops the lock and allocates with REFILL_GFP_5_13.
    single_arg_direct_alloc: bool
    #: v5.14+: the shrinker sets ``backoff_page_cache_fill`` (refill delayed by 5 s, 1 page).
    shrinker_backoff: bool
    #: v6.3: per-block polled GP snapshots; the monitor frees blocks whose GP already passed.
    polled_snapshots: bool
    #: v6.3: queue at most one batch per monitor run; a krwp is reused only when all its
    #: channels are free (``need_wait_for_krwp_work``).
    one_batch_per_run: bool
    #: The vmalloc channel is freed with one ``vfree_bulk()`` instead of a ``vfree()`` loop.
    vfree_bulk: bool

    def drain_jiffies(self, hz: int) -> int:
        return max(1, hz * self.drain_hz_num // self.drain_hz_den)

    def block_capacity(self, page_size: int, pointer_size: int, header: str) -> int:
        """``KVFREE_BULK_MAX_ENTR``; the ``rfc`` header is the RFC's PAGE_SIZE / sizeof(void *).

        The header is two longs (five from v6.3), so it scales with the pointer size."""
        hdr = 0 if header == "rfc" else self.header_bytes * pointer_size // 8
        return (page_size - hdr) // pointer_size


_V59 = KvfreeProfile(
    name="v5.9",
    description="v5.9: drain every HZ/50, GFP_NOWAIT|__GFP_NOWARN page under krcp->lock "
    "(skipped on PREEMPT_RT), 2 cached pages prefilled at boot",
    header_bytes=16,
    drain_hz_num=1, drain_hz_den=50, kick=False,
    alloc_under_lock=True, rt_skips_alloc=True,
    min_cached_objs=2, boot_prefill=True, refill_worker=False, refill_gfp=PREFILL_GFP_5_9,
    single_arg_direct_alloc=False,
    shrinker_backoff=False,
    polled_snapshots=False, one_batch_per_run=False,
    vfree_bulk=False,
)

# Each release below is the one before it with only what that release changed; a line holds the
# knobs of one mechanism (drain timing, enqueue allocation, the page cache, polled snapshots).
_V5_11 = attrs.evolve(
    _V59,
    name="v5.11",
    description="v5.11: no allocation under the lock; 5 cached pages per CPU refilled by "
    "hrtimer -> system_highpri_wq with GFP_KERNEL|__GFP_NOWARN",
    alloc_under_lock=False,
    min_cached_objs=5, boot_prefill=False, refill_worker=True, refill_gfp=REFILL_GFP_5_11,
)
_V5_13 = attrs.evolve(
    _V5_11,
    name="v5.13",
    description="v5.13: single-argument kvfree_rcu() drops the lock and allocates with "
    "GFP_KERNEL|__GFP_NORETRY|__GFP_NOMEMALLOC|__GFP_NOWARN",
    refill_gfp=REFILL_GFP_5_13,
    single_arg_direct_alloc=True,
)
_V6_1 = attrs.evolve(
    _V5_13,
    name="v6.1",
    description="v6.1: 5*HZ drain with a 1-jiffy kick once a block's worth is queued; "
    "shrinker back-off of the page-cache refill",
    drain_hz_num=5, drain_hz_den=1, kick=True,
    shrinker_backoff=True,
)
_V6_3 = attrs.evolve(
    _V6_1,
    name="v6.3",
    description="v6.3: per-block polled GP snapshots, blocks whose GP already passed are "
    "freed by the monitor without a new GP; one batch per monitor run",
    header_bytes=32,
    polled_snapshots=True, one_batch_per_run=True,
)

PROFILES: dict[str, KvfreeProfile] = {
    "rfc": attrs.evolve(
        _V59,
        name="rfc",
        description="the RFC's world: v5.9 with the block allocator called under krcp->lock "
        "on every build (RT included) and vmalloc blocks freed with vfree_bulk()",
        rt_skips_alloc=False,
        vfree_bulk=True,
    ),
    "v5.9": _V59,
    "v5.11": _V5_11,
    "v5.13": _V5_13,
    "v6.1": _V6_1,
    "v6.3": _V6_3,
}


#: The profile each entry point runs when none is named, in one place (the README's "Version
#: profiles" table): a booted kernel models v5.9, the release the RFC was written against;
#: ``compare`` replays the RFC's world; ``rcuscale`` is run the way its published v6.1 runs were;
#: an application domain gets the newest mechanism (per-block polled snapshots).
DEFAULT_PROFILES: Final = {
    "kernel": "v5.9",
    "compare": "rfc",
    "rcuscale": "v6.1",
    "torture": "v5.9",
    "app": "v6.3",
}


def get_profile(name: str) -> KvfreeProfile:
    """The profile called ``name``; the one place an unknown name is reported."""
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
        raise ConfigError(_unknown(name)) from None


def profile_validator(inst: object, att: attrs.Attribute[Any], value: object) -> None:
    """attrs validator for a ``profile`` field: configs are where a profile name is checked."""
    if not isinstance(value, str) or value not in PROFILES:
        raise ConfigError(f"{att.name} = {_unknown(value)}")


def _unknown(name: object) -> str:
    return f"{name!r} is not a kvfree_rcu profile; allowed: {', '.join(PROFILES)}"
