"""Parameter sweeps: many independent simulations over a grid of settings, times seeds.

A question about allocation policy (does the block-allocation failure rate fall as the pcp batch
grows? how does pending memory follow the drain interval and the CPU count?) needs one point per
setting and several seeds per point. Every point is a whole simulation, deterministic from its
parameters and its seed alone, so points share nothing and can run anywhere: inline, in a local
process pool, or on a Dask cluster, all through :class:`concurrent.futures.Executor`. The worker
function :func:`run_point` takes plain data and returns plain data, so a point's result is the
same bytes whichever executor ran it.

Results stream to a JSON-lines file, one fsync'ed line per finished point, so an interrupted or
crashed sweep keeps every point it finished and ``resume`` runs only the rest.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import os
import random
import tomllib
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from pathlib import Path
from types import MappingProxyType
from typing import Any

import attrs

from rcukit.config import KERNEL_CONFIG_NAMES, KernelConfig, _coerce
from rcukit.errors import ConfigError, SweepError, did_you_mean
from rcukit.rcu.profiles import DEFAULT_PROFILES
from rcukit.scenarios import compare as cmp

# Re-exported: sweep's executors are built in rcukit.scenarios.executors, shared with compare.
from rcukit.scenarios.executors import ExecutorChoice as ExecutorChoice
from rcukit.scenarios.executors import InlineExecutor as InlineExecutor
from rcukit.scenarios.executors import open_executor as open_executor
from rcukit.scenarios.rcuscale import RcuscaleParams, run_rcuscale

SCENARIOS = ("compare", "rcuscale")
TOP_LEVEL_KEYS = ("scenario", "seeds", "grid", "fixed", "samples", "sample_seed")
#: Keys that are not config fields: the block-allocator variant, the kvfree_rcu version profile
#: and the named kernel build (default / lockdep = PROVE_RAW_LOCK_NESTING / rt = PREEMPT_RT).
SPECIAL_KEYS = ("variant", "profile", "kernel_config")
#: Config fields a sweep sets through another key; a grid over them would be overridden.
OWNED_FIELDS = {
    "seed": "the top-level 'seeds = [...]' list",
    "kvfree.variant": "'variant'",
    "kvfree.profile": "'profile'",
    "preempt_rt": "'kernel_config' (\"rt\")",
    "prove_raw_lock_nesting": "'kernel_config' (\"lockdep\")",
}
#: ``rcukit rcuscale``'s defaults, so a sweep point and that command agree on the same settings.
RCUSCALE_DEFAULTS = {"profile": DEFAULT_PROFILES["rcuscale"], "variant": "page-cache"}
#: Compare's one-row default (``rcukit compare`` runs every variant under every build); its
#: profile comes from ``compare.default_config()``.
COMPARE_DEFAULTS = {"variant": "nowait"}
#: Largest seed a KernelConfig accepts.
MAX_SEED = 2**63 - 1

PointRunner = Callable[[str, dict[str, Any], int], dict[str, Any]]


# ---------------------------------------------------------------------------------------------
# Field names


def _leaf_fields(cls: type, prefix: str = "") -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in attrs.fields(cls):
        tp = hints[f.name]
        if attrs.has(tp):
            out.update(_leaf_fields(tp, f"{prefix}{f.name}."))
        elif prefix + f.name not in OWNED_FIELDS:
            out[prefix + f.name] = tp
    return out


# Resolved once: typing.get_type_hints is far too slow to call per point of a large grid.
_KERNEL_FIELDS: Mapping[str, Any] = MappingProxyType(_leaf_fields(KernelConfig))
_SCENARIO_FIELDS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "compare": MappingProxyType({**typing.get_type_hints(cmp.Workload), "scale": float}),
        "rcuscale": MappingProxyType(typing.get_type_hints(RcuscaleParams)),
    }
)
_BASE_CONFIGS: Mapping[str, KernelConfig] = MappingProxyType(
    {"compare": cmp.default_config(), "rcuscale": KernelConfig()}
)


def scenario_fields(scenario: str) -> Mapping[str, Any]:
    """The scenario's own knobs: compare's Workload (plus ``scale``), rcuscale's parameters."""
    if scenario not in _SCENARIO_FIELDS:
        raise ConfigError(f"scenario = {scenario!r} is unknown; allowed: {', '.join(SCENARIOS)}")
    return _SCENARIO_FIELDS[scenario]


