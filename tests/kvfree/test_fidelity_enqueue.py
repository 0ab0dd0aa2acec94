"""Fidelity of kvfree_rcu()'s enqueue path and drain timing to ``kernel/rcu/tree.c`` of each
profile's release.

Sources read: Rtoax/linux-5.10.13 ``kernel/rcu/tree.c`` @ 2a957306e1fc
(``kvfree_call_rcu()``: the head-less fallback "Inline kvfree() after synchronize_rcu()");
kernel.md 1.2-1.3 for ``add_ptr_to_bulk_krc_lock()`` (v5.13+, T-5.1x ``torvalds/linux`` @
0060c7bd9e33) and ``KFREE_DRAIN_JIFFIES`` (51824b780b71 for v6.1).
"""

from __future__ import annotations

from typing import Any

import pytest
from simtools import MS, Kernel, boot_and_run, cfg, freed, on_cpu

from rcukit.mm.gfp import GFP_KERNEL
from rcukit.rcu.profiles import PROFILES
from rcukit.sched.sim import Task

G = int(GFP_KERNEL)


@pytest.mark.parametrize("hz", [100, 250, 300, 1000])
def test_kfree_drain_jiffies(hz: int) -> None:
    """``#define KFREE_DRAIN_JIFFIES (HZ / 50)`` from v5.5 (a35d16905efc) through v6.0, then
    ``(5 * HZ)`` from v6.1 ("rcu/kvfree: Update KFREE_DRAIN_JIFFIES interval", 51824b780b71;
    kernel/rcu/tree.c, mm/slab_common.c from v6.14), in integer jiffies."""
    old = {"v5.5", "rfc", "v5.9", "v5.11", "v5.13"}
    for name, prof in PROFILES.items():
        want = hz // 50 if name in old else 5 * hz
        assert prof.drain_jiffies(hz) == want, name


def _headless(profile: str) -> dict[str, Any]:
    """One head-less ``kvfree_rcu(ptr)`` on CPU 0 with an empty page cache."""

    async def body(k: Kernel) -> dict[str, Any]:
        kv = k.kvfree
        k.tracer.enable(["mm_page_alloc"])
        out: dict[str, Any] = {}

        async def run(task: Task) -> None:
            for krcp in kv.krcs:
                krcp.cache.clear()
            p = await k.mm.kmalloc(task, 64, G)
            n0 = len(k.tracer.events)
            t0 = task.now_ns
            await kv.kvfree_rcu_mightsleep(task, p)
            out["call_ms"] = (task.now_ns - t0) / MS
            out["freed_on_return"] = freed(k, p)
            out["blocks"] = len(kv.krcs[0].bulk[0])
            out["gfp"] = [e.fields.split("gfp_flags=")[1] for e in k.tracer.events[n0:]
                          if e.name == "mm_page_alloc" and e.comm == task.comm]
            await kv.kvfree_rcu_barrier(task)
            out["freed_at_end"] = freed(k, p)

        await on_cpu(k, run)
        st = kv.statistics()
        out["fallback_synchronize"] = st.fallback_synchronize
        return out

    return boot_and_run(cfg(**{"kvfree.profile": profile, "kvfree.variant": "nowait"}), body)


def test_v5_11_head_less_call_on_a_cache_miss_waits_a_gp_and_frees_inline() -> None:
    """v5.11 ``kvfree_call_rcu()`` (kernel/rcu/tree.c): with no cached page the head-less
    form has no ``rcu_head`` to fall back on ("goto unlock_return"), so after unlocking it runs
    ``debug_rcu_head_unqueue(); synchronize_rcu(); kvfree(ptr);`` inline: the call blocks for
    a grace period and the object is already freed when it returns; no page is allocated in
    the enqueue path."""
    out = _headless("v5.11")
    assert out["fallback_synchronize"] == 1
    assert out["freed_on_return"] is True
    assert out["blocks"] == 0 and out["gfp"] == []
    assert out["call_ms"] >= 1  # a grace period


@pytest.mark.parametrize("profile", ["v5.13", "v6.1", "v6.5"])
def test_v5_13_head_less_call_drops_the_lock_and_allocates_a_block(profile: str) -> None:
    """v5.13+ ``add_ptr_to_bulk_krc_lock(&krcp, &flags, ptr, can_alloc = !head)``
    (kernel/rcu/tree.c): on a cache miss the head-less form drops ``krcp->lock``, calls
    ``__get_free_page(GFP_KERNEL | __GFP_NORETRY | __GFP_NOMEMALLOC | __GFP_NOWARN)`` from the
    caller's (sleepable) context, re-takes the lock and stores the pointer in the new block:
    no inline ``synchronize_rcu()``, the object is freed later by the batch."""
    out = _headless(profile)
    assert out["fallback_synchronize"] == 0
    assert out["freed_on_return"] is False and out["freed_at_end"] is True
    assert out["blocks"] == 1
    assert out["gfp"] == ["GFP_KERNEL|__GFP_NOWARN|__GFP_NORETRY|__GFP_NOMEMALLOC"]


@pytest.mark.parametrize("profile", ["v5.11", "v5.13", "v6.1", "v6.12"])
def test_a_two_argument_call_never_allocates_in_the_enqueue_path(profile: str) -> None:
    """v5.11+ ``kvfree_call_rcu(head, ...)`` (kernel/rcu/tree.c): a two-argument call takes a
    block only from the cache (``can_alloc`` is ``!head`` from v5.13); on a miss its
    ``rcu_head`` goes on ``krcp->head`` (channel 3) and the call returns without sleeping."""

    async def body(k: Kernel) -> dict[str, Any]:
        kv = k.kvfree
        k.tracer.enable(["mm_page_alloc"])
        out: dict[str, Any] = {}

        async def run(task: Task) -> None:
            for krcp in kv.krcs:
                krcp.cache.clear()
            p = await k.mm.kmalloc(task, 64, G)
            n0 = len(k.tracer.events)
            await kv.kvfree_rcu(task, p, p + 8)
            out["allocs_by_caller"] = sum(1 for e in k.tracer.events[n0:]
                                          if e.name == "mm_page_alloc" and e.comm == task.comm)
            out["on_list"] = len(kv.krcs[0].head or ())
            await kv.kvfree_rcu_barrier(task)

        await on_cpu(k, run)
        return out

    out = boot_and_run(cfg(**{"kvfree.profile": profile, "kvfree.variant": "nowait"}), body)
    assert out == {"allocs_by_caller": 0, "on_list": 1}
