"""Sweeps: spec validation, grid/sample expansion, streaming, resume, executors, plots."""

from __future__ import annotations

import json
import os
import random
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from simtools import ROOT

from rcukit.cli import main
from rcukit.errors import ConfigError, SweepError
from rcukit.scenarios import sweep as sw
from rcukit.scenarios import sweep_plot as sp
from rcukit.scenarios.compare import Workload, default_config
from rcukit.scenarios.rcuscale import RcuscaleParams

SMALL = """\
scenario = "compare"
seeds = [1, 2]

[grid]
variant = ["nowait", "fast-try"]

[fixed]
objects_per_cpu = 200
"""


def fake_runner(scenario: str, params: dict[str, Any], seed: int) -> dict[str, Any]:
    """A stand-in simulation: deterministic from its inputs, cheap, built from the real config."""
    p = sw.prepare_point(scenario, params, seed)
    rng = random.Random(f"{seed}:{json.dumps(params, sort_keys=True)}")
    assert isinstance(p.inputs, Workload)
    return {
        "variant": p.variant,
        "objects": p.inputs.objects_per_cpu * min(p.inputs.flood_cpus, p.config.nr_cpus),
        "pcp_batch": p.config.mm.pcp_batch,
        "latency_ns": {"p99": rng.randrange(1000), "p50": rng.random()},
    }


def failing_runner(scenario: str, params: dict[str, Any], seed: int) -> dict[str, Any]:
    if seed == 2:
        raise RuntimeError("simulated crash")
    return fake_runner(scenario, params, seed)


def spec_of(text: str, tmp_path: Path) -> sw.SweepSpec:
    f = tmp_path / "sweep.toml"
    f.write_text(text)
    return sw.load_spec(f)


def lines_by_point(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return sorted(lines, key=lambda line: json.loads(line)["point"])


# --- the sweep file ------------------------------------------------------------------------


def test_grid_expands_in_file_order_times_seeds(tmp_path: Path) -> None:
    spec = spec_of(
        'scenario = "compare"\nseeds = [3, 5]\n[grid]\nvariant = ["nowait", "nolock"]\n'
        "mm.pcp_batch = [7, 31, 63]\n[fixed]\nnr_cpus = 2\n",
        tmp_path,
    )
    points = spec.points()
    assert spec.grid_size == 6
    assert [p.index for p in points] == list(range(12))
    assert points[0].params == {"nr_cpus": 2, "variant": "nowait", "mm.pcp_batch": 7}
    assert (points[0].seed, points[1].seed) == (3, 5)
    assert points[2].params["mm.pcp_batch"] == 31  # last grid key varies fastest
    assert points[6].params == {"nr_cpus": 2, "variant": "nolock", "mm.pcp_batch": 7}


def test_prepare_point_applies_kernel_and_scenario_fields() -> None:
    p = sw.prepare_point(
        "compare",
        {"mm.pcp_batch": 31, "cost.pcp_alloc_ns": 99, "nr_cpus": 2, "scale": 0.5,
         "objects_per_cpu": 400, "kernel_config": "rt", "variant": "nolock"},
        7,
    )
    assert (p.config.mm.pcp_batch, p.config.cost.pcp_alloc_ns, p.config.nr_cpus) == (31, 99, 2)
    assert (p.config.seed, p.config.preempt_rt, p.config.kvfree.variant) == (7, True, "nolock")
    assert p.config.mm.zone_pages == default_config().mm.zone_pages  # compare's machine
    assert isinstance(p.inputs, Workload) and p.inputs.objects_per_cpu == 200
    q = sw.prepare_point("rcuscale", {"kfree_loops": 2}, 0)
    assert (q.config.kvfree.profile, q.variant) == ("v6.1", "page-cache")
    assert isinstance(q.inputs, RcuscaleParams) and q.inputs.kfree_loops == 2


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    data=st.data(),
)
def test_samples_are_distinct_grid_points_and_deterministic(
    sizes: list[int], data: st.DataObject
) -> None:
    grid = {f"cost.{name}": [10 * i for i in range(1, n + 1)]
            for name, n in zip(("pcp_alloc_ns", "kfree_ns", "vmalloc_ns"), sizes, strict=False)}
    total = 1
    for n in sizes:
        total *= n
    samples = data.draw(st.integers(1, total))
    sample_seed = data.draw(st.integers(0, 2**32))
    spec = sw.parse_spec({"scenario": "compare", "seeds": [0], "grid": grid,
                          "samples": samples, "sample_seed": sample_seed})
    combos = spec.combos()
    full = sw.parse_spec({"scenario": "compare", "seeds": [0], "grid": grid}).combos()
    keys = [json.dumps(c, sort_keys=True) for c in combos]
    assert len(combos) == samples and len(set(keys)) == samples
    assert all(c in full for c in combos)
    assert combos == spec.combos()  # same sample_seed, same points
    if samples == total:
        assert sorted(keys) == sorted(json.dumps(c, sort_keys=True) for c in full)


