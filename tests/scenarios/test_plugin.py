"""The pytest plugin: the ``sim_kernel`` fixture, the ``kernel_config`` marker, ``no_splats``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from rcukit.config import KernelConfig
from rcukit.kernel import Kernel
from rcukit.locking import LockKind
from rcukit.panic import symbol_frame
from rcukit.sched import Task

pytest_plugins = ["pytester"]


async def _nest(kernel: Kernel, task: Task) -> None:
    raw = kernel.new_lock("krc.lock", LockKind.RAW_SPINLOCK)
    spin = kernel.new_lock("&zone->lock", LockKind.SPINLOCK)
    with kernel.locks.locked(task, raw, "outer"), kernel.locks.locked(task, spin, "inner"):
        task.charge(10)


@pytest.mark.kernel_config(nr_cpus=2, prove_raw_lock_nesting=True)
async def test_marker_configures_the_kernel(
    sim_kernel: Kernel, kernel_config: KernelConfig
) -> None:
    assert sim_kernel.config is kernel_config
    assert (kernel_config.nr_cpus, kernel_config.prove_raw_lock_nesting) == (2, True)
    assert kernel_config == KernelConfig(nr_cpus=2, prove_raw_lock_nesting=True)
    assert len(sim_kernel.cpus) == 2

    async def work(task: Task) -> int:
        await _nest(sim_kernel, task)
        return task.cpu.id

    # Booted and live: tasks run on both CPUs, and the lockdep option is in force.
    assert await sim_kernel.run_on_cpus(work) == [0, 1]
    assert sim_kernel.splat_counts()["invalid_wait_context"] == 2


@pytest.mark.kernel_config(**{"mm.pcp_batch": 7, "hz": 250})
async def test_marker_takes_dotted_fields(sim_kernel: Kernel) -> None:
    assert sim_kernel.config.mm.pcp_batch == 7
    assert sim_kernel.config.tick_ns == 4_000_000


async def test_default_config_without_marker(sim_kernel: Kernel) -> None:
    assert sim_kernel.config == KernelConfig()

    async def work(task: Task) -> None:
        await _nest(sim_kernel, task)

    await sim_kernel.run_on_cpus(work, cpus=[3])
    # The default build does not check raw -> spinlock_t nesting.
    assert sim_kernel.splat_counts()["invalid_wait_context"] == 0


async def test_no_splats_passes_on_a_clean_run(
    sim_kernel: Kernel, no_splats: Callable[[Kernel], None]
) -> None:
    async def work(task: Task) -> None:
        await _nest(sim_kernel, task)

    await sim_kernel.run_on_cpus(work)
    no_splats(sim_kernel)  # must not fail


INNER = '''
import pytest
from rcukit.locking import LockKind
from rcukit.panic import symbol_frame


async def nest(kernel, task):
    raw = kernel.new_lock("krc.lock", LockKind.RAW_SPINLOCK)
    spin = kernel.new_lock("&zone->lock", LockKind.SPINLOCK)
    with kernel.locks.locked(task, raw, "kvfree_call_rcu"):
        with kernel.locks.locked(task, spin, "rmqueue_bulk"):
            task.charge(10)


@pytest.mark.kernel_config(nr_cpus=1, prove_raw_lock_nesting=True)
async def test_with_splat(sim_kernel, no_splats):
    async def work(task):
        await nest(sim_kernel, task)
    await sim_kernel.run_on_cpus(work)
    no_splats(sim_kernel)


@pytest.mark.kernel_config(nr_cpus=1)
async def test_clean(sim_kernel, no_splats):
    async def work(task):
        await nest(sim_kernel, task)
    await sim_kernel.run_on_cpus(work)
    no_splats(sim_kernel)
'''


def test_no_splats_fails_a_test_with_a_splat(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*kernel reported splats {'invalid_wait_context': 1}; first:",
            "*[[] BUG: Invalid wait context []]",
            f"*(&zone->lock){{....}}-{{3:3}}, at: {symbol_frame('rmqueue_bulk')}",
            "*FAILED test_inner.py::test_with_splat*",
        ]
    )
    assert "test_clean FAILED" not in result.stdout.str()


ROOT = Path(__file__).resolve().parents[2]


def _readme_plugin_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Testing your own code: the pytest plugin", 1)[1]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m is not None
    return m.group(1)


def test_the_readme_plugin_example_passes_from_a_clean_directory(tmp_path: Path) -> None:
    """A user's project: its own pytest config (no trio_mode, no asyncio plugin), the README's
    file as its only test, the installed rcukit on the path. Run as a user would."""
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    (tmp_path / "test_readme_plugin.py").write_text(_readme_plugin_example())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-W", "error"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert f"rootdir: {tmp_path}" in out and "configfile: pytest.ini" in out
    for line in (
        "test_readme_plugin.py::test_my_flood_is_splat_free PASSED",
        "test_readme_plugin.py::test_routes_under_trio PASSED",
        "test_readme_plugin.py::test_config_under_asyncio[asyncio] PASSED",
    ):
        assert line in out, out
    assert "3 passed" in out


USER_PROJECT = '''
import pytest
from rcukit.locking import LockKind
from rcukit.panic import symbol_frame


async def nest(kernel, task):
    raw = kernel.new_lock("krc.lock", LockKind.RAW_SPINLOCK)
    spin = kernel.new_lock("&zone->lock", LockKind.SPINLOCK)
    with kernel.locks.locked(task, raw, "kvfree_call_rcu"):
        with kernel.locks.locked(task, spin, "rmqueue_bulk"):
            task.charge(10)


@pytest.mark.no_splats
@pytest.mark.kernel_config(nr_cpus=1, prove_raw_lock_nesting=True)
async def test_with_splat(sim_kernel):
    async def work(task):
        await nest(sim_kernel, task)
    await sim_kernel.run_on_cpus(work)


@pytest.mark.no_splats
@pytest.mark.kernel_config(nr_cpus=1)
async def test_clean(sim_kernel):
    async def work(task):
        await nest(sim_kernel, task)
    await sim_kernel.run_on_cpus(work)


@pytest.mark.rcu_domain(max_pending=3)
async def test_marker_configures_the_domain(rcu_domain):
    assert rcu_domain.config.max_pending == 3 and rcu_domain.debug


async def test_asyncio_domain_callback_error_fails_the_test(asyncio_rcu_domain):
    asyncio_rcu_domain.call_rcu(int, "not a number")
'''


def test_the_plugin_without_trio_mode_marks_and_checks_splats_at_teardown(
    pytester: pytest.Pytester,
) -> None:
    """No ``trio_mode``: the Trio fixtures' tests are marked for pytest-trio by the plugin,
    the no_splats marker fails the splat test at teardown, the asyncio fixture runs on
    asyncio and its exit reports callback errors."""
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_user=USER_PROJECT)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    # the asyncio test passes its call and errors at teardown (the domain exit raises)
    result.assert_outcomes(passed=3, failed=1, errors=1)
    out = result.stdout.str()
    assert "test_user.py::test_clean PASSED" in out
    assert "test_user.py::test_marker_configures_the_domain PASSED" in out
    result.stdout.fnmatch_lines(["*kernel reported splats {'invalid_wait_context': 1}; first:"])
    assert "ValueError" in out and "invalid literal" in out


BUG_REPORT_PROJECT = '''
import pytest
from rcukit.rcu.segcblist import RcuHead


@pytest.mark.no_splats
@pytest.mark.kernel_config(nr_cpus=1)
async def test_a_callback_warns(sim_kernel):
    def broken_cb(task, head):
        raise ValueError("boom")

    async def work(task):
        sim_kernel.rcu.call_rcu(task, RcuHead(None), broken_cb)
        await sim_kernel.rcu.rcu_barrier(task)
    await sim_kernel.run_on_cpus(work)
'''


def test_no_splats_fails_a_test_whose_kernel_printed_a_bug_report(
    pytester: pytest.Pytester,
) -> None:
    """A kernel that WARNs goes on, tainted (``__warn()``, kernel/panic.c, v5.9); rcutorture's
    console check still fails such a run, and so does the plugin's ``no_splats`` marker."""
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(test_inner=BUG_REPORT_PROJECT)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*kernel printed 1 bug report(s) [[]'warning'[]], tainted 'W'; first:",
            "*------------[[] cut here []]------------",
            "*ValueError: boom",
        ]
    )


