"""The module side of regularization: the weight-penalty mixin and the LightningModule bases.

* :class:`WeightPenaltyMixin` adds ``l1 * sum|w| + l2 * sum w**2`` to the loss returned by any
  ``training_step`` (or folds the l2 part into a coupled optimizer's ``weight_decay``).
* :class:`RegularizedModule` holds shared layer defaults (dropout, activation, init, max-norm)
  and builds dense blocks with them.
* :class:`RegularizedMLP` is a ready classifier built from those blocks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn

from lightning_reg._validation import check_int, check_non_negative, check_positive
from lightning_reg.callbacks.max_norm import MaxNorm, _beside_trainer_max_norms
from lightning_reg.layers import _check_dropout, dense_block, init_weights_, resolve_init
from lightning_reg.penalties import (
    DEFAULT_PENALIZED_MODULES,
    _check_module_types,
    select_weights,
    weight_penalty,
)
from lightning_reg.uncertainty import MCDropoutMixin

__all__ = ["RegularizedModule", "WeightPenaltyMixin"]

_WRAPPED = "_lightning_reg_adds_penalty"


def _with_penalty(step: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a ``training_step`` so the outermost call adds the penalty to what it returns."""

    @functools.wraps(step)
    def training_step(self: WeightPenaltyMixin, *args: Any, **kwargs: Any) -> Any:
        if self._penalty_depth:  # reached through super().training_step: the outer call adds
            return step(self, *args, **kwargs)
        self._penalty_begin_step()
        self._penalty_depth = 1
        try:
            output = step(self, *args, **kwargs)
        finally:
            self._penalty_depth = 0
        return self._penalty_end_step(output)

    setattr(training_step, _WRAPPED, True)
    return training_step


def _fold_into_weight_decay(
    optimizers: Sequence[torch.optim.Optimizer], weights: Sequence[Tensor], weight_decay: float
) -> None:
    """Set ``weight_decay`` of every param group that holds the selected weights, after checks."""
    selected = {id(w) for w in weights}
    for optimizer in optimizers:
        name = type(optimizer).__name__
        for group in optimizer.param_groups:
            hits = [id(p) in selected for p in group["params"]]
            if not any(hits):
                continue
            if not all(hits):
                raise ValueError(
                    f"`as_weight_decay=True` needs the penalized weights in param groups of their "
                    f"own, but a param group of {name} mixes them with other parameters (biases, "
                    "norm layers), which would be decayed too. Build the optimizer from "
                    "`self.penalty_param_groups()`."
                )
            if "weight_decay" not in group:
                raise ValueError(
                    f"`as_weight_decay=True` needs an optimizer with a `weight_decay` option; "
                    f"{name} has none. Use `as_weight_decay=False` to add l2 to the loss."
                )
            if isinstance(optimizer, torch.optim.AdamW) or group.get("decoupled_weight_decay"):
                raise ValueError(
                    f"`as_weight_decay=True` folds l2 into a coupled `weight_decay`, but {name} "
                    "decays weights decoupled from the gradient (AdamW-style), which is not an "
                    "l2 penalty. Use `as_weight_decay=False`, or a coupled optimizer (SGD, Adam, "
                    "RMSprop, Adagrad, ...)."
                )
            if group["weight_decay"] not in (0, weight_decay):
                raise ValueError(
                    f"`as_weight_decay=True` sets `weight_decay={weight_decay}` (2 * l2) on the "
                    f"penalized weights, but their param group of {name} already has "
                    f"`weight_decay={group['weight_decay']}`. Set one of the two, not both."
                )
            group["weight_decay"] = weight_decay