BAD_FILES = [
    ('[grid]\nmm.pcp_bach = [1]', "mm.pcp_bach", "pcp_batch"),
    ('[grid]\nobject_per_cpu = [1]', "object_per_cpu", "objects_per_cpu"),
    ("[grid]", "[grid]", "non-empty"),
    ('[grid]\nvariant = []', "variant", "non-empty list"),
    ('seeds = []\n[grid]\nvariant = ["nowait"]', "seeds", "non-empty list"),
    ('seedz = [1]\n[grid]\nvariant = ["nowait"]', "seedz", "seeds"),
    ('seeds = [1, -2]\n[grid]\nvariant = ["nowait"]', "seeds", "0 .."),
    ('seeds = [1, "2"]\n[grid]\nvariant = ["nowait"]', "seeds", "0 .."),
    ('seeds = [1, 1]\n[grid]\nvariant = ["nowait"]', "seeds", "unique"),
    ('seeds = 1\n[grid]\nvariant = ["nowait"]', "seeds", "list of integers"),
    ('[grid]\nnr_cpus = ["four"]', "nr_cpus", "expected an integer"),
    ('[grid]\nobjects_per_cpu = [1.5]', "objects_per_cpu", "expected an integer"),
    ('[grid]\nnr_cpus = [2, 0]', "nr_cpus", "1 .. 4096"),
    ('[grid]\nmm.pcp_batch = [0]', "mm.pcp_batch", "1 .. "),
    ('[grid]\nvariant = ["nowait", "bogus"]', "variant", "fast-try, nowait"),
    ('[grid]\nkernel_config = ["rt", "debug"]', "kernel_config", "default, lockdep, rt"),
    ('[grid]\nseed = [1, 2]', "seed", "seeds"),
    ('[grid]\nkvfree.variant = ["nowait"]', "kvfree.variant", "'variant'"),
    ('[grid]\nvariant = ["nowait"]\n[fixed]\nvariant = "nolock"', "variant", "both"),
    ('[grid]\nvariant = ["nowait"]\n[fixed]\nnr_cpus = [1, 2]', "nr_cpus", "one value"),
    ('samples = 3\n[grid]\nvariant = ["nowait"]', "samples", "1 .. 1"),
    ('[grid]\nscale = [0]', "scale", "> 0"),
]


@pytest.mark.parametrize(("body", "field", "allowed"), BAD_FILES)
def test_bad_sweep_file_exits_2_naming_the_field(
    body: str, field: str, allowed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head = 'scenario = "compare"\n' + ("" if body.startswith("seeds") else "seeds = [1]\n")
    f = tmp_path / "bad.toml"
    f.write_text(head + body + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["sweep", str(f), "--out", str(out), "--inline"]) == 2
    err = capsys.readouterr().err
    assert "rcukit sweep: error:" in err and field in err and allowed in err, err
    assert not out.exists()  # nothing ran, nothing written


def test_bad_scenario_and_top_level_key_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"scenario = 'torture'.*'compare', 'rcuscale'"):
        spec_of('scenario = "torture"\nseeds = [1]\n[grid]\nnr_cpus = [1]\n', tmp_path)
    with pytest.raises(ConfigError, match=r"unknown key 'seed'.*seeds"):
        spec_of('scenario = "compare"\nseed = [1]\n[grid]\nnr_cpus = [1]\n', tmp_path)
    with pytest.raises(ConfigError, match=r"unknown field 'objects_per_cpu'.*rcuscale fields"):
        spec_of('scenario = "rcuscale"\nseeds = [1]\n[grid]\nobjects_per_cpu = [1]\n', tmp_path)


# --- running and streaming -----------------------------------------------------------------