LEAKED_SECTION_PROJECT = '''
import anyio


async def test_leaves_a_section_open(rcu_domain):
    rcu_domain.read_lock().__enter__()  # a forgotten rcu_read_unlock()


async def test_leaves_one_open_in_a_child_task(asyncio_rcu_domain):
    async def child():
        asyncio_rcu_domain.read_lock().__enter__()
    async with anyio.create_task_group() as tg:
        tg.start_soon(child)


async def test_balanced(rcu_domain):
    with rcu_domain.read_lock():
        pass
'''


def test_a_read_section_left_open_fails_the_test_at_teardown(pytester: pytest.Pytester) -> None:
    """With nothing queued the domain closed without waiting for readers, so a test that
    entered read_lock() and never left passed; the fixtures now fail it at teardown."""
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_user=LEAKED_SECTION_PROJECT)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    # pytest-trio reports the Trio fixture's teardown failure as the test's failure; the
    # asyncio test passes its call and errors at teardown
    result.assert_outcomes(passed=2, failed=1, errors=1)
    out = result.stdout.str()
    assert out.count("the test left 1 RCU read section(s) open: a read_lock() entered and "
                     "never left") >= 2  # once per failing test (and in the summary lines)
    result.stdout.fnmatch_lines([
        "FAILED test_user.py::test_leaves_a_section_open - the test left 1 RCU read se*",
        "ERROR test_user.py::test_leaves_one_open_in_a_child_task*",
    ])
    assert "test_user.py::test_balanced PASSED" in result.stdout.str()
