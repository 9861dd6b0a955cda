"""Weight selection, the l1/l2 penalty (value, gradient, proximal step) and max-norm.

Pure functions over a plain ``nn.Module`` or a list of tensors: no Lightning import and no host
sync. Each penalty operation has one plain reference path (a loop over torch's own kernels) and,
where measured faster, one multi-tensor path behind an explicit ``foreach`` option, as
``torch.optim`` does.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple, TypeGuard, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from lightning_reg._validation import check_non_negative, check_positive

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

__all__ = [
    "DEFAULT_MAX_NORM_MODULES",
    "DEFAULT_PENALIZED_MODULES",
    "add_penalty_grad_",
    "apply_max_norm_",
    "select_weights",
    "soft_threshold_",
    "weight_penalty",
    "zero_fraction",
]

DEFAULT_PENALIZED_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
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

DEFAULT_MAX_NORM_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.RNNBase,
    nn.RNNCellBase,
    nn.MultiheadAttention,
)
"""Layers whose kernel rows are max-norm constrained by default: Linear, Conv1d/2d/3d, RNN, LSTM,
GRU and their cells (input and recurrent weights), ``MultiheadAttention`` (input projection)."""

# The epsilon torch.renorm adds to the norm (fixed in its kernel).
_RENORM_EPS = 1e-7
# The multi-tensor penalty gradient takes weights below _SMALL_NUMEL elements through foreach
# kernels (sign(w) temporaries at most _SIGN_CHUNK_NUMEL elements at a time), bigger ones one by
# one (the split measured in docs/regularization.md, "The pure functions").
_SMALL_NUMEL = 1 << 15
_SIGN_CHUNK_NUMEL = 1 << 18


def select_weights(
    module: nn.Module,
    modules: tuple[type[nn.Module], ...] = DEFAULT_PENALIZED_MODULES,
    predicate: Callable[[str, nn.Parameter], bool] | None = None,
    names: Iterable[str] | None = None,
    *,
    trainable_only: bool = True,
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
    ``weight_g`` and ``weight_v``). A kernel that is neither a parameter nor one of those forms
    is named in a warning.

    Args:
        module: the model to select from.
        modules: layer types whose kernels are selected. Default
            :data:`DEFAULT_PENALIZED_MODULES`.
        predicate: ``predicate(full_name, parameter) -> bool`` picks parameters instead of
            ``modules``. It sees every name of a tied parameter. Default ``None``.
        names: exact full parameter names (as in ``named_parameters()``) to pick instead of
            ``modules``. Default ``None``.
        trainable_only: leave out parameters with ``requires_grad=False``. Default ``True``;
            ``False`` returns frozen ones too (the callers that filter at each step).

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
    selected = _select_weights(module, modules, predicate, names, trainable_only=trainable_only)
    if not selected:
        warnings.warn(
            f"No trainable parameter of {type(module).__name__} was selected for regularization "
            "(check `modules`, `predicate` or `names`).",
            UserWarning,
            stacklevel=2,
        )
    return selected


def _select_weights(
    module: nn.Module,
    modules: tuple[type[nn.Module], ...],
    predicate: Callable[[str, nn.Parameter], bool] | None = None,
    names: Iterable[str] | None = None,
    *,
    trainable_only: bool = True,
) -> list[nn.Parameter]:
    """:func:`select_weights` without the warning on an empty selection."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"`module` must be an nn.Module, got {type(module).__name__}.")
    _check_module_types("modules", modules)
    if predicate is not None and names is not None:
        raise ValueError("Pass at most one of `predicate` and `names`, got both.")
    named = list(module.named_parameters(remove_duplicate=False))
    if predicate is not None:
        if not callable(predicate):
            raise TypeError(f"`predicate` must be callable, got {type(predicate).__name__}.")
        chosen = {id(p) for name, p in named if predicate(name, p)}
    elif names is not None:
        chosen = _ids_of_names(named, names)
    else:
        chosen = _ids_of_kernels(module, modules)
    selected: list[nn.Parameter] = []
    seen: set[int] = set()
    for _, p in named:
        if id(p) in chosen and id(p) not in seen and (p.requires_grad or not trainable_only):
            seen.add(id(p))
            selected.append(p)
    return selected


def _ids_of_kernels(module: nn.Module, modules: tuple[type[nn.Module], ...]) -> set[int]:
    """Ids of the parameters behind the kernels of every layer of a type in ``modules``."""
    chosen: set[int] = set()
    unresolved: list[str] = []
    for layer_name, layer in module.named_modules():
        if not isinstance(layer, modules):
            continue
        for kernel in _kernels(layer):
            if kernel.params is None:
                unresolved.append(f"{layer_name}.{kernel.name} ({type(layer).__name__})")
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


