"""The clock-free kvfree_rcu() core both hosts share, and a user's variant end to end.

The core (``rcukit.rcu.kvfree.core``) is exercised directly, without a kernel or a clock:
krcp channels, blocks, the two krwp batches, the monitor's decisions and the counters.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rcukit
import rcukit.sim
from rcukit.config import KernelConfig
from rcukit.errors import ConfigError
from rcukit.mm.gfp import GFP_KERNEL
from rcukit.rcu.kvfree.core import (
    KFREE_N_BATCHES,
    KfreeRcuCpu,
    KfreeRcuCpuWork,
    KvfreeCounters,
    KvfreePolicy,
    KvfreeRcuBulkData,
)
from rcukit.rcu.kvfree.variants import KVFREE_REFILL_GFP, BlockPageSource
from rcukit.rcu.profiles import PROFILES, REFILL_GFP_5_11, get_profile
from rcukit.scenarios.compare import Workload, default_config, run_compare
from rcukit.sched.sim import Task
from rcukit.wq import Work

_Krwp = KfreeRcuCpuWork[KvfreeRcuBulkData]


def _krc(nr_channels: int = 2) -> KfreeRcuCpu[KvfreeRcuBulkData, _Krwp]:
    return KfreeRcuCpu(nr_channels, [_Krwp(i, nr_channels) for i in range(KFREE_N_BATCHES)])


def _block(n: int, gp_snap: int = 0) -> KvfreeRcuBulkData:
    b = KvfreeRcuBulkData(list(range(n)))
    b.gp_snap = gp_snap
    return b


# -- the policy: each profile fact decided once --


def test_policy_resolves_the_rt_skip_once() -> None:
    """v5.9 ``kvfree_call_rcu()`` returned early on PREEMPT_RT instead of allocating under the
    raw ``krcp->lock`` (v5.9, kernel/rcu/tree.c, ``kvfree_call_rcu_add_ptr_to_bulk``: "if
    (IS_ENABLED(CONFIG_PREEMPT_RT)) return false"); the RFC's world calls it on every build."""
    cap = 510
    assert KvfreePolicy.from_profile(get_profile("v5.9"), cap).alloc_under_lock
    assert not KvfreePolicy.from_profile(get_profile("v5.9"), cap, preempt_rt=True).alloc_under_lock
    assert KvfreePolicy.from_profile(get_profile("rfc"), cap, preempt_rt=True).alloc_under_lock
    for name in ("v5.11", "v5.13", "v6.1", "v6.3"):
        assert not KvfreePolicy.from_profile(get_profile(name), cap).alloc_under_lock


def test_policy_page_cache_variant_brings_v5_11s_cache() -> None:
    """v5.11 ``fill_page_cache_func()`` keeps ``rcu_min_cached_objs`` = 5 pages per CPU
    (v5.11, kernel/rcu/tree.c); the page-cache variant grafted onto v5.9 gets that cache and
    the refill flags the kernel settled on (v5.13, ``GFP_KERNEL|__GFP_NORETRY|
    __GFP_NOMEMALLOC|__GFP_NOWARN``); a config value wins over both."""
    v59 = get_profile("v5.9")
    plain = KvfreePolicy.from_profile(v59, 510)
    assert (plain.min_cached, plain.refill_gfp) == (2, v59.refill_gfp)
    deferred = KvfreePolicy.from_profile(v59, 510, defers_to_worker=True)
    assert (deferred.min_cached, deferred.refill_gfp) == (5, KVFREE_REFILL_GFP)
    v511 = KvfreePolicy.from_profile(get_profile("v5.11"), 510, defers_to_worker=True)
    assert v511.refill_gfp == REFILL_GFP_5_11  # the profile's own worker keeps its flags
    assert KvfreePolicy.from_profile(v59, 510, min_cached=0).min_cached == 0


@given(st.sampled_from(sorted(PROFILES)), st.integers(0, 2000))
def test_policy_kick_only_from_v6_1_and_at_a_blocks_worth(name: str, count: int) -> None:
    """v6.1 ``schedule_delayed_monitor_work()`` uses a 1-jiffy delay once ``krc_count()``
    reaches ``KVFREE_BULK_MAX_ENTR`` (v6.1, kernel/rcu/tree.c); earlier versions never kick."""
    prof = get_profile(name)
    pol = KvfreePolicy.from_profile(prof, 508, list_channel=True)
    assert pol.kick_now(count) == (prof.kick and count >= 508)


# -- the krcp: channels, batches, drain --


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["v6.1", "v6.3", "v6.12"]),
    st.lists(
        st.one_of(
            st.tuples(st.just("insert"), st.integers(0, 1), st.integers(1, 7)),
            st.tuples(st.just("head"), st.integers(1, 3), st.just(0)),
            st.tuples(st.just("batch"), st.just(0), st.just(0)),
            st.tuples(st.just("reclaim"), st.integers(0, KFREE_N_BATCHES - 1), st.just(0)),
        ),
        max_size=40,
    ),
)
def test_queue_batch_never_loses_an_object(
    profile: str, ops: list[tuple[str, int, int]]
) -> None:
    """The monitor moves each channel into a krwp slot whose same channel is free (v6.1,
    kernel/rcu/tree.c, ``kfree_rcu_monitor``), from v6.3-rc6 (5da7cb193db3,
    ``need_wait_for_krwp_work()``) only into a wholly free krwp, and from v6.12
    (``kvfree_rcu_queue_batch()``) stops after one queued batch. Every object stays in exactly
    one place until its batch is reclaimed; ``count`` restarts at 0 when a batch is detached."""
    pol = KvfreePolicy.from_profile(get_profile(profile), 8)
    one_batch = pol.need_wait_for_krwp_work
    krc = _krc()
    ctr = KvfreeCounters()
    queued_works: list[int] = []
    inserted = reclaimed = 0

    def where() -> int:
        n = krc.krc_count()
        for w in krc.krw:
            n += sum(len(b) for chan in w.bulk_free for b in chan)
            n += len(w.head_free) if w.head_free is not None else 0
        return n

    for op, a, b in ops:
        if op == "insert":
            krc.bulk[a].append(_block(b))
            krc.count += b
            inserted += b
        elif op == "head":
            if krc.head is None:
                krc.head = array("Q")
            krc.head.extend(range(a))
            krc.count += a
            inserted += a
        elif op == "batch":
            busy_before = [w.busy() for w in krc.krw]
            count_before = krc.count

            def queue(w: _Krwp) -> bool:
                queued_works.append(w.idx)
                return True

            queued = krc.kvfree_rcu_queue_batch(pol, ctr, lambda: 42, queue)
            if one_batch:
                assert len(queued_works) <= ctr.batches_queued
                for i in queued_works[-1:] if queued else []:
                    assert not busy_before[i]  # a busy krwp never takes more
            if queued:
                assert krc.count == 0
            else:
                assert krc.count == count_before
        else:
            w = krc.krw[a]
            reclaimed += sum(len(blk) for chan in w.bulk_free for blk in chan)
            reclaimed += len(w.head_free) if w.head_free is not None else 0
            w.bulk_free = [[], []]
            w.head_free = None
        assert where() + reclaimed == inserted
    assert ctr.batches_queued == len(queued_works)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("insert"), st.integers(0, 1), st.integers(1, 7)),
            st.tuples(st.just("head"), st.integers(1, 3), st.just(0)),
            st.tuples(st.just("batch"), st.just(0), st.just(0)),
            st.tuples(st.just("reclaim"), st.integers(0, KFREE_N_BATCHES - 1), st.just(0)),
        ),
        max_size=40,
    ),
)
def test_the_v6_12_break_changes_nothing_once_krwps_wait(ops: list[tuple[str, int, int]]) -> None:
    """6.3-6.11's ``kfree_rcu_monitor()`` loop goes on to the next krwp after queueing a batch;
    v6.12's ``kvfree_rcu_queue_batch()`` (2b55d6a42d14) breaks. With
    ``need_wait_for_krwp_work()`` the first wholly free krwp takes every channel, so both
    leave the krcp and the krwps in the same state after any sequence of operations."""
    v63 = KvfreePolicy.from_profile(get_profile("v6.3"), 8)
    v612 = KvfreePolicy.from_profile(get_profile("v6.12"), 8)
    assert (v63.one_batch_per_run, v612.one_batch_per_run) == (False, True)
    krcs = [_krc(), _krc()]
    ctrs = [KvfreeCounters(), KvfreeCounters()]
    for op, a, b in ops:
        for krc, pol, ctr in zip(krcs, (v63, v612), ctrs, strict=True):
            if op == "insert":
                krc.bulk[a].append(_block(b))
            elif op == "head":
                if krc.head is None:
                    krc.head = array("Q")
                krc.head.extend(range(a))
            elif op == "batch":
                krc.kvfree_rcu_queue_batch(pol, ctr, lambda: 7, lambda w: True)
            else:
                krc.krw[a].bulk_free = [[], []]
                krc.krw[a].head_free = None
        a63, a612 = ([(len(c), [len(b) for b in c]) for c in k.bulk] for k in krcs)
        assert a63 == a612
        w63, w612 = (
            [([len(b) for c in w.bulk_free for b in c], w.head_free) for w in k.krw] for k in krcs
        )
        assert w63 == w612
    assert ctrs[0].batches_queued == ctrs[1].batches_queued


