"""``rcukit compare``: JSON shape and determinism, the table and verdict, config files, bad
arguments (exit 2 naming what is allowed), plots, traces and host zoneinfo."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from clitools import run_cli
from simtools import FIXTURES

import rcukit.mm.zoneinfo as zoneinfo_mod
from rcukit.cli import main
from rcukit.config import KernelConfig
from rcukit.scenarios import compare as cmp

FIXTURE_ZONEINFO = FIXTURES / "zoneinfo.txt"
VARIANTS = ["fast-try", "nowait", "gfp-zero", "raw-zone-lock", "page-cache", "nolock"]
CONFIGS = ["default", "lockdep", "rt"]
SPLAT_KINDS = {"invalid_wait_context", "scheduling_while_atomic", "sleeping_in_atomic"}
#: The documented row keys (README, "compare --json").
ROW_KEYS = {
    "profile", "variant", "kernel_config", "kvfree_calls", "block_alloc_attempts",
    "block_alloc_failures", "fallback_rcu_head", "fallback_synchronize", "splats",
    "reports_printed", "first_report", "violations", "kswapd_wakeups", "kswapd_wakeups_in_krcp",
    "zone_lock_acquisitions", "zone_lock_in_krcp", "pcp_lock_in_krcp", "grace_periods",
    "gp_duration_ns", "gp_violations", "objects_freed", "records_per_block_mean", "pending_peak",
    "pages_peak", "latency_ns", "block_alloc_all", "block_alloc_all_failures",
    "block_pages_other_mt_pcp", "block_alloc_extfrag",
}
SMALL = ["--variants", "nowait", "--configs", "lockdep", "--scale", "0.01"]


@pytest.fixture(scope="module")
def full_runs() -> tuple[str, str]:
    """The whole matrix at a small scale, twice in one process."""
    outs = []
    for _ in range(2):
        rc, out, err = run_cli(["compare", "--json", "--scale", "0.05"])
        assert rc == 0, err
        outs.append(out)
    return outs[0], outs[1]


@pytest.fixture(scope="module")
def full(full_runs: tuple[str, str]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(full_runs[0])
    return doc


def test_json_is_byte_identical_for_the_same_arguments(full_runs: tuple[str, str]) -> None:
    a, b = full_runs
    assert a == b
    assert a.endswith("\n") and a.count("\n") == 1  # one JSON object


def test_json_has_config_seed_and_every_row_key(full: dict[str, Any]) -> None:
    assert {"config", "seed", "rows", "profiles", "verdict", "verdict_text"} <= set(full)
    assert full["seed"] == 0 == full["config"]["seed"]
    assert full["config"]["kvfree"]["profile"] == "rfc"  # the RFC's world by default
    assert list(full["profiles"]) == ["rfc"]
    assert [(r["profile"], r["variant"], r["kernel_config"]) for r in full["rows"]] == [
        ("rfc", v, c) for v in VARIANTS for c in CONFIGS
    ]
    for r in full["rows"]:
        assert set(r) >= ROW_KEYS, ROW_KEYS - set(r)
        assert set(r["splats"]) == SPLAT_KINDS
        assert set(r["latency_ns"]) == {"p50", "p99", "p999", "p9999", "max"}
        lat = r["latency_ns"]
        assert 0 < lat["p50"] <= lat["p99"] <= lat["p999"] <= lat["p9999"] <= lat["max"]
        assert 0 < r["gp_duration_ns"]["p50"] <= r["gp_duration_ns"]["max"]
        # what was printed is a subset of what the checker saw, and the first report is text
        assert r["reports_printed"] <= sum(r["splats"].values())
        assert (r["first_report"] != "") == (r["reports_printed"] > 0)
        assert r["zone_lock_in_krcp"] <= r["zone_lock_acquisitions"]
        assert r["kswapd_wakeups_in_krcp"] <= r["kswapd_wakeups"]
        # only the RFC's __GFP_FAST_TRY loop takes another migratetype's pcp list, and a
        # fallback steal under krcp->lock needs zone->lock under it
        if r["variant"] != "fast-try":
            assert r["block_pages_other_mt_pcp"] == 0
        if r["zone_lock_in_krcp"] == 0:
            assert r["block_alloc_extfrag"] == 0


def test_the_machine_is_the_rfc_authors_kind() -> None:
    """The RFC's numbers (kernel.md 3.3): a pcp batch of 63 pages and a high mark of 378, which
    5.8's zone_batchsize() gives every zone of 1 GiB or more of 4 KiB pages."""
    from rcukit.mm.zone import pcp_high, zone_batchsize

    cfg = cmp.default_config()
    assert cfg.mm.zone_pages * cfg.page_size >= 1 << 30
    assert zone_batchsize(cfg.mm.zone_pages, cfg.page_size) == 63
    assert pcp_high(63) == 378


