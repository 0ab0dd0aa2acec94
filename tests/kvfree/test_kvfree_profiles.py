"""kvfree_rcu() version profiles: block capacity, drain timing, polled GPs, and the flood proof.

The flood proof is issue 5's "nothing lost, nothing early, nothing twice" for every profile and
every allocator variant: with debug objects on, every object records the grace-period cookie of
its kvfree_rcu() and a free before that GP ended counts a ``gp_violation``; the slab and vmalloc
debug layers raise on any double free, so reaching the end proves there was none.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from simtools import MS, VARIANTS, boot_and_run, freed, on_cpu

from rcukit.config import KernelConfig
from rcukit.errors import ConfigError
from rcukit.kernel import Kernel
from rcukit.mm.gfp import GFP_KERNEL
from rcukit.rcu.profiles import PROFILES, get_profile
from rcukit.sched.sim import Task

G = int(GFP_KERNEL)


# -- KVFREE_BULK_MAX_ENTR ---------------------------------------------------------------------

#: (page size, pointer size) -> (v5.9-6.2, v6.3-6.4, v6.5+, rfc header).
#: (PAGE_SIZE - header)/sizeof(void*) where the header is two longs before v6.3 (nr_records,
#: next), four in v6.3-6.4 (list_head, unsigned long gp_snap, nr_records) and five from v6.5
#: (gp_snap a two-long rcu_gp_oldstate), so it halves with 4-byte pointers; the RFC's block
#: has no header.
CAPACITY = {
    (4096, 8): (510, 508, 507, 512),
    (16384, 8): (2046, 2044, 2043, 2048),
    (4096, 4): (1022, 1020, 1019, 1024),
    (16384, 4): (4094, 4092, 4091, 4096),
}


@pytest.mark.parametrize(("page", "ptr"), list(CAPACITY))
def test_block_capacity_formula(page: int, ptr: int) -> None:
    """``KVFREE_BULK_MAX_ENTR = (PAGE_SIZE - sizeof(struct kvfree_rcu_bulk_data)) /
    sizeof(void *)`` (kernel/rcu/tree.c; v6.5 "rcu/kvfree: Add debug to check grace periods",
    cdfa0f6fa6b7, made ``gp_snap`` a ``struct rcu_gp_oldstate``)."""
    old, v63, v65, rfc = CAPACITY[(page, ptr)]
    for name in ("rfc", "v5.9", "v5.11", "v5.13", "v6.1"):
        assert get_profile(name).block_capacity(page, ptr, "profile") == old
    for name in ("v6.3", "v6.4"):
        assert get_profile(name).block_capacity(page, ptr, "profile") == v63
    for name in ("v6.5", "v6.12", "v6.15"):
        assert get_profile(name).block_capacity(page, ptr, "profile") == v65
    for name in PROFILES:
        assert get_profile(name).block_capacity(page, ptr, "rfc") == rfc
    # 4 KiB pages, 64-bit: 510 (5.9-6.2, Vlad's nr_records=510 traces), 508, 507.
    assert (page, ptr) != (4096, 8) or (old, v63, v65) == (510, 508, 507)


def test_header_sizes_by_version() -> None:
    """``sizeof(struct kvfree_rcu_bulk_data)`` on 64-bit: 16 (v5.9-6.2), 32 (v6.3-6.4), 40
    (v6.5+), kernel/rcu/tree.c of each tag (mm/slab_common.c from v6.14)."""
    assert {n: p.header_bytes for n, p in PROFILES.items()} == {
        "v5.5": 0, "rfc": 16, "v5.9": 16, "v5.11": 16, "v5.13": 16, "v6.1": 16, "v6.3": 32,
        "v6.4": 32, "v6.5": 40, "v6.12": 40, "v6.15": 40,
    }


@pytest.mark.parametrize(
    ("profile", "header", "page", "ptr"),
    [("v6.3", "profile", 16384, 4), ("v5.9", "rfc", 4096, 8), ("v6.1", "profile", 16384, 8)],
)
def test_a_booted_block_holds_exactly_capacity_records(
    profile: str, header: str, page: int, ptr: int
) -> None:
    """capacity+1 objects on one CPU: one full block and one with a single record."""
    c = KernelConfig(nr_cpus=2, page_size=page, pointer_size=ptr).replace(
        **{"kvfree.profile": profile, "kvfree.header": header}
    )
    want = get_profile(profile).block_capacity(page, ptr, header)

    async def body(k: Kernel) -> dict[int, int]:
        kv = k.kvfree
        assert kv.capacity == want

        async def work(task: Task) -> None:
            for _ in range(want + 1):
                p = await k.mm.kmalloc(task, 32, G)
                await kv.kvfree_rcu_mightsleep(task, p)
            await kv.kvfree_rcu_barrier(task)

        await k.run_on_cpus(work, [0])
        st = kv.statistics()
        assert st.objects_freed == want + 1 and st.fallback_synchronize == 0
        hist: dict[int, int] = st.records_per_block
        return hist

    assert boot_and_run(c, body) == {1: 1, want: 1}


def test_unknown_profile_and_header_are_config_errors() -> None:
    allowed = re.escape(
        "allowed: v5.5, rfc, v5.9, v5.11, v5.13, v6.1, v6.3, v6.4, v6.5, v6.12, v6.15"
    )
    with pytest.raises(ConfigError, match=allowed):
        get_profile("v4.19")
    with pytest.raises(ConfigError, match="allowed: 'profile', 'rfc'"):
        KernelConfig().replace(**{"kvfree.header": "none"})


# -- drain timing in the records-per-block histogram --------------------------------------------


async def _trickle(k: Kernel, n: int, gap_ns: int, settle_ns: int) -> dict[str, Any]:
    """One head-less kvfree_rcu() every ``gap_ns``, then wait ``settle_ns`` (no barrier)."""
    kv = k.kvfree

    async def work(task: Task) -> dict[str, Any]:
        t0 = task.now_ns
        for _ in range(n):
            p = await k.mm.kmalloc(task, 64, G)
            await kv.kvfree_rcu_mightsleep(task, p)
            await task.sleep_ns(gap_ns)
        await task.sleep_ns(settle_ns)
        st = kv.statistics()
        first_drain = kv.timeline[0][0] - t0 if kv.timeline else None
        await kv.kvfree_rcu_barrier(task)
        sync_ns = max(st.latency_ns) if st.fallback_synchronize else 0  # the inline GP
        return {"hist": st.records_per_block, "first_drain_ns": first_drain,
                "freed": st.objects_freed, "sync_ns": sync_ns}

    [r] = await k.run_on_cpus(work, [0])
    return r


def _profile_cfg(profile: str) -> KernelConfig:
    return KernelConfig(nr_cpus=2).replace(
        **{"kvfree.profile": profile, "kvfree.variant": "nowait"}
    )


@pytest.mark.parametrize("profile", ["rfc", "v5.9", "v5.11"])
def test_hz50_drain_gives_small_blocks_on_a_trickle(profile: str) -> None:
    """KFREE_DRAIN_JIFFIES = HZ/50: a block holds what arrives in 20 ms (one object per ms)."""

    async def body(k: Kernel) -> dict[str, Any]:
        return await _trickle(k, 300, MS, 30 * MS)

    r = boot_and_run(_profile_cfg(profile), body)
    assert r["freed"] == 300  # every block drained by the monitor alone
    # v5.11's first head-less call finds no block and falls back to synchronize_rcu(): a GP
    # that waits for the idle CPU's FQS scan (3 jiffies), then a tick, before the trickle goes
    # on; the drain is 20 ms after that.
    assert 19 * MS <= r["first_drain_ns"] - r["sync_ns"] <= 22 * MS
    assert max(r["hist"]) <= 21
    assert sum(r["hist"].values()) >= 14


@pytest.mark.parametrize("profile", ["v6.1", "v6.3"])
def test_5hz_drain_collects_a_slow_trickle_into_one_block(profile: str) -> None:
    """v6.1's 5*HZ: 300 objects over 300 ms sit in one block until the monitor runs at 5 s."""

    async def body(k: Kernel) -> dict[str, Any]:
        return await _trickle(k, 300, MS, 5000 * MS)

    r = boot_and_run(_profile_cfg(profile), body)
    assert r["hist"] == {300: 1}
    assert 5000 * MS <= r["first_drain_ns"] <= 5003 * MS


