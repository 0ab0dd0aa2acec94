"""``rcukit torture``: rcutorture on the simulated kernel (``--mode sim``) or on Trio's real
clock through the application API (``--mode app``).

The exit status is 0 only when the run saw no RCU failure, no leak, no use after free, no
double free and left the kernel untainted (no BUG, KASAN or WARNING report); 1 otherwise; 2 for
bad options. The deliberately broken build the tests use is not
reachable from here.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable

from rcukit.cli.options import (
    Default,
    add_shared_options,
    check_profile,
    module_params,
    number_type,
    print_json,
)
from rcukit.config import KERNEL_CONFIG_NAMES, KernelConfig
from rcukit.errors import ConfigError
from rcukit.rcu.profiles import DEFAULT_PROFILES
from rcukit.scenarios.torture import (
    SoakResult,
    SoakRun,
    TortureParams,
    TortureResult,
    run_app_torture,
    run_soak,
    run_torture,
    torture_config,
)
from rcukit.scenarios.torture.soak import SOAK_MAX_SECONDS


def run_from_args(args: argparse.Namespace) -> TortureResult:
    """The run the options describe (sim or app mode), validated before anything starts."""
    check_profile(args.profile)
    params = module_params(TortureParams, args)
    if args.mode == "app":
        _refuse_given(
            (
                ("--variant", args.variant, None),
                ("--kernel-config", args.kernel_config, "default"),
                ("--cpus", args.cpus, None),
                ("--preempt-rcu", args.preempt_rcu, False),
                ("--kvfree-torture", args.kvfree_torture, False),
                ("--panic-on-warn", args.panic_on_warn, False),
            ),
            "applies to --mode sim only (the app mode runs on the host's allocator and "
            "scheduler)",
        )
        profile = args.profile or DEFAULT_PROFILES["app"]
        return run_app_torture(params, seed=args.seed, profile=profile)
    base = KernelConfig() if args.cpus is None else KernelConfig(nr_cpus=args.cpus)
    config = torture_config(
        base,
        seed=args.seed,
        variant=args.variant,
        profile=args.profile,
        kernel_config=args.kernel_config,
        preempt_rcu=args.preempt_rcu,
        panic_on_warn=args.panic_on_warn,
    )
    return run_torture(params, config)


def _refuse_given(options: Iterable[tuple[str, object, object]], why: str) -> None:
    """ConfigError for the first ``(flag, value, default)`` given a value other than its
    default: "<flag> <why>"."""
    for opt, value, default in options:
        if value != default:
            raise ConfigError(f"{opt} {why}")


def soak_from_args(args: argparse.Namespace) -> SoakResult:
    """``--soak SECONDS``: the matrix of runs (:func:`run_soak`), each printed as it ends
    unless ``--json``. The options the soak loops over itself are refused."""
    _refuse_given(
        (
            ("--mode", args.mode, "sim"),
            ("--variant", args.variant, None),
            ("--profile", args.profile, None),
            ("--kernel-config", args.kernel_config, "default"),
            ("--cpus", args.cpus, None),
            ("--kvfree-torture", args.kvfree_torture, False),
        ),
        "cannot be combined with --soak: the soak runs every profile, variant and kernel "
        "build in sim mode, and app-mode runs among them",
    )
    params = module_params(TortureParams, args)
    parts = ["rcukit", "torture", "--soak", f"{args.soak:g}"]
    if args.duration != _DEFAULT_DURATION:
        parts += ["--duration", f"{args.duration:g}"]
    if args.seed:
        parts += ["--seed", str(args.seed)]
    for flag, on in (("--preempt-rcu", args.preempt_rcu), ("--panic-on-warn", args.panic_on_warn)):
        if on:
            parts.append(flag)

    done: list[SoakRun] = []

    def show(run: SoakRun) -> None:
        done.append(run)
        if args.json:
            return
        verdict = "ok" if run.passed else f"FAILED ({run.first_error or run.taint})"
        print(f"soak: run {run.seed - args.seed + 1}: {run.command}: {verdict}", flush=True)

    t0 = time.monotonic()
    try:
        return run_soak(
            args.soak, params, seed=args.seed, command=" ".join(parts), on_run=show,
            preempt_rcu=args.preempt_rcu, panic_on_warn=args.panic_on_warn,
        )
    except KeyboardInterrupt:
        # Ctrl-C: the runs that finished are still a result; the one under way is dropped.
        return SoakResult(command=" ".join(parts), seconds=float(args.soak),
                          wall_s=time.monotonic() - t0, runs=tuple(done), interrupted=True)


def _cmd(args: argparse.Namespace) -> int:
    if args.soak is not None:
        soak = soak_from_args(args)
        if args.json:
            print_json(soak.to_json())
        else:
            for line in soak.summary_lines():
                print(line)
        if soak.interrupted:
            return 130  # as the shell reports SIGINT, after the summary
        return 0 if soak.passed else 1
    result = run_from_args(args)
    if args.json:
        print_json(result.to_json())
    else:
        for line in result.summary_lines():
            print(line)
    return 0 if result.passed else 1


_seconds = number_type(
    float, "a number of seconds",
    lambda text, v: None if v >= 0 else f"{text!r}: a number of seconds must be >= 0",
)
_duration = number_type(
    float, "a number of seconds",
    lambda text, v: None if v > 0 else f"{text!r}: the test must last more than 0 seconds",
)
# rcutorture.onoff_interval counts jiffies: nothing shorter than one (1 ms at HZ=1000) exists,
# and a shorter one would make a second of simulated time cost hours of hotplug.
_ONOFF_MIN = 0.001
_onoff = number_type(
    float, "a number of seconds",
    lambda text, v: None if v == 0 or v >= _ONOFF_MIN else
    f"{text!r}: the hotplug interval is 0 (none) or at least {_ONOFF_MIN} s (one jiffy)",
)
_soak = number_type(
    float, "a number of seconds",
    lambda text, v: None if 0 < v <= SOAK_MAX_SECONDS else
    f"{text!r}: a soak lasts more than 0 and at most {SOAK_MAX_SECONDS:g} wall seconds",
)
_DEFAULT_DURATION = 10.0
_rate = number_type(
    float, "a probability",
    lambda text, v: None if 0 <= v <= 1 else f"{text!r}: a probability is from 0 to 1",
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from rcukit.scenarios.torture import sim

    p = sub.add_parser(
        "torture",
        help="rcutorture: readers, writers, fake writers, hotplug, faults, stalls",
        description=sim.__doc__.split("\n\n")[0] if sim.__doc__ else None,
    )
    p.add_argument("--mode", choices=("sim", "app"), default="sim",
                   help="sim: the simulated kernel on virtual time; app: rcukit.app on "
                   "Trio's real clock")
    p.add_argument("--duration", type=_duration, default=_DEFAULT_DURATION,
                   help="test length in seconds (simulated in sim mode, real in app mode)")
    p.add_argument("--nreaders", type=int, default=-1,
                   help="reader threads (-1: one per CPU but one)")
    p.add_argument("--nwriters", type=int, default=1, help="writer threads")
    p.add_argument("--nfakewriters", type=int, default=4, help="fake writer threads")
    p.add_argument("--variant", default=None,
                   help="kvfree_rcu block allocator variant (sim mode; default nowait)")
    p.add_argument("--onoff-interval", type=_onoff, default=0.0,
                   help="seconds between CPU hotplug operations (app mode: QSBR readers "
                   "going offline); 0: none")
    p.add_argument("--fault-rate", type=_rate, default=0.0,
                   help="probability of failing each page and slab allocation (app mode: of "
                   "a callback or release function raising)")
    p.add_argument("--stall-cpu", type=_seconds, default=0.0,
                   help="seconds one reader spins inside a read section; a stall report must "
                   "appear and the test still pass")
    p.add_argument("--kernel-config", choices=KERNEL_CONFIG_NAMES, default="default",
                   help="kernel build (sim mode)")
    p.add_argument("--preempt-rcu", action="store_true",
                   help="CONFIG_PREEMPT_RCU=y: preemptible readers (sim mode; rt implies it)")
    p.add_argument("--kvfree-torture", action="store_true",
                   help="also flood kvfree_rcu() in bursts alternating the slab and vmalloc "
                   "channels, with long readers: finds the pre-6.3 krwp reuse (sim mode)")
    p.add_argument("--soak", type=_soak, metavar="SECONDS", default=None,
                   help="run torture back to back for SECONDS of wall time over every profile, "
                   "variant and kernel build (sim mode, with hotplug every 0.05 s and 30%% "
                   "faults unless given) with app-mode runs among them, seeds advancing; "
                   "prints one summary and fails if any run failed")
    p.add_argument("--panic-on-warn", action="store_true",
                   help="kernel.panic_on_warn=1: the first WARNING or KASAN report panics the "
                   "simulated kernel and stops the run (sim mode); without it the kernel "
                   "reports, taints itself and goes on, and a tainted run fails")
    add_shared_options(p, profile=Default(None, "v5.9 in sim mode, v6.3 in app mode"),
                       cpus=Default(None, "4; sim mode only"))
    p.set_defaults(func=_cmd)


__all__ = ["register", "run_from_args", "soak_from_args"]
