"""KernelConfig: validators, TOML loading with key-naming errors, dotted replace, named builds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest

from rcukit.config import (
    KERNEL_CONFIG_NAMES,
    CostModel,
    KernelConfig,
    KvfreeConfig,
    MemoryConfig,
    config_to_dict,
)
from rcukit.errors import ConfigError, RcukitError


def _allowed_keys(cls: type) -> str:
    return ", ".join(sorted(f.name for f in attrs.fields(cls)))


# -- validators --------------------------------------------------------------------------------


def test_defaults_are_valid_and_tick_follows_hz() -> None:
    c = KernelConfig()
    assert c.nr_cpus == 4
    assert c.tick_ns == 1_000_000
    assert KernelConfig(hz=250).tick_ns == 4_000_000
    assert not c.rcu_preemptible
    assert KernelConfig(preempt_rt=True).rcu_preemptible
    assert KernelConfig(preempt_rcu=True).rcu_preemptible


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nr_cpus": 0}, "nr_cpus = 0 is out of range; allowed: 1 .. 4096"),
        ({"nr_cpus": 4097}, "nr_cpus = 4097 is out of range; allowed: 1 .. 4096"),
        ({"seed": -1}, "seed = -1 is out of range; allowed: 0 .. 9223372036854775807"),
        ({"rcu_stall_timeout_ms": 0}, "rcu_stall_timeout_ms = 0 is out of range; allowed: 1 .. "),
        ({"nr_cpus": "4"}, "nr_cpus = '4': expected an integer between 1 and 4096"),
        ({"nr_cpus": True}, "nr_cpus = True: expected an integer between 1 and 4096"),
        ({"nr_cpus": 2.5}, "nr_cpus = 2.5: expected an integer between 1 and 4096"),
        ({"hz": 123}, "hz = 123 is not allowed; allowed: 100, 250, 300, 1000"),
        ({"hz": 1000.0}, "hz = 1000.0 is not allowed; allowed: 100, 250, 300, 1000"),
        ({"hz": True}, "hz = True is not allowed"),
        ({"page_size": 8192}, "page_size = 8192 is not allowed; allowed: 4096, 16384, 65536"),
        ({"pointer_size": 2}, "pointer_size = 2 is not allowed; allowed: 4, 8"),
        ({"preempt_rt": 1}, "preempt_rt = 1: expected true or false"),
        ({"prove_raw_lock_nesting": "yes"}, "prove_raw_lock_nesting = 'yes': expected true or"),
        ({"strict_splats": None}, "strict_splats = None: expected true or false"),
        ({"print_splats": 0}, "print_splats = 0: expected true or false"),
        ({"preempt_rcu": 1.0}, "preempt_rcu = 1.0: expected true or false"),
    ],
)
def test_kernel_config_validators(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        KernelConfig(**kwargs)
    assert message in str(exc.value)
    # Bad input is catchable both as rcukit's error and as the natural builtin.
    assert isinstance(exc.value, ValueError)
    assert isinstance(exc.value, RcukitError)


def test_nested_validators() -> None:
    with pytest.raises(ConfigError, match=r"raw_lock_ns = -1 is out of range; allowed: 0 \.\. "):
        CostModel(raw_lock_ns=-1)
    with pytest.raises(ConfigError, match=r"zone_pages = 63 is out of range; allowed: 64 \.\. "):
        MemoryConfig(zone_pages=63)
    # Float fields take ints and floats in range, and refuse out-of-range ones.
    assert MemoryConfig(initial_used_fraction=0.5).initial_used_fraction == 0.5
    assert MemoryConfig(fail_page_alloc_probability=1).fail_page_alloc_probability == 1
    with pytest.raises(ConfigError, match=r"initial_used_fraction = 0\.9999 is out of range"):
        MemoryConfig(initial_used_fraction=0.9999)
    with pytest.raises(ConfigError, match=r"expected a number between 0\.0 and 1\.0"):
        MemoryConfig(failslab_probability="0.5")  # type: ignore[arg-type]
    # Optional ranges: None means "derive it", a value is range checked.
    assert MemoryConfig(pcp_batch=None).pcp_batch is None
    with pytest.raises(ConfigError, match=r"pcp_batch = 0 is out of range; allowed: 1 \.\. "):
        MemoryConfig(pcp_batch=0)
    with pytest.raises(ConfigError, match="header = 'v2' is not allowed; allowed: 'profile', 'rf"):
        KvfreeConfig(header="v2")
    assert KvfreeConfig(header="rfc").header == "rfc"


def test_config_is_frozen() -> None:
    c = KernelConfig()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        c.nr_cpus = 8  # type: ignore[misc]


# -- TOML --------------------------------------------------------------------------------------

GOOD_TOML = """\
nr_cpus = 8
hz = 250
preempt_rt = true
seed = 42

