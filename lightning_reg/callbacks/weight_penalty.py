"""The weight penalty's one route into training: a callback that ``WeightPenaltyMixin`` adds."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.optim import Optimizer
from typing_extensions import override

from lightning_reg._hooks import HookOwner, callbacks_of, refuse_fsdp1
from lightning_reg.callbacks.max_norm import MaxNorm
from lightning_reg.penalties import (
    add_penalty_grad_,
    dense_grads,
    soft_threshold_,
    weight_penalty,
    zero_fraction,
)
from lightning_reg.selection import (
    DEFAULT_PENALIZED_MODULES,
    outside_message,
    outside_parameters,
    select_weights,
)

__all__ = ["PenaltyConfig", "WeightPenalty"]


class PenaltyConfig(NamedTuple):
    """A ``WeightPenaltyMixin``'s configuration (set by its ``configure_penalty``), which
    :class:`WeightPenalty` reads from ``pl_module.penalty_config``.

    Example:
        >>> PenaltyConfig(l2=1e-4).as_weight_decay
        False
    """

    l1: float = 0.0
    l2: float = 0.0
    modules: tuple[type[nn.Module], ...] = DEFAULT_PENALIZED_MODULES
    predicate: Callable[[str, nn.Parameter], bool] | None = None
    names: tuple[str, ...] | None = None
    as_weight_decay: bool = False
    proximal_l1: bool = False

    def select(self, module: nn.Module, **options: bool) -> list[nn.Parameter]:
        """The weights of ``module`` it selects (``options``: those of ``select_weights``)."""
        return select_weights(module, self.modules, self.predicate, self.names, **options)


class WeightPenalty(HookOwner):
    """Adds the gradient of a ``WeightPenaltyMixin`` module's penalty once per real optimizer step.

    ``WeightPenaltyMixin.configure_callbacks`` returns it; it reads the module's
    ``penalty_config`` (factors at every step, the rest when the fit starts). The route:

    * ``on_after_backward`` counts the micro-batches that ran backward since the last step (a
      ``training_step`` that returns ``None`` runs none).
    * ``on_before_optimizer_step``, which Lightning calls once per real step in automatic and
      manual optimization, after the DDP all-reduce and the GradScaler's unscaling and before
      gradient clipping, adds ``scale * (l1 * sign(w) + 2 * l2 * w)`` to ``.grad`` of the
      selected weights in that optimizer's param groups that require grad. Under automatic
      optimization ``scale`` is ``micro-batches that ran backward / accumulate_grad_batches``,
      the factor Lightning gives each micro-batch's loss, so the update is the loss route's; under
      manual optimization it is 1 (once per ``opt.step()``).
    * ``proximal_l1``: a step post-hook on each optimizer soft-thresholds the weights it stepped,
      before every ``MaxNorm`` acts, wherever that sits (the exact proximal map of l1 plus a
      2-norm bound).
    * ``as_weight_decay``: l2 is folded into the coupled ``weight_decay`` of the param groups
      holding the weights at fit start, and again after Lightning restores a checkpoint's
      optimizer state (in ``on_train_start``), so a resumed fit trains as its own configuration
      says (the penalty switched off included: the checkpoint's fold is undone); at a window
      short of micro-batches the difference ``(scale - 1) * 2 * l2 * w`` goes into the
      gradient, giving the window the loss route's share; a restored decay that neither the
      checkpoint's fold nor ``configure_optimizers`` explains is named in a warning. A param
      group added during fit takes l2 through the gradient unless its ``weight_decay`` already
      is the fold; the checkpoint keeps how many groups each optimizer had at fit start, so a
      group that ``BackboneFinetuning`` restores when a fit resumes is still one added during
      fit.

    Example:
        >>> WeightPenalty().state_dict()
        {'fold': None, 'groups': []}
    """

    def __init__(self) -> None:
        super().__init__()
        self._backwards = 0
        # The weights selected at fit start, by id; none if l1 = l2 = 0.
        self._weights: dict[int, nn.Parameter] = {}
        self._fold: float | None = None  # the `weight_decay` l2 is folded into (2 * l2)
        self._restored: float | None = None  # the checkpoint's fold
        # Per optimizer, the param groups `configure_optimizers` gave it (the rest: added in fit).
        self._groups: list[int] = []
        # The `weight_decay` that `configure_optimizers` gave each group holding selected weights.
        self._configured: dict[tuple[int, int], float] = {}

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"fold": self._fold, "groups": list(self._groups)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = state_dict.get("fold")
        self._groups = list(state_dict.get("groups", []))

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":  # test, validate, predict: the fit's state stays for a checkpoint
            return
        self._restored, self._groups = None, []
        config = _config(pl_module)
        if not (config.l1 or config.l2):
            return
        # Refused before the strategy wraps the model (FSDP1 flattens the parameters).
        refuse_fsdp1(trainer, "The weight penalty", "each rank holds a slice of flat parameters")
        if isinstance(trainer.strategy, DeepSpeedStrategy):
            raise MisconfigurationException(
                "The weight penalty cannot run under DeepSpeedStrategy, which partitions and steps "
                f"the gradients itself. {_IN_THE_LOSS}, or use DDP or FSDP2."
            )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        config = _config(pl_module)
        self.release(trainer, pl_module)
        pl_module.penalty_fit_factors = (config.l1, config.l2)  # type: ignore[assignment]
        self._backwards, self._configured = 0, {}
        if len(self._groups) != len(trainer.optimizers):  # else a checkpoint's counts: groups
            # added in its fit are not configured ones (BackboneFinetuning restores them)
            self._groups = [len(optimizer.param_groups) for optimizer in trainer.optimizers]
        self._fold = 2.0 * config.l2 if config.as_weight_decay and config.l2 > 0 else None
        on = bool(config.l1 or config.l2)  # off, a checkpoint's fold is still undone below
        weights = config.select(pl_module, trainable_only=False) if on or self._restored else []
        selected = {id(w): w for w in weights}
        self._weights = selected if on else {}  # off: nothing to penalize at the steps
        if not weights:
            return
        by_type = config.predicate is config.names is None
        if on and by_type and config.modules == DEFAULT_PENALIZED_MODULES:
            outside = outside_parameters(pl_module, config.modules)
            if outside:  # the default selection leaves them out; a chosen one is taken as meant
                how = "To penalize them, pass `modules=` with their layer types added, or choose "
                how += "the parameters with `predicate=` or `names=`"
                who = "The weight penalty does not apply to"
                default = "DEFAULT_PENALIZED_MODULES"
                rank_zero_warn(outside_message(who, pl_module, outside, default, how))
        for i, optimizer in enumerate(trainer.optimizers):
            for j, group in enumerate(optimizer.param_groups[: self._groups[i]]):
                if any(id(p) in selected for p in group["params"]):
                    if self._restored is not None and group.get("weight_decay") == self._restored:
                        # The checkpoint's fold, which BackboneFinetuning restores before this
                        # hook with the groups it added: not a decay `configure_optimizers` gave.
                        group["weight_decay"] = 0.0
                    if on:
                        self._refuse(trainer, optimizer, group)
                    if "weight_decay" in group:
                        self._configured[i, j] = group["weight_decay"]
                        group["weight_decay"] = self._fold or group["weight_decay"]
            if config.proximal_l1:
                hook = functools.partial(self._proximal_step, pl_module)
                self.handles.append(optimizer.register_step_post_hook(hook))
        if config.proximal_l1:
            # The soft-threshold, then the bounds: a MaxNorm that registered its hooks before
            # these (it sits before this callback) registers them again, after; a later one
            # registers its own after these anyway.
            for bound in callbacks_of(trainer, MaxNorm):
                if bound.handles:
                    bound.register_hooks(trainer, pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Lightning restored a checkpoint's optimizer state after ``on_fit_start``: set each
        penalized group's ``weight_decay`` to the fold, or else to what ``configure_optimizers``
        gave it, again; name a value found there that neither these nor the checkpoint's fold
        explain."""
        for (i, j), configured in self._configured.items():
            optimizer = trainer.optimizers[i]
            group, expected = optimizer.param_groups[j], self._fold or configured
            if group["weight_decay"] not in (expected, configured, self._restored):
                rank_zero_warn(
                    f"The checkpoint restored `weight_decay={group['weight_decay']}` into param "
                    f"group {j} of {type(optimizer).__name__} (penalized weights), which neither "
                    f"its fold nor `configure_optimizers` ({configured}) explains; this fit uses "
                    f"`weight_decay={expected}`, as its configuration says."
                )
            group["weight_decay"] = expected

    @override
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._backwards += 1

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        backwards, self._backwards = self._backwards, 0
        scale = 1.0  # manual optimization: once per `opt.step()`
        if pl_module.automatic_optimization:  # the factor Lightning gives each micro-batch
            scale = backwards / trainer.accumulate_grad_batches
        if not self._weights or scale == 0.0:  # no penalty, or every micro-batch was skipped
            return
        config = _config(pl_module)
        l1 = 0.0 if config.proximal_l1 else config.l1
        for group, weights in self._groups_of(optimizer):
            # A group whose `weight_decay` is the fold takes l1 only here; torch's coupled decay
            # reaches a weight only through a present, dense `.grad`, as l2 in the loss makes it.
            # The decay adds all of l2's gradient: a window short of micro-batches takes back
            # the share its loss route leaves out.
            folded = self._fold is not None and group.get("weight_decay") == self._fold
            if folded:
                dense_grads(weights)
                if scale != 1.0:
                    add_penalty_grad_(weights, 0.0, config.l2, scale - 1.0)
            add_penalty_grad_(weights, l1, 0.0 if folded else config.l2, scale)

    def _groups_of(self, optimizer: Optimizer) -> Iterator[tuple[dict, list[nn.Parameter]]]:
        """The optimizer's param groups (as they are now: ``BackboneFinetuning`` adds some) with
        their selected weights that require grad."""
        for group in optimizer.param_groups:
            weights = [p for p in group["params"] if id(p) in self._weights and p.requires_grad]
            if weights:
                yield group, weights

    def _proximal_step(self, pl_module: pl.LightningModule, optimizer: Optimizer, *_: Any) -> None:
        """Soft-threshold the weights the step updated with their group's learning rate (a step
        the GradScaler skips is no step: torch runs no post-hook)."""
        config = _config(pl_module)
        if config.l1 == 0:  # it may be set later in the fit
            return
        for group, weights in self._groups_of(optimizer):
            soft_threshold_(weights, group["lr"] * config.l1)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log ``train/penalty`` (and ``train/zero_fraction`` with ``proximal_l1``) of the weights
        the epoch ends with: one value per epoch, the same on every rank."""
        if not self._weights:
            return
        config = _config(pl_module)
        weights = [w for w in self._weights.values() if w.requires_grad]
        with torch.no_grad():
            metrics = {"train/penalty": weight_penalty(weights, config.l1, config.l2)}
        if config.proximal_l1 and config.l1 > 0:
            metrics["train/zero_fraction"] = zero_fraction(weights)
        pl_module.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=True)

    def _refuse(self, trainer: pl.Trainer, optimizer: Optimizer, group: dict) -> None:
        """Raise if ``group`` of ``optimizer`` holds penalized weights that cannot take the
        penalty's gradient, or whose l2 cannot be folded into ``weight_decay``."""
        name, fused = type(optimizer).__name__, any(g.get("fused") for g in optimizer.param_groups)
        if isinstance(optimizer, torch.optim.SparseAdam):
            why = "it takes sparse gradients only; leave those layers out of the penalty"
        elif isinstance(optimizer, torch.optim.LBFGS):
            why = f"it re-evaluates a loss without the penalty inside its step. {_IN_THE_LOSS}"
        elif group.get("maximize"):
            why = (
                "with `maximize=True` it ascends the gradient, so the penalty's would grow the "
                "weights; minimize the negated objective instead"
            )
        elif trainer.precision in ("16-mixed", "16") and fused:
            why = (
                "under 16-bit AMP a fused optimizer unscales its gradients inside its step, after "
                "the penalty is added; use `fused=False`"
            )
        else:
            why = ""
        if why:
            raise MisconfigurationException(
                f"The weight penalty cannot be used with {name} on the weights it updates: {why}."
            )
        if self._fold is None:
            return
        if not all(id(p) in self._weights for p in group["params"]):
            why = "its param group mixes the penalized weights with other parameters (biases)"
        elif "weight_decay" not in group:
            why = f"{name} has no `weight_decay` option"
        elif isinstance(optimizer, torch.optim.AdamW) or group.get("decoupled_weight_decay"):
            why = f"{name} decays weights decoupled from the gradient (AdamW-style), not as l2 does"
        elif group["weight_decay"] not in (0, self._fold):
            why = f"their param group already has `weight_decay={group['weight_decay']}`"
        if why:
            raise ValueError(
                f"`as_weight_decay=True` cannot fold l2 into `weight_decay` of {name}: {why}. "
                "Use `as_weight_decay=False`, or a coupled optimizer over "
                "`self.penalty_param_groups()`."
            )

    @override
    def release(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Remove the proximal step's hooks; the module is no longer fitting."""
        super().release(trainer, pl_module)
        pl_module.penalty_fit_factors = None  # type: ignore[assignment]


_IN_THE_LOSS = "Set l1=l2=0 and add `weight_penalty(...)` from lightning_reg.penalties to the loss"


def _config(pl_module: pl.LightningModule) -> PenaltyConfig:
    return cast(PenaltyConfig, pl_module.penalty_config)
