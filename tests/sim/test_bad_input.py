"""Every bad input the reliability issue lists: a clear error naming what was wrong and what is
allowed, and afterwards the system still works and nothing queued before the mistake is lost.

Each simulated case queues objects (kvfree_rcu and call_rcu) first, makes the mistake, then
checks that a barrier still frees all of them and that new work goes through.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from clitools import run_cli
from simtools import freed

from rcukit.app import ObjectPool, open_domain
from rcukit.errors import (
    ConfigError,
    GfpError,
    MemoryDebugError,
    RcuUsageError,
    ZoneinfoParseError,
)
from rcukit.kernel import Kernel
from rcukit.mm.gfp import GFP, GFP_KERNEL
from rcukit.rcu.segcblist import RcuHead
from rcukit.scenarios.torture import TortureParams, torture_config
from rcukit.sched.sim import Task
from rcukit.sim import KernelConfig, boot

_GFP_KERNEL = int(GFP_KERNEL)
NEVER_ALLOCATED = 0xFFFF888000123440

Bad = Callable[[Kernel, Task, list[int]], Awaitable[None]]


class _Head(RcuHead):
    __slots__ = ("runs",)

    def __init__(self) -> None:
        super().__init__(None)
        self.runs = 0


async def _survives(bad: Bad, exc: type[Exception], match: str) -> str:
    """Queue work, make the mistake (it must raise ``exc``), then prove nothing was lost."""
    cfg = KernelConfig().replace(**{"kvfree.debug_objects": True})
    async with boot(cfg) as k:
        queued: list[int] = []
        heads = [_Head() for _ in range(20)]
        caught: list[BaseException] = []

        def cb(task: Task, head: RcuHead) -> None:
            assert isinstance(head, _Head)
            head.runs += 1

        async def body(task: Task) -> None:
            for i in range(40):
                p = await k.mm.kmalloc(task, 64, _GFP_KERNEL)
                await k.kvfree.kvfree_rcu(task, p, p + 8 if i % 2 else None)
                queued.append(p)
            for h in heads:
                k.rcu.call_rcu(task, h, cb)
            try:
                await bad(k, task, queued)
            except exc as e:
                caught.append(e)
            # Still usable: more work, then the barriers free everything.
            p = await k.mm.kmalloc(task, 64, _GFP_KERNEL)
            await k.kvfree.kvfree_rcu(task, p)
            queued.append(p)
            await k.kvfree.kvfree_rcu_barrier(task)
            await k.rcu.rcu_barrier(task)

        k.spawn(body, 1, "body")
        await k.run()
        assert len(caught) == 1, f"expected {exc.__name__}"
        assert all(freed(k, p) for p in queued) and all(h.runs == 1 for h in heads)
        st = k.kvfree.statistics()
        assert st.pending == 0 and st.objects_freed == len(queued) and st.gp_violations == 0
        msg = str(caught[0])
        assert re.search(match, msg), msg
        return msg


async def test_double_kvfree_rcu(autojump_clock: Any) -> None:
    first: list[int] = []

    async def bad(k: Kernel, task: Task, queued: list[int]) -> None:
        p = await k.mm.kmalloc(task, 64, _GFP_KERNEL)
        await k.kvfree.kvfree_rcu(task, p, p + 8)
        queued.append(p)  # the first call's object must still be freed, once
        first.append(p)
        await k.kvfree.kvfree_rcu(task, p)

    msg = await _survives(bad, MemoryDebugError, r"already queued .*double kvfree_rcu")
    assert f"{first[0]:x}" in msg


async def test_kfree_of_a_vmalloc_pointer(autojump_clock: Any) -> None:
    async def bad(k: Kernel, task: Task, queued: list[int]) -> None:
        v = await k.mm.vmalloc(task, 8192)
        try:
            await k.mm.kfree(task, v)
        finally:
            await k.mm.vfree(task, v)  # the area was left alone: the right call still works

    await _survives(bad, MemoryDebugError, r"vmalloc address .*\(use vfree or kvfree\)")


@pytest.mark.parametrize("how", ["kfree", "kvfree_rcu"])
async def test_a_pointer_never_allocated(autojump_clock: Any, how: str) -> None:
    async def bad(k: Kernel, task: Task, queued: list[int]) -> None:
        if how == "kfree":
            await k.mm.kfree(task, NEVER_ALLOCATED)
        else:
            await k.kvfree.kvfree_rcu(task, NEVER_ALLOCATED)

    await _survives(bad, MemoryDebugError, r"not an address")


async def test_an_rcu_head_outside_the_object(autojump_clock: Any) -> None:
    async def bad(k: Kernel, task: Task, queued: list[int]) -> None:
        p = await k.mm.kmalloc(task, 64, _GFP_KERNEL)
        try:
            await k.kvfree.kvfree_rcu(task, p, p + 4096)
        finally:
            await k.kvfree.kvfree_rcu(task, p, p + 8)  # the right call still works
            queued.append(p)

    await _survives(bad, RcuUsageError, r"not inside the object \(allowed: ptr <= head")


async def test_synchronize_rcu_inside_a_read_section(autojump_clock: Any) -> None:
    async def bad(k: Kernel, task: Task, queued: list[int]) -> None:
        with k.rcu.read_lock(task):
            await k.rcu.synchronize_rcu(task)

    await _survives(bad, RcuUsageError, r"inside an RCU read-side critical section.*after "
                    r"rcu_read_unlock")


@pytest.mark.parametrize(
    ("gfp", "match"),
    [(1 << 40, r"unknown GFP bits .*defined bits are"),
     (_GFP_KERNEL | int(GFP.NOFAIL | GFP.NORETRY), r"contradictory GFP flags .*__GFP_NOFAIL")],
)
async def test_invalid_gfp_bits(autojump_clock: Any, gfp: int, match: str) -> None:
    async def bad(k: Kernel, task: Task, queued: list[int]) -> None:
        await k.mm.kmalloc(task, 64, _GFP_KERNEL)  # a warm slab: no page needed below
        await k.mm.kmalloc(task, 64, gfp)

    await _survives(bad, GfpError, match)


# ------------------------------------------------------------------- the application API


async def test_app_misuse_loses_nothing_queued() -> None:
    pool: ObjectPool[bytearray] = ObjectPool(lambda: bytearray(8), debug=True)
    async with open_domain(debug=True, release=pool) as rcu:
        for _ in range(30):
            rcu.kvfree_rcu(pool.alloc())
        obj = pool.alloc()
        rcu.kvfree_rcu(obj)
        with pytest.raises(MemoryDebugError, match="double kvfree_rcu"):
            rcu.kvfree_rcu(obj)
        tok = rcu.rcu_read_lock()
        rcu.rcu_read_unlock(tok)
        with pytest.raises(RcuUsageError, match="already unlocked"):
            rcu.rcu_read_unlock(tok)
        with pytest.raises(RcuUsageError, match="deadlock"), rcu.read_lock():
            await rcu.synchronize_rcu()
        await rcu.synchronize_rcu()  # still usable
        rcu.kvfree_rcu(pool.alloc())
    assert pool.statistics().in_use == 0


# ------------------------------------------------------------------- configuration


async def test_bad_configuration_while_a_kernel_runs(autojump_clock: Any, tmp_path: Path) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text("hz = 1000\n[mm\nzone_pages = 3\n", encoding="utf-8")
    errors: list[str] = []

    def expect(exc: type[Exception], match: str, fn: Callable[[], object]) -> None:
        with pytest.raises(exc, match=match) as info:
            fn()
        errors.append(str(info.value))

    async with boot() as k:
        ptrs: list[int] = []

        async def flood(task: Task) -> None:
            for _ in range(50):
                p = await k.mm.kmalloc(task, 64, _GFP_KERNEL)
                ptrs.append(p)
                await k.kvfree.kvfree_rcu(task, p, p)

        await k.run_on_cpus(flood, [1])
        expect(ConfigError, r"hz = 123 is not allowed; allowed: 100, 250", lambda: KernelConfig(
            hz=123))
        expect(ConfigError, r"bad\.toml.*malformed TOML", lambda: KernelConfig.from_toml(toml))
        expect(ZoneinfoParseError, r"<zoneinfo>:2: .*'pages free'",
               lambda: KernelConfig.from_zoneinfo("Node 0, zone Normal\n  pages free  abc\n"))
        expect(ConfigError, r"unknown allocator variant 'bogus'; known: .*nowait",
               lambda: Kernel(KernelConfig().replace(**{"kvfree.variant": "bogus"})))
        # the closest name is suggested before the list (difflib, rcukit.errors.did_you_mean)
        expect(ConfigError, r"'v9' is not a kvfree_rcu profile \(did you mean 'v5\.9'\?\); "
               r"allowed: v5\.5, rfc, v5\.9",
               lambda: Kernel(KernelConfig().replace(**{"kvfree.profile": "v9"})))
        expect(ConfigError, r"unknown allocator variant", lambda: torture_config(variant="x"))
        expect(ConfigError, r"'v9' is not a kvfree_rcu profile",
               lambda: torture_config(profile="v9"))
        expect(ConfigError, r"kernel config 'rtx' is unknown; allowed: default, lockdep, rt",
               lambda: torture_config(kernel_config="rtx"))
        expect(ConfigError, r"fault_rate = 1\.5: expected a finite number in \[0\.0, 1\.0\]",
               lambda: TortureParams(fault_rate=1.5))
        expect(ConfigError, r"duration = -1: expected a finite number > 0",
               lambda: TortureParams(duration=-1))
        expect(ConfigError, r"nreaders = -2: expected an integer in -1 \.\. 1024",
               lambda: TortureParams(nreaders=-2))

        async def drain(task: Task) -> None:
            await k.kvfree.kvfree_rcu_barrier(task)

        await k.run_on_cpus(drain, [0])
        assert all(freed(k, p) for p in ptrs) and k.kvfree.statistics().pending == 0
    assert len(errors) == 11


async def test_app_unknown_profile() -> None:
    with pytest.raises(ConfigError, match=r"'v9' is not a kvfree_rcu profile \(did you mean "
                       r"'v5\.9'\?\); allowed: v5\.5, rfc"):
        async with open_domain(profile="v9"):
            pass  # pragma: no cover
    async with open_domain(profile="v6.1") as rcu:  # the next one works
        await rcu.synchronize_rcu()
    await trio.lowlevel.checkpoint()


@pytest.mark.parametrize(
    ("argv", "err"),
    [
        (["--variant", "bogus"], "unknown allocator variant 'bogus'; known:"),
        (["--profile", "v9"],
         "'v9' is not a kvfree_rcu profile (did you mean 'v5.9'?); allowed: v5.5, rfc"),
        (["--kernel-config", "rtx"], "invalid choice: 'rtx'"),
        (["--fault-rate", "2"], "argument --fault-rate: '2': a probability is from 0 to 1"),
        (["--duration", "abc"], "'abc' is not a number of seconds"),
        (["--mode", "app", "--variant", "nowait"], "--variant applies to --mode sim only"),
    ],
)
def test_cli_bad_options_exit_2(argv: list[str], err: str) -> None:
    rc, _, stderr = run_cli(["torture", "--duration", "0.1", *argv])
    assert rc == 2
    assert err in stderr
