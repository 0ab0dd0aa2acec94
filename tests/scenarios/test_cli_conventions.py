"""Terminal conventions of the ``rcukit`` command: ``--format`` (text at 80 and 120 columns,
plain, markdown, csv, json), the JSON schema field, help without reStructuredText, "did you
mean" for unknown names, ``--zoneinfo FILE``, the ``locks`` table and ``__version__``."""

from __future__ import annotations

import csv
import importlib.metadata
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from clitools import run_cli
from rich.console import Console
from simtools import FIXTURES, ROOT

import rcukit
import rcukit.mm.zoneinfo as zoneinfo_mod
from rcukit.cli import SUBCOMMANDS, build_parser
from rcukit.cli.options import JSON_SCHEMA, plain_help
from rcukit.config import KernelConfig
from rcukit.errors import ConfigError, did_you_mean
from rcukit.scenarios import compare as cmp
from rcukit.scenarios import sweep as sw
from rcukit.scenarios.output import (
    compare_csv,
    compare_markdown,
    compare_plain,
    print_compare_table,
)
from rcukit.scenarios.verdict import judge

ZONEINFO = FIXTURES / "zoneinfo.txt"
#: Two variants whose rows differ and one that equals another (a collapsed row), two builds.
SMALL = ["--variants", "nowait,gfp-zero,page-cache", "--configs", "lockdep,rt",
         "--scale", "0.01"]
BOX_DRAWING = {chr(c) for c in range(0x2500, 0x2580)}


@pytest.fixture(scope="module")
def result() -> cmp.CompareResult:
    return cmp.run_compare(
        cmp.default_config(), cmp.Workload().scaled(0.01), ["nowait", "gfp-zero", "page-cache"],
        ["lockdep", "rt"],
    )


@pytest.fixture(scope="module")
def json_doc() -> dict[str, Any]:
    rc, out, err = run_cli(["compare", "--json", *SMALL])
    assert rc == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


def _render(result: cmp.CompareResult, width: int) -> str:
    out = io.StringIO()
    print_compare_table(result, Console(file=out, width=width, force_terminal=False))
    return out.getvalue()


# -- --format ----------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [80, 120])
def test_text_table_fits_the_terminal_without_cutting_a_cell(
    result: cmp.CompareResult, width: int
) -> None:
    text = _render(result, width)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    assert "…" not in text  # no cell or header truncated
    for variant in ("nowait", "page-cache", "gfp-zero"):
        assert variant in text
    if width == 80:  # narrow: each build a section of rows, no build column
        assert "[lockdep]" in text and "[rt]" in text
    else:  # wide: boxed, one row per variant and build
        assert any(line.startswith("┃ variant") and "build" in line for line in lines)
    # every abbreviation in a header is defined in the legend
    for word in ("IWC: lockdep's", "SIC: \"BUG: sleeping function", "SWA: \"BUG: scheduling",
                 "in-lock allocs: the variant's", "p99.9 us: kvfree_rcu() call latency"):
        assert word in text, word


def test_plain_is_ascii_within_80_columns(result: cmp.CompareResult) -> None:
    text = compare_plain(result)
    assert text.isascii() and not BOX_DRAWING & set(text)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "from the built-in machine" in text and "Verdict" in text
    assert "[lockdep]" in text and "-" * 40 in text  # build sections, an ASCII header rule


def test_markdown_is_github_tables_one_line_per_row(result: cmp.CompareResult) -> None:
    text = compare_markdown(result)
    tables: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.startswith("|"):
            tables[-1].append(line)
        elif tables[-1]:
            tables.append([])
    tables = [t for t in tables if t]
    assert len(tables) == 2  # safety and cost, one profile
    # identical rows are one line, their variants joined by " = "
    identical = [g for b in judge(result.rows).builds for g in b.identical]
    shown = len(result.rows) - sum(len(g) - 1 for g in identical)
    for t in tables:
        cells = [line.count("|") for line in t]
        assert len(set(cells)) == 1  # header, separator and rows have as many columns
        assert set(t[1]) <= set("|-:")
        assert len(t) - 2 == shown
    for g in identical:
        assert f"| {' = '.join(g)} |" in text
    assert "- **IWC**: lockdep's" in text and "**Verdict**" in text