def test_inline_sweep_streams_one_sorted_json_line_per_point(tmp_path: Path) -> None:
    spec = spec_of(SMALL, tmp_path)
    out = tmp_path / "r.jsonl"
    seen: list[tuple[int, int]] = []
    summary = sw.run_sweep(spec, out, sw.InlineExecutor(), max_in_flight=1,
                           runner=fake_runner, progress=lambda d, t: seen.append((d, t)))
    assert summary == sw.SweepSummary(total=4, skipped=0, ran=4)
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
    lines = out.read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    assert [r["point"] for r in recs] == [0, 1, 2, 3]
    assert all(line == json.dumps(r, sort_keys=True) for line, r in zip(lines, recs, strict=True))
    assert recs[2] == {
        "point": 2, "seed": 1, "scenario": "compare",
        "params": {"objects_per_cpu": 200, "variant": "fast-try"},
        "result": fake_runner("compare", recs[2]["params"], 1),
    }


def test_inline_and_process_pool_give_identical_files(tmp_path: Path) -> None:
    spec = spec_of(SMALL.replace("[1, 2]", "[1, 2, 3]"), tmp_path)
    a, b = tmp_path / "inline.jsonl", tmp_path / "pool.jsonl"
    sw.run_sweep(spec, a, sw.InlineExecutor(), runner=fake_runner)
    with ProcessPoolExecutor(2) as pool:
        sw.run_sweep(spec, b, pool, max_in_flight=3, runner=fake_runner)
    assert lines_by_point(a) == lines_by_point(b)
    assert len(lines_by_point(a)) == 6


def test_resume_after_torn_write_runs_only_the_missing_points(tmp_path: Path) -> None:
    spec = spec_of(SMALL.replace("[1, 2]", "[1, 2, 3]"), tmp_path)
    ref, out = tmp_path / "ref.jsonl", tmp_path / "out.jsonl"
    sw.run_sweep(spec, ref, sw.InlineExecutor(), runner=fake_runner)
    full = ref.read_bytes()
    # A crash after two whole lines, half-way through the third.
    cut = [i for i, c in enumerate(full) if c == ord("\n")][1] + 1
    out.write_bytes(full[: cut + 25])
    ran: list[int] = []

    def counting(scenario: str, params: dict[str, Any], seed: int) -> dict[str, Any]:
        ran.append(seed)
        return fake_runner(scenario, params, seed)

    with pytest.raises(ConfigError, match="--resume"):
        sw.run_sweep(spec, out, sw.InlineExecutor(), runner=counting)
    summary = sw.run_sweep(spec, out, sw.InlineExecutor(), resume=True, runner=counting)
    assert (summary.skipped, summary.ran, len(ran)) == (2, 4, 4)
    assert lines_by_point(out) == lines_by_point(ref)
    assert out.read_bytes().endswith(b"\n")
    again = sw.run_sweep(spec, out, sw.InlineExecutor(), resume=True, runner=counting)
    assert (again.ran, again.skipped, len(ran)) == (0, 6, 4)


def test_interrupt_keeps_finished_points_and_resume_finishes(tmp_path: Path) -> None:
    spec = spec_of(SMALL, tmp_path)
    out = tmp_path / "out.jsonl"
    calls: list[int] = []

    def interrupted(scenario: str, params: dict[str, Any], seed: int) -> dict[str, Any]:
        calls.append(seed)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return fake_runner(scenario, params, seed)

    with pytest.raises(KeyboardInterrupt):
        sw.run_sweep(spec, out, sw.InlineExecutor(), max_in_flight=1, runner=interrupted)
    assert [json.loads(line)["point"] for line in out.read_text().splitlines()] == [0, 1]
    summary = sw.run_sweep(spec, out, sw.InlineExecutor(), resume=True, runner=interrupted)
    assert (summary.skipped, summary.ran) == (2, 2)
    assert sorted(json.loads(line)["point"] for line in out.read_text().splitlines()) == [
        0, 1, 2, 3,
    ]


def test_resume_refuses_damage_and_other_scenarios(tmp_path: Path) -> None:
    spec = spec_of(SMALL, tmp_path)
    out = tmp_path / "out.jsonl"
    out.write_text('{"point": 0}\nnot json\n')
    with pytest.raises(ConfigError, match=r"out.jsonl:1: not a sweep result"):
        sw.run_sweep(spec, out, sw.InlineExecutor(), resume=True, runner=fake_runner)
    out.write_text(
        json.dumps({"point": 0, "params": {}, "seed": 1, "scenario": "x", "result": {}})
        + "\nnot json\n"
    )
    with pytest.raises(ConfigError, match=r"out.jsonl:2: not a JSON line"):
        sw.run_sweep(spec, out, sw.InlineExecutor(), resume=True, runner=fake_runner)
    out.write_text(
        json.dumps({"point": 0, "params": {}, "seed": 1, "scenario": "rcuscale", "result": {}})
        + "\n"
    )
    with pytest.raises(ConfigError, match="scenario 'rcuscale'"):
        sw.run_sweep(spec, out, sw.InlineExecutor(), resume=True, runner=fake_runner)


