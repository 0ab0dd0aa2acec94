"""Splats: the reports the kernel prints, as data first and kernel-format text second.

The text follows the kernel version the report is for (``Splat.version``), because the reports
changed: ``__might_resched()`` (5.17, "sched: Make might_sleep() output less confusing" and
"sched: Make RCU nest depth distinct in __might_resched()") added the ``preempt_count:`` and
``RCU nest depth:`` lines that ``___might_sleep()`` (5.9) does not print; ``dump_stack()``'s
header is :func:`rcukit.panic.dump_stack_print_info` (``UID:`` and the verbose taint line from
6.11); ``print_tainted()`` prints one column per taint flag (18 up to
5.19, 19 with TAINT_TEST from 6.0, 20 with TAINT_FWCTL from 6.15).

Simplified: the call trace names the report's own functions and the modelled caller, with
made-up offsets fixed per symbol (:func:`rcukit.panic.symbol_frame`) so the text never depends on
the Python code around the model; addresses of code are made up (stable per symbol), and
``print_irqtrace_events()``'s ``irq event stamp`` block (printed when IRQs are off) is left out:
rcukit does not count IRQ on/off events.
"""

from __future__ import annotations

import zlib

import attrs

from rcukit.panic import dump_stack_print_info, print_tainted, symbol_frame

SPLAT_KINDS = ("invalid_wait_context", "scheduling_while_atomic", "sleeping_in_atomic", "rcu_stall")

#: The first line the kernel prints for each kind of report.
SPLAT_TITLES = {
    "invalid_wait_context": "BUG: Invalid wait context",
    "scheduling_while_atomic": "BUG: scheduling while atomic",
    "sleeping_in_atomic": "BUG: sleeping function called from invalid context",
    "rcu_stall": "INFO: rcu_preempt detected stalls on CPUs/tasks",
}

def text_addr(sym: str) -> str:
    """A made-up kernel text address for ``sym``, the same on every run (``[<%px>]``)."""
    if not sym:
        return "0000000000000000"
    return f"{0xFFFFFFFF81000000 + (zlib.crc32(sym.encode()) & 0xFFFFF0):016x}"


@attrs.frozen
class HeldLockInfo:
    name: str
    addr: int
    outer: int
    inner: int
    ip: str