def _unknown_field(scenario: str, name: str, where: str) -> ConfigError:
    if name in OWNED_FIELDS:
        return ConfigError(f"{where}: {name!r} cannot be swept directly; use {OWNED_FIELDS[name]}")
    kfields = _KERNEL_FIELDS
    sfields = _SCENARIO_FIELDS[scenario]
    known = [*SPECIAL_KEYS, *sfields, *kfields]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    head, dot, _ = name.partition(".")
    sub = sorted(k.partition(".")[2] for k in kfields if k.startswith(head + "."))
    if dot and sub:
        allowed = f"allowed in {head}: {', '.join(sub)}"
    elif not dot and sub:
        allowed = f"{head!r} is a table; name one of its fields: {head}.<{'|'.join(sub)}>"
    else:
        tables = sorted({k.partition(".")[0] for k in kfields if "." in k})
        top = [k for k in kfields if "." not in k]
        allowed = (
            f"allowed: {', '.join(SPECIAL_KEYS)}; {scenario} fields: {', '.join(sfields)}; "
            f"kernel fields: {', '.join(top)}, " + ", ".join(f"{t}.<field>" for t in tables)
        )
    return ConfigError(f"{where}: unknown field {name!r}{hint}; {allowed}")


# ---------------------------------------------------------------------------------------------
# From one point's plain data to the simulation's inputs


@attrs.frozen
class PreparedPoint:
    """What one simulation needs, built from a point's parameters and seed."""

    scenario: str
    config: KernelConfig
    variant: str
    kernel_config: str
    inputs: cmp.Workload | RcuscaleParams


