"""Bug reports, taint and panic: what the kernel does when it finds a bug in itself.

A simulated kernel that finds a bug in one of its kthreads, workers or callbacks does what the
kernel does: it prints a report, sets a taint flag and goes on (``panic_on_warn`` makes the
first report fatal). Modelled from (each version boundary checked against the kernel source
or the commit that moved it; tests/sim/test_panic.py names the evidence):

* ``kernel/panic.c``: ``add_taint()`` sets a bit of ``tainted_mask`` (``LOCKDEP_NOW_UNRELIABLE``
  also turns lockdep off, printing "Disabling lock debugging due to kernel taint");
  ``print_tainted()`` prints ``Tainted:`` and one column per flag (its letter when set, a space
  or, for the first, ``G`` when clear), or ``Not tainted``; ``print_tainted_verbose()`` (6.11,
  "kernel/panic: add verbose logging of kernel taints in backtraces") lists the set flags by
  name. ``__warn()`` prints "WARNING: CPU: n PID: n at caller", the message and (5.10+,
  3f388f28639f "panic: dump registers on panic_on_warn") "Modules linked in:", then panics if
  ``panic_on_warn`` is set (before the stack dump; before 5.10 before the modules too), else
  dumps the stack, prints the end marker (``oops_id`` zero from 5.17, e83a4472bf9f "panic:
  remove oops_id") and adds ``TAINT_WARN``; ``panic()`` prints "Kernel panic - not syncing:
  ...", a stack and the end line, then stops the machine. 6.2 (79cc1ba7badf "panic:
  Consolidate open-coded panic_on_warn checks") made the message name its origin:
  ``check_panic_on_warn("kernel")``, ``check_panic_on_warn("KASAN")``.
* ``lib/bug.c`` ``report_bug()``: a ``WARN()`` prints the ``cut here`` line, then ``__warn()``.
* ``lib/dump_stack.c`` ``dump_stack_print_info()``: "CPU: n PID: n Comm: c <print_tainted()>
  <release> #1" ("UID: 0" after the CPU from 6.11, "lib/dump_stack: report process UID"), the
  verbose taint line when tainted (6.11), then (``print_worker_info()``) "Workqueue: <wq> <work
  fn>" in a kworker; ``dump_stack_lvl()`` (5.14, 4469c0f17ec6 "printk: introduce
  dump_stack_lvl()") is the innermost frame from then on.
* ``mm/kasan/report.c``: ``kasan_report_invalid_free()`` (the ``=====`` rule,
  "BUG: KASAN: double-free in <ip>", the stack, the allocation and free tracks, the object) and
  ``end_report()`` (``panic_on_warn`` unless ``kasan_multi_shot``, and
  ``add_taint(TAINT_BAD_PAGE, LOCKDEP_NOW_UNRELIABLE)``). Before 6.0 the title was
  "double-free or invalid-free" for both kinds ("kasan: separate double free case from invalid
  free", mm-stable-2022-08-03). From 5.18 ("kasan: respect KASAN_BIT_REPORTED in all reporting
  routines", c068664c97c7) an invalid free obeys ``report_enabled()``: only the first KASAN
  report of a boot is printed (no ``kasan_multi_shot``); and ("kasan: disable LOCKDEP when
  printing reports", same series) ``end_report()`` panics before adding the taint, where
  earlier kernels tainted first.

Simplified: frames are kernel symbols with made-up offsets (:func:`symbol_frame`, stable per
symbol), no registers or ``<TASK>`` markers are printed (a WARN takes ``__warn()``'s path
without ``regs``, as ``warn_slowpath_fmt()`` does), KASAN's shadow-memory dump, its 6.1+ "Free
of addr" line and ``dump_page()`` are left out, the CPU line has no preemption model (6.15
prints ``preempt_model_str()``), and the allocation and free tracks show the Python site rcukit
recorded (the simulator keeps no kernel stack for them). Every report is counted and kept
whether or not the kernel would print it.
"""

from __future__ import annotations

import os
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from typing import NoReturn, Protocol, TextIO, cast

import attrs

from rcukit.errors import KernelPanic, MemoryDebugError

__all__ = [
    "TAINT_BAD_PAGE",
    "TAINT_DIE",
    "TAINT_WARN",
    "BugContext",
    "BugReport",
    "PanicState",
    "ReportContext",
    "dump_stack_print_info",
    "print_tainted",
    "print_tainted_verbose",
    "symbol_frame",
]

