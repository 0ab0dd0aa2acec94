"""Run-based floods (``kvfree.kvfree_rcu_flood``) against the per-call reference path.

The kernel fact both paths model: rcuscale's ``kfree_scale_thread`` (``kernel/rcu/rcuscale.c``,
v5.9+; rcuperf.c before) does, per loop, ``kfree_alloc_num`` x ``p = kmalloc(sizeof(*p),
GFP_KERNEL)`` then ``kfree_rcu(p, rh)`` or ``kfree_rcu_mightsleep(p)``, and ``cond_resched()``
per loop; each kvfree_rcu() call stores the pointer in the current block of its CPU's
``krcp`` under ``krcp->lock`` (``kvfree_call_rcu()``, ``add_ptr_to_bulk_krc_lock()``), and
``kfree_rcu_work()`` frees each block with one ``kfree_bulk()``. The run-based path claims to
be the per-call loop done an event horizon at a time: every count (calls by form, blocks,
block-allocation attempts and failures, list and synchronous fallbacks, batches, grace periods,
objects freed, ``kfree_bulk()`` calls and their sizes, splats) is identical, and simulated time
matches (the claim is exact; the property allows the brief's 1 %).

The head-less/two-argument *mix* cannot be compared call for call: the per-call loop draws a
bit per object, a run draws one popcount per run (``KvfreeFlood.kvfree_rcu_flood``). So each
example floods one form only (head-less only, as ``kfree_rcu_test_single=1``, or two-argument
only, as ``kfree_rcu_test_double=1``), which both paths run the same way.

Size: the CI version runs :data:`EXAMPLES` examples of small floods. For the larger check by
hand, set ``RCUKIT_EQUIV_EXAMPLES`` (e.g. 300) and ``RCUKIT_EQUIV_SCALE`` (e.g. 8: 8x the
objects per loop)::

    RCUKIT_EQUIV_EXAMPLES=300 RCUKIT_EQUIV_SCALE=8 pytest tests/kvfree/test_run_equivalence.py
"""

from __future__ import annotations

import os
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from rcukit.config import KernelConfig
from rcukit.kernel import boot, run_sim
from rcukit.mm.gfp import GFP_KERNEL
from rcukit.rcu.kvfree.variants import BlockSources
from rcukit.rcu.profiles import PROFILES as ALL_PROFILES
from rcukit.sched.sim import Task

EXAMPLES = int(os.environ.get("RCUKIT_EQUIV_EXAMPLES", "20"))
SCALE = int(os.environ.get("RCUKIT_EQUIV_SCALE", "1"))

#: ``struct kfree_obj`` (rcuscale.c): 24 bytes, ``rh`` at offset 8.
OBJ_SIZE = 24
RH_OFFSET = 8


def flood_kernel(config: KernelConfig, *, n: int, loops: int, single: bool, runs: bool,
                 size: int = OBJ_SIZE, trace: bool = False) -> dict[str, Any]:
    """One kfree'er per CPU, ``loops`` x (``n`` x kmalloc + kvfree_rcu; cond_resched), then
    ``kvfree_rcu_barrier()`` and ``rcu_barrier()``; everything either path could change."""
    out: dict[str, Any] = {}
    head = None if single else RH_OFFSET
    gfp = int(GFP_KERNEL)

    async def main() -> None:
        async with boot(config) as k:
            kv = k.kvfree
            mm = k.mm
            if trace:
                k.tracer.enable()

            async def kfreer(task: Task) -> None:
                for _ in range(loops):
                    if runs:
                        await kv.kvfree_rcu_flood(task, size, gfp, n, head)
                    else:
                        for _ in range(n):
                            p = await mm.kmalloc(task, size, gfp)
                            await kv.kvfree_rcu(task, p, None if head is None else p + head)
                    await task.cond_resched()
                task.data["end_ns"] = task.now_ns

            tasks = [k.spawn(kfreer, c, f"kfreer/{c}") for c in range(config.nr_cpus)]
            await k.run()
            out["end_ns"] = [t.data["end_ns"] for t in tasks]
            out["queued_stats"] = attrs.asdict(kv.statistics())

            async def barrier(task: Task) -> None:
                await kv.kvfree_rcu_barrier(task)
                await k.rcu.rcu_barrier(task)

            k.spawn(barrier, 0, "barrier")
            await k.run()
            out["stats"] = attrs.asdict(kv.statistics())
            rs = k.rcu.statistics()
            out["gps"] = rs.completed_gps
            out["callbacks"] = rs.callbacks_invoked
            out["splats"] = dict(k.locks.counts)
            out["free_pages"] = mm.nr_free_pages()
            out["slab"] = (mm.slab.nr_objects, mm.slab.stats())
            out["cpu_ns"] = [c.local_ns for c in k.sim.cpus]
            out["flood"] = (kv.flood.runs, kv.flood.per_call)
            out["events"] = len(k.tracer.events) if trace else 0

    run_sim(main)
    return out


