"""Lock types with lockdep's wait types, the wait-context checker, and splat reports."""

from rcukit.locking.checker import LockChecker as LockChecker
from rcukit.locking.checker import LockStats as LockStats
from rcukit.locking.locks import HeldLock as HeldLock
from rcukit.locking.locks import Lock as Lock
from rcukit.locking.locks import LockKind as LockKind
from rcukit.locking.locks import WaitType as WaitType
from rcukit.locking.splat import SPLAT_KINDS as SPLAT_KINDS
from rcukit.locking.splat import Splat as Splat