#: ``enum taint_flags`` bits rcukit sets (include/linux/panic.h).
TAINT_BAD_PAGE = 5
TAINT_DIE = 7
TAINT_WARN = 9
#: ``taint_flags[].c_true`` in bit order: P F S R M B U D A W C I O E L K X T N J.
_TAINT_LETTERS = "PFSRMBUDAWCIOELKXTNJ"
#: ``taint_flags[].desc`` in bit order (``TAINT_FLAG()``'s ``#taint``), the names
#: ``print_tainted_verbose()`` prints.
_TAINT_NAMES = (
    "PROPRIETARY_MODULE", "FORCED_MODULE", "CPU_OUT_OF_SPEC", "FORCED_RMMOD", "MACHINE_CHECK",
    "BAD_PAGE", "USER", "DIE", "OVERRIDDEN_ACPI_TABLE", "WARN", "CRAP", "FIRMWARE_WORKAROUND",
    "OOT_MODULE", "UNSIGNED_MODULE", "SOFTLOCKUP", "LIVEPATCH", "AUX", "RANDSTRUCT", "TEST",
    "FWCTL",
)
_RULE = "=" * 66


def taint_flags_count(version: tuple[int, int]) -> int:
    """``TAINT_FLAGS_COUNT``: 18 (TAINT_RANDSTRUCT the last) up to 5.19, TAINT_TEST from 6.0,
    TAINT_FWCTL from 6.15 (``include/linux/panic.h``)."""
    if version < (6, 0):
        return 18
    if version < (6, 15):
        return 19
    return 20


def print_tainted(mask: int, version: tuple[int, int]) -> str:
    """``print_tainted()`` (kernel/panic.c): ``Not tainted``, or a column per flag."""
    if not mask:
        return "Not tainted"
    cols = []
    for bit in range(taint_flags_count(version)):
        if mask >> bit & 1:
            cols.append(_TAINT_LETTERS[bit])
        else:
            cols.append("G" if bit == 0 else " ")
    return "Tainted: " + "".join(cols)


def print_tainted_verbose(mask: int, version: tuple[int, int]) -> str:
    """``print_tainted_verbose()`` (kernel/panic.c, 6.11+): ``Tainted:`` and each set flag as
    ``[letter]=NAME``, comma-separated, e.g. "Tainted: [B]=BAD_PAGE, [W]=WARN"."""
    if not mask:
        return "Not tainted"
    return "Tainted: " + ", ".join(
        f"[{_TAINT_LETTERS[bit]}]={_TAINT_NAMES[bit]}"
        for bit in range(taint_flags_count(version)) if mask >> bit & 1
    )


def dump_stack_print_info(
    cpu: int, pid: int, comm: str, mask: int, release: str, version: tuple[int, int]
) -> list[str]:
    """``dump_stack_print_info()`` (lib/dump_stack.c) up to the worker line: "CPU: n PID: n
    Comm: c <print_tainted()> <release> #1", "UID: 0" (the current euid) after the CPU from
    6.11, and from 6.11 too, when tainted, ``print_tainted_verbose()`` on a line of its own.
    Every report's header (panic.py's and the lock splats') comes from here."""
    uid = "UID: 0 " if version >= (6, 11) else ""
    lines = [f"CPU: {cpu} {uid}PID: {pid} Comm: {comm} {print_tainted(mask, version)} "
             f"{release} #1"]
    if mask and version >= (6, 11):
        lines.append(print_tainted_verbose(mask, version))
    return lines


def taint_letters(mask: int) -> str:
    """The set flags' letters alone (``/proc/sys/kernel/tainted`` decoded), e.g. ``"BW"``."""
    return "".join(_TAINT_LETTERS[b] for b in range(len(_TAINT_LETTERS)) if mask >> b & 1)


def symbol_frame(sym: str) -> str:
    """``%pS`` of a return address in ``sym``: ``sym+0xOFF/0xSIZE``.

    The offset and size are made up but fixed per symbol (a CRC of the name), so a report
    reads the same on every run and whatever Python code changes around the model."""
    crc = zlib.crc32(sym.encode())
    size = 0x100 + ((crc >> 4) & 0x3F) * 0x10
    off = 4 + (crc >> 12) % (size - 8)
    return f"{sym}+{off:#x}/{size:#x}"


