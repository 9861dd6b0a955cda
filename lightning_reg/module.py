"""The module side of regularization: the weight-penalty mixin and the LightningModule base.

* :class:`WeightPenaltyMixin` adds the gradient of ``l1 * sum|w| + l2 * sum w**2`` to the
  gradients of the weights each optimizer step updates (or folds l2 into a coupled optimizer's
  ``weight_decay``; or applies l1 as a proximal step after the update).
* :class:`RegularizedModule` holds shared layer defaults (dropout, activation, init, max-norm)
  and builds dense blocks with them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.trainer.states import TrainerFn, TrainerStatus
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_reg._loop import batches_that_stepped
from lightning_reg._validation import check_int, check_non_negative, check_positive
from lightning_reg.callbacks.max_norm import MaxNorm, _beside_trainer_max_norms
from lightning_reg.layers import _check_dropout, dense_block, init_weights_, resolve_init
from lightning_reg.penalties import (
    DEFAULT_PENALIZED_MODULES,
    _add_penalty_grad,
    _check_module_types,
    _outside_layers,
    _select_weights,
    select_weights,
    soft_threshold_,
    weight_penalty,
    zero_fraction,
)
from lightning_reg.uncertainty import MCDropoutMixin, _check_mc_task

__all__ = ["RegularizedModule", "WeightPenaltyMixin"]

# (param group, its penalized weights, whether their l2 is added to the gradient although
# `as_weight_decay=True`) of one optimizer, with the group sizes they were computed from:
# recomputed only when a param group is added or resized (BackboneFinetuning).
_Group = tuple[dict[str, Any], list[nn.Parameter], bool]
_Groups = tuple[tuple[int, ...], list[_Group]]


def _fold_problem(
    optimizer: torch.optim.Optimizer, group: dict[str, Any], selected: set[int], decay: float
) -> str | None:
    """Why l2 cannot be folded into ``group``'s ``weight_decay = decay``, or ``None`` if it can
    (``selected``: ids of the penalized weights, some of which the group holds)."""
    name = type(optimizer).__name__
    if not all(id(p) in selected for p in group["params"]):
        return (
            f"a param group of {name} mixes the penalized weights with other parameters "
            "(biases, norm layers), which would be decayed too"
        )
    if "weight_decay" not in group:
        return f"{name} has no `weight_decay` option"
    if isinstance(optimizer, torch.optim.AdamW) or group.get("decoupled_weight_decay"):
        return f"{name} decays weights decoupled from the gradient (AdamW-style), not an l2 penalty"
    if group["weight_decay"] not in (0, decay):
        return (
            f"their param group of {name} already has `weight_decay={group['weight_decay']}`, "
            f"and l2 sets `weight_decay={decay}` (2 * l2)"
        )
    return None


def _fold_into_weight_decay(
    optimizers: Sequence[torch.optim.Optimizer], weights: Sequence[Tensor], weight_decay: float
) -> None:
    """Set ``weight_decay`` of every param group that holds the selected weights, after checks."""
    selected = {id(w) for w in weights}
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            if not any(id(p) in selected for p in group["params"]):
                continue
            problem = _fold_problem(optimizer, group, selected, weight_decay)
            if problem is not None:
                raise ValueError(
                    f"`as_weight_decay=True` cannot fold l2 into `weight_decay`: {problem}. Use "
                    "`as_weight_decay=False` (l2 is then added to the gradient), or build the "
                    "optimizer from `self.penalty_param_groups()` with a coupled optimizer (SGD, "
                    "Adam, RMSprop, Adagrad, ...)."
                )
            group["weight_decay"] = weight_decay


def _grad_scaler(trainer: pl.Trainer) -> torch.amp.GradScaler | None:
    """The precision plugin's GradScaler: with one, Lightning unscales the gradients and runs
    ``on_before_optimizer_step`` before it calls ``optimizer.step`` (via ``scaler.step``)."""
    return getattr(trainer.precision_plugin, "scaler", None)


def _double_count(grad: Tensor) -> Tensor:
    raise RuntimeError(
        "`self.penalty()` reached a backward pass during `fit`, but WeightPenaltyMixin already "
        "adds the penalty's gradient at every optimizer step, so it would count twice. Remove "
        "`+ self.penalty()` from your loss (to log the value, log `self.penalty().detach()`)."
    )


if TYPE_CHECKING:
    _MixinBase = pl.LightningModule
else:
    _MixinBase = object


class WeightPenaltyMixin(_MixinBase):
    """Adds an l1/l2 weight penalty to the update of every optimizer step.

    Mix it in before ``LightningModule``; configure it with :meth:`configure_penalty` (or set
    ``self.l1`` / ``self.l2``) in ``__init__``. The penalty is

    ``penalty = l1 * sum(|w|) + l2 * sum(w ** 2)``

    over the selected weights (by default the kernels of Linear, Bilinear, Conv, ConvTranspose,
    Embedding, EmbeddingBag, RNN/LSTM/GRU and MultiheadAttention layers, see
    :func:`~lightning_reg.penalties.select_weights`; never biases or normalization parameters,
    as Keras regularizes kernels). Your ``training_step`` returns the data loss only; once per
    real optimizer step the penalty's gradient ``l1 * sign(w) + 2 * l2 * w`` is added in place
    to ``.grad`` of the selected weights that are in the param groups of the optimizer being
    stepped and require grad. The update is the one you would get by adding the penalty to the
    loss; frozen weights, weights added later (``BackboneFinetuning``) and several optimizers
    are right by construction, since the set is read from the optimizer at each step.

    * Automatic optimization: the gradient is added at the end of :meth:`backward` on the last
      micro-batch of each accumulation window, times ``micro-batches in the window /
      accumulate_grad_batches`` (Lightning divides each micro-batch loss by
      ``accumulate_grad_batches``, also in a short last window) and times the ``GradScaler``'s
      scale under 16-bit AMP (a tensor product, no host sync). So ``on_after_backward`` of that
      micro-batch, callbacks' ``on_before_optimizer_step``, gradient clipping, AMP's inf check
      and the DDP/FSDP2 gradients all see data gradient plus penalty gradient, as with the loss.
      Earlier micro-batches of a window see the data gradient only in ``on_after_backward``:
      the penalty is added once per optimizer step, so under ``accumulate_grad_batches=k`` it
      costs what it costs at 1, not ``k`` times.
    * Manual optimization: the gradient is added once per ``opt.step()`` for the weights that
      optimizer steps, at the earliest of (1) ``self.clip_gradients(opt, ...)`` (it adds, then
      clips: clipping sees data plus penalty gradient, as with the loss), (2) the optimizer's
      step pre-hook, which runs after your ``manual_backward`` and before every
      ``on_before_optimizer_step``, so callbacks see it, or (3) with a 16-bit ``GradScaler``,
      this module's ``on_before_optimizer_step``, after unscaling: Lightning calls the step
      only after that hook (and not for a skipped step), so callbacks'
      ``on_before_optimizer_step``, which run before the module's, see the data gradient there
      (a warning at fit start names them; clip with ``self.clip_gradients`` or use bf16/32-bit
      to have them see it). ``on_after_backward`` sees the data gradient: which optimizer steps
      next is not known at ``backward``. Do not add the penalty to your loss; call
      ``manual_backward`` before ``opt.step()``: a ``manual_backward`` inside a step closure
      (``opt.step(closure)``) raises a ``RuntimeError`` without a ``GradScaler`` (the penalty is
      added when the step starts, before the closure).
    * ``return loss + self.penalty()`` would count the penalty twice: a ``RuntimeError`` is
      raised when that value reaches a backward pass during ``fit``.
    * With the default selection, trainable parameters of two or more dims that belong to no
      layer of a default type (your own layer's weight, a positional embedding) are named in a
      warning at fit start; they are not penalized unless you select them.
    * Logged as ``train/penalty`` (and ``train/zero_fraction`` with ``proximal_l1``) on the
      steps where Lightning writes logs (every ``log_every_n_steps``); the value is computed
      only then. At the end of every training epoch the value of the weights the epoch ends
      with is logged as ``train/penalty_epoch`` (and ``train/zero_fraction_epoch``), once per
      epoch, so runs shorter than ``log_every_n_steps`` log it too.
    * ``as_weight_decay=True``: the l2 part is applied as the optimizer's coupled
      ``weight_decay = 2 * l2`` on the param groups holding the penalized weights. With a
      coupled optimizer (SGD, Adam, RMSprop, Adagrad, NAdam, ...) that is the same gradient;
      unlike the default it is not seen by gradient clipping. Decoupled decay (AdamW) is
      refused. The penalized weights must sit in param groups of their own: build the
      optimizer from :meth:`penalty_param_groups`, or a ``ValueError`` names the problem. A
      param group added during fit (``BackboneFinetuning``) takes the decay if it can; if not,
      a warning says why and its weights' l2 is added to their gradient instead.
    * ``proximal_l1=True``: instead of the subgradient ``l1 * sign(w)``, each real optimizer
      step is followed by the soft-threshold ``w <- sign(w) * max(|w| - lr * l1, 0)`` with the
      ``lr`` of the weight's param group, which leaves weights at exactly zero (a sparse model);
      skipped AMP steps are not followed by it.
    * Refused by name: ``strategy="fsdp"`` (FSDP1: flattened shards), DeepSpeed (it runs its
      own backward and accumulation), ``LBFGS`` (it re-evaluates the loss, which does not
      contain the penalty) and ``SparseAdam`` on penalized weights (the penalty's gradient is
      dense; a sparse embedding's gradient under another optimizer is made dense with it).
      If you override ``backward``, ``setup``, ``on_fit_start``, ``on_fit_end``,
      ``on_before_optimizer_step``, ``on_train_batch_end``, ``on_train_epoch_end`` or
      ``clip_gradients``, call ``super()``.

    Examples:
        >>> import torch.nn.functional as F
        >>> from lightning.pytorch import LightningModule
        >>> class Net(WeightPenaltyMixin, LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        ...         self.configure_penalty(l1=1e-5, l2=1e-4)
        ...
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         return F.cross_entropy(self.net(x), y)  # the penalty is applied for you
        ...
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        >>> [tuple(w.shape) for w in Net().penalized_weights()]
        [(32, 64), (10, 32)]
    """

    _penalty_l1: float = 0.0
    _penalty_l2: float = 0.0
    _penalty_modules: tuple[type[nn.Module], ...] = DEFAULT_PENALIZED_MODULES
    _penalty_predicate: Callable[[str, nn.Parameter], bool] | None = None
    _penalty_names: tuple[str, ...] | None = None
    _penalty_as_weight_decay: bool = False
    _penalty_proximal: bool = False
    _penalty_fit_ready: bool = False
    _penalty_candidates: list[nn.Parameter] | None = None
    _penalty_groups: dict[int, _Groups] | None = None
    _penalty_hooks: list[RemovableHandle] | None = None
    _penalty_logged: Tensor | None = None
    # Manual optimization: ids of the optimizers whose coming step already has the penalty's
    # gradient, and of those inside their step (pre-hook run, step not yet over).
    _penalty_added: set[int] | None = None
    _penalty_stepping: set[int] | None = None
    # Whether a penalized weight may get a sparse gradient (nn.Embedding(sparse=True)), per fit.
    _penalty_sparse: bool = True

    @property
    def l1(self) -> float:
        """Factor of the l1 term, a finite number >= 0 (validated on assignment).

        Set during fit (from a callback), a new value applies from the next optimizer step; a
        change the fit's start fixed raises a ``RuntimeError`` instead of being ignored: ``l2``
        with ``as_weight_decay=True``, ``l1`` from 0 with ``proximal_l1=True``, or a factor of
        a penalty that was off when the fit started.

        A submodule or parameter registered as ``self.l1`` (``self.l1 = nn.Linear(...)`` is a
        common layer name) is returned instead, so models naming layers ``l1``/``l2`` keep working;
        set the factor with :meth:`configure_penalty` then.
        """
        return cast(float, self._registered("l1", self._penalty_l1))

    @l1.setter
    def l1(self, value: float) -> None:
        value = check_non_negative("l1", value)
        self._check_change_during_fit("l1", self._penalty_l1, value)
        self._penalty_l1 = value

    @property
    def l2(self) -> float:
        """Factor of the l2 term, a finite number >= 0 (validated on assignment); a submodule or
        parameter registered as ``self.l2`` is returned instead (see :attr:`l1`)."""
        return cast(float, self._registered("l2", self._penalty_l2))

    @l2.setter
    def l2(self, value: float) -> None:
        value = check_non_negative("l2", value)
        self._check_change_during_fit("l2", self._penalty_l2, value)
        self._penalty_l2 = value

    def _fitting(self) -> bool:
        """A fit of this module is running (not over, not interrupted)."""
        trainer = cast(pl.LightningModule, self)._trainer
        if trainer is None or not self._penalty_fit_ready:
            return False
        state = trainer.state
        return state.fn == TrainerFn.FITTING and state.status == TrainerStatus.RUNNING

    def _check_change_during_fit(self, name: str, old: float, new: float) -> None:
        """During fit a new factor applies from the next optimizer step, except where fit start
        fixed how it is applied: refuse those changes rather than ignore them."""
        if not self._fitting() or new == old:
            return
        if self._penalty_hooks is None:  # prepared with l1 = l2 = 0: nothing is hooked
            why = "the penalty was off (l1 = l2 = 0) when this fit started"
        elif name == "l2" and self._penalty_as_weight_decay:
            why = "with `as_weight_decay=True` l2 was folded into the optimizer's weight_decay"
        elif name == "l1" and self._penalty_proximal and old == 0:
            why = "with `proximal_l1=True` the soft-threshold step is hooked only if l1 > 0"
        else:
            return
        raise RuntimeError(
            f"`{name}` cannot change from {old:g} to {new:g} during fit: {why} at fit start. "
            f"Set it before `fit` (e.g. in `__init__`), or start the fit with a non-zero `{name}` "
            "on the default route, where a new value applies from the next optimizer step."
        )

    def _registered(self, name: str, factor: float) -> Any:
        for registry in ("_modules", "_parameters"):
            found = self.__dict__.get(registry, {}).get(name)
            if found is not None:
                return found
        return factor

    def configure_penalty(
        self,
        l1: float = 0.0,
        l2: float = 0.0,
        modules: tuple[type[nn.Module], ...] = DEFAULT_PENALIZED_MODULES,
        predicate: Callable[[str, nn.Parameter], bool] | None = None,
        names: Iterable[str] | None = None,
        as_weight_decay: bool = False,
        proximal_l1: bool = False,
    ) -> None:
        """Set the penalty factors and which weights they apply to.

        Args:
            l1: factor of ``sum(|w|)``, a finite number >= 0. Default ``0.0``.
            l2: factor of ``sum(w ** 2)``, a finite number >= 0. Default ``0.0``.
            modules: layer types whose kernels are penalized. Default
                :data:`~lightning_reg.penalties.DEFAULT_PENALIZED_MODULES`.
            predicate: ``predicate(name, parameter) -> bool`` selects instead of ``modules``.
                Default ``None``.
            names: exact parameter names selected instead of ``modules``. Default ``None``.
            as_weight_decay: apply l2 as the optimizer's coupled ``weight_decay = 2 * l2``
                (see the class docstring). Default ``False``.
            proximal_l1: apply l1 as a soft-threshold after each optimizer step (exact zeros)
                instead of the subgradient ``l1 * sign(w)`` (Keras' l1). Default ``False``.

        Raises:
            TypeError: if a factor is not a real number, ``modules`` is not a non-empty tuple of
                module types, ``predicate`` is not callable, ``names`` is a string, or a flag is
                not a bool.
            ValueError: if a factor is negative or not finite, or both ``predicate`` and
                ``names`` are given.

        Examples:
            >>> from lightning.pytorch import LightningModule
            >>> class Net(WeightPenaltyMixin, LightningModule):
            ...     def __init__(self):
            ...         super().__init__()
            ...         self.fc = nn.Linear(4, 2)
            ...         self.configure_penalty(l1=1e-3, proximal_l1=True, modules=(nn.Linear,))
            >>> Net().l1
            0.001
        """
        if self._fitting():
            raise RuntimeError(
                "`configure_penalty` cannot be called during fit: the selection and the route "
                "are fixed when the fit starts. To change a factor, set `self.l1` or `self.l2` "
                "(on the default route it applies from the next optimizer step)."
            )
        self._penalty_l1 = check_non_negative("l1", l1)
        self._penalty_l2 = check_non_negative("l2", l2)
        _check_module_types("modules", modules)
        if predicate is not None and not callable(predicate):
            raise TypeError(f"`predicate` must be callable or None, got {predicate!r}.")
        if isinstance(names, str):
            raise TypeError(f"`names` must be an iterable of parameter names, got {names!r}.")
        if predicate is not None and names is not None:
            raise ValueError("Pass at most one of `predicate` and `names`, got both.")
        for flag, value in (("as_weight_decay", as_weight_decay), ("proximal_l1", proximal_l1)):
            if not isinstance(value, bool):
                raise TypeError(f"`{flag}` must be a bool, got {value!r}.")
        self._penalty_modules = modules
        self._penalty_predicate = predicate
        self._penalty_names = tuple(names) if names is not None else None
        self._penalty_as_weight_decay = as_weight_decay
        self._penalty_proximal = proximal_l1
        self._penalty_candidates = None

    # ------------------------------------------------------------------------ selection

    def _candidates(self) -> list[nn.Parameter]:
        """Every selected weight, frozen ones included (filtered by ``requires_grad`` at use)."""
        if self._penalty_candidates is None:
            self._penalty_candidates = _select_weights(
                cast(nn.Module, self),
                self._penalty_modules,
                self._penalty_predicate,
                self._penalty_names,
                trainable_only=False,
            )
        return self._penalty_candidates

    def penalized_weights(self) -> list[nn.Parameter]:
        """The selected weights that require grad now (the selection is made once per fit).

        Examples:
            >>> from lightning.pytorch import LightningModule
            >>> class Net(WeightPenaltyMixin, LightningModule):
            ...     def __init__(self):
            ...         super().__init__()
            ...         self.body, self.head = nn.Linear(4, 4), nn.Linear(4, 2)
            >>> net = Net()
            >>> _ = net.body.requires_grad_(False)
            >>> [tuple(w.shape) for w in net.penalized_weights()]
            [(2, 4)]
        """
        return [w for w in self._candidates() if w.requires_grad]

    def _groups_of(self, optimizer: torch.optim.Optimizer) -> list[_Group]:
        """The optimizer's param groups with their selected weights, cached per group sizes."""
        groups = self._penalty_groups
        if groups is None:
            groups = self._penalty_groups = {}
        sizes = tuple(len(g["params"]) for g in optimizer.param_groups)
        cached = groups.get(id(optimizer))
        if cached is None or cached[0] != sizes:
            chosen = {id(w) for w in self._candidates()}
            found: list[_Group] = []
            for group in optimizer.param_groups:
                weights = [p for p in group["params"] if id(p) in chosen]
                if weights:
                    found.append((group, weights, self._l2_by_gradient(optimizer, group, chosen)))
            cached = groups[id(optimizer)] = (sizes, found)
        return cached[1]

    def _l2_by_gradient(
        self, optimizer: torch.optim.Optimizer, group: dict[str, Any], chosen: set[int]
    ) -> bool:
        """With ``as_weight_decay=True``: fold l2 into a param group that holds penalized weights
        but not the decay (one added during fit: ``BackboneFinetuning`` adds one when it
        unfreezes); where it cannot be folded, say so and return ``True``: their l2 is then
        added to the gradient."""
        if not (self._penalty_as_weight_decay and self._penalty_l2 > 0):
            return False
        decay = 2.0 * self._penalty_l2
        if group.get("weight_decay") == decay:
            return False
        problem = _fold_problem(optimizer, group, chosen, decay)
        if problem is None:
            group["weight_decay"] = decay
            return False
        rank_zero_warn(
            f"`as_weight_decay=True`: a param group of {type(optimizer).__name__} added during "
            f"fit (BackboneFinetuning adds one when it unfreezes) holds penalized weights, but "
            f"l2 cannot be folded into its `weight_decay`: {problem}. Their l2 is added to their "
            "gradient instead: the same update, which gradient clipping sees.",
            category=UserWarning,
        )
        return True

    # ------------------------------------------------------------------------ values

    def penalty(self) -> Tensor:
        """The penalty ``l1 * sum|w| + l2 * sum w**2`` over :meth:`penalized_weights` (a
        differentiable 0-dim tensor, no host sync), for logging or a loss built outside ``fit``.

        During ``fit`` the penalty's gradient is already applied at each optimizer step: adding
        this value to the training loss raises a ``RuntimeError`` at its backward pass.

        Examples:
            >>> from lightning.pytorch import LightningModule
            >>> class Net(WeightPenaltyMixin, LightningModule):
            ...     def __init__(self):
            ...         super().__init__()
            ...         self.fc = nn.Linear(2, 1, bias=False)
            ...         self.configure_penalty(l2=0.5)
            >>> net = Net()
            >>> _ = net.fc.weight.data.copy_(torch.tensor([[1.0, -2.0]]))
            >>> net.penalty()
            tensor(2.5000, grad_fn=<MulBackward0>)
        """
        value = weight_penalty(self.penalized_weights(), l1=self._penalty_l1, l2=self._penalty_l2)
        trainer = cast(pl.LightningModule, self)._trainer
        training = self._penalty_fit_ready and trainer is not None and trainer.training
        if training and value.requires_grad:
            value.register_hook(_double_count)
        return value

    def penalty_param_groups(self) -> list[dict[str, Any]]:
        """Optimizer param groups: the penalized weights, then every other parameter with
        ``weight_decay=0``. Needed for ``as_weight_decay=True``; keeps biases and normalization
        parameters undecayed whatever ``weight_decay`` the optimizer gets.

        Examples:
            >>> from lightning.pytorch import LightningModule
            >>> class Net(WeightPenaltyMixin, LightningModule):
            ...     def __init__(self):
            ...         super().__init__()
            ...         self.fc = nn.Linear(4, 2)
            >>> [len(g["params"]) for g in Net().penalty_param_groups()]
            [1, 1]
        """
        module = cast(nn.Module, self)
        weights = select_weights(
            module, self._penalty_modules, self._penalty_predicate, self._penalty_names
        )
        chosen = {id(w) for w in weights}
        others = [p for p in module.parameters() if id(p) not in chosen]
        groups: list[dict[str, Any]] = [{"params": weights}]
        if others:
            groups.append({"params": others, "weight_decay": 0.0})
        return groups

    # ------------------------------------------------------------------------ fit lifecycle

    @property
    def _penalty_grad_factors(self) -> tuple[float, float]:
        """(l1, l2) added as a gradient: l1 unless proximal, l2 unless folded into decay."""
        l1 = 0.0 if self._penalty_proximal else self._penalty_l1
        l2 = 0.0 if self._penalty_as_weight_decay else self._penalty_l2
        return l1, l2

    @override
    def setup(self, stage: str) -> None:
        """Refuse the strategies the penalty cannot run under (call ``super().setup(stage)``)."""
        super().setup(stage)
        if stage != "fit" or not self._penalty_on():
            return
        strategy = cast(pl.LightningModule, self).trainer.strategy
        if isinstance(strategy, FSDPStrategy):
            raise MisconfigurationException(
                "The weight penalty cannot run under `strategy='fsdp'` (FSDP1): outside the "
                "forward pass each rank holds a slice of flattened parameters, so the penalty "
                "would miss most weights. Use FSDP2 (`ModelParallelStrategy` with `fully_shard` "
                "in `configure_model`), where it is computed on the sharded weights, or DDP."
            )
        if isinstance(strategy, DeepSpeedStrategy):
            raise MisconfigurationException(
                "The weight penalty cannot run under DeepSpeedStrategy: DeepSpeed runs its own "
                "backward and gradient accumulation, bypassing `LightningModule.backward` where "
                "the penalty's gradient is added. Use DDP or FSDP2, or set l1=l2=0 and add "
                "`weight_penalty(...)` from lightning_reg.penalties to your loss yourself."
            )
        self._warn_callbacks_see_data_gradient()

    def _warn_callbacks_see_data_gradient(self) -> None:
        """Manual optimization with a GradScaler: callbacks' ``on_before_optimizer_step`` run
        before the penalty's gradient is added (see the class docstring); say so once per fit."""
        module = cast(pl.LightningModule, self)
        trainer = module.trainer
        if module.automatic_optimization or _grad_scaler(trainer) is None:
            return
        names = sorted(
            {
                type(callback).__name__
                for callback in trainer.callbacks  # type: ignore[attr-defined]
                if is_overridden("on_before_optimizer_step", callback, pl.Callback)
            }
        )
        if names:
            rank_zero_warn(
                f"Manual optimization with a GradScaler: the weight penalty's gradient is added "
                f"after the scaler unscales the gradients, in the module's "
                f"`on_before_optimizer_step`, which Lightning runs after the callbacks' hooks. So "
                f"`on_before_optimizer_step` of {', '.join(names)} sees the data gradient without "
                f"the penalty's (the update includes it). To have them see it, call "
                f"`self.clip_gradients(opt, ...)` between `self.manual_backward(loss)` and "
                f"`opt.step()` (it adds the penalty's gradient first), or train with "
                f"`precision='bf16-mixed'` or 32-bit.",
                category=UserWarning,
            )

    @override
    def on_fit_start(self) -> None:
        """Select the weights for this fit, fold l2 into weight decay or hook the proximal step.

        Call ``super().on_fit_start()`` when you override this hook.
        """
        super().on_fit_start()
        self._prepare_penalty()

    @override
    def on_fit_end(self) -> None:
        super().on_fit_end()
        self._release_penalty()

    def _release_penalty(self) -> None:
        for handle in self._penalty_hooks or ():
            handle.remove()
        self._penalty_hooks = None
        self._penalty_fit_ready = False

    def _prepare_penalty(self) -> None:
        self._release_penalty()
        self._penalty_candidates = None
        self._penalty_groups = None
        self._penalty_logged = None
        self._penalty_added = set()
        self._penalty_stepping = set()
        self._penalty_fit_ready = True
        if not self._penalty_on():
            return
        module = cast(pl.LightningModule, self)
        trainer = module.trainer
        chosen = {id(w) for w in self._candidates()}
        for optimizer in trainer.optimizers:
            held = (p for group in optimizer.param_groups for p in group["params"])
            if isinstance(optimizer, torch.optim.SparseAdam) and any(id(p) in chosen for p in held):
                raise MisconfigurationException(
                    "The weight penalty cannot be used on the weights SparseAdam updates: "
                    "SparseAdam takes sparse gradients only, and the penalty's gradient is dense "
                    "(as it is with the penalty in the loss). Leave those layers out of the "
                    "penalty (`modules=`, `predicate=` or `names=`), or give them another "
                    "optimizer."
                )
            if isinstance(optimizer, torch.optim.LBFGS):
                raise MisconfigurationException(
                    "The weight penalty cannot be used with LBFGS: LBFGS re-evaluates the loss "
                    "inside its step, and that loss does not contain the penalty, whose gradient "
                    "is added to `.grad` instead. Set l1=l2=0 and add `weight_penalty(...)` from "
                    "lightning_reg.penalties to the loss `training_step` returns."
                )
        sparse_layers = (nn.Embedding, nn.EmbeddingBag)
        self._penalty_sparse = any(
            isinstance(m, sparse_layers) and m.sparse for m in cast(nn.Module, self).modules()
        )
        if not self._candidates():
            select_weights(cast(nn.Module, self), self._penalty_modules)  # warns, naming the model
        self._warn_outside_layers()
        if self._penalty_as_weight_decay and self._penalty_l2 > 0:
            _fold_into_weight_decay(trainer.optimizers, self._candidates(), 2.0 * self._penalty_l2)
        # Manual optimization: with a GradScaler, Lightning calls `optimizer.step` after
        # `on_before_optimizer_step` (not at all for a skipped step), which adds the penalty then.
        manual = not module.automatic_optimization
        pre_hook = manual and _grad_scaler(trainer) is None
        hooks = []
        for opt in trainer.optimizers:
            if self._penalty_proximal and self._penalty_l1 > 0:
                hooks.append(opt.register_step_post_hook(self._proximal_step))
            if pre_hook:
                hooks.append(opt.register_step_pre_hook(self._pre_step))
            if manual:
                hooks.append(opt.register_step_post_hook(self._step_over))
        self._penalty_hooks = hooks

    def _warn_outside_layers(self) -> None:
        """Name the trainable weights the default selection leaves out (once per fit); a
        selection the user chose (``modules``, ``predicate`` or ``names``) is taken as meant."""
        chosen = self._penalty_predicate is not None or self._penalty_names is not None
        if chosen or self._penalty_modules != DEFAULT_PENALIZED_MODULES:
            return
        outside = _outside_layers(cast(nn.Module, self), self._penalty_modules)
        if outside:
            rank_zero_warn(
                f"The weight penalty does not apply to these trainable parameters of "
                f"{type(self).__name__}: {', '.join(outside)}. They have two or more dims but "
                "belong to no layer of a type in DEFAULT_PENALIZED_MODULES, the default "
                "selection. To penalize them, pass `modules=` with their layer types added, or "
                "choose the parameters with `predicate=` or `names=`; with `modules` other than "
                "the default, or a `predicate` or `names`, this check is off.",
                category=UserWarning,
            )

    def _proximal_step(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        """Soft-threshold the weights this step updated, with their group's learning rate."""
        for group, ws, _by_gradient in self._groups_of(optimizer):
            live = [w for w in ws if w.requires_grad]
            if live:
                soft_threshold_(live, group["lr"] * self._penalty_l1)

    # ------------------------------------------------------------------------ per step

    def _add_penalty(self, optimizer: torch.optim.Optimizer, scale: float | Tensor) -> None:
        # The selected weights this optimizer's step updates (in its groups, requiring grad).
        groups = self._groups_of(optimizer)
        weights: list[Tensor] = [w for _, ws, _ in groups for w in ws if w.requires_grad]
        l1, l2 = self._penalty_grad_factors
        if weights and (l1 != 0.0 or l2 != 0.0):
            _add_penalty_grad(weights, l1, l2, scale, True, self._penalty_sparse)
        if self._penalty_as_weight_decay:  # groups added during fit that took no decay
            unfolded: list[Tensor] = [
                w for _, ws, by_gradient in groups if by_gradient for w in ws if w.requires_grad
            ]
            if unfolded:
                sparse, full_l2 = self._penalty_sparse, self._penalty_l2
                _add_penalty_grad(unfolded, 0.0, full_l2, scale, True, sparse)
        module = cast(pl.LightningModule, self)
        trainer = module.trainer
        every = trainer.log_every_n_steps  # type: ignore[attr-defined]
        # Lightning logs on every n-th batch that stepped; under manual optimization that batch's
        # optimizers' penalties add up to the logged value.
        batches = batches_that_stepped(trainer, module)
        if every and (batches + 1) % every == 0:  # the value only when it is logged
            with torch.no_grad():
                value = weight_penalty(weights, l1=self._penalty_l1, l2=self._penalty_l2)
            logged = self._penalty_logged
            self._penalty_logged = value if logged is None else logged + value

    def _add_penalty_once(self, optimizer: torch.optim.Optimizer, scale: float | Tensor) -> None:
        """Manual optimization: add the penalty's gradient for ``optimizer``'s coming step,
        unless it was already added for that step."""
        added = cast(set[int], self._penalty_added)
        if id(optimizer) not in added:
            added.add(id(optimizer))
            self._add_penalty(optimizer, scale)

    def _pre_step(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        """Step pre-hook (manual optimization, no GradScaler): runs after ``manual_backward``
        and before every ``on_before_optimizer_step`` hook."""
        cast(set[int], self._penalty_stepping).add(id(optimizer))
        self._add_penalty_once(optimizer, 1.0)

    def _step_over(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        """The step of ``optimizer`` is over (or skipped): its next step gets the penalty anew."""
        cast(set[int], self._penalty_added).discard(id(optimizer))
        cast(set[int], self._penalty_stepping).discard(id(optimizer))

    def _penalty_on(self) -> bool:
        """A penalty is configured: ``l1`` or ``l2`` is not zero."""
        return self._penalty_l1 != 0 or self._penalty_l2 != 0

    def _penalty_prepared(self) -> bool:
        """A penalty is configured, and prepared for this fit."""
        if not self._penalty_on():
            return False
        if not self._penalty_fit_ready:
            self._prepare_penalty()  # on_fit_start was overridden without calling super()
        return True

    def _manual_penalty(self) -> bool:
        """Manual optimization with a penalty, prepared for this fit."""
        return (
            not cast(pl.LightningModule, self).automatic_optimization and self._penalty_prepared()
        )

    @override
    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """``loss.backward()``, then, on the micro-batch that ends an accumulation window, the
        penalty's gradient (automatic optimization; see the class docstring). Under manual
        optimization a backward inside ``opt.step(closure)`` raises a ``RuntimeError``."""
        if self._manual_penalty() and self._penalty_stepping:
            raise RuntimeError(
                "`manual_backward` ran inside `optimizer.step(closure)`, but WeightPenaltyMixin "
                "adds the weight penalty's gradient when the step starts, before the closure, "
                "which may zero it or add to it. Call `self.manual_backward(loss)` before "
                "`opt.step()` and call `opt.step()` without a closure."
            )
        super().backward(loss, *args, **kwargs)
        module = cast(pl.LightningModule, self)
        if not module.automatic_optimization or not self._penalty_prepared():
            return
        trainer = module.trainer
        progress = trainer.fit_loop.epoch_loop.batch_progress
        ready, accumulate = progress.current.ready, trainer.accumulate_grad_batches
        window = (ready - 1) % accumulate + 1
        last = progress.is_last_batch or ready == trainer.num_training_batches
        if window != accumulate and not last:
            return  # Lightning does not step after this micro-batch
        self._add_penalty(trainer.optimizers[0], self._grad_scale(window / accumulate))

    def _grad_scale(self, scale: float) -> float | Tensor:
        """``scale``, times the GradScaler's scale while gradients are scaled (no host sync)."""
        module = cast(pl.LightningModule, self)
        scaler = _grad_scaler(module.trainer)
        if scaler is None or not scaler.is_enabled():
            return scale
        return scaler.scale(torch.tensor(scale, device=module.device))

    @override
    def clip_gradients(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Manual optimization: add the penalty's gradient for ``optimizer``'s coming step
        (once), then clip, so clipping sees data plus penalty gradient as with the loss.

        Call it between ``self.manual_backward(loss)`` and ``opt.step()``, Lightning's manual
        clipping pattern. Under automatic optimization the penalty is already in the gradient.
        """
        if self._manual_penalty():
            if isinstance(optimizer, LightningOptimizer):
                optimizer = optimizer.optimizer
            self._add_penalty_once(optimizer, self._grad_scale(1.0))  # before `opt.step` unscales
        super().clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Manual optimization with a GradScaler: add the penalty's gradient for the weights
        ``optimizer`` steps (after unscaling), unless already added; the step is then over for
        the penalty (a skipped step included)."""
        super().on_before_optimizer_step(optimizer)
        if self._manual_penalty():
            # A fused optimizer (``fused=True``) unscales inside its step, so Lightning leaves
            # its gradients scaled here.
            fused = any(group.get("fused") for group in optimizer.param_groups)
            self._add_penalty_once(optimizer, self._grad_scale(1.0) if fused else 1.0)
            self._step_over(optimizer)

    @override
    def on_train_epoch_end(self) -> None:
        """Log the penalty of the weights the epoch ends with as ``train/penalty_epoch`` (and
        ``train/zero_fraction_epoch`` with ``proximal_l1``), computed once per epoch."""
        super().on_train_epoch_end()
        if not self._penalty_on():
            return
        module = cast(pl.LightningModule, self)
        weights = self.penalized_weights()
        with torch.no_grad():
            value = weight_penalty(weights, l1=self._penalty_l1, l2=self._penalty_l2)
        # The same value on every rank: sync_dist (one scalar per epoch) only keeps Lightning's
        # epoch-level reduction explicit and quiet.
        module.log("train/penalty_epoch", value, on_step=False, on_epoch=True, sync_dist=True)
        if self._penalty_proximal and self._penalty_l1 > 0:
            sparsity = zero_fraction(weights)
            module.log(
                "train/zero_fraction_epoch", sparsity, on_step=False, on_epoch=True, sync_dist=True
            )

    @override
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        if self._penalty_added:  # manual: clipped but not stepped (a skipped step), start anew
            self._penalty_added.clear()
        value = self._penalty_logged
        if value is None:
            return
        self._penalty_logged = None
        module = cast(pl.LightningModule, self)
        module.log("train/penalty", value, on_step=True, on_epoch=False)
        if self._penalty_proximal and self._penalty_l1 > 0:
            sparsity = zero_fraction(self.penalized_weights())
            module.log("train/zero_fraction", sparsity, on_step=True, on_epoch=False)


class RegularizedModule(MCDropoutMixin, WeightPenaltyMixin, pl.LightningModule):
    """A LightningModule base with shared regularization defaults for the layers it builds.

    Subclass it, call ``super().__init__(...)`` with the defaults, and build layers with
    :meth:`dense` (Linear -> activation -> dropout, initialized for the activation: the
    textbook's ``partial(Dense, activation=..., kernel_initializer=...)`` idiom). Layers you
    build yourself get the preset from :meth:`apply_init`.

    * Init ``"auto"``: LeCun normal (``std = 1/sqrt(fan_in)``) for SELU, the init under which
      SELU networks self-normalize; He normal (``std = gain/sqrt(fan_in)``, gain ``sqrt(2)`` for
      ReLU/ELU/GELU/SiLU, the activation's own gain otherwise) for the rest, which keeps the
      activation variance constant through ReLU-like layers. Biases start at zero.
    * SELU gets ``nn.AlphaDropout``, which keeps the mean and variance SELU relies on; the other
      activations get ``nn.Dropout``.
    * ``l1``/``l2`` configure :class:`WeightPenaltyMixin`; ``max_norm`` adds a
      :class:`~lightning_reg.callbacks.max_norm.MaxNorm` callback through
      :meth:`configure_callbacks`; ``mc_samples`` makes ``Trainer.predict`` return Monte Carlo
      dropout summaries (:class:`~lightning_reg.uncertainty.MCDropoutMixin`: set the class
      attribute ``mc_task = "classification"`` or ``"regression"`` to say what they summarize).
      Without ``mc_samples``, ``Trainer.predict`` returns the model's raw output.
    * ``save_hyperparameters()`` is called here, and it records the arguments of every subclass
      ``__init__`` on the way (Lightning walks the ``super().__init__`` call frames), so
      ``load_from_checkpoint`` rebuilds subclasses too. Call ``super().__init__`` with the
      zero-argument ``super()``.

    Args:
        dropout: dropout rate of :meth:`dense` blocks, in ``[0, 1)``. Default ``0.0``.
        activation: activation of :meth:`dense` blocks, a key of
            :data:`~lightning_reg.layers.ACTIVATIONS` (``"relu"``, ``"leaky_relu"``, ``"elu"``,
            ``"selu"``, ``"gelu"``, ``"silu"``, ``"mish"``, ``"softplus"``, ``"tanh"``,
            ``"sigmoid"``, ``"identity"``). Default ``"elu"``.
        init: init preset, one of :data:`~lightning_reg.layers.INIT_PRESETS` (``"auto"``,
            ``"he_normal"``, ``"he_uniform"``, ``"lecun_normal"``, ``"lecun_uniform"``,
            ``"glorot_normal"``, ``"glorot_uniform"``, ``"default"``). Default ``"auto"``.
        l1: l1 penalty factor, finite and >= 0. Default ``0.0``.
        l2: l2 penalty factor, finite and >= 0. Default ``0.0``.
        max_norm: max-norm bound of each unit's incoming weights (a finite number > 0), or
            ``None`` for no constraint. Default ``None``.
        as_weight_decay: apply l2 as coupled weight decay (see :class:`WeightPenaltyMixin`).
            Default ``False``.
        proximal_l1: apply l1 as a soft-threshold after each optimizer step, which leaves
            weights at exactly zero (see :class:`WeightPenaltyMixin`). Default ``False``.
        mc_samples: Monte Carlo dropout samples per prediction in ``Trainer.predict`` (an
            integer >= 1), or ``None`` for deterministic predictions (the raw output of
            ``forward``). Default ``None``. With ``mc_samples`` set, the subclass must have
            the class attribute ``mc_task`` (``"classification"`` or ``"regression"``),
            checked here at construction.
        **kwargs: passed on to the next class in the MRO.

    Raises:
        TypeError: if an argument has the wrong type.
        ValueError: if an argument is out of range or an unknown name; the message lists the
            valid names or range. Also if ``mc_samples`` is set and the class's ``mc_task`` is
            not ``"classification"`` or ``"regression"``.

    Examples:
        >>> class Net(RegularizedModule):
        ...     def __init__(self, width: int = 128, **kwargs):
        ...         super().__init__(**kwargs)
        ...         self.net = nn.Sequential(self.dense(64, width), self.dense(width, width))
        ...         self.head = self.apply_init(nn.Linear(width, 10), activation="identity")
        >>> model = Net(width=64, activation="selu", dropout=0.1, l2=1e-4, max_norm=3.0)
        >>> model.hparams["width"], model.l2
        (64, 0.0001)
    """

    def __init__(
        self,
        dropout: float = 0.0,
        activation: str = "elu",
        init: str = "auto",
        l1: float = 0.0,
        l2: float = 0.0,
        max_norm: float | None = None,
        as_weight_decay: bool = False,
        mc_samples: int | None = None,
        proximal_l1: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dropout_rate = _check_dropout(dropout)
        resolve_init(init, activation)
        self.activation_name = activation
        self.init_name = init
        if max_norm is not None:
            max_norm = check_positive("max_norm", max_norm)
        self.max_norm = max_norm
        self.configure_penalty(
            l1=l1, l2=l2, as_weight_decay=as_weight_decay, proximal_l1=proximal_l1
        )
        if mc_samples is not None:
            check_int("mc_samples", mc_samples, 1)
        _check_mc_task(self.mc_task, mc_samples, type(self).__name__)
        self.mc_samples = mc_samples
        self.save_hyperparameters()

    def dense(
        self,
        in_features: int,
        out_features: int,
        activation: str | None = None,
        dropout: float | None = None,
        init: str | None = None,
    ) -> nn.Sequential:
        """A Linear -> activation -> dropout block with this module's defaults.

        Args:
            in_features: input width, >= 1. Required.
            out_features: output width, >= 1. Required.
            activation: override of the module's activation. Default ``None`` (module default).
            dropout: override of the module's dropout rate. Default ``None`` (module default).
            init: override of the module's init preset. Default ``None`` (module default).

        Raises:
            TypeError: if an argument has the wrong type.
            ValueError: if a width is < 1, the rate is outside ``[0, 1)`` or a name is unknown.

        Examples:
            >>> RegularizedModule(activation="relu", dropout=0.1).dense(64, 128)
            Sequential(
              (0): Linear(in_features=64, out_features=128, bias=True)
              (1): ReLU()
              (2): Dropout(p=0.1, inplace=False)
            )
        """
        return dense_block(
            in_features,
            out_features,
            activation=self.activation_name if activation is None else activation,
            dropout=self.dropout_rate if dropout is None else dropout,
            init=self.init_name if init is None else init,
        )

    def apply_init(self, module: nn.Module, activation: str | None = None) -> nn.Module:
        """Initialize the Linear/Conv weights of ``module`` with this module's preset.

        Args:
            module: layers you built yourself. Required.
            activation: the activation that follows them (``"identity"`` for an output layer).
                Default ``None`` (the module's activation).

        Returns:
            ``module``.

        Raises:
            ValueError: if ``activation`` is unknown.

        Examples:
            >>> head = RegularizedModule().apply_init(nn.Linear(128, 10), activation="identity")
            >>> float(head.bias.detach().abs().max())
            0.0
        """
        act = self.activation_name if activation is None else activation
        return init_weights_(module, self.init_name, act)

    def configure_callbacks(self) -> Sequence[pl.Callback] | pl.Callback:
        """The callbacks of the classes further down the MRO, plus ``MaxNorm(max_norm)`` if set.

        A ``MaxNorm`` the Trainer already holds is kept beside this one (Lightning would
        otherwise drop it), with a warning that both act and the smaller bound holds where they
        overlap; an identical one (same ``state_key``) is used instead of adding this one.

        Example:
            >>> from lightning.pytorch.callbacks import EarlyStopping
            >>> from lightning_reg import RegularizedModule
            >>> class Net(RegularizedModule):
            ...     def configure_callbacks(self):
            ...         return [*super().configure_callbacks(), EarlyStopping("val_loss")]
            >>> max_norm, stopping = Net(max_norm=3.0).configure_callbacks()
            >>> type(max_norm).__name__, type(stopping).__name__
            ('MaxNorm', 'EarlyStopping')
        """
        inherited = super().configure_callbacks()
        callbacks = [inherited] if isinstance(inherited, pl.Callback) else list(inherited)
        if self.max_norm is not None:
            callbacks += _beside_trainer_max_norms(MaxNorm(self.max_norm), self)
        return callbacks