def test_csv_has_one_line_per_row_with_every_json_key(
    result: cmp.CompareResult, json_doc: dict[str, Any]
) -> None:
    rows = list(csv.DictReader(io.StringIO(compare_csv(result))))
    assert len(rows) == len(json_doc["rows"]) == 6
    for line, row in zip(rows, json_doc["rows"], strict=True):
        for key, value in row.items():
            if isinstance(value, dict) and key != "records_per_block":
                for sub, v in value.items():
                    assert line[f"{key}.{sub}"] == str(v), (key, sub)
            elif isinstance(value, (dict, list)):
                assert json.loads(line[key]) == value
            else:
                assert line[key] == str(value), key


def test_every_format_from_the_command_line(json_doc: dict[str, Any]) -> None:
    outs = {}
    for fmt in ("text", "plain", "markdown", "csv", "json"):
        rc, out, err = run_cli(["compare", "--format", fmt, *SMALL])
        assert rc == 0, err
        outs[fmt] = out
    assert json.loads(outs["json"]) == json_doc  # --json is --format json
    assert len(list(csv.DictReader(io.StringIO(outs["csv"])))) == len(json_doc["rows"])
    assert outs["markdown"].startswith("### kvfree_rcu() under krcp->lock")
    assert outs["plain"].isascii()
    assert "Verdict" in outs["text"]


def test_json_and_another_format_is_exit_2() -> None:
    rc, out, err = run_cli(["compare", "--json", "--format", "csv", *SMALL])
    assert rc == 2 and out == ""
    assert "--json and --format csv both given" in err


# -- "schema" in every JSON document -----------------------------------------------------------


def test_compare_json_has_the_schema(json_doc: dict[str, Any]) -> None:
    assert json_doc["schema"] == JSON_SCHEMA == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["locks", "--json", "--cpus", "2"],
        ["locks", "--format", "json", "--cpus", "2"],
        ["rcuscale", "--json", "--kfree-loops", "2", "--kfree-alloc-num", "100"],
        ["torture", "--json", "--duration", "0.05"],
    ],
)
def test_every_json_document_has_the_schema(argv: list[str]) -> None:
    rc, out, err = run_cli(argv)
    assert rc == 0, err
    assert json.loads(out)["schema"] == JSON_SCHEMA


def test_sweep_json_summary_has_the_schema(tmp_path: Path) -> None:
    spec = tmp_path / "s.toml"
    spec.write_text('scenario = "compare"\nseeds = [1]\n[grid]\nvariant = ["nowait"]\n'
                    "[fixed]\nobjects_per_cpu = 50\n")
    out_file = tmp_path / "r.jsonl"
    rc, out, err = run_cli(["sweep", str(spec), "--out", str(out_file), "--inline", "--json"])
    assert rc == 0, err
    assert json.loads(out) == {"schema": JSON_SCHEMA, "ran": 1, "skipped": 0, "total": 1,
                               "sweep_file": str(spec), "out": str(out_file)}


# -- help --------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [m.__name__.rpartition(".")[2] for m in SUBCOMMANDS])
def test_help_has_no_rst_markup_and_cites_no_file_users_lack(command: str) -> None:
    rc, out, _ = run_cli([command, "--help"])
    assert rc == 0
    assert out.startswith(f"Usage: rcukit {command}")
    for markup in ("``", ":mod:", ":class:", ":func:", ":meth:", "kernel.md"):
        assert markup not in out, (command, markup)


def test_every_help_string_is_plain() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a.choices, dict))
    assert isinstance(sub.choices, dict)
    for p in sub.choices.values():
        for text in (p.description, *(a.help for a in p._actions)):
            assert text is None or ("``" not in text and "kernel.md" not in text), text


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("``flood_cpus`` CPUs flood ``kvfree_rcu()``", "flood_cpus CPUs flood kvfree_rcu()"),
        ("a zone (kernel.md 3.3 and 3.4) of 1 GiB", "a zone of 1 GiB"),
        ("The test (kernel.md section 5; ``kernel/rcu/rcuscale.c``): x",
         "The test (kernel/rcu/rcuscale.c): x"),
        ("see :mod:`rcukit.rcu.kvfree.runs` and :meth:`~a.Torture.read_delay`",
         "see rcukit.rcu.kvfree.runs and read_delay"),
        ("for *every* object, 2 * 3 * 4", "for every object, 2 * 3 * 4"),
        ("the cookie (kernel.md §6); then", "the cookie; then"),
    ],
)
def test_plain_help(text: str, plain: str) -> None:
    assert plain_help(text) == plain


# -- did you mean ------------------------------------------------------------------------------


def test_did_you_mean() -> None:
    assert did_you_mean("nowiat", ["nowait", "nolock"]) == " (did you mean 'nowait'?)"
    assert did_you_mean("zzzz", ["nowait", "nolock"]) == ""
    assert did_you_mean(3, ["nowait"]) == ""


