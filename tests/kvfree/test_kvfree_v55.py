"""The ``v5.5`` profile: the first kfree_rcu() batching, before pointer blocks.

Source: kernel/rcu/tree.c at v5.5, commit a35d16905efc ("rcu: Add basic support for kfree_rcu()
batching"; kernel.md 1.0). ``struct kfree_rcu_cpu`` is {``rcu_work``, ``head``, ``head_free``,
``lock``, ``monitor_work``, ``monitor_todo``, ``initialized``}: no block, no page cache, one batch.
"""

from __future__ import annotations

from typing import Any

import pytest
from simtools import MS, VARIANTS, boot_and_run, freed, on_cpu

from rcukit.app.config import DomainConfig
from rcukit.config import KernelConfig
from rcukit.errors import ConfigError, RcuUsageError
from rcukit.kernel import Kernel
from rcukit.mm.gfp import GFP_KERNEL
from rcukit.rcu.kvfree import sim as kvfree_sim
from rcukit.rcu.kvfree.core import KvfreePolicy
from rcukit.rcu.profiles import PROFILES, get_profile
from rcukit.scenarios.rcuscale import RcuscaleParams, run_rcuscale
from rcukit.sched.sim import Task

G = int(GFP_KERNEL)


def _cfg(**kw: Any) -> KernelConfig:
    return KernelConfig(nr_cpus=2).replace(**{"kvfree.profile": "v5.5", **kw})


def test_v55_profile_facts() -> None:
    """v5.5 kernel/rcu/tree.c: ``KFREE_DRAIN_JIFFIES (HZ / 50)``; one ``head_free`` per
    ``kfree_rcu_cpu`` (``KFREE_N_BATCHES`` = 2 arrives in v5.6); no ``kfree_rcu_bulk_data``
    (v5.7), no page cache, no shrinker. It is the oldest profile, listed first."""
    p = get_profile("v5.5")
    assert next(iter(PROFILES)) == "v5.5"
    assert p.drain_jiffies(1000) == 20 and p.drain_jiffies(250) == 5
    assert (p.blocks, p.n_batches, p.shrinker, p.kick) == (False, 1, False, False)
    assert (p.min_cached_objs, p.boot_prefill, p.refill_worker, p.alloc_under_lock) == (
        0, False, False, False,
    )
    pol = KvfreePolicy.from_profile(p, 512, defers_to_worker=True, min_cached=5,
                                    list_channel=True)
    assert (pol.blocks, pol.n_batches, pol.min_cached) == (False, 1, 0)  # no page cache at all
    for name in PROFILES:
        if name != "v5.5":
            assert (PROFILES[name].blocks, PROFILES[name].n_batches) == (True, 2)