class _Kernel(NamedTuple):
    """A kernel of a layer and the parameters the optimizer updates for it."""

    name: str  # the layer's attribute: "weight", "weight_hh_l0", "in_proj_weight"
    params: list[nn.Parameter] | None  # None: neither a parameter nor a known reparametrization
    kind: Literal["parameter", "parametrize", "weight_norm", "spectral_norm"]


def _kernels(layer: nn.Module) -> list[_Kernel]:
    """The kernels of ``layer`` (never biases), each with the parameters behind it.

    The one recognizer of reparametrized kernels, for the selection and for max-norm: a kernel
    under ``torch.nn.utils.parametrize`` (its originals), and the older hook-based
    ``torch.nn.utils.weight_norm`` (``<name>_g``, ``<name>_v``) and ``spectral_norm``
    (``<name>_orig``), which replace the kernel's parameter by their own.
    """
    own = dict(layer.named_parameters(recurse=False))
    return [_kernel(layer, name, own) for name in _kernel_names(layer, own)]


def _kernel_names(layer: nn.Module, own: dict[str, nn.Parameter]) -> list[str]:
    """Attribute names of a layer's kernels (never biases); ``own``: its direct parameters."""
    if isinstance(layer, nn.MultiheadAttention):
        names = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
        return [n for n in names if getattr(layer, n, None) is not None]
    if isinstance(layer, (nn.RNNBase, nn.RNNCellBase)):
        found = [_hooked_name(n, own) for n in own if n.startswith("weight_")]
        if parametrize.is_parametrized(layer):
            parametrized = cast(nn.ModuleDict, layer.parametrizations)
            found += [n for n in parametrized if n.startswith("weight_")]
        return list(dict.fromkeys(found))  # weight norm's `_g` and `_v` name one kernel
    return ["weight"] if hasattr(layer, "weight") else []


def _hooked_name(param: str, own: dict[str, nn.Parameter]) -> str:
    """The kernel a hook-based weight norm or spectral norm parameter stands for, else ``param``."""
    if param.endswith("_orig"):
        return param.removesuffix("_orig")
    stem = param[:-2]
    if param.endswith(("_g", "_v")) and stem + "_g" in own and stem + "_v" in own:
        return stem
    return param


def _kernel(layer: nn.Module, name: str, own: dict[str, nn.Parameter]) -> _Kernel:
    """Kernel ``name`` of ``layer`` and the parameters behind it."""
    if parametrize.is_parametrized(layer, name):
        originals = cast(nn.ModuleDict, layer.parametrizations)[name]
        return _Kernel(name, list(originals.parameters(recurse=False)), "parametrize")
    if name in own:
        return _Kernel(name, [own[name]], "parameter")
    if name + "_orig" in own:
        return _Kernel(name, [own[name + "_orig"]], "spectral_norm")
    if name + "_g" in own and name + "_v" in own:
        return _Kernel(name, [own[name + "_g"], own[name + "_v"]], "weight_norm")
    return _Kernel(name, [] if getattr(layer, name, None) is None else None, "parameter")


def weight_penalty(
    params: Iterable[torch.Tensor], l1: float = 0.0, l2: float = 0.0
) -> torch.Tensor:
    """Return ``l1 * sum(|w|) + l2 * sum(w ** 2)`` over all ``params`` as a 0-dim tensor.

    Plain autograd over torch's own kernels, one tensor at a time, so it is differentiable to
    any order and its gradient is ``l1 * sign(w) + 2 * l2 * w`` (zero pull where ``w == 0``).
    Sums accumulate in float32 (float64 if a weight is float64), so half-precision weights
    neither overflow nor lose the sum. DTensor weights (FSDP2) give the plain full value on every
    rank. No host sync. Training does not need this value: :func:`add_penalty_grad_` adds the
    gradient directly; this is for logging and for losses you build yourself.

    Args:
        params: the tensors to penalize (e.g. from :func:`select_weights`). A single tensor
            counts as one parameter.
        l1: factor of the l1 term, finite and ``>= 0``. Default ``0.0`` (term skipped).
        l2: factor of the l2 term, finite and ``>= 0``. Default ``0.0`` (term skipped).

    Returns:
        The penalty; ``0.`` if ``params`` is empty or both factors are zero.

    Raises:
        TypeError: if a factor is not a real number (``bool`` included).
        ValueError: if a factor is negative or not finite.

    Examples:
        >>> w = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
        >>> weight_penalty([w], l1=0.1, l2=0.01)
        tensor(0.7400)
    """
    l1 = check_non_negative("l1", l1)
    l2 = check_non_negative("l2", l2)
    tensors = _tensor_list(params)
    if not tensors or (l1 == 0.0 and l2 == 0.0):
        return torch.zeros((), device=tensors[0].device if tensors else None)
    terms = []
    for w in tensors:
        wide = w.to(torch.promote_types(w.dtype, torch.float32))
        if l1 != 0.0:
            terms.append(wide.abs().sum() * l1)
        if l2 != 0.0:
            terms.append(wide.square().sum() * l2)
    total = functools.reduce(torch.add, terms)
    return total.full_tensor() if _is_dtensor(total) else total