def test_a_default_row_is_a_second_of_a_kernels_life() -> None:
    """Issue 14: floods last long enough for blocks to fill, drain and refill while they go
    on (the monitor drains mid-flood: the pending peak is far below the objects queued)."""
    wl = cmp.Workload()
    assert wl.objects_per_cpu * wl.think_ns >= 10**9
    data = cmp.row_data(cmp.default_config(), wl.scaled(0.2), "nowait", "default")
    assert data["sim_time_ns"] >= 0.2 * 10**9
    assert data["pending_peak"] < data["kvfree_calls"] // 4
    assert data["grace_periods"] > 20


def test_every_object_is_freed_in_every_row(full: dict[str, Any]) -> None:
    for r in full["rows"]:
        assert r["kvfree_calls"] == 4 * 5000  # 4 flooding CPUs x 100_000 x 0.05
        assert r["objects_freed"] == r["kvfree_calls"]
        assert r["block_alloc_failures"] <= r["block_alloc_attempts"]
        assert r["grace_periods"] > 0 and r["records_per_block_mean"] > 0


def test_v6_3_compare_rows_are_free_of_the_krwp_reuse() -> None:
    """Before "Avoid freeing new kfree_rcu() memory after old grace period" (5da7cb193db3,
    6.3-rc6; kernel/rcu/tree.c kvfree_rcu_queue_batch / need_wait_for_krwp_work) the monitor
    may add blocks to a krwp whose rcu_work already waits for an older grace period, and they
    are freed after it. rfc is v5.9's mechanism, so compare's rows count it (by the
    reclaim as blocks freed before a full GP since their detach; whether a second of floods
    meets it depends on the seed, see tests/rcu/test_stateful.py for a replay); v6.3 never does."""
    rc, out, err = run_cli(["compare", "--json", "--profiles", "v6.3", "--variants", "nowait",
                            "--scale", "0.05"])
    assert rc == 0, err
    assert [r["gp_violations"] for r in json.loads(out)["rows"]] == [0, 0, 0]


def test_what_each_build_can_report(full: dict[str, Any]) -> None:
    """The default build has neither lockdep nor sleeping spinlocks: nothing to report. Under
    PROVE_RAW_LOCK_NESTING only lockdep's report exists; on PREEMPT_RT only the might-sleep
    and scheduling-while-atomic ones. page-cache never allocates under krcp->lock from the
    page allocator, and nolock only trylocks, so neither reports on any build."""
    for r in full["rows"]:
        s = r["splats"]
        if r["kernel_config"] == "default" or r["variant"] in ("page-cache", "nolock"):
            assert sum(s.values()) == 0, r
        if r["kernel_config"] == "lockdep":
            assert s["sleeping_in_atomic"] == s["scheduling_while_atomic"] == 0
        if r["kernel_config"] == "rt":
            assert s["invalid_wait_context"] == 0


def test_a_different_seed_changes_the_output() -> None:
    outs = {}
    for seed in ("0", "1"):
        rc, out, _ = run_cli(["compare", "--json", *SMALL, "--seed", seed])
        assert rc == 0
        outs[seed] = json.loads(out)
    assert outs["0"] != outs["1"]
    assert (outs["0"]["seed"], outs["1"]["seed"]) == (0, 1)
    assert outs["0"]["rows"][0] != outs["1"]["rows"][0]


def test_table_and_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--variants", "nowait,fast-try", "--configs", "lockdep",
                 "--scale", "0.01"]) == 0
    out = capsys.readouterr().out
    # The machine (and where its zone came from) is a line of its own under each title.
    assert "kvfree_rcu() under krcp->lock, profile rfc (page allocator of 5.8)\n4 CPUs" in out
    assert "What it costs, profile rfc" in out
    assert "Verdict" in out
    assert "!RT + PROVE_RAW_LOCK_NESTING: recommended" in out
    # every abbreviation in a header is defined in the legend
    for word in ("IWC: lockdep's", "SIC: \"BUG: sleeping function", "SWA: \"BUG: scheduling",
                 "in-lock allocs: the variant's", "p99.9 us: kvfree_rcu() call latency",
                 "other mt: in-lock block pages taken from another migratetype's pcp list"):
        assert word in " ".join(out.split()), word
    assert not out.lstrip().startswith("{")


