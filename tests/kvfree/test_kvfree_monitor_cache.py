"""kvfree_rcu()'s fast path skips the monitor check while ``krcp.mon_quiet_below`` says it is
armed; runs with that shortcut and with a full check on every call must be the same, byte for
byte, through shrinker pull-ins, barriers and CPU hot-unplug."""

from __future__ import annotations

from typing import Any

import pytest
from simtools import MS

from rcukit.config import KernelConfig
from rcukit.kernel import Kernel, boot, run_sim
from rcukit.mm.gfp import GFP_KERNEL
from rcukit.rcu.kvfree.monitor import KvfreeMonitor
from rcukit.rcu.kvfree.sim import Krc, KvfreeRcu
from rcukit.scenarios.compare import Workload, default_config, run_row
from rcukit.sched.sim import Task

G = int(GFP_KERNEL)


ROWS = [
    ("v6.1", "nowait", "default"),
    ("v6.1", "page-cache", "rt"),
    ("rfc", "fast-try", "lockdep"),
    ("v6.3", "nolock", "default"),
]


def _rows() -> list[dict[str, Any]]:
    out = []
    for profile, variant, kc in ROWS:
        cfg = default_config().replace(**{"kvfree.profile": profile})
        data, _ = run_row(cfg, Workload().scaled(0.05), variant, kc)
        out.append(data)
    return out


def test_compare_rows_match_a_full_check_on_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = _rows()
    monkeypatch.setattr(KvfreeMonitor, "_monitor_quiet_below", lambda self, task, krcp: 0)
    slow = _rows()
    assert fast == slow
    assert all(r["kvfree_calls"] > 0 and r["objects_pending"] == 0 for r in fast)


