"""``OneCycleScheduler``: the 1cycle policy as a callback, sized from the Trainer."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

from lightning_reg._validation import check_int, check_positive, one_or_each
from lightning_reg.callbacks._lr_base import LRCallback, ScheduleLike
from lightning_reg.callbacks.scheduled import ScheduledLR
from lightning_reg.lr_range import LRRangeTest, RangeTestResult, check_run_shape
from lightning_reg.schedules import OneCycle

__all__ = ["OneCycleScheduler"]

# Under `fast_dev_run` (a smoke test of one or a few steps) the cycle is at least this long: the
# shortest textbook cycle with three non-empty phases.
_SMOKE_STEPS = 3


def _check_max_lr(max_lr: Any) -> list[float] | Literal["auto"]:
    if isinstance(max_lr, str):
        if max_lr == "auto":
            return "auto"
        raise TypeError(
            f"`max_lr` must be a number, a sequence of numbers or 'auto', got {max_lr!r}."
        )
    return one_or_each("max_lr", max_lr, check_positive)


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
    ``max_steps``) counts all of their steps, so each cycle gets ``max_steps / n`` steps (rounded
    up).

    Lifecycle: each fit sizes a fresh cycle, unless it resumes from a checkpoint. The checkpoint
    holds the cycle (``total_steps`` per optimizer, ``max_lr`` per group, the phase arguments
    and ``range_test``'s); a resumed fit continues that cycle, and when it would have planned a
    different one (more epochs, a new ``max_lr`` or ``range_test``) a warning names each changed
    value. With
    ``max_lr="auto"`` the range test runs once per fit, when training starts and before the
    cycle is sized; its value is saved with the cycle, so a resumed fit continues with it and
    does not sweep again. Past the cycle's end
    the final LR is held with one warning; a run that ends before it (``max_time``,
    ``EarlyStopping``) gets a warning saying how far it got. ``fast_dev_run`` runs on a cycle
    of at least 3 steps (under ``"auto"`` without the range test, as Lightning's tuners skip
    it, peaking at the first param group's configured LR, with a warning); other runs too short
    for the cycle raise an error naming the Trainer's estimate it came from.

    Quiet overrides are warned: an optimizer with neither ``momentum`` nor ``betas`` (the LR is
    cycled, not the momentum), momentum 0 that cycling would switch on, and one ``max_lr`` over
    param groups with different learning rates and no ``lr_scale`` (discriminative fine-tuning:
    give each group an ``lr_scale``, and its peak is ``max_lr * lr_scale``; or pass one
    ``max_lr`` per group).

    With ``StochasticWeightAveraging`` on the Trainer (1cycle, then SWA) a cycle sized by the
    Trainer ends at ``swa_epoch_start``, where ``SWALR`` takes over the learning rate.

    Args:
        max_lr: peak learning rate, or one per param group (all optimizers' groups in order), or
            ``"auto"``: an LR range test (``range_test``) picks one peak for every group when
            training starts, in the same ``fit``, and is undone before the cycle starts, so the
            run equals the run with that value passed by hand. The value is logged as
            ``lr_range_test/max_lr``, kept in ``range_test_result`` and saved in checkpoints (a
            resumed run does not sweep again).
        total_steps: length of the cycle in optimizer steps, int >= 2. ``None`` (default) takes
            ``trainer.estimated_stepping_batches`` when training starts (the steps before
            ``swa_epoch_start`` beside ``StochasticWeightAveraging``; each epoch's steps at its
            own accumulation beside ``GradientAccumulationScheduler``; less the steps of earlier
            fits of the same Trainer).
        start_lr: LR at step 0 and at the end of the descent. Default ``None``: ``max_lr / 10``.
        final_lr: LR at the end of the final phase. Default ``None``: ``start_lr / 1000``.
        final_steps: length of the final phase. Default ``None``: ``total_steps // 10 + 1``;
            ``0`` gives two phases.
        warmup_steps: length of the rise. Default ``None``: half of the non-final steps.
        anneal: ``"linear"`` (default, the textbook's) or ``"cos"``.
        cycle_momentum: cycle momentum inversely to the LR. Default ``True``.
        max_momentum: momentum at the start and the end. Default ``0.95``.
        min_momentum: momentum at the LR peak. Default ``0.85``.
        log_values: log what it sets through a ``LearningRateMonitor`` unless the Trainer has
            one (see :class:`~lightning_reg.LRCallback`). Default ``True``.
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

    state_names = (*ScheduledLR.state_names, "auto_max_lr")

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
        # The cycles are built when training starts (`plan`), not from a schedule
        # given here: ScheduledLR's own constructor does not apply.
        LRCallback.__init__(self, log_values=log_values)
        self.interval: Literal["step", "epoch"] = "step"
        self.max_lr = _check_max_lr(max_lr)
        if range_test is not None and not isinstance(range_test, LRRangeTest):
            raise TypeError(f"`range_test` must be an LRRangeTest or None, got {range_test!r}.")
        self.range_test = range_test or LRRangeTest()
        self.total_steps = None if total_steps is None else check_int("total_steps", total_steps, 2)
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
        for peak in [None] if self.max_lr == "auto" else self.max_lr:
            OneCycle.check_arguments(peak, **self.one_cycle_kwargs)
        if self.total_steps is not None:
            OneCycle.phase_lengths(self.total_steps, final_steps, warmup_steps)
        self.start_momentum = max_momentum if cycle_momentum else None
        self.reset()

    @override
    def reset(self) -> None:
        super().reset()
        self.range_test_result: RangeTestResult | None = None
        self.auto_max_lr: float | None = None

    def cycle_steps(self, trainer: pl.Trainer) -> int:
        """The cycle's length in this fit: the steps the Trainer plans
        (:meth:`~lightning_reg.LRCallback.planned_steps`), at least 3 under ``fast_dev_run``.
        Raises naming that estimate when it is infinite, or (not on resume, which keeps the
        saved cycle) too short for the phases."""
        estimate, source = self.planned
        if not math.isfinite(estimate):
            raise ValueError(
                f"{self.name} could not size the cycle: {source} is {estimate} (an infinite or "
                "unknown number of training steps). Pass `total_steps=...` to "
                "OneCycleScheduler, or set `max_steps`/`max_epochs`."
            )
        if getattr(trainer, "fast_dev_run", False):
            return max(int(estimate), _SMOKE_STEPS)
        kwargs = self.one_cycle_kwargs
        try:
            OneCycle.phase_lengths(int(estimate), kwargs["final_steps"], kwargs["warmup_steps"])
        except ValueError as error:
            if not self.restored:
                raise ValueError(
                    f"{self.name} sizes its cycle from the Trainer ({source} = {int(estimate)}),"
                    f" which is too short for this 1cycle: {error} Train for more steps "
                    "(`max_steps`, `max_epochs`, `limit_train_batches`), or pass "
                    "`total_steps=...` (and `warmup_steps`/`final_steps`) to OneCycleScheduler. "
                    "`fast_dev_run` works as is."
                ) from None
        return int(estimate)

    @override
    def plan(self, trainer: pl.Trainer) -> list[list[ScheduleLike]]:
        """The cycles of this fit: ``total_steps`` per optimizer (the constructor's, else
        :meth:`cycle_steps`) and ``max_lr`` per group, as given or, for ``"auto"``, the range
        test's value. On resume, the checkpoint's cycles, with a warning naming every value
        (``total_steps``, ``max_lr``, a phase argument) this fit would change.

        Under ``"auto"`` the sweep runs here, once per fit (the optimizer and the training
        dataloader exist by now), unless a checkpoint restored its value; a resumed ``"auto"``
        fit whose checkpoint holds a cycle with a hand-set ``max_lr`` continues that cycle.
        """
        if self.max_lr == "auto" or len(self.max_lr) == 1:
            self.warn_if_ratio_erased(trainer)
        saved = self.config if self.restored else {}
        # Sized first: a run whose cycle cannot be sized fails before any range-test step.
        total = self.total_steps or self.cycle_steps(trainer)
        peaks = self.max_lr  # still "auto" where the checkpoint's cycle has a hand-set `max_lr`
        if peaks == "auto" and self.auto_max_lr is None and "max_lr" not in saved:
            if getattr(trainer, "fast_dev_run", False):  # a smoke test: as Lightning's tuners
                check_run_shape(trainer, trainer.lightning_module)
                group = trainer.optimizers[0].param_groups[0]
                peaks = [float(group["lr"]) / group.get("lr_scale", 1)]
                rank_zero_warn(
                    f"{self.name}: Skipping the range test of `max_lr='auto'` since "
                    f"`fast_dev_run` is enabled; the cycle peaks at {peaks[0]:g}, the learning "
                    "rate the optimizer's first param group was configured with."
                )
            else:
                self.range_test_result = self.range_test.run(trainer, trainer.lightning_module)
                self.range_test_result.log(trainer)
                self.auto_max_lr = self.range_test_result.max_lr
        if peaks == "auto" and self.auto_max_lr is not None:
            peaks = [self.auto_max_lr]
        planned = {
            "total_steps": [total] * len(trainer.optimizers),
            "max_lr": peaks
            if isinstance(peaks, str)
            else [peak for group in self.per_group("max_lr", peaks) for peak in group],
            **self.one_cycle_kwargs,
            "range_test": dataclasses.asdict(self.range_test),  # compared, not used on resume
        }
        self.warn_if_changed(
            planned,
            f"continuing the checkpoint's cycle at its step count {self.steps}, not the different "
            "cycle this fit would plan, so the learning rate does not jump; to train a new cycle, "
            "start a fit without `ckpt_path` (loading only the weights).",
        )
        self.config = {**planned, **saved}  # a resumed fit continues the checkpoint's cycle
        kwargs = {k: self.config[k] for k in self.one_cycle_kwargs}
        groups = self.per_group("max_lr", self.config["max_lr"])
        return [
            [OneCycle(steps, peak, **kwargs) for peak in group]
            for steps, group in zip(self.config["total_steps"], groups, strict=True)
        ]

    @override
    def as_schedule(self, total_steps: int | None = None) -> OneCycle:
        """The first param group's :class:`OneCycle` (for :func:`~lightning_reg.plot_schedule`)."""
        total = total_steps if total_steps is not None else self.total_steps
        peak = self.auto_max_lr if self.max_lr == "auto" else self.max_lr[0]
        if peak is None:
            raise ValueError(
                "This OneCycleScheduler has `max_lr='auto'` and no range test has run yet; pass "
                "`max_lr` to plot it."
            )
        if total is None:
            raise ValueError(
                "This OneCycleScheduler is sized by the Trainer; pass `total_steps` to plot it."
            )
        return OneCycle(total, peak, **self.one_cycle_kwargs)
