"""Max-norm on plain tensors and modules: each output unit's incoming weights rescaled to norm
``<= max_value``, equal to ``torch.renorm`` to the last bit. No Lightning import."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from lightning_reg._validation import check_number, check_positive
from lightning_reg.penalties import is_dtensor, local, tensor_list
from lightning_reg.selection import (
    Kernel,
    check_selection,
    layer_kernels,
    layer_kind,
    outside_message,
    outside_parameters,
)

__all__ = ["DEFAULT_MAX_NORM_MODULES", "apply_max_norm_"]

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
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


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
    ``renorm_`` on each weight, which always writes every row. The multi-tensor path
    (``foreach=True``, the default ``None``) does only the work a bound needs: it takes the row
    norms of every weight (the infinity norm exactly, as ``max(amax, -amin)`` per row); on CPU,
    where reading them to the host is free, it leaves the weights without a row over the bound
    untouched and scales the others by one ``torch._foreach_mul_``; on an accelerator it never
    syncs with the host: the factor, clamped to 1 for rows within the bound, multiplies every
    weight (the ``clip_grad_norm_`` pattern).

    A ``DTensor`` weight whose placements are all ``Shard(0)`` or ``Replicate()`` (FSDP2, DDP
    replicas) is constrained through its local tensor, since every rank holds whole rows.

    Args:
        weights: a module, whose trainable kernels of every layer of a type in ``modules``
            are constrained (biases never), or the tensors themselves (each with ``>= 2`` dims; a
            single tensor counts as one weight).
        max_value: the largest allowed norm, finite and ``> 0``. Default ``1.0``.
        norm_type: ``p`` of the p-norm, a number ``>= 1`` or ``math.inf``. Default ``2.0``.
        modules: layer types selected when ``weights`` is a module. Default
            :data:`DEFAULT_MAX_NORM_MODULES`; add ``nn.Embedding`` or ``nn.Bilinear`` to opt
            in. Transposed convolutions are refused: their dim 0 is the input channel.
        foreach: ``False`` for the per-tensor reference, ``True`` or ``None`` (default) for the
            multi-tensor path.

    Raises:
        TypeError: if an argument has the wrong type, or a weight is not a floating-point tensor.
        ValueError: if a number is out of range, a weight has fewer than 2 dims, or a DTensor is
            split along a dim other than 0 (its rows are spread over ranks).

    Warns:
        UserWarning: if ``weights`` is a module with no selected weight, or with weights it
            leaves out (see :func:`max_norm_targets`).

    Example:
        >>> from lightning_reg import apply_max_norm_
        >>> layer = nn.Linear(4, 3)
        >>> with torch.no_grad():
        ...     _ = layer.weight.fill_(1.0)  # rows of norm 2
        >>> apply_max_norm_(layer, max_value=1.0)
        >>> bool((layer.weight.norm(dim=1) <= 1.0).all())
        True
    """
    max_value, norm_type = check_max_norm(max_value, modules, norm_type, foreach)
    if isinstance(weights, nn.Module):
        tensors, skipped, outside = max_norm_targets(weights, modules, norm_type)
        if skipped or outside or not tensors:
            message = unconstrained_message("apply_max_norm_", weights, skipped, outside)
            warnings.warn(message, UserWarning, stacklevel=2)
    else:
        tensors = tensor_list(weights)
    max_norm_(row_groups(tensors), max_value, norm_type, foreach)


def row_groups(tensors: Iterable[torch.Tensor]) -> list[list[torch.Tensor]]:
    """What :func:`max_norm_` takes: the tensors whose rows are renormed, a DTensor's local shard
    (whole rows) in its place, grouped by device, dtype and ndim, empty ones left out (the
    ``MaxNorm`` callback groups its weights once, not at every step). Each is checked: a
    floating-point tensor of two or more dims."""
    groups: dict[tuple[torch.device, torch.dtype, int], list[torch.Tensor]] = {}
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"`weights` must hold tensors, got {type(t).__name__}.")
        if is_dtensor(t) and not all(p.is_replicate() or p.is_shard(0) for p in t.placements):
            raise ValueError(
                f"max-norm needs whole rows on every rank: a DTensor weight of shape "
                f"{tuple(t.shape)} has placements {t.placements}; only Shard(0) and Replicate() "
                "are supported (rows split across ranks cannot be renormed locally)."
            )
        w = local(t)
        if not w.is_floating_point():
            raise TypeError(f"max-norm needs floating-point weights, got dtype {w.dtype}.")
        if w.dim() < 2:
            raise ValueError(
                f"max-norm acts on the rows of weights with >= 2 dims, got shape {tuple(w.shape)} "
                "(a bias or a normalization parameter?)."
            )
        if w.numel() > 0:
            groups.setdefault((w.device, w.dtype, w.dim()), []).append(w)
    return list(groups.values())


