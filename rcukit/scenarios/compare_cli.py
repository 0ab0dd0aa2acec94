"""``rcukit compare``: the command-line face of :mod:`rcukit.scenarios.compare`."""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

import attrs

from rcukit.config import KERNEL_CONFIG_NAMES, KernelConfig
from rcukit.errors import ConfigError
from rcukit.rcu.profiles import PROFILES
from rcukit.scenarios import compare as cmp
from rcukit.scenarios.output import print_compare_table, write_plot, write_traces


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
    section = data.pop("compare", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [compare] must be a table")
    allowed = {"variants", "configs", "scale"} | {f.name for f in attrs.fields(cmp.Workload)}
    for key in section:
        if key not in allowed:
            raise ConfigError(
                f"{path}: unknown key 'compare.{key}'; allowed here: {', '.join(sorted(allowed))}"
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
            raise ConfigError(f"unknown {what[:-1]} {n!r}; allowed: {', '.join(allowed)}")
    return names


def _section_names(value: Any, what: str, allowed: tuple[str, ...]) -> list[str]:
    """``[compare] variants``/``configs``: a list of names, or one comma-separated string."""
    if isinstance(value, str):
        return _names(value, what, allowed)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f"compare.{what} = {value!r}: expected a list of names; allowed: {', '.join(allowed)}"
        )
    return list(value)


def _cmd(args: argparse.Namespace) -> int:
    section: dict[str, Any] = {}
    if args.config:
        config, section = load_compare_file(args.config)
    else:
        config = cmp.default_config()
    if args.from_host_zoneinfo:
        config = KernelConfig.from_zoneinfo(None, base=config)
    if args.seed is not None:
        config = config.replace(seed=args.seed)
    if args.profile is not None:
        if args.profile not in PROFILES:
            raise ConfigError(
                f"unknown profile {args.profile!r}; allowed: {', '.join(PROFILES)}"
            )
        config = config.replace(**{"kvfree.profile": args.profile})
    variants = (
        _names(args.variants, "variants", cmp.VARIANTS) if args.variants
        else _section_names(section.get("variants", cmp.VARIANTS), "variants", cmp.VARIANTS)
    )
    configs = (
        _names(args.configs, "configs", KERNEL_CONFIG_NAMES) if args.configs
        else _section_names(section.get("configs", KERNEL_CONFIG_NAMES), "configs",
                            KERNEL_CONFIG_NAMES)
    )
    cmp.check_names(variants, configs, cmp.VARIANTS)
    wl_fields = {k: v for k, v in section.items() if k not in ("variants", "configs", "scale")}
    workload = cmp.Workload(**wl_fields)
    scale = args.scale if args.scale is not None else section.get("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ConfigError(f"scale = {scale!r}: it must be a number > 0")
    workload = workload.scaled(float(scale))
    if args.plot:
        from rcukit.scenarios.output import require_matplotlib

        require_matplotlib()
    kernels: list[Any] | None = [] if (args.trace or args.ftrace) else None
    total = len(variants) * len(configs)
    if args.json or not sys.stderr.isatty():
        result = cmp.compare(config, workload, variants, configs, kernels=kernels)
    else:
        from rich.progress import Progress

        with Progress(transient=True) as progress:
            bar = progress.add_task("simulating", total=total)

            def step(variant: str, kc: str) -> None:
                progress.update(bar, advance=1, description=f"{variant} / {kc}")

            result = cmp.compare(config, workload, variants, configs, progress=step,
                                 kernels=kernels)
    if args.json:
        print(json.dumps(result.to_json(), sort_keys=True))
    else:
        print_compare_table(result)
    if args.plot:
        write_plot(result, args.plot)
    if kernels is not None:
        write_traces(kernels, args.trace, args.ftrace)
    return 0


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the scale must be > 0")
    return v


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "compare",
        help="the RFC's question: every block-allocator variant under every kernel build",
        description=cmp.__doc__,
    )
    p.add_argument("--variants", help=f"comma-separated subset of: {', '.join(cmp.VARIANTS)}")
    p.add_argument("--configs",
                   help=f"comma-separated subset of: {', '.join(KERNEL_CONFIG_NAMES)}")
    p.add_argument("--scale", type=_positive_float, help="multiply the workload (default 1)")
    p.add_argument("--seed", type=int, help="simulation seed (default 0)")
    p.add_argument("--profile", help=f"kvfree_rcu version profile: {', '.join(PROFILES)}")
    p.add_argument("--config", metavar="FILE.toml", help="kernel, workload and [compare] settings")
    p.add_argument("--from-host-zoneinfo", action="store_true",
                   help="size the zone and pcp lists from this host's /proc/zoneinfo")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--plot", metavar="FILE.png", help="write plots (needs the plot extra)")
    p.add_argument("--trace", metavar="FILE.json", help="write a Perfetto trace of the runs")
    p.add_argument("--ftrace", metavar="FILE.txt", help="write the trace in ftrace text form")
    p.set_defaults(func=_cmd)
