"""A soak: torture runs back to back for a given wall time, across the whole matrix.

rcutorture's own long runs (``tools/testing/selftests/rcutorture/bin/kvm.sh --duration``) run
each scenario for hours; rcukit's soak spreads the same wall time over many short runs so one
command covers every kvfree_rcu profile, allocator variant and kernel build (default, lockdep,
rt), each with CPU hotplug and 30 % allocation faults, with app-mode runs (the real-clock
engine) among them. Every run has its own seed (``seed``, ``seed + 1``, ...), so a failing run
is reproduced by the single ``rcukit torture`` command the summary prints for it.

The matrix is visited in a fixed shuffled order (seeded), so a short soak samples every axis
rather than one profile; a soak long enough for the whole matrix starts it again with new
seeds. Runs start until the wall time is used up: the last one may end a run's length later.
"""

from __future__ import annotations

import itertools
import random
import shlex
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from rcukit.config import KERNEL_CONFIG_NAMES
from rcukit.errors import ConfigError
from rcukit.rcu.kvfree.variants import builtin_variants
from rcukit.rcu.profiles import DEFAULT_PROFILES, PROFILES
from rcukit.scenarios.torture.app import run_app_torture
from rcukit.scenarios.torture.common import TortureParams, TortureResult
from rcukit.scenarios.torture.sim import run_torture, torture_config

__all__ = ["SOAK_MAX_SECONDS", "SoakResult", "SoakRun", "run_soak", "soak_matrix"]

#: A week: a longer soak is a typing mistake (and the argument is wall seconds).
SOAK_MAX_SECONDS = 7 * 24 * 3600.0
#: The soak's defaults where the command line leaves hotplug and faults off.
SOAK_ONOFF_INTERVAL = 0.05
SOAK_FAULT_RATE = 0.3
#: One app-mode run after every this many sim runs; app runs last this many real seconds.
APP_EVERY = 8
APP_DURATION = 1.0


@attrs.frozen
class SoakRun:
    """One run of the soak: what it was, the command that repeats it, what it saw."""

    mode: str
    seed: int
    profile: str
    variant: str
    kernel_config: str
    command: str
    passed: bool
    failures: int
    reads: int
    updates: int
    taint: str
    first_error: str

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class SoakResult:
    """The soak's summary: the command, runs, reads, updates, failures and taint."""

    command: str
    seconds: float
    wall_s: float
    runs: tuple[SoakRun, ...]
    #: Stopped by the user (Ctrl-C) before ``seconds`` had passed: the runs that finished.
    interrupted: bool = False

    @property
    def failed(self) -> tuple[SoakRun, ...]:
        return tuple(r for r in self.runs if not r.passed)

    @property
    def passed(self) -> bool:
        return bool(self.runs) and not self.failed and not self.interrupted

    def totals(self) -> dict[str, int]:
        runs = self.runs
        return {
            "runs": len(runs),
            "sim_runs": sum(1 for r in runs if r.mode == "sim"),
            "app_runs": sum(1 for r in runs if r.mode == "app"),
            "reads": sum(r.reads for r in runs),
            "updates": sum(r.updates for r in runs),
            "failures": sum(r.failures for r in runs),
            "failed_runs": len(self.failed),
            "tainted_runs": sum(1 for r in runs if r.taint),
        }

    def coverage(self) -> dict[str, int]:
        sim = [r for r in self.runs if r.mode == "sim"]
        return {
            "profiles": len({r.profile for r in sim}),
            "variants": len({r.variant for r in sim}),
            "kernel_configs": len({r.kernel_config for r in sim}),
        }

    def summary_lines(self) -> list[str]:
        t = self.totals()
        c = self.coverage()
        lines = [
            f"soak: {self.command}",
            f"soak: {t['runs']} runs ({t['sim_runs']} sim, {t['app_runs']} app) in "
            f"{self.wall_s:.1f} s of wall time",
            f"soak: reads {t['reads']}  updates {t['updates']}  failures {t['failures']}  "
            f"failed runs {t['failed_runs']}  tainted runs {t['tainted_runs']}",
            f"soak: covered {c['profiles']}/{len(PROFILES)} profiles, "
            f"{c['variants']}/{len(builtin_variants())} variants, "
            f"{c['kernel_configs']}/{len(KERNEL_CONFIG_NAMES)} kernel builds",
        ]
        for r in self.failed:
            why = r.first_error or (f"kernel tainted ({r.taint})" if r.taint else "failed")
            lines.append(f"soak: FAILED: {r.command}: {why}")
        if self.interrupted:
            end = "INTERRUPTED" if not self.failed else "FAILURE (interrupted)"
            lines.append(f"--- End of soak: {end} after {self.wall_s:.1f} of {self.seconds:g} s")
        else:
            lines.append(f"--- End of soak: {'SUCCESS' if self.passed else 'FAILURE'}")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "seconds": self.seconds,
            "wall_s": round(self.wall_s, 3),
            "passed": self.passed,
            "interrupted": self.interrupted,
            **self.totals(),
            "coverage": self.coverage(),
            "failed": [r.to_json() for r in self.failed],
        }