def _row(variant: str, build: str, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "profile": "rfc", "variant": variant, "kernel_config": build,
        "kvfree_calls": 1000, "block_alloc_attempts": 10, "block_alloc_failures": 0,
        "fallback_rcu_head": 0, "fallback_synchronize": 0,
        "splats": dict.fromkeys(SPLAT_KINDS, 0), "reports_printed": 0, "first_report": "",
        "violations": [], "zone_lock_in_krcp": 0,
        "latency_ns": {"p50": 30, "p99": 30, "p999": 30, "p9999": 40, "max": 50},
    }
    row.update(kw)
    return row


def test_verdict_is_derived_from_the_numbers() -> None:
    """Each status, reason and recommendation comes from a row's numbers: a would-report count
    with the lock and caller that caused it makes a variant unsafe on that build; among the
    safe ones the fewest fallbacks wins."""
    iwc = {**dict.fromkeys(SPLAT_KINDS, 0), "invalid_wait_context": 7}
    rows = [
        _row("fast-try", "lockdep", block_alloc_failures=2, fallback_rcu_head=2),
        _row("nowait", "lockdep", splats=iwc, reports_printed=1, first_report="BUG: ...",
             violations=[{"kind": "invalid_wait_context", "lock": "&zone->lock",
                          "ip": "rmqueue_bulk"}], zone_lock_in_krcp=7),
        _row("page-cache", "lockdep", block_alloc_attempts=0, fallback_rcu_head=9),
        _row("fast-try", "rt"),
        _row("nowait", "rt"),
        _row("page-cache", "rt", block_alloc_attempts=0, fallback_rcu_head=9),
    ]
    j = cmp.judge(rows)
    lockdep, rt = j.builds
    assert (lockdep.kernel_config, rt.kernel_config) == ("lockdep", "rt")
    nowait = lockdep.status_of("nowait")
    assert nowait is not None and nowait.status == "unsafe"
    assert '"BUG: Invalid wait context" (&zone->lock from rmqueue_bulk(); 7 times)' in nowait.reason
    assert "the log shows 1 (lockdep reports once" in nowait.reason
    assert lockdep.recommended == ("fast-try",)  # 2 fallbacks beat page-cache's 9
    assert rt.recommended == ("fast-try", "nowait")  # tied: both recommended
    assert j.safe_everywhere["rfc"] == ("fast-try", "page-cache")
    assert list(j.safe_on_some["rfc"]) == ["nowait"]
    assert rt.identical == (("fast-try", "nowait"),)
    text = "\n".join(j.lines())
    assert "nowait is safe only on some builds: on !RT + PROVE_RAW_LOCK_NESTING" in text
    assert "vfree_bulk(), rcukit's own invention" in text  # rfc's hypothetical reclaim
    assert j.to_json()["builds"][0]["recommended"] == ["fast-try"]