[cost]
raw_lock_ns = 33

[mm]
zone_pages = 4096
initial_used_fraction = 0
pcp_batch = 31

[kvfree]
header = "rfc"
"""


def test_from_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "k.toml"
    path.write_text(GOOD_TOML, encoding="utf-8")
    c = KernelConfig.from_toml(path)
    assert (c.nr_cpus, c.hz, c.preempt_rt, c.seed) == (8, 250, True, 42)
    assert c.cost.raw_lock_ns == 33
    assert c.cost.spin_lock_ns == CostModel().spin_lock_ns
    assert c.mm.zone_pages == 4096
    assert c.mm.pcp_batch == 31
    # An integer TOML value for a float field is converted, so it compares and prints as float.
    assert c.mm.initial_used_fraction == 0.0
    assert isinstance(c.mm.initial_used_fraction, float)
    assert c.kvfree.header == "rfc"
    assert KernelConfig.from_toml(str(path)) == c


@pytest.mark.parametrize(
    ("text", "key", "cls", "close"),
    [
        ("nr_cpu = 4\n", "nr_cpu", KernelConfig, "nr_cpus"),
        ("[mm]\nzone_page = 4\n", "mm.zone_page", MemoryConfig, "zone_pages"),
        ("[cost]\nraw_lock = 4\n", "cost.raw_lock", CostModel, "raw_lock_ns"),
        ("[kvfree]\nprofil = 'v5.9'\n", "kvfree.profil", KvfreeConfig, "profile"),
        ("[kvfree]\nzzz = 1\n", "kvfree.zzz", KvfreeConfig, None),
    ],
)
def test_unknown_key_is_named_with_allowed_keys(
    text: str, key: str, cls: type, close: str | None
) -> None:
    """The key is named in full, then the close one in its table if any ("did you mean"),
    then every key allowed there."""
    with pytest.raises(ConfigError) as exc:
        KernelConfig.from_toml_text(text, source="my.toml")
    msg = str(exc.value)
    hint = f" (did you mean {close!r}?)" if close else ""
    assert msg == f"my.toml: unknown key {key!r}{hint}; allowed here: {_allowed_keys(cls)}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nr_cpus = 0\n", "my.toml: nr_cpus = 0 is out of range; allowed: 1 .. 4096"),
        ("nr_cpus = '4'\n", "my.toml: nr_cpus = '4': expected an integer"),
        ("nr_cpus = 2.5\n", "my.toml: nr_cpus = 2.5: expected an integer"),
        ("preempt_rt = 1\n", "my.toml: preempt_rt = 1: expected true or false"),
        ("release = 5\n", "my.toml: release = 5: expected a string"),
        ("hz = 999\n", "my.toml: hz = 999 is not allowed; allowed: 100, 250, 300, 1000"),
        ("[mm]\nzone_pages = 1\n", "my.toml: mm.zone_pages = 1 is out of range; allowed: 64 .. "),
        ("[mm]\npcp_high = true\n", "my.toml: mm.pcp_high = True: expected an integer"),
        ("[mm]\ninitial_used_fraction = 'x'\n", "mm.initial_used_fraction = 'x': expected a nu"),
        ("[cost]\nkfree_ns = -5\n", "my.toml: cost.kfree_ns = -5 is out of range; allowed: 0"),
        ("[kvfree]\nheader = 'x'\n", "my.toml: kvfree.header = 'x' is not allowed; allowed: "),
        ("mm = 3\n", "my.toml: [mm] must be a table, got 3"),
    ],
)
def test_bad_values_in_toml_name_key_and_value(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        KernelConfig.from_toml_text(text, source="my.toml")
    assert message in str(exc.value)


def test_malformed_toml() -> None:
    with pytest.raises(ConfigError, match=r"^bad\.toml: malformed TOML: "):
        KernelConfig.from_toml_text("nr_cpus = = 4\n", source="bad.toml")


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as exc:
        KernelConfig.from_toml(missing)
    assert str(exc.value) == f"cannot read config file {str(missing)!r}: No such file or directory"


# -- replace and named builds --------------------------------------------------------------


def test_replace_dotted() -> None:
    base = KernelConfig()
    c = base.replace(nr_cpus=8, **{"mm.pcp_batch": 31, "cost.raw_lock_ns": 7})
    assert (c.nr_cpus, c.mm.pcp_batch, c.cost.raw_lock_ns) == (8, 31, 7)
    # Everything else is untouched, and the original is unchanged (frozen).
    assert c.mm.zone_pages == base.mm.zone_pages
    assert c.cost.spin_lock_ns == base.cost.spin_lock_ns
    assert base.nr_cpus == 4
    assert base.mm.pcp_batch is None
    assert base.replace() == base


def test_replace_errors() -> None:
    c = KernelConfig()
    with pytest.raises(ConfigError, match=r"unknown config field 'nr_cpu' \(did you mean "
                       r"'nr_cpus'\?\); allowed: .*nr_cpus"):
        c.replace(nr_cpu=2)
    with pytest.raises(ConfigError, match=r"unknown config field 'nope'; allowed: .*pcp_batch"):
        c.replace(**{"mm.nope": 1})
    # A table's field given bare (as in @pytest.mark.kernel_config(variant=...)) names its
    # dotted key instead of only listing the top-level fields.
    with pytest.raises(ConfigError, match=r"unknown config field 'variant' \(did you mean "
                       r"'kvfree.variant'\?\); allowed: "):
        c.replace(variant="nowait")
    with pytest.raises(ConfigError, match=r"'pcp_batch' \(did you mean 'mm.pcp_batch'\?\)"):
        c.replace(pcp_batch=31)
    with pytest.raises(ConfigError, match=r"unknown config field 'nope'; allowed: "):
        c.replace(nope=1)
    with pytest.raises(ConfigError, match="config field 'nr_cpus' has no sub-fields"):
        c.replace(**{"nr_cpus.x": 1})
    with pytest.raises(ConfigError, match="pcp_batch = 0 is out of range"):
        c.replace(**{"mm.pcp_batch": 0})
    with pytest.raises(ConfigError, match="nr_cpus = 0 is out of range"):
        c.replace(nr_cpus=0)


def test_with_kernel_config() -> None:
    base = KernelConfig(nr_cpus=2, seed=7, preempt_rt=True, prove_raw_lock_nesting=True)
    builds = {name: base.with_kernel_config(name) for name in KERNEL_CONFIG_NAMES}
    assert set(builds) == {"default", "lockdep", "rt"}
    flags = {n: (b.prove_raw_lock_nesting, b.preempt_rt) for n, b in builds.items()}
    assert flags == {"default": (False, False), "lockdep": (True, False), "rt": (False, True)}
    for b in builds.values():
        assert (b.nr_cpus, b.seed) == (2, 7)
    with pytest.raises(ConfigError) as exc:
        base.with_kernel_config("debug")
    assert str(exc.value) == "kernel config 'debug' is unknown; allowed: default, lockdep, rt"


# -- round trip --------------------------------------------------------------------------------


def test_round_trip_through_dict() -> None:
    c = KernelConfig(
        nr_cpus=16,
        hz=300,
        page_size=65536,
        pointer_size=4,
        preempt_rt=True,
        seed=99,
        release="6.1.0-test",
        cost=CostModel(raw_lock_ns=1, cache_miss_ns=200),
        mm=MemoryConfig(zone_pages=1 << 16, pcp_batch=15, min_free_kbytes=2048,
                        fail_page_alloc_probability=0.25),
        kvfree=KvfreeConfig(profile="v6.1", header="rfc", rcu_min_cached_objs=5),
    )
    d = config_to_dict(c)
    assert d["mm"]["pcp_batch"] == 15
    assert d["cost"]["raw_lock_ns"] == 1
    assert KernelConfig.from_mapping(d) == c
    assert KernelConfig.from_mapping(config_to_dict(KernelConfig())) == KernelConfig()
