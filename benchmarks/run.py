"""Run rcukit's benchmarks and print the performance table (``--json``: one object).

    python benchmarks/run.py            # every figure, full size (a few minutes)
    python benchmarks/run.py --quick    # reduced sizes, under a minute
    python benchmarks/run.py --json     # {"<figure>": value, ..., "details": {...}, "env": {...}}
    python benchmarks/run.py --only sim_kvfree,memory

``RCUKIT_BENCH_TINY=1`` shrinks everything to a smoke test. See benchmarks/README.md for what
each figure measures and why every figure is a ratio against a baseline run alongside it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import Figure, Mode  # noqa: E402

#: The figure groups, in table order; each module has ``run(mode) -> list[Figure]``.
GROUPS = ("sim_kvfree", "sim_runs", "compare_events", "app_rcu", "gp_scaling", "memory")
#: Every figure the full suite reports, in table order.
FIGURES = (
    "sim_kvfree_ns_per_call",
    "sim_kvfree_vs_bare_loop",
    "sim_kvfree_shuffled_vs_bare_loop",
    "sim_flood_kmalloc_vs_bare_loop",
    "sim_flood_vs_bare_loop",
    "sim_slab_page_floor_vs_bare_loop",
    "rcuscale_published",
    "sim_events_per_wall_second",
    "sim_model_ops_per_wall_second",
    "sim_handoffs_per_wall_second",
    "sim_handoff_wall_share",
    "app_read_lock_vs_bare_with",
    "app_read_lock_vs_trio_lock",
    "app_read_lock_vs_trio_lock_nowait",
    "app_kvfree_vs_call_rcu",
    "app_kvfree_vs_synchronize_each",
    "app_table_server_rcu_p99_vs_lock",
    "app_asyncio_read_lock_vs_bare_with",
    "app_asyncio_read_lock_vs_asyncio_lock",
    "app_asyncio_kvfree_vs_call_rcu",
    "app_asyncio_kvfree_vs_synchronize_each",
    "app_asyncio_table_server_rcu_p99_vs_lock",
    "gp_scaling_1024_vs_16",
    "gp_scaling_1024_vs_16_sim",
    "gp_scaling_1024_vs_16_app",
    "sim_bytes_per_pending_object",
)


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def run_groups(mode: Mode, groups: Sequence[str], progress: bool) -> tuple[list[Figure], float]:
    figures: list[Figure] = []
    t0 = time.perf_counter()
    for name in groups:
        if progress:
            print(f"running {name} ({mode.name}) ...", file=sys.stderr, flush=True)
        module = importlib.import_module(name)
        figures.extend(module.run(mode))
    return figures, time.perf_counter() - t0


def to_json(figures: Sequence[Figure], mode: Mode, wall: float) -> dict[str, Any]:
    out: dict[str, Any] = {f.key: f.value for f in figures}
    out["details"] = {f.key: f.to_json() for f in figures}
    out["env"] = {**environment(), "mode": mode.name, "wall_s": round(wall, 1)}
    return out


def fmt(v: float) -> str:
    """A number for the table: counts with thousands separators, ratios with 2 decimals."""
    if isinstance(v, int) or abs(v) >= 1000:
        return f"{round(v):,}"
    return f"{v:,.2f}"


def print_table(figures: Sequence[Figure], mode: Mode, wall: float) -> None:
    from rich.console import Console
    from rich.table import Table

    env = environment()
    table = Table(
        title=f"rcukit performance ({mode.name}; Python {env['python']}, "
        f"{env['cpu_count']} CPUs, {env['platform']}; {wall:.0f} s)"
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_column("pass")
    table.add_column("absolute (for information)")
    for f in figures:
        ok = {True: "[green]yes[/]", False: "[red]NO[/]", None: "-"}[f.passed]
        absolute = ", ".join(f"{k}={fmt(v)}" for k, v in f.absolute.items())
        table.add_row(
            f.key,
            f"{fmt(f.value)} {f.unit}",
            str(f.target) if f.target is not None else "-",
            ok,
            absolute,
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # a file or a pipe: do not wrap at 80 columns
    console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes (under a minute)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of: {', '.join(GROUPS)}"
    )
    args = parser.parse_args(argv)
    groups = [g for g in args.only.split(",") if g] or list(GROUPS)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        parser.error(f"unknown group {', '.join(unknown)}; allowed: {', '.join(GROUPS)}")
    mode = Mode.from_flags(args.quick)
    figures, wall = run_groups(mode, groups, progress=not args.json)
    if args.json:
        print(json.dumps(to_json(figures, mode, wall), sort_keys=True))
    else:
        print_table(figures, mode, wall)
    return 0


if __name__ == "__main__":
    sys.exit(main())
