"""Compare's results as text: rich tables for a terminal, plain ASCII for a mailing list,
GitHub markdown and CSV. Figures are in :mod:`.figures`, trace files in :mod:`.trace_files`.

One set of columns (header, meaning) feeds every form, so the legend, the markdown and the
tables cannot drift apart.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import textwrap
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console, JustifyMethod
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from rcukit.scenarios.compare import CompareResult
    from rcukit.scenarios.verdict import Judgement

__all__ = [
    "BUILT_IN_ZONE",
    "compare_csv",
    "compare_markdown",
    "compare_plain",
    "print_compare_table",
    "render_table",
    "terminal_width",
]

#: Where the zone came from when nothing changed it: ``scenarios.compare.default_config()``.
BUILT_IN_ZONE = "the built-in machine"

#: The width of a mailing-list post (and of ``--format plain``).
PLAIN_WIDTH = 80

#: The header underline of the narrow tables, in ASCII for ``--format plain``.
_ASCII_HEAD = box.Box("    \n    \n -- \n    \n    \n    \n    \n    \n", ascii=True)


def _us(ns: int) -> str:
    return f"{ns / 1000:.2f}"


#: The two tables' columns: (header, justify, meaning for the legend).
_SAFETY_COLS: tuple[tuple[str, JustifyMethod, str], ...] = (
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
_COST_COLS: tuple[tuple[str, JustifyMethod, str], ...] = (
    ("variant", "left", ""),
    ("build", "left", ""),
    ("GPs", "right", "grace periods completed"),
    ("GP p50 ms", "right", "median grace-period length"),
    ("pending peak", "right", "most objects queued at once"),
    ("pages peak", "right", "most block pages held at once"),
    ("other mt", "right", "in-lock block pages taken from another migratetype's pcp list "
     "(the RFC's loop; no kernel counter shows them) / fragmenting steals from another "
     "migratetype's free lists under krcp->lock (__rmqueue_fallback(), traced as "
     "mm_page_alloc_extfrag)"),
    ("p99.9 us", "right", "kvfree_rcu() call latency, 99.9th percentile, simulated (fallbacks "
     "included)"),
    ("p99.99 us", "right", "the same, 99.99th percentile"),
    ("max us", "right", "the slowest call"),
)


def terminal_width() -> int:
    """The terminal's own width; a pipe or file gets ``$COLUMNS`` or 100 columns."""
    if sys.stdout.isatty():
        return max(40, shutil.get_terminal_size().columns)
    columns = os.environ.get("COLUMNS", "")
    return max(40, int(columns)) if columns.isdigit() else 100


def _zone_size(cfg: Any) -> str:
    size = cfg.mm.zone_pages * cfg.page_size
    if size >= 1 << 30:
        return f"{size / (1 << 30):.2f} GiB"
    return f"{size / (1 << 20):.0f} MiB"


def _titles(result: CompareResult, profile: str, zone_from: str) -> tuple[str, str, str]:
    """(safety title, cost title, the machine line both share)."""
    from rcukit.rcu.profiles import get_profile

    cfg, wl = result.config, result.workload
    prof = get_profile(profile)
    kernel = f"profile {profile} (page allocator of {prof.mm.kernel})"
    machine = (
        f"{cfg.nr_cpus} CPUs, a {_zone_size(cfg)} zone from {zone_from}; "
        f"{wl.flood_cpus} CPUs flood {wl.objects_per_cpu} objects each; seed {cfg.seed}"
    )
    return f"kvfree_rcu() under krcp->lock, {kernel}", f"What it costs, {kernel}", machine


def _rows(
    result: CompareResult, judged: Judgement, profile: str
) -> Iterator[tuple[tuple[str, ...], str, dict[str, Any]]]:
    """(variants shown as one row, build, row) in table order; identical rows collapsed."""
    for b in (b for b in judged.builds if b.profile == profile):
        merged = {v: g for g in b.identical for v in g}
        for r in result.rows:
            if r["profile"] != profile or r["kernel_config"] != b.kernel_config:
                continue
            group = merged.get(r["variant"], (r["variant"],))
            if group[0] == r["variant"]:  # shown once, on the group's first row
                yield group, b.kernel_config, r


def _legend() -> list[tuple[str, str]]:
    return [(name, meaning) for name, _, meaning in (*_SAFETY_COLS, *_COST_COLS) if meaning]


def _wrapped(line: str, width: int) -> str:
    """A verdict line folded to ``width`` with its continuation lines indented under it."""
    indent = line[: len(line) - len(line.lstrip())]
    return textwrap.fill(line.strip(), width, initial_indent=indent,
                         subsequent_indent=indent + "  ", break_on_hyphens=False)


