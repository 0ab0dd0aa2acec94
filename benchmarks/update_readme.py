"""Regenerate the performance table of the top-level README from a benchmark run.

    python benchmarks/update_readme.py                 # run the full suite, then write
    python benchmarks/update_readme.py --quick         # a quick run (for trying it out)
    python benchmarks/update_readme.py --from out.json # use `run.py --json` output

The table replaces whatever lies between ``<!-- perf-table:start -->`` and
``<!-- perf-table:end -->``; if the markers are missing, a "## Performance" section holding
them is appended. The text says on what machine and Python the numbers were taken.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import Mode  # noqa: E402
from run import FIGURES, GROUPS, fmt, run_groups, to_json  # noqa: E402

README = HERE.parent / "README.md"
START = "<!-- perf-table:start -->"
END = "<!-- perf-table:end -->"
SECTION = "## Performance"


def render(result: dict[str, Any]) -> str:
    """The Markdown between the markers: the machine, then one row per figure."""
    env = result["env"]
    lines = [
        f"Measured with `python benchmarks/run.py` ({env['mode']} mode, {env['wall_s']:g} s) "
        f"on {env['platform']} ({env['machine']}, {env['cpu_count']} CPUs), "
        f"{env['implementation']} {env['python']}. Every figure is a ratio against a baseline "
        "timed in the same process and run (see benchmarks/README.md); absolute numbers are "
        "for information and vary with the machine.",
        "",
        "| figure | value | target | met | absolute (for information) |",
        "|---|---:|---:|:---:|---|",
    ]
    details: dict[str, Any] = result["details"]
    order = {key: i for i, key in enumerate(FIGURES)}
    previous: dict[str, Any] | None = None
    for key in sorted(details, key=lambda k: (order.get(k, len(order)), k)):
        d = details[key]
        met = {True: "yes", False: "**no**", None: "-"}[d["passed"]]
        # figures of one group share their measurements: list them once
        same = d["absolute"] == previous
        previous = d["absolute"]
        absolute = "(as above)" if same else ", ".join(f"{k} {fmt(v)}" for k, v in previous.items())
        lines.append(
            f"| `{key}` | {fmt(d['value'])} {d['unit']} | {d['target'] or '-'} | {met} "
            f"| {absolute} |"
        )
    lines += ["", "What each row measures:", ""]
    for key in sorted(details, key=lambda k: (order.get(k, len(order)), k)):
        lines.append(f"- `{key}`: {details[key]['note']}.")
    return "\n".join(lines)


def replace_table(text: str, table: str) -> str:
    """``text`` with the marked section replaced (or a Performance section appended)."""
    block = f"{START}\n{table}\n{END}"
    if START in text and END in text:
        pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.DOTALL)
        return pattern.sub(lambda _: block, text, count=1)
    return text.rstrip("\n") + f"\n\n{SECTION}\n\n{block}\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="run the reduced suite")
    parser.add_argument("--from", dest="source", help="a JSON file from `run.py --json`")
    parser.add_argument("--readme", default=str(README), help="the README to rewrite")
    args = parser.parse_args(argv)
    if args.source:
        result = json.loads(Path(args.source).read_text())
    else:
        mode = Mode.from_flags(args.quick)
        figures, wall = run_groups(mode, GROUPS, progress=True)
        result = to_json(figures, mode, wall)
    path = Path(args.readme)
    path.write_text(replace_table(path.read_text(), render(result)))
    print(f"wrote the performance table to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
