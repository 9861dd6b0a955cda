"""``OneCycleScheduler``: the 1cycle policy as a callback, sized from the Trainer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
from typing_extensions import override

from lightning_reg.callbacks._lr_base import momentum_key
from lightning_reg.callbacks.scheduled import ScheduledLR, ScheduleLike
from lightning_reg.lr_range import LRRangeTest, RangeTestResult
from lightning_reg.schedules import OneCycle

__all__ = ["OneCycleScheduler"]

# Used only to validate the keyword arguments at construction when `total_steps` is not known yet.
_PROBE_STEPS = 1_000_000


def _check_max_lr(max_lr: Any) -> list[float]:
    if max_lr == "auto":
        return []
    values = list(max_lr) if isinstance(max_lr, Sequence) else [max_lr]
    if not values:
        raise ValueError("`max_lr` must not be an empty sequence.")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"`max_lr` must be a number or a sequence of numbers, got {max_lr!r}.")
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
    from a checkpoint all give the right trace. Past ``total_steps`` the final LR is held and a
    single warning is emitted. Optimizers with neither ``momentum`` nor ``betas`` get the LR cycle
    only, with one warning.

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
        end_step: step at which ``final_lr`` is reached. Default ``None``: ``total_steps``.
        log_values: log what it sets as ``lr-pg<k>`` / ``momentum-pg<k>``. Default ``True``.
        range_test: the sweep of ``max_lr="auto"``. Default ``None``: ``LRRangeTest()``.

    These are the fields of :class:`~lightning_reg.schedules.OneCycle`, which holds their exact
    semantics and ranges.

    Raises:
        ValueError, TypeError: at construction, for invalid hyperparameters (the message names
            the argument and the allowed range); at fit time, when ``total_steps`` is ``None`` and
            the Trainer cannot estimate it (infinite or unknown length), or ``max_lr`` has a length
            other than the number of param groups.
        MisconfigurationException: at fit time, without an optimizer, beside an ``lr_scheduler``
            from ``configure_optimizers`` or beside another learning-rate callback.

    Example::

        from lightning_reg import OneCycleScheduler

        trainer = Trainer(max_epochs=10, callbacks=[OneCycleScheduler(max_lr=0.1)])
        trainer.fit(model)  # model.configure_optimizers returns e.g. SGD(momentum=0.9)
    """

    def __init__(
        self,
        max_lr: float | Sequence[float] | Literal["auto"],
        total_steps: int | None = None,
        start_lr: float | None = None,
        final_lr: float | None = None,
        final_steps: float | None = None,
        warmup_steps: float | None = None,
        anneal: Literal["linear", "cos"] = "linear",
        cycle_momentum: bool = True,
        max_momentum: float = 0.95,
        min_momentum: float = 0.85,
        end_step: float | None = None,
        log_values: bool = True,
        range_test: LRRangeTest | None = None,
    ) -> None:
        self.auto = max_lr == "auto"
        self.max_lr: list[float] | str = _check_max_lr(max_lr) or "auto"
        if range_test is not None and not isinstance(range_test, LRRangeTest):
            raise TypeError(f"`range_test` must be an LRRangeTest or None, got {range_test!r}.")
        self.range_test = range_test or LRRangeTest()
        self.range_test_result: RangeTestResult | None = None
        self._auto_max_lr: float | None = None
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
            "end_step": end_step,
        }
        steps = _PROBE_STEPS if total_steps is None else total_steps
        probe = [self._one_cycle(steps, m) for m in self._max_lrs() or [1.0]]
        super().__init__(probe if len(probe) > 1 else probe[0], "step", log_values)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(max_lr=self.max_lr, total_steps=self.total_steps)

    def _one_cycle(self, total_steps: int, max_lr: float) -> OneCycle:
        return OneCycle(total_steps=total_steps, max_lr=max_lr, **self.one_cycle_kwargs)

    def resolve_total_steps(self, trainer: pl.Trainer) -> int:
        """``total_steps`` if given, else the Trainer's estimate of the run's optimizer steps."""
        if self.total_steps is not None:
            return self.total_steps
        estimate = trainer.estimated_stepping_batches
        if not math.isfinite(estimate) or estimate < 1:
            raise ValueError(
                f"{self.name} could not size the cycle: `trainer.estimated_stepping_batches` is "
                f"{estimate} (an infinite or unknown number of training steps). Pass "
                "`total_steps=...` to OneCycleScheduler, or set `max_steps`/`max_epochs`."
            )
        return int(estimate)

    def _max_lrs(self) -> list[float]:
        """The peak LRs: as given, or the range test's value once found (else empty)."""
        if isinstance(self.max_lr, list):
            return list(self.max_lr)
        return [] if self._auto_max_lr is None else [self._auto_max_lr]

    def build_schedules(self, trainer: pl.Trainer, num_groups: int) -> list[ScheduleLike]:
        total = self.resolve_total_steps(trainer)
        if self.auto and self._auto_max_lr is None:
            self.range_test_result = self.range_test.run(trainer, trainer.lightning_module)
            self.range_test_result.log(trainer)
            self._auto_max_lr = self.range_test_result.max_lr
        given = self._max_lrs()
        if len(given) not in (1, num_groups):
            raise ValueError(
                f"`max_lr` has {len(given)} values but the optimizers have {num_groups} "
                "param groups; pass one value, or exactly one per param group."
            )
        max_lrs = given * num_groups if len(given) == 1 else given
        schedules: list[ScheduleLike] = [self._one_cycle(total, m) for m in max_lrs]
        if self.one_cycle_kwargs["cycle_momentum"]:
            groups = [group for _, _, group in self.param_groups(trainer)]
            if any(momentum_key(group) is None for group in groups):
                self.warn(
                    f"{self.name}: an optimizer has neither `momentum` nor `betas`; its learning "
                    "rate follows the cycle but its momentum cannot. Pass `cycle_momentum=False` "
                    "to silence this."
                )
        return schedules

    def as_schedule(self, total_steps: int | None = None) -> OneCycle:
        """The first param group's :class:`OneCycle` (for :func:`~lightning_reg.plot_schedule`)."""
        total = total_steps if total_steps is not None else self.total_steps
        if not self._max_lrs():
            raise ValueError(
                "This OneCycleScheduler has `max_lr='auto'` and no range test has run yet; pass "
                "`max_lr` to plot it."
            )
        if total is None:
            raise ValueError(
                "This OneCycleScheduler is sized by the Trainer; pass `total_steps` to plot it."
            )
        return self._one_cycle(total, self._max_lrs()[0])

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "auto_max_lr": self._auto_max_lr}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if self.auto:
            self._auto_max_lr = state_dict.get("auto_max_lr")

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.auto and stage == "fit":  # each fit sweeps, unless a checkpoint restores a value
            self._auto_max_lr = None
            self.range_test_result = None
