"""Shared machinery of the callbacks that own the learning rate of the Trainer's optimizers.

A callback of this family is the single writer of ``param_group["lr"]`` (and momentum): at fit
time it refuses to run beside an ``lr_scheduler`` from ``configure_optimizers`` or another
callback of the family on the same optimizers, because two writers silently fight.

Lifecycle, the same for every callback of the family:

- ``setup("fit")`` resets the state (:meth:`LRCallback.reset`), so one instance reused across
  Trainers (cross-validation folds) starts every fit afresh;
- Lightning then restores the state from a checkpoint when ``ckpt_path`` is given
  (:meth:`LRCallback.load_state_dict`), which marks the callback as resumed;
- optimizer steps are counted per optimizer with torch's step post-hook from
  ``on_train_start`` (after Lightning restored the optimizers) until the end of training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_reg._loop import batches_that_stepped

__all__ = ["LRCallback", "ScheduleLike", "momentum_key", "set_momentum"]

ScheduleLike = Callable[[int], float]


def momentum_key(group: dict[str, Any]) -> str | None:
    """The key that holds a param group's momentum: ``"momentum"`` (SGD, RMSprop), ``"betas"``
    (Adam family, whose ``betas[0]`` is the momentum) or ``None`` when the optimizer has neither."""
    if "momentum" in group:
        return "momentum"
    if "betas" in group:
        return "betas"
    return None


def get_momentum(group: dict[str, Any]) -> float | None:
    """A param group's momentum (SGD/RMSprop ``momentum``, Adam-family ``betas[0]``) or None."""
    key = momentum_key(group)
    if key == "momentum":
        return float(group["momentum"])
    if key == "betas":
        return float(group["betas"][0])
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

    It owns the lifecycle shared by the family: fresh state at ``setup("fit")`` unless a
    checkpoint is restored, optimizer steps counted per optimizer with torch's step post-hook
    (saved in checkpoints), and the fit-time refusals: no optimizer, an ``lr_scheduler``
    returned by ``configure_optimizers`` that drives the same optimizer, or a second
    learning-rate callback of this family.

    Args:
        log_values: log the learning rate (and momentum) it sets as ``lr-pg<k>`` /
            ``momentum-pg<k>`` through the Trainer's loggers, ``k`` counting the param groups of
            all optimizers in order. Values that a ``LearningRateMonitor`` on the same Trainer
            logs (the LR; the momentum with ``log_momentum=True``) are left to it, so each value
            is one series. Per-step values are logged with ``pl_module.log`` at the start of
            every ``log_every_n_steps``-th batch (the LR that batch trains with, on the rows of
            the module's ``self.log`` metrics); per-epoch and per-evaluation values at
            ``trainer.global_step``. Default ``True``.

    Raises:
        TypeError: if ``log_values`` is not a bool.

    Example:
        >>> from lightning_reg import LRCallback, OneCycleScheduler
        >>> isinstance(OneCycleScheduler(max_lr=0.1), LRCallback)  # one per Trainer
        True
    """

    def __init__(self, log_values: bool = True) -> None:
        if not isinstance(log_values, bool):
            raise TypeError(f"`log_values` must be a bool, got {log_values!r}.")
        self.log_values = log_values
        self._handles: list[RemovableHandle] = []
        LRCallback.reset(self)  # subclasses call `self.reset()` once their config is set

    @property
    def name(self) -> str:
        return type(self).__name__

    # -- lifecycle ----------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything from a previous fit (called at ``setup("fit")``).

        Subclasses extend it with their own state and call ``super().reset()``.
        """
        self._remove_hooks()
        self.steps: list[int] = []
        self.restored = False
        self._log_lr = self._log_momentum = self.log_values

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        callbacks: list[Callback] = getattr(trainer, "callbacks", [])
        others = [cb for cb in callbacks if isinstance(cb, LRCallback) and cb is not self]
        if others:
            raise MisconfigurationException(
                f"{self.name} and {type(others[0]).__name__} would both set the learning rate "
                "of the same optimizers. Keep one learning-rate callback per Trainer (chain "
                "schedules with `lightning_reg.schedules.Chain`, or hand a step schedule over to "
                "plateau scheduling with `PerformanceScheduler(schedule=...)`)."
            )
        monitors = [cb for cb in callbacks if isinstance(cb, LearningRateMonitor)]
        self.reset()
        self._log_lr = self.log_values and not monitors
        self._log_momentum = self.log_values and not any(m.log_momentum for m in monitors)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check_fit(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"steps": list(self.steps)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = [int(s) for s in state_dict.get("steps", [])]
        self.restored = True

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

    # -- counting optimizer steps ----------------------------------------------------------------
    def count_steps(self, trainer: pl.Trainer) -> None:
        """Start counting each optimizer's real steps (from the checkpoint's counts if resumed).

        After every step of optimizer ``i``, ``self.steps[i]`` is incremented and
        :meth:`after_step` is called.
        """
        num_optimizers = len(trainer.optimizers)
        if trainer.ckpt_path is not None and not self.restored:
            self.warn(
                f"{self.name}: the checkpoint {str(trainer.ckpt_path)!r} holds no state of "
                f"{self.name}, so its schedule starts again at step 0 although the run resumes "
                f"at global step {trainer.global_step}."
            )
        if not self.steps:
            self.steps = [0] * num_optimizers
        elif len(self.steps) != num_optimizers:
            raise ValueError(
                f"{self.name}: the checkpoint counted the steps of {len(self.steps)} optimizers, "
                f"but `configure_optimizers` now returns {num_optimizers}. Resume with the same "
                "optimizers, or start a new fit without `ckpt_path`."
            )
        self._remove_hooks()
        for idx, opt in enumerate(trainer.optimizers):
            self._handles.append(opt.register_step_post_hook(self._make_post_hook(trainer, idx)))

    def after_step(self, trainer: pl.Trainer, opt_idx: int) -> None:
        """Called after every real step of optimizer ``opt_idx`` (its count already updated)."""

    def _make_post_hook(self, trainer: pl.Trainer, idx: int) -> Callable[..., None]:
        def post_hook(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
            self.steps[idx] += 1
            self.after_step(trainer, idx)

        return post_hook

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # -- writing and logging ------------------------------------------------------------------
    @staticmethod
    def param_groups(trainer: pl.Trainer) -> Iterator[tuple[int, Optimizer, dict[str, Any]]]:
        """Yield ``(optimizer_index, optimizer, param_group)`` over all optimizers in order."""
        for idx, opt in enumerate(trainer.optimizers):
            for group in opt.param_groups:
                yield idx, opt, group

    def apply(
        self, trainer: pl.Trainer, opt_idx: int, step: int, schedules: Sequence[ScheduleLike]
    ) -> None:
        """Set the LR (and momentum) of optimizer ``opt_idx``'s groups from their schedules at
        ``step``; ``schedules`` holds one schedule per param group of all optimizers."""
        for k, (idx, _, group) in enumerate(self.param_groups(trainer)):
            if idx != opt_idx:
                continue
            schedule = schedules[k]
            group["lr"] = check_lr_value(schedule(step), f"{self.name}'s schedule")
            momentum = getattr(schedule, "momentum", None)
            value = momentum(step) if callable(momentum) else None
            if value is not None:
                set_momentum(group, value)

    def _values(self, trainer: pl.Trainer, momentum: bool) -> dict[str, float]:
        """Every param group's current LR (and momentum) to log, leaving out what a
        ``LearningRateMonitor`` on the Trainer already logs (empty when nothing is to log)."""
        if not (self._log_lr or (momentum and self._log_momentum)) or not trainer.loggers:
            return {}
        metrics: dict[str, float] = {}
        for k, (_, _, group) in enumerate(self.param_groups(trainer)):
            if self._log_lr:
                metrics[f"lr-pg{k}"] = float(group["lr"])
            value = get_momentum(group) if momentum and self._log_momentum else None
            if value is not None:
                metrics[f"momentum-pg{k}"] = value
        return metrics

    def log_groups(self, trainer: pl.Trainer, momentum: bool = True) -> None:
        """Log every param group's current LR (and momentum) through the Trainer's loggers at
        ``trainer.global_step``, leaving out what a ``LearningRateMonitor`` already logs.

        For values set once per epoch or per evaluation; per-batch values go through
        :meth:`log_groups_on_batch`, on the x-axis of ``self.log``.
        """
        metrics = self._values(trainer, momentum)
        if metrics:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def log_groups_on_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """From ``on_train_batch_start``: log the LR (and momentum) this batch trains with
        through ``pl_module.log``, so Lightning writes them on the rows of the metrics the module
        logs with ``self.log`` (one count per batch, also under manual optimization with several
        optimizers, where ``global_step`` counts every optimizer's step).

        Only on the batches Lightning writes to the loggers (every ``log_every_n_steps``): a
        value logged with ``self.log`` becomes a tensor on the module's device.
        """
        every = trainer.log_every_n_steps  # type: ignore[attr-defined]
        if not every:
            return
        batches = batches_that_stepped(trainer, pl_module)
        if (batches + 1) % every != 0 and not trainer.should_stop:
            return
        for key, value in self._values(trainer, momentum=True).items():
            pl_module.log(key, value, on_step=True, on_epoch=False)

    def warn_if_ratio_erased(self, trainer: pl.Trainer) -> None:
        """Warn when one schedule would give param groups with different LRs the same LR."""
        lrs = [float(group["lr"]) for _, _, group in self.param_groups(trainer)]
        if max(lrs) > min(lrs) * (1 + 1e-9):
            self.warn(
                f"{self.name}: the param groups have different learning rates {lrs}, but one "
                "schedule drives all of them to the same value, erasing their ratio. Pass one "
                "schedule per param group (for OneCycleScheduler, one `max_lr` per group, e.g. "
                f"max_lr={[round(lr / max(lrs), 12) for lr in lrs]} times your peak keeps the "
                "ratio)."
            )

    @staticmethod
    def warn(message: str) -> None:
        rank_zero_warn(message, category=UserWarning)
