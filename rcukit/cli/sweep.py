"""``rcukit sweep``: run a sweep file, or plot the results of one."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rcukit.cli.options import PLOT_SUFFIXES, number_type, output_path, print_json
from rcukit.errors import ConfigError
from rcukit.scenarios import sweep as sw

DESCRIPTION = """\
Run one simulation per point of a grid (or a random sample of it) over kernel config fields,
variants, builds and scenario fields, times seeds, in parallel; or plot the results. Each
finished point is appended to RESULTS.jsonl at once, so Ctrl-C loses nothing and --resume runs
only the points that are missing. A point gives the same bytes inline, in the process pool and
on Dask.
"""

EPILOG = """\
examples:
  rcukit sweep examples/sweep-small.toml --out results.jsonl            # all local cores
  rcukit sweep examples/sweep-small.toml --out results.jsonl --resume   # after a Ctrl-C
  rcukit sweep examples/sweep-small.toml --out results.jsonl --scheduler tcp://10.0.0.1:8786
  rcukit sweep --plot results.jsonl --x mm.pcp_batch --lines variant \\
      --figure block_alloc_failure_pct --out-plot failures.png
  rcukit sweep --plot results.jsonl --x mm.pcp_batch --y nr_cpus \\
      --figure latency_ns.p99 --where variant=nowait --out-plot p99.png
"""

RUN_ONLY = ("out", "jobs", "workers", "inline", "scheduler", "resume")
PLOT_ONLY = ("x", "y", "lines", "figure", "out_plot", "where")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar on stderr, only when a person is watching it."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
    ) as progress:
        bar = progress.add_task(label, total=None)

        def step(done: int, total: int) -> None:
            progress.update(bar, completed=done, total=total)

        yield step


def _run(args: argparse.Namespace) -> int:
    if args.sweep_file is None or args.out is None:
        raise ConfigError("a sweep needs SWEEP.toml and --out RESULTS.jsonl (or use --plot)")
    spec = sw.load_spec(args.sweep_file)
    workers = args.workers
    if args.inline or args.jobs == 1:
        workers = 0
    elif args.jobs is not None:
        workers = args.jobs
    with sw.open_executor(workers, args.scheduler) as choice, _progress(
        f"sweep ({choice.description})"
    ) as progress:
        summary = sw.run_sweep(
            spec, args.out, choice.executor, resume=args.resume,
            max_in_flight=choice.max_in_flight, progress=progress,
        )
    if args.json:
        print_json({"ran": summary.ran, "skipped": summary.skipped, "total": summary.total,
                    "sweep_file": args.sweep_file, "out": args.out})
        return 0
    print(
        f"{summary.ran} points run, {summary.skipped} already in {args.out}; "
        f"{summary.total} points in {args.sweep_file}"
    )
    return 0


def _plot(args: argparse.Namespace) -> int:
    from rcukit.scenarios.sweep_plot import parse_where, plot_results

    for name in ("x", "figure", "out_plot"):
        if getattr(args, name) is None:
            raise ConfigError(f"--plot needs {_flag(name)}")
    table = plot_results(
        args.plot, args.out_plot, x=args.x, figure=args.figure, y=args.y, lines=args.lines,
        where=parse_where(args.where),
    )
    kind = "heat map" if args.y else "line plot"
    if args.json:
        print_json({"wrote": args.out_plot, "kind": kind, "figure": table.figure})
        return 0
    print(f"wrote {kind} of {table.figure} to {args.out_plot}")
    return 0


def _cmd(args: argparse.Namespace) -> int:
    if args.plot is not None:
        if args.sweep_file is not None:
            raise ConfigError("give either SWEEP.toml (run a sweep) or --plot RESULTS.jsonl")
        used = [n for n in RUN_ONLY if getattr(args, n) not in (None, False)]
        if used:
            raise ConfigError(f"{_flag(used[0])} runs a sweep; it does not apply with --plot")
        return _plot(args)
    used = [n for n in PLOT_ONLY if getattr(args, n) not in (None, [])]
    if used:
        raise ConfigError(f"{_flag(used[0])} is a plot option; it needs --plot RESULTS.jsonl")
    return _run(args)


_jobs = number_type(
    int, "a whole number",
    lambda text, n: None if n >= 1 else f"{n}: expected a number of processes >= 1 (1 = inline)",
)
#: The old spelling, kept working (0 = inline); ``--jobs`` is compare's and make's.
_workers = number_type(
    int, "a whole number",
    lambda text, n: f"{n}: expected 0 (inline) or a number of processes" if n < 0 else None,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a grid of simulations over config and scenario fields, or plot the results",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sweep_file", nargs="?", metavar="SWEEP.toml",
                   help="the sweep: scenario, seeds, [grid], optional [fixed] and samples")
    p.add_argument("--json", action="store_true",
                   help="print the summary as one JSON object (the results file is JSON lines "
                   "either way)")
    run = p.add_argument_group("running a sweep")
    run.add_argument("--out", metavar="RESULTS.jsonl", type=output_path(),
                     help="JSON-lines results, one per point")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--jobs", type=_jobs, metavar="N",
                       help="run points in N local worker processes (default: one per core; "
                       "1 = inline), as compare --jobs; the results are the same whatever N")
    where.add_argument("--workers", type=_workers, metavar="N", help=argparse.SUPPRESS)
    where.add_argument("--inline", action="store_true", help="run every point in this process")
    where.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                       help="run on a Dask cluster (needs the dask extra)")
    run.add_argument("--resume", action="store_true",
                     help="skip points already in --out (and drop a torn last line)")
    plot = p.add_argument_group("plotting results (needs the plot extra)")
    plot.add_argument("--plot", metavar="RESULTS.jsonl", help="plot a results file")
    plot.add_argument("--x", metavar="FIELD", help="parameter on the x axis")
    shape = plot.add_mutually_exclusive_group()
    shape.add_argument("--y", metavar="FIELD", help="parameter on the y axis: a heat map")
    shape.add_argument("--lines", metavar="FIELD", help="one line per value of this parameter")
    plot.add_argument("--figure", metavar="KEY",
                      help="result key to plot, dotted if nested (latency_ns.p99)")
    plot.add_argument("--where", metavar="FIELD=VALUE", action="append", default=[],
                      help="keep only points with this parameter value (repeatable)")
    plot.add_argument("--out-plot", metavar="FILE.png", type=output_path(PLOT_SUFFIXES),
                      help="image to write")
    p.set_defaults(func=_cmd)