def test_a_failing_point_keeps_finished_ones_and_names_itself(tmp_path: Path) -> None:
    spec = spec_of(SMALL, tmp_path)
    out = tmp_path / "out.jsonl"
    with pytest.raises(SweepError, match=r"point 1 \(.*variant='nowait'.*seed 2\) failed: "
                                         r"RuntimeError: simulated crash"):
        sw.run_sweep(spec, out, sw.InlineExecutor(), max_in_flight=1, runner=failing_runner)
    assert [json.loads(line)["point"] for line in out.read_text().splitlines()] == [0]


def test_inline_executor_captures_exceptions() -> None:
    fut = sw.InlineExecutor().submit(int, "x")
    assert fut.done() and isinstance(fut.exception(), ValueError)
    assert sw.InlineExecutor().submit(sum, [1, 2]).result() == 3


def test_open_executor_kinds() -> None:
    with sw.open_executor(0) as inline:
        assert isinstance(inline.executor, sw.InlineExecutor) and inline.max_in_flight == 1
    with sw.open_executor(2) as pool:
        assert isinstance(pool.executor, ProcessPoolExecutor) and pool.max_in_flight == 4
        assert pool.executor.submit(os.getpid).result() != os.getpid()
    with pytest.raises(ConfigError, match="--workers -1"), sw.open_executor(-1):
        pass


# --- plots ---------------------------------------------------------------------------------


def _records() -> list[dict[str, Any]]:
    recs = []
    i = 0
    for v in ("nowait", "fast-try"):
        for batch in (31, 7):
            for seed in (1, 2):
                recs.append({"point": i, "seed": seed, "scenario": "compare",
                             "params": {"variant": v, "mm.pcp_batch": batch},
                             "result": {"fail": batch * seed, "lat": {"p99": 1.0}, "name": v}})
                i += 1
    return recs


def test_tabulate_averages_seeds_only() -> None:
    t = sp.tabulate(_records(), "mm.pcp_batch", "fail", by="variant")
    assert t.x_values == (7, 31) and t.by_values == ("nowait", "fast-try")
    assert t.means() == [[10.5, 46.5], [10.5, 46.5]]
    cell = t.cells[0][0]
    assert cell is not None and (cell.low, cell.high, cell.n) == (7.0, 14.0, 2)
    one = sp.tabulate(_records(), "mm.pcp_batch", "lat.p99", where={"variant": "nowait"})
    assert one.means() == [[1.0, 1.0]] and one.seeds() == 2
    with pytest.raises(ConfigError, match=r"'variant' varies.*--where variant=VALUE"):
        sp.tabulate(_records(), "mm.pcp_batch", "fail")
    with pytest.raises(ConfigError, match=r"figure 'lat.p50' is not a number.*fail, lat.p99"):
        sp.tabulate(_records(), "variant", "lat.p50", by="mm.pcp_batch")
    with pytest.raises(ConfigError, match="'nr_cpus' is not a swept parameter"):
        sp.tabulate(_records(), "nr_cpus", "fail")
    # A --where value no point has names the values that were swept.
    with pytest.raises(ConfigError, match=re.escape(
        "no point matches --where mm.pcp_batch=8 (mm.pcp_batch takes 7, 31)"
    )):
        sp.tabulate(_records(), "variant", "fail", where={"mm.pcp_batch": 8})
    assert sp.parse_where(["a=31", "b=nowait", "c=0.5"]) == {"a": 31, "b": "nowait", "c": 0.5}


def test_plot_cli_writes_line_plot_and_heat_map(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib", reason="plots need the plot extra (CI installs it)")
    res = tmp_path / "r.jsonl"
    res.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in _records()))
    lines, heat = tmp_path / "lines.png", tmp_path / "heat.png"
    assert main(["sweep", "--plot", str(res), "--x", "mm.pcp_batch", "--lines", "variant",
                 "--figure", "fail", "--out-plot", str(lines)]) == 0
    assert main(["sweep", "--plot", str(res), "--x", "mm.pcp_batch", "--y", "variant",
                 "--figure", "fail", "--out-plot", str(heat)]) == 0
    for png in (lines, heat):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "heat map of fail" in capsys.readouterr().out
    assert main(["sweep", "--plot", str(res), "--x", "variant", "--figure", "fail",
                 "--out-plot", str(heat), "--jobs", "2"]) == 2
    assert "--jobs runs a sweep" in capsys.readouterr().err