def test_unmovable_block_pages_among_other_migratetypes_cost_a_safe_variant() -> None:
    """Among safe variants with as many fallbacks and failures, one whose in-lock block pages
    came from another migratetype's pcp list (the RFC's rmqueue_pcplist() loop over
    pcp->lists[migratetype .. MIGRATE_PCPTYPES-1], 5.8.0-rc3 + RFC, mm/page_alloc.c) or whose
    in-lock allocations made fragmenting __rmqueue_fallback() steals (mm_page_alloc_extfrag,
    5.8 mm/page_alloc.c) pays more than one that placed none, fewer such pages pay less, and
    the reason names the counts and what they mean. Only the numbers count: the variants'
    names are a user's."""
    rows = [
        _row("mine", "default", block_pages_other_mt_pcp=5),
        _row("theirs", "default", block_alloc_extfrag=2, zone_lock_in_krcp=3),
        _row("clean", "default", zone_lock_in_krcp=3),
        _row("mine", "rt", block_pages_other_mt_pcp=5),
        _row("theirs", "rt", block_alloc_extfrag=2, zone_lock_in_krcp=3),
    ]
    j = cmp.judge(rows)
    default, rt = j.builds
    assert default.recommended == ("clean",)
    assert rt.recommended == ("theirs",)  # 2 steals beat 5 pages: fewer placed
    text = default.recommendation
    assert "also safe, paying more: theirs (0 fallbacks, 0.0% failed, max 0.05 us), mine (" in (
        text)
    assert ("mine took 5 of its in-lock block pages from another migratetype's pcp list (the "
            "RFC's loop over pcp->lists[]: unmovable pages in movable or reclaimable "
            "pageblocks, which anti-fragmentation keeps apart and no kernel counter shows)"
            in text)
    assert ("theirs stole from another migratetype's free lists 2 times while allocating "
            "under krcp->lock (fragmenting __rmqueue_fallback(), traced as "
            "mm_page_alloc_extfrag)" in text)
    mine = default.status_of("mine")
    assert mine is not None and mine.status == "safe"
    assert mine.reason.startswith("no report the kernel would print in 10 in-lock block "
                                  "allocations, but it took 5 of its in-lock block pages")
    clean = default.status_of("clean")
    assert clean is not None and "another migratetype" not in clean.reason
    cost = j.to_json()["builds"][0]["variants"][0]["cost"]
    assert (cost["other_mt_pcp"], cost["extfrag"]) == (5, 0)
    assert "another migratetype" not in rt.recommendation.split(";")[0]


def test_a_profile_that_never_allocates_under_the_lock_says_so() -> None:
    """From v5.11 the enqueue path never calls the page allocator under krcp->lock (the page
    cache is refilled by fill_page_cache_func() from a workqueue: kernel/rcu/tree.c, 5.11
    kvfree_call_rcu / add_ptr_to_bulk_krc_lock), so every variant's row is the same run."""
    rows = [_row(v, "lockdep", profile="v5.11", block_alloc_attempts=0)
            for v in ("fast-try", "nowait")]
    j = cmp.judge(rows)
    assert not j.builds[0].allocates_under_lock
    assert [v.status for v in j.builds[0].variants] == ["unused", "unused"]
    assert any("never allocates a block under krcp->lock" in line for line in j.lines())


def test_v5_9_on_rt_skips_the_allocation_and_says_so() -> None:
    """v5.9's kvfree_call_rcu() does not allocate under the raw lock on PREEMPT_RT ("it uses
    sleeping locks", kernel/rcu/tree.c, 5.9, kvfree_call_rcu): the variant is never called
    there, so the row is "skipped", not "0 % failed"."""
    rows = [_row("nowait", "rt", profile="v5.9", block_alloc_attempts=0, fallback_rcu_head=99),
            _row("nowait", "lockdep", profile="v5.9")]
    j = cmp.judge(rows)
    skipped = j.builds[0].status_of("nowait")
    assert skipped is not None and skipped.status == "skipped"
    assert "does not allocate under krcp->lock on PREEMPT_RT" in skipped.reason


def test_profiles_run_the_question_across_kernel_history() -> None:
    rc, out, err = run_cli(["compare", "--json", "--profiles", "rfc,v6.1", "--variants",
                            "nowait", "--configs", "lockdep", "--scale", "0.01"])
    assert rc == 0, err
    doc = json.loads(out)
    assert [(r["profile"], r["variant"]) for r in doc["rows"]] == [
        ("rfc", "nowait"), ("v6.1", "nowait")]
    assert set(doc["profiles"]) == {"rfc", "v6.1"}
    assert "v6.1" in doc["profiles"]["v6.1"]
    v61 = doc["verdict"]["builds"][1]
    assert v61["profile"] == "v6.1" and not v61["allocates_under_lock"]


