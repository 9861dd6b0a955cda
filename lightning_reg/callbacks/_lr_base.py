"""Shared machinery of the callbacks that own the learning rate of the Trainer's optimizers.

A callback of this family is the single writer of ``param_group["lr"]`` (and momentum): at fit
time it refuses to run beside an ``lr_scheduler`` from ``configure_optimizers`` or another
callback of the family on the same optimizers, because two writers silently fight.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch.optim import Optimizer

__all__ = ["LRCallback", "momentum_key", "set_momentum"]


def momentum_key(group: dict[str, Any]) -> str | None:
    """The key that holds a param group's momentum: ``"momentum"`` (SGD, RMSprop), ``"betas"``
    (Adam family, whose ``betas[0]`` is the momentum) or ``None`` when the optimizer has neither."""
    if "momentum" in group:
        return "momentum"
    if "betas" in group:
        return "betas"
    return None


def set_momentum(group: dict[str, Any], value: float) -> None:
    """Set a param group's momentum (SGD/RMSprop ``momentum`` or Adam-family ``betas[0]``)."""
    key = momentum_key(group)
    if key == "momentum":
        group["momentum"] = value
    elif key == "betas":
        group["betas"] = (value, *tuple(group["betas"])[1:])


def check_lr_value(value: Any, where: str) -> float:
    """Validate a learning rate produced by a schedule (a Python number, finite, >= 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{where} must return a Python number (int or float), got {type(value).__name__}. "
            "Return e.g. `float(...)` of a plain computation; tensors would force a host sync."
        )
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{where} returned {value!r}; a learning rate must be finite and >= 0.")
    return float(value)


class LRCallback(Callback):
    """Base class of lightning-reg's learning-rate callbacks.

    Subclasses call :meth:`check_fit` when training starts; it raises when the callback cannot be
    correct: no optimizer, an ``lr_scheduler`` returned by ``configure_optimizers`` that drives the
    same optimizer, or a second learning-rate callback of this family.

    Args:
        log_values: log the learning rate (and momentum) it sets as ``lr-pg<k>`` /
            ``momentum-pg<k>`` through the Trainer's loggers, ``k`` counting the param groups of all
            optimizers in order. Default ``True``.

    Raises:
        TypeError: if ``log_values`` is not a bool.

    Example::

        from lightning_reg import LRCallback, OneCycleScheduler

        cb = OneCycleScheduler(max_lr=0.1)
        assert isinstance(cb, LRCallback)  # one learning-rate callback per Trainer
        trainer = Trainer(max_epochs=5, callbacks=[cb])
    """

    def __init__(self, log_values: bool = True) -> None:
        if not isinstance(log_values, bool):
            raise TypeError(f"`log_values` must be a bool, got {log_values!r}.")
        self.log_values = log_values

    @property
    def name(self) -> str:
        return type(self).__name__

    def check_fit(self, trainer: pl.Trainer) -> None:
        """Raise a ``MisconfigurationException`` when this callback cannot drive the optimizers."""
        # Lightning substitutes an optimizer without param groups when none is configured.
        if not any(opt.param_groups for opt in trainer.optimizers):
            raise MisconfigurationException(
                f"{self.name} sets the learning rate of the Trainer's optimizers, but "
                "`configure_optimizers` returned none. Return an optimizer from it."
            )
        ours = {id(opt) for opt in trainer.optimizers}
        for config in trainer.lr_scheduler_configs:
            if id(getattr(config.scheduler, "optimizer", None)) in ours:
                raise MisconfigurationException(
                    f"{self.name} and the `{type(config.scheduler).__name__}` returned by "
                    "`configure_optimizers` would both set the learning rate of the same "
                    "optimizer. "
                    f"Return only the optimizer from `configure_optimizers`, or drop {self.name}."
                )
        callbacks: list[Callback] = getattr(trainer, "callbacks", [])
        others = [cb for cb in callbacks if isinstance(cb, LRCallback) and cb is not self]
        if others:
            raise MisconfigurationException(
                f"{self.name} and {type(others[0]).__name__} would both set the learning rate "
                "of the same optimizers. Keep one learning-rate callback per Trainer."
            )

    @staticmethod
    def param_groups(trainer: pl.Trainer) -> Iterator[tuple[int, Optimizer, dict[str, Any]]]:
        """Yield ``(optimizer_index, optimizer, param_group)`` over all optimizers in order."""
        for idx, opt in enumerate(trainer.optimizers):
            for group in opt.param_groups:
                yield idx, opt, group

    def log_groups(self, trainer: pl.Trainer, momentum: bool = True) -> None:
        """Log every param group's current LR (and momentum) through the Trainer's loggers."""
        if not self.log_values or not trainer.loggers:
            return
        metrics: dict[str, float] = {}
        for k, (_, _, group) in enumerate(self.param_groups(trainer)):
            metrics[f"lr-pg{k}"] = float(group["lr"])
            key = momentum_key(group) if momentum else None
            if key == "momentum":
                metrics[f"momentum-pg{k}"] = float(group["momentum"])
            elif key == "betas":
                metrics[f"momentum-pg{k}"] = float(group["betas"][0])
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    @staticmethod
    def warn(message: str) -> None:
        rank_zero_warn(message, category=UserWarning)