def max_norm_(
    groups: list[list[torch.Tensor]],
    max_value: float,
    norm_type: float,
    foreach: bool | None = None,
    *,
    host_check: bool | None = None,
) -> None:
    """The max-norm of :func:`row_groups`: torch's ``renorm_`` on each tensor if ``foreach`` is
    ``False``, else per group the factor ``max_value / (norm + 1e-7)`` where a row's norm is over
    the bound, else 1.0, in the dtype ``torch.renorm`` computes it in (float32 for halves), and
    one ``torch._foreach_mul_``. With ``host_check`` (default: on CPU) one host read of each
    tensor's largest row norm first leaves out the tensors with no row over the bound (a NaN row
    counts as over; its factor is 1.0, as in ``torch.renorm``)."""
    with torch.no_grad():
        for ws in groups:
            if foreach is False:
                for w in ws:
                    w.renorm_(norm_type, 0, max_value)
                continue
            dims = tuple(range(1, ws[0].dim()))  # a row: every dim but 0
            acc = torch.promote_types(ws[0].dtype, torch.float32)
            if norm_type == math.inf:  # max(amax, -amin) per row: exact in any dtype, and on CPU
                norms = [w.amax(dims, keepdim=True) for w in ws]  # faster than vector_norm's
                smallest = [w.amin(dims, keepdim=True) for w in ws]  # (docs/max_norm.md)
                torch._foreach_neg_(smallest)
                torch._foreach_maximum_(norms, smallest)
            else:
                norms = [torch.linalg.vector_norm(w, norm_type, dims, True, dtype=acc) for w in ws]
            if ws[0].is_cpu if host_check is None else host_check:
                maxima = torch.stack(torch._foreach_max(norms)).tolist()
                over = [i for i, largest in enumerate(maxima) if not largest <= max_value]
                if not over:
                    continue
                ws, norms = [ws[i] for i in over], [norms[i] for i in over]
            norm = torch.cat(norms) if len(norms) > 1 else norms[0]
            if norm.dtype != acc:  # the infinity norm of a half type, taken exactly in it
                norm = norm.to(acc)
            factor = torch.where(norm > max_value, torch.div(max_value, norm + _RENORM_EPS), 1.0)
            torch._foreach_mul_(ws, list(factor.to(ws[0].dtype).split([w.shape[0] for w in ws])))


def max_norm_targets(
    module: nn.Module,
    modules: tuple[type[nn.Module], ...],
    norm_type: float,
    reach: tuple[type[nn.Module], ...] = (),
) -> tuple[list[torch.Tensor], list[str], list[str]]:
    """The trainable tensors max-norm constrains in ``module``, by name what it cannot, and, with
    the default ``modules``, by name the parameters that no layer of a type in ``modules`` or
    ``reach`` (another constraint's layer types) holds (``outside_parameters``).

    A plain kernel is its own target. A kernel under ``torch.nn.utils.parametrize`` is not a
    parameter: the optimizer updates its originals, whose rows are not the kernel's rows. For
    ``parametrizations.weight_norm`` along dim 0 (``original0``, ``original1``) the row 2-norm of
    the kernel is ``|g_i|``, so the magnitude ``g`` (``original0``) is the target. Every other
    parametrization, weight norm with ``norm_type != 2``, and whatever else a layer in
    ``modules`` holds (:func:`~lightning_reg.selection.layer_kernels`) are named.
    """
    found, skipped = layer_kernels(module, modules)
    targets: dict[int, torch.Tensor] = {}  # by id: a tied kernel once
    for kernel in found:  # the target is params[0]: the kernel itself, or weight norm's g
        why = ""
        if parametrize.is_parametrized(kernel.layer, kernel.attr):
            if not _is_weight_norm(kernel):
                why = "parametrized"
            elif norm_type != 2.0:
                why = "weight norm bounds 2-norms only"
        if why:
            skipped.append(f"{kernel.name} ({layer_kind(kernel.layer)}, {why})")
        elif kernel.params[0].requires_grad:
            targets[id(kernel.params[0])] = kernel.params[0]
    default = modules == DEFAULT_MAX_NORM_MODULES  # not layer types the user chose
    outside = outside_parameters(module, modules + reach) if default else []
    return list(targets.values()), skipped, outside


