"""What every benchmark module shares: the figure record, the run mode and the timers.

Why ratios: the machines this runs on are small, shared and noisy, so an absolute time says
little about rcukit and a lot about the neighbours. Every figure divides the subject's cost by a
baseline measured in the same process, close in time (interleaved where that helps), and keeps
the best of several repetitions of each, since noise only ever adds time.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from typing import Literal

import attrs

#: ``RCUKIT_BENCH_TINY=1`` shrinks every figure to a smoke test (the numbers mean nothing).
TINY_ENV = "RCUKIT_BENCH_TINY"

Op = Literal["<=", ">="]


@attrs.frozen
class Mode:
    """How much work a run does: ``full`` (the README), ``quick`` (< 1 min) or ``tiny``."""

    name: Literal["full", "quick", "tiny"]

    @classmethod
    def from_flags(cls, quick: bool) -> Mode:
        if os.environ.get(TINY_ENV, "") not in ("", "0"):
            return cls("tiny")
        return cls("quick" if quick else "full")

    def pick(self, full: int, quick: int, tiny: int) -> int:
        """The size or repetition count for this mode."""
        return {"full": full, "quick": quick, "tiny": tiny}[self.name]

    def pickf(self, full: float, quick: float, tiny: float) -> float:
        return {"full": full, "quick": quick, "tiny": tiny}[self.name]


@attrs.frozen
class Target:
    """``value <op> bound`` is what rcukit must reach (the issue's targets)."""

    op: Op
    bound: float

    def holds(self, value: float) -> bool:
        return value <= self.bound if self.op == "<=" else value >= self.bound

    def __str__(self) -> str:
        return f"{self.op} {self.bound:g}"


@attrs.frozen
class Figure:
    """One row of the performance table.

    ``value`` is the figure itself (a ratio, a count or a rate, see ``unit``); ``absolute`` holds
    the raw measurements behind it, for information only; ``note`` says what was measured.
    """

    key: str
    value: float
    unit: str
    target: Target | None
    absolute: dict[str, float]
    note: str

    @property
    def passed(self) -> bool | None:
        return None if self.target is None else self.target.holds(self.value)

    def to_json(self) -> dict[str, object]:
        return {
            "value": self.value,
            "unit": self.unit,
            "target": str(self.target) if self.target is not None else None,
            "passed": self.passed,
            "absolute": dict(self.absolute),
            "note": self.note,
        }


def bare_loop(items: list[int]) -> float:
    """The baseline of the per-call figures: append every item to a list and count them.

    Returns the wall time in seconds. This is the cheapest loop that still does something with
    each item, so "N x the bare loop" reads as "N times the cost of touching each item once".
    """
    out: list[int] = []
    n = 0
    t0 = time.perf_counter()
    for p in items:
        out.append(p)
        n += 1
    dt = time.perf_counter() - t0
    assert n == len(out)
    return dt


def best_of(fn: Callable[[], float], reps: int) -> float:
    """The smallest of ``reps`` timings ``fn`` returns (seconds)."""
    best = float("inf")
    for _ in range(reps):
        gc.collect()
        best = min(best, fn())
    return best


def interleaved(
    baseline: Callable[[], float], subject: Callable[[], float], reps: int
) -> tuple[float, float]:
    """Best of ``reps`` for each, alternating them so both see the same background load."""
    b = s = float("inf")
    for _ in range(reps):
        gc.collect()
        b = min(b, baseline())
        gc.collect()
        s = min(s, subject())
    return b, s


def ns(seconds: float, n: int) -> float:
    """Seconds for ``n`` operations as nanoseconds per operation, rounded for the table."""
    return round(seconds / n * 1e9, 1)