def call_trace(frames: Sequence[str]) -> list[str]:
    """``show_trace_log_lvl()``: "Call Trace:" and one indented frame per line, innermost
    first."""
    return ["Call Trace:", *(f" {symbol_frame(f)}" for f in frames if f)]


class _BugCpu(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def local_ns(self) -> int: ...


class BugContext(Protocol):
    """What a report reads of ``current``: its CPU (id and clock), pid and comm."""

    @property
    def pid(self) -> int: ...
    @property
    def cpu(self) -> _BugCpu: ...
    @property
    def comm(self) -> str: ...


@attrs.frozen
class _AtCpu:
    id: int
    local_ns: int


@attrs.frozen
class ReportContext:
    """A :class:`BugContext` rebuilt from a report that has already been taken (a splat)."""

    pid: int
    comm: str
    cpu: _AtCpu

    @classmethod
    def at(cls, cpu: int, pid: int, comm: str, time_ns: int) -> ReportContext:
        return cls(pid, comm, _AtCpu(cpu, time_ns))


class _Site(Protocol):
    file: str
    line: int
    time_ns: int
    cpu: int
    comm: str


def _track(what: str, site: object) -> list[str]:
    """``print_track()``: "Allocated by task ..." and its stack, or "(stack is not available)".
    rcukit keeps the task, CPU, time and the Python line of the modelled caller."""
    if site is None:
        return [f"{what} by task ?:", "(stack is not available)", ""]
    s = cast(_Site, site)
    return [
        f"{what} by task {s.comm} on cpu {s.cpu} at {s.time_ns / 1e9:.6f}s:",
        f" {os.path.basename(s.file)}:{s.line}",
        "",
    ]


@attrs.frozen
class BugReport:
    """One report the kernel found: its kind, where, and the text as printed.

    ``kind`` is ``"warning"`` (``__warn``), ``"kasan"`` (a KASAN report) or ``"bad_page"``.
    ``taint`` is the taint string *after* the report (``/proc/sys/kernel/tainted`` letters).
    ``printed`` is False for a report the kernel would swallow (KASAN's one-shot)."""

    kind: str
    title: str
    cpu: int
    comm: str
    pid: int
    time_ns: int
    text: str
    taint: str
    printed: bool = True

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "title": self.title,
            "cpu": self.cpu,
            "comm": self.comm,
            "pid": self.pid,
            "time_ns": self.time_ns,
            "taint": self.taint,
            "printed": self.printed,
        }


