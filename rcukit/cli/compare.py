"""``rcukit compare``: the command-line face of :mod:`rcukit.scenarios.compare`."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from rcukit.cli.options import (
    PLOT_SUFFIXES,
    Default,
    add_format_option,
    add_shared_options,
    check_profile,
    number_type,
    output_format,
    output_path,
    print_json,
)
from rcukit.cli.plugins import ENTRY_POINT_GROUP, load_block_sources
from rcukit.config import KERNEL_CONFIG_NAMES, KernelConfig
from rcukit.errors import ConfigError, did_you_mean
from rcukit.rcu.profiles import PROFILES
from rcukit.scenarios import compare as cmp
from rcukit.scenarios.figures import write_plot
from rcukit.scenarios.output import (
    BUILT_IN_ZONE,
    compare_csv,
    compare_markdown,
    compare_plain,
    print_compare_table,
)
from rcukit.scenarios.trace_files import TraceFiles
from rcukit.trace.events import (
    DEFAULT_SELECTION,
    HIGH_RATE_EVENTS,
    parse_cpu_list,
    parse_event_names,
    parse_window_ms,
)
from rcukit.trace.export import KERNEL_EVENTS, RCUKIT_EVENTS


def _flatten(prefix: str, data: dict[str, Any], out: dict[str, Any]) -> None:
    for key, value in data.items():
        if isinstance(value, dict):
            _flatten(f"{prefix}{key}.", value, out)
        else:
            out[prefix + key] = value


def load_compare_file(path: str) -> tuple[KernelConfig, dict[str, Any]]:
    """A TOML file: kernel fields at top level / in [mm] [cost] [kvfree], and a [compare]
    table with ``variants``, ``configs``, ``scale`` and any workload field."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path!r}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from exc
    except ValueError as exc:  # a NUL in the name, or bytes that are not UTF-8
        raise ConfigError(f"cannot read config file {path!r}: {exc}") from exc
    section = data.pop("compare", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [compare] must be a table")
    allowed = {"variants", "configs", "profiles", "scale"} | {
        f.name for f in attrs.fields(cmp.Workload)
    }
    for key in section:
        if key not in allowed:
            raise ConfigError(
                f"{path}: unknown key 'compare.{key}'{did_you_mean(key, allowed)}; "
                f"allowed here: {', '.join(sorted(allowed))}"
            )
    KernelConfig.from_mapping(data, source=path)  # validates keys and values, names them
    flat: dict[str, Any] = {}
    _flatten("", data, flat)
    return cmp.default_config().replace(**flat) if flat else cmp.default_config(), section


def _names(text: str, what: str, allowed: tuple[str, ...]) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"--{what} is empty; allowed: {', '.join(allowed)}")
    for n in names:
        if n not in allowed:
            raise ConfigError(
                f"unknown {what[:-1]} {n!r}{did_you_mean(n, allowed)}; "
                f"allowed: {', '.join(allowed)}"
            )
    return names


def _section_names(value: Any, what: str, allowed: tuple[str, ...]) -> list[str]:
    """``[compare] variants``/``configs``: a list of names, or one comma-separated string."""
    if isinstance(value, str):
        return _names(value, what, allowed)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f"compare.{what} = {value!r}: expected a list of names; allowed: {', '.join(allowed)}"
        )
    if not value:
        raise ConfigError(
            f"compare.{what} = []: {what} is empty; allowed: {', '.join(allowed)}"
        )
    return list(value)


