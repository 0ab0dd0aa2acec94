"""rcuscale's ``kfree_rcu_test``, on the simulated kernel.

The kernel's test (kernel.md section 5): ``kfree_nthreads`` threads, each bound to CPU
``me % nr_cpus``, run ``kfree_loops`` loops of ``kfree_alloc_num`` x (``kmalloc`` then a kfree
variant) with a ``cond_resched()`` per loop. Memory is sampled as ``si_mem_available()`` at the
first loop and averaged every ``kfree_loops/4`` loops; "batches" is the number of grace periods
(``rcu_seq_diff``) that elapsed. All figures come from simulated time and simulated memory.
"""

from __future__ import annotations

import random
from typing import Any

import attrs

from rcukit.config import KernelConfig
from rcukit.errors import ConfigError
from rcukit.kernel import Kernel, boot, run_sim
from rcukit.mm.gfp import GFP_KERNEL
from rcukit.rcu.gpseq import rcu_seq_diff
from rcukit.rcu.segcblist import RcuHead
from rcukit.sched.sim import Task

_GFP_KERNEL = int(GFP_KERNEL)

#: ``struct kfree_obj { char kfree_obj[8]; struct rcu_head rh; }`` on 64-bit: 24 bytes.
KFREE_OBJ_SIZE = 24
KFREE_OBJ_RH_OFFSET = 8