@attrs.define(eq=False, kw_only=True)
class PanicState:
    """One kernel's ``tainted_mask``, ``panic_on_warn`` and the bug reports it printed."""

    #: The kernel whose formats are printed, ``(major, minor)``, and its release string.
    version: tuple[int, int] = (5, 9)
    release: str = "5.9.0-rcukit"
    #: ``kernel.panic_on_warn``: the first WARN (or KASAN report) panics.
    panic_on_warn: bool = False
    #: Where printed reports go (None: kept in ``reports`` only).
    out: TextIO | None = None
    tainted_mask: int = attrs.field(default=0, init=False)
    reports: list[BugReport] = attrs.field(factory=list, init=False)
    #: Reports per kind, printed or not.
    counts: Counter[str] = attrs.field(factory=Counter, init=False)
    #: ``KASAN_BIT_REPORTED``.
    kasan_reported: bool = attrs.field(default=False, init=False)
    #: ``__debug_locks_off()`` of the lock model (set by the machine): True if it was on.
    debug_locks_off: Callable[[], bool] | None = attrs.field(default=None, init=False)
    listeners: list[Callable[[BugReport], None]] = attrs.field(factory=list, init=False)
    max_recorded: int = attrs.field(default=1000, init=False)
    #: ``bad_page()``'s ratelimit (its function-static ``nr_shown``, ``nr_unshown`` and
    #: ``resume``, the last in simulated ns).
    bad_page_shown: int = attrs.field(default=0, init=False)
    bad_page_unshown: int = attrs.field(default=0, init=False)
    bad_page_resume_ns: int = attrs.field(default=0, init=False)

    # -- taint ---------------------------------------------------------------------------------
    def add_taint(self, flag: int, *, lockdep_ok: bool = True) -> list[str]:
        """``add_taint()``: set ``flag``; ``LOCKDEP_NOW_UNRELIABLE`` turns lockdep off. Returns
        what it printed."""
        lines: list[str] = []
        if not lockdep_ok and self.debug_locks_off is not None and self.debug_locks_off():
            lines.append("Disabling lock debugging due to kernel taint")
        self.tainted_mask |= 1 << flag
        return lines

    def test_taint(self, flag: int) -> bool:
        return bool(self.tainted_mask >> flag & 1)

    def print_tainted(self) -> str:
        return print_tainted(self.tainted_mask, self.version)

    @property
    def taint(self) -> str:
        """The set flags' letters, ``""`` when untainted."""
        return taint_letters(self.tainted_mask)

    # -- pieces of a report --------------------------------------------------------------------
    def dump_stack(
        self, ctx: BugContext, frames: Sequence[str], *, workqueue: str = ""
    ) -> list[str]:
        """``dump_stack()``: ``dump_stack_print_info()``'s lines, then the call trace (with
        ``dump_stack``/``dump_stack_lvl`` itself as the innermost frame, 5.14+ the latter)."""
        lines = dump_stack_print_info(
            ctx.cpu.id, ctx.pid, ctx.comm, self.tainted_mask, self.release, self.version
        )
        if workqueue:
            lines.append(f"Workqueue: {workqueue}")
        top = "dump_stack_lvl" if self.version >= (5, 14) else "dump_stack"
        lines.extend(call_trace([top, *frames]))
        return lines

    def _end_marker(self) -> str:
        """``print_oops_end_marker()``: a random ``oops_id`` up to 5.16, zeros from 5.17
        (e83a4472bf9f "panic: remove oops_id"); the made-up id is fixed per release."""
        oops_id = 0 if self.version >= (5, 17) else zlib.crc32(self.release.encode()) << 16
        return f"---[ end trace {oops_id:016x} ]---"

    def _emit(self, report: BugReport) -> BugReport:
        self.counts[report.kind] += 1
        if len(self.reports) < self.max_recorded:
            self.reports.append(report)
        if report.printed and self.out is not None:
            print(report.text, file=self.out)
        for cb in self.listeners:
            cb(report)
        return report

    def _report(
        self, kind: str, title: str, ctx: BugContext, lines: list[str], *, printed: bool = True
    ) -> BugReport:
        return self._emit(
            BugReport(
                kind=kind, title=title, cpu=ctx.cpu.id, comm=ctx.comm, pid=ctx.pid,
                time_ns=ctx.cpu.local_ns, text="\n".join(lines), taint=self.taint,
                printed=printed,
            )
        )

    # -- the reports ---------------------------------------------------------------------------
    def warn(
        self,
        ctx: BugContext,
        caller: str,
        frames: Sequence[str],
        *,
        message: str = "",
        workqueue: str = "",
    ) -> BugReport:
        """``report_bug()`` of a ``WARN()`` in ``caller``, then ``__warn()``.

        With ``panic_on_warn`` it panics after the WARNING line, the message and (5.10+)
        "Modules linked in:", before the stack dump, as ``__warn()`` does; otherwise
        TAINT_WARN is added after the report, so the report's own header still shows the
        taint from before it."""
        head = [
            "------------[ cut here ]------------",
            f"WARNING: CPU: {ctx.cpu.id} PID: {ctx.pid} at {symbol_frame(caller)}",
        ]
        if message:
            head.append(message)
        title = f"WARNING: CPU: {ctx.cpu.id} PID: {ctx.pid} at {caller}"
        if self.panic_on_warn:
            # 3f388f28639f (5.10) moved the check after print_modules() and show_regs().
            printed = [*head, "Modules linked in:"] if self.version >= (5, 10) else head
            self._report("warning", title, ctx, printed)
            origin = "kernel: " if self.version >= (6, 2) else ""
            self.panic(ctx, f"{origin}panic_on_warn set ...", frames, workqueue=workqueue)
        lines = [
            *head,
            "Modules linked in:",
            *self.dump_stack(ctx, frames, workqueue=workqueue),
            self._end_marker(),
        ]
        self.add_taint(TAINT_WARN)
        return self._report("warning", title, ctx, lines)

    def kasan_report_invalid_free(
        self,
        ctx: BugContext,
        err: MemoryDebugError,
        ip: str,
        frames: Sequence[str],
        *,
        workqueue: str = "",
    ) -> BugReport:
        """``kasan_report_invalid_free()`` and ``end_report()`` for a free KASAN refused.

        ``err`` carries what the slab allocator found (:class:`rcukit.errors.MemoryDebugError`:
        kind, pointer, sites). The caller skips the object, as ``slab_free_hook()`` returning
        true leaves it out of the freelist: the rest of a bulk free goes on."""
        kind = err.kind or "invalid-free"
        if self.version < (6, 0):
            kind = "double-free or invalid-free"
        title = f"BUG: KASAN: {kind} in {ip}"
        printed = True
        if self.version >= (5, 18):
            printed = not self.kasan_reported
            self.kasan_reported = True
        lines = [_RULE, f"BUG: KASAN: {kind} in {symbol_frame(ip)}", ""]
        lines.extend(self.dump_stack(ctx, frames, workqueue=workqueue))
        lines.append("")
        for what, site in err.sites:
            lines.extend(_track(what, site))
        lines.append(f"The buggy address {err.ptr:#x}: {err.detail}" if err.detail else
                     f"The buggy address {err.ptr:#x}")
        lines.append(_RULE)
        # end_report(): add_taint() right after the closing rule up to 5.17, after the
        # panic_on_warn check from 5.18 (kasan_multi_shot is not modelled).
        taint_first = self.version < (5, 18)
        if taint_first:
            lines.extend(self.add_taint(TAINT_BAD_PAGE, lockdep_ok=False))
        if self.panic_on_warn:
            self._report("kasan", title, ctx, lines, printed=printed)
            origin = "KASAN: " if self.version >= (6, 2) else ""
            self.panic(ctx, f"{origin}panic_on_warn set ...", frames, workqueue=workqueue)
        if not taint_first:
            lines.extend(self.add_taint(TAINT_BAD_PAGE, lockdep_ok=False))
        return self._report("kasan", title, ctx, lines, printed=printed)

    def bad_page(
        self, ctx: BugContext, err: MemoryDebugError, frames: Sequence[str], *, workqueue: str = ""
    ) -> BugReport:
        """``bad_page()`` (mm/page_alloc.c): "BUG: Bad page state in process <comm>
        pfn:<pfn>", ``dump_page()``'s "page dumped because: <reason>", the modules, a stack
        dump; ``add_taint(TAINT_BAD_PAGE, LOCKDEP_NOW_UNRELIABLE)`` even when the report is
        swallowed. The page is left alone (not freed) and the kernel goes on; ``bad_page()``
        does not check ``panic_on_warn``. Ratelimited as the kernel's: a burst of 60 reports,
        then silence until a minute after the burst's first, then "BUG: Bad page state: N
        messages suppressed". The page's flags and counts (``__dump_page()``'s other lines) are
        not modelled; the reason is rcukit's own wording of what its page map found."""
        now = ctx.cpu.local_ns
        lines: list[str] = []
        printed = True
        if self.bad_page_shown == 60:
            if now < self.bad_page_resume_ns:
                self.bad_page_unshown += 1
                printed = False
            else:
                if self.bad_page_unshown:
                    lines.append(
                        f"BUG: Bad page state: {self.bad_page_unshown} messages suppressed"
                    )
                    self.bad_page_unshown = 0
                self.bad_page_shown = 0
        if printed:
            if self.bad_page_shown == 0:
                self.bad_page_resume_ns = now + 60 * 10**9
            self.bad_page_shown += 1
        title = f"BUG: Bad page state in process {ctx.comm}"
        if err.pfn is not None:
            title += f"  pfn:{err.pfn:05x}"
        lines += [title, f"page dumped because: {err.detail or err}", "Modules linked in:"]
        lines.extend(self.dump_stack(ctx, frames, workqueue=workqueue))
        lines.extend(self.add_taint(TAINT_BAD_PAGE, lockdep_ok=False))
        return self._report("bad_page", title, ctx, lines, printed=printed)

    def panic(
        self, ctx: BugContext, message: str, frames: Sequence[str], *, workqueue: str = ""
    ) -> NoReturn:
        """``panic()``: "Kernel panic - not syncing: <message>", a stack dump
        (``CONFIG_DEBUG_BUGVERBOSE``), the end line; raises :class:`KernelPanic` (the machine
        stops: every CPU is halted)."""
        head = f"Kernel panic - not syncing: {message}"
        lines = [head, *self.dump_stack(ctx, frames, workqueue=workqueue),
                 f"---[ end {head} ]---"]
        report = self._report("panic", head, ctx, lines)
        raise KernelPanic(report.text, title=head)
