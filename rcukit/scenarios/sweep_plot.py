"""Plots of a sweep's results: one figure against one or two swept parameters.

A sweep over several parameters has more dimensions than a picture, so every parameter that
varies must either be on an axis (``x``, and ``y`` for a heat map or ``lines`` for one line per
value) or be pinned with ``where``; seeds are the only thing averaged, since averaging over a
parameter silently would hide the very effect the sweep was run to see.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from rcukit.config import KernelConfig
from rcukit.errors import ConfigError
from rcukit.scenarios.sweep import read_results

#: Heat-map cells are annotated with their value up to this many rows or columns.
ANNOTATE_MAX = 16
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_DASHES = ("-", "--", ":", "-.")


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
        taken = {
            k: _order(list(dict.fromkeys(r["params"][k] for r in records if k in r["params"])))
            for k in where
        }
        swept = "; ".join(f"{k} takes {', '.join(map(repr, vs))}" for k, vs in taken.items())
        raise ConfigError(f"no point matches --where {shown} ({swept})")
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


# ---------------------------------------------------------------------------------------------
# Axis labels from the fields' documentation

#: Sweep keys that are not config fields (sweep.SPECIAL_KEYS) and the scale factor.
SPECIAL_LABELS: Mapping[str, str] = {
    "variant": "block-page allocator variant",
    "profile": "kvfree_rcu() profile (kernel version)",
    "kernel_config": "kernel build",
    "scale": "objects per CPU, as a multiple of the default",
}
#: Units a field's name carries (cost.pcp_alloc_ns, kvfree.rcu_delay_page_cache_fill_msec).
_NAME_UNITS = (("_ns", "ns"), ("_us", "µs"), ("_msec", "ms"), ("_ms", "ms"),
               ("_kbytes", "KiB"), ("_fraction", "0..1"), ("_probability", "probability, 0..1"))
#: Words that already say the unit in a label.
_UNIT_WORDS = {"ns": ("ns", "nanosecond"), "µs": ("us", "µs", "microsecond"),
               "ms": ("ms", "millisecond"), "KiB": ("KiB", "kbytes")}
#: A label longer than this loses its parenthesised aside.
_LABEL_MAX = 60
#: The build a point's config is, by (prove_raw_lock_nesting, preempt_rt).
_BUILD_NAMES = {(False, False): "default build", (True, False): "PROVE_RAW_LOCK_NESTING",
                (False, True): "PREEMPT_RT", (True, True): "PREEMPT_RT + PROVE_RAW_LOCK_NESTING"}
_DOC_LINE = re.compile(r"^(\s*)#:\s?(.*)$")
_FIELD_LINE = re.compile(r"^(\s*)(\w+)\s*:")


def attribute_docs(cls: type) -> dict[str, str]:
    """The ``#:`` comments written above each field of a class, by field name.

    These are the fields' documentation (Sphinx's autodoc reads the same comments), so an axis
    says what the README and the API reference say, in one place.
    """
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    body_indent = None
    pending: list[str] = []
    docs: dict[str, str] = {}
    for line in lines[1:]:
        if m := _DOC_LINE.match(line):
            pending.append(m.group(2).strip())
            continue
        m = _FIELD_LINE.match(line)
        if m and body_indent is None and not line.lstrip().startswith(('"', "'")):
            body_indent = m.group(1)
        if m and m.group(1) == body_indent and pending:
            docs[m.group(2)] = " ".join(pending)
        if line.strip():
            pending = []
    return docs


def _cut(text: str, stops: str) -> str:
    """``text`` up to the first of ``stops`` (followed by a space or the end) outside
    parentheses, so "(default 1 GiB: batch 63)" stays whole."""
    depth = 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        elif depth == 0 and ch in stops and (i + 1 == len(text) or text[i + 1] == " "):
            return text[:i]
    return text


def doc_label(doc: str) -> str:
    """A short label from a field's documentation: its first clause, markup removed."""
    text = _cut(doc.replace("``", ""), ";:.").strip()
    if len(text) > _LABEL_MAX and " (" in text:
        text = text[: text.index(" (")]
    return text


def _field_owner(key: str, scenario: str) -> tuple[type | None, str]:
    """The attrs class that defines ``key`` (a dotted config field or a scenario field)."""
    from rcukit.scenarios.compare import Workload
    from rcukit.scenarios.rcuscale import RcuscaleParams

    scen = {"compare": Workload, "rcuscale": RcuscaleParams}.get(scenario)
    if scen is not None and key in {f.name for f in attrs.fields(scen)}:
        return scen, key
    cls: Any = KernelConfig
    parts = key.split(".")
    for part in parts[:-1]:
        inner = typing.get_type_hints(cls).get(part)
        if inner is None or not attrs.has(inner):
            return None, key
        cls = inner
    if parts[-1] not in {f.name for f in attrs.fields(cls)}:
        return None, key
    return cls, parts[-1]