class WeightPenaltyMixin:
    """Adds an l1/l2 weight penalty to the loss of a LightningModule's ``training_step``.

    Mix it in before ``LightningModule``; configure it with :meth:`configure_penalty` (or set
    ``self.l1`` / ``self.l2``) in ``__init__``. The penalty is

    ``penalty = l1 * sum(|w|) + l2 * sum(w ** 2)``

    over the selected weights (by default the ``.weight`` of Linear, Bilinear, Conv,
    ConvTranspose and Embedding layers; never biases or normalization parameters, as Keras
    regularizes kernels). Its gradient is ``l1 * sign(w) + 2 * l2 * w``.

    * The penalty is added to what ``training_step`` returns (a tensor, or a dict's ``"loss"``;
      ``None`` is left alone), also when a subclass defines its own ``training_step``: every
      class in the hierarchy that defines one gets it wrapped once, and only the outermost call
      adds the penalty (a subclass calling ``super().training_step`` does not count it twice).
      It is logged as ``train/penalty`` (on step and on epoch).
    * The selected weights are computed once per fit (in ``on_fit_start``, after the strategy
      has wrapped or sharded the model) and cached, not every step.
    * Manual optimization (``automatic_optimization = False``): Lightning does not use the
      returned loss, so add ``self.penalty()`` to your loss before ``manual_backward``. A
      ``RuntimeError`` is raised at the end of any training step that did not call
      ``self.penalty()`` while the penalty is non-zero, so it is never silently dropped.
    * ``as_weight_decay=True``: the l2 part is applied as the optimizer's coupled
      ``weight_decay = 2 * l2`` on the param groups holding the penalized weights, instead of a
      loss term (l1 stays in the loss). With a coupled optimizer (SGD, Adam, RMSprop, Adagrad,
      NAdam, ...) the optimizer adds ``weight_decay * w`` to the gradient before its update, which
      is exactly the gradient of ``l2 * sum(w ** 2)``: same math, only the rounding differs.
      Three differences remain: the decay is not clipped by gradient clipping, not in the logged
      loss, and skipped on steps the AMP scaler skips just like the update. Decoupled decay
      (AdamW, ``decoupled_weight_decay=True``) is a different method and is refused. The
      penalized weights must sit in param groups of their own (biases and norm parameters in
      other groups with ``weight_decay=0``): the mixin does not split groups behind your back
      (that would desynchronize LR schedulers built on the original groups); build the
      optimizer from :meth:`penalty_param_groups`, or a ``ValueError`` names the problem.

    Example::

        class Net(WeightPenaltyMixin, LightningModule):
            def __init__(self):
                super().__init__()
                self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
                self.configure_penalty(l1=1e-5, l2=1e-4)

            def training_step(self, batch, batch_idx):
                x, y = batch
                return F.cross_entropy(self.net(x), y)  # the penalty is added for you

            def configure_optimizers(self):
                return torch.optim.SGD(self.penalty_param_groups(), lr=0.1)
    """

    _penalty_l1: float = 0.0
    _penalty_l2: float = 0.0
    _penalty_modules: tuple[type[nn.Module], ...] = DEFAULT_PENALIZED_MODULES
    _penalty_predicate: Callable[[str, nn.Parameter], bool] | None = None
    _penalty_names: tuple[str, ...] | None = None
    _penalty_as_weight_decay: bool = False
    _penalty_weights: list[nn.Parameter] | None = None
    _penalty_fit_ready: bool = False
    _penalty_depth: int = 0
    _penalty_called: bool = False
    _penalty_value: Tensor | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        step = cls.__dict__.get("training_step", getattr(cls, "training_step", None))
        if (
            step is None
            or step is pl.LightningModule.training_step
            or getattr(step, _WRAPPED, False)
        ):
            return
        cls.training_step = _with_penalty(step)  # type: ignore[attr-defined]

    @property
    def l1(self) -> float:
        """Factor of the l1 term, a finite number >= 0 (validated on assignment).

        A submodule or parameter registered as ``self.l1`` (``self.l1 = nn.Linear(...)`` is a
        common layer name) is returned instead, so models naming layers ``l1``/``l2`` keep working;
        set the factor with :meth:`configure_penalty` then.
        """
        return cast(float, self._registered("l1", self._penalty_l1))

    @l1.setter
    def l1(self, value: float) -> None:
        self._penalty_l1 = check_non_negative("l1", value)

    @property
    def l2(self) -> float:
        """Factor of the l2 term, a finite number >= 0 (validated on assignment); a submodule or
        parameter registered as ``self.l2`` is returned instead (see :attr:`l1`)."""
        return cast(float, self._registered("l2", self._penalty_l2))

    @l2.setter
    def l2(self, value: float) -> None:
        self._penalty_l2 = check_non_negative("l2", value)

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
    ) -> None:
        """Set the penalty factors and which weights they apply to.

        Args:
            l1: factor of ``sum(|w|)``, a finite number >= 0. Default ``0.0``.
            l2: factor of ``sum(w ** 2)``, a finite number >= 0. Default ``0.0``.
            modules: layer types whose ``.weight`` is penalized. Default
                ``DEFAULT_PENALIZED_MODULES`` (Linear, Bilinear, Conv*, ConvTranspose*, Embedding).
            predicate: ``predicate(name, parameter) -> bool`` selects instead of ``modules``.
                Default ``None``.
            names: exact parameter names selected instead of ``modules``. Default ``None``.
            as_weight_decay: apply l2 as the optimizer's coupled ``weight_decay = 2 * l2``
                instead of a loss term (see the class docstring). Default ``False``.

        Raises:
            TypeError: if a factor is not a real number, ``modules`` is not a non-empty tuple of
                module types, ``predicate`` is not callable, ``names`` is a string, or
                ``as_weight_decay`` is not a bool.
            ValueError: if a factor is negative or not finite, or both ``predicate`` and
                ``names`` are given.

        Example::

            self.configure_penalty(l2=1e-4, modules=(nn.Linear,), as_weight_decay=True)
        """
        self._penalty_l1 = check_non_negative("l1", l1)
        self._penalty_l2 = check_non_negative("l2", l2)
        _check_module_types("modules", modules)
        if predicate is not None and not callable(predicate):
            raise TypeError(f"`predicate` must be callable or None, got {predicate!r}.")
        if isinstance(names, str):
            raise TypeError(f"`names` must be an iterable of parameter names, got {names!r}.")
        if predicate is not None and names is not None:
            raise ValueError("Pass at most one of `predicate` and `names`, got both.")
        if not isinstance(as_weight_decay, bool):
            raise TypeError(f"`as_weight_decay` must be a bool, got {as_weight_decay!r}.")
        self._penalty_modules = modules
        self._penalty_predicate = predicate
        self._penalty_names = tuple(names) if names is not None else None
        self._penalty_as_weight_decay = as_weight_decay
        self._penalty_weights = None

    @property
    def penalty_in_loss(self) -> bool:
        """Whether :meth:`penalty` is non-zero, i.e. something is added to the loss."""
        return self._penalty_l1 > 0 or (self._penalty_l2 > 0 and not self._penalty_as_weight_decay)

    def _select(self) -> list[nn.Parameter]:
        return select_weights(
            cast(nn.Module, self),
            self._penalty_modules,
            self._penalty_predicate,
            self._penalty_names,
        )

    def penalized_weights(self) -> list[nn.Parameter]:
        """The selected weights, computed at first use and cached until the next fit starts.

        Example::

            assert all(w.dim() > 1 for w in model.penalized_weights())
        """
        if self._penalty_weights is None:
            self._penalty_weights = self._select()
        return self._penalty_weights

    def penalty(self) -> Tensor:
        """The loss-side penalty ``l1 * sum|w| + l2 * sum w**2`` (l2 left out when it is folded
        into weight decay): a differentiable 0-dim tensor, computed without a host sync.

        Example::

            loss = F.cross_entropy(logits, y) + self.penalty()  # manual optimization only
        """
        l2 = 0.0 if self._penalty_as_weight_decay else self._penalty_l2
        value = weight_penalty(self.penalized_weights(), l1=self._penalty_l1, l2=l2)
        self._penalty_called = True
        self._penalty_value = value
        return value

    def penalty_param_groups(self) -> list[dict[str, Any]]:
        """Optimizer param groups: the penalized weights, then every other parameter with
        ``weight_decay=0``. Needed for ``as_weight_decay=True``; keeps biases and normalization
        parameters undecayed whatever ``weight_decay`` the optimizer gets.

        Example::

            def configure_optimizers(self):
                return torch.optim.SGD(self.penalty_param_groups(), lr=0.1, momentum=0.9)
        """
        weights = self._select()
        chosen = {id(w) for w in weights}
        others = [p for p in cast(nn.Module, self).parameters() if id(p) not in chosen]
        groups: list[dict[str, Any]] = [{"params": weights}]
        if others:
            groups.append({"params": others, "weight_decay": 0.0})
        return groups

    def on_fit_start(self) -> None:
        """Select the weights for this fit and fold l2 into weight decay if asked.

        Call ``super().on_fit_start()`` when you override this hook.
        """
        super().on_fit_start()  # type: ignore[misc]
        self._prepare_penalty()

    def on_fit_end(self) -> None:
        super().on_fit_end()  # type: ignore[misc]
        self._penalty_fit_ready = False

    def _prepare_penalty(self) -> None:
        self._penalty_weights = None
        self._penalty_fit_ready = True
        if self._penalty_l1 == 0 and self._penalty_l2 == 0:
            return
        if isinstance(cast(pl.LightningModule, self).trainer.strategy, FSDPStrategy):
            raise MisconfigurationException(
                "The weight penalty cannot run under `strategy='fsdp'` (FSDP1): outside the "
                "forward pass each rank holds a slice of flattened parameters, so the penalty "
                "would miss most weights. Use FSDP2 (`ModelParallelStrategy` with `fully_shard` "
                "in `configure_model`), where it is computed on the sharded weights, or DDP."
            )
        weights = self.penalized_weights()
        if self._penalty_as_weight_decay and self._penalty_l2 > 0:
            optimizers = cast(pl.LightningModule, self).trainer.optimizers
            _fold_into_weight_decay(optimizers, weights, 2.0 * self._penalty_l2)

    def _penalty_begin_step(self) -> None:
        if not self._penalty_fit_ready and cast(pl.LightningModule, self)._trainer is not None:
            self._prepare_penalty()  # on_fit_start was overridden without calling super()
        self._penalty_called = False

    def _penalty_end_step(self, output: Any) -> Any:
        if not self.penalty_in_loss:
            return output
        module = cast(pl.LightningModule, self)
        if not module.automatic_optimization:
            if not self._penalty_called:
                raise RuntimeError(
                    "With manual optimization Lightning ignores the loss `training_step` "
                    "returns, so the weight penalty cannot be added for you: add "
                    "`self.penalty()` to your loss before `self.manual_backward(loss)`."
                )
            value = self._penalty_value
        elif isinstance(output, Tensor):
            value = self.penalty()
            output = output + value
        elif isinstance(output, Mapping) and "loss" in output:
            value = self.penalty()
            output = {**output, "loss": output["loss"] + value}
        else:  # None skips the step; other forms are rejected by Lightning itself
            return output
        if module._trainer is not None and value is not None:
            module.log("train/penalty", value.detach(), on_step=True, on_epoch=True)
        return output


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
        mc_samples: Monte Carlo dropout samples per prediction in ``Trainer.predict`` (an
            integer >= 1; the subclass sets ``mc_task``), or ``None`` for deterministic
            predictions (the raw output of ``forward``). Default ``None``.
        **kwargs: passed on to the next class in the MRO.

    Raises:
        TypeError: if an argument has the wrong type.
        ValueError: if an argument is out of range or an unknown name; the message lists the
            valid names or range.

    Example::

        class Net(RegularizedModule):
            def __init__(self, width: int = 128, **kwargs):
                super().__init__(**kwargs)
                self.net = nn.Sequential(self.dense(64, width), self.dense(width, width))
                self.head = self.apply_init(nn.Linear(width, 10), activation="identity")

        model = Net(width=64, activation="selu", dropout=0.1, l2=1e-4, max_norm=3.0)
        assert model.hparams["width"] == 64
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
        self.configure_penalty(l1=l1, l2=l2, as_weight_decay=as_weight_decay)
        if mc_samples is not None:
            check_int("mc_samples", mc_samples, 1)
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

        Example::

            self.hidden = nn.Sequential(self.dense(64, 128), self.dense(128, 128))
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

        Example::

            self.head = self.apply_init(nn.Linear(128, 10), activation="identity")
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