def add_penalty_grad_(
    params: Iterable[torch.Tensor],
    l1: float = 0.0,
    l2: float = 0.0,
    scale: float | torch.Tensor = 1.0,
    *,
    foreach: bool = True,
) -> None:
    """Add ``scale * (l1 * sign(w) + 2 * l2 * w)``, the penalty's gradient, to ``w.grad`` in place.

    This is what ``(scale * weight_penalty(params, l1, l2)).backward()`` accumulates, without
    the graph, the value or the temporaries of autograd. A weight whose ``.grad`` is ``None``
    gets one; a sparse ``.grad`` (``nn.Embedding(sparse=True)``) is made dense, as autograd
    makes it when the penalty is in the loss. ``scale`` may be a 0-dim tensor (a
    ``GradScaler``'s scale) and is then applied without a host sync. DTensor weights (FSDP2)
    are updated shard by shard: the gradient of a shard depends on that shard only.

    Args:
        params: the weights (e.g. from :func:`select_weights`); a single tensor is one weight.
        l1: factor of the l1 term, finite and ``>= 0``. Default ``0.0``.
        l2: factor of the l2 term, finite and ``>= 0``. Default ``0.0``.
        scale: multiplies the whole gradient: a number, or a 0-dim tensor on the weights'
            device. Default ``1.0``.
        foreach: ``True`` uses the multi-tensor ``torch._foreach_*`` kernels (fewer dispatches,
            same arithmetic; measured faster on CPU in ``benchmarks/overhead.py``), ``False`` the
            reference loop over the weights, one torch kernel per term. Default ``True``.

    Raises:
        TypeError: if a factor is not a real number.
        ValueError: if a factor is negative or not finite.

    Examples:
        >>> w = nn.Parameter(torch.tensor([[1.0, -2.0], [0.0, 3.0]]))
        >>> add_penalty_grad_([w], l1=0.1, l2=0.01)
        >>> w.grad
        tensor([[ 0.1200, -0.1400],
                [ 0.0000,  0.1600]])
    """
    l1 = check_non_negative("l1", l1)
    l2 = check_non_negative("l2", l2)
    weights = _tensor_list(params)
    if not weights or (l1 == 0.0 and l2 == 0.0):
        return
    _add_penalty_grad(weights, l1, l2, scale, foreach)


def _add_penalty_grad(
    weights: list[torch.Tensor],
    l1: float,
    l2: float,
    scale: float | torch.Tensor,
    foreach: bool,
    sparse: bool = True,
) -> None:
    """:func:`add_penalty_grad_` after validation (the per-step entry point). ``sparse=False``
    skips the check for sparse gradients, for a caller that knows there are none."""
    with torch.no_grad():
        grads = [w.grad for w in weights]
        missing = any(g is None for g in grads)
        if missing or (sparse and any(cast(torch.Tensor, g).is_sparse for g in grads)):
            for w in weights:
                if w.grad is None:
                    w.grad = torch.zeros_like(w)
                elif w.grad.is_sparse:  # nn.Embedding(sparse=True): the sum is dense, as
                    w.grad = w.grad.to_dense()  # autograd makes it with the penalty in the loss
            grads = [w.grad for w in weights]
        ws = weights
        if any(_is_dtensor(w) for w in weights):  # FSDP2: each shard where it lies
            ws = [_local(w) for w in weights]
            grads = [_local(g) for g in grads]  # type: ignore[arg-type]
        add = _add_penalty_grad_foreach if foreach else _add_penalty_grad_loop
        add(grads, ws, l1, l2, scale)  # type: ignore[arg-type]


def _add_penalty_grad_loop(
    grads: list[torch.Tensor],
    ws: list[torch.Tensor],
    l1: float,
    l2: float,
    scale: float | torch.Tensor,
) -> None:
    """The reference: one weight at a time, torch's own in-place kernels."""
    for g, w in zip(grads, ws, strict=True):
        if isinstance(scale, torch.Tensor):
            if l2 != 0.0:
                g.addcmul_(w, scale, value=2.0 * l2)
            if l1 != 0.0:
                g.addcmul_(torch.sign(w), scale, value=l1)
        else:
            if l2 != 0.0:
                g.add_(w, alpha=2.0 * l2 * scale)
            if l1 != 0.0:
                g.add_(torch.sign(w), alpha=l1 * scale)