def _table(caption: str | None, cols: tuple[tuple[str, JustifyMethod, str], ...],
           narrow: bool, ascii_only: bool) -> Table:
    if narrow:
        # No rules between columns and no build column (each build is a section of rows):
        # eleven columns in 80.
        t = Table(caption=caption, header_style="bold", caption_justify="left",
                  box=_ASCII_HEAD if ascii_only else box.SIMPLE_HEAD,
                  show_edge=False, padding=(0, 0), pad_edge=False, safe_box=ascii_only)
        cols = tuple(c for c in cols if c[0] != "build")
    else:
        t = Table(caption=caption, header_style="bold", caption_justify="left")
    for name, justify, _ in cols:
        header = name.replace(" ", "\n", 1) if narrow else name
        t.add_column(header, justify=justify, overflow="fold", no_wrap=name == "variant")
    return t


def _fill(result: CompareResult, judged: Judgement, profile: str, safety: Table, cost: Table,
          *, narrow: bool, markup: bool) -> None:
    last = None
    for group, build, r in _rows(result, judged, profile):
        name = "\n= ".join(group)
        if narrow:
            if build != last:
                for t in (safety, cost):
                    t.add_row(Text(f"[{build}]", style="bold" if markup else ""),
                              end_section=False)
                last = build
            safety.add_row(name, *_safety_cells(r, markup))
            cost.add_row(name, *_cost_cells(r))
        else:
            if last is not None and build != last:
                safety.add_section()
                cost.add_section()
            last = build
            safety.add_row(name, build, *_safety_cells(r, markup))
            cost.add_row(name, build, *_cost_cells(r))


def _wide_fits(console: Console, table: Table) -> bool:
    # Measured without the console's limit: rich clamps a measurement to the width it has.
    natural = Measurement.get(console, console.options.update_width(10_000), table)
    return natural.maximum <= console.width


def print_compare_table(
    result: CompareResult,
    console: Console | None = None,
    *,
    zone_from: str = BUILT_IN_ZONE,
    ascii_only: bool = False,
) -> None:
    """Per profile (its title names the kernel and the machine, the zone's source included) a
    safety table and a cost table, identical rows collapsed into one (their variants joined by
    ``=``), a legend, then the verdict.

    The tables are boxed, one row per variant and build, where the console is wide enough
    (about 110 columns); narrower, each build is a section of rows and the columns lose their
    rules, which reads at 80 columns. ``ascii_only`` is the mailing-list form: no box-drawing
    characters and no colour.
    """
    from rcukit.rcu.profiles import get_profile
    from rcukit.scenarios.verdict import judge

    console = console or Console(width=terminal_width())
    judged = judge(result.rows)
    for profile in result.profiles:
        s_title, c_title, machine = _titles(result, profile, zone_from)
        caption = get_profile(profile).description
        tables: tuple[Table, Table] | None = None
        for narrow in (False, True):
            if narrow or not ascii_only:
                safety = _table(caption, _SAFETY_COLS, narrow, ascii_only)
                cost = _table(None, _COST_COLS, narrow, ascii_only)
                _fill(result, judged, profile, safety, cost, narrow=narrow,
                      markup=not ascii_only)
                tables = safety, cost
                if narrow or _wide_fits(console, safety):
                    break
        assert tables is not None
        for title, table in zip((s_title, c_title), tables, strict=True):
            console.print(Text(title, style="" if ascii_only else "bold"))
            console.print(Text(textwrap.fill(machine, console.width, break_on_hyphens=False)))
            console.print(table)
            console.print()
    width = console.width
    for name, meaning in _legend():
        console.print(Text(textwrap.fill(f"{name}: {meaning}", width, subsequent_indent="    ",
                                         break_on_hyphens=False),
                           style="" if ascii_only else "dim"))
    console.print()
    console.print(Text("Verdict", style="" if ascii_only else "bold"))
    for line in judged.lines():
        console.print(Text(_wrapped(f"  {line}", width)), soft_wrap=True)