def test_the_kick_drains_at_a_blocks_worth() -> None:
    """v6.1: once KVFREE_BULK_MAX_ENTR objects are queued the monitor runs one jiffy later."""

    async def body(k: Kernel) -> dict[str, Any]:
        return await _trickle(k, 1200, MS, 10 * MS)

    r = boot_and_run(_profile_cfg("v6.1"), body)
    assert r["hist"] == {510: 2}  # 180 are still waiting for their 5 s
    assert 510 * MS <= r["first_drain_ns"] <= 512 * MS
    assert r["freed"] == 1020


def test_without_the_kick_a_fast_flood_waits_for_the_full_drain() -> None:
    """v5.9 has no kick: 1200 objects queued within a millisecond drain at 20 ms, in full
    blocks and a partial one; v6.1 drains each block's worth one jiffy after it fills."""

    async def body(k: Kernel) -> dict[str, Any]:
        return await _trickle(k, 1200, 0, 30 * MS)

    v59 = boot_and_run(_profile_cfg("v5.9"), body)
    v61 = boot_and_run(_profile_cfg("v6.1"), body)
    assert v59["hist"] == {180: 1, 510: 2}
    assert v59["first_drain_ns"] >= 19 * MS
    assert v61["first_drain_ns"] <= 2 * MS
    assert v61["hist"].get(510, 0) >= 1


# -- v6.3: polled grace-period snapshots --------------------------------------------------------


