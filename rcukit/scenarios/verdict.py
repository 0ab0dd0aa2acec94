"""``rcukit compare``'s verdict: the RFC's question answered per kernel and build, with reasons.

The answer a kernel engineer wants is not a list of counts but, for each kernel (profile) and
build: which block allocators may be called under ``krcp->lock`` there, why the others may not
(the report the kernel prints, the lock and the call that takes it), and what each safe one pays
for it (failed allocations and the fallbacks they force, unmovable block pages placed among
other migratetypes' pages, the tail latency of a call, zone-lock traffic under the raw lock).
Everything here is derived from the rows' numbers; nothing is known in advance about a variant,
so a user's own block source is judged the same way.

A row is *unsafe* when the lock checker saw a violation the kernel would report (counted even
after lockdep turned itself off, see ``would_report``), *skipped* when the profile's build never
calls the allocator (v5.9 on PREEMPT_RT), *unused* when the profile never allocates a block
under the lock at all (v5.11 on: the page cache is refilled by a worker), and *safe* otherwise.
A variant that is safe in every build measured is safe by construction as far as this machine
and workload can show; one that is safe only in some builds is named with the build that breaks
it and why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import attrs

from rcukit.locking.splat import SPLAT_TITLES
from rcukit.rcu.profiles import get_profile

#: The reports a block allocation under krcp->lock can cause (an RCU stall is not one).
REPORT_TITLES: Final = {
    kind: SPLAT_TITLES[kind]
    for kind in ("invalid_wait_context", "sleeping_in_atomic", "scheduling_while_atomic")
}

#: The builds, as the kernel configs that make them (``KernelConfig.with_kernel_config``).
BUILD_NAMES: Final = {
    "default": "!RT",
    "lockdep": "!RT + PROVE_RAW_LOCK_NESTING",
    "rt": "PREEMPT_RT",
}

Status = Literal["safe", "unsafe", "skipped", "unused"]

# Row keys that say nothing about the variant's effect (its name, and the run's identity).
_IDENTITY_KEYS: Final = ("variant", "timeline")


@attrs.frozen
class Cost:
    """What a variant pays on one build (the row's numbers, kept for the JSON)."""

    block_alloc_attempts: int
    failure_pct: float
    fallback_rcu_head: int
    fallback_synchronize: int
    fallback_pct: float
    latency_p999_ns: int
    latency_p9999_ns: int
    latency_max_ns: int
    zone_lock_in_krcp: int
    #: In-lock block pages taken from another migratetype's pcp list (the RFC's loop).
    other_mt_pcp: int = 0
    #: Fragmenting ``__rmqueue_fallback()`` steals during in-lock block allocations.
    extfrag: int = 0

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Cost:
        att = row["block_alloc_attempts"]
        calls = row["kvfree_calls"]
        head, sync = row["fallback_rcu_head"], row["fallback_synchronize"]
        lat = row["latency_ns"]
        return cls(
            block_alloc_attempts=att,
            failure_pct=round(100.0 * row["block_alloc_failures"] / att, 2) if att else 0.0,
            fallback_rcu_head=head,
            fallback_synchronize=sync,
            fallback_pct=round(100.0 * (head + sync) / calls, 3) if calls else 0.0,
            latency_p999_ns=lat["p999"],
            latency_p9999_ns=lat["p9999"],
            latency_max_ns=lat["max"],
            zone_lock_in_krcp=row["zone_lock_in_krcp"],
            # .get(): rows saved before these counts existed are judged as placing none
            other_mt_pcp=row.get("block_pages_other_mt_pcp", 0),
            extfrag=row.get("block_alloc_extfrag", 0),
        )

    @property
    def fallbacks(self) -> int:
        return self.fallback_rcu_head + self.fallback_synchronize

    @property
    def other_mt(self) -> int:
        """Unmovable block pages placed among another migratetype's pages, both ways."""
        return self.other_mt_pcp + self.extfrag

    def describe(self) -> str:
        parts = []
        if self.block_alloc_attempts:
            parts.append(
                f"{self.failure_pct:.1f}% of {self.block_alloc_attempts} in-lock block "
                "allocations failed"
            )
        parts.append(
            f"{self.fallbacks} fallbacks ({self.fallback_rcu_head} rcu_head, "
            f"{self.fallback_synchronize} synchronize_rcu; {self.fallback_pct:.3f}% of calls)"
        )
        parts.append(
            f"call latency p99.9 {_us(self.latency_p999_ns)}, p99.99 "
            f"{_us(self.latency_p9999_ns)}, max {_us(self.latency_max_ns)}"
        )
        if self.zone_lock_in_krcp:
            parts.append(f"{self.zone_lock_in_krcp} zone->lock acquisitions under krcp->lock")
        if self.other_mt_pcp:
            parts.append(
                f"{self.other_mt_pcp} in-lock block pages from another migratetype's pcp list"
            )
        if self.extfrag:
            parts.append(f"{self.extfrag} fragmenting steals (extfrag) under krcp->lock")
        return "; ".join(parts)


@attrs.frozen
class VariantJudgement:
    variant: str
    status: Status
    reason: str
    cost: Cost

    def to_json(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "status": self.status,
            "reason": self.reason,
            "cost": attrs.asdict(self.cost),
        }


@attrs.frozen
class BuildJudgement:
    """One profile on one build: every variant judged, the recommendation and its reason."""

    profile: str
    kernel_config: str
    allocates_under_lock: bool
    variants: tuple[VariantJudgement, ...]
    recommended: tuple[str, ...]
    recommendation: str
    #: Variants whose rows are identical (nothing but the name differs), in table order.
    identical: tuple[tuple[str, ...], ...]

    @property
    def build(self) -> str:
        return BUILD_NAMES.get(self.kernel_config, self.kernel_config)

    def status_of(self, variant: str) -> VariantJudgement | None:
        return next((v for v in self.variants if v.variant == variant), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "kernel_config": self.kernel_config,
            "build": self.build,
            "allocates_under_lock": self.allocates_under_lock,
            "variants": [v.to_json() for v in self.variants],
            "recommended": list(self.recommended),
            "recommendation": self.recommendation,
            "identical_rows": [list(g) for g in self.identical],
        }


@attrs.frozen
class Judgement:
    builds: tuple[BuildJudgement, ...]
    #: Per profile: variants safe on every build measured.
    safe_everywhere: dict[str, tuple[str, ...]]
    #: Per profile: variants safe on some builds only -> the builds that break them, with why.
    safe_on_some: dict[str, dict[str, tuple[str, ...]]]
    notes: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "builds": [b.to_json() for b in self.builds],
            "safe_everywhere": {p: list(v) for p, v in self.safe_everywhere.items()},
            "safe_on_some_builds": {
                p: {v: list(why) for v, why in d.items()} for p, d in self.safe_on_some.items()
            },
            "notes": list(self.notes),
        }

    def lines(self) -> list[str]:
        """The verdict as sentences: per profile, what is safe where and why, then per build
        the recommendation and what the others pay; the rows' numbers are in the table."""
        out: list[str] = []
        for profile in self.safe_everywhere:
            builds = [b for b in self.builds if b.profile == profile]
            prof = get_profile(profile)
            out.append(f"{profile} ({prof.description}; page allocator of {prof.mm.kernel}):")
            if not any(b.allocates_under_lock for b in builds):
                out.append(
                    f"  {profile} never allocates a block under krcp->lock on any build "
                    "measured: the variant is never called and every row is the same run."
                )
                continue
            safe = self.safe_everywhere[profile]
            if safe:
                out.append(f"  Safe on every build measured: {', '.join(safe)}.")
            for v, why in self.safe_on_some[profile].items():
                out.append(f"  {v} is safe only on some builds: {'; '.join(why)}.")
            for b in builds:
                if b.allocates_under_lock:
                    out.append(f"  {b.build}: {b.recommendation}")
                    out.extend(
                        f"    identical rows (nothing but the name differs): {' = '.join(g)}."
                        for g in b.identical
                    )
        out.extend(self.notes)
        return out


