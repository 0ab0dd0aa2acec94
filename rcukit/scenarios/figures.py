"""Figures (matplotlib, the optional ``plot`` extra) of compare's results.

One figure per profile, laid out for a paper or a mailing-list post: a title naming the machine,
the profile and the seed; a row of splat panels (one per kernel build, the three reports kept
apart, what the checker saw against what the log printed); a row of pending-object timelines
(steps through the samples, one per build); and a row of what each variant pays: block pages
that failed under ``krcp->lock``, the two fallbacks, and the tail of one ``kvfree_rcu()`` call.
Every series differs in hatch, marker or dash as well as colour, so the figure survives a
greyscale printer, and variants whose curves coincide share one labelled line instead of
hiding under each other.
"""

from __future__ import annotations

import textwrap
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rcukit.errors import ConfigError
from rcukit.mm.zone import pcp_high_batch
from rcukit.rcu.profiles import get_profile

if TYPE_CHECKING:
    from rcukit.config import KernelConfig
    from rcukit.scenarios.compare import CompareResult, Workload

#: The three reports, in the words the kernel prints (lockdep, might-sleep, the scheduler).
SPLAT_LABELS: Mapping[str, str] = {
    "invalid_wait_context": "BUG: Invalid wait context",
    "sleeping_in_atomic": "BUG: sleeping function called from invalid context",
    "scheduling_while_atomic": "BUG: scheduling while atomic",
}
#: Builds as a kernel engineer names them.
BUILD_LABELS: Mapping[str, str] = {
    "default": "default build",
    "lockdep": "CONFIG_PROVE_RAW_LOCK_NESTING",
    "rt": "CONFIG_PREEMPT_RT",
}
#: Compare's row keys (README "JSON keys") as axis labels, units included. Sweep plots use it
#: for the figure they draw.
ROW_LABELS: Mapping[str, str] = {
    "kvfree_calls": "kvfree_rcu() calls",
    "kvfree_calls_single": "head-less kvfree_rcu() calls",
    "block_alloc_attempts": "block-page allocations under krcp->lock",
    "block_alloc_failures": "failed block-page allocations under krcp->lock",
    "block_alloc_failure_pct": "block-page allocations under krcp->lock that failed (%)",
    "block_pages_other_mt_pcp": "in-lock block pages from another migratetype's pcp list",
    "block_alloc_extfrag": "fragmenting fallback steals under krcp->lock",
    "block_alloc_all": "block pages allocated (all paths)",
    "block_alloc_all_failures": "failed block-page allocations (all paths)",
    "blocks_from_cache": "blocks taken from the per-CPU page cache",
    "fallback_rcu_head": "calls that fell back to the object's rcu_head",
    "fallback_synchronize": "head-less calls that fell back to synchronize_rcu()",
    "splats.invalid_wait_context": "'Invalid wait context' reports (would report)",
    "splats.sleeping_in_atomic": "'sleeping function called from invalid context' "
    "reports (would report)",
    "splats.scheduling_while_atomic": "'scheduling while atomic' reports (would report)",
    "reports_printed": "reports printed in the kernel log",
    "splat_sites": "distinct call sites with a violation",
    "kswapd_wakeups": "kswapd wake-ups",
    "kswapd_wakeups_in_krcp": "kswapd wake-ups under krcp->lock",
    "kswapd_wake_boosted": "kswapd wake-ups for a boosted watermark",
    "watermark_boosts": "watermark boosts",
    "zone_lock_acquisitions": "zone->lock acquisitions",
    "zone_lock_in_krcp": "zone->lock acquisitions under krcp->lock",
    "pcp_lock_in_krcp": "pcp lock acquisitions under krcp->lock",
    "pcp_refills": "pcp list refills (rmqueue_bulk)",
    "grace_periods": "grace periods completed",
    "gp_duration_ns.p50": "grace-period duration p50 (simulated ns)",
    "gp_duration_ns.max": "grace-period duration max (simulated ns)",
    "gp_violations": "blocks reclaimed before a full grace period",
    "batches": "batches queued for a grace period",
    "objects_freed": "objects freed",
    "objects_pending": "objects still queued at the end",
    "records_per_block_mean": "pointers per freed block (mean)",
    "pending_peak": "peak objects queued",
    "pages_peak": "peak block pages held",
    "latency_ns.p50": "kvfree_rcu() call time p50 (simulated ns)",
    "latency_ns.p99": "kvfree_rcu() call time p99 (simulated ns)",
    "latency_ns.p999": "kvfree_rcu() call time p99.9 (simulated ns)",
    "latency_ns.p9999": "kvfree_rcu() call time p99.99 (simulated ns)",
    "latency_ns.max": "kvfree_rcu() call time max (simulated ns)",
    "sim_time_ns": "simulated time of the run (ns)",
}