def param_label(key: str, scenario: str = "compare") -> str:
    """The axis label of a swept parameter: its documentation, its unit and its key."""
    if key in SPECIAL_LABELS:
        return f"{SPECIAL_LABELS[key]} [{key}]"
    cls, name = _field_owner(key, scenario)
    doc = attribute_docs(cls).get(name, "") if cls is not None else ""
    text = doc_label(doc) if doc else name.replace("_", " ")
    if "_per_" not in name:
        unit = next((u for suffix, u in _NAME_UNITS if name.endswith(suffix)), None)
        said = _UNIT_WORDS.get(unit or "", (unit,))
        if unit and not any(re.search(rf"\b{w}", text) for w in said):
            text = f"{text} ({unit})"
    return f"{text} [{key}]"


def figure_label(figure: str, scenario: str = "compare") -> str:
    """The label of a result figure: compare's row keys as the README documents them,
    rcuscale's counts from their documentation."""
    from rcukit.scenarios.figures import ROW_LABELS

    if scenario == "compare" and figure in ROW_LABELS:
        return ROW_LABELS[figure]
    if scenario == "rcuscale":
        from rcukit.scenarios.rcuscale import RcuscaleCounts

        doc = attribute_docs(RcuscaleCounts).get(figure)
        if doc:
            return f"{doc_label(doc)} [{figure}]"
    return figure


# ---------------------------------------------------------------------------------------------
# The figure


@attrs.frozen
class PlotContext:
    """What the points of a plot share: the scenario, a machine and its inputs, the seeds."""

    scenario: str
    config: KernelConfig
    inputs: Any
    seeds: tuple[int, ...]


def plot_context(records: Sequence[Mapping[str, Any]], table: PlotTable) -> PlotContext | None:
    """The machine of the first point the table draws (its swept fields vary on the axes);
    None if that point no longer builds (a results file from an older rcukit)."""
    from rcukit.scenarios.sweep import prepare_point

    where = dict(table.where)
    chosen = [
        r for r in records
        if all(r["params"].get(k) == v for k, v in where.items())
        and all(a in r["params"] for a in (table.x, table.by) if a)
    ]
    first = min(chosen, key=lambda r: r["point"])
    try:
        point = prepare_point(first["scenario"], first["params"], first["seed"])
    except ConfigError:
        return None
    seeds = tuple(sorted({r["seed"] for r in chosen}))
    return PlotContext(first["scenario"], point.config, point.inputs, seeds)


def _title(table: PlotTable, context: PlotContext | None = None) -> str:
    scenario = context.scenario if context else "compare"
    pinned = ", ".join(f"{k}={_label(v)}" for k, v in table.where)
    n = table.seeds()
    head = f"{figure_label(table.figure, scenario)}, mean of {n} seed{'s' if n != 1 else ''}"
    lines = [head + (f" ({pinned})" if pinned else "")]
    if context is not None:
        from rcukit.scenarios.compare import Workload
        from rcukit.scenarios.figures import machine_line, workload_line

        cfg = context.config
        swept = [a for a in (table.x, table.by) if a]
        seeds = ", ".join(str(s) for s in context.seeds)
        # Profile and variant are sweep keys; say so where they are on an axis.
        profile = "profile varies" if "profile" in swept else f"profile {cfg.kvfree.profile}"
        variant = "variant varies" if "variant" in swept else f"variant {cfg.kvfree.variant}"
        build = ("build varies" if "kernel_config" in swept
                 else _BUILD_NAMES[(cfg.prove_raw_lock_nesting, cfg.preempt_rt)])
        lines.append(f"rcukit sweep ({context.scenario}), {profile}, {variant}, {build}; "
                     f"seeds {seeds}")
        lines.append(machine_line(cfg, [*swept, "seed"]))
        if isinstance(context.inputs, Workload):
            lines.append(workload_line(context.inputs, swept))
        lines.append(f"varied on the axes: {', '.join(swept)} (the rest as above)")
    return "\n".join(lines)


def cell_text(value: float, figure: str) -> str:
    """A heat-map cell: times (``*_ns`` figures) in ns/µs/ms/s, other numbers to 4 digits."""
    if figure.endswith("_ns") or "_ns." in figure:
        for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
            if abs(value) >= scale:
                return f"{value / scale:.3g} {unit}"
        return f"{value:.3g} ns"
    if abs(value) >= 10_000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def _norm(values: Sequence[float]) -> Any:
    """A log colour scale where one cell dwarfs the rest (a range over two decades)."""
    from matplotlib.colors import LogNorm, Normalize, SymLogNorm

    finite = [v for v in values if not math.isnan(v)]
    positive = [v for v in finite if v > 0]
    if not positive or min(finite) < 0:
        return Normalize()
    hi = max(positive)
    if min(finite) > 0 and hi / min(positive) > 100:
        return LogNorm(vmin=min(positive), vmax=hi)
    if min(finite) == 0 and hi / min(positive) > 100:
        return SymLogNorm(linthresh=min(positive), vmin=0, vmax=hi)
    return Normalize()