def _hotplug_and_barrier_run(profile: str) -> dict[str, Any]:
    box: dict[str, Any] = {}
    cfg = KernelConfig(nr_cpus=4).replace(**{"kvfree.profile": profile})

    async def main() -> None:
        async with boot(cfg) as k:
            kv = k.kvfree

            async def flood(task: Task) -> None:
                for i in range(3000):
                    p = await k.mm.kmalloc(task, 64, G)
                    if i % 3:
                        await kv.kvfree_rcu(task, p)
                    else:
                        await kv.kvfree_rcu(task, p, p + 8)
                    if i % 700 == 699:
                        await task.sleep_ns(MS // 2)

            async def admin(task: Task) -> None:
                await task.sleep_ns(MS // 5)
                box["shrunk"] = await k.mm.kswapd.shrink_slab(task, 1 << 20)  # pull monitors in
                await task.sleep_ns(MS // 5)
                await kv.kvfree_rcu_barrier(task)
                await k.rcu.cpu_down(task, 2)
                await task.sleep_ns(MS // 2)
                box["shrunk"] += await k.mm.kswapd.shrink_slab(task, 1 << 20)
                await task.sleep_ns(MS)
                await kv.kvfree_rcu_barrier(task)

            for c in (1, 2, 3):
                k.spawn(flood, c, f"flood/{c}")
            k.spawn(admin, 0, "admin")
            await k.run()

            async def barrier(task: Task) -> None:
                await kv.kvfree_rcu_barrier(task)

            k.spawn(barrier, 0, "barrier")
            await k.run()
            box["result"] = {**_snapshot(k), "shrunk": box["shrunk"]}

    run_sim(main)
    result: dict[str, Any] = box["result"]
    return result


def _snapshot(k: Kernel) -> dict[str, Any]:
    kv = k.kvfree
    return {
        "stats": kv.statistics(),
        "timeline": list(kv.timeline),
        "now": k.now_ns,
        "clocks": [c.local_ns for c in k.cpus],
        "vmstat": k.vmstat.snapshot(),
        "handoffs": k.sim.handoffs,
    }


@pytest.mark.parametrize("profile", ["v6.1", "v5.9"])
def test_barriers_and_hot_unplug_match_a_full_check(
    profile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = _hotplug_and_barrier_run(profile)
    monkeypatch.setattr(KvfreeMonitor, "_monitor_quiet_below", lambda self, task, krcp: 0)
    slow = _hotplug_and_barrier_run(profile)
    assert fast == slow
    st = fast["stats"]
    assert st.calls == 9000 and st.objects_freed == 9000 and st.pending == 0
    assert fast["shrunk"] > 0


@pytest.mark.parametrize("shortcut", [True, False])
def test_the_full_check_runs_only_when_something_changed(
    shortcut: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not shortcut:
        monkeypatch.setattr(KvfreeMonitor, "_monitor_quiet_below", lambda self, task, krcp: 0)
    arms: list[int] = []
    real = KvfreeMonitor.arm_monitor

    def counting(self: KvfreeMonitor, task: Task, krcp: Krc) -> None:
        arms.append(krcp.count)
        real(self, task, krcp)

    monkeypatch.setattr(KvfreeMonitor, "arm_monitor", counting)
    cfg = KernelConfig(nr_cpus=2).replace(**{"kvfree.profile": "v6.1"})

    async def main() -> None:
        async with boot(cfg) as k:

            async def flood(task: Task) -> None:
                ptrs = [await k.mm.kmalloc(task, 32, G) for _ in range(2000)]
                for p in ptrs:
                    await k.kvfree.kvfree_rcu(task, p)

            await k.run_on_cpus(flood, [0])

    run_sim(main)
    if shortcut:
        # the first call arms the monitor, the call that completes a block pulls it in,
        # a new block re-checks: a handful, not one per call
        assert len(arms) < 20
    else:
        assert len(arms) == 2000


@pytest.mark.parametrize("profile", ["v6.1", "v5.9", "v6.3"])
def test_the_fast_paths_current_block_is_channel_0s_last_at_every_call(
    profile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``kvfree_call_rcu()`` stores into the current block of the slab channel (kernel/rcu/
    tree.c v5.9 ``kvfree_call_rcu_add_ptr_to_bulk``: ``krcp->bkvhead[idx]``; v6.14
    mm/slab_common.c ``add_ptr_to_bulk_krc_lock``: the first of ``krcp->bulk_head[idx]``). The
    fast path reads it from ``krcp.cur_bnode``, which must be ``bulk[0][-1]`` whenever a call
    starts: through new blocks, monitor detaches, v6.3's early drains, shrinker pull-ins,
    barriers and CPU hot-unplug; so must ``krcp.quiet_nr``, the monitor's threshold
    (``mon_quiet_below``) as a record count of that block, with ``krcp.count`` counting the
    fast path's stores unwritten. Checked on every CPU at every call; the run is the same, byte
    for byte, as one that sends every call down the slow path (which reads the channel)."""
    real = KvfreeRcu.kvfree_rcu
    checked: list[int] = []

    async def checking(
        self: KvfreeRcu, task: Task, ptr: int | None, head: int | None = None
    ) -> None:
        for krcp in self.krcs:
            chan = krcp.bulk[0]
            assert krcp.cur_bnode is (chan[-1] if chan else None)
            if chan:  # the monitor's threshold as a record count of that block
                assert (
                    krcp.quiet_nr - chan[-1].nr_records == krcp.mon_quiet_below - krcp.count
                )
        checked.append(1)
        await real(self, task, ptr, head)

    monkeypatch.setattr(KvfreeRcu, "kvfree_rcu", checking)
    fast = _hotplug_and_barrier_run(profile)
    assert len(checked) == 9000
    monkeypatch.setattr(KvfreeRcu, "__init__", _forced_slow(KvfreeRcu.__init__))
    slow = _hotplug_and_barrier_run(profile)
    assert fast == slow
    assert fast["stats"].objects_freed == 9000


def _forced_slow(init: Any) -> Any:
    def wrapped(self: KvfreeRcu, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.force_slow_path()

    return wrapped