# Greyscale-safe styles: a colour-blind-safe palette (Okabe-Ito) doubled by hatches and markers.
_BUILD_STYLE = {
    "default": {"color": "#E69F00", "hatch": "", "marker": "o"},
    "lockdep": {"color": "#56B4E9", "hatch": "///", "marker": "s"},
    "rt": {"color": "#009E73", "hatch": "xxx", "marker": "^"},
}
_SPLAT_STYLE = {
    "invalid_wait_context": {"color": "#D55E00", "hatch": ""},
    "sleeping_in_atomic": {"color": "#0072B2", "hatch": "///"},
    "scheduling_while_atomic": {"color": "#CC79A7", "hatch": "..."},
}
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_DASHES = ("-", "--", ":", "-.")
_COLORS = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#D55E00", "#0072B2", "#CC79A7")


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


def _build_style(kc: str, i: int) -> dict[str, str]:
    return _BUILD_STYLE.get(kc, {"color": _COLORS[i % len(_COLORS)], "hatch": "\\\\",
                                 "marker": _MARKERS[i % len(_MARKERS)]})


def _size(nbytes: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if nbytes >= 1 << shift:
            value = nbytes / (1 << shift)
            return f"{value:.3g} {unit}"
    return f"{nbytes} B"


def _say(swept: Collection[str], keys: Sequence[str], text: str, varied: str) -> str:
    """``text``, or ``varied`` when a sweep puts one of ``keys`` on an axis."""
    return varied if any(k in swept for k in keys) else text


def machine_line(config: KernelConfig, swept: Collection[str] = ()) -> str:
    """The machine in one line: CPUs, the zone and its pcp lists, memory in use, HZ, seed.

    Fields named in ``swept`` (the keys a sweep puts on an axis) are said to vary instead of
    showing one point's value.
    """
    mm = config.mm
    high, batch = pcp_high_batch(mm.zone_pages, config.page_size, mm.pcp_batch, mm.pcp_high)
    if mm.initial_free_pages is not None:
        used = f"{mm.initial_free_pages:,} pages free at boot"
    else:
        used = f"{100 * mm.initial_used_fraction:.4g} % in use at boot"
    zone_keys = ("mm.zone_pages", "page_size")
    cpus = _say(swept, ("nr_cpus",), f"{config.nr_cpus} CPUs", "N CPUs (varies)")
    zone = _say(swept, zone_keys, f"one {_size(mm.zone_pages * config.page_size)} zone of "
                f"{mm.zone_pages:,} x {config.page_size // 1024} KiB pages",
                "one zone (size varies)")
    pcp = _say(swept, ("mm.pcp_batch", "mm.pcp_high", *zone_keys),
               f"pcp batch {batch}, high {high}", "pcp batch/high vary")
    used = _say(swept, ("mm.initial_used_fraction", "mm.initial_free_pages"), used,
                "memory in use varies")
    hz = _say(swept, ("hz",), f"HZ={config.hz}", "HZ varies")
    seed = "" if "seed" in swept else f", seed {config.seed}"
    return f"{cpus}, {zone} ({pcp}; {used}), {hz}{seed}"


def workload_line(workload: Workload, swept: Collection[str] = ()) -> str:
    """compare's flood in one line (scenario fields a sweep varies are said to vary)."""
    w = workload
    return (
        _say(swept, ("flood_cpus",), f"{w.flood_cpus} CPUs", "N CPUs (varies)")
        + " x "
        + _say(swept, ("objects_per_cpu", "scale"), f"{w.objects_per_cpu:,}", "N (varies)")
        + " kvfree_rcu() calls, one per "
        + _say(swept, ("think_ns",), f"{w.think_ns / 1000:g} µs", "T µs (varies)")
        + " ("
        + _say(swept, ("single_fraction",), f"{100 * w.single_fraction:g} %", "a varying share")
        + " head-less, "
        + _say(swept, ("vmalloc_fraction",), f"{100 * w.vmalloc_fraction:g} %", "a varying share")
        + " vmalloc'ed)"
        + (", then kvfree_rcu_barrier()" if w.barrier else "")
    )


def figure_title(config: KernelConfig, workload: Workload, profile: str) -> str:
    desc = get_profile(profile).description
    head = f"rcukit compare, profile {profile}: " + desc.removeprefix(f"{profile}: ")
    return "\n".join(
        [*textwrap.wrap(head, 140), machine_line(config), workload_line(workload)]
    )


def _row(rows: Sequence[Mapping[str, Any]], v: str, kc: str) -> Mapping[str, Any] | None:
    return next((r for r in rows if r["variant"] == v and r["kernel_config"] == kc), None)


def _variant_axis(ax: Any, variants: Sequence[str]) -> None:
    ax.set_xticks(range(len(variants)), variants, rotation=25, ha="right")
    ax.set_xlim(-0.6, len(variants) - 0.4)
    ax.set_xlabel("block-page allocator variant")


def _splat_panel(ax: Any, rows: Sequence[Mapping[str, Any]], variants: Sequence[str],
                 kc: str) -> None:
    """Reports per kind for one build; a star marks what the kernel log printed."""
    width = 0.8 / len(SPLAT_LABELS)
    top = 0
    for ki, kind in enumerate(SPLAT_LABELS):
        style = _SPLAT_STYLE[kind]
        xs, ys = [], []
        for vi, v in enumerate(variants):
            r = _row(rows, v, kc)
            n = r["splats"].get(kind, 0) if r else 0
            if n:
                xs.append(vi - 0.4 + width * (ki + 0.5))
                ys.append(n)
        bars = ax.bar(xs, ys, width, color=style["color"], hatch=style["hatch"],
                      edgecolor="black", linewidth=0.6)
        ax.bar_label(bars, fontsize=7, padding=1)
        top = max([top, *ys])
    printed = [(vi, r["reports_printed"]) for vi, v in enumerate(variants)
               if (r := _row(rows, v, kc)) and r["reports_printed"]]
    if printed:
        ax.plot([p[0] for p in printed], [p[1] for p in printed], linestyle="none",
                marker="*", markersize=11, color="black")
        top = max(top, *(p[1] for p in printed))
    ax.set_yscale("log")
    ax.set_ylim(0.5, max(10, top) * 30)
    _log_ticks(ax)
    ax.set_title(BUILD_LABELS.get(kc, kc), fontsize=10)
    ax.set_ylabel("reports the checker saw (log scale)")
    _variant_axis(ax, variants)
    ax.grid(True, axis="y", which="major", alpha=0.3)
    if not top:
        ax.text(0.5, 0.5, "no reports", transform=ax.transAxes, ha="center", va="center",
                color="0.3")


def _timeline_groups(
    rows: Sequence[Mapping[str, Any]], variants: Sequence[str], kc: str
) -> list[tuple[list[str], list[tuple[float, int]]]]:
    """Variants whose timelines are identical, grouped (one line each, all names in the key)."""
    groups: dict[tuple[tuple[float, int], ...], list[str]] = {}
    for v in variants:
        r = _row(rows, v, kc)
        samples = sorted((t[0] / 1e6, t[1]) for t in (r.get("timeline") or [])) if r else []
        if samples:
            groups.setdefault(tuple(samples), []).append(v)
    return [(names, list(key)) for key, names in groups.items()]


def _timeline_panel(ax: Any, rows: Sequence[Mapping[str, Any]], variants: Sequence[str],
                    kc: str) -> None:
    groups = _timeline_groups(rows, variants, kc)
    for gi, (names, samples) in enumerate(groups):
        vi = variants.index(names[0])
        # Dense runs (thousands of samples) thin out so the curves beneath stay visible.
        dense = len(samples) > 150
        ax.step([s[0] for s in samples], [s[1] for s in samples], where="post",
                color=_COLORS[vi % len(_COLORS)], linestyle=_DASHES[gi % len(_DASHES)],
                marker=_MARKERS[vi % len(_MARKERS)], markersize=4,
                linewidth=0.5 if dense else 0.9, alpha=0.8 if dense else 1.0,
                markevery=max(1, len(samples) // 15), label=" = ".join(names))
    ax.set_title(BUILD_LABELS.get(kc, kc), fontsize=10)
    ax.set_xlabel("simulated time (ms)")
    ax.set_ylabel("objects queued, all CPUs")
    ax.grid(True, alpha=0.3)
    if groups:
        # Headroom above the curves for the key, so it hides none of them.
        top = max(n for _, samples in groups for _, n in samples)
        ax.set_ylim(0, max(1, top) * (1.2 + 0.09 * ((len(groups) + 1) // 2)))
        ax.legend(fontsize=7, title="variant (identical curves share a line)",
                  title_fontsize=7, loc="upper left", ncols=2)
    else:
        ax.text(0.5, 0.5, "no samples", transform=ax.transAxes, ha="center", va="center")


def _build_bars(ax: Any, rows: Sequence[Mapping[str, Any]], variants: Sequence[str],
                configs: Sequence[str], value: Any) -> list[tuple[float, Mapping[str, Any]]]:
    """One bar per (variant, build) with the build's style; returns (x, row) per bar."""
    width = 0.8 / len(configs)
    out: list[tuple[float, Mapping[str, Any]]] = []
    for ci, kc in enumerate(configs):
        style = _build_style(kc, ci)
        xs, ys, kept = [], [], []
        for vi, v in enumerate(variants):
            r = _row(rows, v, kc)
            if r is None:
                continue
            xs.append(vi - 0.4 + width * (ci + 0.5))
            ys.append(value(r))
            kept.append(r)
        ax.bar(xs, ys, width, color=style["color"], hatch=style["hatch"], edgecolor="black",
               linewidth=0.6)
        out.extend(zip(xs, kept, strict=True))
    return out


def _failure_panel(ax: Any, rows: Sequence[Mapping[str, Any]], variants: Sequence[str],
                   configs: Sequence[str]) -> None:
    placed = _build_bars(ax, rows, variants, configs, lambda r: r["block_alloc_failure_pct"])
    top = max((r["block_alloc_failure_pct"] for _, r in placed), default=0.0)
    ax.set_ylim(0, max(1.0, top) * 1.3)
    for x, r in placed:
        attempts = r["block_alloc_attempts"]
        if not attempts:
            continue
        text = f"{r['block_alloc_failures']}/{attempts}"
        ax.text(x, r["block_alloc_failure_pct"], text, rotation=90, ha="center", va="bottom",
                fontsize=6)
    tried = sum(r["block_alloc_attempts"] for _, r in placed)
    if not tried:
        ax.text(0.5, 0.5, "no block page is allocated under krcp->lock\nin this profile",
                transform=ax.transAxes, ha="center", va="center", color="0.3")
    elif not top:
        ax.text(0.5, 0.5, f"none failed ({tried:,} tries in all)", transform=ax.transAxes,
                ha="center", va="center", color="0.3")
    ax.set_title("block pages under krcp->lock: failed / tried", fontsize=10)
    ax.set_ylabel("failed (% of tried)")
    _variant_axis(ax, variants)
    ax.grid(True, axis="y", alpha=0.3)


def _fallback_panel(ax: Any, rows: Sequence[Mapping[str, Any]], variants: Sequence[str],
                    configs: Sequence[str]) -> None:
    """Bars: calls that fell back to the object's rcu_head; diamonds: to synchronize_rcu()."""
    placed = _build_bars(ax, rows, variants, configs, lambda r: r["fallback_rcu_head"])
    sync = [(x, r["fallback_synchronize"]) for x, r in placed if r["fallback_synchronize"]]
    if sync:
        ax.plot([p[0] for p in sync], [p[1] for p in sync], linestyle="none", marker="D",
                markersize=6, color="black", markerfacecolor="white", markeredgewidth=1.5)
    top = max((max(r["fallback_rcu_head"], r["fallback_synchronize"]) for _, r in placed),
              default=0)
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylim(0, max(10, top) * 8)
    _log_ticks(ax)
    ax.set_title("what it pays: fallbacks", fontsize=10)
    ax.set_ylabel("calls (symmetric log scale)")
    _variant_axis(ax, variants)
    ax.grid(True, axis="y", alpha=0.3)
    from matplotlib.patches import Patch

    ax.legend(handles=[
        Patch(facecolor="0.8", edgecolor="black", label="bar: fell back to the object's rcu_head"),
        _marker_handle("D", "diamond: a head-less call fell back to synchronize_rcu()"),
    ], fontsize=7, loc="upper left")
    if not top:
        ax.text(0.5, 0.5, "no fallbacks", transform=ax.transAxes, ha="center", va="center",
                color="0.3")


def _marker_handle(marker: str, label: str, filled: bool = False) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([], [], marker=marker, color="black", linestyle="none",
                  markerfacecolor="0.3" if filled else "white", markeredgewidth=1.5,
                  label=label)


def _log_ticks(ax: Any) -> None:
    """Plain numbers (0.1, 1, 10, 1000) on a log axis, no minor labels."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.10g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _latency_panel(ax: Any, rows: Sequence[Mapping[str, Any]], variants: Sequence[str],
                   configs: Sequence[str]) -> None:
    n = len(configs)
    for ci, kc in enumerate(configs):
        style = _build_style(kc, ci)
        for vi, v in enumerate(variants):
            r = _row(rows, v, kc)
            if r is None:
                continue
            x = vi - 0.3 + 0.6 * (ci + 0.5) / n
            p999, worst = r["latency_ns"]["p999"] / 1e3, r["latency_ns"]["max"] / 1e3
            ax.plot([x, x], [p999, worst], color=style["color"], linewidth=1.2)
            ax.plot(x, worst, marker=style["marker"], markerfacecolor="white",
                    markeredgecolor=style["color"], markeredgewidth=1.5, linestyle="none")
            ax.plot(x, p999, marker=style["marker"], color=style["color"],
                    markeredgecolor="black", linestyle="none")
    ax.set_yscale("log")
    _log_ticks(ax)
    ax.set_title("what it pays: kvfree_rcu() tail", fontsize=10)
    ax.set_ylabel("one call, simulated µs (log scale)")
    _variant_axis(ax, variants)
    ax.grid(True, axis="y", which="major", alpha=0.3)
    ax.legend(handles=[
        _marker_handle("o", "p99.9 (filled)", filled=True),
        _marker_handle("o", "max (open; hidden where it equals p99.9)"),
    ], fontsize=7, loc="best")


def build_figure(result: CompareResult, profile: str) -> Any:
    """The figure of one profile's rows (see the module docstring), not yet saved."""
    plt = require_matplotlib()
    from matplotlib.patches import Patch

    rows = [r for r in result.rows if r["profile"] == profile]
    if not rows:
        raise ConfigError(f"no rows of profile {profile!r} in the result")
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    configs = list(dict.fromkeys(r["kernel_config"] for r in rows))
    nc = len(configs)
    width = max(16.0, 5.4 * nc, 0.9 * len(variants) * nc)
    fig = plt.figure(figsize=(width, 13.0), layout="constrained")
    grid = fig.add_gridspec(3, 4 * nc, height_ratios=(1, 1, 1.05))
    splat_axes = [fig.add_subplot(grid[0, 4 * i:4 * i + 4]) for i in range(nc)]
    for ax in splat_axes[1:]:
        ax.sharey(splat_axes[0])
    for ax, kc in zip(splat_axes, configs, strict=True):
        _splat_panel(ax, rows, variants, kc)
    splat_axes[0].legend(handles=[
        *(Patch(facecolor=_SPLAT_STYLE[k]["color"], hatch=_SPLAT_STYLE[k]["hatch"],
                edgecolor="black", label=f'"{label}" (would report)')
          for k, label in SPLAT_LABELS.items()),
        plt.Line2D([], [], marker="*", color="black", linestyle="none", markersize=11,
                   label="printed in the kernel log (one-shot / rate-limited; all kinds)"),
    ], fontsize=7, loc="upper left")
    line_axes = [fig.add_subplot(grid[1, 4 * i:4 * i + 4]) for i in range(nc)]
    for ax, kc in zip(line_axes, configs, strict=True):
        _timeline_panel(ax, rows, variants, kc)
    for ax in line_axes[1:]:
        ax.sharey(line_axes[0])
        ax.sharex(line_axes[0])
    line_axes[0].set_ylim(0, max(ax.get_ylim()[1] for ax in line_axes))
    bottom = [fig.add_subplot(grid[2, i * nc * 4 // 3:(i + 1) * nc * 4 // 3]) for i in range(3)]
    _failure_panel(bottom[0], rows, variants, configs)
    _fallback_panel(bottom[1], rows, variants, configs)
    _latency_panel(bottom[2], rows, variants, configs)
    fig.legend(handles=[
        Patch(facecolor=_build_style(kc, i)["color"], hatch=_build_style(kc, i)["hatch"],
              edgecolor="black", label=BUILD_LABELS.get(kc, kc))
        for i, kc in enumerate(configs)
    ], loc="outside lower center", ncols=nc, title="kernel build (bottom row)", fontsize=9)
    fig.suptitle(figure_title(result.config.replace(**{"kvfree.profile": profile}),
                              result.workload, profile), fontsize=11)
    fig.get_layout_engine().set(h_pad=0.08, hspace=0.06)
    return fig


def plot_paths(result: CompareResult, path: str | Path) -> list[tuple[str, Path]]:
    """Where each profile's figure goes: ``path`` for one profile, ``STEM-PROFILE.EXT`` for
    several (one figure each, so a paper can carry any one of them)."""
    path = Path(path)
    profiles = result.profiles
    if len(profiles) == 1:
        return [(profiles[0], path)]
    return [(p, path.with_name(f"{path.stem}-{p}{path.suffix}")) for p in profiles]


def write_plot(result: CompareResult, path: str | Path) -> list[Path]:
    """Write one figure per profile (:func:`plot_paths`); return the files written."""
    written = []
    for profile, out in plot_paths(result, path):
        save_figure(build_figure(result, profile), out)
        written.append(out)
    return written


def save_figure(fig: Any, out: str | Path) -> None:
    """Write ``fig`` to ``out`` (format from the suffix) and close it; a file that cannot be
    written is a ConfigError naming it."""
    plt = require_matplotlib()
    try:
        fig.savefig(out, dpi=100)
    except OSError as exc:
        raise ConfigError(f"cannot write plot {str(out)!r}: {exc.strerror}") from exc
    finally:
        plt.close(fig)
