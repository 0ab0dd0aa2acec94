"""``rcukit rcuscale``: the kernel's kfree_rcu_test banner and closing line, --json, the
batching switches and bad module parameters (kernel.md section 5)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from clitools import run_cli

from rcukit.cli import main
from rcukit.config import KernelConfig
from rcukit.errors import ConfigError
from rcukit.scenarios.rcuscale import RcuscaleParams, run_rcuscale

CLOSING = re.compile(
    r"^Total time taken by all kfree'ers: (\d+) ns, loops: (\d+), batches: (\d+), "
    r"memory footprint: (\d+)MB$",
    re.M,
)
#: Small but long enough (one CPU, 40k objects, ~2 ms) that grace periods elapse without
#: batching.
SMALL = ["--cpus", "1", "--kfree-alloc-num", "4000", "--kfree-loops", "10"]


def rcuscale_json(*extra: str) -> dict[str, Any]:
    rc, out, err = run_cli(["rcuscale", "--json", *SMALL, *extra])
    assert rc == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


def test_banner_and_closing_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rcuscale", "--kfree-alloc-num", "500", "--kfree-loops", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "--- kfree_rcu_test: kfree_mult=1 kfree_by_call_rcu=0 kfree_nthreads=4 "
        "kfree_alloc_num=500 kfree_loops=4 kfree_rcu_test_double=0 kfree_rcu_test_single=0\n"
        "kfree object size=24, kfree_by_call_rcu=0\n"
    )
    m = CLOSING.search(out)
    assert m is not None, out
    total, loops, batches, mb = map(int, m.groups())
    assert total > 0 and loops == 4 and batches >= 0 and mb >= 0


@pytest.fixture(scope="module")
def batched() -> dict[str, Any]:
    return rcuscale_json()


@pytest.fixture(scope="module")
def unbatched() -> dict[str, Any]:
    return rcuscale_json("--no-batch")


def test_json_keys(batched: dict[str, Any]) -> None:
    assert {"total_time_ns", "loops", "batches", "memory_footprint_mb",
            "records_per_block_mean"} <= set(batched)
    assert batched["loops"] == 10 and batched["objects"] == 40_000
    assert batched["nthreads"] == 1
    assert (batched["profile"], batched["variant"]) == ("v6.1", "page-cache")
    # The mean covers every block freed (it is read after the final barrier): the v6.1 kick
    # drains each CPU at about a block's worth (KVFREE_BULK_MAX_ENTR = 510).
    assert 400 < batched["records_per_block_mean"] <= 510


def test_json_is_deterministic(batched: dict[str, Any]) -> None:
    assert rcuscale_json() == batched


def test_no_batch_is_one_call_rcu_per_object(
    batched: dict[str, Any], unbatched: dict[str, Any]
) -> None:
    """Pre-5.5: no blocks at all; every object is a callback, and the run takes longer."""
    assert unbatched["params"]["no_batch"] is True
    assert unbatched["records_per_block_mean"] == 0
    assert unbatched["batches"] != batched["batches"]
    assert unbatched["batches"] > batched["batches"]
    assert unbatched["total_time_ns"] > batched["total_time_ns"]


def test_kfree_by_call_rcu(batched: dict[str, Any]) -> None:
    doc = rcuscale_json("--kfree-by-call-rcu")
    assert doc["params"]["kfree_by_call_rcu"] is True
    assert doc["records_per_block_mean"] == 0  # call_rcu(&p->rh, kfree): no blocks
    assert doc["total_time_ns"] > batched["total_time_ns"]
    rc, out, _ = run_cli(["rcuscale", "--kfree-by-call-rcu", "--kfree-alloc-num", "10",
                          "--kfree-loops", "1"])
    assert rc == 0 and "kfree_by_call_rcu=1" in out


@pytest.mark.parametrize("form", ["single", "double"])
def test_single_and_double_forms(form: str) -> None:
    r = run_rcuscale(
        RcuscaleParams(kfree_alloc_num=600, kfree_loops=2, kfree_nthreads=2,
                       kfree_rcu_test_single=form == "single",
                       kfree_rcu_test_double=form == "double"),
        KernelConfig(nr_cpus=2).replace(**{"kvfree.profile": "v5.9"}),
    )
    assert r.objects == 2 * 2 * 600
    assert f"kfree_rcu_test_{form}=1" in r.banner()
    # 600 objects per loop and CPU, each loop drained into a block (v5.9 allocates in-lock)
    assert 200 < r.records_per_block_mean <= 510


def test_kfree_mult_and_nthreads_in_the_banner() -> None:
    rc, out, err = run_cli(["rcuscale", "--kfree-mult", "3", "--kfree-nthreads", "3", "--cpus",
                            "2", "--kfree-alloc-num", "50", "--kfree-loops", "2"])
    assert rc == 0, err
    assert "kfree_mult=3" in out and "kfree_nthreads=3" in out
    assert "kfree object size=72," in out
    assert CLOSING.search(out) is not None


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--kfree-loops", "0"], "kfree_loops = 0: it must be an integer >= 1"),
        (["--kfree-alloc-num", "0"], "kfree_alloc_num = 0: it must be an integer >= 1"),
        (["--kfree-nthreads", "-2"], "kfree_nthreads = -2: it must be an integer >= -1"),
        (["--kfree-nthreads", "0"], "kfree_nthreads = 0"),
        (["--kfree-mult", "0"], "kfree_mult = 0: it must be an integer >= 1"),
        (["--kfree-loops", "many"], "invalid int value: 'many'"),
        (["--profile", "v9"], "allowed: rfc, v5.9, v5.11, v5.13, v6.1, v6.3"),
        (["--variant", "bogus"], "unknown allocator variant 'bogus'"),
        (["--cpus", "0"], "nr_cpus = 0 is out of range"),
        (["--config", "/nonexistent/k.toml"], "cannot read config file"),
    ],
)
def test_bad_parameters_exit_2(args: list[str], expect: str) -> None:
    rc, out, err = run_cli(["rcuscale", "--kfree-alloc-num", "5", "--kfree-loops", "1", *args])
    assert rc == 2 and out == ""
    assert expect in err
    assert "Traceback" not in err


def test_params_validate_on_construction() -> None:
    with pytest.raises(ConfigError, match="kfree_loops"):
        RcuscaleParams(kfree_loops=-1)
