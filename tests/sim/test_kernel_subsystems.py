"""A kernel is a machine and the subsystems booted on it, chosen with ``Subsystems``."""

from __future__ import annotations

import pytest

import rcukit.sim as sim
from rcukit.errors import SimulationError
from rcukit.rcu.tree import RcuState


def test_a_kernel_without_a_subsystem_says_so_by_name() -> None:
    """A test that boots the RCU engine alone and reaches for ``kernel.mm`` gets an error that
    names what is missing and where to choose it, not an AttributeError on None."""

    async def body(task: sim.Task) -> int:
        return task.cpu.id

    seen: list[sim.Kernel] = []
    res = sim.simulate(
        body, sim.KernelConfig(nr_cpus=2), setup=seen.append,
        subsystems=sim.Subsystems(mm=None, kvfree=False),
    )
    assert res.results == [0, 1]
    k = seen[0]
    assert isinstance(k.rcu, RcuState)
    with pytest.raises(SimulationError, match=r"booted without mm \(see rcukit.kernel.Subsystems"):
        _ = k.mm
    with pytest.raises(SimulationError, match="booted without kvfree"):
        _ = k.kvfree


def test_kvfree_rcu_cannot_be_booted_without_mm_and_rcu() -> None:
    with pytest.raises(SimulationError, match="kvfree_rcu is built on mm and RCU"):
        sim.Subsystems(rcu=None)
    with pytest.raises(SimulationError, match="kvfree_rcu is built on mm and RCU"):
        sim.Subsystems(mm=None)


async def test_a_swapped_in_subsystem_class_is_the_one_that_runs(autojump_clock: object) -> None:
    """``Subsystems(rcu=Cls)`` boots ``Cls`` as the kernel's RCU (torture's self-test swaps in a
    broken one); kvfree_rcu is then built on that very object."""

    class CountingRcu(RcuState):
        gps_begun = 0

        def rcu_gp_init(self, task: sim.Task) -> None:
            self.gps_begun += 1
            super().rcu_gp_init(task)

    counting = sim.Subsystems(rcu=CountingRcu)
    async with sim.boot(sim.KernelConfig(nr_cpus=2), subsystems=counting) as k:
        rcu = k.rcu
        assert isinstance(rcu, CountingRcu) and k.kvfree.rcu is rcu

        async def sync(task: sim.Task) -> None:
            await rcu.synchronize_rcu(task)

        await k.run_on_cpus(sync, [0])
        assert rcu.gps_begun >= 1
