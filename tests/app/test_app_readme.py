"""The README's application example runs unchanged under ``asyncio.run`` and ``trio.run``
(issue 16, "Done means")."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from apptools import on_both_loops

ROOT = Path(__file__).resolve().parents[2]


def _example(heading: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split(heading, 1)[1]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m is not None
    return m.group(1)


def _run_example(heading: str, backend: str) -> list[str]:
    """The README's first example under ``heading``, run as written (asyncio) or with its last
    line switched to ``trio.run`` as its comment says; its output lines."""
    code = _example(heading)
    last = "asyncio.run(main())   # or: trio.run(main)"
    assert last in code
    if backend == "trio":
        code = code.replace(last, "import trio\ntrio.run(main)")
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


@on_both_loops
def test_the_readme_example_runs_on_both_loops(backend: str) -> None:
    lines = _run_example("## RCU in an asyncio or Trio application", backend)
    assert lines[:2] == ["safe", "after a GP"] and lines[2].startswith("DomainStatistics(")


@on_both_loops
def test_the_readme_rcudict_example_runs_on_both_loops(backend: str) -> None:
    lines = _run_example("### Tables that change: `RcuDict` and updates that await", backend)
    assert lines[0] == "eth0 2"
    # three awaiting updates raced; each was retried until published: none lost
    assert lines[1] == str(
        sorted(["10.0.0.0/8", "192.168.0.0/16", "172.2.0.0/16", "172.3.0.0/16", "172.4.0.0/16"])
    )
    assert lines[2] == "published"
    # retired: the set's old version, the three updates', the compare_and_set's, the update's
    assert lines[3] == "6"
