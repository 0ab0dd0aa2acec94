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
    from rcukit.scenarios.compare import CompareResult


def _us(ns: int) -> str:
    return f"{ns / 1000:.2f}"


def print_compare_table(result: CompareResult, console: Console | None = None) -> None:
    console = console or Console(width=200)
    cfg = result.config
    wl = result.workload
    title = (
        f"kvfree_rcu() block allocation: {cfg.nr_cpus} CPUs, profile {cfg.kvfree.profile}, "
        f"{wl.flood_cpus} flooding CPUs x {wl.objects_per_cpu} objects, seed {cfg.seed}"
    )
    t = Table(title=title, show_lines=False, header_style="bold")
    cols = [
        ("variant", "left"), ("config", "left"), ("calls", "right"),
        ("blk alloc", "right"), ("failed", "right"), ("fb rcu_head", "right"),
        ("fb sync", "right"), ("invalid wait", "right"), ("sched atomic", "right"),
        ("sleep atomic", "right"), ("kswapd", "right"), ("zone lock", "right"),
        ("GPs", "right"), ("rec/blk", "right"), ("pending peak", "right"),
        ("pages peak", "right"), ("p50 us", "right"), ("p99 us", "right"),
        ("max us", "right"),
    ]
    for name, justify in cols:
        t.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in result.rows:
        s = r["splats"]

        def red(n: int) -> str:
            return f"[bold red]{n}[/]" if n else "0"

        t.add_row(
            r["variant"], r["kernel_config"], str(r["kvfree_calls"]),
            str(r["block_alloc_attempts"]),
            f"{r['block_alloc_failures']} ({r['block_alloc_failure_pct']:.1f}%)",
            str(r["fallback_rcu_head"]), str(r["fallback_synchronize"]),
            red(s["invalid_wait_context"]), red(s["scheduling_while_atomic"]),
            red(s["sleeping_in_atomic"]), str(r["kswapd_wakeups"]),
            str(r["zone_lock_acquisitions"]), str(r["grace_periods"]),
            f"{r['records_per_block_mean']:.1f}", str(r["pending_peak"]),
            str(r["pages_peak"]), _us(r["latency_ns"]["p50"]), _us(r["latency_ns"]["p99"]),
            _us(r["latency_ns"]["max"]),
        )
    console.print(t)
    from rcukit.scenarios.compare import verdict

    console.print("[bold]Verdict[/]")
    for line in verdict(result.rows):
        console.print(f"  - {line}", highlight=False)


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
    rows = result.rows
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
    kernels: list[tuple[str, str, Kernel]], trace_path: str | None, ftrace_path: str | None
) -> None:
    """One Perfetto file with every run (a process per run) and/or one ftrace text file."""
    if trace_path:
        import json

        merged: list[dict[str, Any]] = []
        for i, (variant, kc, k) in enumerate(kernels):
            doc = json.loads(to_perfetto(k.tracer.events, k.config.nr_cpus))
            for ev in doc["traceEvents"]:
                ev["pid"] = ev["pid"] + 10 * i
                if ev.get("name") == "process_name":
                    ev["args"]["name"] = f"{variant}/{kc}: {ev['args']['name']}"
                merged.append(ev)
        Path(trace_path).write_text(
            json.dumps({"traceEvents": merged, "displayTimeUnit": "ns"}, sort_keys=True),
            encoding="utf-8",
        )
    if ftrace_path:
        parts = []
        for variant, kc, k in kernels:
            parts.append(f"# ===== variant={variant} kernel_config={kc} =====\n")
            parts.append(to_ftrace(k.tracer.events, k.config.nr_cpus))
        Path(ftrace_path).write_text("".join(parts), encoding="utf-8")
