"""``rcukit-run``: run an ``rcukit`` command while the docs build and show what it printed.

In a Markdown page::

    ```{rcukit-run} compare --scale 0.02 --variants fast-try,nolock
    ```

runs ``python -m rcukit compare --scale 0.02 --variants fast-try,nolock`` with the checkout's
``rcukit`` first on the path and puts ``$ rcukit compare ...`` and its output (stdout and stderr,
as a terminal shows them) in a literal block. A page's commands run in order in one scratch
directory of their own, so a later command reads what an earlier one wrote and nothing lands in
the checkout.

Options:

``:returncode: N``
    the exit status the command must end with (default 0); any other is a build error, so a
    command that breaks breaks the docs build.
``:files: PATH[,PATH]``
    files of the checkout (relative to its root) copied into the scratch directory before the
    command runs, so the command names them as a user would and prints no checkout path.
``:pythonpath: DIR[,DIR]``
    folders of the checkout put first on ``PYTHONPATH`` (shown as ``PYTHONPATH=...`` before the
    command), e.g. ``examples`` for a ``--plugin`` that lives there.
``:python:``
    run ``python ARGS`` instead of ``python -m rcukit ARGS`` (shown as ``$ python ARGS``).
``:show-file: NAME`` and ``:head: N``
    after the output, the first ``N`` lines (default 20) of a file the command wrote, shown as
    ``$ head -n N NAME`` shows them; the file must exist.

Output is made at a fixed width (``rcukit_run_columns``) and without colour, so a page is the
same from build to build; a command that takes longer than ``rcukit_run_timeout`` seconds is a
build error. A page with a command is read again on every build, incremental ones included:
the code it runs may have changed even when the page has not.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util.docutils import SphinxDirective

ROOT = Path(__file__).resolve().parents[2]


def _scratch(app: Sphinx, docname: str) -> Path:
    """The page's scratch directory: made on the first command of the page in this build."""
    dirs: dict[str, tempfile.TemporaryDirectory[str]] = app.__dict__.setdefault(
        "_rcukit_run_dirs", {}
    )
    if docname not in dirs:
        dirs[docname] = tempfile.TemporaryDirectory(prefix="rcukit-docs-")
    return Path(dirs[docname].name)


def _pages_with_commands(env: BuildEnvironment) -> set[str]:
    pages: set[str] = env.__dict__.setdefault("rcukit_run_pages", set())
    return pages


def _always_outdated(
    app: Sphinx, env: BuildEnvironment, added: set[str], changed: set[str], removed: set[str]
) -> list[str]:
    return sorted(_pages_with_commands(env) - removed)


def _purge(app: Sphinx, env: BuildEnvironment, docname: str) -> None:
    _pages_with_commands(env).discard(docname)


def _cleanup(app: Sphinx, exception: BaseException | None) -> None:
    for tmp in app.__dict__.pop("_rcukit_run_dirs", {}).values():
        tmp.cleanup()


class RcukitRun(SphinxDirective):
    """Run an ``rcukit`` command at build time; show the command and its output."""

    has_content = False
    required_arguments = 1
    final_argument_whitespace = True
    option_spec: ClassVar[dict[str, Any]] = {
        "returncode": directives.nonnegative_int,
        "files": directives.unchanged_required,
        "pythonpath": directives.unchanged_required,
        "python": directives.flag,
        "show-file": directives.unchanged_required,
        "head": directives.positive_int,
    }

    def run(self) -> list[nodes.Node]:
        config = self.env.config
        _pages_with_commands(self.env).add(self.env.docname)
        args = shlex.split(self.arguments[0])
        shown = self.arguments[0]
        extra = [p for p in self.options.get("pythonpath", "").split(",") if p]
        env = dict(os.environ)
        env.pop("FORCE_COLOR", None)
        env.update(
            COLUMNS=str(config.rcukit_run_columns),
            LINES="50",
            NO_COLOR="1",
            TERM="dumb",
            PYTHONPATH=os.pathsep.join(
                [str(ROOT / p) for p in extra] + [str(ROOT)] + [env.get("PYTHONPATH", "")]
            ).rstrip(os.pathsep),
        )
        if "python" in self.options:
            cmd = [sys.executable, *args]
            prompt = f"$ python {shown}"
        else:
            cmd = [sys.executable, "-m", "rcukit", *args]
            prompt = f"$ rcukit {shown}"
        if extra:
            prompt = f"$ PYTHONPATH={os.pathsep.join(extra)} {prompt[2:]}"
        cwd = _scratch(self.env.app, self.env.docname)
        for name in (p for p in self.options.get("files", "").split(",") if p):
            source = ROOT / name
            if not source.is_file():
                raise self.error(f"no file {name} in the checkout")
            shutil.copyfile(source, cwd / source.name)
            self.env.note_dependency(str(source))
        try:
            proc = subprocess.run(
                cmd,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=config.rcukit_run_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise self.error(
                f"`{prompt[2:]}` ran longer than {config.rcukit_run_timeout} s"
            ) from None
        expected = self.options.get("returncode", 0)
        if proc.returncode != expected:
            raise self.error(
                f"`{prompt[2:]}` exited {proc.returncode}, expected {expected}:\n{proc.stdout}"
            )
        text = f"{prompt}\n{proc.stdout.rstrip()}"
        if "show-file" in self.options:
            text += "\n" + self._head(cwd / self.options["show-file"])
        block = nodes.literal_block(text, text, language="text")
        block["classes"].append("rcukit-run")
        self.set_source_info(block)
        return [block]

    def _head(self, path: Path) -> str:
        n = self.options.get("head", 20)
        if not path.is_file():
            raise self.error(f"the command wrote no {path.name}")
        with path.open() as f:
            lines = [line.rstrip("\n") for _, line in zip(range(n), f, strict=False)]
        return "\n".join([f"$ head -n {n} {path.name}", *lines])


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("rcukit_run_columns", 100, "env", int)
    app.add_config_value("rcukit_run_timeout", 120, "env", int)
    app.add_directive("rcukit-run", RcukitRun)
    app.connect("env-get-outdated", _always_outdated)
    app.connect("env-purge-doc", _purge)
    app.connect("build-finished", _cleanup)
    return {"version": "1", "parallel_read_safe": False, "parallel_write_safe": True}
