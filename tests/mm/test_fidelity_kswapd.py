"""Fidelity of ``wakeup_kswapd()`` (rcukit/mm/kswapd.py) to 5.8 ``mm/vmscan.c``.

Source read: ``wakeup_kswapd()`` and ``pgdat_balanced()`` of 5.8 ``mm/vmscan.c`` (as the
5.8 patch "mm/page_alloc: integrate classzone_idx and high_zoneidx" leaves them, read in
that patch's text), and the ``mm_vmscan_wakeup_kswapd`` event of
``include/trace/events/vmscan.h`` (``"nid=%d order=%d gfp_flags=%s"`` since zid was dropped
from its output in 2019).
"""

from __future__ import annotations

from typing import Any

from simtools import MS, cfg, mm_kernel, on_cpu

from rcukit.mm.gfp import GFP_KERNEL, GFP_NOWAIT
from rcukit.mm.kswapd import MAX_RECLAIM_RETRIES
from rcukit.mm.zone import Watermarks
from rcukit.sched.sim import Task


async def test_wakeup_kswapd_wakes_only_a_sleeping_kswapd_of_an_unbalanced_or_boosted_node(
    autojump_clock: Any,
) -> None:
    """``wakeup_kswapd()`` (5.8 ``mm/vmscan.c``) returns without waking when
    ``!waitqueue_active(&pgdat->kswapd_wait)`` (kswapd is not asleep), when
    ``pgdat->kswapd_failures >= MAX_RECLAIM_RETRIES`` (16: "Hopeless node, leave it to direct
    reclaim"), or when ``pgdat_balanced()`` (free pages above ``high_wmark_pages()``, which
    includes ``watermark_boost``) and not ``pgdat_watermark_boosted()``; otherwise it traces
    ``mm_vmscan_wakeup_kswapd`` and calls ``wake_up_interruptible(&pgdat->kswapd_wait)``."""
    async with mm_kernel(cfg()) as k:
        k.tracer.enable()
        mm = k.mm
        ks, zone = mm.kswapd, mm.zone

        async def work(task: Task) -> list[bool]:
            await task.sleep_ns(1000)  # kswapd0 sleeps on kswapd_wait
            woke = []
            assert ks.balanced() and not zone.watermark_boost
            woke.append(await ks.wakeup(task, int(GFP_KERNEL), 0))  # balanced: no
            zone.watermark_boost = 32  # balanced still, but boosted
            assert ks.balanced()
            woke.append(await ks.wakeup(task, int(GFP_NOWAIT), 0))  # boosted: yes
            woke.append(await ks.wakeup(task, int(GFP_KERNEL), 0))  # not asleep: no
            await task.sleep_ns(5 * MS)  # kswapd reclaims the boost and sleeps again
            assert zone.watermark_boost == 0 and ks.wait.waiters
            w = zone.wmark
            free = zone.buddy.nr_free
            zone.wmark = Watermarks(w.min, w.low, free + 64)  # unbalanced
            ks.failures = MAX_RECLAIM_RETRIES
            woke.append(await ks.wakeup(task, int(GFP_KERNEL), 0))  # hopeless: no
            ks.failures = MAX_RECLAIM_RETRIES - 1
            woke.append(await ks.wakeup(task, int(GFP_KERNEL), 0))  # unbalanced: yes
            await task.sleep_ns(5 * MS)
            return woke

        assert await on_cpu(k, work) == [False, True, False, False, True]
        assert MAX_RECLAIM_RETRIES == 16
        assert k.vmstat["kswapd_wake"] == 2
        events = [e.fields for e in k.tracer.events if e.name == "mm_vmscan_wakeup_kswapd"]
        assert events == [
            "nid=0 order=0 gfp_flags=GFP_NOWAIT",
            "nid=0 order=0 gfp_flags=GFP_KERNEL",
        ]
        mm.check()