def soak_matrix(seed: int) -> list[tuple[str, str, str]]:
    """Every (profile, variant, kernel build), in a fixed order shuffled by ``seed``."""
    combos = list(
        itertools.product(PROFILES, sorted(builtin_variants()), KERNEL_CONFIG_NAMES)
    )
    random.Random(f"soak:{seed}").shuffle(combos)
    return combos


def check_soak_seconds(seconds: float) -> None:
    """The soak's length in wall seconds: finite, > 0, at most a week."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
        0 < seconds <= SOAK_MAX_SECONDS
    ):
        raise ConfigError(
            f"soak = {seconds!r}: expected wall seconds > 0 and at most {SOAK_MAX_SECONDS:g}"
        )


def _command(base: Sequence[str], mode: str, seed: int, profile: str, variant: str,
             build: str, p: TortureParams) -> str:
    argv = [*base, "--mode", mode, "--seed", str(seed), "--profile", profile,
            "--duration", f"{p.duration:g}", "--onoff-interval", f"{p.onoff_interval:g}",
            "--fault-rate", f"{p.fault_rate:g}"]
    if mode == "sim":
        argv += ["--variant", variant, "--kernel-config", build]
    return shlex.join(argv)


def _run(result: TortureResult, mode: str, seed: int, profile: str, variant: str, build: str,
         command: str) -> SoakRun:
    return SoakRun(
        mode=mode, seed=seed, profile=profile, variant=variant, kernel_config=build,
        command=command, passed=result.passed, failures=result.failures,
        reads=result.reads, updates=result.updates, taint=result.taint,
        first_error=result.errors[0] if result.errors else (
            result.reports[0] if result.reports else ""
        ),
    )


def run_soak(
    seconds: float,
    params: TortureParams,
    *,
    seed: int = 0,
    command: str = "",
    base_argv: Sequence[str] = ("rcukit", "torture"),
    on_run: Callable[[SoakRun], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    preempt_rcu: bool = False,
    panic_on_warn: bool = False,
) -> SoakResult:
    """Torture runs back to back until ``seconds`` of wall time have passed.

    Sim runs take ``params`` with hotplug every :data:`SOAK_ONOFF_INTERVAL` s and
    :data:`SOAK_FAULT_RATE` faults where ``params`` leaves them off, and walk
    :func:`soak_matrix`; after every :data:`APP_EVERY` sim runs comes an app-mode run of
    :data:`APP_DURATION` real seconds (same faults; QSBR readers going offline as hotplug).
    Each run's seed is the next integer from ``seed``. ``on_run`` sees each run as it ends.
    ``preempt_rcu`` and ``panic_on_warn`` apply to the sim runs (:func:`torture_config`).
    """
    check_soak_seconds(seconds)
    p = attrs.evolve(
        params,
        onoff_interval=params.onoff_interval or SOAK_ONOFF_INTERVAL,
        fault_rate=params.fault_rate or SOAK_FAULT_RATE,
    )
    app_p = attrs.evolve(p, duration=min(p.duration, APP_DURATION))
    matrix = soak_matrix(seed)
    app_profile = DEFAULT_PROFILES["app"]
    runs: list[SoakRun] = []
    t0 = clock()
    n = 0
    sims = 0
    while clock() - t0 < seconds:
        run_seed = seed + n
        n += 1
        if sims and sims % APP_EVERY == 0 and runs[-1].mode == "sim":
            cmd = _command(base_argv, "app", run_seed, app_profile, "", "", app_p)
            res = run_app_torture(app_p, seed=run_seed, profile=app_profile)
            run = _run(res, "app", run_seed, app_profile, "", "", cmd)
        else:
            profile, variant, build = matrix[sims % len(matrix)]
            sims += 1
            extra = [*(["--preempt-rcu"] if preempt_rcu else []),
                     *(["--panic-on-warn"] if panic_on_warn else [])]
            cmd = _command([*base_argv, *extra], "sim", run_seed, profile, variant, build, p)
            cfg = torture_config(seed=run_seed, variant=variant, profile=profile,
                                 kernel_config=build, preempt_rcu=preempt_rcu,
                                 panic_on_warn=panic_on_warn)
            res = run_torture(p, cfg)
            run = _run(res, "sim", run_seed, profile, variant, build, cmd)
        runs.append(run)
        if on_run is not None:
            on_run(run)
    return SoakResult(command=command, seconds=float(seconds), wall_s=clock() - t0,
                      runs=tuple(runs))