def _spans_decades(values: Sequence[float]) -> bool:
    positive = [v for v in values if v > 0 and not math.isnan(v)]
    return bool(positive) and max(positive) / min(positive) > 100


def _dodge(xs: Sequence[float], i: int, series: int, n: int, log_x: bool) -> float:
    """x of series ``series`` of ``n`` at point ``i``: spread by 1.5 % of the axis each."""
    if n == 1:
        return xs[i]
    step = 0.015 * (series - (n - 1) / 2)
    if log_x:
        return float(xs[i] * (max(xs) / min(xs)) ** step)
    span = (max(xs) - min(xs)) or 1
    return xs[i] + span * step


def build_figure(table: PlotTable, *, heatmap: bool, context: PlotContext | None = None) -> Any:
    """A heat map (``by`` on the y axis) or a line plot (one line per ``by`` value)."""
    from rcukit.scenarios.figures import require_matplotlib

    plt = require_matplotlib()
    from matplotlib.ticker import NullLocator

    scenario = context.scenario if context else "compare"
    fig, ax = plt.subplots(figsize=(9, 6.5), layout="constrained")
    ylabel = figure_label(table.figure, scenario)
    if heatmap:
        grid = table.means()
        flat = [v for row in grid for v in row]
        norm = _norm(flat)
        im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis", norm=norm)
        scale = type(norm).__name__
        fig.colorbar(im, ax=ax, label=ylabel + {"LogNorm": " (log scale)",
                                                "SymLogNorm": " (symmetric log scale)"}
                     .get(scale, ""))
        ax.set_xticks(range(len(table.x_values)), [_label(v) for v in table.x_values])
        ax.set_yticks(range(len(table.by_values)), [_label(v) for v in table.by_values])
        ax.set_ylabel(param_label(str(table.by), scenario))
        if len(table.x_values) <= ANNOTATE_MAX and len(table.by_values) <= ANNOTATE_MAX:
            for yi, values in enumerate(grid):
                for xi, v in enumerate(values):
                    if not math.isnan(v):
                        # Dark text on the bright end of viridis, light on the dark end.
                        shade = float(norm(v)) if norm.vmax != norm.vmin else 0.0
                        ax.text(xi, yi, cell_text(v, table.figure), ha="center",
                                va="center", fontsize=8,
                                color="black" if shade > 0.5 else "white")
    else:
        numeric_x = all(_is_number(v) for v in table.x_values)
        xs = list(table.x_values) if numeric_x else list(range(len(table.x_values)))
        log_x = numeric_x and min(xs) > 0 and _spans_decades([float(v) for v in xs])
        nb = len(table.cells)
        for bi, row in enumerate(table.cells):
            # Series side by side around each x, so equal values do not hide each other.
            pts = [(_dodge(xs, i, bi, nb, log_x), c) for i, c in enumerate(row) if c is not None]
            label = _label(table.by_values[bi]) if table.by else None
            means = [c.mean for _, c in pts]
            err = [[c.mean - c.low for _, c in pts], [c.high - c.mean for _, c in pts]]
            ax.errorbar([p for p, _ in pts], means, yerr=err, capsize=3, label=label,
                        marker=_MARKERS[bi % len(_MARKERS)],
                        linestyle=_DASHES[bi % len(_DASHES)], markersize=6)
        if log_x:
            ax.set_xscale("log")
        if not numeric_x or len(xs) <= 12:
            ax.set_xticks(xs, [_label(v) for v in table.x_values])
            ax.xaxis.set_minor_locator(NullLocator())
        lows = [c.low for row in table.cells for c in row if c]
        if _spans_decades(lows + [c.high for row in table.cells for c in row if c]):
            ax.set_yscale("symlog" if min(lows) <= 0 else "log",
                          **({"linthresh": 1} if min(lows) <= 0 else {}))
            ylabel += " (log scale)"
        ax.set_ylabel(ylabel)
        if table.by:
            ax.legend(title=param_label(table.by, scenario), fontsize=8, title_fontsize=8)
        ax.grid(True, alpha=0.3)
    ax.set_xlabel(param_label(table.x, scenario))
    ax.set_title(_title(table, context) + ("" if heatmap else "\nbars: min..max over seeds"),
                 fontsize=9)
    return fig


def plot_table(
    table: PlotTable, out: str | Path, *, heatmap: bool, context: PlotContext | None = None
) -> None:
    """Write :func:`build_figure`'s figure to ``out``."""
    from rcukit.scenarios.figures import save_figure

    save_figure(build_figure(table, heatmap=heatmap, context=context), out)


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
    records = list(read_results(results).records)
    table = tabulate(records, x, figure, by=y or lines, where=where)
    plot_table(table, out, heatmap=y is not None, context=plot_context(records, table))
    return table
