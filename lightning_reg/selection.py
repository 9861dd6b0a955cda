"""Which weights to regularize: kernels by layer type, predicate or names.

Pure functions over a plain ``nn.Module``, shared by the penalty and max-norm. A parametrized
kernel is resolved to the parameters the optimizer updates with torch's own helpers
(``parametrize.is_parametrized``, ``type_before_parametrizations``, the
``parametrizations.<name>.original*`` tensors): nothing here evaluates a parametrization, so
selecting has no side effect (``spectral_norm``'s power iteration does not run).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Literal, NamedTuple, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from lightning_reg.layers import INIT_MODULES

__all__ = [
    "DEFAULT_PENALIZED_MODULES",
    "kernels",
    "layer_kind",
    "outside_message",
    "outside_parameters",
    "select_weights",
]

DEFAULT_PENALIZED_MODULES: tuple[type[nn.Module], ...] = (
    *INIT_MODULES,  # Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d
    nn.Bilinear,
    nn.Embedding,
    nn.EmbeddingBag,
    nn.RNNBase,
    nn.RNNCellBase,
    nn.MultiheadAttention,
)
"""Layers whose kernels are penalized by default (kernels only, as Keras does): the ``.weight``
of Linear, Bilinear, Conv, ConvTranspose, Embedding and EmbeddingBag; the input and recurrent
weights of RNN/LSTM/GRU and their cells (``weight_ih*``, ``weight_hh*``, ``weight_hr*``); the
input projection of ``MultiheadAttention`` (``in_proj_weight`` or ``q/k/v_proj_weight``; its
``out_proj`` is a Linear)."""

_MHA_KERNELS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def select_weights(
    module: nn.Module,
    modules: tuple[type[nn.Module], ...] = DEFAULT_PENALIZED_MODULES,
    predicate: Callable[[str, nn.Parameter], bool] | None = None,
    names: Iterable[str] | None = None,
    *,
    trainable_only: bool = True,
    warn_empty: bool = True,
) -> list[nn.Parameter]:
    """Select the parameters to regularize.

    By default the kernels of every submodule that is an instance of ``modules`` (see
    :data:`DEFAULT_PENALIZED_MODULES`): biases and normalization parameters are never picked.
    ``predicate`` or ``names`` choose instead of ``modules``. Shared (tied) parameters are
    returned once, in the order of ``module.named_parameters()``.

    A parametrized kernel (``torch.nn.utils.parametrizations.weight_norm``, ``spectral_norm``,
    ``register_parametrization``, or the older hook-based ``torch.nn.utils.weight_norm`` /
    ``spectral_norm``) is not itself a parameter: the parameters the optimizer updates are
    selected in its place (``parametrizations.weight.original*``, ``weight_orig``, or
    ``weight_g`` and ``weight_v``), found without evaluating the parametrization. A kernel that
    is neither a parameter nor one of those forms is named in a warning.

    Args:
        module: the model to select from.
        modules: layer types whose kernels are selected. Default
            :data:`DEFAULT_PENALIZED_MODULES`.
        predicate: ``predicate(full_name, parameter) -> bool`` picks parameters instead of
            ``modules``. It sees every name of a tied parameter. Default ``None``.
        names: exact full parameter names (as in ``named_parameters()``) to pick instead of
            ``modules``. Default ``None``.
        trainable_only: leave out parameters with ``requires_grad=False``. Default ``True``;
            ``False`` returns frozen ones too (for callers that filter at each step).
        warn_empty: warn if nothing is selected. Default ``True``.

    Returns:
        The selected parameters.

    Raises:
        TypeError: if ``module`` is not an ``nn.Module``, ``modules`` is not a non-empty tuple of
            ``nn.Module`` subclasses, ``predicate`` is not callable, or ``names`` is a string.
        ValueError: if both ``predicate`` and ``names`` are given, or a name is unknown.

    Warns:
        UserWarning: if nothing is selected, or a selected layer's kernel cannot be resolved to
            parameters.

    Examples:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.LSTM(8, 3))
        >>> [tuple(w.shape) for w in select_weights(model)]
        [(8, 4), (12, 8), (12, 3)]
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"`module` must be an nn.Module, got {type(module).__name__}.")
    check_selection(modules, predicate, names)
    named = list(module.named_parameters(remove_duplicate=False))
    if predicate is not None:
        chosen = {id(p) for name, p in named if predicate(name, p)}
    elif names is not None:
        chosen = _ids_of_names(named, names)
    else:
        chosen = _ids_of_kernels(module, modules)
    selected = list({id(p): p for _, p in named if id(p) in chosen}.values())
    if trainable_only:
        selected = [p for p in selected if p.requires_grad]
    if warn_empty and not selected:
        warnings.warn(
            f"No trainable parameter of {type(module).__name__} was selected for regularization "
            "(check `modules`, `predicate` or `names`).",
            UserWarning,
            stacklevel=2,
        )
    return selected


