"""Figures: compare's per-profile figure and the sweep plots, inspected as Figure objects
(titles, axis labels with units, scales, series a greyscale reader can tell apart) and as the
PNG files they write. matplotlib is in the ``test`` extra."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import matplotlib.image
import pytest
from matplotlib.colors import LogNorm, Normalize, SymLogNorm
from matplotlib.figure import Figure

from rcukit.cli import main
from rcukit.config import KernelConfig, MemoryConfig
from rcukit.errors import ConfigError
from rcukit.scenarios import figures as fg
from rcukit.scenarios import sweep as sw
from rcukit.scenarios import sweep_plot as sp
from rcukit.scenarios.compare import CompareResult, Workload, default_config, run_compare

SMALL = Workload().scaled(0.01)
#: Long enough for nowait to meet an empty pcp list under lockdep (the RFC's splat).
SHORT = Workload().scaled(0.25)  # long enough for the lockdep row to show the RFC splat


@pytest.fixture(scope="module")
def rfc() -> CompareResult:
    return run_compare(workload=SHORT, variants=["fast-try", "nowait", "gfp-zero"])


def _texts(fig: Figure) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def _row_axes(fig: Figure, ncfg: int) -> tuple[list[Any], list[Any], list[Any]]:
    axes = fig.axes
    return axes[:ncfg], axes[ncfg:2 * ncfg], axes[2 * ncfg:2 * ncfg + 3]


def test_compare_figure_names_machine_profile_seed_and_labels_every_axis(
    rfc: CompareResult,
) -> None:
    """The title carries what a reader needs to reproduce the run; no axis lacks a label."""
    fig = fg.build_figure(rfc, "rfc")
    title = fig.get_suptitle()
    assert "profile rfc" in title and "seed 0" in title
    assert "4 CPUs, one 1 GiB zone of 262,144 x 4 KiB pages (pcp batch 63, high 378" in title
    assert f"4 CPUs x {SHORT.objects_per_cpu:,} kvfree_rcu() calls" in title
    splats, timelines, pays = _row_axes(fig, 3)
    for ax in [*splats, *timelines, *pays]:
        assert ax.get_xlabel() and ax.get_ylabel(), ax.get_title()
        assert ax.get_title()
    assert [ax.get_title() for ax in splats] == [
        "default build", "CONFIG_PROVE_RAW_LOCK_NESTING", "CONFIG_PREEMPT_RT"]
    assert timelines[0].get_xlabel() == "simulated time (ms)"
    assert "(%" in pays[0].get_ylabel() and "µs" in pays[2].get_ylabel()
    # counts that span orders of magnitude are on log scales
    assert [ax.get_yscale() for ax in splats] == ["log"] * 3
    assert (pays[1].get_yscale(), pays[2].get_yscale()) == ("symlog", "log")
    fig.clf()


def test_compare_figure_splits_splat_kinds_and_marks_what_was_printed(
    rfc: CompareResult,
) -> None:
    """Each report kind is its own bar (the kernel's own words in the key), and the log's
    one-shot/rate-limited count is a separate marker."""
    fig = fg.build_figure(rfc, "rfc")
    splats, _, _ = _row_axes(fig, 3)
    labels = [t.get_text() for t in splats[0].get_legend().get_texts()]
    assert labels[:3] == [f'"{text}" (would report)' for text in fg.SPLAT_LABELS.values()]
    assert "printed in the kernel log" in labels[3]
    for ax, kc in zip(splats, ("default", "lockdep", "rt"), strict=True):
        rows = [r for r in rfc.rows if r["kernel_config"] == kc]
        for kind, style in fg._SPLAT_STYLE.items():
            heights = sorted(p.get_height() for p in ax.patches
                             if p.get_hatch() == style["hatch"])
            assert heights == sorted(r["splats"][kind] for r in rows if r["splats"][kind])
        printed = [ln for ln in ax.lines if ln.get_marker() == "*"]
        want = sorted(r["reports_printed"] for r in rows if r["reports_printed"])
        assert sorted(y for ln in printed for y in ln.get_ydata()) == want
    lockdep = [r for r in rfc.rows if r["kernel_config"] == "lockdep"]
    assert any(r["splats"]["invalid_wait_context"] for r in lockdep)  # the RFC's splat shows
    fig.clf()


def test_compare_timelines_are_steps_and_identical_variants_share_one_labelled_line(
    rfc: CompareResult,
) -> None:
    """Sparse samples are drawn as steps (the count holds until the next sample), and variants
    whose curves coincide share one line that names them all, so none hides under another."""
    fig = fg.build_figure(rfc, "rfc")
    _, timelines, _ = _row_axes(fig, 3)
    for ax, kc in zip(timelines, ("default", "lockdep", "rt"), strict=True):
        groups = fg._timeline_groups([r for r in rfc.rows if r["profile"] == "rfc"],
                                     ["fast-try", "nowait", "gfp-zero"], kc)
        lines = [ln for ln in ax.lines if not ln.get_label().startswith("_")]
        assert [ln.get_label() for ln in lines] == [" = ".join(g[0]) for g in groups]
        assert all(ln.get_drawstyle() == "steps-post" for ln in lines)
        assert len({(ln.get_marker(), ln.get_linestyle()) for ln in lines}) == len(lines)
        shown = sorted(v for g, _ in groups for v in g)
        assert shown == ["fast-try", "gfp-zero", "nowait"]
    fig.clf()
    rows = [{"variant": v, "kernel_config": "rt", "timeline": tl} for v, tl in (
        ("a", [[2_000_000, 5, 1], [1_000_000, 3, 1]]),
        ("b", [[1_000_000, 3, 1], [2_000_000, 5, 1]]),
        ("c", [[1_000_000, 4, 1]]),
        ("d", []))]
    assert fg._timeline_groups(rows, ["a", "b", "c", "d"], "rt") == [
        (["a", "b"], [(1.0, 3), (2.0, 5)]), (["c"], [(1.0, 4)])]


def test_compare_cost_panels_show_fallbacks_and_the_tail_per_build(rfc: CompareResult) -> None:
    """What each variant pays: one bar per (variant, build) of rcu_head fallbacks with the
    build's hatch, synchronize_rcu() fallbacks as diamonds, p99.9 and max per row."""
    fig = fg.build_figure(rfc, "rfc")
    _, _, (fail, fallback, tail) = _row_axes(fig, 3)
    assert len(fail.patches) == len(rfc.rows) == len(fallback.patches)
    hatches = {p.get_hatch() for p in fallback.patches}
    assert hatches == {"", "///", "xxx"}
    assert sorted(p.get_height() for p in fallback.patches) == sorted(
        r["fallback_rcu_head"] for r in rfc.rows)
    p999 = sorted(y for ln in tail.lines if ln.get_markerfacecolor() != "white"
                  and ln.get_linestyle() == "None" for y in ln.get_ydata())
    assert p999 == sorted(r["latency_ns"]["p999"] / 1e3 for r in rfc.rows)
    fig.clf()


def test_write_plot_one_file_per_profile_that_opens(tmp_path: Path) -> None:
    """One profile writes the path asked for; several write PATH-PROFILE.png, each a figure
    with its own profile in the title."""
    result = run_compare(workload=SMALL, variants=["nowait"], configs=["lockdep"],
                         profiles=["rfc", "v6.1"])
    written = fg.write_plot(result, tmp_path / "out.png")
    assert written == [tmp_path / "out-rfc.png", tmp_path / "out-v6.1.png"]
    for path in written:
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 800 and image.shape[1] > 1000
    fig = fg.build_figure(result, "v6.1")
    assert "profile v6.1" in fig.get_suptitle()
    # v6.1 never allocates under krcp->lock: the panel says so instead of drawing nothing
    assert any("no block page is allocated under krcp->lock" in t for t in _texts(fig))
    fig.clf()
    one = attrs.evolve(result, rows=tuple(r for r in result.rows if r["profile"] == "rfc"))
    assert fg.write_plot(one, tmp_path / "single.png") == [tmp_path / "single.png"]
    with pytest.raises(ConfigError, match=r"no rows of profile 'v5\.5'"):
        fg.build_figure(result, "v5.5")


def test_compare_cli_prints_where_per_profile_figures_went(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p.png"
    assert main(["compare", "--variants", "nowait", "--configs", "lockdep", "--scale", "0.01",
                 "--profiles", "rfc,v6.1", "--jobs", "1", "--plot", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"wrote {tmp_path / 'p-rfc.png'}, {tmp_path / 'p-v6.1.png'}" in err
    assert not out.exists()


# --- sweep plots ---------------------------------------------------------------------------


def _leaf_keys(cls: type, prefix: str = "") -> list[str]:
    out = []
    for f in attrs.fields(cls):
        tp = type(getattr(cls(), f.name))
        if attrs.has(tp):
            out.extend(_leaf_keys(tp, f"{prefix}{f.name}."))
        else:
            out.append(prefix + f.name)
    return out


def test_every_sweepable_field_is_documented_so_every_axis_has_a_label() -> None:
    """Axis labels come from the fields' ``#:`` documentation: a field without one would be
    plotted under its raw key."""
    keys = [k for k in _leaf_keys(KernelConfig) if k not in sw.OWNED_FIELDS]
    owners = [sp._field_owner(k, "compare") for k in [*keys, *attrs.fields_dict(Workload)]]
    undocumented = [name for cls, name in owners
                    if cls is None or name not in sp.attribute_docs(cls)]
    assert undocumented == []


@pytest.mark.parametrize(("key", "label"), [
    ("mm.pcp_batch", "pcp batch in pages [mm.pcp_batch]"),
    ("nr_cpus", "Possible CPUs [nr_cpus]"),
    ("cost.pcp_alloc_ns", "One page off a pcp list (rmqueue_pcplist hit) (ns) [cost.pcp_alloc_ns]"),
    ("mm.min_free_kbytes", "vm.min_free_kbytes (KiB) [mm.min_free_kbytes]"),
    ("mm.initial_used_fraction",
     "Fraction of the zone in use by other kernel users at boot (0..1) "
     "[mm.initial_used_fraction]"),
    ("mm.background_allocs_per_ms",
     "Background allocations per CPU per millisecond [mm.background_allocs_per_ms]"),
    ("kvfree.rcu_delay_page_cache_fill_msec",
     "rcutree.rcu_delay_page_cache_fill_msec (ms) [kvfree.rcu_delay_page_cache_fill_msec]"),
    ("think_ns", "Work the caller does per object between calls (simulated ns) [think_ns]"),
    ("variant", "block-page allocator variant [variant]"),
])
def test_param_label_from_documentation_with_units(key: str, label: str) -> None:
    assert sp.param_label(key) == label


def test_attribute_docs_reads_the_comments_above_each_field() -> None:
    docs = sp.attribute_docs(MemoryConfig)
    assert docs["pcp_batch"].startswith("pcp batch in pages; None uses ``zone_batchsize()``")
    assert "watermark_boost_factor" in docs and "validator" not in " ".join(docs)
    # a multi-line comment is joined; the label cuts it at its first clause, outside parentheses
    assert sp.doc_label("Managed pages (default 1 GiB: batch 63). More.") == (
        "Managed pages (default 1 GiB: batch 63)")
    assert sp.doc_label("``rcutree.x``; None takes the default.") == "rcutree.x"


def _records(values: dict[tuple[str, int], float]) -> list[dict[str, Any]]:
    recs = []
    for i, ((v, batch), value) in enumerate(sorted(values.items())):
        for seed in (1, 2):
            recs.append({"point": 2 * i + seed - 1, "seed": seed, "scenario": "compare",
                         "params": {"variant": v, "mm.pcp_batch": batch},
                         "result": {"latency_ns": {"max": value}, "block_alloc_failures": 0}})
    return recs


def _figure(values: dict[tuple[str, int], float], *, heatmap: bool,
            figure: str = "latency_ns.max") -> Figure:
    recs = _records(values)
    by = "variant"
    table = sp.tabulate(recs, "mm.pcp_batch", figure, by=by)
    fig: Figure = sp.build_figure(table, heatmap=heatmap, context=sp.plot_context(recs, table))
    return fig


DWARF = {("nowait", 7): 88.0, ("nowait", 63): 90.0, ("page-cache", 7): 5.8e6,
         ("page-cache", 63): 120.0}


def test_heat_map_log_colour_scale_labels_and_title() -> None:
    """One cell six orders above the rest: a LogNorm, so the others are not one colour."""
    fig = _figure(DWARF, heatmap=True)
    ax, bar = fig.axes
    image = ax.images[0]
    assert isinstance(image.norm, LogNorm)
    assert bar.get_ylabel() == "kvfree_rcu() call time max (simulated ns) (log scale)"
    assert ax.get_xlabel() == "pcp batch in pages [mm.pcp_batch]"
    assert ax.get_ylabel() == "block-page allocator variant [variant]"
    assert sorted(t.get_text() for t in ax.texts) == ["120 ns", "5.8 ms", "88 ns", "90 ns"]
    title = ax.get_title()
    assert "mean of 2 seeds" in title and "seeds 1, 2" in title
    assert "4 CPUs, one 1 GiB zone" in title and "pcp batch/high vary" in title
    assert "profile rfc, variant varies, default build" in title
    fig.clf()
    zero = _figure({**DWARF, ("nowait", 7): 0.0}, heatmap=True)
    assert isinstance(zero.axes[0].images[0].norm, SymLogNorm)
    zero.clf()
    even = _figure({k: 100.0 + i for i, k in enumerate(DWARF)}, heatmap=True)
    norm = even.axes[0].images[0].norm
    assert type(norm) is Normalize and "log" not in even.axes[1].get_ylabel()
    even.clf()


def test_line_plot_series_apart_marked_and_log_scaled() -> None:
    """Equal values (88 ns for both variants) are dodged sideways with distinct markers and
    dashes; a figure spanning decades gets a log y axis."""
    same = {("nowait", 7): 88.0, ("nowait", 63): 88.0, ("page-cache", 7): 88.0,
            ("page-cache", 63): 5.8e6}
    fig = _figure(same, heatmap=False)
    ax = fig.axes[0]
    assert [c.get_label() for c in ax.containers] == ["nowait", "page-cache"]
    lines = [c.lines[0] for c in ax.containers]
    a, b = (list(ln.get_xdata()) for ln in lines)
    assert all(x < y for x, y in zip(a, b, strict=True))  # side by side at each batch
    assert lines[0].get_marker() != lines[1].get_marker()
    assert lines[0].get_linestyle() != lines[1].get_linestyle()
    assert ax.get_yscale() == "log" and ax.get_ylabel().endswith("(log scale)")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["7", "63"]
    assert ax.get_legend().get_title().get_text() == "block-page allocator variant [variant]"
    fig.clf()


def test_sweep_plot_cli_writes_pngs_that_open(tmp_path: Path) -> None:
    res = tmp_path / "r.jsonl"
    res.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in _records(DWARF)))
    for shape, out in (("--y", tmp_path / "heat.png"), ("--lines", tmp_path / "lines.png")):
        assert main(["sweep", "--plot", str(res), "--x", "mm.pcp_batch", shape, "variant",
                     "--figure", "latency_ns.max", "--out-plot", str(out)]) == 0
        image = matplotlib.image.imread(out)
        assert image.shape[:2] == (650, 900)


def test_machine_line_reads_the_config() -> None:
    cfg = default_config().replace(nr_cpus=8, **{"mm.pcp_batch": 31})
    line = fg.machine_line(cfg)
    assert line.startswith("8 CPUs, one 1 GiB zone of 262,144 x 4 KiB pages (pcp batch 31, "
                           "high 186; 96.5 % in use at boot), HZ=1000, seed 0")
    assert fg.machine_line(cfg, ["nr_cpus", "seed"]).startswith("N CPUs (varies), one 1 GiB")
    assert "seed" not in fg.machine_line(cfg, ["seed"])


def test_sweep_plot_of_a_stale_results_file_keeps_its_labels() -> None:
    """A point this rcukit no longer builds (mm.pcp_batch = 0 is out of range) leaves the
    machine out of the title; the figure and its labels are still drawn."""
    recs = [{"point": i, "seed": 1, "scenario": "compare", "params": {"mm.pcp_batch": b},
             "result": {"pending_peak": 10 * (i + 1)}} for i, b in enumerate((0, 31))]
    table = sp.tabulate(recs, "mm.pcp_batch", "pending_peak")
    assert sp.plot_context(recs, table) is None
    fig = sp.build_figure(table, heatmap=False, context=None)
    ax = fig.axes[0]
    assert ax.get_title() == "peak objects queued, mean of 1 seed\nbars: min..max over seeds"
    assert (ax.get_xlabel(), ax.get_ylabel()) == (
        "pcp batch in pages [mm.pcp_batch]", "peak objects queued")
    fig.clf()