def test_config_file_sets_kernel_and_compare_fields(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(
        'nr_cpus = 2\nseed = 5\n[kvfree]\nprofile = "v6.1"\n'
        '[compare]\nvariants = ["nowait"]\nconfigs = ["lockdep"]\nscale = 0.01\n'
        "flood_cpus = 2\n",
        encoding="utf-8",
    )
    rc, out, err = run_cli(["compare", "--json", "--config", str(f)])
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["seed"] == 5 and doc["config"]["nr_cpus"] == 2
    assert doc["config"]["kvfree"]["profile"] == "v6.1"
    assert doc["workload"]["flood_cpus"] == 2
    [row] = doc["rows"]
    assert (row["variant"], row["kernel_config"]) == ("nowait", "lockdep")
    assert row["kvfree_calls"] == row["objects_freed"] == 2 * 1000  # 100_000 x 0.01
    # the command line wins over the file
    rc, out, _ = run_cli(["compare", "--json", "--config", str(f), "--seed", "9",
                          "--profile", "v6.3"])
    doc = json.loads(out)
    assert rc == 0 and doc["seed"] == 9 and doc["config"]["kvfree"]["profile"] == "v6.3"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[compare]\nbogus_key = 3\n", "compare.bogus_key"),
        ("bogus_top = 1\n", "bogus_top"),
        ("[kvfree]\nvarient = 'nowait'\n", "kvfree.varient"),
        ("[compare]\nobjects_per_cpu = 'many'\n", "compare.objects_per_cpu"),
        ("[compare]\nflood_cpus = -3\n", "compare.flood_cpus"),
        ("[compare]\nvariants = ['bogus']\n", "'bogus'"),
        ("[compare]\nscale = -1\n", "scale"),
        ("[compare]\nconfigs = 7\n", "compare.configs"),
        # empty lists ran no row and printed empty tables with exit status 0
        ("[compare]\nvariants = []\n", "compare.variants = []: variants is empty"),
        ("[compare]\nconfigs = []\n", "compare.configs = []: configs is empty"),
        ("[compare]\nprofiles = []\n", "compare.profiles = []: profiles is empty"),
    ],
)
def test_bad_config_file_exits_2_naming_the_key(tmp_path: Path, text: str, named: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text, encoding="utf-8")
    rc, out, err = run_cli(["compare", "--json", "--config", str(f)])
    assert rc == 2 and out == ""
    assert named in err and "rcukit compare: error:" in err
    assert "allowed" in err or "expected" in err or "must be" in err
    assert "Traceback" not in err


def test_variants_in_a_file_may_be_one_comma_separated_string(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[compare]\nvariants = "nowait,nolock"\nconfigs = "default"\nscale = 0.01\n',
                 encoding="utf-8")
    rc, out, err = run_cli(["compare", "--json", "--config", str(f)])
    assert rc == 0, err
    assert [r["variant"] for r in json.loads(out)["rows"]] == ["nowait", "nolock"]


ALLOWED_VARIANTS = "allowed: fast-try, nowait, gfp-zero, raw-zone-lock, page-cache, nolock"


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--variants", "nowait,bogus"], ["unknown variant 'bogus'", ALLOWED_VARIANTS]),
        (["--variants", ","], ["--variants is empty", ALLOWED_VARIANTS]),
        # An empty shell variable ("--variants $V") must not silently mean every variant.
        (["--variants", ""], ["--variants is empty", ALLOWED_VARIANTS]),
        (["--configs", ""], ["--configs is empty", "allowed: default, lockdep, rt"]),
        (["--profiles", ""], ["--profiles is empty", "allowed: v5.5, rfc, v5.9"]),
        (["--configs", "foo"], ["unknown config 'foo'", "allowed: default, lockdep, rt"]),
        (["--scale", "-1"], ["--scale", "must be > 0"]),
        (["--scale", "0"], ["--scale", "must be > 0"]),
        (["--scale", "abc"], ["--scale", "'abc' is not a number"]),
        (["--seed", "x"], ["--seed", "invalid int value"]),
        (["--profile", "v9"],
         ["'v9' is not a kvfree_rcu profile", "allowed: v5.5, rfc, v5.9, v5.11"]),
        (["--config", "/nonexistent/c.toml"], ["cannot read config file", "c.toml"]),
        (["--bogus"], ["unrecognized arguments: --bogus"]),
        (["--jobs", "0"], ["--jobs", "0: expected a number of processes >= 1 (1 = inline)"]),
        (["--jobs", "-2"], ["--jobs", "-2: expected a number of processes >= 1"]),
        (["--jobs", "two"], ["--jobs", "'two' is not a whole number"]),
        # found by tests/scenarios/test_cli_fuzz.py: open() raised ValueError, a traceback
        (["--trace", "\x00"], ["--trace", "a file name cannot hold a NUL byte"]),
        (["--ftrace", "a\x00b.txt"], ["--ftrace", "a file name cannot hold a NUL byte"]),
        (["--plot", "\x00.png"], ["--plot", "a file name cannot hold a NUL byte"]),
    ],
)
def test_bad_arguments_exit_2_with_what_is_allowed(args: list[str], expect: list[str]) -> None:
    rc, out, err = run_cli(["compare", "--json", *args])
    assert rc == 2 and out == ""
    for text in expect:
        assert text in err
    assert "Traceback" not in err