@pytest.mark.parametrize("variant", VARIANTS)
def test_v55_never_allocates_a_block_page_and_every_object_takes_the_list(
    variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """v5.5 ``kfree_call_rcu()`` (kernel/rcu/tree.c) only links ``head->next = krcp->head``:
    there is no block to allocate, whatever the allocator-core variant, so under memory
    pressure (half the page allocations fail) no block is made, no page cached, and every
    two-argument object goes to the ``rcu_head`` list. ``kfree_rcu_batch_init()`` registers no
    shrinker (that came ~v5.7)."""
    def no_block(*_a: Any) -> Any:
        raise AssertionError("v5.5 made a kvfree_rcu_bulk_data block")

    monkeypatch.setattr(kvfree_sim, "Bnode", no_block)
    c = _cfg(**{
        "kvfree.variant": variant, "kvfree.debug_objects": True,
        "kvfree.rcu_min_cached_objs": 5,  # asks for a page cache v5.5 does not have
        "mm.fail_page_alloc_probability": 0.5, "mm.fail_page_alloc_ignore_gfp_reclaim": True,
    })

    async def body(k: Kernel) -> Any:
        kv = k.kvfree
        assert kv.shrinker is None
        assert all(not krcp.cache for krcp in kv.krcs)  # nothing prefilled at boot

        async def flood(task: Task) -> list[int]:
            ptrs = []
            for i in range(400):
                p = await k.mm.kmalloc(task, 64, G)
                ptrs.append(p)
                await kv.kvfree_rcu(task, p, p + 16)
                task.charge(20_000)
                if i % 64 == 63:
                    await task.cond_resched()
            return ptrs

        per_cpu = await k.run_on_cpus(flood)

        await on_cpu(k, kv.kvfree_rcu_barrier)
        assert all(freed(k, p) for ps in per_cpu for p in ps)
        assert all(not krcp.cache and not any(krcp.bulk) for krcp in kv.krcs)
        return kv.statistics()

    st = boot_and_run(c, body)
    assert st.calls == st.queued_list == st.fallback_rcu_head == st.objects_freed == 800
    assert st.queued_slab == 0 and st.fallback_synchronize == 0
    assert st.block_alloc_attempts == st.blocks_from_cache == st.pages_peak == 0
    assert st.cached_pages == 0 and st.bulk_calls == 0 and not st.records_per_block
    assert st.gp_violations == 0


def test_v55_at_most_one_batch_in_flight_and_the_monitor_rearms_while_it_is_busy() -> None:
    """v5.5 ``queue_kfree_rcu_work()`` (kernel/rcu/tree.c) returns false while
    ``krcp->head_free`` is set, and ``kfree_rcu_drain_unlock()`` then re-arms
    ``monitor_work`` for ``KFREE_DRAIN_JIFFIES`` (``monitor_todo``). A reader on CPU 1 holds
    the first batch's grace period for 100 ms: meanwhile the monitor keeps running every 20 ms
    and queues nothing, objects pile up on ``krcp->head``, and the next batch leaves only when
    ``kfree_rcu_work()`` has emptied ``head_free``."""

    async def body(k: Kernel) -> Any:
        kv = k.kvfree
        krcp = kv.krcs[0]
        assert len(krcp.krw) == 1
        mon = kv.monitor
        runs: list[tuple[bool, bool]] = []
        inner = mon.kvfree_rcu_queue_batch

        def spy(task: Task, kr: Any) -> bool:
            busy = kr.krw[0].busy()
            queued = inner(task, kr)
            assert sum(w.busy() for w in kr.krw) <= 1
            if kr is krcp:
                runs.append((busy, queued))
            return queued

        mon.kvfree_rcu_queue_batch = spy  # type: ignore[method-assign]

        async def cpu(task: Task) -> None:
            if task.cpu.id == 1:
                await task.sleep_ns(25 * MS)  # after the first batch was queued (at ~20 ms)
                k.rcu.rcu_read_lock(task)
                task.charge(100 * MS)
                k.rcu.rcu_read_unlock(task)
                return
            for _ in range(150):
                p = await k.mm.kmalloc(task, 64, G)
                await kv.kvfree_rcu(task, p, p + 16)
                await task.sleep_ns(MS)
            await task.sleep_ns(200 * MS)

        await k.run_on_cpus(cpu, [0, 1])
        return runs, kv.statistics()

    runs, st = boot_and_run(_cfg(**{"kvfree.debug_objects": True}), body)
    assert all(not queued for busy, queued in runs if busy)  # never a second batch
    assert sum(1 for busy, _ in runs if busy) >= 3  # re-armed every 20 ms while busy
    assert st.objects_freed == st.calls == 150 and st.gp_violations == 0
    assert st.batches_queued == sum(1 for _, q in runs if q)


def test_v55_frees_an_object_only_after_a_grace_period() -> None:
    """v5.5 ``kfree_rcu_work()`` runs from ``queue_rcu_work()`` (kernel/rcu/tree.c), i.e.
    after a grace period: an object queued while a reader on another CPU is inside its
    critical section stays allocated until that reader leaves, and is freed after."""

    async def body(k: Kernel) -> Any:
        kv = k.kvfree
        box: list[int] = []
        seen: list[bool] = []

        async def cpu(task: Task) -> None:
            if task.cpu.id == 1:
                k.rcu.rcu_read_lock(task)
                await task.sync()
                while not box:
                    task.charge(MS)
                    await task.sync()
                task.charge(60 * MS)  # three HZ/50 drain periods inside the reader
                await task.sync()
                seen.append(freed(k, box[0]))
                k.rcu.rcu_read_unlock(task)
                return
            await task.sleep_ns(MS)
            p = await k.mm.kmalloc(task, 64, G)
            await kv.kvfree_rcu(task, p, p + 16)
            box.append(p)
            await task.sleep_ns(150 * MS)
            seen.append(freed(k, p))

        await k.run_on_cpus(cpu, [0, 1])
        return seen, kv.statistics()

    seen, st = boot_and_run(_cfg(**{"kvfree.debug_objects": True}), body)
    assert seen == [False, True]
    assert st.objects_freed == 1 and st.gp_violations == 0 and st.grace_periods_waited == 1


def test_an_application_domain_rejects_a_blockless_profile() -> None:
    """The app domain's queues store every pointer in a block (objects carry no
    ``rcu_head``) and build two batches, so v5.5 cannot run there: a ConfigError says why."""
    with pytest.raises(ConfigError, match=r"rcu_head list channel.*from v5\.9 on"):
        KvfreePolicy.from_profile(get_profile("v5.5"), 512)
    DomainConfig(profile="v5.5")  # the name itself is valid


def test_the_head_less_form_does_not_exist_before_v5_9() -> None:
    """v5.5 had only ``kfree_rcu(ptr, rhf)``; the head-less ``kvfree_rcu(ptr)`` arrived in v5.9
    (kernel/rcu/tree.c, ``kvfree_call_rcu``: "rcu/tree: Support reclaim for head-less object").
    A head-less call on v5.5 is a usage error that names the version, and it changes nothing:
    no call is counted and the object stays the caller's."""

    async def body(k: Kernel) -> Any:
        kv = k.kvfree

        async def cpu(task: Task) -> None:
            p = await k.mm.kmalloc(task, 64, G)
            with pytest.raises(RcuUsageError, match=r"head-less form arrived in v5\.9.*v5\.5"):
                await kv.kvfree_rcu(task, p)
            assert not freed(k, p)
            await k.mm.kfree(task, p)

        await k.run_on_cpus(cpu, [0])
        return kv.statistics()

    st = boot_and_run(_cfg(), body)
    assert st.calls == 0 and st.pending == 0


def test_rcuscale_on_v5_5_passes_the_rcu_head() -> None:
    """rcuperf's kfree test of v5.5 (kernel/rcu/rcuperf.c, ``kfree_perf_thread``) always
    passed the rcu_head; ``kfree_rcu_test_single`` needs v5.9's head-less form, so asking for
    it on v5.5 is refused before anything runs, and the default run makes two-argument calls
    only."""
    cfg = KernelConfig(nr_cpus=2).replace(**{"kvfree.profile": "v5.5", "kvfree.variant": "nowait"})
    with pytest.raises(ConfigError, match="no head-less kvfree_rcu"):
        run_rcuscale(RcuscaleParams(kfree_rcu_test_single=True), cfg)
    r = run_rcuscale(
        RcuscaleParams(kfree_nthreads=2, kfree_alloc_num=300, kfree_loops=2), cfg
    )
    # a head-less call would have raised; every object went through the rcu_head list
    assert r.objects == 1200
    assert r.counts.kfree_calls == 1200 and r.counts.kfree_bulk_calls == 0