def _nonneg(name: str, lo: int) -> Any:
    def check(inst: object, att: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ConfigError(f"{att.name} = {value!r}: it must be an integer >= {lo}")

    return check


@attrs.frozen
class RcuscaleParams:
    """rcuscale's module parameters for the kfree test (same names, same defaults)."""

    kfree_nthreads: int = attrs.field(default=-1, validator=_nonneg("kfree_nthreads", -1))
    kfree_alloc_num: int = attrs.field(default=8000, validator=_nonneg("kfree_alloc_num", 1))
    kfree_loops: int = attrs.field(default=10, validator=_nonneg("kfree_loops", 1))
    kfree_rcu_test_single: bool = False
    kfree_rcu_test_double: bool = False
    kfree_by_call_rcu: bool = False
    kfree_mult: int = attrs.field(default=1, validator=_nonneg("kfree_mult", 1))
    #: Pre-5.5 behaviour: one call_rcu() per object, no batching at all.
    no_batch: bool = False


@attrs.frozen
class RcuscaleResult:
    params: RcuscaleParams
    config: KernelConfig
    nthreads: int
    total_time_ns: int
    loops: int
    batches: int
    memory_footprint_mb: int
    records_per_block_mean: float
    objects: int

    def banner(self) -> str:
        p = self.params
        return (
            f"--- kfree_rcu_test: kfree_mult={p.kfree_mult} kfree_by_call_rcu="
            f"{int(p.kfree_by_call_rcu)} kfree_nthreads={self.nthreads} kfree_alloc_num="
            f"{p.kfree_alloc_num} kfree_loops={p.kfree_loops} kfree_rcu_test_double="
            f"{int(p.kfree_rcu_test_double)} kfree_rcu_test_single={int(p.kfree_rcu_test_single)}"
            f"\nkfree object size={p.kfree_mult * KFREE_OBJ_SIZE}, kfree_by_call_rcu="
            f"{int(p.kfree_by_call_rcu)}"
        )

    def closing_line(self) -> str:
        return (
            f"Total time taken by all kfree'ers: {self.total_time_ns} ns, loops: {self.loops}, "
            f"batches: {self.batches}, memory footprint: {self.memory_footprint_mb}MB"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "params": attrs.asdict(self.params),
            "profile": self.config.kvfree.profile,
            "variant": self.config.kvfree.variant,
            "seed": self.config.seed,
            "nthreads": self.nthreads,
            "objects": self.objects,
            "total_time_ns": self.total_time_ns,
            "loops": self.loops,
            "batches": self.batches,
            "memory_footprint_mb": self.memory_footprint_mb,
            "records_per_block_mean": round(self.records_per_block_mean, 2),
        }


class _KfreeObj(RcuHead):
    __slots__ = ("ptr",)

    def __init__(self, ptr: int) -> None:
        super().__init__(None)
        self.ptr = ptr


async def run_rcuscale_async(params: RcuscaleParams, config: KernelConfig) -> RcuscaleResult:
    async with boot(config) as k:
        return await _run(k, params)


def run_rcuscale(params: RcuscaleParams, config: KernelConfig | None = None) -> RcuscaleResult:
    cfg = config or KernelConfig()
    box: dict[str, RcuscaleResult] = {}

    async def main() -> None:
        box["r"] = await run_rcuscale_async(params, cfg)

    run_sim(main)
    return box["r"]


async def _run(k: Kernel, p: RcuscaleParams) -> RcuscaleResult:
    nr = k.config.nr_cpus
    nthreads = nr if p.kfree_nthreads < 0 else p.kfree_nthreads
    if nthreads == 0:
        raise ConfigError("kfree_nthreads = 0: at least one kfree'er thread is needed")
    size = p.kfree_mult * KFREE_OBJ_SIZE
    state: dict[str, int] = {"started": 0, "finished": 0, "mem_begin": 0, "mem_during": 0}
    gp_start = [0]
    page_shift = k.config.page_size.bit_length() - 1
    mm = k.mm
    kv = k.kvfree
    rcu = k.rcu

    async def kfree_cb(task: Task, head: RcuHead) -> None:
        # The callback reaches its object through the rcu_head: a cache miss, then kfree().
        assert isinstance(head, _KfreeObj)
        await mm.slab.kfree(task, head.ptr, cache_miss=True)

    async def kfreer(task: Task) -> int:
        me = task.data.get("me", 0)
        rng = random.Random(f"{k.config.seed}:kfree:{me}")
        state["started"] += 1
        if state["started"] == nthreads:
            gp_start[0] = rcu.gp_seq
        start = task.now_ns
        for loop in range(p.kfree_loops):
            if loop == 0 and me == 0:
                state["mem_begin"] = state["mem_during"] = mm.nr_free_pages()
            elif me == 0 and p.kfree_loops >= 4 and loop % (p.kfree_loops // 4) == 0:
                state["mem_during"] = (state["mem_during"] + mm.nr_free_pages()) // 2
            for _ in range(p.kfree_alloc_num):
                ptr = await mm.kmalloc(task, size, _GFP_KERNEL)
                if p.no_batch or p.kfree_by_call_rcu:
                    rcu.call_rcu(task, _KfreeObj(ptr), kfree_cb)
                    continue
                if p.kfree_rcu_test_single == p.kfree_rcu_test_double:
                    single = bool(rng.getrandbits(16) & 0x800)
                else:
                    single = p.kfree_rcu_test_single
                if single:
                    await kv.kvfree_rcu_mightsleep(task, ptr)
                else:
                    await kv.kvfree_rcu(task, ptr, ptr + KFREE_OBJ_RH_OFFSET)
            await task.cond_resched()
        return task.now_ns - start

    tasks = []
    for me in range(nthreads):
        t = k.spawn(kfreer, me % nr, f"kfree_scale_thread/{me}")
        t.data["me"] = me
        tasks.append(t)
    await k.run()
    gp_end = rcu.gp_seq
    total = max(int(t.result) for t in tasks)  # type: ignore[call-overload]
    footprint = max(0, (state["mem_begin"] - state["mem_during"]) >> (20 - page_shift))

    async def barrier(task: Task) -> None:
        await kv.kvfree_rcu_barrier(task)
        await rcu.rcu_barrier(task)

    k.spawn(barrier, 0, "rcuscale_barrier")
    await k.run()
    # After the barrier: every block has been through kfree_bulk() and is in the histogram.
    stats = kv.statistics()
    return RcuscaleResult(
        params=p,
        config=k.config,
        nthreads=nthreads,
        total_time_ns=total,
        loops=p.kfree_loops,
        batches=rcu_seq_diff(gp_end, gp_start[0]),
        memory_footprint_mb=footprint,
        records_per_block_mean=stats.records_per_block_mean,
        objects=nthreads * p.kfree_loops * p.kfree_alloc_num,
    )