def _add_penalty_grad_foreach(
    grads: list[torch.Tensor],
    ws: list[torch.Tensor],
    l1: float,
    l2: float,
    scale: float | torch.Tensor,
) -> None:
    """The same sums with multi-tensor kernels for the small weights.

    Weights below ``_SMALL_NUMEL`` elements take one multi-tensor kernel per term, the ``sign(w)``
    temporaries of l1 made a chunk of ``_SIGN_CHUNK_NUMEL`` elements at a time. Bigger weights
    take both terms one weight at a time, as the reference does: each is then read while still
    in cache, and its temporary reuses warm memory (fresh pages for the temporaries of many big
    weights at once cost more than the arithmetic on CPU).
    """
    small = [i for i, w in enumerate(ws) if w.numel() < _SMALL_NUMEL]
    if len(small) < len(ws):
        big = [i for i, w in enumerate(ws) if w.numel() >= _SMALL_NUMEL]
        _add_penalty_grad_loop([grads[i] for i in big], [ws[i] for i in big], l1, l2, scale)
        grads, ws = [grads[i] for i in small], [ws[i] for i in small]
    if not ws:
        return
    if l2 != 0.0:
        if isinstance(scale, torch.Tensor):
            torch._foreach_add_(grads, torch._foreach_mul(ws, scale), alpha=2.0 * l2)
        else:
            torch._foreach_add_(grads, ws, alpha=2.0 * l2 * scale)
    if l1 == 0.0:
        return
    for lo, hi in _chunks(ws, _SIGN_CHUNK_NUMEL):
        signs = torch._foreach_sign(ws[lo:hi])
        if isinstance(scale, torch.Tensor):
            torch._foreach_mul_(signs, scale)
            torch._foreach_add_(grads[lo:hi], signs, alpha=l1)
        else:
            torch._foreach_add_(grads[lo:hi], signs, alpha=l1 * scale)


def _chunks(tensors: list[torch.Tensor], numel: int) -> Iterator[tuple[int, int]]:
    """Consecutive ``(lo, hi)`` index ranges holding at most ``numel`` elements (or one tensor)."""
    lo, total = 0, 0
    for i, t in enumerate(tensors):
        n = t.numel()
        if i > lo and total + n > numel:
            yield lo, i
            lo, total = i, 0
        total += n
    if lo < len(tensors):
        yield lo, len(tensors)


def soft_threshold_(params: Iterable[torch.Tensor], threshold: float | torch.Tensor) -> None:
    """The proximal step of ``l1``: ``w <- sign(w) * max(|w| - threshold, 0)`` in place.

    Applied after an optimizer step with ``threshold = lr * l1``, it is the exact minimizer of
    ``l1 * sum|w| + ||w - w_step||**2 / (2 * lr)``: weights that the step left within
    ``threshold`` of zero become exactly ``0.0``, the others move ``threshold`` towards zero. It
    is elementwise, so a DTensor shard (FSDP2) is thresholded where it lies, and DDP replicas,
    holding equal weights, stay equal.

    Args:
        params: the weights; a single tensor is one weight.
        threshold: ``lr * l1``, a number ``>= 0`` or a 0-dim tensor (a tensor learning rate).

    Examples:
        >>> w = torch.tensor([0.5, 0.05, -2.0])
        >>> soft_threshold_([w], 0.1)
        >>> w
        tensor([ 0.4000,  0.0000, -1.9000])
    """
    with torch.no_grad():
        for w in _tensor_list(params):
            local = _local(w)
            if isinstance(threshold, torch.Tensor):
                shrunk = (local.abs() - threshold).clamp_(min=0).mul_(torch.sign(local))
            else:
                shrunk = F.softshrink(local, threshold)  # == sign(w) * max(|w| - t, 0), bitwise
            local.copy_(shrunk)