def test_list_channel_is_stamped_when_it_is_detached() -> None:
    """The ``rcu_head`` list channel gets ``krwp->head_free_gp_snap =
    get_state_synchronize_rcu()`` as it is detached (v6.3, kernel/rcu/tree.c,
    ``kvfree_rcu_queue_batch``); the host supplies the snapshot."""
    krc = _krc()
    krc.head = array("Q", [1, 2, 3])
    pol = KvfreePolicy.from_profile(get_profile("v6.3"), 8)
    ctr = KvfreeCounters()
    assert krc.kvfree_rcu_queue_batch(pol, ctr, lambda: 0x1234, lambda w: True)
    w = krc.krw[0]
    assert w.head_free is not None and list(w.head_free) == [1, 2, 3]
    assert w.head_free_gp_snap == 0x1234 and krc.head is None
    assert not krc.need_offload_krc() and ctr.batches_queued == 1


@given(st.lists(st.integers(0, 10), max_size=12), st.integers(0, 10))
def test_drain_ready_takes_the_safe_prefix_only(snaps: list[int], done_upto: int) -> None:
    """``kvfree_rcu_drain_ready()`` frees a channel's oldest blocks whose ``gp_snap`` has
    completed and stops at the first that has not (v6.3, kernel/rcu/tree.c)."""
    krc = _krc(1)
    blocks = [_block(1, s) for s in snaps]
    krc.bulk[0].extend(blocks)
    ready, head = krc.kvfree_rcu_drain_ready(lambda s: s <= done_upto)
    n = 0
    while n < len(snaps) and snaps[n] <= done_upto:
        n += 1
    got = [b for _, bs in ready for b in bs]
    assert got == blocks[:n] and krc.bulk[0] == blocks[n:] and head is None
    assert all(idx == 0 for idx, _ in ready)


