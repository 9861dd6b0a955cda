"""Which weights to regularize: kernels by layer type, predicate or names.

Pure functions over a plain ``nn.Module``, shared by the penalty and max-norm. A kernel under
``torch.nn.utils.parametrize`` (``parametrizations.weight_norm``, ``spectral_norm``, your own) is
resolved to the parameters the optimizer updates with torch's own helpers
(``parametrize.is_parametrized``, ``type_before_parametrizations``, the
``parametrizations.<name>.original*`` tensors): nothing here evaluates a parametrization, so
selecting has no side effect (``spectral_norm``'s power iteration does not run). What else a
selected layer holds (the hook-based ``torch.nn.utils.weight_norm``'s ``weight_g``, say) is named.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable
from typing import NamedTuple

from torch import nn
from torch.nn.utils import parametrize

from lightning_reg.layers import INIT_MODULES

__all__ = [
    "DEFAULT_PENALIZED_MODULES",
    "layer_kernels",
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

    A kernel under ``torch.nn.utils.parametrizations`` (``weight_norm``, ``spectral_norm``) or
    ``register_parametrization`` is not itself a parameter: the parameters the optimizer updates
    (``parametrizations.weight.original*``) are selected in its place, found without evaluating
    the parametrization. Any other trainable parameter of two or more dims of a selected layer
    (not a bias), such as the ``weight_g``/``weight_v`` of the deprecated hook-based
    ``torch.nn.utils.weight_norm`` or the ``weight_orig`` of the hook-based ``spectral_norm``, and
    a kernel that is a buffer, are named in a warning and not selected.

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
        UserWarning: if nothing is selected, or a selected layer holds weights that are not
            selected.

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
        by_name, wanted = dict(named), list(names)
        unknown = [n for n in wanted if n not in by_name]
        if unknown:
            valid = ", ".join(list(by_name)[:5])
            raise ValueError(
                f"Unknown parameter names {unknown} in `names`; valid names include: {valid}."
            )
        chosen = {id(by_name[n]) for n in wanted}
    else:
        found, left = layer_kernels(module, modules, trainable_only)
        chosen = {id(p) for kernel in found for p in kernel.params}
        if left:
            warnings.warn(
                f"These weights of layers in `modules` are not regularized: {', '.join(left)}. "
                "Only kernels (as parameters or under torch.nn.utils.parametrize) are; choose "
                "other parameters with `names=` or `predicate=`.",
                UserWarning,
                stacklevel=2,
            )
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


class Kernel(NamedTuple):
    """A kernel of a layer and the parameters the optimizer updates for it."""

    name: str  # full name: "fc.weight", "lstm.weight_hh_l0"
    layer: nn.Module
    attr: str  # the layer's attribute: "weight", "weight_hh_l0", "in_proj_weight"
    params: list[nn.Parameter]  # the kernel itself, or the originals of its parametrization


def layer_kernels(
    module: nn.Module, modules: tuple[type[nn.Module], ...], trainable_only: bool = True
) -> tuple[list[Kernel], list[str]]:
    """The kernels of every layer of a type in ``modules`` (never biases), and by name what such a
    layer holds besides: a parameter of two or more dims (trainable, with ``trainable_only``) that
    is not a bias and is behind none of the kernels, or a kernel that is a buffer.

    Only the layers' own parameters, buffers and ``parametrizations`` are read, never a kernel
    attribute itself, so no parametrization is evaluated.

    Examples:
        >>> parametrized = nn.utils.parametrizations.spectral_norm(nn.Linear(3, 2))
        >>> hook_based = nn.utils.spectral_norm(nn.Linear(3, 2))
        >>> found, left = layer_kernels(nn.Sequential(parametrized, hook_based), (nn.Linear,))
        >>> [(k.name, [tuple(p.shape) for p in k.params]) for k in found], left
        ([('0.weight', [(2, 3)])], ['1.weight_orig (Linear)'])
    """
    found: list[Kernel] = []
    others: list[tuple[str, nn.Parameter]] = []
    left: list[str] = []
    for layer_name, layer in module.named_modules():
        if not isinstance(layer, modules):
            continue
        prefix, kind = f"{layer_name}." if layer_name else "", layer_kind(layer)
        behind: dict[str, list[nn.Parameter]] = {}
        for name, p in own_parameters(layer):
            attr = name.split(".")[1] if name.startswith("parametrizations.") else name
            if _is_kernel(layer, attr):
                behind.setdefault(attr, []).append(p)
            elif p.dim() >= 2 and (p.requires_grad or not trainable_only) and "bias" not in name:
                others.append((f"{prefix}{name} ({kind})", p))
        found += [Kernel(prefix + attr, layer, attr, ps) for attr, ps in behind.items()]
        buffers = layer.named_buffers(recurse=False)
        left += [f"{prefix}{name} ({kind})" for name, _ in buffers if _is_kernel(layer, name)]
    kernel_ids = {id(p) for kernel in found for p in kernel.params}
    return found, [name for name, p in others if id(p) not in kernel_ids] + left


def _is_kernel(layer: nn.Module, attr: str) -> bool:
    if isinstance(layer, nn.MultiheadAttention):
        return attr.endswith("proj_weight")  # in_proj_weight or q/k/v_proj_weight
    if isinstance(layer, (nn.RNNBase, nn.RNNCellBase)):
        return re.fullmatch(r"weight_(ih|hh|hr)(_l\d+(_reverse)?)?", attr) is not None
    return attr == "weight"


def own_parameters(layer: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The layer's own parameters by name, the originals of its parametrizations included
    (``parametrizations.weight.original``), read without evaluating them."""
    return [(name, p) for name, p in layer.named_parameters() if re.fullmatch(_OWN, name)]


# A parameter's name in the layer that owns it: its own, or an original of its parametrizations.
_OWN = r"(parametrizations\.\w+\.original\d*|[^.]+)"


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
    listed = parametrize.ParametrizationList  # its originals are its parametrized layer's
    layers = [m for m in module.modules() if isinstance(m, modules) and not isinstance(m, listed)]
    held = {id(p) for layer in layers for _, p in own_parameters(layer)}
    names = []
    for name, p in module.named_parameters():  # a tied parameter once, by its first name
        if p.dim() >= 2 and p.requires_grad and id(p) not in held:
            owner = module.get_submodule(re.sub(rf"(^|\.){_OWN}$", "", name))
            names.append(f"{name} ({layer_kind(owner)})")
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


def check_selection(
    modules: object, predicate: object = None, names: Iterable[str] | None = None
) -> None:
    """Raise a ``TypeError`` or ``ValueError`` naming what is wrong with a selection: ``modules``
    must be a non-empty tuple of ``nn.Module`` subclasses, ``predicate`` callable, ``names`` no
    string, and at most one of ``predicate`` and ``names`` given.

    Examples:
        >>> check_selection((nn.Linear,), names="fc.weight")
        Traceback (most recent call last):
        TypeError: `names` must be an iterable of parameter names, not a string: 'fc.weight'.
    """
    if (
        not isinstance(modules, tuple)
        or not modules
        or not all(isinstance(m, type) and issubclass(m, nn.Module) for m in modules)
    ):
        raise TypeError(
            f"`modules` must be a non-empty tuple of nn.Module subclasses, got {modules!r}."
        )
    if predicate is not None and not callable(predicate):
        raise TypeError(f"`predicate` must be callable, got {type(predicate).__name__}.")
    if isinstance(names, str):
        raise TypeError(f"`names` must be an iterable of parameter names, not a string: {names!r}.")
    if predicate is not None and names is not None:
        raise ValueError("Pass at most one of `predicate` and `names`, got both.")