def test_unreadable_and_malformed_toml_exit_2(tmp_path: Path) -> None:
    d = tmp_path / "a_directory.toml"
    d.mkdir()
    rc, _, err = run_cli(["compare", "--config", str(d)])
    assert rc == 2 and "cannot read config file" in err
    bad = tmp_path / "bad.toml"
    bad.write_text("nr_cpus = [\n", encoding="utf-8")
    rc, _, err = run_cli(["compare", "--config", str(bad)])
    assert rc == 2 and "malformed TOML" in err and "bad.toml" in err


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    d = tmp_path_factory.mktemp("compare_out")
    rc, out, err = run_cli([
        "compare", "--variants", "nowait,fast-try", "--configs", "lockdep", "--scale", "0.01",
        "--plot", str(d / "p.png"), "--trace", str(d / "t.json"), "--ftrace", str(d / "t.txt"),
        "--trace-events", "rcu_*",
    ])
    assert rc == 0, err
    return d, out


def test_plot_writes_a_png(artifacts: tuple[Path, str]) -> None:
    d, out = artifacts
    data = (d / "p.png").read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    assert "Verdict" in out  # the table still prints


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rc, _, err = run_cli(["compare", *SMALL, "--plot", str(tmp_path / "p.png")])
    assert rc == 2 and "pip install 'rcukit[plot]'" in err
    assert not (tmp_path / "p.png").exists()


def test_trace_is_perfetto_json_with_grace_period_slices(artifacts: tuple[Path, str]) -> None:
    d, _ = artifacts
    doc = json.loads((d / "t.json").read_text(encoding="utf-8"))
    events = doc["traceEvents"]
    gps = [e for e in events if e["ph"] == "X" and e["name"] == "rcu_gp"]
    assert gps and all(e["dur"] > 0 for e in gps)
    names = {e["args"]["name"] for e in events if e.get("name") == "process_name"}
    assert any(n.startswith("rfc/nowait/lockdep") for n in names)
    assert any(n.startswith("rfc/fast-try/lockdep") for n in names)
    assert any(e["name"] == "rcu_invoke_kfree_bulk_callback" for e in events)


def test_ftrace_text_has_the_kernels_tracepoints(artifacts: tuple[Path, str]) -> None:
    d, _ = artifacts
    text = (d / "t.txt").read_text(encoding="utf-8")
    assert "# ===== profile=rfc variant=nowait kernel_config=lockdep =====" in text
    # The lockdep build is not PREEMPT_RCU: its one flavour is rcu_sched (this said
    # rcu_preempt while kvfree hard-coded it beside the GP kthread's rcu_sched).
    assert "rcu_kvfree_callback" not in text  # kvfree_call_rcu() traces nothing per call
    assert re.search(r"rcu_invoke_kfree_bulk_callback: rcu_sched bulk=0x[0-9a-f]+ "
                     r"nr_records=\d+", text)
    assert "rcu_preempt" not in text


def test_from_host_zoneinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    host = Path("/proc/zoneinfo")
    if not host.exists():  # non-Linux: the captured fixture stands in for the host's file
        text = FIXTURE_ZONEINFO.read_text(encoding="utf-8")
        monkeypatch.setattr(zoneinfo_mod, "read_host_zoneinfo",
                            lambda *_: zoneinfo_mod.parse_zoneinfo(text))
    zone = zoneinfo_mod.largest_zone(zoneinfo_mod.read_host_zoneinfo())
    rc, out, err = run_cli(["compare", "--json", "--from-host-zoneinfo", *SMALL])
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["config"]["mm"]["zone_pages"] == max(64, min(zone.managed, 1 << 26))
    assert doc["rows"][0]["objects_freed"] == doc["rows"][0]["kvfree_calls"]


def test_kernel_config_from_the_zoneinfo_fixture() -> None:
    c = KernelConfig.from_zoneinfo(FIXTURE_ZONEINFO, base=cmp.default_config())
    assert c.mm.zone_pages == 772_917  # DMA32 is this machine's largest zone
    assert c.mm.pcp_batch == 63 and c.mm.pcp_high == 7856
    assert c.kvfree.profile == "rfc" and c.nr_cpus == 4  # the rest of the base is kept


