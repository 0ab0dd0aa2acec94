"""Memory pressure: the shrinker and the page cache under a squeeze.

kvfree_rcu() keeps a few spare block pages per CPU (``rcu_min_cached_objs``) so the
two-argument path rarely needs the page allocator. When memory runs short, kswapd calls the
shrinkers; since v5.14 kvfree_rcu's shrinker drains those caches, pulls every CPU's monitor in so
pending objects reach their grace period sooner, and sets ``backoff_page_cache_fill`` so the
refill worker waits ``rcu_delay_page_cache_fill_msec`` (5 s) and then refills only one page.

This demo floods kvfree_rcu() on a small zone while other kernel users allocate hard, once with
plenty of memory and once squeezed, with the v6.1 profile, and prints what the shrinker did.

Run: ``python demos/memory_pressure.py [--objects N]``
"""

from __future__ import annotations

import argparse

from rcukit.scenarios.compare import Workload, default_config, run_row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=20_000, help="objects per flooding CPU")
    args = ap.parse_args(argv)
    if args.objects < 1:
        ap.error(f"--objects {args.objects}: expected a number of objects >= 1")
    workload = Workload(objects_per_cpu=args.objects, think_ns=2_000)
    print(f"{'memory':10s} {'kswapd':>7s} {'shrinker scans':>15s} {'cache pages drained':>20s} "
          f"{'fallbacks':>10s} {'pending peak':>13s} {'free at end':>15s}")
    for label, used, bg in (("roomy", 0.50, 100), ("squeezed", 0.985, 1500)):
        config = default_config().replace(
            **{
                "kvfree.profile": "v6.1",
                "mm.initial_used_fraction": used,
                "mm.background_allocs_per_ms": bg,
                # A freshly booted machine: no fragmentation, so no watermark boost (which
                # would wake kswapd and its shrinkers even with room to spare).
                "mm.initial_free_max_order": 10,
                "mm.background_movable_fraction": 0.0,
            }
        )
        row, k = run_row(config, workload, "page-cache", "default")
        kv = k.kvfree
        free = k.mm.nr_free_pages()
        print(
            f"{label:10s} {row['kswapd_wakeups']:7d} {kv.shrinker.scans:15d} "
            f"{kv.counters.cache_pages_drained:20d} "
            f"{row['fallback_rcu_head'] + row['fallback_synchronize']:10d} "
            f"{row['pending_peak']:13d} {free:15d}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
