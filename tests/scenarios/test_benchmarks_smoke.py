"""The benchmark suite runs end to end and reports every figure (sizes shrunk; no timings)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from simtools import ROOT

FIGURES = (
    "sim_kvfree_ns_per_call",
    "sim_kvfree_vs_bare_loop",
    "sim_kvfree_shuffled_vs_bare_loop",
    "sim_flood_kmalloc_vs_bare_loop",
    "sim_flood_vs_bare_loop",
    "sim_slab_page_floor_vs_bare_loop",
    "rcuscale_published",
    "sim_events_per_wall_second",
    "sim_model_ops_per_wall_second",
    "sim_handoffs_per_wall_second",
    "sim_handoff_wall_share",
    "app_read_lock_vs_bare_with",
    "app_read_lock_vs_trio_lock",
    "app_read_lock_vs_trio_lock_nowait",
    "app_kvfree_vs_call_rcu",
    "app_kvfree_vs_synchronize_each",
    "app_table_server_rcu_p99_vs_lock",
    "app_asyncio_read_lock_vs_bare_with",
    "app_asyncio_read_lock_vs_asyncio_lock",
    "app_asyncio_kvfree_vs_call_rcu",
    "app_asyncio_kvfree_vs_synchronize_each",
    "app_asyncio_table_server_rcu_p99_vs_lock",
    "gp_scaling_1024_vs_16",
    "gp_scaling_1024_vs_16_sim",
    "gp_scaling_1024_vs_16_app",
    "sim_bytes_per_pending_object",
)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def test_run_py_quick_json_reports_every_figure() -> None:
    env = {**os.environ, "RCUKIT_BENCH_TINY": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for key in FIGURES:
        assert _is_number(out[key]), (key, out.get(key))
        d = out["details"][key]
        assert d["value"] == out[key]
        assert all(_is_number(v) for v in d["absolute"].values()), (key, d["absolute"])
        assert d["unit"] and d["note"]
        assert d["passed"] in (True, False, None)
    assert set(out) == {*FIGURES, "details", "env"}
    assert out["env"]["mode"] == "tiny"
    assert out["env"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert _is_number(out["env"]["cpu_count"])
    # every figure with a target says which way it must go
    assert out["details"]["sim_kvfree_vs_bare_loop"]["target"] == "<= 25"
    assert out["details"]["sim_kvfree_shuffled_vs_bare_loop"]["target"] == "<= 25"
    assert out["details"]["app_kvfree_vs_call_rcu"]["target"] == ">= 10"  # issue 16
    assert out["details"]["sim_flood_vs_bare_loop"]["target"] == "<= 1"
    assert out["details"]["rcuscale_published"]["target"] == ">= 16.3"


def test_run_py_rejects_an_unknown_group() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--only", "nosuch"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "unknown group nosuch" in proc.stderr
