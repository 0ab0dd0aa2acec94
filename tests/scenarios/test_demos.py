"""Every demo in ``demos/`` runs at a small size and prints the story its docstring tells."""

from __future__ import annotations

import importlib.util
import re
import runpy
import sys
from types import ModuleType

import pytest
from simtools import ROOT

DEMOS = ROOT / "demos"
NAMES = ["rfc_in_one_screen", "batching", "memory_pressure", "rcu_table_server"]


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"demo_{name}", DEMOS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", NAMES)
def test_each_demo_has_a_story_and_runs_as_a_script(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mod = load(name)
    doc = mod.__doc__ or ""
    assert len(doc.splitlines()) >= 8  # a story, not a one-liner
    assert f"python demos/{name}.py" in doc
    monkeypatch.setattr(sys, "argv", [f"demos/{name}.py", "--help"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(DEMOS / f"{name}.py"), run_name="__main__")
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["rfc_in_one_screen", "batching", "memory_pressure"])
@pytest.mark.parametrize("objects", ["0", "-5"])
def test_each_demo_refuses_no_objects(
    name: str, objects: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--objects 0`` died in a traceback (a ConfigError, or ZeroDivisionError in batching's
    per-object figures); it is a usage error naming the option."""
    with pytest.raises(SystemExit) as exc:
        load(name).main(["--objects", objects])
    assert exc.value.code == 2
    assert f"--objects {objects}: expected a number of objects >= 1" in capsys.readouterr().err


def test_rfc_in_one_screen(capsys: pytest.CaptureFixture[str]) -> None:
    # 0.3 s of floods: the pcp list runs dry under krcp->lock a few times in that span
    assert load("rfc_in_one_screen").main(["--objects", "30000"]) == 0
    out = capsys.readouterr().out
    nowait, fast_try = out.split("=== variant fast-try")
    assert nowait.startswith(
        "=== variant nowait: GFP GFP_NOWAIT|__GFP_NOWARN under krcp->lock, "
        "PROVE_RAW_LOCK_NESTING=y ==="
    )
    # lockdep's report, naming the spinlock_t taken inside the raw_spinlock_t
    assert "[ BUG: Invalid wait context ]" in nowait
    assert "(&zone->lock){....}-{3:3}, at: rmqueue_bulk" in nowait
    assert "(krc.lock){....}-{2:2}, at: kvfree_call_rcu" in nowait
    assert fast_try.startswith(": GFP GFP_NOWAIT|__GFP_NOWARN|__GFP_FAST_TRY under krcp->lock")
    assert "(no splat)" in fast_try and "BUG:" not in fast_try
    pays = {}
    for m in re.finditer(
        r"^  (\S+)\s+splats=(\d+)\s+block allocs=(\d+)\s+failed=(\d+).*rcu_head fallbacks=(\d+)"
        r"\s+synchronize_rcu fallbacks=(\d+)",
        out,
        re.M,
    ):
        pays[m.group(1)] = tuple(int(g) for g in m.groups()[1:])
    assert set(pays) == {"nowait", "fast-try"}
    splats, _, failed, head, sync = pays["nowait"]
    assert splats >= 1 and failed == 0 and head == sync == 0
    splats, _, failed, head, sync = pays["fast-try"]
    # fast-try stays silent; it pays only when every pcp list of its CPU is empty (its loop
    # takes any migratetype's list), which this machine makes rare
    assert splats == 0 and head + sync <= failed
    other = {m.group(1): int(m.group(2)) for m in re.finditer(
        r"^  (\S+)\s.*pages of another migratetype=(\d+)$", out, re.M)}
    # nowait refills its own list under zone->lock; only the RFC's loop reads the others
    assert other["nowait"] == 0
    if failed == 0:
        said = (f"but {other['fast-try']} of its block pages came from" in out
                if other["fast-try"] else "fast-try paid nothing in this run" in out)
        assert said, out


def test_batching(capsys: pytest.CaptureFixture[str]) -> None:
    assert load("batching").main(["--objects", "300"]) == 0
    out = capsys.readouterr().out
    rows = {}
    for m in re.finditer(r"^(synchronize|call_rcu|kvfree_rcu)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+"
                         r"(\d+)$", out, re.M):
        rows[m.group(1)] = (int(m.group(2)), float(m.group(3)), float(m.group(4)),
                            int(m.group(5)))
    assert list(rows) == ["synchronize", "call_rcu", "kvfree_rcu"]
    sync, call, kv = rows["synchronize"], rows["call_rcu"], rows["kvfree_rcu"]
    assert call[0] == kv[0] == 300
    assert kv[1] < call[1] < sync[1]  # CPU ns per object: bulk < per-object < per-GP
    assert kv[2] < sync[2]  # the caller never waits for a grace period
    assert sync[3] > call[3] and sync[3] > kv[3]  # a grace period per object
    assert re.search(r"kvfree_rcu vs synchronize: [\d.]+x less CPU time per object", out)
    assert re.search(r"kvfree_rcu vs call_rcu: [\d.]+x less CPU time per object", out)


def test_memory_pressure(capsys: pytest.CaptureFixture[str]) -> None:
    assert load("memory_pressure").main(["--objects", "2000"]) == 0
    out = capsys.readouterr().out
    assert "shrinker scans" in out and "cache pages drained" in out
    rows = {}
    for m in re.finditer(r"^(roomy|squeezed)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$",
                         out, re.M):
        rows[m.group(1)] = tuple(int(g) for g in m.groups()[1:])
    assert list(rows) == ["roomy", "squeezed"]
    kswapd, scans, drained, _, _, free = rows["roomy"]
    assert kswapd == scans == drained == 0
    kswapd, scans, drained, _, _, free_squeezed = rows["squeezed"]
    assert kswapd > 0 and scans > 0 and drained > 0  # the shrinker emptied the page caches
    assert free_squeezed < free


@pytest.mark.parametrize("loop", ["trio", "asyncio"])
def test_rcu_table_server(capsys: pytest.CaptureFixture[str], loop: str) -> None:
    """Real sockets on 127.0.0.1: 3 clients x 50 requests against a table swapped under them,
    RCU-protected then lock-protected, on each event loop."""
    demo = load("rcu_table_server")
    assert demo.main(["--loop", loop, "--clients", "3", "--requests", "50"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"event loop: {loop}; 3 clients x 50 requests on 127.0.0.1")
    rows = {}
    for m in re.finditer(
        r"^(rcu|lock)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", out, re.M
    ):
        rows[m.group(1)] = tuple(int(g) for g in m.groups()[1:])
    assert list(rows) == ["rcu", "lock"], out
    for served, rate, p50, p99, swaps, errors, dead in rows.values():
        assert served == 150 and rate > 0 and 0 < p50 <= p99 and swaps > 0
        assert errors == 0 and dead == 0  # no reader ever saw a released table
    assert re.search(r"^rcu p99 / lock p99: \d+\.\d\d$", out, re.M)
    m = re.search(r"served (\d+) requests on 127\.0\.0\.1:(\d+) while the writer swapped the "
                  r"table (\d+) times", out)
    assert m is not None, out
    assert int(m.group(1)) == 150 and int(m.group(2)) > 0
    swaps = int(m.group(3))
    assert "answers ok=150 errors=0 wrong=0; readers that saw a released table: 0" in out
    m = re.search(r"old tables released after their grace period: (\d+) \((\d+) grace periods\)",
                  out)
    assert m is not None, out
    assert int(m.group(1)) == swaps  # every retired table released, after the barrier


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--clients", "0"], "--clients: 0: expected a number >= 1"),
     (["--requests", "-1"], "--requests: -1: expected a number >= 1"),
     (["--clients", "x"], "--clients: 'x' is not a whole number")],
)
def test_rcu_table_server_refuses_an_empty_load(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--clients 0`` served nothing and printed "rcu p99 / lock p99: 0.00" as a result."""
    demo = load("rcu_table_server")
    with pytest.raises(SystemExit) as exc:
        demo.main(args)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_rcu_table_server_help_says_the_whole_first_sentence(
    capsys: pytest.CaptureFixture[str],
) -> None:
    demo = load("rcu_table_server")
    with pytest.raises(SystemExit):
        demo.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert ("hammer it, against the same server with a lock-protected table, on asyncio or "
            "Trio.") in out


@pytest.mark.parametrize("loop", ["trio", "asyncio"])
@pytest.mark.parametrize("table", ["rcu", "lock"])
def test_rcu_table_server_under_constant_swapping(loop: str, table: str) -> None:
    """The writer reloads back to back: readers race it on every request."""
    demo = load("rcu_table_server")
    r = demo.run_on(loop, lambda: demo.run(3, 50, 0, 0.0, table))
    assert r["swaps"] > 0
    assert (r["ok"], r["errors"], r["wrong"], r["dead"]) == (150, 0, 0, 0)
    # RCU retires every replaced table after a grace period; the lock table is reloaded in place
    assert r["tables_released"] == (r["swaps"] if table == "rcu" else 0)
    assert r["p50_us"] <= r["p99_us"] and r["requests_per_s"] > 0