def _ids_of_kernels(module: nn.Module, modules: tuple[type[nn.Module], ...]) -> set[int]:
    """Ids of the parameters behind the kernels of every layer of a type in ``modules``."""
    chosen: set[int] = set()
    unresolved: list[str] = []
    for layer_name, layer in module.named_modules():
        if not isinstance(layer, modules):
            continue
        for kernel in kernels(layer):
            if kernel.params is None:
                unresolved.append(f"{layer_name}.{kernel.name} ({layer_kind(layer)})")
            else:
                chosen.update(id(p) for p in kernel.params)
    if unresolved:
        warnings.warn(
            f"These kernels are neither parameters nor a known parametrization, so they are not "
            f"regularized: {', '.join(unresolved)}. Choose the parameters that produce them with "
            "`names=` or `predicate=`.",
            UserWarning,
            stacklevel=3,
        )
    return chosen


class Kernel(NamedTuple):
    """A kernel of a layer and the parameters the optimizer updates for it."""

    name: str  # the layer's attribute: "weight", "weight_hh_l0", "in_proj_weight"
    params: list[nn.Parameter] | None  # None: neither a parameter nor a known reparametrization
    kind: Literal["parameter", "parametrize", "weight_norm", "spectral_norm"]


def kernels(layer: nn.Module) -> list[Kernel]:
    """The kernels of ``layer`` (never biases), each with the parameters behind it.

    The one recognizer of reparametrized kernels, for the selection and for max-norm: a kernel
    under ``torch.nn.utils.parametrize`` (its originals), and the older hook-based
    ``torch.nn.utils.weight_norm`` (``<name>_g``, ``<name>_v``) and ``spectral_norm``
    (``<name>_orig``), which replace the kernel's parameter by their own. Only the layer's own
    parameters, buffers and ``parametrizations`` are read, never the kernel attribute itself.

    Examples:
        >>> layer = nn.utils.parametrizations.spectral_norm(nn.Linear(3, 2))
        >>> [(k.name, k.kind, [tuple(p.shape) for p in k.params]) for k in kernels(layer)]
        [('weight', 'parametrize', [(2, 3)])]
    """
    own = dict(layer.named_parameters(recurse=False))
    parametrized = (
        list(cast(nn.ModuleDict, layer.parametrizations))
        if parametrize.is_parametrized(layer)
        else []
    )
    buffers = dict(layer.named_buffers(recurse=False))
    present = {*own, *parametrized, *buffers}
    if isinstance(layer, nn.MultiheadAttention):
        names = [n for n in _MHA_KERNELS if n in present]
    elif isinstance(layer, (nn.RNNBase, nn.RNNCellBase)):
        found = [_hooked_name(n, own) for n in (*own, *parametrized) if n.startswith("weight_")]
        names = list(dict.fromkeys(found))  # weight norm's `_g` and `_v` name one kernel
    else:
        hooked = {_hooked_name(n, own) for n in own}
        names = ["weight"] if "weight" in present or "weight" in hooked else []
    return [_kernel(layer, name, own, buffers) for name in names]


def _hooked_name(param: str, own: dict[str, nn.Parameter]) -> str:
    """The kernel a hook-based weight norm or spectral norm parameter stands for, else ``param``."""
    if param.endswith("_orig"):
        return param.removesuffix("_orig")
    stem = param[:-2]
    if param.endswith(("_g", "_v")) and stem + "_g" in own and stem + "_v" in own:
        return stem
    return param


def _kernel(
    layer: nn.Module, name: str, own: dict[str, nn.Parameter], buffers: dict[str, torch.Tensor]
) -> Kernel:
    """Kernel ``name`` of ``layer`` and the parameters behind it."""
    if parametrize.is_parametrized(layer, name):
        originals = cast(nn.ModuleDict, layer.parametrizations)[name]
        return Kernel(name, list(originals.parameters(recurse=False)), "parametrize")
    if name in own:
        return Kernel(name, [own[name]], "parameter")
    if name + "_orig" in own:
        return Kernel(name, [own[name + "_orig"]], "spectral_norm")
    if name + "_g" in own and name + "_v" in own:
        return Kernel(name, [own[name + "_g"], own[name + "_v"]], "weight_norm")
    return Kernel(name, None if buffers.get(name) is not None else [], "parameter")


