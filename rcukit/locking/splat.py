"""Splats: the reports the kernel prints, as data first and kernel-format text second."""

from __future__ import annotations

import attrs

SPLAT_KINDS = ("invalid_wait_context", "scheduling_while_atomic", "sleeping_in_atomic", "rcu_stall")

_TITLES = {
    "invalid_wait_context": "BUG: Invalid wait context",
    "scheduling_while_atomic": "BUG: scheduling while atomic",
    "sleeping_in_atomic": "BUG: sleeping function called from invalid context",
    "rcu_stall": "INFO: rcu_preempt detected stalls on CPUs/tasks",
}


@attrs.frozen
class HeldLockInfo:
    name: str
    addr: int
    outer: int
    inner: int
    ip: str


@attrs.frozen
class Splat:
    """One report. ``site`` is the Python ``file:line`` that led to it."""

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
    preempt_count: int = 0
    irqs_disabled: bool = False
    detail: str = ""
    #: Where preemption was disabled (the first held lock that disabled it), if a lock did.
    preempt_ip: str = ""
    #: ``rcu_preempt_depth()``, printed by ``__might_sleep`` as "RCU nest depth".
    rcu_depth: int = 0

    @property
    def title(self) -> str:
        return _TITLES[self.kind]

    def key(self) -> tuple[str, str, str, str]:
        """Lockdep reports a given problem once; we key that on kind, lock, ip and site."""
        return (self.kind, self.lock_name, self.ip, self.site)

    def format(self) -> str:
        if self.kind == "invalid_wait_context":
            return self._format_wait_context()
        if self.kind == "scheduling_while_atomic":
            return self._format_sched_atomic()
        if self.kind == "sleeping_in_atomic":
            return self._format_might_sleep()
        return self.detail

    def __str__(self) -> str:
        return self.format()

    def _held_lines(self) -> list[str]:
        n = len(self.held)
        if not n:
            return [f"no locks held by {self.comm}/{self.pid}."]
        word = "lock" if n == 1 else "locks"
        lines = [f"{n} {word} held by {self.comm}/{self.pid}:"]
        for i, h in enumerate(self.held):
            lines.append(
                f" #{i}: {h.addr:016x} ({h.name}){{....}}-{{{h.outer}:{h.inner}}}"
                f", at: {h.ip}+0x0/0x0"
            )
        return lines

    def _trailer(self) -> list[str]:
        return [
            "stack backtrace:",
            f"CPU: {self.cpu} PID: {self.pid} Comm: {self.comm} Not tainted {self.release} #1",
            f"Call Trace: {self.ip}+0x0/0x0 <- {self.site}",
        ]

    def _format_wait_context(self) -> str:
        rule = "=" * 29
        lines = [
            "",
            rule,
            "[ BUG: Invalid wait context ]",
            f"{self.release} #1 Not tainted",
            "-" * 29,
            f"{self.comm}/{self.pid} is trying to lock:",
            f"{self.lock_addr:016x} ({self.lock_name}){{....}}"
            f"-{{{self.lock_outer}:{self.lock_inner}}}, at: {self.ip}+0x0/0x0",
            "other info that might help us debug this:",
            f"context-{{{self.context[0]}:{self.context[1]}}}",
            *self._held_lines(),
            *self._trailer(),
        ]
        return "\n".join(lines)

    def _format_sched_atomic(self) -> str:
        lines = [
            f"BUG: scheduling while atomic: {self.comm}/{self.pid}/0x{self.preempt_count:08x}",
            *self._held_lines(),
            f"Preemption disabled at: {self.preempt_ip or self.ip}+0x0/0x0",
            *self._trailer(),
        ]
        if self.lock_name:
            lines.insert(1, f"sleeping lock: ({self.lock_name}) taken by {self.ip}")
        return "\n".join(lines)

    def _format_might_sleep(self) -> str:
        lines = [
            f"BUG: sleeping function called from invalid context at {self.site}",
            f"in_atomic(): {int(self.preempt_count > 0)}, irqs_disabled(): "
            f"{int(self.irqs_disabled)}, non_block: 0, pid: {self.pid}, name: {self.comm}",
            f"preempt_count: {self.preempt_count:x}, expected: 0",
            f"RCU nest depth: {self.rcu_depth}, expected: 0",
            *self._held_lines(),
            *self._trailer(),
        ]
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
        }