def _cmd(args: argparse.Namespace) -> int:
    fmt = output_format(args)
    sources = load_block_sources(args.plugin)
    # Users' variants are allowed by name here; run_compare() checks them against its sources.
    known = (*cmp.VARIANTS, *(s.name for s in sources))
    section: dict[str, Any] = {}
    if args.config:
        config, section = load_compare_file(args.config)
    else:
        config = cmp.default_config()
    zone_from = (
        args.config if args.config and config.mm.zone_pages != cmp.default_config().mm.zone_pages
        else BUILT_IN_ZONE
    )
    if args.from_host_zoneinfo and args.zoneinfo:
        raise ConfigError("--zoneinfo and --from-host-zoneinfo both given: choose one")
    if args.from_host_zoneinfo:
        config = KernelConfig.from_zoneinfo(None, base=config)
        zone_from = "this host's /proc/zoneinfo"
    elif args.zoneinfo:
        config = KernelConfig.from_zoneinfo(Path(args.zoneinfo), base=config)
        zone_from = args.zoneinfo
    if args.seed is not None:
        config = config.replace(seed=args.seed)
    if args.panic_on_warn:
        config = config.replace(panic_on_warn=True)
    check_profile(args.profile)
    if args.profile is not None:
        config = config.replace(**{"kvfree.profile": args.profile})
    if args.profiles is not None and args.profile is not None:
        raise ConfigError("--profile and --profiles both given: name the profiles once")
    profiles = (
        _names(args.profiles, "profiles", tuple(PROFILES)) if args.profiles is not None
        else _section_names(section["profiles"], "profiles", tuple(PROFILES))
        if "profiles" in section and args.profile is None
        else [config.kvfree.profile]
    )
    variants = (
        _names(args.variants, "variants", known) if args.variants is not None
        else _section_names(section.get("variants", known), "variants", known)
    )
    configs = (
        _names(args.configs, "configs", KERNEL_CONFIG_NAMES) if args.configs is not None
        else _section_names(section.get("configs", KERNEL_CONFIG_NAMES), "configs",
                            KERNEL_CONFIG_NAMES)
    )
    cmp.check_names(variants, configs, known, profiles)
    wl_fields = {
        k: v for k, v in section.items() if k not in ("variants", "configs", "profiles", "scale")
    }
    workload = cmp.Workload(**wl_fields)
    scale = args.scale if args.scale is not None else section.get("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ConfigError(f"scale = {scale!r}: it must be a number > 0")
    workload = workload.scaled(float(scale))
    if args.plot:
        from rcukit.scenarios.figures import require_matplotlib

        require_matplotlib()
    traces = _trace_files(args, config.nr_cpus)
    # Only when there are any, so run_compare() without the parameter still runs the built-ins.
    # Workers rebuild the sources from the same specs (and entry points): the objects need
    # not pickle.
    extra: dict[str, Any] = (
        {"block_sources": sources,
         "load_sources": functools.partial(load_block_sources, tuple(args.plugin))}
        if sources else {}
    )
    # --trace/--ftrace: each row, in whichever process runs it, streams its own part of the
    # files; the parts are joined in row order when the with-block below ends.
    jobs = args.jobs if args.jobs is not None else (os.cpu_count() or 1)
    if traces is not None:
        extra["tracing"] = traces.row

    def run(progress: Callable[[cmp.Cell], None] | None) -> cmp.CompareResult:
        return cmp.run_compare(config, workload, variants, configs, profiles=profiles,
                               progress=progress, jobs=jobs, **extra)

    with traces if traces is not None else contextlib.nullcontext():
        result = _run(args, run, len(profiles) * len(variants) * len(configs), fmt)

    if fmt == "json":
        print_json(result.to_json())
    elif fmt == "csv":
        sys.stdout.write(compare_csv(result))
    elif fmt == "markdown":
        sys.stdout.write(compare_markdown(result, zone_from=zone_from))
    elif fmt == "plain":
        sys.stdout.write(compare_plain(result, zone_from=zone_from))
    else:
        print_compare_table(result, zone_from=zone_from)
    if args.plot:
        written = write_plot(result, args.plot)
        if len(written) > 1:  # one figure per profile: say where they went
            print("wrote " + ", ".join(map(str, written)), file=sys.stderr)
    return 0


def _run(
    args: argparse.Namespace,
    run: Callable[[Callable[[cmp.Cell], None] | None], cmp.CompareResult],
    total: int,
    fmt: str,
) -> cmp.CompareResult:
    if fmt != "text" or not sys.stderr.isatty():
        return run(None)
    from rich.progress import Progress

    with Progress(transient=True) as progress:
        bar = progress.add_task("simulating", total=total)

        def step(cell: cmp.Cell) -> None:
            progress.update(bar, advance=1, description=" / ".join(cell))

        return run(step)


def _trace_files(args: argparse.Namespace, nr_cpus: int) -> TraceFiles | None:
    """The trace files the options ask for, their selection checked against the machine."""
    if not (args.trace or args.ftrace):
        for opt in ("trace_events", "trace_cpus", "trace_window"):
            if getattr(args, opt) is not None:
                raise ConfigError(f"--{opt.replace('_', '-')} needs --trace or --ftrace")
        return None
    if args.trace_cpus is not None and max(args.trace_cpus) >= nr_cpus:
        raise ConfigError(
            f"--trace-cpus {max(args.trace_cpus)}: the machine has CPUs 0-{nr_cpus - 1}"
        )
    return TraceFiles(
        args.trace, args.ftrace,
        events=args.trace_events if args.trace_events is not None else DEFAULT_SELECTION,
        cpus=args.trace_cpus, window_ns=args.trace_window,
    )


def _trace_events(text: str) -> frozenset[str]:
    try:
        names = parse_event_names(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    known = (*KERNEL_EVENTS, *RCUKIT_EVENTS)
    for n in names:
        body = n.removeprefix("!")
        if not any(c in body for c in "*?[") and body not in known:
            raise argparse.ArgumentTypeError(
                f"unknown event {body!r}; known: {', '.join(sorted(known))} (globs allowed)"
            )
    return names


def _parsed(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def wrapped(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return wrapped


_jobs = number_type(
    int, "a whole number",
    lambda text, n: None if n >= 1 else f"{n}: expected a number of processes >= 1 (1 = inline)",
)

_scale = number_type(
    float, "a number", lambda text, v: None if v > 0 else f"{text!r}: the scale must be > 0"
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "compare",
        help="the RFC's question: every block-allocator variant under every kernel build",
        description=cmp.__doc__,
    )
    p.add_argument("--variants", help=f"comma-separated subset of: {', '.join(cmp.VARIANTS)}")
    p.add_argument("--configs",
                   help=f"comma-separated subset of: {', '.join(KERNEL_CONFIG_NAMES)}")
    p.add_argument("--profiles", metavar="A,B,...",
                   help="run the question across kernel history in one table: comma-separated "
                   f"profiles from {', '.join(PROFILES)} (instead of --profile)")
    p.add_argument("--scale", type=_scale,
                   help="multiply the workload: objects and simulated time (default 1: a "
                   "second of simulated time per row)")
    # seed and profile parse to None so a --config file's values win when they are not given.
    add_shared_options(p, seed=None, profile=Default(None, "rfc, or the --config file's"),
                       config="kernel, workload and [compare] settings")
    add_format_option(p)
    p.add_argument("--plugin", metavar="MODULE:ATTR", action="append", default=[],
                   help="add users' block-allocator variants: a BlockPageSource, a class of "
                   "one, or an iterable of them (repeatable); installed "
                   f"{ENTRY_POINT_GROUP} entry points are added too")
    p.add_argument("--panic-on-warn", action="store_true",
                   help="kernel.panic_on_warn=1 in every row: the first WARNING, KASAN or "
                   "scheduling-while-atomic report panics and compare stops (exit 1)")
    p.add_argument("--jobs", type=_jobs, metavar="N",
                   help="run rows in N worker processes (default: one per core; 1 = inline); "
                   "the output (trace files included) is the same whatever N")
    p.add_argument("--from-host-zoneinfo", action="store_true",
                   help="size the zone and pcp lists from this host's /proc/zoneinfo")
    p.add_argument("--zoneinfo", metavar="FILE",
                   help="size the zone and pcp lists from FILE, another machine's "
                   "/proc/zoneinfo (cat /proc/zoneinfo > FILE there)")
    p.add_argument("--plot", metavar="FILE.png", type=output_path(PLOT_SUFFIXES),
                   help="write plots (needs the plot extra)")
    p.add_argument("--trace", metavar="FILE.json", type=output_path(),
                   help="write a Perfetto trace of the runs")
    p.add_argument("--ftrace", metavar="FILE.txt", type=output_path(),
                   help="write the trace in ftrace text form")
    p.add_argument("--trace-events", metavar="NAME,...", type=_trace_events,
                   help="events to trace: tracepoint names or globs (rcu_*), !NAME to leave "
                   "one out (default: all but the per-object and per-page ones, "
                   f"{', '.join(HIGH_RATE_EVENTS)}; '*' is everything)")
    p.add_argument("--trace-cpus", metavar="LIST", type=_parsed(parse_cpu_list),
                   help="trace only these CPUs: 0,2 or 0-3 (default: all)")
    p.add_argument("--trace-window", metavar="START:END", type=_parsed(parse_window_ms),
                   help="trace only events in this span of simulated milliseconds, e.g. "
                   "0:50 or 200: (default: the whole run)")
    p.set_defaults(func=_cmd)
