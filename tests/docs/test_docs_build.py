"""The documentation site builds with warnings as errors, and has what issue 18 (item 5) asks
for: an API reference generated from the docstrings of ``rcukit``, ``rcukit.sim`` and the
pytest plugin; a page per ``rcukit`` command with its ``--help`` and a real run, made at build
time; the guides. The ``rcukit-run`` directive that makes the command pages fails the build
when a command does not exit as the page says it should.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rcukit.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
GUIDES = ["rfc", "variants", "fidelity", "async", "testing"]


def _sphinx(src: Path, out: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(out / ".doctrees"), str(src), str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
        stdin=subprocess.DEVNULL,
    )


def _text(page: Path) -> str:
    """The page's text, tags dropped and entities decoded (enough to find what it says)."""
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docs-html")
    proc = _sphinx(DOCS, out)
    assert proc.returncode == 0, f"sphinx -W failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def _subcommands() -> list[str]:
    sub = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    )
    return list(sub.choices)


def test_every_command_has_a_page_with_its_help_and_a_real_run(site: Path) -> None:
    commands = _subcommands()
    assert {"compare", "rcuscale", "torture", "sweep", "locks"} <= set(commands)
    index = _text(site / "cli" / "index.html")
    assert "$ rcukit --help" in index
    for name in commands:
        page = site / "cli" / f"{name}.html"
        assert page.is_file(), f"no page for `rcukit {name}`"
        text = _text(page)
        # its --help, as argparse prints it now ...
        assert f"$ rcukit {name} --help" in text
        assert re.search(rf"usage: rcukit {name}\b", text, re.I)  # argparse or rich-argparse
        # ... and at least one run of the command itself
        runs = re.findall(rf"^\$ rcukit {name}(?! --help)\b.*$", text, re.M)
        assert runs, f"`rcukit {name}` page shows no run"


def test_command_pages_show_what_the_command_printed(site: Path) -> None:
    compare = _text(site / "cli" / "compare.html")
    run = compare.split("$ rcukit compare --scale 0.02 --variants fast-try,nowait,nolock", 1)[1]
    assert all(v in run.split("$ rcukit", 1)[0] for v in ("fast-try", "nowait", "nolock"))
    assert "# tracer: nop" in compare  # the --ftrace file's header, read back from the run
    torture = _text(site / "cli" / "torture.html")
    assert "End of test: SUCCESS" in torture and "End of test: FAILURE" in torture
    sweep = _text(site / "cli" / "sweep.html")
    assert "$ rcukit sweep sweep-tiny.toml --out tiny.jsonl --inline --resume" in sweep
    assert '"params": {' in sweep and '"mm.pcp_batch": 7' in sweep  # a results line, read back
    assert str(ROOT) not in sweep  # no checkout path leaks into a page


def test_the_api_reference_comes_from_the_docstrings(site: Path) -> None:
    app = (site / "api" / "app.html").read_text()
    sim = (site / "api" / "sim.html").read_text()
    plugin = (site / "api" / "pytest_plugin.html").read_text()
    import rcukit
    import rcukit.sim

    for name in rcukit.__all__:
        assert f'id="rcukit.{name}"' in app, f"rcukit.{name} is not in the reference"
    documented_in_app = {"ConfigError", "MemoryDebugError", "RcuUsageError", "RcukitError"}
    for name in rcukit.sim.__all__:
        where = app if name in documented_in_app else sim
        prefix = "rcukit" if name in documented_in_app else "rcukit.sim"
        assert f'id="{prefix}.{name}"' in where, f"rcukit.sim.{name} is not in the reference"
    for fixture in ("sim_kernel", "rcu_domain", "asyncio_rcu_domain", "no_splats"):
        assert f'id="rcukit.pytest_plugin.{fixture}"' in plugin
    # a docstring's own words, so the text is generated, not written by hand
    assert "What an" in _text(site / "api" / "app.html")


@pytest.mark.parametrize("guide", GUIDES)
def test_each_guide_is_built_and_linked_from_the_index(site: Path, guide: str) -> None:
    assert (site / "guides" / f"{guide}.html").is_file()
    assert f'href="guides/{guide}.html"' in (site / "index.html").read_text()


def test_the_fidelity_guide_includes_the_readmes_tables(site: Path) -> None:
    text = _text(site / "guides" / "fidelity.html")
    readme = (ROOT / "README.md").read_text()
    for marker in ("profiles", "fidelity"):
        assert f"<!-- docs:{marker}:start -->" in readme
        assert f"<!-- docs:{marker}:end -->" in readme
    assert "alloc_pages_nolock()" in text and "v6.15" in text and "kfree_rcu_monitor" in text


def _tiny_project(tmp_path: Path, directive: str) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "conf.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(DOCS / '_ext')!r})\n"
        "extensions = ['myst_parser', 'rcukit_run']\n"
    )
    (src / "index.md").write_text(f"# Tiny\n\n{directive}\n")
    return src


def test_a_command_that_exits_otherwise_fails_the_build(tmp_path: Path) -> None:
    src = _tiny_project(tmp_path, "```{rcukit-run} compare --variants no-such-variant\n```")
    proc = _sphinx(src, tmp_path / "out")
    assert proc.returncode != 0
    assert "exited 2, expected 0" in proc.stderr
    assert "unknown variant 'no-such-variant'" in proc.stderr


def test_an_expected_exit_status_builds_and_shows_the_output(tmp_path: Path) -> None:
    src = _tiny_project(
        tmp_path, "```{rcukit-run} compare --variants no-such-variant\n:returncode: 2\n```"
    )
    proc = _sphinx(src, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    text = _text(tmp_path / "out" / "index.html")
    assert "$ rcukit compare --variants no-such-variant" in text
    assert "unknown variant 'no-such-variant'" in text
