"""The supernode's piece scheduler: a pure core (state + event → decisions), see scheduler.py."""

from damselfly.scheduler.config import SchedulerConfig
from damselfly.scheduler.scheduler import ExpireReport, Scheduler
from damselfly.scheduler.states import IllegalTransition

__all__ = ["ExpireReport", "IllegalTransition", "Scheduler", "SchedulerConfig"]
