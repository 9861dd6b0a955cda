"""``PerformanceScheduler``: reduce the learning rate when a monitored metric plateaus."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_reg._validation import check_int, check_non_negative, check_number
from lightning_reg.callbacks._lr_base import LRCallback

__all__ = ["PerformanceScheduler"]

_MODES = ("min", "max")
_CHECK_ON = ("validation_end", "train_epoch_end")
# torch's ReduceLROnPlateau ignores reductions smaller than this.
_EPS = 1e-8


class PerformanceScheduler(LRCallback):
    """Multiply the learning rate by ``factor`` when ``monitor`` stops improving.

    Performance scheduling (reduce on plateau) as a callback: after every validation run (or every
    training epoch with ``check_on="train_epoch_end"``) it reads ``monitor`` from
    ``trainer.callback_metrics``. A value better than the best so far by more than ``min_delta``
    resets the count of bad evaluations; after ``patience`` consecutive bad evaluations (at least
    one) every param group's LR is multiplied by ``factor`` (never below ``min_lr``), and the
    next ``cooldown`` evaluations are not counted as bad. NaN and inf count as no improvement.

    Every rank takes the same decision: the value is averaged across ranks with the strategy's
    ``reduce`` and rank 0's result is broadcast, so a metric logged without ``sync_dist`` cannot
    make ranks diverge. Best value and counters are saved in checkpoints.

    Args:
        monitor: key of the metric in ``trainer.callback_metrics``. Default ``"val_loss"``.
        mode: ``"min"`` (lower is better, default) or ``"max"``.
        factor: multiplier applied to the LR on a plateau, in ``(0, 1)``. Default ``0.5``.
        patience: consecutive evaluations without improvement after which the LR is reduced,
            ``>= 0`` (Keras' convention; 0 acts as 1). Default ``5``.
        min_delta: smallest change that counts as an improvement, ``>= 0``. Default ``1e-4``.
        cooldown: evaluations after a reduction that are not counted as bad, ``>= 0``.
            Default ``0``.
        min_lr: lower bound of the LR, ``>= 0``, or one per param group. Default ``0.0``.
        check_on: ``"validation_end"`` (default) or ``"train_epoch_end"``.
        strict: raise when ``monitor`` is missing (default); ``False`` warns and skips the check.
        log_values: log the LR as ``lr-pg<k>`` after each check. Default ``True``.

    Raises:
        ValueError, TypeError: for invalid hyperparameters, naming the argument and allowed range.
        MisconfigurationException: at fit time, without an optimizer, beside an ``lr_scheduler``
            from ``configure_optimizers`` or another learning-rate callback; and when ``monitor``
            is missing with ``strict=True`` (the message lists the available keys).

    Example::

        from lightning_reg import PerformanceScheduler

        trainer = Trainer(callbacks=[PerformanceScheduler(monitor="val_loss", patience=3)])
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: Literal["min", "max"] = "min",
        factor: float = 0.5,
        patience: int = 5,
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float | Sequence[float] = 0.0,
        check_on: Literal["validation_end", "train_epoch_end"] = "validation_end",
        strict: bool = True,
        log_values: bool = True,
    ) -> None:
        super().__init__(log_values=log_values)
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"`monitor` must be a non-empty string, got {monitor!r}.")
        if mode not in _MODES:
            raise ValueError(f"`mode` must be one of {_MODES}, got {mode!r}.")
        if check_on not in _CHECK_ON:
            raise ValueError(f"`check_on` must be one of {_CHECK_ON}, got {check_on!r}.")
        self.monitor = monitor
        self.mode = mode
        self.factor = check_number("factor", factor, "in (0, 1)", lambda x: 0 < x < 1)
        self.patience = check_int("patience", patience, 0)
        self.min_delta = check_non_negative("min_delta", min_delta)
        self.cooldown = check_int("cooldown", cooldown, 0)
        lrs = list(min_lr) if isinstance(min_lr, Sequence) else [min_lr]
        self.min_lr = [check_non_negative("min_lr", v) for v in lrs]
        self.check_on = check_on
        self.strict = bool(strict)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad = 0
        self.cooldown_counter = 0
        self.num_reductions = 0

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    def is_improvement(self, value: float) -> bool:
        """Whether ``value`` beats the best so far by more than ``min_delta`` (NaN never does)."""
        if not math.isfinite(value):
            return False
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def step(self, value: float) -> bool:
        """Record one evaluation; return whether the LR must be reduced now.

        The ``patience``-th consecutive evaluation without improvement asks for a reduction
        (Keras' convention; torch's ``ReduceLROnPlateau`` waits one evaluation more). The
        ``cooldown`` evaluations after a reduction may still set a new best but are not counted
        as bad. Pure bookkeeping, usable without a Trainer; the callback calls it with the
        rank-agreed value.
        """
        improved = self.is_improvement(value)
        if improved:
            self.best = value
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad = 0
            return False
        self.num_bad = 0 if improved else self.num_bad + 1
        if self.num_bad >= max(self.patience, 1):
            self.cooldown_counter = self.cooldown
            self.num_bad = 0
            return True
        return False

    # -- Lightning hooks ----------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check_fit(trainer)
        num_groups = sum(len(opt.param_groups) for opt in trainer.optimizers)
        if len(self.min_lr) not in (1, num_groups):
            raise ValueError(
                f"`min_lr` has {len(self.min_lr)} values but the optimizers have {num_groups} "
                "param groups; pass one value, or exactly one per param group."
            )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fitting = trainer.state.fn == "fit" and not trainer.sanity_checking
        if self.check_on == "validation_end" and fitting:
            self._check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.check_on == "train_epoch_end":
            self._check(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "num_bad": self.num_bad,
            "cooldown_counter": self.cooldown_counter,
            "num_reductions": self.num_reductions,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = float(state_dict["best"])
        self.num_bad = int(state_dict["num_bad"])
        self.cooldown_counter = int(state_dict["cooldown_counter"])
        self.num_reductions = int(state_dict["num_reductions"])

    # -- internals ----------------------------------------------------------------------------
    def _read_monitor(self, trainer: pl.Trainer) -> float | None:
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            keys = ", ".join(sorted(metrics)) or "none"
            message = (
                f"{self.name} monitors {self.monitor!r}, which is not among the logged metrics "
                f"(available: {keys}). Log it with `self.log({self.monitor!r}, ...)` in your "
                "LightningModule, or pass the right `monitor=`."
            )
            if self.strict:
                raise MisconfigurationException(message + " Pass `strict=False` to only warn.")
            self.warn(message + " Skipping this check.")
            return None
        value = torch.as_tensor(metrics[self.monitor], dtype=torch.float64)
        value = trainer.strategy.reduce(value.to(trainer.strategy.root_device), reduce_op="mean")
        # One host read per evaluation (not per step), then rank 0's value is broadcast.
        return float(trainer.strategy.broadcast(float(value), src=0))

    def _check(self, trainer: pl.Trainer) -> None:
        value = self._read_monitor(trainer)
        if value is None:
            return
        if self.step(value):
            self._reduce(trainer)
        self.log_groups(trainer, momentum=False)

    def _reduce(self, trainer: pl.Trainer) -> None:
        groups = [group for _, _, group in self.param_groups(trainer)]
        floors = self.min_lr * len(groups) if len(self.min_lr) == 1 else self.min_lr
        for group, floor in zip(groups, floors, strict=True):
            old = float(group["lr"])
            new = max(old * self.factor, floor)
            if old - new > _EPS:
                group["lr"] = new
        self.num_reductions += 1
