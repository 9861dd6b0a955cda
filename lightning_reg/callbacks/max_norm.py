"""The max-norm weight constraint as a Lightning callback."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.optim import Optimizer
from typing_extensions import override

from lightning_reg._hooks import HookOwner, callbacks_of, refuse_fsdp1
from lightning_reg.max_norm import (
    DEFAULT_MAX_NORM_MODULES,
    check_max_norm,
    max_norm_,
    max_norm_targets,
    row_groups,
    unconstrained_message,
)
from lightning_reg.penalties import is_dtensor

__all__ = ["MaxNorm"]


class _Bound(NamedTuple):
    """What one optimizer's steps constrain: its param groups' max-norm targets that require grad.

    Resolved when the fit starts and again only when the ``requires_grad`` flags of the
    optimizer's parameters change (``BackboneFinetuning`` freezing, unfreezing, adding a param
    group), so each step pays one comparison of those flags, not a walk of the model.
    """

    flags: list[bool]
    targets: list[torch.Tensor]
    groups: list[list[torch.Tensor]] | None  # None: DTensors, taken afresh at each step


def _flags(optimizer: Optimizer) -> list[bool]:
    return [p.requires_grad for group in optimizer.param_groups for p in group["params"]]


class MaxNorm(HookOwner):
    """Keep every output unit's incoming weight vector within a norm of ``max_value``.

    After each optimizer step, every row of a kernel (a row of a Linear weight, a whole output
    filter of a Conv weight, one gate unit's input or recurrent weights of an RNN/LSTM/GRU, one
    row of ``MultiheadAttention``'s input projection) whose ``norm_type``-norm exceeds
    ``max_value`` is rescaled to that norm, exactly as ``torch.renorm(w, norm_type, 0,
    max_value)``, by :func:`~lightning_reg.max_norm.apply_max_norm_`. Biases and normalization
    parameters are never touched.

    When and what: it acts in a step post-hook that torch calls after each real
    ``optimizer.step()``, on the kernels in the param groups of the optimizer just stepped that
    require grad. So under ``accumulate_grad_batches=4`` it acts once every 4 batches; a
    mixed-precision step that the ``GradScaler`` skips is not a step; under manual optimization
    with two optimizers each optimizer's kernels are constrained after its own step; a frozen
    backbone is left alone and constrained again once unfrozen (``BackboneFinetuning``). The
    kernels are resolved at the start of each fit and again only when an optimizer's parameters
    or their ``requires_grad`` flags change. It does not act before the first update (as Keras
    constraints, it follows updates). After a step, the soft-threshold of a ``proximal_l1``
    penalty runs first and the bound second, wherever the ``MaxNorm`` sits.

    Parametrized kernels: for a kernel under ``torch.nn.utils.parametrizations.weight_norm``,
    the parameter the optimizer updates for a row's length is the magnitude ``g``
    (``original0``): with ``norm_type=2`` each row's norm is ``|g_i|``, so bounding ``g`` bounds
    the row exactly. Every other parametrization (``spectral_norm``,
    ``register_parametrization``), and weight norm with another ``norm_type``, cannot be bounded
    through the parameters the optimizer updates and is named in a warning at the start of fit,
    as is any other trainable parameter of two or more dims of a layer in ``modules`` that is not
    a bias (the deprecated hook-based ``torch.nn.utils.weight_norm``'s ``weight_g``). With the
    default ``modules``, trainable parameters of two or more dims that belong to no layer of
    those types (an ``nn.Embedding``, your own layer's weight) and to none that another
    ``MaxNorm`` on the Trainer selects are named in a warning too (by the first of several
    with the same ``modules``), and left alone.

    Lifecycle: each fit starts fresh (the count of steps it acted on is reset in ``setup``)
    unless a checkpoint is restored, so one callbacks list reused across Trainers (folds of a
    cross-validation) constrains every fold alike. Its checkpoint state, the number of steps it
    acted on per optimizer, is stored under a ``state_key`` made of its configuration, so several
    ``MaxNorm`` callbacks with different layer types or bounds coexist on one Trainer.

    Distributed: under DDP every rank holds the same weights and computes the same result;
    FSDP2 parameters (``DTensor`` sharded on dim 0) are constrained shard by shard, each shard
    holding whole rows. ``strategy="fsdp"`` (FSDP1, flattened shards) is refused.

    Args:
        max_value: the largest allowed norm, finite and ``> 0``. Default ``1.0``.
        modules: layer types whose kernels are constrained, a non-empty tuple without transposed
            convolutions. Default ``DEFAULT_MAX_NORM_MODULES`` (Linear, Conv1d/2d/3d, RNN, LSTM,
            GRU and their cells, MultiheadAttention); add ``nn.Embedding`` to bound embedding
            vectors too.
        norm_type: ``p`` of the p-norm, a number ``>= 1`` or ``math.inf``. Default ``2.0``.
        foreach: the path of :func:`~lightning_reg.max_norm.apply_max_norm_`: ``True`` or
            ``None`` (default) multi-tensor (on CPU it writes only weights with a row over the
            bound; on an accelerator it never syncs), ``False`` torch's per-tensor ``renorm_``.

    Raises:
        TypeError: if an argument has the wrong type.
        ValueError: if ``max_value`` or ``norm_type`` is out of range, or ``modules`` holds a
            transposed convolution.
        MisconfigurationException: when fitting starts under FSDP1, or if the model has no
            layer of a type in ``modules``.

    Example:
        >>> from torch import nn
        >>> from lightning_reg.callbacks import MaxNorm
        >>> linear = MaxNorm(max_value=3.0)
        >>> embedding = MaxNorm(max_value=0.2, modules=(nn.Embedding,))
        >>> linear.state_key != embedding.state_key  # both may sit on one Trainer
        True
    """

    def __init__(
        self,
        max_value: float = 1.0,
        modules: tuple[type[nn.Module], ...] = DEFAULT_MAX_NORM_MODULES,
        norm_type: float = 2.0,
        foreach: bool | None = None,
    ) -> None:
        super().__init__()
        self.max_value, self.norm_type = check_max_norm(max_value, modules, norm_type, foreach)
        self.modules = modules
        self.foreach = foreach
        # Computed once: Lightning reads `state_key` several times per step.
        self._state_key = self._generate_state_key(
            max_value=self.max_value,
            modules=[m.__qualname__ for m in modules],
            norm_type=self.norm_type,
        )
        self._steps: dict[int, int] = {}
        self._bound: list[_Bound] = []
        self._warned: set[str] = set()
        self.module_made = False  # set by `beside_trainer_max_norms` for a module's own bound

    @property
    @override
    def state_key(self) -> str:
        return self._state_key

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments, so that ``MaxNorm(**callback.get_config())`` is equal."""
        return {
            "max_value": self.max_value,
            "modules": self.modules,
            "norm_type": self.norm_type,
            "foreach": self.foreach,
        }

    @property
    def steps(self) -> dict[int, int]:
        """Optimizer steps it acted after in this fit (a restored checkpoint's included), by the
        optimizer's index in ``trainer.optimizers``."""
        return dict(self._steps)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        refuse_fsdp1(trainer, "MaxNorm", "its flat parameter shards split rows across ranks")
        # A fresh fit; a checkpoint restored after this hook loads its own count.
        self._steps = {}
        self._warned = set()

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Here the optimizers exist and the parameters are final (configured, sharded, moved).
        if not any(isinstance(m, self.modules) for m in pl_module.modules()):
            kinds = ", ".join(m.__name__ for m in self.modules)
            raise MisconfigurationException(
                f"MaxNorm found no layer of type {kinds} in {type(pl_module).__name__}: pass the "
                "layer types to constrain as `modules`."
            )
        self._bound = [self._bind(pl_module, optimizer) for optimizer in trainer.optimizers]
        self.register_hooks(trainer, pl_module)

    def register_hooks(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """(Re-)register its step post-hooks on the Trainer's optimizers, after every hook
        registered so far: the weight penalty's proximal step calls it so that it runs first."""
        self.remove_hooks()
        for idx, optimizer in enumerate(trainer.optimizers):
            hook = functools.partial(self._post_hook, pl_module, idx)
            self.handles.append(optimizer.register_step_post_hook(hook))

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"steps": dict(self._steps)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._steps = {int(k): int(v) for k, v in state_dict.get("steps", {}).items()}

    def _post_hook(
        self, pl_module: pl.LightningModule, idx: int, optimizer: Optimizer, *_: Any
    ) -> None:
        bound = self._bound[idx]
        if _flags(optimizer) != bound.flags:
            bound = self._bound[idx] = self._bind(pl_module, optimizer)
        groups = row_groups(bound.targets) if bound.groups is None else bound.groups
        max_norm_(groups, self.max_value, self.norm_type, self.foreach)
        self._steps[idx] = self._steps.get(idx, 0) + 1

    def _bind(self, pl_module: pl.LightningModule, optimizer: Optimizer) -> _Bound:
        """The optimizer's targets, resolved from the model; names what no warning of this fit
        has named yet: what ``max_norm_targets`` skips and, with the default ``modules``, the
        parameters no ``MaxNorm`` on the Trainer reaches."""
        # Another MaxNorm on the Trainer (say, for nn.Embedding) reaches its own layer types.
        others = callbacks_of(pl_module.trainer, MaxNorm)
        reach = tuple({t for c in others for t in c.modules})
        weights, skipped, outside = max_norm_targets(pl_module, self.modules, self.norm_type, reach)
        if any(c.modules == self.modules for c in others[: others.index(self)]):
            outside = []  # an earlier one with these types names what they all leave out
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        targets = [w for w in weights if id(w) in held]
        groups = row_groups(targets)  # checks dims, dtype, placements
        skipped = [name for name in skipped if name not in self._warned]
        outside = [name for name in outside if name not in self._warned]
        if skipped or outside:
            who = f"MaxNorm({self.max_value:g})"
            rank_zero_warn(unconstrained_message(who, pl_module, skipped, outside))
            self._warned.update(skipped + outside)
        sharded = any(is_dtensor(w) for w in targets)
        return _Bound(_flags(optimizer), targets, None if sharded else groups)


def beside_trainer_max_norms(ours: MaxNorm | None, pl_module: pl.LightningModule) -> list[Callback]:
    """What ``pl_module.configure_callbacks`` returns to add ``ours`` (``None``: no bound) beside
    the ``MaxNorm`` callbacks already on its Trainer, instead of replacing them.

    Lightning drops every Trainer callback whose type a module returns; so the Trainer's own
    ``MaxNorm`` callbacks are handed back with ``ours``, and all of them act, each after every
    step. On weights that two of them select, the smaller bound holds, which a warning says. If
    one of them is the same constraint (same ``state_key``), ``ours`` is left out. A ``MaxNorm``
    that a module added on an earlier fit of this Trainer is taken off it, so each fit
    constrains as the module's ``max_norm`` now says, as on a fresh Trainer.
    """
    try:
        trainer = pl_module.trainer
    except RuntimeError:  # not attached to a Trainer: configure_callbacks called directly
        return [] if ours is None else [ours]
    made = [c for c in callbacks_of(trainer, MaxNorm) if c.module_made]  # on an earlier fit
    trainer.callbacks = [c for c in trainer.callbacks if c not in made]  # type: ignore[attr-defined]
    theirs = callbacks_of(trainer, MaxNorm)
    if ours is None or any(c.state_key == ours.state_key for c in theirs):
        return []
    owner = type(pl_module).__name__
    if theirs:
        listed = ", ".join(f"MaxNorm({c.max_value:g})" for c in theirs)
        rank_zero_warn(
            f"{owner}(max_norm={ours.max_value:g}) adds MaxNorm({ours.max_value:g}) beside the "
            f"Trainer's {listed}: all of them act after every optimizer step, so on weights that "
            f"several select the smallest bound holds. Pass `max_norm=None` to {owner} to keep "
            "only the Trainer's."
        )
    ours.module_made = True
    # Exactly MaxNorm: Lightning drops those from the Trainer's list (subclasses stay there).
    return [*(c for c in theirs if type(c) is MaxNorm), ours]