@attrs.frozen
class Splat:
    """One report. ``site`` is the Python ``file:line`` that led to it.

    The checker fills in the state the kernel prints from at the time of the report: its
    version, whether lockdep was already off (``debug_locks``), whether a previous report had
    tainted the kernel, and whether this one was printed at all (``printed``; lockdep is
    one-shot and ``might_sleep`` rate-limited, so most violations are counted, not printed).
    """

    kind: str
    cpu: int
    comm: str
    pid: int
    time_ns: int
    release: str
    lock_name: str = ""
    lock_addr: int = 0
    lock_outer: int = 0
    lock_inner: int = 0
    ip: str = ""
    site: str = ""
    context: tuple[int, int] = (0, 0)
    held: tuple[HeldLockInfo, ...] = ()
    #: ``preempt_count()`` as the report prints it (HARDIRQ/SOFTIRQ offsets included).
    preempt_count: int = 0
    irqs_disabled: bool = False
    detail: str = ""
    #: Where preemption was disabled (the first held lock that disabled it), if a lock did.
    preempt_ip: str = ""
    #: ``rcu_preempt_depth()``, printed by ``__might_resched`` as "RCU nest depth".
    rcu_depth: int = 0
    #: The ``expected`` of "RCU nest depth" (``rtlock_might_resched()`` passes the current depth).
    rcu_expected: int = 0
    #: ``__FILE__:__LINE__`` of the ``might_sleep`` check; empty prints ``site``.
    file_line: str = ""
    #: Kernel version whose format to print, ``(major, minor)``.
    version: tuple[int, int] = (5, 9)
    #: ``CONFIG_PREEMPT_RCU``: ``__might_resched`` prints "RCU nest depth" only then.
    preempt_rcu: bool = False
    #: ``tainted_mask`` when the report was printed: earlier reports' flags ("Tainted: G  B  W"
    #: instead of "Not tainted"; see :mod:`rcukit.panic`).
    taint: int = 0
    #: lockdep had turned itself off (``debug_locks == 0``) before this report.
    lockdep_off: bool = False
    #: The kernel printed this report (it was not suppressed by one-shot or rate limit).
    printed: bool = False

    @property
    def title(self) -> str:
        if self.kind == "rcu_stall" and self.detail:
            # print_other_cpu_stall(): "INFO: %s detected stalls on CPUs/tasks:" names the
            # run's flavour (rcu_state.name: rcu_preempt or rcu_sched), so take it from there
            return self.detail.partition("\n")[0].removesuffix(":")
        return SPLAT_TITLES[self.kind]

    def key(self) -> tuple[str, str, str, str]:
        """One problem: kind, lock, ip and site (``LockChecker.splats`` keeps one per key)."""
        return (self.kind, self.lock_name, self.ip, self.site)

    def format(self, *, dump_stack: bool = True) -> str:
        """The report as printed. ``dump_stack=False``: what ``__schedule_bug()`` printed
        before ``panic_on_warn`` stopped it (the stack dump comes after that check)."""
        if self.kind == "invalid_wait_context":
            return self._format_wait_context()
        if self.kind == "scheduling_while_atomic":
            return self._format_sched_atomic(dump_stack)
        if self.kind == "sleeping_in_atomic":
            return self._format_might_sleep()
        return self.detail

    def __str__(self) -> str:
        return self.format()

    def _lockdep_held_locks(self) -> list[str]:
        """``lockdep_print_held_locks()``."""
        n = len(self.held)
        if not n:
            return [f"no locks held by {self.comm}/{self.pid}."]
        word = "lock" if n == 1 else "locks"
        lines = [f"{n} {word} held by {self.comm}/{self.pid}:"]
        for i, h in enumerate(self.held):
            lines.append(
                f" #{i}: {h.addr:016x} ({h.name}){{....}}-{{{h.outer}:{h.inner}}}"
                f", at: {symbol_frame(h.ip)}"
            )
        return lines

    def _debug_show_held_locks(self) -> list[str]:
        """``debug_show_held_locks()``: nothing to show once lockdep has turned itself off."""
        if self.lockdep_off:
            return ["INFO: lockdep is turned off."]
        return self._lockdep_held_locks()

    def _preempt_disabled_at(self) -> list[str]:
        """``pr_err("Preemption disabled at:")`` then ``print_ip_sym()`` (CONFIG_DEBUG_PREEMPT)."""
        ip = self.preempt_ip
        sym = symbol_frame(ip) if ip else "0x0"
        return ["Preemption disabled at:", f"[<{text_addr(ip)}>] {sym}"]

    def _reporter_frames(self) -> list[str]:
        """The frames between ``dump_stack()`` and the modelled caller (``ip``): the function
        that printed the report and the path to it (kernel/locking/lockdep.c,
        kernel/sched/core.c, kernel/locking/spinlock_rt.c)."""
        if self.kind == "invalid_wait_context":
            return ["__lock_acquire", "lock_acquire"]
        if self.kind == "scheduling_while_atomic":
            return ["__schedule_bug", "__schedule", "schedule"]
        might = "__might_resched" if self.version >= (5, 17) else "___might_sleep"
        if self.file_line.startswith("kernel/locking/"):
            return [might, "rt_spin_lock"]
        return [might]

    def _trailer(self) -> list[str]:
        """``dump_stack()``: ``dump_stack_print_info()``'s line, then the call trace, one frame
        per line, kernel symbols only (the Python site stays in ``site``, not in the text)."""
        top = "dump_stack_lvl" if self.version >= (5, 14) else "dump_stack"
        frames = [top, *self._reporter_frames(), self.ip]
        return [
            *dump_stack_print_info(
                self.cpu, self.pid, self.comm, self.taint, self.release, self.version
            ),
            "Call Trace:",
            *(f" {symbol_frame(f)}" for f in frames if f),
        ]

    def _format_wait_context(self) -> str:
        """``print_lock_invalid_wait_context()`` (kernel/locking/lockdep.c, 5.7+)."""
        rule = "=" * 29
        lines = [
            "",
            rule,
            "[ BUG: Invalid wait context ]",
            # print_kernel_ident(): release, version up to its first space, print_tainted().
            f"{self.release} #1 {print_tainted(self.taint, self.version)}",
            "-" * 29,
            f"{self.comm}/{self.pid} is trying to lock:",
            f"{self.lock_addr:016x} ({self.lock_name}){{....}}"
            f"-{{{self.lock_outer}:{self.lock_inner}}}, at: {symbol_frame(self.ip)}",
            "other info that might help us debug this:",
            f"context-{{{self.context[0]}:{self.context[1]}}}",
            *self._lockdep_held_locks(),
            "stack backtrace:",
            *self._trailer(),
        ]
        return "\n".join(lines)

    def _format_sched_atomic(self, dump_stack: bool = True) -> str:
        """``__schedule_bug()`` (kernel/sched/core.c): title, held locks, modules, and where
        preemption went off when ``in_atomic_preempt_off()`` (always, once it reports); then
        the ``panic_on_warn`` check, then ``dump_stack()``."""
        lines = [
            f"BUG: scheduling while atomic: {self.comm}/{self.pid}/0x{self.preempt_count:08x}",
            *self._debug_show_held_locks(),
            "Modules linked in:",
            *self._preempt_disabled_at(),
        ]
        if dump_stack:
            lines.extend(self._trailer())
        return "\n".join(lines)

    def _format_might_sleep(self) -> str:
        """``___might_sleep()`` (5.9) / ``__might_resched()`` (5.17+), kernel/sched/core.c."""
        lines = [
            "BUG: sleeping function called from invalid context at "
            f"{self.file_line or self.site}",
            f"in_atomic(): {int(self.preempt_count > 0)}, irqs_disabled(): "
            f"{int(self.irqs_disabled)}, non_block: 0, pid: {self.pid}, name: {self.comm}",
        ]
        if self.version >= (5, 17):
            lines.append(f"preempt_count: {self.preempt_count:x}, expected: 0")
            if self.preempt_rcu:
                lines.append(f"RCU nest depth: {self.rcu_depth}, expected: {self.rcu_expected}")
            lines.extend(self._debug_show_held_locks())
            show_preempt = self.preempt_count != 0
        else:
            lines.extend(self._debug_show_held_locks())
            # preempt_count_equals() counts rcu_preempt_depth() in (not on RT, where the -rt
            # patch's sched_rcu_preempt_depth() is 0: rcu_expected carries the depth then).
            show_preempt = self.preempt_count + self.rcu_depth - self.rcu_expected != 0
        if show_preempt:
            lines.extend(self._preempt_disabled_at())
        lines.extend(self._trailer())
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "cpu": self.cpu,
            "comm": self.comm,
            "pid": self.pid,
            "time_ns": self.time_ns,
            "lock": self.lock_name,
            "ip": self.ip,
            "site": self.site,
            "held": [h.name for h in self.held],
            "printed": self.printed,
        }
