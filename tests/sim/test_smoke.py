import rcukit
import rcukit.sim
from rcukit.sched import Task


async def test_sim_kernel_fixture_runs_tasks(sim_kernel: rcukit.sim.Kernel) -> None:
    async def work(task: Task) -> int:
        task.charge(1000)
        await task.cond_resched()
        return task.cpu.id

    assert await sim_kernel.run_on_cpus(work) == [0, 1, 2, 3]