def assert_equivalent(ref: dict[str, Any], run: dict[str, Any]) -> None:
    # kvfree_rcu's statistics (latency histogram included) before and after the barrier
    for key in ("stats", "queued_stats", "gps", "callbacks", "splats", "free_pages", "slab"):
        assert ref[key] == run[key], key
    for a, b in zip(ref["end_ns"] + ref["cpu_ns"], run["end_ns"] + run["cpu_ns"], strict=True):
        assert abs(a - b) <= a / 100, (ref["end_ns"], run["end_ns"])


#: Every version profile and every built-in allocator variant.
PROFILES = tuple(ALL_PROFILES)
VARIANTS = tuple(BlockSources().names())


@st.composite
def flood_configs(draw: st.DrawFn) -> tuple[KernelConfig, int, int, bool]:
    profile = draw(st.sampled_from(PROFILES))
    # v5.5 has no head-less kvfree_rcu() (it arrived in v5.9): two-argument calls there
    single = draw(st.booleans()) and ALL_PROFILES[profile].headless
    config = KernelConfig(
        nr_cpus=draw(st.integers(1, 4)),
        seed=draw(st.integers(0, 3)),
        preempt_rt=draw(st.booleans()),
    ).replace(**{
        "kvfree.profile": profile,
        "kvfree.variant": draw(st.sampled_from(VARIANTS)),
        "kvfree.header": draw(st.sampled_from(("profile", "rfc"))),
        "mm.debug_quarantine": draw(st.sampled_from((0, 1024))),
        # a tight zone makes block pages and slab pages run out: failures and fallbacks
        "mm.initial_free_pages": draw(st.sampled_from((None, 400, 2000))),
    })
    n = draw(st.integers(1, 3000)) * SCALE
    loops = draw(st.integers(1, 4))
    return config, n, loops, single


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True)
@given(flood_configs())
def test_runs_equal_per_call(case: tuple[KernelConfig, int, int, bool]) -> None:
    """The run-based flood leaves every count identical and every CPU's time within 1 %."""
    config, n, loops, single = case
    ref = flood_kernel(config, n=n, loops=loops, single=single, runs=False)
    run = flood_kernel(config, n=n, loops=loops, single=single, runs=True)
    assert_equivalent(ref, run)


def test_runs_take_few_steps() -> None:
    """The point of runs: 2 CPUs x 20000 objects advance in a few hundred runs (about one per
    kmalloc-32 slab page of 128 objects), with only block boundaries on the per-call path
    (head-less calls: v5.13+ allocate their blocks directly, so blocks are always there)."""
    config = KernelConfig(nr_cpus=2).replace(
        **{"kvfree.profile": "v6.1", "kvfree.variant": "page-cache", "mm.debug_quarantine": 0}
    )
    ref = flood_kernel(config, n=10_000, loops=2, single=True, runs=False)
    run = flood_kernel(config, n=10_000, loops=2, single=True, runs=True)
    assert_equivalent(ref, run)
    runs, per_call = run["flood"]
    objects = 2 * 2 * 10_000
    assert runs + per_call < objects // 50
    # each new block is one call of the per-call path
    assert 0 < per_call <= run["stats"]["blocks_from_cache"] + run["stats"]["block_alloc_attempts"]


def test_debug_features_take_the_per_call_path() -> None:
    """Tracing (every kmalloc emits ``kmem_cache_alloc``, kernel include/trace/events/kmem.h),
    debug objects (``debug_rcu_head_queue()`` per
    call, v5.9+ ``kvfree_call_rcu()``) and alloc-site tracking see every object, so a flood
    with any of them on runs call by call: no runs, and the same counts and trace."""
    base = KernelConfig(nr_cpus=2).replace(**{"kvfree.profile": "v6.1", "kvfree.variant": "nowait"})
    for config, trace in (
        (base, True),
        (base.replace(**{"kvfree.debug_objects": True}), False),
        (base.replace(**{"mm.debug_alloc_sites": True}), False),
    ):
        ref = flood_kernel(config, n=700, loops=2, single=True, runs=False, trace=trace)
        run = flood_kernel(config, n=700, loops=2, single=True, runs=True, trace=trace)
        assert_equivalent(ref, run)
        assert run["flood"] == (0, 2 * 2 * 700)
        assert run["events"] == ref["events"]
