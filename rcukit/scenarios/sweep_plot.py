"""Plots of a sweep's results: one figure against one or two swept parameters.

A sweep over several parameters has more dimensions than a picture, so every parameter that
varies must either be on an axis (``x``, and ``y`` for a heat map or ``lines`` for one line per
value) or be pinned with ``where``; seeds are the only thing averaged, since averaging over a
parameter silently would hide the very effect the sweep was run to see.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from rcukit.errors import ConfigError
from rcukit.scenarios.sweep import read_results

#: Heat-map cells are annotated with their value up to this many rows or columns.
ANNOTATE_MAX = 16


def lookup(result: Mapping[str, Any], key: str) -> Any:
    """A nested value by dotted key (``latency_ns.p99``, ``splats.invalid_wait_context``)."""
    node: Any = result
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def numeric_keys(result: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Every dotted key of ``result`` that holds a number: the figures one can plot."""
    out = []
    for key, value in result.items():
        if isinstance(value, Mapping):
            out.extend(numeric_keys(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)):
            out.append(prefix + str(key))
    return out


def parse_where(items: Sequence[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` pairs; VALUE is read as JSON (31, 0.5, true) or else as a string."""
    out: dict[str, Any] = {}
    for item in items:
        field, eq, text = item.partition("=")
        if not eq or not field:
            raise ConfigError(f"--where {item!r}: expected FIELD=VALUE, e.g. variant=nowait")
        try:
            out[field] = json.loads(text)
        except json.JSONDecodeError:
            out[field] = text
    return out


@attrs.frozen
class Cell:
    """One (x, series) cell: the figure's mean over seeds and its range."""

    mean: float
    low: float
    high: float
    n: int


@attrs.frozen
class PlotTable:
    """The figure tabulated against ``x`` and, optionally, a second parameter ``by``."""

    x: str
    x_values: tuple[Any, ...]
    by: str | None
    by_values: tuple[Any, ...]
    figure: str
    where: tuple[tuple[str, Any], ...]
    #: cells[by_index][x_index], None where the sweep has no point.
    cells: tuple[tuple[Cell | None, ...], ...]

    def means(self) -> list[list[float]]:
        return [[c.mean if c else math.nan for c in row] for row in self.cells]

    def seeds(self) -> int:
        return max((c.n for row in self.cells for c in row if c), default=0)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _order(values: list[Any]) -> tuple[Any, ...]:
    # Numbers numerically; anything else in the order the sweep file listed it (point order).
    if all(_is_number(v) for v in values):
        return tuple(sorted(values))
    return tuple(values)


def tabulate(
    records: Sequence[Mapping[str, Any]],
    x: str,
    figure: str,
    by: str | None = None,
    where: Mapping[str, Any] | None = None,
) -> PlotTable:
    """Group the records by ``x`` (and ``by``), average the figure over seeds."""
    where = dict(where or {})
    if not records:
        raise ConfigError("the results file holds no points")
    records = sorted(records, key=lambda r: r["point"])
    names = sorted({k for r in records for k in r["params"]})
    for field in [x, *([by] if by else []), *where]:
        if field not in names:
            raise ConfigError(
                f"{field!r} is not a swept parameter of these results; parameters: "
                f"{', '.join(names)}"
            )
    if by == x:
        raise ConfigError(f"{x!r} cannot be on both axes; pick two different parameters")
    axes = {x, by} | set(where)
    chosen = [
        r for r in records
        if all(r["params"].get(k) == v for k, v in where.items())
        and all(a in r["params"] for a in (x, by) if a)
    ]
    if not chosen:
        shown = ", ".join(f"{k}={v!r}" for k, v in where.items())
        raise ConfigError(f"no point matches --where {shown}")
    for name in names:
        if name in axes:
            continue
        seen = list(dict.fromkeys(json.dumps(r["params"].get(name)) for r in chosen))
        if len(seen) > 1:
            raise ConfigError(
                f"parameter {name!r} varies ({', '.join(seen)}) but is on no axis; "
                f"pin it with --where {name}=VALUE or put it on --y / --lines"
            )
    try:
        for r in chosen:
            value = lookup(r["result"], figure)
            if not _is_number(value) and not isinstance(value, bool):
                raise KeyError(figure)
    except KeyError:
        raise ConfigError(
            f"figure {figure!r} is not a number in the results; figures: "
            f"{', '.join(numeric_keys(chosen[0]['result']))}"
        ) from None
    x_values = _order(list(dict.fromkeys(r["params"][x] for r in chosen)))
    by_values = _order(list(dict.fromkeys(r["params"][by] for r in chosen))) if by else (None,)
    groups: dict[tuple[int, int], list[float]] = {}
    for r in chosen:
        bi = by_values.index(r["params"][by]) if by else 0
        xi = x_values.index(r["params"][x])
        groups.setdefault((bi, xi), []).append(float(lookup(r["result"], figure)))
    cells = tuple(
        tuple(
            Cell(sum(v) / len(v), min(v), max(v), len(v)) if (v := groups.get((bi, xi))) else None
            for xi in range(len(x_values))
        )
        for bi in range(len(by_values))
    )
    return PlotTable(
        x=x,
        x_values=x_values,
        by=by,
        by_values=by_values if by else (),
        figure=figure,
        where=tuple(where.items()),
        cells=cells,
    )


def _label(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _title(table: PlotTable) -> str:
    pinned = ", ".join(f"{k}={_label(v)}" for k, v in table.where)
    n = table.seeds()
    return f"{table.figure}, mean of {n} seed{'s' if n != 1 else ''}" + (
        f" ({pinned})" if pinned else ""
    )


def plot_table(table: PlotTable, out: str | Path, *, heatmap: bool) -> None:
    """Write a heat map (``by`` on the y axis) or a line plot (one line per ``by`` value)."""
    from rcukit.scenarios.figures import require_matplotlib

    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(8, 5.5), layout="constrained")
    if heatmap:
        grid = table.means()
        im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
        fig.colorbar(im, ax=ax, label=table.figure)
        ax.set_xticks(range(len(table.x_values)), [_label(v) for v in table.x_values])
        ax.set_yticks(range(len(table.by_values)), [_label(v) for v in table.by_values])
        ax.set_ylabel(table.by)
        if len(table.x_values) <= ANNOTATE_MAX and len(table.by_values) <= ANNOTATE_MAX:
            finite = [v for row in grid for v in row if not math.isnan(v)]
            mid = (min(finite) + max(finite)) / 2 if finite else 0.0
            for yi, values in enumerate(grid):
                for xi, v in enumerate(values):
                    if not math.isnan(v):
                        ax.text(xi, yi, f"{v:.4g}", ha="center", va="center", fontsize=8,
                                color="black" if v > mid else "white")
    else:
        numeric_x = all(_is_number(v) for v in table.x_values)
        xs = list(table.x_values) if numeric_x else list(range(len(table.x_values)))
        for bi, row in enumerate(table.cells):
            pts = [(xs[i], c) for i, c in enumerate(row) if c is not None]
            label = f"{table.by}={_label(table.by_values[bi])}" if table.by else None
            means = [c.mean for _, c in pts]
            err = [[c.mean - c.low for _, c in pts], [c.high - c.mean for _, c in pts]]
            ax.errorbar([p for p, _ in pts], means, yerr=err, marker="o", capsize=3,
                        label=label)
        if not numeric_x:
            ax.set_xticks(xs, [_label(v) for v in table.x_values])
        ax.set_ylabel(table.figure)
        if table.by:
            ax.legend(title=None)
        ax.grid(True, alpha=0.3)
    ax.set_xlabel(table.x)
    ax.set_title(_title(table) + ("" if heatmap else "; bars: min..max over seeds"))
    try:
        fig.savefig(out, dpi=120)
    except OSError as exc:
        raise ConfigError(f"cannot write plot {str(out)!r}: {exc.strerror}") from exc
    finally:
        plt.close(fig)


def plot_results(
    results: str | Path,
    out: str | Path,
    *,
    x: str,
    figure: str,
    y: str | None = None,
    lines: str | None = None,
    where: Mapping[str, Any] | None = None,
) -> PlotTable:
    """Read a results file and draw ``figure`` against ``x`` (and ``y`` or ``lines``)."""
    if y and lines:
        raise ConfigError("--y (heat map) and --lines (line plot) are exclusive; pick one")
    table = tabulate(list(read_results(results).records), x, figure, by=y or lines, where=where)
    plot_table(table, out, heatmap=y is not None)
    return table
