"""Simulated CPUs and tasks on virtual time (see :mod:`rcukit.sched.sim`)."""

from rcukit.sched.sim import Cpu as Cpu
from rcukit.sched.sim import SchedHooks as SchedHooks
from rcukit.sched.sim import Simulator as Simulator
from rcukit.sched.sim import Task as Task
from rcukit.sched.sim import Timer as Timer
from rcukit.sched.sim import WaitQueue as WaitQueue