def _us(ns: int) -> str:
    return f"{ns / 1000:.2f} us"


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def _signature(row: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, repr(v)) for k, v in row.items() if k not in _IDENTITY_KEYS))


def _judge_row(row: Mapping[str, Any]) -> VariantJudgement:
    cost = Cost.of(row)
    prof = get_profile(row["profile"])
    would = {k: n for k, n in row["splats"].items() if n and k in REPORT_TITLES}
    if would:
        return VariantJudgement(row["variant"], "unsafe", _unsafe_reason(row, would), cost)
    if row["block_alloc_attempts"] == 0:
        if prof.alloc_under_lock and prof.rt_skips_alloc and row["kernel_config"] == "rt":
            return VariantJudgement(
                row["variant"], "skipped",
                f"{prof.name} does not allocate under krcp->lock on PREEMPT_RT (\"it uses "
                "sleeping locks\"): every block miss takes a fallback", cost)
        if not prof.alloc_under_lock:
            return VariantJudgement(
                row["variant"], "unused",
                f"{prof.name} never allocates a block under krcp->lock", cost)
        outside = row.get("block_alloc_all", 0)
        why = (
            f"it allocates nothing under krcp->lock ({outside} block pages allocated outside "
            "it, by a worker or with the lock dropped)" if outside
            else "no block allocation was needed under krcp->lock in this run"
        )
        return VariantJudgement(row["variant"], "safe", why, cost)
    why = (
        f"no report the kernel would print in {row['block_alloc_attempts']} in-lock block "
        "allocations"
    )
    if cost.other_mt:
        why += f", but {_other_mt_meaning('it', cost)}"
    return VariantJudgement(row["variant"], "safe", why, cost)