def _choice(key: str, value: Any, allowed: Sequence[str], where: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(
            f"{where}: {key} = {value!r} is not allowed{did_you_mean(value, allowed)}; "
            f"allowed: {', '.join(allowed)}"
        )
    return value


def _apply(base: KernelConfig, changes: Mapping[str, Any], where: str) -> KernelConfig:
    try:
        return base.replace(**changes)
    except ConfigError as exc:
        error = exc
    # Validators name only the leaf ("pcp_batch = 0 ..."); find the change and name it in full.
    for key, value in changes.items():
        try:
            base.replace(**{key: value})
        except ConfigError as exc:
            msg, leaf = str(exc), key.rpartition(".")[2]
            if msg.startswith(leaf + " "):
                msg = key + msg[len(leaf) :]
            raise ConfigError(f"{where}: {msg}") from None
    raise ConfigError(f"{where}: {error}") from None


def prepare_point(
    scenario: str, params: Mapping[str, Any], seed: int, where: str = "sweep"
) -> PreparedPoint:
    """Build (and so validate) a point's KernelConfig and scenario inputs.

    The worker and the up-front check share this function, so a sweep that starts never meets a
    config error half-way. ``where`` prefixes error messages (file and table).
    """
    sfields = scenario_fields(scenario)
    defaults = RCUSCALE_DEFAULTS if scenario == "rcuscale" else COMPARE_DEFAULTS
    variant = defaults["variant"]
    kernel_config = "default"
    kernel: dict[str, Any] = {}
    if "profile" in defaults:
        kernel["kvfree.profile"] = defaults["profile"]
    scen: dict[str, Any] = {}
    for key, value in params.items():
        if key == "variant":
            variant = _choice(key, value, cmp.VARIANTS, where)
        elif key == "profile":
            kernel["kvfree.profile"] = value  # the config checks it, naming this point
        elif key == "kernel_config":
            kernel_config = _choice(key, value, KERNEL_CONFIG_NAMES, where)
        elif key in sfields:
            scen[key] = _coerce(value, sfields[key], key, where)
        elif key in _KERNEL_FIELDS:
            kernel[key] = _coerce(value, _KERNEL_FIELDS[key], key, where)
        else:
            raise _unknown_field(scenario, key, where)
    kernel["kvfree.variant"] = variant
    kernel["seed"] = seed
    config = _apply(_BASE_CONFIGS[scenario], kernel, where).with_kernel_config(kernel_config)
    inputs: cmp.Workload | RcuscaleParams
    try:
        if scenario == "compare":
            scale = scen.pop("scale", 1.0)
            inputs = cmp.Workload(**scen).scaled(scale)
        else:
            inputs = RcuscaleParams(**scen)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return PreparedPoint(scenario, config, variant, kernel_config, inputs)


def run_point(scenario: str, params: dict[str, Any], seed: int) -> dict[str, Any]:
    """The worker function: one simulation from plain data to its JSON-able result.

    Module-level and free of shared state, so a process pool or a Dask worker can import it by
    name; the result depends on ``(scenario, params, seed)`` only.
    """
    p = prepare_point(scenario, params, seed)
    if isinstance(p.inputs, cmp.Workload):
        row = cmp.row_data(p.config, p.inputs, p.variant, p.kernel_config)
        row.pop("timeline", None)
        return row
    return run_rcuscale(p.inputs, p.config).to_json()


# ---------------------------------------------------------------------------------------------
# The sweep file


@attrs.frozen
class Point:
    """One simulation of a sweep: its position, its parameters and its seed."""

    index: int
    params: dict[str, Any]
    seed: int

    def key(self) -> str:
        return point_key(self.params, self.seed)


def point_key(params: Mapping[str, Any], seed: int) -> str:
    """Identity of a point for ``resume``: its parameters and seed, canonically serialised."""
    return json.dumps({"params": params, "seed": seed}, sort_keys=True)


@attrs.frozen
class SweepSpec:
    """A parsed, validated sweep file. ``grid`` and ``fixed`` keep the file's key order."""

    scenario: str
    seeds: tuple[int, ...]
    grid: tuple[tuple[str, tuple[Any, ...]], ...]
    fixed: tuple[tuple[str, Any], ...] = ()
    samples: int | None = None
    sample_seed: int = 0
    source: str = "sweep"

    @property
    def grid_size(self) -> int:
        return math.prod(len(values) for _, values in self.grid)

    def combos(self) -> list[dict[str, Any]]:
        """Parameter sets in grid order (last key fastest), or the drawn sample of them."""
        names = [k for k, _ in self.grid]
        lists = [v for _, v in self.grid]
        fixed = dict(self.fixed)
        if self.samples is None:
            chosen: Iterator[tuple[Any, ...]] = itertools.product(*lists)
        else:
            # Draw indices of the mixed-radix grid without materialising it.
            rng = random.Random(self.sample_seed)
            picks = sorted(rng.sample(range(self.grid_size), self.samples))
            chosen = (_decode(i, lists) for i in picks)
        return [{**fixed, **dict(zip(names, values, strict=True))} for values in chosen]

    def points(self) -> list[Point]:
        out: list[Point] = []
        for combo in self.combos():
            for seed in self.seeds:
                out.append(Point(len(out), combo, seed))
        return out


def _decode(index: int, lists: Sequence[Sequence[Any]]) -> tuple[Any, ...]:
    values = []
    for values_of_key in reversed(lists):
        index, digit = divmod(index, len(values_of_key))
        values.append(values_of_key[digit])
    return tuple(reversed(values))


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    # TOML reads ``mm.pcp_batch = [...]`` as a nested table; sweeps name fields by dotted path.
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _int_at_least(value: Any, lo: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= lo


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file (every point's config is built before anything runs)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read sweep file {str(path)!r}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from exc
    return parse_spec(data, source=str(path))


def parse_spec(data: Mapping[str, Any], source: str = "sweep") -> SweepSpec:
    """Validate a sweep mapping: names, types, values, then every point's whole config."""
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(
                f"{source}: unknown key {key!r}{did_you_mean(key, TOP_LEVEL_KEYS)}; "
                f"allowed at top level: {', '.join(TOP_LEVEL_KEYS)}"
            )
    scenario = data.get("scenario")
    if scenario not in SCENARIOS:
        raise ConfigError(
            f"{source}: scenario = {scenario!r} is not allowed{did_you_mean(scenario, SCENARIOS)}; "
            "allowed: "
            f"{', '.join(repr(s) for s in SCENARIOS)}"
        )
    seeds = data.get("seeds")
    if not isinstance(seeds, list) or not seeds:
        shown = "is missing" if seeds is None else f"= {seeds!r}"
        raise ConfigError(
            f"{source}: seeds {shown}: expected a non-empty list of integers 0 .. {MAX_SEED}"
        )
    for s in seeds:
        if not _int_at_least(s, 0) or s > MAX_SEED:
            raise ConfigError(
                f"{source}: seeds: {s!r} is not a seed; allowed: integers 0 .. {MAX_SEED}"
            )
    if len(set(seeds)) != len(seeds):
        dup = next(s for s in seeds if seeds.count(s) > 1)
        raise ConfigError(f"{source}: seeds: {dup} is listed twice; each seed must be unique")

    raw_grid = data.get("grid")
    if not isinstance(raw_grid, dict) or not raw_grid:
        raise ConfigError(
            f"{source}: [grid] is {'missing' if raw_grid is None else 'empty or not a table'}; "
            "it maps field names to non-empty lists of values"
        )
    grid = _flatten(raw_grid)
    raw_fixed = data.get("fixed", {})
    if not isinstance(raw_fixed, dict):
        raise ConfigError(f"{source}: [fixed] must be a table of field = value")
    fixed = _flatten(raw_fixed)

    for name, values in grid.items():
        where = f"{source} [grid]"
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: {name} = {values!r}: expected a non-empty list of values")
        for v in values:
            if values.count(v) > 1:
                raise ConfigError(f"{where}: {name} lists {v!r} twice; each value must be unique")
        if name in fixed:
            raise ConfigError(f"{source}: {name!r} is in both [grid] and [fixed]; keep one")
    for name, value in fixed.items():
        if isinstance(value, list):
            raise ConfigError(
                f"{source} [fixed]: {name} = {value!r}: expected one value; lists go in [grid]"
            )

    samples = data.get("samples")
    size = math.prod(len(v) for v in grid.values())
    if samples is not None and (not _int_at_least(samples, 1) or samples > size):
        raise ConfigError(
            f"{source}: samples = {samples!r}: expected an integer 1 .. {size} "
            f"(the grid has {size} points)"
        )
    sample_seed = data.get("sample_seed", 0)
    if "sample_seed" in data and samples is None:
        raise ConfigError(f"{source}: sample_seed is only used with samples = N")
    if not _int_at_least(sample_seed, 0):
        raise ConfigError(f"{source}: sample_seed = {sample_seed!r}: expected an integer >= 0")

    spec = SweepSpec(
        scenario=scenario,
        seeds=tuple(seeds),
        grid=tuple((k, tuple(v)) for k, v in grid.items()),
        fixed=tuple(fixed.items()),
        samples=samples,
        sample_seed=sample_seed,
        source=source,
    )
    validate(spec)
    return spec


def validate(spec: SweepSpec) -> None:
    """Build every point's config up front; errors name the table and field, then the point."""
    seed = spec.seeds[0]
    fixed = dict(spec.fixed)
    prepare_point(spec.scenario, fixed, seed, f"{spec.source} [fixed]")
    for name, values in spec.grid:
        for v in values:
            prepare_point(spec.scenario, {**fixed, name: v}, seed, f"{spec.source} [grid]")
    for combo in spec.combos():
        shown = ", ".join(f"{k}={v!r}" for k, v in combo.items())
        prepare_point(spec.scenario, combo, seed, f"{spec.source} point ({shown})")


# ---------------------------------------------------------------------------------------------
# The results file


@attrs.frozen
class ResultsFile:
    """The complete lines of a results file; ``valid_bytes`` ends after the last of them."""

    records: tuple[dict[str, Any], ...]
    valid_bytes: int
    total_bytes: int


RECORD_KEYS = ("point", "params", "seed", "scenario", "result")


def read_results(path: str | Path) -> ResultsFile:
    """Parse a JSON-lines results file, ignoring an unterminated last line.

    Lines are written whole and fsync'ed one by one, so only the last line can be cut short (a
    crash or a kill mid-write); any other bad line is real damage and is reported.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read results file {str(path)!r}: {exc.strerror}") from exc
    records = []
    pos = 0
    lineno = 0
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            break
        lineno += 1
        line = data[pos:end]
        pos = end + 1
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ConfigError(
                f"{path}:{lineno}: not a JSON line; the file is damaged beyond its last line"
            ) from None
        if not isinstance(rec, dict) or any(k not in rec for k in RECORD_KEYS):
            raise ConfigError(
                f"{path}:{lineno}: not a sweep result (expected keys: {', '.join(RECORD_KEYS)})"
            )
        records.append(rec)
    return ResultsFile(tuple(records), pos, len(data))


def format_line(point: Point, scenario: str, result: Mapping[str, Any]) -> str:
    """One output line; sort_keys makes it the same bytes whatever executor produced it."""
    return json.dumps(
        {
            "point": point.index,
            "params": point.params,
            "seed": point.seed,
            "scenario": scenario,
            "result": result,
        },
        sort_keys=True,
    )


def _open_results(path: Path, scenario: str, resume: bool) -> set[str]:
    """Keys of points already in the file; with ``resume``, cut a torn last line off."""
    if not path.exists() or path.stat().st_size == 0:
        return set()
    if not resume:
        raise ConfigError(
            f"{path} already holds results; pass --resume to continue that sweep, "
            "or choose another --out"
        )
    existing = read_results(path)
    for rec in existing.records:
        if rec["scenario"] != scenario:
            raise ConfigError(
                f"{path} holds results of scenario {rec['scenario']!r}; this sweep runs "
                f"{scenario!r}: choose another --out"
            )
    if existing.valid_bytes != existing.total_bytes:
        with path.open("r+b") as f:
            f.truncate(existing.valid_bytes)
            f.flush()
            os.fsync(f.fileno())
    return {point_key(r["params"], r["seed"]) for r in existing.records}


# ---------------------------------------------------------------------------------------------
# Execution


@attrs.frozen
class SweepSummary:
    total: int
    skipped: int
    ran: int


def run_sweep(
    spec: SweepSpec,
    out: str | Path,
    executor: Executor,
    *,
    resume: bool = False,
    max_in_flight: int | None = None,
    runner: PointRunner = run_point,
    progress: Callable[[int, int], None] | None = None,
) -> SweepSummary:
    """Run the points not yet in ``out`` and append each result as soon as it finishes.

    ``progress(done, to_run)`` is called once before the first point and after each one. On the
    first failing point, the points not started are cancelled, those running are waited for and
    kept, and :class:`SweepError` names the point that failed.
    """
    path = Path(out)
    points = spec.points()
    done_keys = _open_results(path, spec.scenario, resume)
    todo = [p for p in points if p.key() not in done_keys]
    skipped = len(points) - len(todo)
    window = max(1, max_in_flight if max_in_flight is not None else len(todo))
    if progress is not None:
        progress(0, len(todo))
    try:
        fh = path.open("a", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write results file {str(path)!r}: {exc.strerror}") from exc
    ran = 0
    failure: tuple[Point, BaseException] | None = None
    pending: dict[Future[dict[str, Any]], Point] = {}

    def drain_one() -> None:
        nonlocal ran, failure
        finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        for fut in finished:
            point = pending.pop(fut)
            if fut.cancelled():
                continue
            exc = fut.exception()
            if exc is None:
                fh.write(format_line(point, spec.scenario, fut.result()) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
                ran += 1
                if progress is not None:
                    progress(ran, len(todo))
            elif failure is None:
                failure = (point, exc)
                for other in pending:
                    other.cancel()

    with fh:
        try:
            for point in todo:
                if failure is not None:
                    break
                fut = executor.submit(runner, spec.scenario, dict(point.params), point.seed)
                pending[fut] = point
                while len(pending) >= window:
                    drain_one()
            while pending:
                drain_one()
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    if failure is not None:
        point, error = failure
        shown = ", ".join(f"{k}={v!r}" for k, v in point.params.items())
        raise SweepError(
            f"point {point.index} ({shown}, seed {point.seed}) failed: "
            f"{type(error).__name__}: {error}; {ran} finished points are in {path}, "
            "rerun with --resume to continue"
        ) from error
    return SweepSummary(total=len(points), skipped=skipped, ran=ran)