def zero_fraction(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """The fraction of elements that are exactly ``0.0`` over all ``params`` (a 0-dim float32
    tensor, no host sync; DTensors count every shard).

    Examples:
        >>> zero_fraction([torch.tensor([0.0, 1.0]), torch.zeros(2)])
        tensor(0.7500)
    """
    tensors = _tensor_list(params)
    if not tensors:
        return torch.zeros(())
    zeros = functools.reduce(torch.add, [(w == 0).sum() for w in tensors])
    if _is_dtensor(zeros):
        zeros = zeros.full_tensor()
    return zeros.float() / sum(w.numel() for w in tensors)


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (a view its in-place ops write through), else ``t``."""
    return t.to_local() if _is_dtensor(t) else t


def apply_max_norm_(
    weights: nn.Module | Iterable[torch.Tensor],
    max_value: float = 1.0,
    norm_type: float = 2.0,
    modules: tuple[type[nn.Module], ...] = DEFAULT_MAX_NORM_MODULES,
    *,
    foreach: bool | None = None,
) -> None:
    """Rescale in place each output unit's incoming weight vector whose norm exceeds ``max_value``.

    The incoming vector of output unit ``i`` is ``w[i]``: a row of a Linear weight, the whole
    filter of a Conv weight (the norm runs over every dim but 0). The result is
    ``torch.renorm(w, norm_type, 0, max_value)`` to the last bit: a row with norm
    ``n > max_value`` is multiplied by ``max_value / (n + 1e-7)``, every other row stays
    bit-identical.

    Two paths give that same result. The reference (``foreach=False``) is torch's own
    ``renorm_`` on each weight. The multi-tensor path (``foreach=True``) first takes the row
    norms of every weight (the infinity norm exactly, as ``max(amax, -amin)`` per row), reads
    each weight's largest row norm to the host, leaves the weights without a row over the bound
    untouched and scales the others by one ``torch._foreach_mul_``: it skips the write pass that
    ``renorm_`` always makes, but costs a few more small ops when rows are over the bound.
    Reading those norms is a host sync, free on CPU and costly on an accelerator. On CPU the
    multi-tensor path measured faster for ``norm_type=math.inf`` (``renorm_``'s infinity norm
    kernel is slow there) and, with a finite ``p``, for weights of a million elements or more
    unless every row is over the bound; ``renorm_`` was faster on smaller weights with rows over
    the bound. So ``foreach=None`` (the default) takes the multi-tensor path on CPU for the
    infinity norm or weights of :data:`_FOREACH_NUMEL` elements or more on average, and the
    reference everywhere else (docs/max_norm.md, "Cost of max-norm").

    A ``DTensor`` weight whose placements are all ``Shard(0)`` or ``Replicate()`` (FSDP2, DDP
    replicas) is constrained through its local tensor, since every rank holds whole rows; the
    result is the same as on the full tensor.

    Args:
        weights: a module, whose trainable ``.weight`` of every submodule of a type in ``modules``
            is constrained (biases never), or the tensors themselves (each with ``>= 2`` dims; a
            single tensor counts as one weight).
        max_value: the largest allowed norm, finite and ``> 0``. Default ``1.0``.
        norm_type: ``p`` of the p-norm, a number ``>= 1`` or ``math.inf``. Default ``2.0``.
        modules: layer types selected when ``weights`` is a module. Default
            ``DEFAULT_MAX_NORM_MODULES`` (Linear, Conv1d/2d/3d); add ``nn.Embedding`` or
            ``nn.Bilinear`` to opt in. Transposed convolutions are refused: their dim 0 is the
            input channel, not the output unit.
        foreach: ``True`` for the multi-tensor path, ``False`` for the per-tensor reference,
            ``None`` (default) for the multi-tensor path on CPU and the reference elsewhere.

    Raises:
        TypeError: if an argument has the wrong type, or a weight is not a floating-point tensor.
        ValueError: if a number is out of range, a weight has fewer than 2 dims, or a DTensor is
            split along a dim other than 0 (its rows are spread over ranks).

    Warns:
        UserWarning: if ``weights`` is a module with no selected weight.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from lightning_reg import apply_max_norm_
        >>> layer = nn.Linear(4, 3)
        >>> with torch.no_grad():
        ...     _ = layer.weight.mul_(10.0)
        >>> apply_max_norm_(layer, max_value=1.0)
        >>> bool((layer.weight.norm(dim=1) <= 1.0).all())
        True
    """
    max_value = check_positive("max_value", max_value)
    norm_type = _check_norm_type(norm_type)
    foreach = _check_foreach(foreach)
    if isinstance(weights, nn.Module):
        _check_max_norm_modules("modules", modules)
        targets, skipped = _max_norm_targets(weights, modules, norm_type)
        outside = _outside_layers(weights, modules) if modules == DEFAULT_MAX_NORM_MODULES else []
        if outside:
            warnings.warn(
                _outside_message("apply_max_norm_", weights, outside), UserWarning, stacklevel=2
            )
        if skipped:
            warnings.warn(
                f"apply_max_norm_ does not constrain these kernels: {'; '.join(skipped)}.",
                UserWarning,
                stacklevel=2,
            )
        elif not targets and not outside:
            warnings.warn(
                f"apply_max_norm_ found no trainable kernel of a layer in `modules` in "
                f"{type(weights).__name__}.",
                UserWarning,
                stacklevel=2,
            )
        tensors: list[torch.Tensor] = list(targets)
    else:
        tensors = _tensor_list(weights)
    _max_norm_([_local_rows(t) for t in tensors], max_value, norm_type, foreach)


def _max_norm_(
    rows: list[torch.Tensor], max_value: float, norm_type: float, foreach: bool | None
) -> None:
    """:func:`apply_max_norm_` on tensors already checked by :func:`_local_rows` (plain tensors
    whose dim 0 indexes output units)."""
    if not rows:
        return
    if foreach is None:
        foreach = _default_foreach(rows, norm_type)
    with torch.no_grad():
        if foreach:
            _max_norm_foreach_(_row_groups(rows), max_value, norm_type)
        else:
            _max_norm_reference_(rows, max_value, norm_type)


# With a finite p, the multi-tensor max-norm path is the CPU default for weights of at least this
# many elements on average (it skips their write pass when no row is over the bound).
_FOREACH_NUMEL = 2**20


def _default_foreach(rows: Sequence[torch.Tensor], norm_type: float) -> bool:
    """The path ``foreach=None`` takes: multi-tensor on CPU, where its host read costs nothing,
    for the infinity norm (``renorm_``'s is slow there) or large weights; the reference
    otherwise (and on accelerators, where the host read is a sync)."""
    if not rows or not all(t.device.type == "cpu" for t in rows):
        return False
    return norm_type == math.inf or sum(t.numel() for t in rows) >= _FOREACH_NUMEL * len(rows)


def _max_norm_reference_(rows: list[torch.Tensor], max_value: float, norm_type: float) -> None:
    """The reference: torch's own ``renorm_`` on each tensor."""
    for w in rows:
        w.renorm_(norm_type, 0, max_value)


class _RowGroup(NamedTuple):
    """Non-empty tensors of one dtype and ndim: one pass of the multi-tensor max-norm path."""

    tensors: list[torch.Tensor]
    dtype: torch.dtype
    dims: tuple[int, ...]  # the dims of a row: every dim but 0
    acc: torch.dtype  # the dtype torch.renorm computes norms and factors in


def _row_groups(rows: Iterable[torch.Tensor]) -> list[_RowGroup]:
    """``rows`` by dtype and ndim, empty tensors left out (the ``MaxNorm`` callback groups its
    weights once, not at every step)."""
    groups: dict[tuple[torch.dtype, int], list[torch.Tensor]] = {}
    for w in rows:
        if w.numel() > 0:
            groups.setdefault((w.dtype, w.dim()), []).append(w)
    return [
        _RowGroup(tensors, dtype, tuple(range(1, ndim)), _renorm_acc(dtype))
        for (dtype, ndim), tensors in groups.items()
    ]


def _max_norm_foreach_(groups: list[_RowGroup], max_value: float, norm_type: float) -> None:
    """``renorm_`` on every tensor, writing only the tensors that have a row over the bound.

    Per group: the row norms of every tensor (the read pass); one host read of each tensor's
    largest row norm; then, for the tensors with a row over the bound only, the factor
    ``max_value / (norm + 1e-7)`` (1.0 for rows within the bound), computed in the dtype
    ``torch.renorm`` computes it in, and one ``torch._foreach_mul_``.

    The host comparison is in float64, so it flags every tensor ``torch.renorm``'s float32
    comparison would flag (and, at worst, one whose factors all come out 1.0: written unchanged);
    a tensor with a NaN row norm is flagged too, and its NaN rows get the factor 1.0, as in
    ``torch.renorm``.
    """
    for group in groups:
        norms = _row_norms(group, norm_type)
        maxima = torch.stack(torch._foreach_max(norms)).tolist()
        # `not <=`: a NaN row makes the largest norm NaN; the weight's other rows still count.
        over = [i for i, largest in enumerate(maxima) if not largest <= max_value]
        if not over:
            continue
        ws = [group.tensors[i] for i in over]
        norm = torch.cat([norms[i] for i in over]) if len(over) > 1 else norms[over[0]]
        if norm.dtype != group.acc:  # the infinity norm of a half type, taken exactly in it
            norm = norm.to(group.acc)
        factor = torch.where(norm > max_value, torch.div(max_value, norm + _RENORM_EPS), 1.0)
        if factor.dtype != group.dtype:
            factor = factor.to(group.dtype)
        factors = factor.split([w.shape[0] for w in ws]) if len(ws) > 1 else [factor]
        torch._foreach_mul_(ws, factors)


def _row_norms(group: _RowGroup, norm_type: float) -> list[torch.Tensor]:
    """The norm of every row of every tensor of ``group``, as ``torch.renorm`` takes it (shape
    ``(rows, 1, ...)``).

    The infinity norm is ``max(amax(w), -amin(w))`` per row: exact in any dtype, so equal to
    ``linalg.vector_norm(w, inf)``, but two vectorized reads without a temporary instead of that
    kernel's much slower one (see docs/max_norm.md, "Cost of max-norm").
    """
    if norm_type == math.inf:
        largest = [w.amax(group.dims, keepdim=True) for w in group.tensors]
        smallest = [w.amin(group.dims, keepdim=True) for w in group.tensors]
        torch._foreach_neg_(smallest)
        torch._foreach_maximum_(largest, smallest)
        return largest
    return [
        torch.linalg.vector_norm(w, norm_type, group.dims, True, dtype=group.acc)
        for w in group.tensors
    ]


def _max_norm_targets(
    module: nn.Module, modules: tuple[type[nn.Module], ...], norm_type: float
) -> tuple[list[nn.Parameter], list[str]]:
    """The trainable tensors max-norm constrains in ``module``, and the kernels it cannot.

    The kernels come from the shared selection (:func:`_select_weights` over ``modules``) and
    its recognizer (:func:`_kernels`). A reparametrized kernel is not a parameter: the optimizer
    updates its originals, whose rows are not the kernel's rows. For weight norm along dim 0
    (``parametrizations.weight_norm``'s ``original0``/``original1``, the older
    ``weight_g``/``weight_v``) the row 2-norm of the kernel is ``|g_i|``, so the magnitude ``g``
    is the target; the direction is left alone.
    Every other parametrization, weight norm with ``norm_type != 2``, and any other parameter
    of more than one dim of a layer in ``modules`` (not a bias) that is not a target, is
    returned by name in the second list.
    """
    chosen = {id(p) for p in _select_weights(module, modules)}
    skipped: list[str] = []
    for layer_name, layer in module.named_modules():
        if not isinstance(layer, modules):
            continue
        prefix = f"{layer_name}." if layer_name else ""
        kind = _layer_kind(layer)
        reparametrized: set[int] = set()
        for kernel in _kernels(layer):
            if kernel.kind == "parameter" or kernel.params is None:
                continue
            reparametrized.update(id(p) for p in kernel.params)
            chosen.difference_update(id(p) for p in kernel.params)
            magnitude = _weight_norm_magnitude(layer, kernel)
            if magnitude is not None and norm_type == 2.0:
                if magnitude.requires_grad:
                    chosen.add(id(magnitude))
            elif magnitude is not None:
                skipped.append(f"{prefix}{kernel.name} ({kind}, weight norm bounds 2-norms only)")
            else:
                skipped.append(f"{prefix}{kernel.name} ({kind}, parametrized)")
        for name, p in layer.named_parameters(recurse=False):
            if (
                p.dim() >= 2
                and p.requires_grad
                and "bias" not in name
                and id(p) not in chosen
                and id(p) not in reparametrized
            ):
                skipped.append(f"{prefix}{name} ({kind})")
    targets = [p for p in module.parameters() if id(p) in chosen]
    return targets, skipped


def _layer_kind(layer: nn.Module) -> str:
    """The layer's type name as the user wrote it: torch makes a parametrized layer an instance
    of a subclass ``Parametrized<Layer>``, named here by its base."""
    if parametrize.is_parametrized(layer):
        return type(layer).__mro__[1].__name__
    return type(layer).__name__


def _outside_layers(module: nn.Module, modules: tuple[type[nn.Module], ...]) -> list[str]:
    """Trainable parameters of two or more dims that no layer of a type in ``modules`` holds, by
    name with the type of the module that holds them: what a selection by layer type leaves out
    (a custom layer's weight, a positional embedding, an ``nn.Embedding`` outside ``modules``).

    A layer of a type in ``modules`` holds its own parameters and, when parametrized, the
    originals of its parametrizations; the selection deals with those (its kernels are taken or
    named, the rest are biases). A parameter tied to one such layer is held by it.
    """
    held: set[int] = set()
    outside: list[tuple[str, str, nn.Parameter]] = []
    for layer_name, layer in module.named_modules():
        if isinstance(layer, parametrize.ParametrizationList):
            continue  # its originals are listed with the parametrized layer below
        prefix = f"{layer_name}." if layer_name else ""
        own = list(layer.named_parameters(recurse=False))
        kind = _layer_kind(layer)
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
            outside.extend((f"{prefix}{name}", kind, p) for name, p in own)
    names: list[str] = []
    for name, kind, p in outside:
        if p.dim() >= 2 and p.requires_grad and id(p) not in held:
            held.add(id(p))  # a parameter tied between two such modules is named once
            names.append(f"{name} ({kind})")
    return names


def _outside_message(who: str, module: nn.Module, outside: list[str]) -> str:
    """The warning naming what max-norm leaves out of ``module`` (:func:`_outside_layers`)."""
    return (
        f"{who} does not constrain these trainable parameters of {type(module).__name__}: "
        f"{', '.join(outside)}. They have two or more dims but belong to no layer of a type in "
        "DEFAULT_MAX_NORM_MODULES, the default selection. To constrain them, pass `modules=` "
        "with their layer types added, if dim 0 of each one's weight indexes its output units "
        "(for nn.Embedding each row is one embedding vector; transposed convolutions cannot be "
        "constrained); with `modules` other than the default this check is off."
    )


def _weight_norm_magnitude(layer: nn.Module, kernel: _Kernel) -> nn.Parameter | None:
    """``g`` if ``kernel`` is weight norm along dim 0: the hook-based form, or a parametrization
    whose originals ``(g, v)`` have one number of ``g`` per row of ``v`` and whose computed kernel
    has rows of norm ``|g_i|``."""
    if kernel.kind not in ("weight_norm", "parametrize") or len(kernel.params or ()) != 2:
        return None
    g, v = cast(list[nn.Parameter], kernel.params)
    if not (g.dim() == v.dim() >= 2 and g.shape[0] == v.shape[0] and g[0].numel() == 1):
        return None
    if kernel.kind == "weight_norm":
        return g
    with torch.no_grad():
        computed = getattr(layer, kernel.name)
        rows = torch.linalg.vector_norm(computed.flatten(1).double(), dim=1)
        magnitudes = g.flatten().double().abs()
        matches = rows.shape == magnitudes.shape and torch.allclose(rows, magnitudes, rtol=1e-3)
    return g if matches else None


def _renorm_acc(dtype: torch.dtype) -> torch.dtype:
    """The dtype ``torch.renorm`` accumulates norms in: float32 for half types, else ``dtype``."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _check_foreach(value: object) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"`foreach` must be True, False or None, got {value!r}.")
    return value


def _local_rows(t: torch.Tensor) -> torch.Tensor:
    """The tensor whose rows are renormed: a DTensor's local shard (whole rows), else ``t``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"`weights` must hold tensors, got {type(t).__name__}.")
    if _is_dtensor(t):
        if not all(pl.is_replicate() or pl.is_shard(0) for pl in t.placements):
            raise ValueError(
                f"max-norm needs whole rows on every rank: a DTensor weight of shape "
                f"{tuple(t.shape)} has placements {t.placements}; only Shard(0) and Replicate() "
                "are supported (rows split across ranks cannot be renormed locally)."
            )
        t = _as_local(t)
    if not t.is_floating_point():
        raise TypeError(f"max-norm needs floating-point weights, got dtype {t.dtype}.")
    if t.dim() < 2:
        raise ValueError(
            f"max-norm acts on the rows of weights with >= 2 dims, got shape {tuple(t.shape)} "
            "(a bias or a normalization parameter?)."
        )
    return t


def _as_local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (a view the optimizer's updates reach), else ``t`` itself."""
    return t.to_local() if _is_dtensor(t) else t


def _is_dtensor(t: torch.Tensor) -> TypeGuard[DTensor]:
    dtensor = _dtensor_class()
    return dtensor is not None and isinstance(t, dtensor)


@functools.cache
def _dtensor_class() -> type | None:
    """``DTensor``, imported on first use; ``None`` in a build without ``torch.distributed``."""
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def _tensor_list(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(params, torch.Tensor):
        return [params]
    if not isinstance(params, Iterable):
        raise TypeError(
            f"Expected a tensor or an iterable of tensors, got {type(params).__name__}."
        )
    return list(params)


def _check_norm_type(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`norm_type` must be a number >= 1 or math.inf, got {value!r}.")
    number = float(value)
    if math.isnan(number) or number < 1.0:
        raise ValueError(f"`norm_type` must be a number >= 1 or math.inf, got {value!r}.")
    return number


def _check_module_types(name: str, modules: object) -> tuple[type[nn.Module], ...]:
    if (
        not isinstance(modules, tuple)
        or not modules
        or not all(isinstance(m, type) and issubclass(m, nn.Module) for m in modules)
    ):
        raise TypeError(
            f"`{name}` must be a non-empty tuple of nn.Module subclasses, got {modules!r}."
        )
    return modules


def _check_max_norm_modules(name: str, modules: object) -> None:
    """Layer types for max-norm: no transposed convolutions (their dim 0 is the input channel)."""
    transposed = [
        m.__name__
        for m in _check_module_types(name, modules)
        if issubclass(m, nn.modules.conv._ConvTransposeNd)
    ]
    if transposed:
        raise ValueError(
            f"`{name}` cannot hold transposed convolutions ({', '.join(transposed)}): dim 0 of "
            "their weight is the input channel, so renorming it would bound outgoing, not "
            "incoming, vectors."
        )


def _ids_of_names(named: list[tuple[str, nn.Parameter]], names: Iterable[str]) -> set[int]:
    if isinstance(names, str):
        raise TypeError(f"`names` must be an iterable of parameter names, not a string: {names!r}.")
    by_name = dict(named)
    wanted = list(names)
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        valid = ", ".join(list(by_name)[:5])
        raise ValueError(
            f"Unknown parameter names {unknown} in `names`; valid names include: {valid}."
        )
    return {id(by_name[n]) for n in wanted}
