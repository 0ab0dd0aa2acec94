"""Every code snippet in ``docs/`` runs (issue 18, item 5: "every code snippet executed in CI").

The pages are Markdown; a fenced block's language says what it is:

* ``python``: run as a script, in a scratch directory of the page, with the checkout's
  ``rcukit`` first on the path. A block whose first line is ``# file: NAME.py`` is also written
  to ``NAME.py`` there before any block of its page runs, so later blocks import it; a
  ``# file: test_*.py`` block is a test file and runs under pytest, from that directory, with
  nothing but the installed rcukit pytest plugin (no ini, no ``trio_mode``). A block written
  for both event loops (it ends with ``asyncio.run(main())   # or: trio.run(main)``, as the
  README's do) runs twice: as written, and with ``trio.run(main)``.
* ``toml``: parsed.

Any other language fails here, so no snippet can slip into the docs without being run. What a
command prints is not a snippet: the pages generate it at build time (``rcukit-run``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
FENCE = re.compile(
    r"^(?P<fence>`{3,})(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.M | re.S
)
FILE = re.compile(r"\A# file: (?P<name>[\w.]+\.py)\n")
BOTH_LOOPS = "asyncio.run(main())   # or: trio.run(main)"
#: Languages the test knows how to check; a MyST directive fence (``{...}``) is not a snippet.
CHECKED = {"python", "toml"}


def _pages() -> list[Path]:
    """The pages Sphinx builds (``conf.py`` leaves out ``_build`` and the figures' folder)."""
    skip = {"_build", "figures"}
    return sorted(p for p in DOCS.rglob("*.md") if not skip & set(p.relative_to(DOCS).parts))


def _blocks(page: Path) -> list[tuple[str, str]]:
    """(language, body) of each fenced code block of ``page``, in order."""
    out = []
    for m in FENCE.finditer(page.read_text()):
        info = m["info"].strip()
        if info.startswith("{"):
            continue
        out.append((info.split()[0] if info else "", m["body"]))
    return out


def _cases() -> list[Any]:
    cases = []
    for page in _pages():
        rel = page.relative_to(DOCS).as_posix()
        for i, (lang, body) in enumerate(_blocks(page)):
            backends = ["asyncio", "trio"] if lang == "python" and BOTH_LOOPS in body else [""]
            for backend in backends:
                ident = f"{rel}:{i}" + (f"[{backend}]" if backend else "")
                cases.append(pytest.param(page, i, backend, id=ident))
    return cases


def _env(scratch: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(scratch), str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
    )
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def _run(args: list[str], scratch: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=scratch, env=_env(scratch), capture_output=True,
        text=True, timeout=180, check=False, stdin=subprocess.DEVNULL,
    )


def test_the_docs_have_snippets_of_every_kind() -> None:
    """The collection below is not empty by accident: each kind of snippet is present."""
    bodies = [(lang, b) for p in _pages() for lang, b in _blocks(p)]
    assert sum(lang == "python" for lang, _ in bodies) >= 10
    assert any(BOTH_LOOPS in b for _, b in bodies)
    assert any((m := FILE.match(b)) and m["name"].startswith("test_") for _, b in bodies)
    assert any(lang == "toml" for lang, _ in bodies)


@pytest.mark.parametrize(("page", "index", "backend"), _cases())
def test_snippet_runs(page: Path, index: int, backend: str, tmp_path: Path) -> None:
    blocks = _blocks(page)
    lang, body = blocks[index]
    assert lang in CHECKED, (
        f"{page.relative_to(ROOT)}: a ```{lang or '(no language)'} block; snippets are python "
        "(run) or toml (parsed), and command output comes from the rcukit-run directive"
    )
    if lang == "toml":
        assert tomllib.loads(body)
        return
    for other_lang, other in blocks:
        if other_lang == "python" and (m := FILE.match(other)):
            (tmp_path / m["name"]).write_text(other)
    m = FILE.match(body)
    if m and m["name"].startswith("test_"):
        proc = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", m["name"]], tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert re.search(r"\b\d+ passed\b", proc.stdout), proc.stdout
        return
    if backend == "trio":
        body = body.replace(BOTH_LOOPS, "import trio\ntrio.run(main)")
    script = tmp_path / (m["name"] if m else f"snippet_{index}.py")
    script.write_text(body)
    proc = _run([script.name], tmp_path)
    assert proc.returncode == 0, f"{page.relative_to(ROOT)} block {index}:\n{proc.stderr}"
