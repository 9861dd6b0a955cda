"""``ScheduledLR``: drive the learning rate from any schedule, per optimizer step or per epoch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

from lightning_reg._validation import check_choice, one_or_each
from lightning_reg.callbacks._lr_base import LRCallback, ScheduleLike, config_of, first_momentum

__all__ = ["ScheduledLR"]

_INTERVALS = ("step", "epoch")


def horizon_of(schedules: list[ScheduleLike]) -> int | None:
    """The steps until all ``schedules`` hold their final value (their longest ``length``), or
    ``None`` when one has no ``length``."""
    lengths = [getattr(schedule, "length", None) for schedule in schedules]
    ints = [n for n in lengths if isinstance(n, int) and not isinstance(n, bool)]
    return max(ints) if len(ints) == len(lengths) else None


def _check_schedule(name: str, item: Any) -> ScheduleLike:
    if not callable(item):
        raise TypeError(
            f"`{name}` must be a schedule object or a callable `step -> lr`, got "
            f"{type(item).__name__}."
        )
    return item


class ScheduledLR(LRCallback):
    """Set the learning rate from a schedule before every optimizer step (or every epoch).

    The Keras ``LearningRateScheduler`` analogue for Lightning. ``schedule`` is any object of
    :mod:`lightning_reg.schedules` (e.g. :class:`~lightning_reg.schedules.ExponentialDecay`, or a
    :class:`~lightning_reg.schedules.Chain` of warm-up, decay and constant parts) or a plain
    callable ``step -> lr``; one per param group may be given as a sequence. A schedule with a
    ``momentum(step)`` method that returns a number also drives momentum (SGD ``momentum``,
    Adam-family ``betas[0]``). One schedule over param groups that carry an ``lr_scale`` (timm's
    convention, e.g. ``{"params": ..., "lr_scale": 0.1}``) gives each group the schedule's LR
    times its scale, so discriminative LRs keep their ratios; without ``lr_scale``, one schedule
    over groups with different LRs erases their ratio, with a warning.

    With ``interval="step"`` the step is the number of optimizer steps this callback has seen
    taken, counted per optimizer through torch's optimizer step hooks. So gradient accumulation
    advances the schedule once per optimizer step, a step that a mixed-precision ``GradScaler``
    skips (inf/NaN gradients) does not advance it, manual optimization is supported, and the count
    is saved in checkpoints so a resumed run continues the same trace. With ``interval="epoch"``
    the step is ``trainer.current_epoch``, applied when each training epoch starts.

    Lifecycle: every fit starts at step 0 (one instance can serve several Trainers) unless a
    checkpoint is restored. The checkpoint also holds the schedules' configurations as plain
    dicts (``get_config``; a plain function only its qualified name, so an edit of its code, or
    of a ``lambda``, is not seen); when the resumed run's differ, a warning names the difference and
    the run continues the saved step count with the schedules it was given. A step schedule with
    a :attr:`~lightning_reg.schedules.Schedule.length` warns once when a run goes past its end
    and, at the end of training, when the run stopped before it (``max_time``,
    ``EarlyStopping``, a short ``IterableDataset``), saying how far it got.
    ``StochasticWeightAveraging`` takes over at ``swa_epoch_start``: from then on its ``SWALR``
    sets the LR and this callback writes nothing (see :class:`~lightning_reg.LRCallback`).

    Args:
        schedule: a schedule or callable ``int -> float``, or a sequence of them, one per param
            group (param groups of all optimizers, in order).
        interval: ``"step"`` (default) or ``"epoch"``.
        log_values: log what it sets through a ``LearningRateMonitor`` unless the Trainer has
            one (see :class:`~lightning_reg.LRCallback`). Default ``True``.

    Raises:
        TypeError: if ``schedule`` is not callable.
        ValueError: if ``interval`` is unknown; at fit time if the number of schedules does not
            match the number of param groups, or an ``lr_scale`` is not a number > 0.
        MisconfigurationException: at fit time, without an optimizer, beside an ``lr_scheduler``
            from ``configure_optimizers`` or beside another learning-rate callback.

    Example:
        >>> from lightning_reg import Chain, CosineDecay, LinearWarmup, ScheduledLR
        >>> callback = ScheduledLR(Chain([LinearWarmup(100, 0.1), CosineDecay(900, 0.1)]))
        >>> callback.as_schedule()(100)
        0.1
    """

    state_names = (*LRCallback.state_names, "warned_past_end")

    def __init__(
        self,
        schedule: ScheduleLike | Sequence[ScheduleLike],
        interval: Literal["step", "epoch"] = "step",
        log_values: bool = True,
    ) -> None:
        super().__init__(log_values=log_values)
        self.interval = check_choice("interval", interval, _INTERVALS)
        self._schedules = one_or_each("schedule", schedule, _check_schedule)
        self.start_momentum = first_momentum(self._schedules)
        self.reset()

    @override
    def reset(self) -> None:
        super().reset()
        self.warned_past_end = False

    # -- what subclasses customise ------------------------------------------------------------
    def plan(self, trainer: pl.Trainer) -> list[list[ScheduleLike]]:
        """The schedules of this fit (per optimizer, one per param group), reconciled with the
        checkpoint's when resuming.

        Sets :attr:`config`, the plain-data description saved in checkpoints. ``ScheduledLR``
        keeps the schedules it was given and warns when they differ from the checkpoint's, or
        when one schedule erases the ratio of the groups' LRs.
        """
        if len(self._schedules) == 1:
            self.warn_if_ratio_erased(trainer)
        schedules = self.per_group("schedule", self._schedules)
        config = {"schedule": [config_of(s) for group in schedules for s in group]}
        self.warn_if_changed(
            config,
            f"continuing from the saved step count {self.steps} with the schedule given now.",
        )
        return schedules

    def as_schedule(self, total_steps: int | None = None) -> ScheduleLike:
        """The schedule of the first param group (for :func:`~lightning_reg.plot_schedule`)."""
        return self._schedules[0]

    # -- the engine's hooks -------------------------------------------------------------------
    @override
    def start(self, trainer: pl.Trainer) -> None:
        self.active = self.plan(trainer)
        self.horizons = [horizon_of(s) if self.interval == "step" else None for s in self.active]

    @override
    def after_step(self, trainer: pl.Trainer, opt_idx: int) -> None:
        if self.interval != "step":
            return
        step, horizon = self.steps[opt_idx], self.horizons[opt_idx]
        if horizon is not None and step > horizon and not self.warned_past_end:
            self.warned_past_end = True
            advice = (  # on resume, the checkpoint's schedule was kept (see `plan`)
                "This fit resumed a checkpoint whose schedule was planned for a shorter run: to "
                "train a new one, start a fit without `ckpt_path` (loading only the weights)."
                if self.restored
                else "Make the schedule as long as the run (for OneCycleScheduler leave "
                "`total_steps=None` to size it from the Trainer)."
            )
            rank_zero_warn(
                f"{self.name}: optimizer {opt_idx} took step {step - 1}, past the schedule's end "
                f"(length {horizon} steps); holding its final value. The run is longer than the "
                f"schedule. {advice}"
            )
        super().after_step(trainer, opt_idx)

    # -- Lightning hooks ----------------------------------------------------------------------
    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.interval == "epoch" and not self.handed_over(trainer):
            for idx in range(len(trainer.optimizers)):
                self.write(trainer, idx, trainer.current_epoch)
