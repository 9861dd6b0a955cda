"""The module side of regularization: the weight-penalty mixin and the LightningModule base.

* :class:`WeightPenaltyMixin` holds the l1/l2 penalty's configuration and hands the work to the
  :class:`~lightning_reg.callbacks.weight_penalty.WeightPenalty` callback it returns from
  ``configure_callbacks``: the penalty's gradient is added to the gradients of the weights each
  optimizer step updates (or l2 is folded into a coupled optimizer's ``weight_decay``; or l1 is
  applied as a proximal step after the update).
* :class:`RegularizedModule` holds shared layer defaults (dropout, activation, init, max-norm)
  and builds dense blocks with them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any, TypeVar, cast

import lightning.pytorch as pl
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.parsing import collect_init_args
from torch import Tensor, nn
from typing_extensions import override

from lightning_reg._hooks import callbacks_of
from lightning_reg._validation import check_bool, check_int, check_non_negative, check_positive
from lightning_reg.callbacks.max_norm import MaxNorm, beside_trainer_max_norms
from lightning_reg.callbacks.weight_penalty import PenaltyConfig, WeightPenalty
from lightning_reg.layers import _check_dropout, dense_block, init_weights_, resolve_init
from lightning_reg.penalties import weight_penalty
from lightning_reg.selection import DEFAULT_PENALIZED_MODULES, check_selection
from lightning_reg.uncertainty import MCDropoutMixin, _check_mc_task

__all__ = ["RegularizedModule", "WeightPenaltyMixin"]

_M = TypeVar("_M", bound=nn.Module)


def _double_count(grad: Tensor) -> Tensor:
    raise RuntimeError(
        "`self.penalty()` reached a backward pass during `fit`, but WeightPenaltyMixin already "
        "adds the penalty's gradient at every optimizer step, so it would count twice. Remove "
        "`+ self.penalty()` from your loss (to log the value, log `self.penalty().detach()`)."
    )


def _fitting(module: pl.LightningModule) -> bool:
    """Whether ``configure_callbacks`` runs for ``Trainer.fit`` (or outside a Trainer). Outside a
    fit the fitted callbacks stay on the Trainer, so a checkpoint saved after ``Trainer.test``
    still holds their state."""
    try:
        return bool(module.trainer.state.fn == TrainerFn.FITTING)
    except RuntimeError:  # not attached to a Trainer: configure_callbacks called directly
        return True


def _factor(name: str) -> Any:
    """The property of the penalty factor ``name`` (``l1`` or ``l2``, documented in
    ``WeightPenaltyMixin``'s docstring). During fit a new value applies from the next optimizer
    step, except where fit start fixed how it is applied: those changes are refused."""

    def get(self: WeightPenaltyMixin) -> Any:
        return dict(self.named_children()).get(name, getattr(self.penalty_config, name))

    def set_(self: WeightPenaltyMixin, value: float) -> None:
        new, config = check_non_negative(name, value), self.penalty_config
        old, started = getattr(config, name), self.penalty_fit_factors
        why = ""
        if started is not None and new != old:
            if not any(started):
                why = "the penalty was off (l1 = l2 = 0) when this fit started"
            elif name == "l2" and config.as_weight_decay:
                why = "with `as_weight_decay=True` l2 is the optimizer's weight_decay, set"
        if why:
            raise RuntimeError(
                f"`{name}` cannot change from {old:g} to {new:g} during fit: {why} at fit start. "
                f"Set it before `fit`, or start the fit with a non-zero `{name}` on the default "
                "route, where a new value applies from the next optimizer step."
            )
        self._penalty = config._replace(l1=new) if name == "l1" else config._replace(l2=new)

    return property(get, set_)


class WeightPenaltyMixin(pl.LightningModule):
    """Adds an l1/l2 weight penalty to the update of every optimizer step.

    Mix it in before your ``LightningModule`` base (it is a ``LightningModule`` itself, so
    listing ``LightningModule`` first, which would shadow its hooks, fails at class creation);
    configure it with :meth:`configure_penalty` (or set ``self.l1`` / ``self.l2``) in
    ``__init__``. The penalty is

    ``penalty = l1 * sum(|w|) + l2 * sum(w ** 2)``

    over the selected weights (by default the kernels of Linear, Bilinear, Conv, ConvTranspose,
    Embedding, EmbeddingBag, RNN/LSTM/GRU and MultiheadAttention layers, see
    :func:`~lightning_reg.selection.select_weights`; never biases or normalization parameters,
    as Keras regularizes kernels). Your ``training_step`` returns the data loss only; the update
    is the one you would get by adding the penalty to the loss.

    One route: :meth:`configure_callbacks` returns a
    :class:`~lightning_reg.callbacks.weight_penalty.WeightPenalty` callback, which counts the
    micro-batches that ran backward (``on_after_backward``) and, in ``on_before_optimizer_step``
    (once per real optimizer step, automatic or manual, after the DDP all-reduce and the
    GradScaler's unscaling, before clipping), adds ``l1 * sign(w) + 2 * l2 * w`` times
    ``micro-batches that ran backward / accumulate_grad_batches`` (1 under manual optimization)
    to ``.grad`` of the selected weights in the optimizer's param groups that require grad. So a
    ``training_step`` that returns ``None``, a short last window, frozen weights, param groups
    added during fit (``BackboneFinetuning``) and several optimizers are right by construction.

    * Which gradient hooks see: gradient clipping, the module's own ``on_before_optimizer_step``
      and ``configure_gradient_clipping``, and the optimizer see data plus penalty gradient;
      ``on_after_backward`` and the ``on_before_optimizer_step`` of the Trainer's callbacks (they
      run before the module's callbacks) see the data gradient. Under manual optimization, clip
      in the module's ``on_before_optimizer_step`` (``self.clip_gradients(optimizer, ...)``) for
      clipping to see the penalty too; clipping before ``opt.step()`` clips the data gradient.
    * ``return loss + self.penalty()`` would count the penalty twice: a ``RuntimeError`` is
      raised when that value reaches a backward pass during ``fit``.
    * With the default selection, trainable parameters of two or more dims that belong to no
      layer of a default type (your own layer's weight, a positional embedding) are named in a
      warning at fit start; they are not penalized unless you select them.
    * Logged at the end of every training epoch as ``train/penalty`` (and
      ``train/zero_fraction`` with ``proximal_l1``): the value of the weights the epoch ends
      with, computed once per epoch.
    * ``as_weight_decay=True``: the l2 part is applied as the optimizer's coupled
      ``weight_decay = 2 * l2`` on the param groups holding the penalized weights. With a
      coupled optimizer (SGD, Adam, RMSprop, Adagrad, NAdam, ...) that is the same gradient;
      unlike the default, gradient clipping does not see it, only (at a window short of
      micro-batches) the negative correction that gives the window the loss route's share of
      l2, which clipping then scales. Decoupled decay (AdamW) is refused. The penalized
      weights must sit in param groups of their own: build the optimizer from
      :meth:`penalty_param_groups`, or a ``ValueError`` names the problem. The fold is set
      again after Lightning restores a checkpoint's optimizer state, so a resume
      with another ``l2`` or ``as_weight_decay`` trains as the new configuration says; a
      restored decay nothing explains is named in a warning. A param group added during fit
      keeps its own ``weight_decay``; unless that is ``2 * l2``, its l2 goes through the
      gradient (the same update).
    * ``proximal_l1=True``: instead of the subgradient ``l1 * sign(w)``, each real optimizer
      step is followed by the soft-threshold ``w <- sign(w) * max(|w| - lr * l1, 0)`` with the
      ``lr`` of the weight's param group, which leaves weights at exactly zero (a sparse model);
      skipped AMP steps are not followed by it. It runs before every ``MaxNorm``, on the
      Trainer's callbacks or made by ``RegularizedModule(max_norm=...)``.
    * Refused by name: ``strategy="fsdp"`` (FSDP1: flattened shards), DeepSpeed, ``LBFGS`` (it
      re-evaluates the loss, which does not contain the penalty), ``SparseAdam`` on penalized
      weights (the penalty's gradient is dense), fused optimizers under 16-bit AMP (their
      gradients are still scaled in ``on_before_optimizer_step``) and ``maximize=True`` on
      penalized weights (the ascent would grow them).
    * If you override ``configure_callbacks`` or ``on_fit_start``, call ``super()`` (a fit
      without the callback raises in ``on_fit_start``).

    Attributes:
        l1: factor of the l1 term, a finite number >= 0 (validated on assignment). Set during fit
            (from a callback), a new value applies from the next optimizer step; a change the
            fit's start fixed raises a ``RuntimeError`` instead of being ignored: ``l2`` with
            ``as_weight_decay=True``, or a factor of a penalty that was off when the fit started.
            A submodule registered as ``self.l1`` (``self.l1 = nn.Linear(...)`` is a common layer
            name) is returned instead, so models naming layers ``l1``/``l2`` keep working; set the
            factor with :meth:`configure_penalty` then. torch refuses a parameter or buffer of
            that name (``KeyError: attribute 'l1' already exists``).
        l2: factor of the l2 term, the same way.

    Examples:
        >>> import torch
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

    _penalty: PenaltyConfig = PenaltyConfig()
    penalty_fit_factors: tuple[float, float] | None = None
    """``(l1, l2)`` as the running fit started with them (set by the callback); ``None``
    outside ``fit``."""

    @property
    def penalty_config(self) -> PenaltyConfig:
        """The penalty's configuration, as :meth:`configure_penalty` and ``l1``/``l2`` set it."""
        return self._penalty

    l1: float = _factor("l1")
    l2: float = _factor("l2")

    def configure_penalty(
        self,
        l1: float | None = None,
        l2: float | None = None,
        modules: tuple[type[nn.Module], ...] = DEFAULT_PENALIZED_MODULES,
        predicate: Callable[[str, nn.Parameter], bool] | None = None,
        names: Iterable[str] | None = None,
        as_weight_decay: bool | None = None,
        proximal_l1: bool | None = None,
    ) -> None:
        """Set the penalty factors and which weights they apply to.

        The selection (``modules``, ``predicate``, ``names``) is set by every call; a factor or
        flag left ``None`` keeps its current value (on a new module ``0.0`` and ``False``), so a
        subclass choosing the weights keeps what ``RegularizedModule``'s arguments or
        ``self.l1 = ...`` set.

        Args:
            l1: factor of ``sum(|w|)``, a finite number >= 0. Default ``None`` (kept).
            l2: factor of ``sum(w ** 2)``, a finite number >= 0. Default ``None`` (kept).
            modules: layer types whose kernels are penalized. Default
                :data:`~lightning_reg.selection.DEFAULT_PENALIZED_MODULES`.
            predicate: ``predicate(name, parameter) -> bool`` selects instead of ``modules``.
                Default ``None``.
            names: exact parameter names selected instead of ``modules``. Default ``None``.
            as_weight_decay: apply l2 as the optimizer's coupled ``weight_decay = 2 * l2``
                (see the class docstring). Default ``None`` (kept).
            proximal_l1: apply l1 as a soft-threshold after each optimizer step (exact zeros)
                instead of the subgradient ``l1 * sign(w)`` (Keras' l1). Default ``None`` (kept).

        Raises:
            TypeError: if a factor is not a real number, ``modules`` is not a non-empty tuple of
                module types, ``predicate`` is not callable, ``names`` is a string, or a flag is
                not a bool.
            ValueError: if a factor is negative or not finite, or both ``predicate`` and
                ``names`` are given.
            RuntimeError: if called during ``fit``.

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
        if self.penalty_fit_factors is not None:
            raise RuntimeError(
                "`configure_penalty` cannot be called during fit, whose start fixed the selection "
                "and the route. To change a factor, set `self.l1` or `self.l2`."
            )
        check_selection(modules, predicate, names)
        given = {"l1": l1, "l2": l2, "as_weight_decay": as_weight_decay, "proximal_l1": proximal_l1}
        # A factor or flag left None keeps its current value.
        kept: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        chosen = None if names is None else tuple(names)
        config = self._penalty._replace(modules=modules, predicate=predicate, names=chosen, **kept)
        check_bool("as_weight_decay", config.as_weight_decay)
        check_bool("proximal_l1", config.proximal_l1)
        l1, l2 = check_non_negative("l1", config.l1), check_non_negative("l2", config.l2)
        self._penalty = config._replace(l1=l1, l2=l2)

    def penalized_weights(self) -> list[nn.Parameter]:
        """The selected weights that require grad now.

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
        return self._penalty.select(self, warn_empty=False)

    def penalty(self) -> Tensor:
        """The penalty ``l1 * sum|w| + l2 * sum w**2`` over :meth:`penalized_weights` (a
        differentiable 0-dim tensor, no host sync), for logging or a loss built outside ``fit``.

        During ``fit`` the penalty's gradient is already applied at each optimizer step: adding
        this value to the training loss raises a ``RuntimeError`` at its backward pass.

        Examples:
            >>> import torch
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
        value = weight_penalty(self.penalized_weights(), self._penalty.l1, self._penalty.l2)
        if self.penalty_fit_factors is not None and value.requires_grad:
            value.register_hook(_double_count)
        return value

    def penalty_param_groups(self) -> list[dict[str, Any]]:
        """Optimizer param groups: the penalized weights (frozen ones included, as
        ``as_weight_decay`` requires of every group holding a selected weight), then every other
        parameter with ``weight_decay=0``. Needed for ``as_weight_decay=True``; keeps biases and
        normalization parameters undecayed whatever ``weight_decay`` the optimizer gets.

        Examples:
            >>> from lightning.pytorch import LightningModule
            >>> class Net(WeightPenaltyMixin, LightningModule):
            ...     def __init__(self):
            ...         super().__init__()
            ...         self.fc = nn.Linear(4, 2)
            >>> [len(g["params"]) for g in Net().penalty_param_groups()]
            [1, 1]
        """
        weights = self._penalty.select(self, trainable_only=False)
        chosen = {id(w) for w in weights}
        others = [p for p in self.parameters() if id(p) not in chosen]
        groups: list[dict[str, Any]] = [{"params": weights}]
        if others:
            groups.append({"params": others, "weight_decay": 0.0})
        return groups

    @override
    def configure_callbacks(self) -> list[pl.Callback]:
        """The callbacks of the classes further down the MRO, plus, for ``Trainer.fit``, the
        :class:`~lightning_reg.callbacks.weight_penalty.WeightPenalty` that applies the penalty
        (``test``, ``validate`` and ``predict`` keep the fitted one on the Trainer, so a checkpoint
        saved after them holds its state). Call ``super().configure_callbacks()`` when you
        override this hook."""
        inherited = super().configure_callbacks()
        callbacks = [inherited] if isinstance(inherited, pl.Callback) else list(inherited)
        return [*callbacks, WeightPenalty()] if _fitting(self) else callbacks

    @override
    def on_fit_start(self) -> None:
        """Check that the penalty's callback is attached (``configure_callbacks`` calls
        ``super()``): without it the penalty would silently not apply."""
        super().on_fit_start()
        config = self._penalty
        if self.penalty_fit_factors is None and (config.l1 or config.l2):
            raise MisconfigurationException(
                f"{type(self).__name__} has a weight penalty (l1={config.l1:g}, l2={config.l2:g}) "
                "but no WeightPenalty callback on the Trainer to apply it: your "
                "`configure_callbacks` must return `super().configure_callbacks()` among its own."
            )


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
      :meth:`configure_callbacks` (a fit without it, when an override of that hook leaves out
      ``super()``, raises in ``on_fit_start``); ``mc_samples`` makes ``Trainer.predict``
      return Monte Carlo dropout summaries (:class:`~lightning_reg.uncertainty.MCDropoutMixin`:
      set the class attribute ``mc_task = "classification"`` or ``"regression"`` to say what
      they summarize). Without ``mc_samples``, ``Trainer.predict`` returns the model's raw
      output.
    * ``save_hyperparameters()`` is called here, and it records the arguments of every subclass
      ``__init__`` on the way (Lightning walks the ``super().__init__`` call frames), so
      ``load_from_checkpoint`` rebuilds subclasses too; an argument a subclass fixes in its
      ``super().__init__(...)`` call is left out of the checkpoint (by :meth:`on_save_checkpoint`,
      so an override calls ``super()``), since the subclass sets it again. Call
      ``super().__init__`` with the zero-argument ``super()``.

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
        self.max_norm = None if max_norm is None else check_positive("max_norm", max_norm)
        self.configure_penalty(l1, l2, as_weight_decay=as_weight_decay, proximal_l1=proximal_l1)
        self.mc_samples = None if mc_samples is None else check_int("mc_samples", mc_samples, 1)
        _check_mc_task(self.mc_task, mc_samples, type(self).__name__)
        self.save_hyperparameters()
        # The arguments a subclass fixes (super().__init__(activation="selu", **kwargs)) are
        # hparams, but load_from_checkpoint must not pass them back to it (on_save_checkpoint).
        frame = inspect.currentframe()
        *inner, outer = collect_init_args(cast(FrameType, frame), [], classes=(type(self),))
        self._fixed_hparams = frozenset().union(*inner) - outer.keys()

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

    def apply_init(self, module: _M, activation: str | None = None) -> _M:
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

    def configure_callbacks(self) -> list[pl.Callback]:
        """The callbacks of the classes further down the MRO (the penalty's ``WeightPenalty``),
        plus ``MaxNorm(max_norm)`` if set, both for ``Trainer.fit`` only.

        A ``MaxNorm`` the Trainer already holds is kept beside this one (Lightning would
        otherwise drop it), with a warning that both act and the smaller bound holds where they
        overlap; an identical one (same ``state_key``) is used instead of adding this one.

        Example:
            >>> from lightning.pytorch.callbacks import EarlyStopping
            >>> from lightning_reg import RegularizedModule
            >>> class Net(RegularizedModule):
            ...     def configure_callbacks(self):
            ...         return [*super().configure_callbacks(), EarlyStopping("val_loss")]
            >>> tuple(type(c).__name__ for c in Net(max_norm=3.0).configure_callbacks())
            ('WeightPenalty', 'MaxNorm', 'EarlyStopping')
        """
        callbacks = super().configure_callbacks()
        if not _fitting(self):
            return callbacks
        ours = None if self.max_norm is None else MaxNorm(self.max_norm)
        return [*callbacks, *beside_trainer_max_norms(ours, self)]

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Leave out of the checkpoint's hyperparameters those a subclass fixes in its
        ``super().__init__`` call, which ``load_from_checkpoint`` would pass to it twice."""
        super().on_save_checkpoint(checkpoint)
        key = self.CHECKPOINT_HYPER_PARAMS_KEY
        if key in checkpoint:  # a copy: Lightning stores an OmegaConf `hparams` itself
            fixed = self._fixed_hparams
            checkpoint[key] = {k: v for k, v in checkpoint[key].items() if k not in fixed}

    @override
    def on_fit_start(self) -> None:
        """Check that ``MaxNorm(max_norm)`` is attached (``configure_callbacks`` calls
        ``super()``): without it the bound would silently not apply."""
        super().on_fit_start()
        if self.max_norm is None:
            return
        key = MaxNorm(self.max_norm).state_key
        if not any(cb.state_key == key for cb in callbacks_of(self.trainer, MaxNorm)):
            raise MisconfigurationException(
                f"{type(self).__name__}(max_norm={self.max_norm:g}) has no MaxNorm"
                f"({self.max_norm:g}) callback on the Trainer to apply it: your "
                "`configure_callbacks` must return `super().configure_callbacks()` among its own."
            )
