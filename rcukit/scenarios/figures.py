"""Figures (matplotlib, the optional ``plot`` extra) of compare's results."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rcukit.errors import ConfigError

if TYPE_CHECKING:
    from rcukit.scenarios.compare import CompareResult


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
