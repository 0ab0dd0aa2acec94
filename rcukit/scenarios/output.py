"""Terminal tables (rich), plots (matplotlib, optional) and trace files for scenario results."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from rcukit.errors import ConfigError
from rcukit.trace.export import to_ftrace, to_perfetto

if TYPE_CHECKING:
    from rcukit.kernel import Kernel
    from rcukit.scenarios.compare import Cell, CompareResult


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
    import shutil

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


def require_matplotlib() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(
            "--plot needs matplotlib, which is an optional extra: pip install 'rcukit[plot]'"
        ) from None
    return plt


def write_plot(result: CompareResult, path: str) -> None:
    """Failure rate and splats per variant and build, and pending memory over time."""
    plt = require_matplotlib()
    first = result.profiles[0]
    rows = [r for r in result.rows if r["profile"] == first]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    configs = list(dict.fromkeys(r["kernel_config"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    width = 0.8 / max(1, len(configs))
    for ci, kc in enumerate(configs):
        xs = [i + ci * width for i in range(len(variants))]
        fail = []
        splats = []
        for v in variants:
            r = next(r for r in rows if r["variant"] == v and r["kernel_config"] == kc)
            fail.append(r["block_alloc_failure_pct"])
            splats.append(sum(r["splats"].values()))
        axes[0].bar(xs, fail, width, label=kc)
        axes[1].bar(xs, splats, width, label=kc)
    for ax, title in ((axes[0], "block allocation failures (%)"), (axes[1], "splats")):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(variants))])
        ax.set_xticklabels(variants, rotation=20)
        ax.set_title(title)
        ax.legend()
    kc0 = configs[0]
    for v in variants:
        r = next(r for r in rows if r["variant"] == v and r["kernel_config"] == kc0)
        tl = r.get("timeline") or []
        if tl:
            axes[2].plot([t[0] / 1e6 for t in tl], [t[1] for t in tl], label=v)
    axes[2].set_title(f"pending objects over time ({kc0})")
    axes[2].set_xlabel("simulated ms")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_traces(
    kernels: list[tuple[Cell, Kernel]], trace_path: str | None, ftrace_path: str | None
) -> None:
    """One Perfetto file with every run (a process per run) and/or one ftrace text file."""
    if trace_path:
        import json

        merged: list[dict[str, Any]] = []
        for i, ((profile, variant, kc), k) in enumerate(kernels):
            doc = json.loads(to_perfetto(k.tracer.events, k.config.nr_cpus))
            for ev in doc["traceEvents"]:
                ev["pid"] = ev["pid"] + 10 * i
                if ev.get("name") == "process_name":
                    ev["args"]["name"] = f"{profile}/{variant}/{kc}: {ev['args']['name']}"
                merged.append(ev)
        Path(trace_path).write_text(
            json.dumps({"traceEvents": merged, "displayTimeUnit": "ns"}, sort_keys=True),
            encoding="utf-8",
        )
    if ftrace_path:
        parts = []
        for (profile, variant, kc), k in kernels:
            parts.append(
                f"# ===== profile={profile} variant={variant} kernel_config={kc} =====\n"
            )
            parts.append(to_ftrace(k.tracer.events, k.config.nr_cpus))
        Path(ftrace_path).write_text("".join(parts), encoding="utf-8")