# --- the real scenarios, on every executor -------------------------------------------------


def test_example_sweep_file_is_valid() -> None:
    spec = sw.load_spec(ROOT / "examples" / "sweep-small.toml")
    assert spec.scenario == "compare" and spec.grid_size == 9 and len(spec.points()) == 18


def _run_real(tmp_path: Path, name: str, *how: str) -> list[str]:
    f = tmp_path / "small.toml"
    f.write_text(SMALL)
    out = tmp_path / f"{name}.jsonl"
    assert main(["sweep", str(f), "--out", str(out), *how]) == 0
    return lines_by_point(out)


def test_real_sweep_inline_and_process_pool_are_byte_identical(tmp_path: Path) -> None:
    ref = _run_real(tmp_path, "inline", "--inline")
    assert len(ref) == 4
    row = json.loads(ref[0])["result"]
    assert row["variant"] == "nowait" and row["kernel_config"] == "default"
    assert "timeline" not in row and row["kvfree_calls"] > 0
    assert _run_real(tmp_path, "pool", "--jobs", "2") == ref
    # the old spelling still works (0 = inline), as does compare's 1 = inline
    assert _run_real(tmp_path, "old", "--workers", "2") == ref
    assert _run_real(tmp_path, "one", "--jobs", "1") == ref


def test_real_sweep_on_a_dask_cluster_matches_inline(tmp_path: Path) -> None:
    distributed = pytest.importorskip(
        "distributed", reason="the Dask test needs the dask extra: pip install 'rcukit[dask]'"
    )
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        on_dask = _run_real(tmp_path, "dask", "--scheduler", cluster.scheduler_address)
    assert len(on_dask) == 4
    assert on_dask == _run_real(tmp_path, "inline", "--workers", "0")


_OWNER = """
import time
from rcukit.scenarios.executors import open_executor
if __name__ == "__main__":
    with open_executor(2) as choice:
        futs = [choice.executor.submit(time.sleep, 60) for _ in range(2)]
        time.sleep(1.0)
        print("ready", flush=True)
        time.sleep(120)
"""


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="walks /proc for the pool")
def test_pool_workers_exit_when_their_owner_is_killed(tmp_path: Path) -> None:
    """kill -9 of a sweep leaves nobody to shut its pool down: the workers notice their owner
    is gone (executors.watch_parent) and exit, and the forkserver and resource tracker, whose
    pipes they held, follow."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "owner.py"
    script.write_text(_OWNER, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                             env=env, stderr=subprocess.DEVNULL)
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
        pool = _descendants(owner.pid)
        assert len(pool) >= 3  # the forkserver, its two workers (and the resource tracker)
    finally:
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        owner.stdout.close()
    deadline = time.monotonic() + 10
    while any(_running(p) for p in pool) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [p for p in pool if _running(p)] == []


_INTERRUPTED_OWNER = """
import time
from rcukit.scenarios.executors import open_executor
if __name__ == "__main__":
    try:
        with open_executor(2) as choice:
            futs = [choice.executor.submit(time.sleep, 60) for _ in range(4)]
            time.sleep(1.0)
            raise KeyboardInterrupt  # Ctrl-C while every worker runs a long job
    except KeyboardInterrupt:
        print("interrupted", flush=True)
"""


def test_an_interrupted_pool_stops_its_workers_instead_of_waiting_for_their_jobs(
    tmp_path: Path,
) -> None:
    """Ctrl-C of ``rcukit compare --jobs 2`` printed "interrupted" and then sat 40 s: the jobs
    already handed to workers ran to the end and interpreter exit joined them. Nobody wants
    those results (the interrupted command records none), so the workers are stopped."""
    import subprocess
    import sys
    import time

    script = tmp_path / "owner.py"
    script.write_text(_INTERRUPTED_OWNER, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    elapsed = time.monotonic() - t0
    assert proc.stdout == "interrupted\n" and proc.returncode == 0, proc.stderr
    assert elapsed < 30  # the jobs sleep 60 s each
