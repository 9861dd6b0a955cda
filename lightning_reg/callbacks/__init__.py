"""Lightning callbacks: learning-rate schedules and weight constraints."""

from lightning_reg.callbacks._lr_base import LRCallback
from lightning_reg.callbacks.max_norm import MaxNorm
from lightning_reg.callbacks.one_cycle import OneCycleScheduler
from lightning_reg.callbacks.performance import PerformanceScheduler
from lightning_reg.callbacks.scheduled import ScheduledLR

__all__ = ["LRCallback", "MaxNorm", "OneCycleScheduler", "PerformanceScheduler", "ScheduledLR"]
