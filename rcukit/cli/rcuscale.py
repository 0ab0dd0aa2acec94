"""``rcukit rcuscale``: rcuscale's kfree_rcu_test with its module parameters as options."""

from __future__ import annotations

import argparse

from rcukit.cli.options import (
    Default,
    add_shared_options,
    check_profile,
    module_params,
    print_json,
)
from rcukit.config import KernelConfig
from rcukit.rcu.profiles import DEFAULT_PROFILES
from rcukit.scenarios.rcuscale import RcuscaleParams, fewer_gc_passes, run_rcuscale


def _cmd(args: argparse.Namespace) -> int:
    check_profile(args.profile)
    # rcuscale measures speed: the KASAN-style quarantine is off unless a config file asks.
    if args.config:
        config = KernelConfig.from_toml(args.config)
    else:
        config = KernelConfig().replace(**{"mm.debug_quarantine": 0})
    config = config.replace(
        nr_cpus=args.cpus if args.cpus is not None else config.nr_cpus,
        seed=args.seed,
        **{"kvfree.profile": args.profile, "kvfree.variant": args.variant},
    )
    params = module_params(RcuscaleParams, args)
    with fewer_gc_passes():
        result = run_rcuscale(params, config, per_call=args.per_call)
    if args.json:
        print_json(result.to_json())
    else:
        print(result.banner())
        print(result.closing_line())
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from rcukit.scenarios import rcuscale

    p = sub.add_parser("rcuscale", help="rcuscale's kfree_rcu_test on the simulated kernel",
                       description="\n\n".join((rcuscale.__doc__ or "").split("\n\n")[:2]))
    p.add_argument("--kfree-nthreads", type=int, default=-1,
                   help="threads (-1: one per CPU, -2: all but one, ...; at least one)")
    p.add_argument("--kfree-alloc-num", type=int, default=8000, help="objects per loop")
    p.add_argument("--kfree-loops", type=int, default=10, help="loops per thread")
    p.add_argument("--kfree-rcu-test-single", action="store_true",
                   help="only head-less kvfree_rcu_mightsleep(p)")
    p.add_argument("--kfree-rcu-test-double", action="store_true",
                   help="only two-argument kvfree_rcu(p, rh)")
    p.add_argument("--kfree-by-call-rcu", action="store_true",
                   help="call_rcu(&p->rh, kfree_call_rcu) per object, ignoring single/double")
    p.add_argument("--kfree-mult", type=int, default=1, help="object size multiplier (x24 B)")
    p.add_argument("--no-batch", action="store_true",
                   help="pre-5.5 kfree_rcu (v5.5 rcuperf kfree_no_batch): one offset callback "
                   "per object, reclaimed by __rcu_reclaim")
    p.add_argument("--variant", default="page-cache", help="block allocator variant")
    p.add_argument("--per-call", action="store_true",
                   help="the reference path: one kmalloc and one kvfree_rcu call per object "
                   "(default: run-based floods, same counts and times; the head-less/two-argument "
                   "split is drawn per loop instead of per object)")
    default_profile = DEFAULT_PROFILES["rcuscale"]
    add_shared_options(
        p, profile=Default(default_profile, default_profile), cpus=Default(None, "4"),
        config="kernel config file",
    )
    p.set_defaults(func=_cmd)
