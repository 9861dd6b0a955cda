"""The l1/l2 weight penalty on plain tensors: its value, its gradient and l1's proximal step.

Pure functions over a list of tensors: no Lightning import and no host sync. Each operation has
one plain reference path (a loop over torch's own kernels) and, where measured faster, one
multi-tensor path behind an explicit ``foreach`` option, as ``torch.optim`` does. Which weights
to pass is :mod:`lightning_reg.selection`'s job (``select_weights`` is importable from here too).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import TypeGuard, cast

import torch
import torch.nn.functional as F

from lightning_reg._validation import check_non_negative
from lightning_reg.selection import select_weights

_DISTRIBUTED = torch.distributed.is_available()  # False in a torch build without it
if _DISTRIBUTED:
    from torch.distributed.tensor import DTensor

__all__ = [
    "add_penalty_grad_",
    "select_weights",
    "soft_threshold_",
    "weight_penalty",
    "zero_fraction",
]


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
    l1, l2 = check_non_negative("l1", l1), check_non_negative("l2", l2)
    tensors = tensor_list(params)
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
    return total.full_tensor() if is_dtensor(total) else total


def add_penalty_grad_(
    params: Iterable[torch.Tensor],
    l1: float = 0.0,
    l2: float = 0.0,
    scale: float = 1.0,
    *,
    foreach: bool = True,
) -> None:
    """Add ``scale * (l1 * sign(w) + 2 * l2 * w)``, the penalty's gradient, to ``w.grad`` in place.

    This is what ``(scale * weight_penalty(params, l1, l2)).backward()`` accumulates, without
    the graph, the value or the temporaries of autograd. A weight whose ``.grad`` is ``None``
    gets one; a sparse ``.grad`` (``nn.Embedding(sparse=True)``) is made dense, as autograd
    makes it when the penalty is in the loss. DTensor weights (FSDP2) are updated shard by
    shard: the gradient of a shard depends on that shard only. No host sync.

    Args:
        params: the weights (e.g. from :func:`select_weights`); a single tensor is one weight.
        l1: factor of the l1 term, finite and ``>= 0``. Default ``0.0``.
        l2: factor of the l2 term, finite and ``>= 0``. Default ``0.0``.
        scale: multiplies the whole gradient (the share of the penalty a step takes). Default
            ``1.0``.
        foreach: with ``l1 = 0``, ``True`` adds the l2 term of every weight in one
            ``torch._foreach_add_`` (fewer dispatches, the same arithmetic), ``False`` one
            ``add_`` per weight. With ``l1 > 0`` each weight takes both terms in turn, one
            ``add_`` each, either way (measured faster than two passes over the weights:
            ``docs/regularization.md``). Default ``True``.

    Raises:
        TypeError: if a factor is not a real number.
        ValueError: if a factor is negative or not finite.

    Examples:
        >>> w = torch.nn.Parameter(torch.tensor([[1.0, -2.0], [0.0, 3.0]]))
        >>> add_penalty_grad_([w], l1=0.1, l2=0.01)
        >>> w.grad
        tensor([[ 0.1200, -0.1400],
                [ 0.0000,  0.1600]])
    """
    l1, l2 = check_non_negative("l1", l1), check_non_negative("l2", l2)
    weights = tensor_list(params)
    if not weights or (l1 == 0.0 and l2 == 0.0):
        return
    with torch.no_grad():
        grads, ws = dense_grads(weights), [local(w) for w in weights]
        if foreach and l1 == 0.0:  # the l2 term of every weight in one kernel
            torch._foreach_add_(grads, ws, alpha=2.0 * l2 * scale)
            return
        for g, w in zip(grads, ws, strict=True):  # both terms while the weight is in cache
            if l2 != 0.0:
                g.add_(w, alpha=2.0 * l2 * scale)
            if l1 != 0.0:
                g.add_(torch.sign(w), alpha=l1 * scale)


def dense_grads(weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The ``.grad`` of each weight, made present and dense as autograd makes it with a penalty
    in the loss: zeros where it is ``None`` (a weight the step's forward did not use), dense where
    it is sparse (``nn.Embedding(sparse=True)``). A DTensor's is its local shard (FSDP2).

    Examples:
        >>> w = torch.nn.Parameter(torch.ones(2))
        >>> dense_grads([w])
        [tensor([0., 0.])]
    """
    for w in weights:
        if w.grad is None:
            w.grad = torch.zeros_like(w)
        elif w.grad.is_sparse:
            w.grad = w.grad.to_dense()
    return [local(cast(torch.Tensor, w.grad)) for w in weights]


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
        for w in tensor_list(params):
            shard = local(w)
            if isinstance(threshold, torch.Tensor):
                shrunk = (shard.abs() - threshold).clamp_(min=0).mul_(torch.sign(shard))
            else:
                shrunk = F.softshrink(shard, threshold)  # == sign(w) * max(|w| - t, 0), bitwise
            shard.copy_(shrunk)


def zero_fraction(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """The fraction of elements that are exactly ``0.0`` over all ``params`` (a 0-dim float32
    tensor, no host sync; DTensors count every shard).

    Examples:
        >>> zero_fraction([torch.tensor([0.0, 1.0]), torch.zeros(2)])
        tensor(0.7500)
    """
    tensors = tensor_list(params)
    if not tensors:
        return torch.zeros(())
    zeros = functools.reduce(torch.add, [(w == 0).sum() for w in tensors])
    zeros = zeros.full_tensor() if is_dtensor(zeros) else zeros
    return zeros.float() / sum(w.numel() for w in tensors)


def local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (a view its in-place ops write through), else ``t``."""
    return t.to_local() if is_dtensor(t) else t


def is_dtensor(t: torch.Tensor) -> TypeGuard[DTensor]:
    """Whether ``t`` is a ``DTensor`` (FSDP2); never in a torch build without distributed."""
    return _DISTRIBUTED and isinstance(t, DTensor)


def tensor_list(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """``params`` as a list; a single tensor is one element."""
    if isinstance(params, torch.Tensor):
        return [params]
    if not isinstance(params, Iterable):
        raise TypeError(
            f"Expected a tensor or an iterable of tensors, got {type(params).__name__}."
        )
    return list(params)
