"""Sampling profile of ``rcukit rcuscale`` at the published shape (benchmarks/README.md,
"Profile of the run-based path").

    python benchmarks/profile_rcuscale.py --loops 400

Every millisecond of CPU time (``setitimer(ITIMER_PROF)``) the Python stack is recorded; the
inclusive share of each function is the fraction of samples with it on the stack. Why sampling
and not cProfile: the run makes tens of millions of small calls, and cProfile's per-call cost
inflates the small functions it measures. Self shares are printed too, but read them with care:
CPython handles the signal at the next call or backward jump, so samples land on function
entries more often than on the lines between them.
"""

from __future__ import annotations

import argparse
import collections
import signal
import sys
import time
from types import FrameType

from rcukit.config import KernelConfig
from rcukit.scenarios.rcuscale import RcuscaleParams, fewer_gc_passes, run_rcuscale


def _name(frame: FrameType) -> str:
    path = frame.f_code.co_filename
    short = path.split("/rcukit/")[-1] if "/rcukit/" in path else path.rsplit("/", 1)[-1]
    return f"{short}:{frame.f_code.co_name}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loops", type=int, default=400, help="kfree_loops (published: 20000)")
    ap.add_argument("--top", type=int, default=40, help="rows to print")
    args = ap.parse_args(argv)
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    samples = 0

    def sample(_sig: int, frame: FrameType | None) -> None:
        nonlocal samples
        samples += 1
        seen: set[str] = set()
        first = True
        while frame is not None:
            key = _name(frame)
            if first:
                own[key] += 1
                first = False
            if key not in seen:
                inclusive[key] += 1
                seen.add(key)
            frame = frame.f_back

    config = KernelConfig(nr_cpus=16).replace(
        **{"kvfree.profile": "v6.1", "kvfree.variant": "page-cache", "mm.debug_quarantine": 0}
    )
    params = RcuscaleParams(kfree_nthreads=16, kfree_loops=args.loops, kfree_alloc_num=8000)
    signal.signal(signal.SIGPROF, sample)
    signal.setitimer(signal.ITIMER_PROF, 0.001, 0.001)
    t0 = time.perf_counter()
    with fewer_gc_passes():  # as the rcukit rcuscale command runs it
        run_rcuscale(params, config)
    signal.setitimer(signal.ITIMER_PROF, 0, 0)
    print(f"{samples} samples, {time.perf_counter() - t0:.1f} s wall, {args.loops} loops")
    for title, counts in (("inclusive", inclusive), ("self", own)):
        print(f"{title}:")
        for key, n in counts.most_common(args.top):
            print(f"  {100 * n / max(samples, 1):5.1f} %  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
