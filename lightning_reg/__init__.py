"""lightning-reg: learning-rate scheduling and regularization for PyTorch Lightning.

Every public name is importable from here; the modules hold one job each:

- :mod:`lightning_reg.schedules`: pure schedules ``step -> lr`` (``OneCycle``, decays).
- :mod:`lightning_reg.callbacks`: the Lightning callbacks (LR schedulers, ``MaxNorm``).
- :mod:`lightning_reg.lr_range`: the LR range test of ``OneCycleScheduler(max_lr="auto")``.
- :mod:`lightning_reg.selection`: which weights to regularize (``select_weights``).
- :mod:`lightning_reg.penalties`: the l1/l2 penalty on tensors (value, gradient, proximal step).
- :mod:`lightning_reg.max_norm`: ``apply_max_norm_`` on plain tensors and modules.
- :mod:`lightning_reg.module`: ``WeightPenaltyMixin``, ``RegularizedModule``.
- :mod:`lightning_reg.layers`: MC dropout layers, activations, init presets, dense blocks.
- :mod:`lightning_reg.uncertainty`: Monte Carlo dropout prediction.
- :mod:`lightning_reg.plotting`: ``plot_schedule`` (needs the ``plot`` extra).

Demo code (data modules, the ready ``RegularizedMLP``, the report and the ``lightning-reg``
command) lives apart in :mod:`lightning_reg.demos`.
"""

from lightning_reg.callbacks import (
    LRCallback,
    MaxNorm,
    OneCycleScheduler,
    PerformanceScheduler,
    ScheduledLR,
)
from lightning_reg.layers import MCAlphaDropout, MCDropout, dense_block, init_weights_
from lightning_reg.lr_range import LRRangeTest
from lightning_reg.max_norm import apply_max_norm_
from lightning_reg.module import RegularizedModule, WeightPenaltyMixin
from lightning_reg.penalties import weight_penalty
from lightning_reg.plotting import plot_schedule
from lightning_reg.schedules import (
    Chain,
    Constant,
    CosineDecay,
    ExponentialDecay,
    Knots,
    LinearWarmup,
    OneCycle,
    PiecewiseConstant,
    PolynomialDecay,
    PowerDecay,
    Schedule,
)
from lightning_reg.selection import select_weights
from lightning_reg.uncertainty import MCDropoutMixin, MCDropoutResult, mc_dropout_predict

__all__ = [
    "Chain",
    "Constant",
    "CosineDecay",
    "ExponentialDecay",
    "Knots",
    "LRCallback",
    "LRRangeTest",
    "LinearWarmup",
    "MCAlphaDropout",
    "MCDropout",
    "MCDropoutMixin",
    "MCDropoutResult",
    "MaxNorm",
    "OneCycle",
    "OneCycleScheduler",
    "PerformanceScheduler",
    "PiecewiseConstant",
    "PolynomialDecay",
    "PowerDecay",
    "RegularizedModule",
    "ScheduledLR",
    "Schedule",
    "WeightPenaltyMixin",
    "apply_max_norm_",
    "dense_block",
    "init_weights_",
    "mc_dropout_predict",
    "plot_schedule",
    "select_weights",
    "weight_penalty",
]
__version__ = "0.1.0"