def layer_kind(layer: nn.Module) -> str:
    """The layer's type name as the user wrote it (torch's ``type_before_parametrizations``).

    Examples:
        >>> layer_kind(nn.utils.parametrizations.spectral_norm(nn.Linear(3, 2)))
        'Linear'
    """
    return parametrize.type_before_parametrizations(layer).__name__


def outside_parameters(module: nn.Module, modules: tuple[type[nn.Module], ...]) -> list[str]:
    """Trainable parameters of two or more dims that no layer of a type in ``modules`` holds, by
    name with the type of the module that holds them: what a selection by layer type leaves out
    (a custom layer's weight, a positional embedding, an ``nn.Embedding`` outside ``modules``).

    A layer of a type in ``modules`` holds its own parameters and, when parametrized, the
    originals of its parametrizations. A parameter tied to one such layer is held by it.

    Examples:
        >>> outside_parameters(nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 2)), (nn.Linear,))
        ['0.weight (Embedding)']
    """
    held: set[int] = set()
    outside: list[tuple[str, nn.Parameter]] = []
    for layer_name, layer in module.named_modules():
        if isinstance(layer, parametrize.ParametrizationList):
            continue  # its originals are listed with the parametrized layer below
        prefix = f"{layer_name}." if layer_name else ""
        own = list(layer.named_parameters(recurse=False))
        if parametrize.is_parametrized(layer):
            plists = cast(nn.ModuleDict, layer.parametrizations)
            own += [
                (f"parametrizations.{kernel}.{name}", p)
                for kernel, plist in plists.items()
                for name, p in plist.named_parameters(recurse=False)
            ]
        if isinstance(layer, modules):
            held.update(id(p) for _, p in own)
        else:
            kind = layer_kind(layer)
            outside.extend((f"{prefix}{name} ({kind})", p) for name, p in own)
    names: list[str] = []
    for name, p in outside:
        if p.dim() >= 2 and p.requires_grad and id(p) not in held:
            held.add(id(p))  # a parameter tied between two such modules is named once
            names.append(name)
    return names


def outside_message(who: str, module: nn.Module, outside: list[str], default: str, how: str) -> str:
    """The warning naming what a default selection (``default``) leaves out of ``module``: the
    names from :func:`outside_parameters`, ``who`` says what does not act on them, ``how`` what to
    do.

    Examples:
        >>> outside_message("X skips", nn.Linear(2, 2), ["w (Own)"], "DEFAULTS", "Add them")[:38]
        'X skips these trainable parameters of '
    """
    return (
        f"{who} these trainable parameters of {type(module).__name__}: {', '.join(outside)}. "
        f"They have two or more dims but belong to no layer of a type in {default}, the default "
        f"selection. {how}; with other `modules` (or a `predicate` or `names`) this check is off."
    )


def check_module_types(name: str, modules: object) -> tuple[type[nn.Module], ...]:
    """``modules`` if it is a non-empty tuple of ``nn.Module`` subclasses, else a ``TypeError``.

    Examples:
        >>> check_module_types("modules", (nn.Linear,))
        (<class 'torch.nn.modules.linear.Linear'>,)
    """
    if (
        not isinstance(modules, tuple)
        or not modules
        or not all(isinstance(m, type) and issubclass(m, nn.Module) for m in modules)
    ):
        raise TypeError(
            f"`{name}` must be a non-empty tuple of nn.Module subclasses, got {modules!r}."
        )
    return modules


def check_selection(
    modules: object, predicate: object = None, names: Iterable[str] | None = None
) -> None:
    """Raise a ``TypeError`` or ``ValueError`` naming what is wrong with a selection.

    Examples:
        >>> check_selection((nn.Linear,), names="fc.weight")
        Traceback (most recent call last):
        TypeError: `names` must be an iterable of parameter names, not a string: 'fc.weight'.
    """
    check_module_types("modules", modules)
    if predicate is not None and not callable(predicate):
        raise TypeError(f"`predicate` must be callable, got {type(predicate).__name__}.")
    if isinstance(names, str):
        raise TypeError(f"`names` must be an iterable of parameter names, not a string: {names!r}.")
    if predicate is not None and names is not None:
        raise ValueError("Pass at most one of `predicate` and `names`, got both.")


def _ids_of_names(named: list[tuple[str, nn.Parameter]], names: Iterable[str]) -> set[int]:
    by_name = dict(named)
    wanted = list(names)
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        valid = ", ".join(list(by_name)[:5])
        raise ValueError(
            f"Unknown parameter names {unknown} in `names`; valid names include: {valid}."
        )
    return {id(by_name[n]) for n in wanted}