def _other_mt_meaning(who: str, c: Cost) -> str:
    """What ``who``'s unmovable block pages among other migratetypes' pages were, and mean."""
    parts = []
    if c.other_mt_pcp:
        parts.append(
            f"{who} took {c.other_mt_pcp} of its in-lock block pages from another "
            "migratetype's pcp list (the RFC's loop over pcp->lists[]: unmovable pages in "
            "movable or reclaimable pageblocks, which anti-fragmentation keeps apart and no "
            "kernel counter shows)"
        )
    if c.extfrag:
        parts.append(
            f"{who} stole from another migratetype's free lists {_times(c.extfrag)} while "
            "allocating under krcp->lock (fragmenting __rmqueue_fallback(), traced as "
            "mm_page_alloc_extfrag)"
        )
    return " and ".join(parts)


def _unsafe_reason(row: Mapping[str, Any], would: Mapping[str, int]) -> str:
    parts = []
    for kind, n in would.items():
        sites = [v for v in row["violations"] if v["kind"] == kind]
        where = ", ".join(f"{v['lock']} from {v['ip']}()" for v in sites[:2]) or "a lock"
        parts.append(f"\"{REPORT_TITLES[kind]}\" ({where}; {_times(n)})")
    printed = row["reports_printed"]
    why = []
    if "invalid_wait_context" in would:
        why.append("lockdep reports once, then turns itself off")
    if "sleeping_in_atomic" in would:
        why.append("might-sleep reports at most once a second")
    tail = f", of which the log shows {printed}" + (f" ({'; '.join(why)})" if why else "")
    return "would report " + " and ".join(parts) + tail