def test_cached_bnodes_up_to_min_cached() -> None:
    """``put_cached_bnode()`` keeps a page only while the cache holds fewer than
    ``rcu_min_cached_objs`` (v5.11, kernel/rcu/tree.c); ``get_cached_bnode()`` pops one."""
    krc = _krc()
    assert [krc.put_cached_bnode(p, 2) for p in (10, 11, 12)] == [True, True, False]
    assert krc.get_cached_bnode() == 11 and krc.get_cached_bnode() == 10
    assert krc.get_cached_bnode() is None


def test_counters_snapshot_is_frozen_and_adds_the_inline_path() -> None:
    """A frozen ``statistics()`` snapshot (trio's style): later counting does not change it;
    calls counted only on the inline path add to pending and to the latency histogram."""
    c = KvfreeCounters()
    c.fast_single, c.fast_double, c.slow_calls, c.slow_single = 3, 2, 1, 1
    c.pending = 1
    c.latency[900] = 1
    c.note_block()
    snap = c.statistics(cached_pages=4, fast_ns=50)
    assert (snap.calls, snap.calls_single, snap.calls_double) == (6, 4, 2)
    assert snap.pending == 6 and snap.latency_ns == {50: 5, 900: 1}
    assert snap.pages_peak == 1 and snap.cached_pages == 4
    c.note_freed(6)
    assert snap.objects_freed == 0 and c.objects_freed == 6 and c.pending_total == 0
    with pytest.raises(AttributeError):
        snap.calls = 0  # type: ignore[misc]


# -- a user's variant, end to end --


