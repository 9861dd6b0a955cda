"""``ScheduledLR``: drive the learning rate from any schedule, per optimizer step or per epoch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from lightning_reg.callbacks._lr_base import LRCallback, check_lr_value, set_momentum

__all__ = ["ScheduledLR"]

ScheduleLike = Callable[[int], float]

_INTERVALS = ("step", "epoch")


def _check_schedule(schedule: Any, name: str) -> ScheduleLike:
    if not callable(schedule):
        raise TypeError(
            f"`{name}` must be a schedule object or a callable `step -> lr`, got "
            f"{type(schedule).__name__}."
        )
    return schedule


class ScheduledLR(LRCallback):
    """Set the learning rate from a schedule before every optimizer step (or every epoch).

    The Keras ``LearningRateScheduler`` analogue for Lightning. ``schedule`` is any object of
    :mod:`lightning_reg.schedules` (e.g. :class:`~lightning_reg.schedules.ExponentialDecay`) or a
    plain callable ``step -> lr``; one per param group may be given as a sequence. A schedule with
    a ``momentum(step)`` method that returns a number also drives momentum (SGD ``momentum``,
    Adam-family ``betas[0]``).

    With ``interval="step"`` the step is the number of optimizer steps this callback has seen
    taken, counted per optimizer through torch's optimizer step hooks. So gradient accumulation
    advances the schedule once per optimizer step, a step that a mixed-precision ``GradScaler``
    skips (inf/NaN gradients) does not advance it, manual optimization is supported, and the count
    is saved in checkpoints so a resumed run continues the same trace. With ``interval="epoch"``
    the step is ``trainer.current_epoch``, applied when each training epoch starts.

    Args:
        schedule: a schedule or callable ``int -> float``, or a sequence of them, one per param
            group (param groups of all optimizers, in order).
        interval: ``"step"`` (default) or ``"epoch"``.
        log_values: log what it sets as ``lr-pg<k>`` (and ``momentum-pg<k>``) through the Trainer's
            loggers. Default ``True``.

    Raises:
        TypeError: if ``schedule`` is not callable.
        ValueError: if ``interval`` is unknown, or at fit time if the number of schedules does not
            match the number of param groups.
        MisconfigurationException: at fit time, without an optimizer, beside an ``lr_scheduler``
            from ``configure_optimizers`` or beside another learning-rate callback.

    Example::

        from lightning_reg import ExponentialDecay, ScheduledLR

        trainer = Trainer(callbacks=[ScheduledLR(ExponentialDecay(lr0=0.01, s=1000))])
    """

    def __init__(
        self,
        schedule: ScheduleLike | Sequence[ScheduleLike],
        interval: Literal["step", "epoch"] = "step",
        log_values: bool = True,
    ) -> None:
        super().__init__(log_values=log_values)
        if interval not in _INTERVALS:
            raise ValueError(f"`interval` must be one of {_INTERVALS}, got {interval!r}.")
        self.interval = interval
        if isinstance(schedule, Sequence) and not callable(schedule):
            if len(schedule) == 0:
                raise ValueError("`schedule` must not be an empty sequence.")
            self._schedules: list[ScheduleLike] = [
                _check_schedule(s, f"schedule[{i}]") for i, s in enumerate(schedule)
            ]
        else:
            self._schedules = [_check_schedule(schedule, "schedule")]
        self._steps: list[int] = []
        self._active: list[ScheduleLike] = []
        self._handles: list[RemovableHandle] = []
        self._warned_past_end = False
        self._logged_step = -1

    @property
    def state_key(self) -> str:
        return self._generate_state_key(interval=self.interval)

    # -- what subclasses customise ------------------------------------------------------------
    def build_schedules(self, trainer: pl.Trainer, num_groups: int) -> list[ScheduleLike]:
        """The schedules of the param groups for this fit (one per group)."""
        if len(self._schedules) == 1:
            return self._schedules * num_groups
        if len(self._schedules) != num_groups:
            raise ValueError(
                f"{self.name} got {len(self._schedules)} schedules but the optimizers have "
                f"{num_groups} param groups; pass one schedule, or exactly one per param group."
            )
        return list(self._schedules)

    def as_schedule(self, total_steps: int | None = None) -> ScheduleLike:
        """The schedule of the first param group (for :func:`~lightning_reg.plot_schedule`)."""
        return self._schedules[0]

    # -- Lightning hooks ----------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check_fit(trainer)
        groups = list(self.param_groups(trainer))
        self._active = self.build_schedules(trainer, len(groups))
        num_optimizers = len(trainer.optimizers)
        if len(self._steps) != num_optimizers:
            self._steps = [0] * num_optimizers
        self._remove_hooks()
        if self.interval == "step":
            for idx, opt in enumerate(trainer.optimizers):
                self._handles.append(
                    opt.register_step_post_hook(self._make_post_hook(trainer, idx))
                )
            for idx in range(num_optimizers):
                self._apply(trainer, idx, self._steps[idx])
            self.log_groups(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.interval == "epoch":
            for idx in range(len(trainer.optimizers)):
                self._apply(trainer, idx, trainer.current_epoch)
            self.log_groups(trainer)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.interval != "step" or trainer.global_step == self._logged_step:
            return
        self._logged_step = trainer.global_step
        if trainer.global_step % max(getattr(trainer, "log_every_n_steps", 1), 1) == 0:
            self.log_groups(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()

    def state_dict(self) -> dict[str, Any]:
        return {"steps": list(self._steps), "warned_past_end": self._warned_past_end}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._steps = [int(s) for s in state_dict["steps"]]
        self._warned_past_end = bool(state_dict.get("warned_past_end", False))

    # -- internals ----------------------------------------------------------------------------
    def _make_post_hook(self, trainer: pl.Trainer, idx: int) -> Callable[..., None]:
        def post_hook(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
            taken = self._steps[idx]
            self._steps[idx] = taken + 1
            horizon = getattr(self._active[0], "total_steps", None)
            if isinstance(horizon, int) and taken >= horizon and not self._warned_past_end:
                self._warned_past_end = True
                self.warn(
                    f"{self.name}: optimizer step {taken} is past the schedule's end "
                    f"(total_steps={horizon}); holding its final value. Pass a larger "
                    "`total_steps` if the run is meant to be longer."
                )
            self._apply(trainer, idx, taken + 1)

        return post_hook

    def _apply(self, trainer: pl.Trainer, opt_idx: int, step: int) -> None:
        for k, (idx, _, group) in enumerate(self.param_groups(trainer)):
            if idx != opt_idx:
                continue
            schedule = self._active[k]
            group["lr"] = check_lr_value(schedule(step), f"{self.name}'s schedule")
            momentum = getattr(schedule, "momentum", None)
            value = momentum(step) if callable(momentum) else None
            if value is not None:
                set_momentum(group, value)

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
