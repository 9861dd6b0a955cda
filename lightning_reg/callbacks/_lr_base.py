"""The engine shared by the callbacks that own the learning rate of the Trainer's optimizers.

A callback of this family is the single writer of ``param_group["lr"]`` (and momentum). Its
lifecycle, the same for the whole family:

- ``setup("fit")`` refuses a second learning-rate callback and resets the state, so one instance
  reused across Trainers (cross-validation folds) starts every fit afresh; Lightning then
  restores the state from a checkpoint when ``ckpt_path`` is given. A fit in processes the
  strategy's launcher started for it (``ddp_spawn``) is warned: the state stays in them (a
  process the user started, where the state is read, is not);
- ``on_fit_start`` refuses an ``lr_scheduler`` from ``configure_optimizers`` on our optimizers;
- ``on_train_start`` (after Lightning restored the optimizers) writes the first values and
  counts each optimizer's real steps with torch's step post-hook until the end of training;
- a scheduler that Lightning's ``StochasticWeightAveraging`` puts on the Trainer during the fit
  (``SWALR`` at ``swa_epoch_start``) takes over: from then on the callback writes nothing.

Logging is Lightning's ``LearningRateMonitor``: a monitor on the Trainer logs what we set; without
one (and with ``log_values=True``) the callback runs its own ``LearningRateMonitor("step",
log_momentum=True)``, so the values are logged once, under Lightning's names, at the start of the
batches that train with them.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import lightning.pytorch as pl
from lightning.pytorch.callbacks import (
    GradientAccumulationScheduler,
    LearningRateMonitor,
    StochasticWeightAveraging,
)
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from lightning_reg._hooks import HookOwner, accumulation, callbacks_of
from lightning_reg._validation import check_bool, check_positive

__all__ = ["LRCallback", "ScheduleLike"]

ScheduleLike = Callable[[int], float]


_T = TypeVar("_T")


def config_of(schedule: ScheduleLike) -> Any:
    """A schedule as plain data for checkpoints: ``get_config()`` of a schedule object, the
    qualified name of a plain function."""
    get_config = getattr(schedule, "get_config", None)
    if callable(get_config):
        return get_config()
    return f"{getattr(schedule, '__module__', '')}.{getattr(schedule, '__qualname__', schedule)}"


def momentum_key(group: dict[str, Any]) -> str | None:
    """The key that holds a param group's momentum: ``"momentum"`` (SGD, RMSprop), ``"betas"``
    (Adam family, whose ``betas[0]`` is the momentum) or ``None`` when the optimizer has neither."""
    return next((key for key in ("momentum", "betas") if key in group), None)


def assign(old: Any, new: float) -> Any:
    """``new`` in the type of ``old``: a tensor is filled in place (as torch's schedulers do)."""
    return old.fill_(new) if isinstance(old, Tensor) else new


def untie_tensors(optimizer: Optimizer) -> None:
    """Give each param group of ``optimizer`` its own copy of a tensor LR and momentum
    (``momentum``, ``betas``): torch gives every group without a value of its own the optimizer's
    default, one tensor (also kept in ``optimizer.defaults`` for groups added later), which an
    in-place fill would set for all of them at once (the last group's value; a reduction applied
    once per group; one group's momentum in another whose schedule drives none)."""
    for group in [optimizer.defaults, *optimizer.param_groups]:
        hyper = {key: value for key, value in group.items() if key in ("lr", "momentum", "betas")}
        group.update(copy.deepcopy(hyper))


def set_momentum(group: dict[str, Any], value: float) -> None:
    """Set a param group's momentum (SGD/RMSprop ``momentum`` or Adam-family ``betas[0]``)."""
    if "momentum" in group:
        group["momentum"] = assign(group["momentum"], value)
    elif "betas" in group:
        group["betas"] = (assign(group["betas"][0], value), *group["betas"][1:])


def first_momentum(schedules: Iterable[ScheduleLike]) -> float | None:
    """The momentum the first of ``schedules`` that drives momentum gives at step 0 (``None``
    when none does).

    Examples:
        >>> from lightning_reg.schedules import Constant, OneCycle
        >>> first_momentum([Constant(0.1), OneCycle(10, 0.1)])
        0.95
    """
    drivers = (getattr(s, "momentum", None) for s in schedules)
    return next((m(0) for m in drivers if callable(m) and m(0) is not None), None)


def check_lr_value(value: Any, who: str) -> float:
    """Validate a learning rate produced by callback ``who``'s schedule (a Python number,
    finite, >= 0); the message is built only when it is raised (this runs at every step)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{who}'s schedule must return a Python number (int or float), got "
            f"{type(value).__name__}. Return e.g. `float(...)` of a plain computation; tensors "
            "would force a host sync."
        )
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"{who}'s schedule returned {value!r}; a learning rate must be finite and >= 0."
        )
    return float(value)


class LRCallback(HookOwner):
    """Base class of lightning-reg's learning-rate callbacks: one engine for the family.

    It owns the lifecycle (fresh state at ``setup("fit")`` unless a checkpoint is restored), the
    count of each optimizer's real steps (torch's step post-hook, removed when the fit ends or
    fails; the count is saved in checkpoints), the writing of the LR and momentum (a per-group
    ``lr_scale`` multiplies the LR, a tensor LR stays a tensor), the hand-over to
    ``StochasticWeightAveraging``, the logging, and the fit-time refusals: no optimizer, an
    ``lr_scheduler`` returned by ``configure_optimizers`` on the same optimizer, or a second
    learning-rate callback of this family.

    Args:
        log_values: without a ``LearningRateMonitor`` on the Trainer, log what it sets through
            its own ``LearningRateMonitor("step", log_momentum=True)`` (keys
            ``lr-SGD``, ``lr-SGD-momentum``, ...: Lightning's names). With a monitor on the
            Trainer, that monitor logs it (pass ``log_momentum=True`` to it for the momentum).
            Default ``True``.

    Raises:
        TypeError: if ``log_values`` is not a bool.

    Example:
        >>> from lightning_reg import LRCallback, OneCycleScheduler
        >>> isinstance(OneCycleScheduler(max_lr=0.1), LRCallback)  # one per Trainer
        True
    """

    state_names: tuple[str, ...] = ("steps", "taken_over", "group_counts", "config")
    """The attributes saved in checkpoints (subclasses extend it)."""

    start_momentum: float | None = None
    """The momentum its schedules start with (``None``: none); subclasses set it at construction."""

    def __init__(self, log_values: bool = True) -> None:
        super().__init__()
        self.log_values = check_bool("log_values", log_values)
        self.home_pid = os.getpid()  # where its state is read after `fit`
        LRCallback.reset(self)  # subclasses call `self.reset()` once their config is set

    @property
    def name(self) -> str:
        return type(self).__name__

    # -- what subclasses implement -------------------------------------------------------------
    def start(self, trainer: pl.Trainer) -> None:
        """Plan this fit: set :attr:`active` (and :attr:`horizons` for schedules with an end);
        ``self.steps`` and ``self.planned`` are set by now."""

    def after_step(self, trainer: pl.Trainer, opt_idx: int) -> None:
        """Called after every real step of optimizer ``opt_idx`` (its count already updated), and
        once per optimizer when training starts: writes the :attr:`active` schedules' values at
        the step count."""
        if self.active:
            self.write(trainer, opt_idx, self.steps[opt_idx])

    def why_stopped_early(self, horizon: int) -> str:
        """Why a run ended before a schedule of ``horizon`` steps did, and what to do."""
        planned, source = self.planned
        if planned < horizon:
            return (
                f"The Trainer planned only {planned:g} optimizer steps ({source}, from "
                "`max_epochs`, `max_steps` and `limit_train_batches`): make the schedule's steps "
                "add up to the run (for OneCycleScheduler leave `total_steps=None`), or train "
                "longer."
            )
        return (
            "Runs end early with `max_time`, `EarlyStopping` or a dataloader shorter than "
            "planned (an IterableDataset under `max_steps`). Size the schedule to the run that "
            "really happens (OneCycleScheduler: `total_steps=...`), or resume from the last "
            "checkpoint to finish it."
        )

    # -- lifecycle ----------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything from a previous fit (called at ``setup("fit")``)."""
        self.remove_hooks()
        self.steps: list[int] = []
        self.restored = False
        self.taken_over: str | None = None
        self.active: list[list[ScheduleLike]] = []  # per optimizer, a schedule per param group
        self.horizons: list[int | None] = []  # per optimizer, the step its schedules end at
        self.planned: tuple[float, str] = (math.inf, "")  # `planned_steps` when training starts
        self.group_counts: list[int] = []  # per optimizer, the param groups it schedules
        self.config: dict[str, Any] = {}  # what shapes the trace: the checkpoint's until `start`
        self.named_added: set[int] = set()  # optimizers whose groups added during fit were named
        self.momentum_off: list[dict[str, Any]] = []  # groups with momentum 0 until training
        self._monitor: LearningRateMonitor | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        others = [cb for cb in callbacks_of(trainer, LRCallback) if cb is not self]
        if others:
            raise MisconfigurationException(
                f"{self.name} and {type(others[0]).__name__} would both set the learning rate "
                "of the same optimizers. Keep one learning-rate callback per Trainer (chain "
                "schedules with `lightning_reg.schedules.Chain`, or hand a step schedule over to "
                "plateau scheduling with `PerformanceScheduler(schedule=...)`)."
            )
        # Processes started for the fit have a launcher on the strategy; a process the user
        # started (multiprocessing, a hyperparameter search) runs a fit without one, and holds
        # the state where it reads it.
        if os.getpid() != self.home_pid and trainer.strategy.launcher is not None:
            rank_zero_warn(
                f"{self.name} runs this fit in a process other than the one that made it "
                "(`strategy='ddp_spawn'`, `'ddp_fork'` and `'ddp_notebook'` start every rank "
                "anew), and Lightning sends no callback state back: after `fit`, the "
                f"{self.name} there keeps its state from before the fit (no step counts, no "
                "`range_test_result`), and so does a `trainer.save_checkpoint` made there. "
                "Checkpoints saved during the fit are right. Use `strategy='ddp'` to read the "
                "state after `fit`."
            )
        self.reset()

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning substitutes an optimizer without param groups when none is configured.
        if not any(opt.param_groups for opt in trainer.optimizers):
            raise MisconfigurationException(
                f"{self.name} sets the learning rate of the Trainer's optimizers, but "
                "`configure_optimizers` returned none. Return an optimizer from it."
            )
        if trainer.lr_scheduler_configs:
            scheduler = type(trainer.lr_scheduler_configs[0].scheduler).__name__
            raise MisconfigurationException(
                f"{self.name} and the `{scheduler}` returned by `configure_optimizers` would "
                "both set the learning rate of the same optimizer. Return only the optimizer "
                f"from `configure_optimizers`, or drop {self.name}."
            )
        # FSDP2 restores a checkpoint's optimizer state after this hook (torch's distributed
        # checkpoint), into the state that one step of the optimizer as it is makes: with
        # `momentum=0` that holds no momentum buffer, so the checkpoint's would be dropped. The
        # momentum this callback drives is switched on until training starts, when a fit that
        # restored no state gets its configured momentum back. (Other strategies restore before
        # this hook, the optimizer's whole state.)
        if self.start_momentum is not None and not self.restored:
            groups = (group for opt in trainer.optimizers for group in opt.param_groups)
            self.momentum_off = [group for group in groups if group.get("momentum") == 0]
            for group in self.momentum_off:
                set_momentum(group, self.start_momentum)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        num_optimizers = len(trainer.optimizers)
        if self.restored and not self.steps:
            # A state saved before training started is no resume: Lightning's
            # LearningRateFinder and BatchSizeFinder load back the one they took at fit start.
            self.restored = False
        elif trainer.ckpt_path is not None and not self.restored:
            rank_zero_warn(
                f"{self.name}: the checkpoint {str(trainer.ckpt_path)!r} holds no state of "
                f"{self.name}, so its schedule starts again at step 0 although the run resumes "
                f"at global step {trainer.global_step}."
            )
        if not self.restored:
            for group in self.momentum_off:
                set_momentum(group, 0.0)
        if not self.steps:
            self.steps = [0] * num_optimizers
        elif len(self.steps) != num_optimizers:
            raise ValueError(
                f"{self.name}: the checkpoint counted the steps of {len(self.steps)} optimizers, "
                f"but `configure_optimizers` now returns {num_optimizers}. Resume with the same "
                "optimizers, or start a new fit without `ckpt_path`."
            )
        if not self.group_counts:  # a checkpoint's counts keep a resumed fit on its groups
            self.group_counts = [len(opt.param_groups) for opt in trainer.optimizers]
        for optimizer in trainer.optimizers:
            untie_tensors(optimizer)
        groups = self.groups(trainer)
        for k, group in enumerate(groups):
            if "lr_scale" in group:
                check_positive(f"param_groups[{k}]['lr_scale']", group["lr_scale"])
        if self.taken_over is None:
            self.planned = self.planned_steps(trainer)
            self.start(trainer)
            self.warn_if_momentum_overridden(trainer)
            for idx in range(num_optimizers):
                self.after_step(trainer, idx)
        for idx, opt in enumerate(trainer.optimizers):
            self.handles.append(opt.register_step_post_hook(self._make_post_hook(trainer, idx)))
        if self.log_values and trainer.loggers and not callbacks_of(trainer, LearningRateMonitor):
            momentum = all(momentum_key(group) for group in groups)
            self._monitor = LearningRateMonitor("step", log_momentum=momentum)
            self._monitor.on_train_start(trainer)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._monitor is not None:
            self._monitor.on_train_batch_start(trainer, pl_module, batch, batch_idx)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Not under `fast_dev_run` (a smoke test) nor after a hand-over to SWA.
        if getattr(trainer, "fast_dev_run", False) or self.taken_over:
            return
        for idx, horizon in self.unfinished():
            taken, group = self.steps[idx], trainer.optimizers[idx].param_groups[0]
            end = self.active[idx][0](horizon) * group.get("lr_scale", 1)
            rank_zero_warn(
                f"{self.name}: training ended after {taken} of the {horizon} optimizer steps "
                f"the schedule of optimizer {idx} spans ({taken / horizon:.1%}); its learning "
                f"rate is {float(group['lr']):.4g}, not the end value {end:.4g}. "
                + self.why_stopped_early(horizon)
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.state_names}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name in self.state_names:
            if name in state_dict:
                setattr(self, name, state_dict[name])
        self.restored = True

    def warn_if_changed(self, now: dict[str, Any], rule: str) -> None:
        """Warn naming each value of ``now`` that differs from the :attr:`config` restored from a
        checkpoint (nothing when none was restored), followed by ``rule``: what this fit does;
        then ``now`` is the :attr:`config` (saved in checkpoints)."""
        saved = self.config if self.restored else {}
        self.config = now
        changed = "; ".join(
            f"`{key}`: {saved[key]!r} in the checkpoint, {now[key]!r} now"
            for key in now
            if key in saved and saved[key] != now[key]
        )
        if changed:
            rank_zero_warn(
                f"{self.name}: this fit differs from the one in the checkpoint ({changed}); {rule}"
            )

    # -- counting steps; the hand-over to SWA --------------------------------------------------
    def planned_steps(self, trainer: pl.Trainer) -> tuple[float, str]:
        """The optimizer steps each optimizer takes in this fit by the Trainer's plan, and what
        that number is: ``trainer.estimated_stepping_batches``, except beside a
        ``GradientAccumulationScheduler`` (that estimate takes the accumulation of now for every
        epoch: each epoch's batches over its own accumulation, at most ``max_steps``) and under
        manual optimization with several optimizers (``global_step``, so ``max_steps``, counts the
        steps of all of them: each, assumed to step once per batch, gets ``max_steps / n``, rounded
        up). Beside ``StochasticWeightAveraging`` only the epochs before ``swa_epoch_start`` count;
        a new fit of a Trainer that trained before gets the steps left (a resume keeps its
        count)."""
        batches, num_optimizers = trainer.num_training_batches, len(trainer.optimizers)
        gas, per_epoch = callbacks_of(trainer, GradientAccumulationScheduler), accumulation(trainer)

        def steps_in(epochs: int) -> int:  # each epoch's batches over its accumulation
            return sum(math.ceil(batches / per_epoch(epoch)) for epoch in range(epochs))

        estimate = trainer.estimated_stepping_batches
        if estimate < 0:  # Lightning's -1: a dataloader without a length and no `max_steps`
            estimate = math.inf
        source = "`trainer.estimated_stepping_batches`"
        by_epochs = math.isfinite(batches) and trainer.max_epochs != -1
        if (gas and by_epochs) or (num_optimizers > 1 and trainer.max_steps != -1):
            estimate = steps_in(max(trainer.max_epochs or 1, 1)) if by_epochs else math.inf
            if trainer.max_steps != -1:
                # The Trainer checks `max_steps` between batches: a batch that passes it ends.
                estimate = min(estimate, math.ceil(trainer.max_steps / num_optimizers))
            source = (
                f"`max_steps={trainer.max_steps}` shared by {num_optimizers} optimizers "
                "(under manual optimization `global_step` counts every optimizer's steps)"
                if num_optimizers > 1
                else "each epoch's batches over GradientAccumulationScheduler's accumulation"
            )
        swa = callbacks_of(trainer, StochasticWeightAveraging)
        if swa and math.isfinite(batches):
            estimate = min(estimate, steps_in(swa[0].swa_start))
            source = f"{source} up to `swa_epoch_start` (epoch {swa[0].swa_start})"
        if trainer.global_step and not self.restored:
            # A new fit of a Trainer that trained before goes on from its step: the steps left.
            estimate -= trainer.global_step // num_optimizers
            source = f"{source} less the {trainer.global_step} steps of the Trainer's earlier fits"
        return estimate, source

    def unfinished(self) -> list[tuple[int, int]]:
        """``(optimizer index, horizon)`` of each optimizer whose schedule has not ended."""
        return [(i, n) for i, n in enumerate(self.horizons) if n is not None and self.steps[i] < n]

    def _make_post_hook(self, trainer: pl.Trainer, idx: int) -> Callable[..., None]:
        def post_hook(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
            taken_over = self.handed_over(trainer)  # SWALR set the LR of the step just taken
            self.steps[idx] += 1
            if not taken_over:
                self.after_step(trainer, idx)

        return post_hook

    def handed_over(self, trainer: pl.Trainer) -> bool:
        """Whether a scheduler put on the Trainer during the fit (``StochasticWeightAveraging``'s
        ``SWALR``; any other was refused at fit start) now drives the LR; says so once."""
        if self.taken_over is None and trainer.lr_scheduler_configs:
            self.taken_over = type(trainer.lr_scheduler_configs[0].scheduler).__name__
            where = [f"optimizer {i} at step {self.steps[i]} of {n}" for i, n in self.unfinished()]
            message = (
                f"{self.name}: `{self.taken_over}` (StochasticWeightAveraging) drives the "
                f"learning rate from optimizer step {', '.join(map(str, self.steps))} on; "
                f"{self.name} stops writing it."
            )
            if where:
                rank_zero_warn(
                    f"{message} The schedule had not ended ({', '.join(where)}). Size the "
                    "schedule to the steps before `swa_epoch_start` (OneCycleScheduler sized by "
                    "the Trainer does so)."
                )
            else:
                rank_zero_info(message)
        return self.taken_over is not None

    # -- writing ----------------------------------------------------------------------------------
    def groups(self, trainer: pl.Trainer) -> list[dict[str, Any]]:
        """The param groups it schedules, all optimizers' in order: those each optimizer had
        when the first fit started (a group added during fit, as ``BackboneFinetuning`` adds one
        when it unfreezes, is left to the callback that added it, in a resumed fit too)."""
        for idx in range(len(trainer.optimizers)):
            self.name_added_groups(trainer, idx)
        counts = zip(trainer.optimizers, self.group_counts, strict=True)
        return [group for opt, count in counts for group in opt.param_groups[:count]]

    def name_added_groups(self, trainer: pl.Trainer, opt_idx: int) -> None:
        """Say once per fit that optimizer ``opt_idx`` has groups it does not schedule."""
        optimizer = trainer.optimizers[opt_idx]
        added = len(optimizer.param_groups) - self.group_counts[opt_idx]
        if added > 0 and opt_idx not in self.named_added:
            self.named_added.add(opt_idx)
            rank_zero_warn(
                f"{self.name}: {added} param group(s) were added to {type(optimizer).__name__} "
                "during fit (BackboneFinetuning adds one when it unfreezes). It schedules the "
                f"{self.group_counts[opt_idx]} group(s) its optimizer had when the schedule was "
                "planned and leaves the learning rate of the added one(s) to the callback that "
                "added them."
            )

    def per_group(self, name: str, values: Sequence[_T]) -> list[list[_T]]:
        """``values`` for the param groups of each optimizer (all optimizers' groups in order):
        one value is shared by all of them."""
        sizes = self.group_counts
        if len(values) not in (1, sum(sizes)):
            raise ValueError(
                f"`{name}` has {len(values)} values but the optimizers have {sum(sizes)} param "
                "groups; pass one value, or exactly one per param group."
            )
        flat = iter(list(values) * (sum(sizes) if len(values) == 1 else 1))
        return [list(itertools.islice(flat, size)) for size in sizes]

    def write(self, trainer: pl.Trainer, opt_idx: int, step: int) -> None:
        """Set the LR (times the group's ``lr_scale``, if any) and momentum of optimizer
        ``opt_idx``'s param groups from their :attr:`active` schedules at ``step``; a schedule
        shared by consecutive groups is evaluated once."""
        last = None
        optimizer, schedules = trainer.optimizers[opt_idx], self.active[opt_idx]
        self.name_added_groups(trainer, opt_idx)
        for group, schedule in zip(
            optimizer.param_groups[: len(schedules)], schedules, strict=True
        ):
            if schedule is not last:
                last, lr = schedule, check_lr_value(schedule(step), self.name)
                momentum = getattr(schedule, "momentum", None)
                value = momentum(step) if callable(momentum) else None
            group["lr"] = assign(group["lr"], lr * group.get("lr_scale", 1))
            if value is not None:
                set_momentum(group, value)

    def warn_if_ratio_erased(self, trainer: pl.Trainer) -> None:
        """Warn when one schedule would give param groups with different LRs the same LR, i.e.
        when no group carries an ``lr_scale``; said in the first fit, not again on resume."""
        groups = self.groups(trainer)
        lrs = [float(group["lr"]) for group in groups]
        erased = max(lrs) > min(lrs) * (1 + 1e-9) and not any("lr_scale" in g for g in groups)
        if erased and not self.restored:
            ratios = [round(lr / max(lrs), 12) for lr in lrs]
            rank_zero_warn(
                f"{self.name}: the param groups have different learning rates {lrs}, but one "
                "schedule drives all of them to the same value, erasing their ratio. Give each "
                f"param group an `lr_scale` (here {ratios}): the schedule's LR is multiplied by "
                "it; or pass one schedule per param group (OneCycleScheduler: one `max_lr` per "
                "group)."
            )

    def warn_if_momentum_overridden(self, trainer: pl.Trainer) -> None:
        """Warn when the schedules drive momentum (:attr:`start_momentum` is a number) of param
        groups that have none (it cannot follow) or momentum 0 (it would be switched on); said in
        the first fit, not again on resume."""
        first = self.start_momentum
        if first is None or self.restored:
            return
        groups = self.groups(trainer)
        if any(momentum_key(group) is None for group in groups):
            rank_zero_warn(
                f"{self.name}: an optimizer has neither `momentum` nor `betas`; its learning "
                "rate follows the schedule but its momentum cannot. Pass `cycle_momentum=False` "
                "(a schedule without momentum) to silence this."
            )
        if any(group.get("momentum", None) == 0 for group in groups):
            rank_zero_warn(
                f"{self.name}: an optimizer has momentum 0 (e.g. `SGD(momentum=0)`), and the "
                f"schedule's momentum ({first:g} at step 0) switches momentum on. Pass "
                "`cycle_momentum=False` (a schedule without momentum) to train without momentum, "
                "or give the optimizer a momentum to silence this."
            )