PLUGIN = "rcukit_conventions_plugin"


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / f"{PLUGIN}.py").write_text(
        "from rcukit.rcu.kvfree.variants import PageCacheSource\n"
        "class Mempool(PageCacheSource):\n    name = 'mempool-test'\n"
        "MEMPOOL = Mempool()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, PLUGIN, raising=False)
    return PLUGIN


def _toml(tmp_path: Path, text: str) -> str:
    f = tmp_path / "c.toml"
    f.write_text(text)
    return str(f)


@pytest.mark.parametrize(
    ("argv", "suggestion"),
    [
        (["compare", "--variants", "nowiat"], "'nowait'"),
        (["compare", "--configs", "lockdpe"], "'lockdep'"),
        (["compare", "--profile", "v6.11"], "'v6.1'"),
        (["compare", "--profiles", "rfc,v5.99"], "'v5.9'"),
        (["rcuscale", "--variant", "page-cahce"], "'page-cache'"),
        (["torture", "--variant", "fast-tyr"], "'fast-try'"),
        (["rcuscale", "--profile", "v6.15x"], "'v6.15'"),
    ],
)
def test_unknown_names_suggest_the_close_one(argv: list[str], suggestion: str) -> None:
    rc, out, err = run_cli(argv)
    assert rc == 2 and out == "" and "Traceback" not in err
    assert f"(did you mean {suggestion}?)" in err, err
    assert "allowed" in err or "known" in err  # the whole list is still given


def test_plugin_attribute_typo_suggests_the_name(plugin_module: str) -> None:
    rc, _, err = run_cli(["compare", "--plugin", f"{plugin_module}:MEMPOL"])
    assert rc == 2 and "(did you mean 'MEMPOOL'?)" in err, err


@pytest.mark.parametrize(
    ("text", "suggestion"),
    [
        ("[mm]\npcp_bacth = 31\n", "'pcp_batch'"),
        ("nr_cpu = 2\n", "'nr_cpus'"),
        ("[compare]\nvariant = ['nowait']\n", "'variants'"),
        ("[kvfree]\nprofile = 'rfcc'\n", "'rfc'"),
    ],
)
def test_toml_key_typos_suggest_the_key(tmp_path: Path, text: str, suggestion: str) -> None:
    rc, _, err = run_cli(["compare", "--config", _toml(tmp_path, text), "--scale", "0.01"])
    assert rc == 2 and f"(did you mean {suggestion}?)" in err, err


def test_kernel_config_typos_suggest_the_build_and_field() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'lockdep'\?"):
        KernelConfig().with_kernel_config("lockdpe")
    with pytest.raises(ConfigError, match=r"did you mean 'nr_cpus'\?"):
        KernelConfig().replace(nr_cpu=2)


@pytest.mark.parametrize(
    ("text", "suggestion"),
    [
        ('scenario = "compare"\nseed = [1]\n[grid]\nvariant = ["nowait"]\n', "'seeds'"),
        ('scenario = "compre"\nseeds = [1]\n[grid]\nvariant = ["nowait"]\n', "'compare'"),
        ('scenario = "compare"\nseeds = [1]\n[grid]\nvariant = ["nowiat"]\n', "'nowait'"),
        ('scenario = "compare"\nseeds = [1]\n[grid]\n"mm.pcp_bacth" = [1, 2]\n',
         "'mm.pcp_batch'"),
    ],
)
def test_sweep_key_typos_suggest_the_key(tmp_path: Path, text: str, suggestion: str) -> None:
    f = tmp_path / "s.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=rf"did you mean {suggestion}\?"):
        sw.load_spec(f)
    rc, _, err = run_cli(["sweep", str(f), "--out", str(tmp_path / "r.jsonl")])
    assert rc == 2 and f"(did you mean {suggestion}?)" in err and "Traceback" not in err


# -- --zoneinfo FILE ---------------------------------------------------------------------------


def test_zoneinfo_file_sizes_the_zone_and_the_title_names_it() -> None:
    zone = zoneinfo_mod.largest_zone(
        zoneinfo_mod.parse_zoneinfo(ZONEINFO.read_text(encoding="utf-8"))
    )
    rc, out, err = run_cli(["compare", "--json", "--zoneinfo", str(ZONEINFO), *SMALL])
    assert rc == 0, err
    assert json.loads(out)["config"]["mm"]["zone_pages"] == zone.managed == 772_917
    rc, out, err = run_cli(["compare", "--format", "plain", "--zoneinfo", str(ZONEINFO), *SMALL])
    assert rc == 0, err
    # 772,917 pages of 4 KiB
    assert f"a 2.95 GiB zone from {ZONEINFO}" in " ".join(out.split())


def test_title_says_where_the_zone_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    rc, out, _ = run_cli(["compare", "--format", "plain", *SMALL])
    assert rc == 0 and "a 1.00 GiB zone from the built-in machine" in " ".join(out.split())
    if not Path("/proc/zoneinfo").exists():  # non-Linux: the fixture stands in for the host's
        text = ZONEINFO.read_text(encoding="utf-8")
        monkeypatch.setattr(zoneinfo_mod, "read_host_zoneinfo",
                            lambda *_: zoneinfo_mod.parse_zoneinfo(text))
    rc, out, err = run_cli(["compare", "--format", "plain", "--from-host-zoneinfo", *SMALL])
    assert rc == 0, err
    assert "zone from this host's /proc/zoneinfo" in " ".join(out.split())


def test_zoneinfo_of_a_binary_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    binary = Path(sys.executable).resolve()  # a real binary file
    with pytest.raises(ConfigError, match="is not a /proc/zoneinfo text") as exc:
        KernelConfig.from_zoneinfo(binary)
    assert str(binary) in str(exc.value)
    with pytest.raises(ConfigError, match="no 'Node N, zone NAME' header"):
        KernelConfig.from_zoneinfo(ROOT / "README.md")  # text, but not zoneinfo
    rc, out, err = run_cli(["compare", "--zoneinfo", str(binary), *SMALL])
    assert rc == 2 and out == "" and "Traceback" not in err
    assert str(binary) in err


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--zoneinfo", "/nonexistent/zoneinfo"], "cannot read zoneinfo '/nonexistent/zoneinfo'"),
        (["--zoneinfo", str(ZONEINFO), "--from-host-zoneinfo"], "choose one"),
    ],
)
def test_bad_zoneinfo_options_exit_2(extra: list[str], named: str) -> None:
    rc, out, err = run_cli(["compare", *extra, *SMALL])
    assert rc == 2 and out == "" and named in err


