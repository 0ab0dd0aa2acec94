"""The RFC in one screen.

August 2020: kvfree_rcu() holds ``krcp->lock``, a ``raw_spinlock_t`` with IRQs off, when it
needs a page for its pointer blocks. ``GFP_NOWAIT`` still takes ``zone->lock`` (a
``spinlock_t``) whenever the CPU's pcp list is empty. Under CONFIG_PROVE_RAW_LOCK_NESTING
lockdep says so; under PREEMPT_RT the lock would sleep. Uladzislau Rezki proposed
``__GFP_FAST_TRY``: take pages only from the pcp lists and fail otherwise.

This demo runs the same kvfree_rcu() flood twice under the lockdep build: once with
``GFP_NOWAIT|__GFP_NOWARN`` (the splat appears, printed as lockdep prints it), once with
``__GFP_FAST_TRY`` (silence), and shows what fast-try pays for the silence: failed block
allocations and objects that fall back to the rcu_head list or to synchronize_rcu(). It fails
only when every pcp list its loop reads (the unmovable one and, past it, the movable and
reclaimable ones) is empty at once; on this machine that is rare, and the demo says so when a
run shows no price.

Run: ``python demos/rfc_in_one_screen.py [--objects N]``
"""

from __future__ import annotations

import argparse

from rcukit.scenarios.compare import Workload, default_config, run_row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=30_000, help="objects per flooding CPU")
    args = ap.parse_args(argv)
    if args.objects < 1:
        ap.error(f"--objects {args.objects}: expected a number of objects >= 1")
    config = default_config()
    workload = Workload(objects_per_cpu=args.objects)
    rows = {}
    for variant in ("nowait", "fast-try"):
        row, kernel = run_row(config, workload, variant, "lockdep")
        rows[variant] = row
        print(f"=== variant {variant}: GFP {kernel.kvfree.variant_gfp_text} under "
              f"krcp->lock, PROVE_RAW_LOCK_NESTING=y ===")
        # What the kernel log shows: lockdep prints its first report and turns itself off.
        print(kernel.locks.first_report or "(no splat)")
        print()
    nw, ft = rows["nowait"], rows["fast-try"]
    print("What each pays:")
    for name, r in (("nowait", nw), ("fast-try", ft)):
        print(
            f"  {name:9s} splats={r['splats']['invalid_wait_context']:<5d} "
            f"block allocs={r['block_alloc_attempts']:<5d} failed={r['block_alloc_failures']:<5d} "
            f"({r['block_alloc_failure_pct']:.1f}%)  "
            f"rcu_head fallbacks={r['fallback_rcu_head']:<6d} "
            f"synchronize_rcu fallbacks={r['fallback_synchronize']:<5d} "
            f"zone-lock acquisitions={r['zone_lock_acquisitions']:<5d} "
            f"pages of another migratetype={r['block_pages_other_mt_pcp']}"
        )
    other = ft["block_pages_other_mt_pcp"]
    if not ft["block_alloc_failures"] and other:
        print(
            f"fast-try failed no allocation in this run, but {other} of its block pages came from"
            "\nthe CPU's movable or reclaimable pcp list: its loop reads past the unmovable one"
            "\nthat nowait refills under zone->lock. Unmovable pages end up in movable pageblocks,"
            "\nthe \"hard to estimate consumption of pcp free pages\" Hocko objected to."
        )
    elif not ft["block_alloc_failures"]:
        print(
            "fast-try paid nothing in this run: every block page it asked for came from the"
            "\nCPU's unmovable pcp list. It fails only when all of its pcp lists are empty at"
            "\nonce, or below the low watermark."
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
