"""``OneCycleScheduler``: the 1cycle policy as a callback, sized from the Trainer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
from typing_extensions import override

from lightning_reg.callbacks._lr_base import ScheduleLike, get_momentum, momentum_key
from lightning_reg.callbacks.scheduled import ScheduledLR
from lightning_reg.lr_range import LRRangeTest, RangeTestResult
from lightning_reg.schedules import OneCycle

__all__ = ["OneCycleScheduler"]

# Used only to validate the keyword arguments at construction when `total_steps` is not known yet.
_PROBE_STEPS = 1_000_000
# Under `fast_dev_run` (a smoke test of one or a few steps) the cycle is at least this long: the
# shortest textbook cycle with three non-empty phases.
_SMOKE_STEPS = 3


def _stand_in_peak(start_lr: Any) -> float:
    """The peak that validates the other phase arguments at construction under ``"auto"``: 1.0,
    or ``start_lr`` when it is a larger number (the swept peak is checked against it at fit time).
    """
    number = isinstance(start_lr, (int, float)) and not isinstance(start_lr, bool)
    return float(start_lr) if number and math.isfinite(start_lr) and start_lr > 1.0 else 1.0


def _check_max_lr(max_lr: Any) -> list[float] | Literal["auto"]:
    if isinstance(max_lr, str) and max_lr == "auto":
        return "auto"
    values = list(max_lr) if isinstance(max_lr, Sequence) else [max_lr]
    if not values:
        raise ValueError("`max_lr` must not be an empty sequence.")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(
                f"`max_lr` must be a number, a sequence of numbers or 'auto', got {max_lr!r}."
            )
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"`max_lr` must be finite and > 0, got {max_lr!r}.")
    return [float(v) for v in values]


class OneCycleScheduler(ScheduledLR):
    """The 1cycle policy: LR up then down then annihilated, momentum cycled inversely.

    Builds one :class:`~lightning_reg.schedules.OneCycle` per param group when training starts and
    sets each group's learning rate and momentum (SGD/RMSprop ``momentum``, Adam-family
    ``betas[0]``) before every optimizer step. The defaults follow the textbook policy (linear,
    ``start_lr = max_lr / 10``, a final phase of ``total_steps // 10 + 1`` steps down to
    ``start_lr / 1000``). To reproduce ``torch.optim.lr_scheduler.OneCycleLR`` exactly, use
    ``ScheduledLR(OneCycle.from_torch(...))``.

    The step is the number of optimizer steps actually taken (see :class:`ScheduledLR`), so
    gradient accumulation, ``limit_train_batches``, ``max_steps``, several devices and resuming
    from a checkpoint all give the right trace. Each optimizer has its own count and its own
    cycle: under manual optimization with several optimizers, ``global_step`` (and so
    ``max_steps``) counts all of their steps, so each cycle gets ``max_steps // n`` steps.

    Lifecycle: each fit sizes a fresh cycle, unless it resumes from a checkpoint. The checkpoint
    holds the cycle (``total_steps`` per optimizer, ``max_lr`` per group and the phase
    arguments); a resumed fit continues that cycle, and when it would have planned a different
    one (more epochs, a new ``max_lr``) a warning names each changed value. With
    ``max_lr="auto"`` the range test runs once per fit, when training starts and before the
    cycle is sized; its value is saved with the cycle, so a resumed fit continues with it and
    does not sweep again. Past the cycle's end
    the final LR is held with one warning; a run that ends before it (``max_time``,
    ``EarlyStopping``) gets a warning saying how far it got. ``fast_dev_run`` runs on a cycle
    of at least 3 steps; other runs too short for the cycle raise an error naming the Trainer's
    estimate it came from.

    Quiet overrides are warned: an optimizer with neither ``momentum`` nor ``betas`` (the LR is
    cycled, not the momentum), momentum 0 that cycling would switch on, and one ``max_lr`` over
    param groups with different learning rates (pass one per group to keep their ratio).

    Args:
        max_lr: peak learning rate, or one per param group (all optimizers' groups in order), or
            ``"auto"``: an LR range test (``range_test``) picks one peak for every group when
            training starts, in the same ``fit``, and is undone before the cycle starts, so the
            run equals the run with that value passed by hand. The value is logged as
            ``lr_range_test/max_lr``, kept in ``range_test_result`` and saved in checkpoints (a
            resumed run does not sweep again).
        total_steps: length of the cycle in optimizer steps. ``None`` (default) takes
            ``trainer.estimated_stepping_batches`` when training starts.
        start_lr: LR at step 0 and at the end of the descent. Default ``None``: ``max_lr / 10``.
        final_lr: LR at the end of the final phase. Default ``None``: ``start_lr / 1000``.
        final_steps: length of the final phase. Default ``None``: ``total_steps // 10 + 1``;
            ``0`` gives two phases.
        warmup_steps: length of the rise. Default ``None``: half of the non-final steps.
        anneal: ``"linear"`` (default, the textbook's) or ``"cos"``.
        cycle_momentum: cycle momentum inversely to the LR. Default ``True``.
        max_momentum: momentum at the start and the end. Default ``0.95``.
        min_momentum: momentum at the LR peak. Default ``0.85``.
        log_values: log what it sets as ``lr-pg<k>`` / ``momentum-pg<k>`` (except what a
            ``LearningRateMonitor`` logs). Default ``True``.
        range_test: the sweep of ``max_lr="auto"``. Default ``None``: ``LRRangeTest()``.

    These are the fields of :class:`~lightning_reg.schedules.OneCycle`, which holds their exact
    semantics and ranges.

    Raises:
        ValueError, TypeError: at construction, for invalid hyperparameters (the message names
            the argument and the allowed range); at fit time, when ``total_steps`` is ``None`` and
            the Trainer cannot estimate it (infinite or unknown length) or plans too few steps
            for the cycle, or ``max_lr`` has a length other than the number of param groups.
        MisconfigurationException: at fit time, without an optimizer, beside an ``lr_scheduler``
            from ``configure_optimizers`` or beside another learning-rate callback.

    Example:
        >>> from lightning_reg import OneCycleScheduler
        >>> callback = OneCycleScheduler(max_lr=0.1)  # sized by the Trainer at fit time
        >>> callback.as_schedule(total_steps=1000)(449)
        0.1
    """

    def __init__(
        self,
        max_lr: float | Sequence[float] | Literal["auto"],
        total_steps: int | None = None,
        start_lr: float | None = None,
        final_lr: float | None = None,
        final_steps: int | None = None,
        warmup_steps: int | None = None,
        anneal: Literal["linear", "cos"] = "linear",
        cycle_momentum: bool = True,
        max_momentum: float = 0.95,
        min_momentum: float = 0.85,
        log_values: bool = True,
        range_test: LRRangeTest | None = None,
    ) -> None:
        self.max_lr = _check_max_lr(max_lr)
        if range_test is not None and not isinstance(range_test, LRRangeTest):
            raise TypeError(f"`range_test` must be an LRRangeTest or None, got {range_test!r}.")
        self.range_test = range_test or LRRangeTest()
        if total_steps is not None and (
            isinstance(total_steps, bool) or not isinstance(total_steps, int)
        ):
            raise TypeError(f"`total_steps` must be an int or None, got {total_steps!r}.")
        self.total_steps = total_steps
        self.one_cycle_kwargs: dict[str, Any] = {
            "start_lr": start_lr,
            "final_lr": final_lr,
            "final_steps": final_steps,
            "warmup_steps": warmup_steps,
            "anneal": anneal,
            "cycle_momentum": cycle_momentum,
            "max_momentum": max_momentum,
            "min_momentum": min_momentum,
        }
        steps = _PROBE_STEPS if total_steps is None else total_steps
        peaks = [_stand_in_peak(start_lr)] if self.max_lr == "auto" else self.max_lr
        probe = [self._one_cycle(steps, m) for m in peaks]
        super().__init__(probe if len(probe) > 1 else probe[0], "step", log_values)
        self._step_source: str | None = None

    @override
    def reset(self) -> None:
        super().reset()
        self.range_test_result: RangeTestResult | None = None
        self._auto_max_lr: float | None = None

    @property
    def auto(self) -> bool:
        """Whether ``max_lr`` is ``"auto"`` (found by the range test in each fit)."""
        return self.max_lr == "auto"

    def _saved_max_lr(self) -> list[float]:
        """The checkpoint's ``max_lr`` per group (empty when none was restored)."""
        return list((self._saved_config or {}).get("max_lr", []))

    def peak_lrs(self, trainer: pl.Trainer) -> list[float]:
        """``max_lr`` as given, one value or one per group; for ``"auto"``, the range test's value.

        Under ``"auto"`` the sweep runs here, once per fit (the optimizer and the training
        dataloader exist by now), unless a checkpoint restored its value. An empty list means a
        resumed ``"auto"`` fit whose checkpoint holds a cycle with a hand-set ``max_lr``: that
        cycle continues (see :meth:`plan`).
        """
        if self.max_lr != "auto":
            return list(self.max_lr)
        if self._auto_max_lr is None and not self._saved_max_lr():
            result = self.range_test.run(trainer, trainer.lightning_module)
            result.log(trainer)
            self.range_test_result = result
            self._auto_max_lr = result.max_lr
        return [] if self._auto_max_lr is None else [self._auto_max_lr]

    def _one_cycle(
        self, total_steps: int, max_lr: float, kwargs: dict[str, Any] | None = None
    ) -> OneCycle:
        return OneCycle(
            total_steps, max_lr, **(self.one_cycle_kwargs if kwargs is None else kwargs)
        )

    def resolve_cycle(self, trainer: pl.Trainer, num_groups: int) -> tuple[list[int], list[float]]:
        """The cycle of this fit: ``total_steps`` per optimizer and ``max_lr`` per param group.

        ``total_steps`` is the constructor's, else the Trainer's plan of optimizer steps per
        optimizer (:meth:`planned_steps`); ``max_lr`` is the constructor's, one per group, or
        the range test's under ``"auto"`` (:meth:`peak_lrs`).
        """
        # Sized first: a run whose cycle cannot be sized fails before any range-test step.
        total = self.planned_steps(trainer) if self.total_steps is None else self.total_steps
        given = self.peak_lrs(trainer) or self._saved_max_lr()
        if len(given) not in (1, num_groups):
            raise ValueError(
                f"`max_lr` has {len(given)} values but the optimizers have {num_groups} "
                "param groups; pass one value, or exactly one per param group."
            )
        max_lrs = given * num_groups if len(given) == 1 else given
        return [total] * len(trainer.optimizers), max_lrs

    def planned_steps(self, trainer: pl.Trainer) -> int:
        """The optimizer steps each optimizer takes in this fit, from the Trainer's plan.

        ``trainer.estimated_stepping_batches``, except under manual optimization with several
        optimizers, where ``global_step`` (and so ``max_steps``) counts the steps of all of
        them: each optimizer, assumed to step once per batch, gets ``max_steps // n``.
        """
        estimate = trainer.estimated_stepping_batches
        source = "`trainer.estimated_stepping_batches`"
        num_optimizers = len(trainer.optimizers)
        if num_optimizers > 1 and trainer.max_steps != -1:
            by_batches = math.inf
            if trainer.max_epochs != -1 and math.isfinite(trainer.num_training_batches):
                by_batches = trainer.num_training_batches * max(trainer.max_epochs or 1, 1)
            estimate = min(by_batches, trainer.max_steps // num_optimizers)
            source = (
                f"`max_steps={trainer.max_steps}` shared by {num_optimizers} optimizers "
                "(under manual optimization `global_step` counts every optimizer's steps)"
            )
        if not math.isfinite(estimate) or estimate < 1:
            raise ValueError(
                f"{self.name} could not size the cycle: {source} is {estimate} (an infinite or "
                "unknown number of training steps). Pass `total_steps=...` to "
                "OneCycleScheduler, or set `max_steps`/`max_epochs`."
            )
        if getattr(trainer, "fast_dev_run", False):
            return max(int(estimate), _SMOKE_STEPS)
        self._step_source = f"{source} = {int(estimate)}"
        return int(estimate)

    def _build(
        self,
        trainer: pl.Trainer,
        totals: list[int],
        max_lrs: list[float],
        kwargs: dict[str, Any],
    ) -> list[ScheduleLike]:
        opt_of_group = [idx for idx, _, _ in self.param_groups(trainer)]
        try:
            return [
                self._one_cycle(totals[idx], m, kwargs)
                for idx, m in zip(opt_of_group, max_lrs, strict=True)
            ]
        except ValueError as error:
            if self.total_steps is not None or self._step_source is None:
                raise
            raise ValueError(
                f"{self.name} sizes its cycle from the Trainer ({self._step_source}), which is "
                f"too short for this 1cycle: {error} Train for more steps (`max_steps`, "
                "`max_epochs`, `limit_train_batches`), or pass `total_steps=...` (and "
                "`warmup_steps`/`final_steps`) to OneCycleScheduler. `fast_dev_run` works as is."
            ) from None

    @override
    def plan(self, trainer: pl.Trainer, num_groups: int) -> list[ScheduleLike]:
        """The cycles of this fit; on resume, the checkpoint's cycles, with a warning naming
        every value (``total_steps``, ``max_lr``, a phase argument) this fit would change."""
        self._step_source = None
        totals, max_lrs = self.resolve_cycle(trainer, num_groups)
        self.config = {"total_steps": totals, "max_lr": max_lrs, **self.one_cycle_kwargs}
        saved = self._saved_config
        planned = dict(self.config)
        if self.auto and self._auto_max_lr is None:  # the checkpoint's cycle has a hand-set peak
            planned["max_lr"] = "auto"
        changed = self.changes(saved, planned)
        if saved is not None and changed:
            self.warn(
                f"{self.name}: this fit would plan a different cycle than the checkpoint's "
                f"({changed}). Continuing the checkpoint's cycle at its step count "
                f"{self.steps}, so the learning rate does not jump; to train a new cycle, start "
                "a fit without "
                "`ckpt_path` (loading only the weights)."
            )
            self.config = {**self.config, **saved}
        kwargs = {k: self.config[k] for k in self.one_cycle_kwargs}
        schedules = self._build(trainer, self.config["total_steps"], self.config["max_lr"], kwargs)
        if not self.restored:
            self.warn_if_momentum_switched_on(trainer)
        return schedules

    @property
    @override
    def shares_one_schedule(self) -> bool:
        return self.max_lr == "auto" or len(self.max_lr) == 1

    def warn_if_momentum_switched_on(self, trainer: pl.Trainer) -> None:
        """Warn about optimizers whose momentum the cycle cannot drive, or would switch on."""
        if not self.one_cycle_kwargs["cycle_momentum"]:
            return
        groups = [group for _, _, group in self.param_groups(trainer)]
        if any(momentum_key(group) is None for group in groups):
            self.warn(
                f"{self.name}: an optimizer has neither `momentum` nor `betas`; its learning "
                "rate follows the cycle but its momentum cannot. Pass `cycle_momentum=False` "
                "to silence this."
            )
        if any(get_momentum(group) == 0 for group in groups):
            self.warn(
                f"{self.name}: an optimizer has momentum 0 (e.g. `SGD(momentum=0)`), and cycling "
                f"momentum ({self.one_cycle_kwargs['max_momentum']} -> "
                f"{self.one_cycle_kwargs['min_momentum']}) switches momentum on. Pass "
                "`cycle_momentum=False` to train without momentum, or give the optimizer a "
                "momentum to silence this."
            )

    def as_schedule(self, total_steps: int | None = None) -> OneCycle:
        """The first param group's :class:`OneCycle` (for :func:`~lightning_reg.plot_schedule`)."""
        total = total_steps if total_steps is not None else self.total_steps
        if self.max_lr != "auto":
            peak = self.max_lr[0]
        elif self._auto_max_lr is not None:
            peak = self._auto_max_lr
        else:
            raise ValueError(
                "This OneCycleScheduler has `max_lr='auto'` and no range test has run yet; pass "
                "`max_lr` to plot it."
            )
        if total is None:
            raise ValueError(
                "This OneCycleScheduler is sized by the Trainer; pass `total_steps` to plot it."
            )
        return self._one_cycle(total, peak)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "auto_max_lr": self._auto_max_lr}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if self.auto:
            self._auto_max_lr = state_dict.get("auto_max_lr")