# -- --jobs: rows in worker processes, the same output ------------------------------------------

JOBS_SMALL = ["--variants", "nowait,page-cache", "--configs", "default,rt", "--scale", "0.02"]


@pytest.mark.parametrize("form", [["--json"], []], ids=["json", "table"])
def test_jobs_2_output_is_byte_identical_to_jobs_1(form: list[str]) -> None:
    outs = []
    for jobs in ("1", "2"):
        rc, out, err = run_cli(["compare", *form, *JOBS_SMALL, "--jobs", jobs])
        assert rc == 0, err
        outs.append(out)
    assert outs[0] == outs[1]
    if form:
        rows = json.loads(outs[1])["rows"]
        assert [(r["variant"], r["kernel_config"]) for r in rows] == [
            ("nowait", "default"), ("nowait", "rt"), ("page-cache", "default"),
            ("page-cache", "rt"),
        ]


def test_run_compare_in_workers_keeps_row_order_and_reports_each_row() -> None:
    wl = cmp.Workload().scaled(0.01)
    cells = [("nolock", "lockdep"), ("nolock", "default"), ("nowait", "lockdep"),
             ("nowait", "default")]
    seen: list[tuple[str, str]] = []
    pooled = cmp.run_compare(workload=wl, variants=["nolock", "nowait"],
                             configs=["lockdep", "default"], jobs=2,
                             progress=lambda cell: seen.append(cell[1:]))
    inline = cmp.run_compare(workload=wl, variants=["nolock", "nowait"],
                             configs=["lockdep", "default"], jobs=1)
    assert pooled.rows == inline.rows
    assert [(r["variant"], r["kernel_config"]) for r in pooled.rows] == cells
    assert sorted(seen) == sorted(cells)


def test_run_compare_keeps_kernels_inline_whatever_jobs() -> None:
    kernels: list[Any] = []
    result = cmp.run_compare(workload=cmp.Workload().scaled(0.01), variants=["nowait"],
                             configs=["default", "rt"], jobs=2, kernels=kernels)
    assert [cell for cell, _ in kernels] == [("rfc", "nowait", "default"), ("rfc", "nowait", "rt")]
    assert [k.now_ns for _, k in kernels] == [r["sim_time_ns"] for r in result.rows]


def test_run_compare_bad_jobs_and_unsendable_sources_are_refused_before_running() -> None:
    from rcukit.errors import ConfigError
    from rcukit.rcu.kvfree.variants import PageCacheSource

    class Local(PageCacheSource):  # a class local to a function: it cannot be pickled
        name = "local-test"

    for bad in (0, -1, True, 1.5):
        with pytest.raises(ConfigError, match="expected a positive number of processes"):
            cmp.run_compare(variants=["nowait"], configs=["default"], jobs=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="pass load_sources="):
        cmp.run_compare(variants=["local-test"], configs=["default", "rt"], jobs=2,
                        block_sources=[Local()])


def test_run_compare_refuses_empty_variants_or_configs_before_running() -> None:
    """No row to run is a mistake, not an empty table with success."""
    from rcukit.errors import ConfigError

    with pytest.raises(ConfigError, match="variants is empty; allowed: fast-try, nowait"):
        cmp.run_compare(variants=[], configs=["default"])
    with pytest.raises(ConfigError, match="configs is empty; allowed: default, lockdep, rt"):
        cmp.run_compare(variants=["nowait"], configs=())


def test_a_build_that_never_calls_the_allocator_is_not_called_unsafe() -> None:
    """v5.9 on PREEMPT_RT skips the in-lock allocation for every variant (kernel/rcu/tree.c,
    5.9, kvfree_call_rcu): no variant is unsafe there, none is called, and the verdict says
    so with what the fallbacks cost instead of "no variant is safe"."""
    rows = [_row(v, "rt", profile="v5.9", block_alloc_attempts=0, fallback_rcu_head=50)
            for v in ("fast-try", "nowait")]
    rows += [_row(v, "lockdep", profile="v5.9") for v in ("fast-try", "nowait")]
    j = cmp.judge(rows)
    rt = j.builds[0]
    assert rt.recommended == ()
    assert rt.recommendation.startswith("no variant is called here: v5.9 does not allocate")
    assert "50 fallbacks" in rt.recommendation
    assert j.safe_everywhere["v5.9"] == ("fast-try", "nowait")
