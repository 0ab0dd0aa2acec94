"""``rcukit locks``: the smallest real simulation, the RFC's nesting problem in one screen.

Boots a kernel under each build (default, lockdep = PROVE_RAW_LOCK_NESTING, rt = PREEMPT_RT),
has every CPU take ``krc.lock`` (raw, IRQs off) and then ``&zone->lock`` (spinlock_t), as the
v5.9 kvfree_rcu() path does when the pcp list is empty, and prints the splats each build gives.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from rcukit.cli.options import (
    Default,
    add_format_option,
    add_shared_options,
    output_format,
    print_json,
)
from rcukit.config import KERNEL_CONFIG_NAMES, KernelConfig
from rcukit.kernel import Kernel, simulate
from rcukit.locking.locks import Lock, LockKind
from rcukit.locking.splat import SPLAT_TITLES
from rcukit.scenarios.output import render_table
from rcukit.sched.sim import Task

if TYPE_CHECKING:
    from rich.console import JustifyMethod

#: What each build turns on (the ``build`` column's legend).
_BUILDS = {"default": "-", "lockdep": "PROVE_RAW_LOCK_NESTING", "rt": "PREEMPT_RT"}
#: The table's splat columns, in SPLAT_TITLES's kinds.
_KINDS = (
    ("IWC", "invalid_wait_context"),
    ("SIC", "sleeping_in_atomic"),
    ("SWA", "scheduling_while_atomic"),
    ("stall", "rcu_stall"),
)


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


def _cell(n: int, printed: int) -> str:
    return f"{n} ({printed} printed)" if n else "0"


def _cmd(args: argparse.Namespace) -> int:
    fmt = output_format(args)
    # The kernel log (the splats themselves) goes to stderr in the terminal form only.
    base = KernelConfig(nr_cpus=args.cpus, seed=args.seed, print_splats=fmt == "text")
    rows: dict[str, Any] = {}
    printed: dict[str, dict[str, int]] = {}
    for name in KERNEL_CONFIG_NAMES:
        if fmt == "text":
            print(f"== kernel config: {name} ==")
        printed[name] = {}
        rows[name] = run_nesting(base.with_kernel_config(name), printed[name])
    if fmt == "json":
        print_json({"seed": args.seed, "cpus": args.cpus, "splats": rows})
        return 0
    if fmt == "csv":  # numbers, one column each, for a spreadsheet
        columns: tuple[tuple[str, JustifyMethod], ...] = (("build", "left"), ("turns_on", "left"),
                   *((f"{kind}{what}", "right") for _, kind in _KINDS
                     for what in ("", "_printed")))
        numbers = [
            [name, _BUILDS[name],
             *(str(n.get(kind, 0)) for _, kind in _KINDS for n in (rows[name], printed[name]))]
            for name in KERNEL_CONFIG_NAMES
        ]
        sys.stdout.write(render_table(fmt, "", columns, numbers) or "")
        return 0
    table = [
        [name, _BUILDS[name],
         *(_cell(rows[name].get(kind, 0), printed[name].get(kind, 0)) for _, kind in _KINDS)]
        for name in KERNEL_CONFIG_NAMES
    ]
    notes = [f"{abbr}: {SPLAT_TITLES[kind]}" for abbr, kind in _KINDS]
    notes.append("printed: how many the kernel log shows (lockdep reports once, then turns "
                 "itself off; might-sleep reports at most once a second)")
    notes += [_summary(name, args.cpus, rows[name], printed[name]) for name in rows]
    title = (f"krc.lock (raw_spinlock_t, IRQs off) then &zone->lock (spinlock_t) on "
             f"{args.cpus} CPUs, seed {args.seed}: what each build reports")
    columns = (("build", "left"), ("turns on", "left"),
               *((abbr, "right") for abbr, _ in _KINDS))
    text = render_table(fmt, title, columns, table, notes)
    if text is not None:
        sys.stdout.write(text)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "locks",
        help="the lock-nesting problem behind the RFC, under each kernel build",
        description=__doc__,
    )
    add_shared_options(p, cpus=Default(4, "4"))
    add_format_option(p)
    p.set_defaults(func=_cmd)