# -- rcukit locks ------------------------------------------------------------------------------


def test_locks_is_a_table() -> None:
    rc, out, _ = run_cli(["locks", "--cpus", "2"])
    assert rc == 0
    lines = out.splitlines()
    header = next(line for line in lines if "turns on" in line)
    assert header.split() == ["build", "turns", "on", "IWC", "SIC", "SWA", "stall"]
    lockdep = next(line for line in lines if line.split()[:1] == ["lockdep"])
    assert lockdep.split() == ["lockdep", "PROVE_RAW_LOCK_NESTING", "2", "(1", "printed)",
                               "0", "0", "0"]
    rt = next(line for line in lines if line.split()[:1] == ["rt"])
    assert rt.split() == ["rt", "PREEMPT_RT", "0", "2", "(1", "printed)", "0", "0"]
    assert "IWC: BUG: Invalid wait context" in out


def test_locks_plain_csv_and_markdown() -> None:
    rc, plain, _ = run_cli(["locks", "--cpus", "2", "--format", "plain"])
    assert rc == 0 and plain.isascii()
    assert max(len(line) for line in plain.splitlines()) <= 80
    rc, text, _ = run_cli(["locks", "--cpus", "2", "--format", "csv"])
    rows = {r["build"]: r for r in csv.DictReader(io.StringIO(text))}
    assert rows["lockdep"]["invalid_wait_context"] == "2"
    assert rows["lockdep"]["invalid_wait_context_printed"] == "1"
    assert rows["rt"]["sleeping_in_atomic"] == "2" and rows["default"]["rcu_stall"] == "0"
    rc, md, _ = run_cli(["locks", "--cpus", "2", "--format", "markdown"])
    assert "| lockdep | PROVE_RAW_LOCK_NESTING | 2 (1 printed) | 0 | 0 | 0 |" in md


# -- version -----------------------------------------------------------------------------------


def test_version_is_a_string_from_the_package_metadata() -> None:
    assert isinstance(rcukit.__version__, str)
    assert rcukit.__version__ == importlib.metadata.version("rcukit")
    assert not hasattr(rcukit, "version")  # the stdlib function no longer leaks
    rc, out, _ = run_cli(["--version"])
    assert (rc, out) == (0, f"rcukit {rcukit.__version__}\n")
