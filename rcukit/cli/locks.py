"""``rcukit locks``: the smallest real simulation, the RFC's nesting problem in one screen.

Boots a kernel under each build (default, lockdep = PROVE_RAW_LOCK_NESTING, rt = PREEMPT_RT),
has every CPU take ``krc.lock`` (raw, IRQs off) and then ``&zone->lock`` (spinlock_t), as the
v5.9 kvfree_rcu() path does when the pcp list is empty, and prints the splats each build gives.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rcukit.cli.options import Default, add_shared_options
from rcukit.config import KERNEL_CONFIG_NAMES, KernelConfig
from rcukit.kernel import Kernel, simulate
from rcukit.locking.locks import Lock, LockKind
from rcukit.locking.splat import SPLAT_TITLES
from rcukit.sched.sim import Task


def run_nesting(config: KernelConfig, printed: dict[str, int] | None = None) -> dict[str, int]:
    """Each CPU nests a spinlock_t inside a raw_spinlock_t; return the splat counts (every
    violation the checker saw), and fill ``printed`` with what the kernel log showed."""
    locks: dict[str, Lock] = {}
    holder: dict[str, Kernel] = {}

    def setup(k: Kernel) -> None:
        holder["k"] = k
        locks["krc"] = k.new_lock("krc.lock", LockKind.RAW_SPINLOCK)
        locks["zone"] = k.new_lock("&zone->lock", LockKind.SPINLOCK)

    async def nest(task: Task) -> None:
        k = holder["k"]
        await task.sync()
        k.locks.acquire(task, locks["krc"], "kvfree_call_rcu", irqsave=True)
        k.locks.acquire(task, locks["zone"], "rmqueue_bulk")
        task.charge(500)
        k.locks.release(task, locks["zone"])
        k.locks.release(task, locks["krc"])

    res = simulate(nest, config, setup=setup)
    if printed is not None:
        printed.update(holder["k"].locks.statistics().printed)
    return res.splat_counts


def _summary(name: str, cpus: int, counts: dict[str, int], printed: dict[str, int]) -> str:
    seen = {kind: n for kind, n in counts.items() if n}
    if not seen:
        return f"{name}: {cpus} CPUs nested the locks; nothing to report on this build."
    parts = [
        f'"{SPLAT_TITLES[kind]}" {n} times, {printed.get(kind, 0)} printed'
        for kind, n in seen.items()
    ]
    return f"{name}: {cpus} CPUs nested the locks; would report " + "; ".join(parts) + "."


def _cmd(args: argparse.Namespace) -> int:
    base = KernelConfig(nr_cpus=args.cpus, seed=args.seed, print_splats=not args.json)
    rows: dict[str, Any] = {}
    for name in KERNEL_CONFIG_NAMES:
        if not args.json:
            print(f"== kernel config: {name} ==")
        printed: dict[str, int] = {}
        rows[name] = run_nesting(base.with_kernel_config(name), printed)
        if not args.json:
            print(_summary(name, args.cpus, rows[name], printed) + "\n")
    if args.json:
        print(json.dumps({"seed": args.seed, "cpus": args.cpus, "splats": rows}, sort_keys=True))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "locks",
        help="the lock-nesting problem behind the RFC, under each kernel build",
        description=__doc__,
    )
    add_shared_options(p, cpus=Default(4, "4"))
    p.set_defaults(func=_cmd)