@pytest.mark.parametrize("profile", ["v6.1", "v6.3"])
def test_v63_frees_blocks_whose_gp_already_passed_from_the_monitor(profile: str) -> None:
    """A GP completes between queueing and the monitor run: v6.3 frees the block at once
    (kvfree_rcu_drain_ready), v6.1 still hands it to a new grace period."""

    async def body(k: Kernel) -> Any:
        kv = k.kvfree

        async def work(task: Task) -> list[int]:
            ptrs = []
            for i in range(100):
                p = await k.mm.kmalloc(task, 64, G)
                ptrs.append(p)
                if i % 2:
                    await kv.kvfree_rcu(task, p, p + 8)
                else:
                    await kv.kvfree_rcu_mightsleep(task, p)
            await k.rcu.synchronize_rcu(task)  # someone else's GP: theirs, not kvfree's
            assert kv.statistics().pending == 100
            await task.sleep_ns(5100 * MS)  # the 5 s monitor runs
            return ptrs

        [ptrs] = await k.run_on_cpus(work, [0])
        assert all(freed(k, p) for p in ptrs)
        return kv.statistics()

    st = boot_and_run(_profile_cfg(profile).replace(**{"kvfree.debug_objects": True}), body)
    assert st.objects_freed == st.calls == 100 and st.pending == 0 and st.gp_violations == 0
    if profile == "v6.3":
        assert st.freed_early_polled == 100
        assert st.grace_periods_waited == 0 and st.batches_queued == 0
    else:
        assert st.freed_early_polled == 0
        assert st.grace_periods_waited >= 1


# -- nothing lost, nothing early, nothing twice -------------------------------------------------


async def _flood_and_verify(k: Kernel, n: int, think_ns: int) -> Any:
    """Each CPU floods both forms (the head-less one where the profile has it) on slab and
    vmalloc pointers, then a barrier; verify all."""
    kv = k.kvfree
    mm = k.mm

    async def flood(task: Task) -> list[int]:
        ptrs = []
        for i in range(n):
            p = await (mm.vmalloc(task, 200) if i % 7 == 0 else mm.kmalloc(task, 64, G))
            assert p
            ptrs.append(p)
            if i % 3 == 0 and kv.policy.headless:
                await kv.kvfree_rcu_mightsleep(task, p)
            else:
                await kv.kvfree_rcu(task, p, p + 16)
            task.charge(think_ns)
            if i % 64 == 63:
                await task.cond_resched()
        return ptrs

    per_cpu = await k.run_on_cpus(flood)

    await on_cpu(k, kv.kvfree_rcu_barrier)
    ptrs = [p for ps in per_cpu for p in ps]
    # Addresses are reused once freed; the last object at each address is freed as well.
    assert all(freed(k, p) for p in ptrs)
    k.mm.check()  # buddy, pcp and page states agree
    st = kv.statistics()
    assert st.calls == len(ptrs)
    assert st.objects_freed == st.calls  # nothing lost (and nothing counted twice)
    assert st.pending == 0 and st.blocks_in_use == 0
    assert st.gp_violations == 0  # nothing early
    assert st.queued_vmalloc == sum(1 for p in ptrs if p >= 0xFFFFC90000000000)
    assert not k.locks.splats  # the default build
    return st


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("profile", list(PROFILES))
def test_flood_every_profile_every_variant(profile: str, variant: str) -> None:
    """No page cache, and half the atomic block allocations fail (fail_page_alloc): every
    fallback path (rcu_head list, inline synchronize_rcu) carries objects too."""
    c = KernelConfig(nr_cpus=2).replace(
        **{
            "kvfree.profile": profile,
            "kvfree.variant": variant,
            "kvfree.debug_objects": True,
            "kvfree.rcu_min_cached_objs": 0,
            "mm.fail_page_alloc_probability": 0.5,
            "mm.fail_page_alloc_ignore_gfp_reclaim": True,
        }
    )

    async def body(k: Kernel) -> Any:
        return await _flood_and_verify(k, 600, 80_000)

    st = boot_and_run(c, body)
    prof = get_profile(profile)
    if prof.alloc_under_lock and variant in ("fast-try", "nowait", "gfp-zero", "raw-zone-lock"):
        assert st.block_alloc_failures > 0  # injected failures reached the in-lock path
    if prof.single_arg_direct_alloc:
        # v5.13+: head-less calls allocate their own block (GFP_KERNEL, never injected);
        # two-argument calls find no cached page when that block is full.
        assert st.fallback_synchronize == 0 and st.fallback_rcu_head > 0
    elif variant == "page-cache" or not prof.alloc_under_lock:
        # Nothing allocates in the caller's context: both forms fall back (v5.5 has one form).
        assert st.fallback_rcu_head > 0 and (st.fallback_synchronize > 0) == prof.headless
        assert st.block_alloc_attempts == 0
    assert sum(st.records_per_block.values()) == st.bulk_calls


@pytest.mark.parametrize("profile", [n for n, p in PROFILES.items() if p.blocks])
def test_flood_with_the_default_page_cache(profile: str) -> None:
    c = KernelConfig(nr_cpus=2).replace(
        **{"kvfree.profile": profile, "kvfree.variant": "nowait", "kvfree.debug_objects": True}
    )

    async def body(k: Kernel) -> Any:
        return await _flood_and_verify(k, 900, 50_000)

    st = boot_and_run(c, body)
    assert st.blocks_from_cache > 0
    assert st.cached_pages > 0  # spare block pages went back to the cache
