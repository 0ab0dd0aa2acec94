"""Tracepoints and counters.

Call sites test their tracepoint's key (``tracer.tp.kmalloc``...) before building an event, so a
tracepoint nobody listens to costs an attribute load and a branch, like the static key behind
``trace_kmalloc()`` in the kernel: the keys are worked out from the selection once, when tracing
is enabled, not per call. ``tracer.on`` says whether any tracing is on. Counters are plain
integers in a dict keyed by the kernel's /proc/vmstat names so they print the way a kernel
engineer reads them.

What a run records is chosen as ftrace chooses it: by event name (``set_event``, globs allowed),
by CPU (``tracing_cpumask``) and, a simulator's addition, by a window of simulated time. Events
outside the selection are never built. Sinks (:attr:`Tracer.listeners`) see each selected event
as it happens, so a writer can stream a run of any length to a file; the in-memory list
(:attr:`Tracer.events`) can be turned off for that.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from fnmatch import fnmatchcase
from types import CodeType
from typing import Protocol

import attrs

#: The five latency-format characters of an event with nothing to show.
NO_FLAGS = "....."


@attrs.frozen
class TraceEvent:
    """One tracepoint hit. ``ph`` is the Perfetto phase: ``i`` instant, ``X`` complete slice,
    ``B``/``E`` slice begin/end on ``track``, ``C`` a counter (``fields`` is ``name=value``).

    ``flags`` is the latency format of the context that emitted it (:func:`lat_flags`).
    ``flow_out``/``flow_in`` (slices only; 0: none) tie this slice to another as the start or
    the end of an arrow with that id (a kvfree_rcu() block from its filling to its freeing)."""

    ts_ns: int
    cpu: int
    comm: str
    pid: int
    name: str
    fields: str
    ph: str = "i"
    dur_ns: int = 0
    track: str = ""
    flags: str = NO_FLAGS
    flow_out: int = 0
    flow_in: int = 0


class _HeldLockKind(Protocol):
    @property
    def value(self) -> str: ...


class _HeldLockLock(Protocol):
    @property
    def kind(self) -> _HeldLockKind: ...


class _HeldLock(Protocol):
    @property
    def lock(self) -> _HeldLockLock: ...
    @property
    def preempt(self) -> bool: ...


class _FlagsCpu(Protocol):
    need_resched: bool


class FlagsContext(Protocol):
    """What :func:`lat_flags` reads of ``current`` (the scheduler's ``Task`` has all of it)."""

    preempt_count: int
    irqs_disabled: int
    in_hardirq: int
    in_softirq: int

    @property
    def held_locks(self) -> Iterable[_HeldLock]: ...
    @property
    def cpu(self) -> _FlagsCpu: ...


def lat_flags(ctx: FlagsContext) -> str:
    """The ``irqs-off / need-resched / hardirq-softirq / preempt-depth / migrate-disable``
    characters ftrace prints before the timestamp, from the simulated context of ``ctx``.

    As ``trace_print_lat_fmt()`` (kernel/trace/trace_output.c, v5.15-v6.12) prints them from
    what ``tracing_gen_ctx()`` (kernel/trace/trace.c) saved: ``d`` with IRQs off; ``N`` when
    a reschedule is pending (TIF_NEED_RESCHED with PREEMPT_NEED_RESCHED folded in, x86);
    ``h``/``s``/``H`` in a hardirq / serving a softirq / both; the preemption depth
    ``preempt_count() & 0xff`` capped at 15 (the SOFTIRQ_OFFSET a softirq adds lies above that
    byte, so a softirq alone prints ``.``); and the migrate-disable depth, capped at 15, which
    on PREEMPT_RT each held ``spinlock_t`` raises (``rt_spin_lock()`` calls
    ``migrate_disable()``). ``b`` (bottom halves disabled) never shows: the model has no
    ``local_bh_disable()``.
    """
    irqs = "d" if ctx.irqs_disabled else "."
    resched = "N" if ctx.cpu.need_resched else "."
    hard, soft = ctx.in_hardirq, ctx.in_softirq
    hs = "H" if hard and soft else "h" if hard else "s" if soft else "."
    depth = min(ctx.preempt_count - soft, 15)
    migrate = 0
    for h in ctx.held_locks:
        if not h.preempt and h.lock.kind.value == "spinlock_t":
            migrate += 1
    return (
        f"{irqs}{resched}{hs}{f'{depth:x}' if depth > 0 else '.'}"
        f"{f'{min(migrate, 15):x}' if migrate else '.'}"
    )


def symbol_offset(code: CodeType, lasti: int) -> str:
    """``call_site=`` as the kernel prints ``%pS`` of a ``_RET_IP_``: ``symbol+offset/size``.

    The modelled caller is a Python function named after its kernel counterpart
    (``kvfree_rcu_bulk``, ``fill_page_cache_func``...), so its name is the symbol; the offset is
    the bytecode offset of the call and the size the function's bytecode length. They are made
    up, not a real kernel's, but stable: the same code gives the same offsets on every run.
    """
    return f"{code.co_name}+{lasti:#x}/{len(code.co_code):#x}"


#: Events hit once per object or page (hundreds of thousands per second of a flood): left out
#: of a trace unless asked for by name, so a default trace stays small.
HIGH_RATE_EVENTS = (
    "kmalloc", "kmem_cache_alloc", "kfree", "kmem_cache_free", "rcu_kvfree_callback",
    "rcu_invoke_kvfree_callback", "mm_page_alloc", "mm_page_free", "mm_page_alloc_zone_locked",
    "mm_page_pcpu_drain", "lock_krcp", "lock_pcp",
)

#: The selection a trace gets when none is given: everything but :data:`HIGH_RATE_EVENTS`.
DEFAULT_SELECTION = frozenset(f"!{n}" for n in HIGH_RATE_EVENTS)


def parse_event_names(text: str) -> frozenset[str]:
    """``--trace-events``: comma-separated tracepoint names or globs (``rcu_*``), as
    ``set_event`` takes them; ``!name`` leaves one out (``*,!kmalloc``). Raises ValueError on
    an empty list, an empty name, or a name with characters no tracepoint has."""
    names = [n.strip() for n in text.split(",")]
    if not text.strip() or any(not n for n in names):
        raise ValueError(f"{text!r}: expected comma-separated event names or globs")
    for n in names:
        body = n[1:] if n.startswith("!") else n
        if not body or not all(c.isalnum() or c in "_*?[]" for c in body):
            raise ValueError(f"{n!r} is not an event name or glob (letters, digits, _, * ?)")
    return frozenset(names)


def parse_cpu_list(text: str) -> frozenset[int]:
    """``--trace-cpus``: a CPU list as the kernel's ``cpulist_parse()`` reads it (``0,2``,
    ``0-3``, ``0-1,6``). Raises ValueError on anything else."""
    cpus: set[int] = set()
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise ValueError(f"{text!r}: expected CPU numbers and ranges like 0,2 or 0-3")
        a, b = int(lo), int(hi) if dash else int(lo)
        if b < a:
            raise ValueError(f"{text!r}: range {part.strip()!r} runs backwards")
        cpus.update(range(a, b + 1))
    return frozenset(cpus)


def parse_window_ms(text: str) -> tuple[int, int]:
    """``--trace-window START:END`` in simulated milliseconds (``5:10``, ``:10``, ``250:``) as
    ``[start, end)`` in ns. Raises ValueError unless 0 <= START < END (both finite)."""
    lo, colon, hi = text.partition(":")
    if not colon:
        raise ValueError(f"{text!r}: expected START:END in simulated ms, e.g. 0:50")
    try:
        start = float(lo) if lo.strip() else 0.0
        end = float(hi) if hi.strip() else math.inf
    except ValueError:
        raise ValueError(f"{text!r}: START and END must be numbers of ms") from None
    if math.isnan(start) or math.isnan(end) or math.isinf(start) or start < 0 or end <= start:
        raise ValueError(f"{text!r}: expected 0 <= START < END (simulated ms)")
    end_ns = 2**63 - 1 if math.isinf(end) else round(end * 1_000_000)
    return round(start * 1_000_000), end_ns


class Tracepoints:
    """The static keys of the tracepoints rcukit emits: ``tp.NAME`` is True while tracing is on
    and the selection takes ``NAME``, as ``trace_NAME_enabled()`` tests the tracepoint's
    ``struct static_key`` (include/linux/tracepoint.h). :meth:`Tracer.enable` sets them once, so
    a call site pays one attribute load, and a run whose selection drops an event keeps the
    fast paths that event's call sites would otherwise leave (the run-based floods', which a
    per-object kmalloc event sends call by call). ``rcu_kvfree_callback`` is a kernel
    tracepoint (``__call_rcu()`` given a kfree offset) that nothing modelled emits:
    ``kvfree_call_rcu()`` traces no event per call."""

    __slots__ = (
        "fail_page_alloc", "kfree", "kfree_rcu_monitor", "kmalloc", "kmem_cache_alloc",
        "mm_page_alloc", "mm_page_alloc_extfrag", "mm_page_alloc_zone_locked", "mm_page_free",
        "mm_vmscan_direct_reclaim_begin", "mm_vmscan_wakeup_kswapd", "rcu_barrier",
        "rcu_batch_end", "rcu_batch_start", "rcu_callback", "rcu_exp_grace_period", "rcu_fqs",
        "rcu_grace_period",
        "rcu_invoke_callback", "rcu_invoke_kfree_bulk_callback", "rcu_invoke_kvfree_callback",
        "rcu_kvfree_callback", "rcu_preempt_task", "rcu_qs", "rcu_unlock_preempted_task",
        "splat", "warn_alloc", "workqueue_execute_end", "workqueue_execute_start",
    )
    fail_page_alloc: bool
    kfree: bool
    kfree_rcu_monitor: bool
    kmalloc: bool
    kmem_cache_alloc: bool
    mm_page_alloc: bool
    mm_page_alloc_extfrag: bool
    mm_page_alloc_zone_locked: bool
    mm_page_free: bool
    mm_vmscan_direct_reclaim_begin: bool
    mm_vmscan_wakeup_kswapd: bool
    rcu_barrier: bool
    rcu_batch_end: bool
    rcu_batch_start: bool
    rcu_callback: bool
    rcu_exp_grace_period: bool
    rcu_fqs: bool
    rcu_grace_period: bool
    rcu_invoke_callback: bool
    rcu_invoke_kfree_bulk_callback: bool
    rcu_invoke_kvfree_callback: bool
    rcu_kvfree_callback: bool
    rcu_preempt_task: bool
    rcu_qs: bool
    rcu_unlock_preempted_task: bool
    splat: bool
    warn_alloc: bool
    workqueue_execute_end: bool
    workqueue_execute_start: bool

    def __init__(self) -> None:
        self.set(lambda name: False)

    def set(self, selects: Callable[[str], bool]) -> None:
        """Set every key to ``selects(name)``."""
        for name in self.__slots__:
            setattr(self, name, selects(name))


class Tracer:
    """Collects events when ``on``; listeners see every selected event (the ftrace pipe).

    ``written`` counts the selected events (ftrace's entries-written); ``events`` keeps at most
    ``limit`` of them, or none when enabled with ``keep=False`` (a streaming writer then holds
    the run's trace, not this list).
    """

    def __init__(self, *, limit: int = 2_000_000) -> None:
        self.on = False
        self.events: list[TraceEvent] = []
        self.limit = limit
        self.dropped = 0
        self.written = 0
        self.listeners: list[Callable[[TraceEvent], None]] = []
        self.filter: frozenset[str] | None = None
        self.cpus: frozenset[int] | None = None
        self.window_ns: tuple[int, int] | None = None
        self.keep = True
        #: The latency flags of what runs on a CPU now, for events emitted without a task.
        self.context: Callable[[int], str] | None = None
        #: The tracepoints' static keys, updated in place by :meth:`enable`/:meth:`disable`
        #: (call sites may keep a reference to this object).
        self.tp = Tracepoints()
        self._selected: dict[str, bool] = {}

    def enable(
        self,
        events: Iterable[str] | None = None,
        *,
        cpus: Iterable[int] | None = None,
        window_ns: tuple[int, int] | None = None,
        keep: bool = True,
    ) -> None:
        """Turn tracing on, for every event or those ``events`` name (exact names or globs,
        like ``set_event``), on every CPU or ``cpus`` (``tracing_cpumask``), at any time or in
        ``[start, end)`` of simulated ns (a slice is kept if it overlaps the window)."""
        self.on = True
        self.filter = frozenset(events) if events is not None else None
        self.cpus = frozenset(cpus) if cpus is not None else None
        self.window_ns = window_ns
        self.keep = keep
        self._selected = {}
        self.tp.set(self.selects)

    def disable(self) -> None:
        self.on = False
        self.tp.set(lambda name: False)

    def selects(self, name: str) -> bool:
        """Whether ``name`` passes the event filter (globs resolved once per name)."""
        sel = self._selected.get(name)
        if sel is None:
            f = self.filter
            if f is None:
                sel = True
            else:
                inc = [p for p in f if not p.startswith("!")]
                exc = [p[1:] for p in f if p.startswith("!")]
                sel = (not inc or any(fnmatchcase(name, p) for p in inc)) and not any(
                    fnmatchcase(name, p) for p in exc
                )
            self._selected[name] = sel
        return sel

    def emit(
        self,
        name: str,
        ts_ns: int,
        cpu: int,
        comm: str,
        pid: int,
        fields: str,
        *,
        ph: str = "i",
        dur_ns: int = 0,
        track: str = "",
        flags: str | None = None,
        ctx: FlagsContext | None = None,
        flow_out: int = 0,
        flow_in: int = 0,
    ) -> None:
        """Record one event if the selection takes it; ``flags`` (else those of ``ctx``, the
        emitting task, else of what runs on ``cpu``) are worked out only then."""
        sel = self._selected.get(name)
        if sel is None:
            sel = self.selects(name)
        if not sel:
            return
        if self.cpus is not None and cpu not in self.cpus:
            return
        w = self.window_ns
        if w is not None and (ts_ns + dur_ns < w[0] or ts_ns >= w[1]):
            return
        if flags is None:
            if ctx is not None:
                flags = lat_flags(ctx)
            else:
                flags = self.context(cpu) if self.context is not None else NO_FLAGS
        ev = TraceEvent(
            ts_ns, cpu, comm, pid, name, fields, ph, dur_ns, track, flags, flow_out, flow_in
        )
        self.written += 1
        if self.keep:
            if len(self.events) < self.limit:
                self.events.append(ev)
            else:
                self.dropped += 1
        for cb in self.listeners:
            cb(ev)

    def __iter__(self) -> Iterator[TraceEvent]:
        return iter(self.events)


class Counters:
    """``/proc/vmstat``-style named counters (``pgalloc_normal``, ``kswapd_wake``...)."""

    __slots__ = ("_c", "counts")

    def __init__(self) -> None:
        self._c: dict[str, int] = {}
        #: The counters themselves, for a path that bumps one per slab page or pcp page
        #: (``c[name] = c.get(name, 0) + n``, what :meth:`inc` does, without the call).
        self.counts = self._c

    def inc(self, name: str, n: int = 1) -> None:
        c = self._c
        c[name] = c.get(name, 0) + n

    def set_max(self, name: str, value: int) -> None:
        if value > self._c.get(name, 0):
            self._c[name] = value

    def __getitem__(self, name: str) -> int:
        return self._c.get(name, 0)

    def get(self, name: str, default: int = 0) -> int:
        return self._c.get(name, default)

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self._c.items()))

    def format_vmstat(self) -> str:
        """The ``name value`` lines of /proc/vmstat, sorted by name."""
        return "".join(f"{k} {v}\n" for k, v in sorted(self._c.items()))
