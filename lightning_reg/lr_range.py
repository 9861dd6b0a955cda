"""The LR range test that ``OneCycleScheduler(max_lr="auto")`` runs inside ``fit``.

Two parts, used apart:

- :func:`suggest_max_lr`: the rule that reads a range test's curve (pure; no Lightning).
- :class:`LRRangeTest`: the sweep. Called from a callback when training starts, it takes a
  bounded number of optimizer steps with an exponentially growing learning rate, records the
  loss (averaged over the ranks), stops early when the loss blows up, and then restores the
  weights, the optimizer, the callbacks' state and every random generator, so the run that
  follows is the run one would get passing the chosen ``max_lr`` by hand.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
import warnings
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.loops.optimization.automatic import Closure, ClosureResult
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities import CombinedLoader, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torchmetrics import Metric

from lightning_reg._hooks import accumulation
from lightning_reg._validation import check_int, check_number, check_positive
from lightning_reg.plotting import matplotlib_figure

__all__ = ["LRRangeTest", "RangeTestResult", "smooth", "suggest_max_lr"]

DEFAULT_BETA = 0.9
DEFAULT_DIVISOR = 4.0
DONE = "completed"
WHAT = "The LR range test of `max_lr='auto'`"


def smooth(losses: Sequence[float], beta: float = DEFAULT_BETA) -> list[float]:
    """Exponential moving average of ``losses`` with bias correction (as Adam's moments).

    Point ``k`` is ``avg_k / (1 - beta ** (k + 1))`` with ``avg_k = beta * avg_{k-1} +
    (1 - beta) * loss_k`` and ``avg_{-1} = 0``, so the first point equals the first loss.

    Args:
        losses: finite losses, one per step. Required.
        beta: smoothing factor in ``[0, 1)``; ``0`` returns the losses. Default ``0.9``.

    Returns:
        The smoothed losses, as many as ``losses``.

    Example:
        >>> smooth([2.0, 2.0, 2.0])
        [2.0, 2.0, 2.0]
        >>> smoothed = smooth([1.0, 3.0], beta=0.5)  # (0.25 + 1.5) / 0.75 for the second
        >>> round(smoothed[1], 3)
        2.333
    """
    avg, out = 0.0, []
    for k, loss in enumerate(losses):
        avg = beta * avg + (1.0 - beta) * loss
        out.append(avg / (1.0 - beta ** (k + 1)))
    return out


def _check_rule(beta: float, divisor: float) -> tuple[float, float]:
    """The arguments of :func:`suggest_max_lr`'s rule, checked (``LRRangeTest`` holds them too)."""
    beta = check_number("beta", beta, "in [0, 1)", lambda b: 0.0 <= b < 1.0)
    return beta, check_number("divisor", divisor, ">= 1", lambda d: d >= 1.0)


def suggest_max_lr(
    lrs: Sequence[float],
    losses: Sequence[float],
    beta: float = DEFAULT_BETA,
    divisor: float = DEFAULT_DIVISOR,
) -> float:
    """1cycle's ``max_lr`` read from an LR range test: the LR of the lowest smoothed loss,
    divided by ``divisor``.

    The curve is smoothed with :func:`smooth` over its finite prefix (a sweep stops at the first
    non-finite loss). The divisor was chosen by 1cycle's accuracy on four tuning tasks and
    checked on four others (see ``docs/schedules.md``).

    Args:
        lrs: the learning rate of each step, increasing. Required.
        losses: the loss of each step (same length; may end with a non-finite value). Required.
        beta: smoothing factor in ``[0, 1)``. Default ``0.9``.
        divisor: the LR of the lowest smoothed loss is divided by this, ``>= 1``. Default ``4``.

    Returns:
        A finite learning rate > 0.

    Raises:
        ValueError: when the curve cannot give a value: lengths differ or are 0, no finite
            loss, or the lowest smoothed loss is at the first LR (the loss never fell, so the
            sweep started too high or the model does not train): the message says which, and
            what to change.

    Warns:
        UserWarning: when the lowest smoothed loss is the curve's last point, a finite one (the
            loss still fell at the top of the swept range): it names ``LRRangeTest(max_lr=...)``.

    Example:
        >>> lrs = [0.01, 0.1, 1.0, 10.0]
        >>> suggest_max_lr(lrs, [2.0, 1.0, 0.5, float("nan")], beta=0.0)
        0.25
        >>> suggest_max_lr(lrs, [2.0, 1.0, 0.5, 9.0], beta=0.0, divisor=10.0)
        0.1
    """
    if not 0 < len(lrs) == len(losses):
        raise ValueError(f"`lrs` and `losses` need one length > 0: {len(lrs)} and {len(losses)}.")
    _check_rule(beta, divisor)
    finite = next((k for k, loss in enumerate(losses) if not math.isfinite(loss)), len(losses))
    curve = smooth(losses[:finite], beta)
    best = min(range(finite), key=curve.__getitem__, default=0)
    if best == 0:  # also when no loss is finite
        why = "has no finite loss" if finite == 0 else "'s loss never fell below its value"
        raise ValueError(
            f"The LR range test {why} at the first LR ({lrs[0]:.3g}): the sweep starts too high "
            "or the model does not train. Lower `min_lr` of the range test, or pass `max_lr` by "
            "hand."
        )
    if best == len(losses) - 1:
        rank_zero_warn(
            f"The LR range test's lowest smoothed loss is at the top of the swept range (lr "
            f"{lrs[best]:.3g}): the loss was still falling, so max_lr {lrs[best] / divisor:.3g} "
            "read from it may be far from the best. Sweep higher with `LRRangeTest(max_lr=...)`"
            f" above {lrs[best]:.3g}, or pass `max_lr` by hand."
        )
    return float(lrs[best]) / divisor


@dataclass(frozen=True)
class RangeTestResult:
    """What one LR range test measured.

    Attributes:
        lrs: the learning rate of each step taken.
        losses: the training loss of each step (the mean over ranks), before the update.
        max_lr: the value :func:`suggest_max_lr` read from the curve.
        stop_reason: ``"completed"``, or why the sweep stopped early.
        seconds: wall time of the sweep including the restore.

    Example:
        >>> from lightning_reg import OneCycleScheduler
        >>> callback = OneCycleScheduler(max_lr="auto")
        >>> callback.range_test_result is None  # set when a fit's sweep has run
        True
        >>> result = RangeTestResult([0.01, 0.1, 1.0], [2.0, 1.0, 3.0], 0.05, "completed", 0.1)
        >>> result.max_lr, len(result.losses)
        (0.05, 3)
    """

    lrs: list[float]
    losses: list[float]
    max_lr: float
    stop_reason: str
    seconds: float

    def log(self, trainer: pl.Trainer) -> None:
        """Log the curve (``lr_range_test/lr`` and ``lr_range_test/loss`` at steps ``0..n-1``)
        and the chosen value (``lr_range_test/max_lr``) through the Trainer's loggers."""
        for logger in trainer.loggers:
            for k, (lr, loss) in enumerate(zip(self.lrs, self.losses, strict=True)):
                logger.log_metrics({"lr_range_test/lr": lr, "lr_range_test/loss": loss}, step=k)
            logger.log_metrics({"lr_range_test/max_lr": self.max_lr}, step=len(self.lrs) - 1)

    def plot(self, ax: Any = None) -> Any:
        """Plot loss (raw and smoothed) against the LR, with the chosen ``max_lr``.

        Needs matplotlib (the ``plot`` extra). Returns the matplotlib ``Figure``.

        Example:
            >>> result = RangeTestResult([0.01, 0.1, 1.0], [2.0, 1.0, 3.0], 0.1, "completed", 0.1)
            >>> fig = result.plot()
            >>> fig.axes[0].get_xscale()
            'log'
        """
        if ax is None:
            figure = matplotlib_figure("RangeTestResult.plot")
            ax = figure(figsize=(6, 4), layout="constrained").add_subplot()
        # A non-finite loss (the last one of a sweep stopped by it) is not drawn.
        ax.plot(self.lrs, self.losses, alpha=0.4, label="loss")
        ax.plot(self.lrs, smooth(self.losses), label="smoothed")
        ax.axvline(self.max_lr, color="C2", linestyle="--", label=f"max_lr {self.max_lr:.3g}")
        ax.set(xscale="log", xlabel="learning rate", ylabel="training loss")
        ax.legend()
        return ax.figure


@dataclass
class LRRangeTest:
    """An exponential LR sweep of real training steps inside ``fit``, undone afterwards (Smith
    2015's range test).

    :meth:`run` is called from a callback hook when training starts (``OneCycleScheduler`` calls
    it from ``on_train_start`` with ``max_lr="auto"``). It takes up to ``num_steps`` optimizer
    steps on batches drawn from a separate iterator of the training dataloader, in the train/eval
    modes the modules train in (a submodule left in eval stays so), the LR of step
    ``k`` being ``min_lr * (max_lr / min_lr) ** (k / (num_steps - 1))`` on every param group
    (times the group's ``lr_scale``, as in training). It stops early at the first non-finite
    loss, or when the smoothed loss exceeds ``early_stop_threshold`` times its lowest value.
    Then, on every exit path (an exception or ``KeyboardInterrupt`` included), it restores the
    weights and buffers, the own attributes of the module and its submodules (their train/eval
    modes included; one a step sets for the first time is removed) and the items of a list,
    dict or set they hold (``self.losses.append(...)`` in ``training_step``; one level deep: a
    list inside a dict keeps what the sweep appended),
    the gradients, the optimizer's state and hyperparameters, the GradScaler,
    every callback's ``state_dict``, the torchmetrics states, and the torch (CPU and
    accelerator), Python and NumPy random generators plus any generator held by the dataloader:
    the training that follows draws the same batches and dropout masks as it would without the
    sweep (not from a dataloader with ``persistent_workers=True``, whose workers the sweep
    starts and the training keeps: a warning names it).

    Each sweep step is the step Lightning's automatic optimization takes, through the same
    public calls: ``trainer.strategy.training_step`` (the DDP wrapper, the precision plugin's
    autocast) on one batch per accumulated gradient, ``trainer.strategy.backward`` (the module's
    ``backward``, the GradScaler, the backward hooks, DDP's gradient sync on the last
    micro-batch), then the module's ``optimizer_step`` hook (an override included), which steps
    through ``trainer.strategy.optimizer_step`` with that closure (unscaling,
    ``on_before_optimizer_step``, clipping as configured, a skipped step on inf/NaN gradients). So
    a weight penalty, a max-norm constraint and clipping act in the sweep as in training.
    ``self.log`` calls are dropped during the sweep (the Trainer runs as ``barebones`` for it),
    so logged metrics and the progress bar see only real training. The loss of each step is
    averaged over the ranks with ``trainer.strategy.reduce``, so every rank sees the same curve,
    stops at the same step and reads the same value.

    Args:
        min_lr: LR of the first step, > 0. Default ``1e-4``.
        max_lr: LR of the last step, > ``min_lr``. Default ``10.0``.
        num_steps: the most steps the sweep takes, >= 2. Default ``50`` (ten per decade).
        early_stop_threshold: stop when the smoothed loss exceeds this multiple of its lowest
            value, > 1; ``None`` stops only at a non-finite loss. Default ``4.0``.
        beta: smoothing of the loss curve (see :func:`smooth`). Default ``0.9``.
        divisor: the chosen ``max_lr`` is the LR of the lowest smoothed loss divided by this
            (see :func:`suggest_max_lr`). Default ``4.0``.

    Raises:
        ValueError, TypeError: at construction, for values outside the ranges above; in
            :meth:`run`, when the curve cannot give a value (the message says why).
        MisconfigurationException: in :meth:`run`, before any sweep step, for a run shape the
            sweep cannot undo or synchronize: manual optimization (which several optimizers
            need), no training dataloader, or a strategy other than single-device or DDP (FSDP
            and DeepSpeed are refused by name); at the first sweep step, for a ``training_step``
            output Lightning's automatic optimization refuses (a dict without ``"loss"``) or
            skips (``None``).

    Example:
        >>> from lightning_reg import LRRangeTest, OneCycleScheduler
        >>> range_test = LRRangeTest(min_lr=1e-4, max_lr=3.0, num_steps=60)
        >>> range_test.lrs()[-1]
        3.0
        >>> callback = OneCycleScheduler(max_lr="auto", range_test=range_test)
    """

    min_lr: float = 1e-4
    max_lr: float = 10.0
    num_steps: int = 50
    early_stop_threshold: float | None = 4.0
    beta: float = DEFAULT_BETA
    divisor: float = DEFAULT_DIVISOR

    def __post_init__(self) -> None:
        low = self.min_lr = check_positive("min_lr", self.min_lr)
        self.max_lr = check_number("max_lr", self.max_lr, f"> min_lr ({low})", lambda m: m > low)
        self.num_steps = check_int("num_steps", self.num_steps, 2)
        if self.early_stop_threshold is not None:
            check_number("early_stop_threshold", self.early_stop_threshold, "> 1", lambda t: t > 1)
        self.beta, self.divisor = _check_rule(self.beta, self.divisor)

    def lrs(self) -> list[float]:
        """The LR of every step of a full sweep."""
        ratio = self.max_lr / self.min_lr
        last = self.num_steps - 1
        return [self.min_lr * ratio ** (k / last) for k in range(self.num_steps)]

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> RangeTestResult:
        """Sweep, undo, and read the curve (see the class docstring).

        Args:
            trainer: the fitting Trainer, with its optimizer and training dataloader set up
                (``on_train_start`` or later). Required.
            pl_module: its LightningModule. Required.

        Returns:
            The curve, the chosen ``max_lr`` (identical on every rank) and why the sweep stopped.
        """
        start = time.perf_counter()
        check_run_shape(trainer, pl_module)
        optimizer = trainer.optimizers[0]  # automatic optimization: exactly one
        with (
            _undone(trainer, pl_module, optimizer),
            contextlib.closing(_cycle(trainer.train_dataloader)) as batches,
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")  # the sweep's own; the run repeats what matters
            trainer.barebones = True  # `self.log` in `training_step` returns without logging
            # GradientAccumulationScheduler sets the epoch's accumulation when the epoch starts.
            trainer.accumulate_grad_batches = accumulation(trainer)(trainer.current_epoch)
            losses, reason = self._sweep(trainer, pl_module, optimizer, batches)
        lrs = self.lrs()[: len(losses)]
        max_lr = suggest_max_lr(lrs, losses, self.beta, self.divisor)
        max_lr = float(trainer.strategy.broadcast(max_lr, src=0))
        return RangeTestResult(lrs, losses, max_lr, reason, time.perf_counter() - start)

    def _sweep(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        optimizer: torch.optim.Optimizer,
        batches: Iterator[Any],
    ) -> tuple[list[float], str]:
        """The loss of each step of :meth:`lrs` taken, and why the sweep stopped."""
        losses: list[float] = []
        for k, lr in enumerate(self.lrs()):
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1)  # the training's ratios
            loss = _training_step(trainer, pl_module, optimizer, batches, k)
            losses.append(float(trainer.strategy.reduce(loss, reduce_op="mean")))
            if not math.isfinite(losses[-1]):
                return losses, f"non-finite loss at step {k} (lr {lr:.3g})"
            curve, limit = smooth(losses, self.beta), self.early_stop_threshold
            if limit is not None and curve[-1] > limit * min(curve):
                return losses, (
                    f"loss diverged at step {k} (lr {lr:.3g}): smoothed loss {curve[-1]:.4g} > "
                    f"{limit:g} x lowest {min(curve):.4g}"
                )
        return losses, DONE


def check_run_shape(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """Refuse, before any sweep step, a run shape the sweep cannot undo or synchronize (see
    :class:`LRRangeTest`'s Raises); ``OneCycleScheduler`` also checks it under ``fast_dev_run``,
    where it skips the sweep."""
    if not pl_module.automatic_optimization:
        raise MisconfigurationException(
            f"{WHAT} needs automatic optimization (it takes the optimizer steps itself); "
            "with `automatic_optimization = False`, pass `max_lr` by hand."
        )
    if trainer.train_dataloader is None:
        raise MisconfigurationException(f"{WHAT} needs a training dataloader.")
    loaders = CombinedLoader(trainer.train_dataloader).flattened
    if any(getattr(loader, "persistent_workers", False) for loader in loaders):
        rank_zero_warn(
            f"{WHAT} starts the workers of a dataloader with `persistent_workers=True`, which the "
            "training then goes on with: its shuffling, dropout and augmentations draw other "
            "random numbers than the run with the chosen `max_lr` passed by hand would. Pass "
            "`persistent_workers=False` for that run exactly."
        )
    strategy = trainer.strategy
    supported = isinstance(strategy, (SingleDeviceStrategy, DDPStrategy))
    if not supported or isinstance(strategy, DeepSpeedStrategy):
        raise MisconfigurationException(
            f"{WHAT} runs under single-device and DDP strategies, not "
            f"`{type(strategy).__name__}`; pass `max_lr` by hand."
        )


def _training_step(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[Any],
    step: int,
) -> torch.Tensor:
    """One optimizer step as Lightning's automatic optimization takes it, through the strategy:
    a :class:`Closure` per micro-batch (``training_step``, zero-grad on the first, backward), the
    last one run by the module's ``optimizer_step`` hook (with its ``LightningOptimizer``, which
    steps through ``strategy.optimizer_step``), the earlier ones with DDP's sync blocked.
    Returns the step's loss (the mean over its micro-batches)."""
    strategy, accumulate = trainer.strategy, trainer.accumulate_grad_batches
    epoch = trainer.current_epoch
    # DDP's gradient sync is blocked on all but the last micro-batch (a single device has none).
    blocked = getattr(strategy, "block_backward_sync", contextlib.nullcontext)
    total = torch.zeros((), device=strategy.root_device)
    for micro in range(accumulate):
        batch_idx = step * accumulate + micro
        batch = strategy.batch_to_device(next(batches))

        def step_fn(batch: Any = batch, batch_idx: int = batch_idx) -> ClosureResult:
            output = strategy.training_step(batch, batch_idx)
            if output is None:
                raise MisconfigurationException(
                    f"{WHAT} needs the loss of every `training_step`, which returned `None` (a "
                    "skipped step) in the sweep. Pass `max_lr` by hand."
                )
            return ClosureResult.from_training_step_output(output, accumulate)

        def backward(loss: torch.Tensor) -> None:
            strategy.backward(loss, optimizer)

        zero_grad = partial(pl_module.optimizer_zero_grad, epoch, batch_idx, optimizer)
        closure = Closure(step_fn, backward, zero_grad if micro == 0 else None)
        if micro + 1 < accumulate:
            with blocked():
                closure()
        else:
            # Lightning's hook, as training steps through it (a module may override it).
            wrapped = cast(LightningOptimizer, pl_module.optimizers())  # automatic: exactly one
            pl_module.optimizer_step(epoch, batch_idx, wrapped, closure)
        loss = closure.consume_result().loss
        assert loss is not None  # step_fn raised otherwise
        total += loss
    return total


def _cycle(iterables: Any) -> Generator[Any, None, None]:
    """Batches from fresh iterators of the training dataloader(s), restarted when exhausted."""
    while True:
        produced = False
        for batch, _, _ in CombinedLoader(iterables, mode="max_size_cycle"):
            produced = True
            yield batch
        if not produced:
            raise MisconfigurationException(f"{WHAT} found the training dataloader empty.")


def _same_state(a: Any, b: Any) -> bool:
    """Whether two ``state_dict`` values are equal (nested dicts and sequences, tensors)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and bool(torch.equal(a, b))
    if isinstance(a, Mapping):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(_same_state, a, b))
    try:
        return bool(a == b)
    except (TypeError, ValueError, RuntimeError):  # values without a plain equality
        return False


@contextlib.contextmanager
def _undone(
    trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
) -> Generator[None, None, None]:
    """Everything a sweep step changes that the run after it reads, put back on leaving the
    block, whatever the exit: weights, buffers and gradients; each module's own attributes (a
    value a step rebinds or sets first, such as a penalty kept for logging, and the train/eval
    mode) and the items of a list, dict or set among them; the optimizer; the ``state_dict`` of
    the GradScaler and the callbacks; torchmetrics states; the Trainer's ``barebones`` and
    ``accumulate_grad_batches``; the random generators, the training dataloader's included."""
    attributes = [(module, dict(vars(module))) for module in pl_module.modules()]
    for module, saved in attributes:  # a torchmetrics state may change in place: copied
        if isinstance(module, Metric):
            saved.update(copy.deepcopy(module.metric_state))
    # Each module's own attributes (one a step sets first is removed), and the items of a list,
    # dict or set among them that a step changes in place (`self.losses.append(...)`, and
    # `_buffers` where a step rebinds a buffer): one level deep.
    containers: list[tuple[Any, Any]] = [(vars(module), saved) for module, saved in attributes]
    containers += [
        (value, copy.copy(value))
        for _, saved in attributes
        for value in saved.values()
        if isinstance(value, (list, dict, set))
    ]
    params = list(pl_module.parameters())
    tensors = [*params, *pl_module.buffers()]
    values = [t.detach().clone() for t in tensors]
    grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
    # The optimizer's state and param groups, deep-copied but for the parameters themselves,
    # restored in place like those: anything holding the param-group dicts keeps the live ones.
    memo = {id(p): p for group in optimizer.param_groups for p in group["params"]}
    containers += [
        (obj, copy.deepcopy(obj, memo)) for obj in (optimizer.state, *optimizer.param_groups)
    ]
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    stateful = [*trainer.callbacks, scaler]  # type: ignore[attr-defined]
    states = [(obj, copy.deepcopy(obj.state_dict())) for obj in stateful if obj is not None]
    generators = [(g, g.get_state()) for g in _loader_generators(trainer.train_dataloader)]
    python_rng, numpy_rng, barebones = random.getstate(), np.random.get_state(), trainer.barebones
    accumulate = trainer.accumulate_grad_batches
    try:
        with torch.random.fork_rng(devices=range(torch.accelerator.device_count())):
            yield
    finally:
        for container, items in containers:
            container.clear()
            (container.extend if isinstance(container, list) else container.update)(items)
        with torch.no_grad():
            for tensor, value in zip(tensors, values, strict=True):
                tensor.copy_(value)
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad
        for obj, state in states:
            # Only a state the sweep changed is loaded back: `load_state_dict` also tells a
            # callback that it resumed from a checkpoint (the LR callbacks' lifecycle).
            if state and not _same_state(obj.state_dict(), state):
                obj.load_state_dict(state)
        for generator, generator_state in generators:
            generator.set_state(generator_state)
        random.setstate(python_rng)
        np.random.set_state(numpy_rng)
        trainer.barebones, trainer.accumulate_grad_batches = barebones, accumulate


def _loader_generators(iterables: Any) -> list[torch.Generator]:
    """The ``torch.Generator``s that iterating the training dataloader(s) advances (each
    loader's own and its samplers'; one held twice is restored twice to the same state)."""
    holders = []
    for loader in CombinedLoader(iterables).flattened:
        inner = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
        holders += [loader, getattr(loader, "sampler", None), inner]
    generators = [getattr(holder, "generator", None) for holder in holders]
    return [g for g in generators if isinstance(g, torch.Generator)]
