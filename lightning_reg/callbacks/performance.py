"""``PerformanceScheduler``: reduce the learning rate when a monitored metric plateaus."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_reg._validation import (
    check_bool,
    check_choice,
    check_int,
    check_non_negative,
    check_number,
    one_or_each,
)
from lightning_reg.callbacks._lr_base import LRCallback, assign, config_of, first_momentum
from lightning_reg.schedules import Schedule

__all__ = ["PerformanceScheduler"]

_MODES = ("min", "max")
_THRESHOLD_MODES = ("abs", "rel")
_CHECK_ON = ("validation_end", "train_epoch_end")
# What shapes the trace besides `schedule` (`monitor` and `mode` are what `best` is a best of).
_COMPARED = "schedule_steps factor patience min_delta threshold_mode cooldown min_lr check_on"


class PerformanceScheduler(LRCallback):
    """Multiply the learning rate by ``factor`` when ``monitor`` stops improving.

    Performance scheduling (reduce on plateau) as a callback: after every validation run (or every
    training epoch with ``check_on="train_epoch_end"``) it reads ``monitor`` from
    ``trainer.callback_metrics``. A value better than the best so far by more than ``min_delta``
    (``threshold_mode="abs"``, Keras) or by more than the fraction ``min_delta`` of the best
    (``"rel"``, torch's default) is an improvement and resets the count of bad evaluations;
    after ``patience`` consecutive bad evaluations (at least one) every param group's LR is
    multiplied by ``factor`` (never below ``min_lr``), with a rank-zero message. As in Keras, any
    LR above ``min_lr`` is reduced, however small (torch's ``ReduceLROnPlateau`` skips a
    reduction smaller than its ``eps=1e-8``), and a tensor LR stays a tensor. ``cooldown``
    follows Keras' ``ReduceLROnPlateau`` exactly: after a reduction the counter is decremented
    at each evaluation before it is checked, so the next ``cooldown - 1`` evaluations are not
    counted as bad (``cooldown=0`` and ``1`` both leave none out). NaN and inf count as no
    improvement.

    Hand-over from a step schedule: with ``schedule`` (e.g. a
    :class:`~lightning_reg.schedules.LinearWarmup`) the LR follows it for its first
    ``schedule_steps`` optimizer steps (counted like :class:`ScheduledLR` counts them); the
    evaluations before the hand-over are ignored, and plateau scheduling then starts from the LR
    the schedule ended at. Groups with an ``lr_scale`` follow the schedule times their scale.
    ``StochasticWeightAveraging`` takes over at ``swa_epoch_start``: its ``SWALR`` then sets the
    LR and the evaluations are ignored.

    Every rank takes the same decision: the value is averaged across ranks with the strategy's
    ``reduce`` and rank 0's result is broadcast, so a metric logged without ``sync_dist`` cannot
    make ranks diverge. Lifecycle: each fit starts with no best value and no count unless a
    checkpoint is restored; best value, counters and the step count are saved in checkpoints,
    with the ``monitor`` and ``mode`` the best belongs to (a resume watching another starts the
    count afresh, with a warning) and the other arguments and the warm-up's ``get_config()``: a
    resume given other ones follows them from the saved step count, with a warning naming each.

    Args:
        monitor: key of the metric in ``trainer.callback_metrics``. Default ``"val_loss"``.
        mode: ``"min"`` (lower is better, default) or ``"max"``.
        factor: multiplier applied to the LR on a plateau, in ``(0, 1)``. Default ``0.5``.
        patience: consecutive evaluations without improvement after which the LR is reduced,
            ``>= 0`` (Keras' convention; 0 acts as 1). Default ``5``.
        min_delta: smallest change that counts as an improvement, ``>= 0``. Default ``1e-4``.
        threshold_mode: ``"abs"`` (default): improve on the best by more than ``min_delta``;
            ``"rel"``: beat ``best * (1 - min_delta)`` (``"min"``) or ``best * (1 + min_delta)``
            (``"max"``), torch's ``threshold_mode="rel"``.
        cooldown: as Keras' (see above), ``>= 0``. Default ``0``.
        min_lr: lower bound of the LR, ``>= 0``, or one per param group. Default ``0.0``.
        check_on: ``"validation_end"`` (default) or ``"train_epoch_end"``.
        strict: raise when ``monitor`` is missing (default); ``False`` warns and skips the check.
        log_values: log what it sets through a ``LearningRateMonitor`` unless the Trainer has
            one (see :class:`~lightning_reg.LRCallback`). Default ``True``.
        schedule: a step schedule followed before plateau scheduling takes over. Default
            ``None``: plateau scheduling from the start, on the optimizer's own LR.
        schedule_steps: optimizer steps after which plateau scheduling takes over, int >= 1.
            Default ``None``: ``schedule.length``.

    Raises:
        ValueError, TypeError: for invalid hyperparameters, naming the argument and allowed range.
        MisconfigurationException: at fit time, without an optimizer, beside an ``lr_scheduler``
            from ``configure_optimizers`` or another learning-rate callback; when it can never
            run (``check_on="validation_end"`` with ``limit_val_batches=0``, no
            ``validation_step`` or no validation data); and when ``monitor`` is missing with
            ``strict=True`` (the message lists the available keys).

    Example:
        >>> from lightning_reg import LinearWarmup, PerformanceScheduler
        >>> plateau = PerformanceScheduler(monitor="val_loss", patience=3)
        >>> warm = PerformanceScheduler(schedule=LinearWarmup(steps=100, lr=0.05))
        >>> warm.schedule_steps
        100
    """

    state_names = (
        *LRCallback.state_names,
        *("best", "num_bad", "cooldown_counter", "num_reductions", "watching"),
    )

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
        threshold_mode: Literal["abs", "rel"] = "abs",
        schedule: Schedule | None = None,
        schedule_steps: int | None = None,
    ) -> None:
        super().__init__(log_values=log_values)
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"`monitor` must be a non-empty string, got {monitor!r}.")
        self.monitor = monitor
        self.mode = check_choice("mode", mode, _MODES)
        self.threshold_mode = check_choice("threshold_mode", threshold_mode, _THRESHOLD_MODES)
        self.check_on = check_choice("check_on", check_on, _CHECK_ON)
        self.factor = check_number("factor", factor, "in (0, 1)", lambda x: 0 < x < 1)
        self.patience = check_int("patience", patience, 0)
        self.min_delta = check_non_negative("min_delta", min_delta)
        self.cooldown = check_int("cooldown", cooldown, 0)
        self.min_lr = one_or_each("min_lr", min_lr, check_non_negative)
        self.strict = check_bool("strict", strict)
        self.schedule, self.schedule_steps = _check_handover(schedule, schedule_steps)
        self.start_momentum = first_momentum([self.schedule] if self.schedule else [])
        self.reset()

    @override
    def reset(self) -> None:
        super().reset()
        self.best = math.inf if self.mode == "min" else -math.inf
        self.num_bad = 0
        self.cooldown_counter = 0
        self.num_reductions = 0
        self.watching = {"monitor": self.monitor, "mode": self.mode}  # what `best` is a best of

    def is_improvement(self, value: float) -> bool:
        """Whether ``value`` beats the best so far by more than the threshold (NaN never does)."""
        sign = 1 if self.mode == "min" else -1  # compare -value with -bar in mode "max"
        if self.threshold_mode == "rel":
            bar = self.best * (1 - sign * self.min_delta)
        else:
            bar = self.best - sign * self.min_delta
        return math.isfinite(value) and sign * value < sign * bar

    def step(self, value: float) -> bool:
        """Record one evaluation; return whether the LR must be reduced now.

        Keras' ``ReduceLROnPlateau.on_epoch_end``, step for step: a running cooldown is
        decremented (and the bad count cleared) first; an improvement sets the best and clears
        the count; otherwise, outside the cooldown, the evaluation counts as bad, and the
        ``patience``-th one in a row asks for a reduction and starts the cooldown. (torch's
        ``ReduceLROnPlateau`` waits one evaluation more and skips ``cooldown`` evaluations.)
        Pure bookkeeping, usable without a Trainer; the callback calls it with the rank-agreed
        value.
        """
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad = 0
        if self.is_improvement(value):
            self.best = value
            self.num_bad = 0
            return False
        if self.cooldown_counter > 0:
            return False
        self.num_bad += 1
        if self.num_bad >= max(self.patience, 1):
            self.cooldown_counter = self.cooldown
            self.num_bad = 0
            return True
        return False

    # -- Lightning hooks ----------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit" or self.check_on != "validation_end":
            return
        if trainer.limit_val_batches == 0:
            self._never_runs("`limit_val_batches=0` turns validation off")
        if not is_overridden("validation_step", pl_module):
            self._never_runs(f"{type(pl_module).__name__} has no `validation_step`")

    @override
    def start(self, trainer: pl.Trainer) -> None:
        self.per_group("min_lr", self.min_lr)
        now = {"monitor": self.monitor, "mode": self.mode}
        if self.watching != now:  # a resume that watches another metric, or the other way
            rank_zero_warn(
                f"{self.name}: the checkpoint's plateau state (best {self.best:.6g}, "
                f"{self.num_bad} bad evaluation(s)) is of {self.watching}, but this fit watches "
                f"{now}; starting the plateau count afresh."
            )
            self.best = math.inf if self.mode == "min" else -math.inf
            self.num_bad, self.cooldown_counter, self.watching = 0, 0, now
        config = {"schedule": self.schedule and config_of(self.schedule)}
        config.update({name: getattr(self, name) for name in _COMPARED.split()})
        self.warn_if_changed(
            config,
            f"following the values given now from the saved step count {self.steps} (a "
            "warm-up given now drives the LR until `schedule_steps` if the count is below it); "
            "to start afresh, start a fit without `ckpt_path` (loading only the weights).",
        )
        if self.check_on == "validation_end" and self._no_validation_data(trainer):
            self._never_runs("the fit has no validation data (no val dataloader, or an empty one)")
        # A resume at the hand-over finds the schedule's last LR, or a reduction made there, in
        # the restored optimizer: writing the schedule again would undo that reduction.
        if self.schedule is not None and min(self.steps) < self.schedule_steps:
            self.warn_if_ratio_erased(trainer)
            self.active = self.per_group("schedule", [self.schedule])
            self.horizons = [self.schedule_steps] * len(self.active)

    @override
    def after_step(self, trainer: pl.Trainer, opt_idx: int) -> None:
        if self.steps[opt_idx] <= self.schedule_steps:  # the schedule's steps, then plateau
            super().after_step(trainer, opt_idx)

    @override
    def why_stopped_early(self, horizon: int) -> str:
        return (
            f"It ended before the hand-over to plateau scheduling at step {horizon}: plateau "
            "scheduling never acted. Shorten the schedule (`schedule_steps=...`) or train longer."
        )

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fitting = trainer.state.fn == "fit" and not trainer.sanity_checking
        if self.check_on == "validation_end" and fitting:
            self._check(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.check_on == "train_epoch_end":
            self._check(trainer)

    # -- internals ----------------------------------------------------------------------------
    def _never_runs(self, reason: str) -> None:
        raise MisconfigurationException(
            f"{self.name} checks {self.monitor!r} after each validation run, but {reason}, so it "
            "would never change the learning rate. Give the fit validation data (and a "
            "`validation_step` that logs the metric), or pass `check_on='train_epoch_end'` with "
            "a training metric as `monitor`."
        )

    @staticmethod
    def _no_validation_data(trainer: pl.Trainer) -> bool:
        """Whether the fit has no validation batches. Lightning loads the validation data before
        ``on_train_start`` when the first epoch validates (``check_val_every_n_epoch`` 1 or
        ``None``); otherwise this cannot be known yet and is not claimed."""
        if trainer.val_dataloaders is not None:
            return not sum(trainer.num_val_batches)
        return trainer.check_val_every_n_epoch in (None, 1)

    def _read_monitor(self, trainer: pl.Trainer) -> float | None:
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            keys = ", ".join(sorted(metrics)) or "none"
            message = (
                f"{self.name} monitors {self.monitor!r}, which is not among the logged metrics "
                f"(available: {keys}). Log it with `self.log({self.monitor!r}, ...)` in your "
                "LightningModule, or pass the right `monitor=`."
            )
            if self.check_on == "train_epoch_end":
                message += (
                    " Lightning calls this check before the LightningModule's "
                    "`on_train_epoch_end` (only EarlyStopping and ModelCheckpoint run after it), "
                    "so a value logged there is missing at the first epoch and one epoch old "
                    "after: log it in `training_step` with `on_epoch=True`."
                )
            if self.strict:
                raise MisconfigurationException(message + " Pass `strict=False` to only warn.")
            rank_zero_warn(message + " Skipping this check.")
            return None
        value = torch.as_tensor(metrics[self.monitor], dtype=torch.float64)
        value = trainer.strategy.reduce(value.to(trainer.strategy.root_device), reduce_op="mean")
        # One host read per evaluation (not per step), then rank 0's value is broadcast.
        return float(trainer.strategy.broadcast(float(value), src=0))

    def _check(self, trainer: pl.Trainer) -> None:
        if self.unfinished() or self.handed_over(trainer):  # the step schedule drives the LR
            return
        value = self._read_monitor(trainer)
        if value is not None and self.step(value):
            self._reduce(trainer)

    def _reduce(self, trainer: pl.Trainer) -> None:
        floors = [floor for group in self.per_group("min_lr", self.min_lr) for floor in group]
        changes = []
        for group, floor in zip(self.groups(trainer), floors, strict=True):
            old = float(group["lr"])
            new = max(old * self.factor, floor)
            if new < old:  # Keras' rule: any LR above `min_lr` is reduced, however small
                group["lr"] = assign(group["lr"], new)
                changes.append(f"{old:.4g} -> {new:.4g}")
        self.num_reductions += 1
        rank_zero_info(
            f"{self.name}: {self.monitor!r} has not improved on {self.best:.6g} for "
            f"{max(self.patience, 1)} evaluation(s) (epoch {trainer.current_epoch}, global step "
            f"{trainer.global_step}); learning rate "
            + (", ".join(changes) if changes else f"already at min_lr {self.min_lr}, unchanged")
            + "."
        )


def _check_handover(schedule: Any, steps: Any) -> tuple[Schedule | None, int]:
    """Validate ``schedule``/``schedule_steps``; the steps default to ``schedule.length``."""
    if schedule is None:
        if steps is not None:
            raise ValueError(
                f"`schedule_steps` ({steps!r}) needs a `schedule` to follow for those steps."
            )
        return None, 0
    if not isinstance(schedule, Schedule):
        raise TypeError(
            f"`schedule` must be a Schedule (lightning_reg.schedules) or None, got {schedule!r}."
        )
    if steps is None:
        if schedule.length is None:
            raise ValueError(
                f"`schedule` {schedule!r} has no length; pass `schedule_steps=...`, the number "
                "of optimizer steps after which plateau scheduling takes over."
            )
        steps = schedule.length
    return schedule, check_int("schedule_steps", steps, 1)