class Mine:
    """A mempool-style source: per-kernel, per-CPU reserves refilled by a worker in process
    context; ``get_page`` only pops (no page-allocator call under ``krcp->lock``)."""

    name = "mine"
    gfp = KVFREE_REFILL_GFP
    description = "test mempool: per-CPU reserve, refilled on system_highpri_wq"
    defers_to_worker = False

    def __init__(self, per_cpu: int = 4) -> None:
        self.per_cpu = per_cpu
        self._state: dict[object, tuple[list[list[int]], list[Work]]] = {}
        self.handed_out = 0
        self.refilled = 0

    def _pools(self, mm: Any) -> tuple[list[list[int]], list[Work]]:
        st_ = self._state.get(mm)
        if st_ is None:
            pools: list[list[int]] = [[] for _ in mm.pcps]
            works = [Work(f"mine_refill/{c}", self._refill(mm, pools)) for c in range(len(pools))]
            st_ = self._state[mm] = (pools, works)
        return st_

    def _refill(self, mm: Any, pools: list[list[int]]) -> Callable[[Task, Work], Any]:
        async def refill(task: Task, work: Work) -> None:
            pool = pools[task.cpu.id]
            while len(pool) < self.per_cpu:
                addr = await mm.get_free_page(task, self.gfp)
                if addr is None:
                    break
                pool.append(addr)
                self.refilled += 1

        return refill

    async def get_page(self, task: Task, mm: Any) -> int | None:
        pools, works = self._pools(mm)
        cpu = task.cpu.id
        pool = pools[cpu]
        addr = pool.pop() if pool else None
        if addr is not None:
            self.handed_out += 1
            task.charge(mm.cost.pcp_alloc_ns)
        if len(pool) < self.per_cpu:
            mm.kernel.system_highpri_wq.queue_work(task, works[cpu], cpu)
        return addr


async def test_user_variant_runs_through_kvfree_rcu(autojump_clock: Any) -> None:
    """A user's ``BlockPageSource`` passed to ``boot(block_sources=...)`` is the variant the
    enqueue path calls under ``krcp->lock`` (v5.9 ``kvfree_call_rcu_add_ptr_to_bulk``'s
    in-lock allocation, the RFC's setting): every block page comes from the boot-time cache or
    from it, and every object is freed after the barrier."""
    mine = Mine()
    assert isinstance(mine, BlockPageSource)
    cfg = KernelConfig(nr_cpus=2, prove_raw_lock_nesting=True).replace(
        **{"kvfree.variant": "mine", "kvfree.profile": "rfc"}
    )
    n_per_cpu = 3000
    async with rcukit.sim.boot(cfg, block_sources=[mine]) as k:
        assert k.kvfree.variant is mine

        async def flood(task: Task) -> None:
            for _ in range(n_per_cpu):
                p = await k.mm.kmalloc(task, 64, int(GFP_KERNEL))
                await k.kvfree.kvfree_rcu(task, p, p)
                await task.cond_resched()
            await k.kvfree.kvfree_rcu_barrier(task)

        await k.run_on_cpus(flood)
        s = k.kvfree.statistics()
        assert s.calls == s.objects_freed == 2 * n_per_cpu and s.pending == 0
        assert mine.handed_out > 0 and mine.refilled >= mine.handed_out
        assert s.block_alloc_attempts - s.block_alloc_failures == mine.handed_out
        assert s.bulk_calls == s.blocks_from_cache + mine.handed_out
        assert not k.locks.splats  # nothing but a pop under the raw lock


def test_user_variant_in_run_compare() -> None:
    """``run_compare`` accepts a user's variant by name with ``block_sources``; each row boots
    a kernel with it registered, and its block pages are counted like the built-ins'."""
    mine = Mine()
    wl = Workload().scaled(0.05)
    cfg = default_config()
    with pytest.raises(ConfigError, match=r"unknown variant 'mine'; allowed: .*nolock"):
        run_compare(cfg, wl, variants=["mine"])
    res = run_compare(cfg, wl, variants=["mine", "nowait"], block_sources=[mine])
    rows = {(r["variant"], r["kernel_config"]): r for r in res.rows}
    assert {v for v, _ in rows} == {"mine", "nowait"} and len(rows) == 6
    mine_rows = [r for (v, _), r in rows.items() if v == "mine"]
    got = sum(r["block_alloc_attempts"] - r["block_alloc_failures"] for r in mine_rows)
    assert got == mine.handed_out > 0
    for r in res.rows:
        assert r["objects_freed"] == r["kvfree_calls"] > 0 and r["objects_pending"] == 0
    for r in mine_rows:
        assert sum(r["splats"].values()) == 0


def test_variant_names_are_resolved_when_the_kernel_is_built() -> None:
    """Config accepts any non-empty variant name; the kernel resolves it against built-ins and
    the user's sources, listing both when it is unknown."""
    with pytest.raises(ConfigError, match="non-empty"):
        KernelConfig().replace(**{"kvfree.variant": ""})
    cfg = KernelConfig(nr_cpus=1).replace(**{"kvfree.variant": "mine"})
    with pytest.raises(ConfigError, match=r"unknown allocator variant 'mine'; known: .*nowait"):
        rcukit.kernel.Kernel(cfg)
    k = rcukit.kernel.Kernel(cfg, block_sources=[Mine()])
    assert k.kvfree.variant.name == "mine"
    assert "mine" in k.kvfree.block_sources.names()