def _is_weight_norm(kernel: Kernel) -> bool:
    """Whether ``kernel`` is weight norm along dim 0: one parametrization of two originals
    ``(g, v)``, one number of ``g`` per row of ``v``, whose output has rows of norm ``|g_i|``
    whatever the lengths of ``v``'s rows. Only that two-original form is evaluated to check it,
    on ``v`` with its rows scaled unevenly, so a look-alike ``g * v`` whose ``v`` starts with
    unit rows is told apart (weight norm is a pure function; ``spectral_norm``, one original,
    never is)."""
    listed = list(kernel.layer.get_submodule(f"parametrizations.{kernel.attr}").children())
    if len(kernel.params) != 2 or len(listed) != 1:
        return False
    g, v = map(local, kernel.params)
    if not (g.dim() == v.dim() >= 2 and g.shape[0] == v.shape[0] and g[0].numel() == 1):
        return False
    with torch.no_grad():
        uneven = torch.arange(1, len(v) + 1, dtype=torch.float64).view(-1, *[1] * (v.dim() - 1))
        kernel_rows = listed[0](g.double(), v.double() * uneven).flatten(1)
        rows = torch.linalg.vector_norm(kernel_rows, dim=1)
        magnitudes = g.flatten().double().abs()
        return rows.shape == magnitudes.shape and torch.allclose(rows, magnitudes, rtol=1e-3)


def unconstrained_message(
    who: str, module: nn.Module, skipped: list[str], outside: list[str]
) -> str:
    """The warning naming what max-norm leaves out of ``module``: ``skipped`` (from
    :func:`max_norm_targets`) and ``outside`` (from ``outside_parameters``); with neither, that it
    found nothing to constrain."""
    name = type(module).__name__
    parts = []
    if skipped:
        parts.append(
            f"{who} does not constrain these weights of {name}: {'; '.join(skipped)}. Only "
            "kernels that are parameters, and the magnitude of torch.nn.utils.parametrizations."
            "weight_norm, can be bounded; leave their layer types out of `modules` if intended."
        )
    if outside:
        who_not = f"{who} does not constrain"
        parts.append(outside_message(who_not, module, outside, "DEFAULT_MAX_NORM_MODULES", _HOW))
    return " ".join(parts) or f"{who} found no trainable kernel of a layer in `modules` in {name}."


_HOW = (
    "To constrain them, pass `modules=` with their layer types added, if dim 0 of each weight "
    "indexes its output units (an nn.Embedding's rows are its vectors; transposed convolutions "
    "cannot be constrained)"
)


def check_max_norm(
    max_value: object, modules: tuple[type[nn.Module], ...], norm_type: object, foreach: object
) -> tuple[float, float]:
    """The arguments of :func:`apply_max_norm_` and ``MaxNorm`` checked, ``max_value`` and
    ``norm_type`` as floats; an error names a wrong one."""
    check_selection(modules)
    transposed = [m.__name__ for m in modules if issubclass(m, _TRANSPOSED)]
    if transposed:
        raise ValueError(
            f"`modules` cannot hold transposed convolutions ({', '.join(transposed)}): dim 0 of "
            "their weight is the input channel, so renorming it would bound outgoing, not "
            "incoming, vectors."
        )
    if foreach is not None and not isinstance(foreach, bool):
        raise TypeError(f"`foreach` must be True, False or None, got {foreach!r}.")
    if norm_type != math.inf:
        norm_type = check_number("norm_type", norm_type, ">= 1 or math.inf", lambda p: p >= 1)
    return check_positive("max_value", max_value), float(norm_type)