def compare_plain(result: CompareResult, *, zone_from: str = BUILT_IN_ZONE) -> str:
    """The tables, legend and verdict for a mailing-list post: ASCII, at most 80 columns."""
    out = io.StringIO()
    console = Console(file=out, width=PLAIN_WIDTH, color_system=None, force_terminal=False,
                      highlight=False, emoji=False, markup=False, legacy_windows=False)
    print_compare_table(result, console, zone_from=zone_from, ascii_only=True)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines()) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def compare_markdown(result: CompareResult, *, zone_from: str = BUILT_IN_ZONE) -> str:
    """GitHub-flavoured markdown: per profile a heading, the machine, both tables; then the
    legend and the verdict as lists."""
    from rcukit.rcu.profiles import get_profile
    from rcukit.scenarios.verdict import judge

    judged = judge(result.rows)
    lines: list[str] = []
    for profile in result.profiles:
        s_title, c_title, machine = _titles(result, profile, zone_from)
        for title, cols, cells in (
            (s_title, _SAFETY_COLS, lambda r: _safety_cells(r, False)),
            (c_title, _COST_COLS, _cost_cells),
        ):
            lines += [f"### {_md(title)}", "", f"{_md(machine)}.", ""]
            if cols is _SAFETY_COLS:
                lines += [f"*{_md(get_profile(profile).description)}*", ""]
            lines.append("| " + " | ".join(name for name, _, _ in cols) + " |")
            lines.append(
                "|" + "|".join("---:" if j == "right" else "---" for _, j, _ in cols) + "|"
            )
            for group, build, r in _rows(result, judged, profile):
                row = [" = ".join(group), build, *cells(r)]
                lines.append("| " + " | ".join(_md(c) for c in row) + " |")
            lines.append("")
    lines += ["**Legend**", ""]
    lines += [f"- **{_md(name)}**: {_md(meaning)}" for name, meaning in _legend()]
    lines += ["", "**Verdict**", ""]
    for line in judged.lines():
        depth = (len(line) - len(line.lstrip())) // 2
        lines.append("  " * depth + "- " + _md(line.strip()))
    return "\n".join(lines) + "\n"


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> None:
    # Fixed-key tables (splats, latency_ns) become columns; histograms and lists stay JSON.
    if isinstance(value, dict) and value and all(
        isinstance(k, str) and k.isidentifier() for k in value
    ):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else k, v, out)
    elif isinstance(value, (dict, list)):
        out[prefix] = json.dumps(value, sort_keys=True)
    else:
        out[prefix] = value


def compare_csv(result: CompareResult) -> str:
    """One line per row (profile, variant, build) with every key ``--json`` gives a row;
    nested tables as dotted columns (``latency_ns.p999``), histograms and lists as JSON."""
    rows = []
    for r in result.to_json()["rows"]:
        flat: dict[str, Any] = {}
        _flat("", r, flat)
        rows.append(flat)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _safety_cells(r: dict[str, Any], markup: bool = True) -> list[str]:
    s = r["splats"]

    def red(n: int) -> str:
        return f"[bold red]{n}[/]" if n and markup else str(n)

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
        f"{r.get('block_pages_other_mt_pcp', 0)}/{r.get('block_alloc_extfrag', 0)}",
        _us(lat["p999"]), _us(lat["p9999"]), _us(lat["max"]),
    ]


def render_table(
    fmt: str,
    title: str,
    columns: tuple[tuple[str, JustifyMethod], ...],
    rows: list[list[str]],
    notes: Sequence[str] = (),
    console: Console | None = None,
) -> str | None:
    """A small table (``rcukit locks``) in one of the ``--format`` forms.

    ``columns`` are (header, justify); ``notes`` follow the table (legend, summary). ``text``
    prints to ``console`` (the terminal's width) and returns None; the other forms return the
    text to print.
    """
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([name for name, _ in columns])
        writer.writerows(rows)
        return out.getvalue()
    if fmt == "markdown":
        lines = [f"### {_md(title)}", ""]
        lines.append("| " + " | ".join(_md(name) for name, _ in columns) + " |")
        lines.append("|" + "|".join("---:" if j == "right" else "---" for _, j in columns) + "|")
        lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
        lines += ["", *(f"- {_md(n)}" for n in notes)] if notes else []
        return "\n".join(lines) + "\n"
    ascii_only = fmt == "plain"
    buf = io.StringIO() if ascii_only else None
    if buf is not None:
        console = Console(file=buf, width=PLAIN_WIDTH, color_system=None, force_terminal=False,
                          highlight=False, emoji=False, markup=False, legacy_windows=False)
    console = console or Console(width=terminal_width())
    table = Table(header_style="" if ascii_only else "bold", safe_box=ascii_only,
                  box=_ASCII_HEAD if ascii_only else box.SIMPLE_HEAD, show_edge=False)
    for name, justify in columns:
        table.add_column(name, justify=justify)
    for row in rows:
        table.add_row(*row)
    console.print(Text(title, style="" if ascii_only else "bold"))
    console.print(table)
    if notes:
        console.print()
    for note in notes:
        console.print(Text(textwrap.fill(note, console.width, subsequent_indent="    ",
                                         break_on_hyphens=False)))
    if buf is None:
        return None
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"
