"""Terminal tables (rich) for scenario results; figures are in :mod:`.figures`, trace files in
:mod:`.trace_files`."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from rcukit.scenarios.compare import CompareResult


def _us(ns: int) -> str:
    return f"{ns / 1000:.2f}"


#: The two tables' columns: (header, justify, meaning for the legend).
_SAFETY_COLS = (
    ("variant", "left", ""),
    ("build", "left", "default; lockdep = PROVE_RAW_LOCK_NESTING; rt = PREEMPT_RT"),
    ("in-lock allocs", "right", "the variant's block allocations under krcp->lock"),
    ("failed", "right", "of those, how many found no page"),
    ("rcu_head", "right", "calls that fell back to the object's rcu_head"),
    ("sync", "right", "head-less calls that fell back to synchronize_rcu()"),
    ("IWC", "right", 'lockdep\'s "BUG: Invalid wait context" (would report)'),
    ("SIC", "right", '"BUG: sleeping function called from invalid context" (would report)'),
    ("SWA", "right", '"BUG: scheduling while atomic" (would report)'),
    ("printed", "right", "reports the kernel log shows (lockdep is one-shot, might-sleep "
     "rate-limited)"),
    ("zone->lock", "right", "zone->lock taken under krcp->lock"),
)
_COST_COLS = (
    ("variant", "left", ""),
    ("build", "left", ""),
    ("GPs", "right", "grace periods completed"),
    ("GP p50 ms", "right", "median grace-period length"),
    ("pending peak", "right", "most objects queued at once"),
    ("pages peak", "right", "most block pages held at once"),
    ("p99.9 us", "right", "kvfree_rcu() call latency, simulated (fallbacks included)"),
    ("p99.99 us", "right", ""),
    ("max us", "right", ""),
)


def _width() -> int:
    # A terminal's own width; a pipe or file gets lines a reader can still take in.
    return max(100, shutil.get_terminal_size((120, 24)).columns)


def print_compare_table(result: CompareResult, console: Console | None = None) -> None:
    """Per profile (its title names the kernel) a safety table and a cost table, identical
    rows collapsed into one (their variants joined by ``=``), a legend, then the verdict."""
    from rcukit.rcu.profiles import get_profile
    from rcukit.scenarios.verdict import judge

    console = console or Console(width=_width())
    cfg = result.config
    wl = result.workload
    judged = judge(result.rows)
    for profile in result.profiles:
        prof = get_profile(profile)
        head = (
            f"profile {profile} (page allocator of {prof.mm.kernel}): {cfg.nr_cpus} CPUs, "
            f"{wl.flood_cpus} flooding x {wl.objects_per_cpu} objects, seed {cfg.seed}"
        )
        safety = Table(title=f"kvfree_rcu() under krcp->lock, {head}", caption=prof.description,
                       header_style="bold")
        cost = Table(title=f"What it costs, {head}", header_style="bold")
        for t, cols in ((safety, _SAFETY_COLS), (cost, _COST_COLS)):
            for name, justify, _ in cols:
                t.add_column(name, justify=justify)  # type: ignore[arg-type]
        for b in (b for b in judged.builds if b.profile == profile):
            rows = [r for r in result.rows
                    if r["profile"] == profile and r["kernel_config"] == b.kernel_config]
            merged = {v: g for g in b.identical for v in g}
            for r in rows:
                group = merged.get(r["variant"], (r["variant"],))
                if group[0] != r["variant"]:
                    continue  # shown once, on the group's first row
                name = " = ".join(group)
                safety.add_row(name, b.kernel_config, *_safety_cells(r))
                cost.add_row(name, b.kernel_config, *_cost_cells(r))
        console.print(safety)
        console.print(cost)
    legend = "; ".join(
        f"{name}: {meaning}" for name, _, meaning in (*_SAFETY_COLS, *_COST_COLS) if meaning
    )
    console.print(f"[dim]{legend}.[/]", highlight=False)
    console.print("[bold]Verdict[/]")
    for line in judged.lines():
        console.print(f"  {line}", highlight=False)


def _safety_cells(r: dict[str, Any]) -> list[str]:
    s = r["splats"]

    def red(n: int) -> str:
        return f"[bold red]{n}[/]" if n else "0"

    att = r["block_alloc_attempts"]
    return [
        str(att),
        f"{r['block_alloc_failures']} ({r['block_alloc_failure_pct']:.1f}%)" if att else "-",
        str(r["fallback_rcu_head"]), str(r["fallback_synchronize"]),
        red(s["invalid_wait_context"]), red(s["sleeping_in_atomic"]),
        red(s["scheduling_while_atomic"]), str(r["reports_printed"]),
        str(r["zone_lock_in_krcp"]),
    ]


def _cost_cells(r: dict[str, Any]) -> list[str]:
    lat = r["latency_ns"]
    return [
        str(r["grace_periods"]), f"{r['gp_duration_ns']['p50'] / 1e6:.2f}",
        str(r["pending_peak"]), str(r["pages_peak"]),
        _us(lat["p999"]), _us(lat["p9999"]), _us(lat["max"]),
    ]