def _recommend(judged: Sequence[VariantJudgement]) -> tuple[tuple[str, ...], str]:
    safe = [v for v in judged if v.status == "safe"]
    skipped = [v for v in judged if v.status == "skipped"]
    if not safe and skipped and len(skipped) == len(judged):
        c = skipped[0].cost
        return (), (
            f"no variant is called here: {skipped[0].reason} ({c.fallbacks} fallbacks, "
            f"{c.fallback_pct:.3f}% of calls; call p99.99 {_us(c.latency_p9999_ns)}, max "
            f"{_us(c.latency_max_ns)})."
        )
    if not safe:
        unsafe = [v.variant for v in judged if v.status == "unsafe"]
        return (), (
            "no variant is safe here" + (f" ({', '.join(unsafe)} would report)" if unsafe else "")
            + "."
        )

    # Fallbacks and failures first (what the caller pays), then unmovable block pages placed
    # among other migratetypes' pages (what the page allocator pays), then the tail latency.
    def key(v: VariantJudgement) -> tuple[int, float, int, int]:
        c = v.cost
        return (c.fallbacks, c.failure_pct, c.other_mt, c.latency_p9999_ns)

    best = min(key(v)[:3] for v in safe)
    chosen = tuple(v.variant for v in safe if key(v)[:3] == best)
    c = next(v.cost for v in safe if v.variant == chosen[0])
    others = sorted((v for v in safe if v.variant not in chosen), key=key)
    text = (
        f"recommended {', '.join(chosen)}: safe here and the fewest fallbacks "
        f"({c.fallbacks}; {c.failure_pct:.1f}% of in-lock allocations failed; call p99.99 "
        f"{_us(c.latency_p9999_ns)}, max {_us(c.latency_max_ns)})"
    )
    if others:
        text += "; also safe, paying more: " + ", ".join(
            f"{v.variant} ({v.cost.fallbacks} fallbacks, {v.cost.failure_pct:.1f}% failed, "
            f"max {_us(v.cost.latency_max_ns)})" for v in others
        )
    text += "".join(
        f"; {_other_mt_meaning(v.variant, v.cost)}" for v in safe if v.cost.other_mt
    )
    unsafe = [v.variant for v in judged if v.status == "unsafe"]
    if unsafe:
        text += f"; not safe here: {', '.join(unsafe)}"
    if skipped:
        text += (
            f"; never called here: {', '.join(v.variant for v in skipped)} "
            f"({skipped[0].reason})"
        )
    return chosen, text + "."


def _identical(rows: Sequence[Mapping[str, Any]]) -> tuple[tuple[str, ...], ...]:
    groups: dict[tuple[tuple[str, str], ...], list[str]] = {}
    for r in rows:
        groups.setdefault(_signature(r), []).append(r["variant"])
    return tuple(tuple(g) for g in groups.values() if len(g) > 1)


def judge(rows: Sequence[Mapping[str, Any]]) -> Judgement:
    """The verdict for ``rows`` (any profiles, variants and builds, in table order)."""
    cells: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["profile"], r["kernel_config"]), []).append(r)
    builds = []
    for (profile, kc), rs in cells.items():
        judged = tuple(_judge_row(r) for r in rs)
        chosen, text = _recommend(judged)
        builds.append(BuildJudgement(
            profile=profile, kernel_config=kc,
            allocates_under_lock=any(v.status != "unused" for v in judged),
            variants=judged, recommended=chosen, recommendation=text, identical=_identical(rs),
        ))
    safe_everywhere: dict[str, tuple[str, ...]] = {}
    safe_on_some: dict[str, dict[str, tuple[str, ...]]] = {}
    for profile in dict.fromkeys(p for p, _ in cells):
        pb = [b for b in builds if b.profile == profile]
        variants = list(dict.fromkeys(v.variant for b in pb for v in b.variants))
        every, some = [], {}
        for v in variants:
            js = [(b, b.status_of(v)) for b in pb]
            ok = [b for b, j in js
                  if j is not None and j.status in ("safe", "unused", "skipped")]
            bad = [(b, j) for b, j in js if j is not None and j.status == "unsafe"]
            if not bad and ok:
                every.append(v)
            elif ok and bad:
                some[v] = tuple(f"on {b.build} it {j.reason}" for b, j in bad)
        safe_everywhere[profile] = tuple(every)
        safe_on_some[profile] = some
    notes = []
    for profile in safe_everywhere:
        if get_profile(profile).vfree_bulk:
            notes.append(
                f"Hypothetical: profile {profile} frees vmalloc'ed objects with vfree_bulk(), "
                "rcukit's own invention (no kernel has it; kernels call vfree() per object), so "
                "the reclaim cost of its vmalloc objects is not a kernel's."
            )
    return Judgement(tuple(builds), safe_everywhere, safe_on_some, tuple(notes))
