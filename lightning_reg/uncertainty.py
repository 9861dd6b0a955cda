"""Monte Carlo dropout: the mean and spread of stochastic forward passes.

The rule for what is sampled is the plain one: the model runs in train mode, so every dropout
it applies in training is applied (dropout modules of every kind, ``F.dropout(x, p,
self.training)`` in a ``forward``, attention dropout inside ``nn.MultiheadAttention`` and
``scaled_dot_product_attention``, torch's transformer layers, whose eval fast path is off in
train mode), while the layers whose train mode changes statistics
(:data:`STATISTICS_MODULES`: BatchNorm and InstanceNorm) stay in eval mode.

:func:`mc_dropout_predict` works on any ``nn.Module``; :class:`MCDropoutMixin` makes
``Trainer.predict`` do the same for a LightningModule.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from lightning_reg._validation import check_int

__all__ = [
    "DROPOUT_MODULES",
    "STATISTICS_MODULES",
    "TASKS",
    "MCDropoutMixin",
    "MCDropoutResult",
    "mc_dropout_mode",
    "mc_dropout_predict",
]

TASKS: tuple[str, ...] = ("classification", "regression")
"""Values of ``task``: what :func:`mc_dropout_predict` summarizes."""

DROPOUT_MODULES: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
"""Torch's dropout modules (``MCDropout`` subclasses ``nn.Dropout``). They are sampled like every
other dropout the model applies in train mode; this list only serves to name them in warnings."""

_BATCH_NORMS: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LazyBatchNorm1d,
    nn.LazyBatchNorm2d,
    nn.LazyBatchNorm3d,
    nn.SyncBatchNorm,
)

STATISTICS_MODULES: tuple[type[nn.Module], ...] = (
    *_BATCH_NORMS,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LazyInstanceNorm1d,
    nn.LazyInstanceNorm2d,
    nn.LazyInstanceNorm3d,
)
"""Layers kept in eval mode while sampling (subclasses included): in train mode they normalize
with the batch's statistics and update their running statistics. ``LayerNorm``, ``GroupNorm``
and ``RMSNorm`` behave the same in both modes."""

# Layers known to compute the same output for every sample (no randomness in train mode):
# the leading run of them in an ``nn.Sequential`` is computed once. Exact types only, so a
# subclass with a forward of its own ends the run.
_DETERMINISTIC: frozenset[type[nn.Module]] = frozenset(
    {
        nn.Identity,
        nn.Linear,
        nn.Conv1d,
        nn.Conv2d,
        nn.Conv3d,
        nn.ConvTranspose1d,
        nn.ConvTranspose2d,
        nn.ConvTranspose3d,
        nn.Embedding,
        nn.Flatten,
        nn.Unflatten,
        nn.MaxPool1d,
        nn.MaxPool2d,
        nn.MaxPool3d,
        nn.AvgPool1d,
        nn.AvgPool2d,
        nn.AvgPool3d,
        nn.AdaptiveAvgPool1d,
        nn.AdaptiveAvgPool2d,
        nn.AdaptiveAvgPool3d,
        nn.AdaptiveMaxPool1d,
        nn.AdaptiveMaxPool2d,
        nn.AdaptiveMaxPool3d,
        nn.LayerNorm,
        nn.GroupNorm,
        nn.RMSNorm,
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        nn.BatchNorm3d,
        nn.ReLU,
        nn.ReLU6,
        nn.LeakyReLU,
        nn.PReLU,
        nn.ELU,
        nn.SELU,
        nn.CELU,
        nn.GELU,
        nn.SiLU,
        nn.Mish,
        nn.Softplus,
        nn.Softsign,
        nn.Tanh,
        nn.Sigmoid,
        nn.Hardtanh,
        nn.Hardswish,
        nn.Hardsigmoid,
        nn.LogSigmoid,
        nn.Softmax,
        nn.LogSoftmax,
    }
)


class MCDropoutResult(NamedTuple):
    """Summary of Monte Carlo dropout predictions.

    With ``task="classification"`` the samples are class probabilities (softmax over the last
    dimension); with ``task="regression"`` they are the model's raw outputs. They are summarized
    in float32 at least: the outputs of a bfloat16 or float16 model (or of mixed precision) are
    cast to float32 first.

    Attributes:
        mean: mean over the samples, the shape of one output.
        std: standard deviation over the samples (population form, ``correction=0``), same
            shape as ``mean``.
        entropy: classification only: predictive entropy ``-sum_c mean_c * log(mean_c)`` in
            nats, ``mean``'s shape without its last dimension; ``None`` for regression.
        samples: every sample, shape ``(n_samples, *mean.shape)``, when asked for with
            ``return_samples=True``; ``None`` otherwise.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.3),
        ...                             torch.nn.Linear(16, 3))
        >>> result = mc_dropout_predict(model, torch.randn(5, 8), task="classification")
        >>> prediction = result.mean.argmax(-1)
        >>> least_sure = result.entropy.topk(2).indices  # the 2 most uncertain inputs
        >>> prediction.shape, least_sure.shape
        (torch.Size([5]), torch.Size([2]))
    """

    mean: Tensor
    std: Tensor
    entropy: Tensor | None
    samples: Tensor | None = None


# ---------------------------------------------------------------------------- module modes


def _set_sampling_modes(model: nn.Module, eval_modules: tuple[type[nn.Module], ...]) -> None:
    """``model.train()``, then every :data:`STATISTICS_MODULES` (or ``eval_modules``) layer back
    to eval mode."""
    model.train()
    kept = STATISTICS_MODULES + eval_modules
    for module in model.modules():
        if isinstance(module, kept):
            module.eval()


@contextmanager
def mc_dropout_mode(
    model: nn.Module, eval_modules: Sequence[type[nn.Module]] = ()
) -> Iterator[nn.Module]:
    """Put ``model`` in the mode Monte Carlo dropout samples in; restore it on exit.

    The model goes to train mode, so every dropout it applies in training is applied; then the
    layers whose train mode changes statistics (:data:`STATISTICS_MODULES`, and the types in
    ``eval_modules``) go back to eval mode. When the block ends (also when it raises) every
    submodule gets its previous ``training`` flag back.

    When the block ends normally, the buffers of the modules in train mode are compared with
    their values on entry (the layers kept in eval mode do not update theirs): a module that
    changed a buffer (a statistic its train mode updates, such as the power iteration of
    spectral normalization) gets the buffer back, and a ``UserWarning`` names it, so such a
    module can be passed in ``eval_modules``.

    Args:
        model: any module. Required.
        eval_modules: more module types to keep in eval mode. Default ``()``.

    Yields:
        ``model``.

    Raises:
        TypeError: if ``eval_modules`` holds something that is not an ``nn.Module`` subclass.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4),
        ...                             torch.nn.Dropout(0.5)).eval()
        >>> with mc_dropout_mode(model):
        ...     tuple(m.training for m in model)
        (True, False, True)
        >>> tuple(m.training for m in model)
        (False, False, False)
    """
    kept = _check_module_types(eval_modules)
    modes = [(module, module.training) for module in model.modules()]
    try:
        _set_sampling_modes(model, kept)
        buffers = _train_mode_buffers(model)
        yield model
    finally:
        for module, mode in modes:
            module.training = mode
    changed = []
    with torch.no_grad():
        for name, buffer, saved in buffers:
            if not torch.equal(buffer, saved):
                buffer.copy_(saved)
                changed.append(name)
    if changed:
        owners = dict(model.named_modules())
        named = [f"`{n}` ({type(owners[n.rpartition('.')[0]]).__name__})" for n in changed]
        warnings.warn(
            "MC dropout: train mode changed the buffers "
            f"{', '.join(named)}, so their values moved between samples. They are restored "
            "now; pass their module types in `eval_modules` to keep them in eval mode.",
            UserWarning,
            stacklevel=3,
        )


def _train_mode_buffers(model: nn.Module) -> list[tuple[str, Tensor, Tensor]]:
    """``(name, buffer, copy)`` for the buffers of the modules in train mode: a module kept in
    eval mode (BatchNorm's running statistics) does not update its buffers in a forward."""
    return [
        (f"{prefix}.{name}" if prefix else name, b, b.clone())
        for prefix, module in model.named_modules()
        if module.training
        for name, b in module.named_buffers(recurse=False)
    ]


def _check_module_types(types: Sequence[type[nn.Module]]) -> tuple[type[nn.Module], ...]:
    kept = tuple(types)
    for t in kept:
        if not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise TypeError(
                f"`eval_modules` must hold nn.Module subclasses, got {t!r} in {types!r}."
            )
    return kept


# ---------------------------------------------------------------------------- inputs


def _select_input(batch: Any, input_key: Any) -> Tensor:
    """The model input in ``batch``: see ``input_key`` in :func:`mc_dropout_predict`."""
    if callable(input_key):
        x = input_key(batch)
    elif input_key is not None:
        if not isinstance(batch, (tuple, list, Mapping)):
            raise ValueError(
                f"`input_key={input_key!r}` selects from a tuple, list or dict batch, but the "
                f"batch is a {type(batch).__name__}: leave `input_key` unset."
            )
        try:
            x = batch[input_key]
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError(
                f"`input_key={input_key!r}` selects nothing in the {type(batch).__name__} "
                f"batch: {err!r}."
            ) from err
    elif isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("The batch is an empty sequence: there is no model input in it.")
        x = batch[0]
    elif isinstance(batch, Mapping):
        raise ValueError(
            f"The batch is a dict with keys {sorted(map(str, batch))}: say which one is the "
            "model input with `input_key` (MCDropoutMixin: `mc_input_key`)."
        )
    else:
        x = batch
    if not isinstance(x, Tensor):
        raise TypeError(
            f"The model input must be a tensor, got {type(x).__name__} (selected with "
            f"`input_key={input_key!r}`)."
        )
    return x


# ---------------------------------------------------------------------------- sampling


def _split(model: nn.Module, batch_dim: int) -> tuple[list[nn.Module], list[nn.Module] | None]:
    """``(prefix, rest)``: the layers whose output is the same for every sample, and the layers
    after them (``None``: run ``model`` itself).

    Only a plain ``nn.Sequential`` is split (its forward applies its layers in turn; nested
    plain Sequentials are expanded), with the batch first (every layer keeps it there). The
    prefix is the leading run of layers of the known deterministic types (``_DETERMINISTIC``),
    so anything that may draw randomness in train mode (a dropout, an attention or recurrent
    layer, a custom module) starts the rest.
    """
    chain = _chain(model) if batch_dim == 0 else None
    if chain is None:
        return [], None
    first = next(
        (i for i, layer in enumerate(chain) if type(layer) not in _DETERMINISTIC), len(chain)
    )
    return chain[:first], chain[first:]


def _chain(module: nn.Module) -> list[nn.Module] | None:
    """The layers a plain ``nn.Sequential`` applies in turn (nested ones expanded), or None for
    any other module, a subclass with its own ``forward``, or one with hooks of its own."""
    if not (
        isinstance(module, nn.Sequential)
        and type(module).forward is nn.Sequential.forward
        and not module._forward_hooks
        and not module._forward_pre_hooks
    ):
        return None
    layers: list[nn.Module] = []
    for child in module:
        inner = _chain(child)
        layers.extend([child] if inner is None else inner)
    return layers


def _apply(layers: list[nn.Module], h: Tensor) -> Tensor:
    for layer in layers:
        h = layer(h)
    return h


def _replicate(h: Tensor, k: int, dim: int) -> Tensor:
    """``k`` copies of ``h`` concatenated along ``dim`` (sample-major: copy ``j`` holds rows
    ``j * n`` to ``(j + 1) * n - 1``)."""
    return h.repeat(*(k if d == dim else 1 for d in range(h.dim())))


def _draw(
    model: nn.Module,
    x: Tensor,
    n_samples: int,
    batch_size: int | None,
    batch_dim: int,
    output_batch_dim: int,
) -> Tensor:
    """``n_samples`` outputs of ``model`` for ``x``, stacked on a new first dimension.

    The prefix (see :func:`_split`) runs once per row of ``x`` (per chunk of rows when
    ``batch_size`` is given); its output is replicated ``k`` times along the batch dimension, so
    one forward pass of the rest computes ``k`` samples. Passes hold at most ``batch_size`` rows
    (replicas included), at least a chunk's own rows; ``None``: the rows :func:`_pass_rows`
    measures, the prefix run on all of ``x`` at once.
    """
    prefix, rest = _split(model, batch_dim)
    n_rows = x.shape[batch_dim]
    if batch_size is None:
        whole = _apply(prefix, x)
        batch_size = _pass_rows(model, rest, whole, batch_dim)
        chunks = iter(whole.split(batch_size, batch_dim))
    else:
        chunks = (_apply(prefix, rows) for rows in x.split(batch_size, batch_dim))
    per_chunk = []
    for h in chunks:
        m = h.shape[batch_dim]
        parts = []
        for k in _pass_sizes(n_samples, max(1, batch_size // m)):
            hk = _replicate(h, k, batch_dim)
            out = model(hk) if rest is None else _apply(rest, hk)
            if not isinstance(out, Tensor):
                raise TypeError(
                    f"MC dropout needs a model that returns a tensor, got {type(out).__name__}: "
                    "wrap the model so that it returns the prediction as one tensor."
                )
            if out.dim() <= output_batch_dim or out.shape[output_batch_dim] != k * m:
                raise ValueError(
                    f"The model mapped {k * m} input rows (dim {batch_dim}) to an output of "
                    f"shape {tuple(out.shape)}, which has no dim {output_batch_dim} of "
                    f"{k * m} rows: set `output_batch_dim` to the output's batch dimension."
                )
            parts.append(out.unflatten(output_batch_dim, (k, m)).movedim(output_batch_dim, 0))
        per_chunk.append(torch.cat(parts))
    samples = torch.cat(per_chunk, dim=output_batch_dim + 1)
    assert samples.shape[output_batch_dim + 1] == n_rows
    return samples


def _pass_sizes(n_samples: int, per_pass: int) -> list[int]:
    """Samples per forward pass: ``per_pass`` at a time, the remainder last."""
    full, last = divmod(n_samples, per_pass)
    return [per_pass] * full + ([last] if last else [])


PROBE_ROWS = 16
"""Input rows of the probe pass that measures a model's activations (fewer if the input has
fewer)."""


def _pass_bytes(device: torch.device) -> int:
    """The size of the largest tensor one forward pass may make, by default: 1 MiB on CPU, a
    core's L2 cache on the development machine; larger passes fall out of the cache and, from a
    few MiB on, their buffers are mapped afresh from the system at every pass (page faults;
    ``benchmarks/mc_dropout.py --sweep`` times the pass sizes). 64 MiB on other devices (not
    measured there)."""
    return 2**20 if device.type == "cpu" else 2**26


def _pass_rows(model: nn.Module, rest: list[nn.Module] | None, h: Tensor, dim: int) -> int:
    """Input rows per forward pass (replicas included), from the bytes of the activations.

    One probe pass of the first :data:`PROBE_ROWS` rows of ``h`` (the shared prefix's output)
    through the layers that run per sample records the largest tensor any torch function
    returns, and the attention weights that ``scaled_dot_product_attention`` and
    ``nn.MultiheadAttention`` make inside, so a transformer's feed-forward width or an
    attention's ``L x S`` weights count, not the input's width. The pass runs on a forked random
    generator and a copy of the rows (a dropout in place on its input would change them): the
    samples are those the model would draw without it.
    """
    probe = h.narrow(dim, 0, min(PROBE_ROWS, h.shape[dim])).clone()  # a model may drop it in place
    devices = [] if h.device.type == "cpu" else [h.device]
    with torch.random.fork_rng(devices, device_type=h.device.type), _LargestTensor() as largest:
        model(probe) if rest is None else _apply(rest, probe)
    per_row = max(largest.nbytes, probe.nbytes) / probe.shape[dim]
    return max(1, int(_pass_bytes(h.device) // max(per_row, 1.0)))


class _LargestTensor(TorchFunctionMode):
    """Records the bytes of the largest tensor the torch functions called in it return, and of
    the attention weights made inside attention calls, in ``nbytes``."""

    def __init__(self) -> None:
        super().__init__()
        self.nbytes = 0

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        sizes = [t.nbytes for t in outputs if isinstance(t, Tensor)]
        self.nbytes = max(self.nbytes, _attention_bytes(func, args, kwargs), *sizes)
        return out


def _attention_bytes(func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> int:
    """Bytes of the ``L x S`` attention weights an attention call makes inside, else 0."""
    if func is F.scaled_dot_product_attention:  # (..., L, E) queries on (..., S, E) keys
        query = args[0] if args else kwargs["query"]
        key = args[1] if len(args) > 1 else kwargs["key"]
        return query[..., :1].numel() * key.shape[-2] * query.element_size()
    if func is F.multi_head_attention_forward:
        call = _MHA_SIGNATURE.bind(*args, **kwargs).arguments
        query, key = call["query"], call["key"]  # (L, N, E) and (S, N, E), or unbatched
        batch = query.shape[1] if query.dim() == 3 else 1
        weights = batch * call["num_heads"] * query.shape[0] * key.shape[0]
        return weights * query.element_size()
    return 0


# fast_masks draws each dropout decision from 16 random bits, four per 64-bit word of torch's
# generator: the dropout rate is rounded to a multiple of 2**-16, and rates too close to 0 or 1
# for that grid (relative error over 2**-8) keep torch's kernel.
_MASK_LEVELS = 2**16
_MASK_MIN_LEVELS = 2**8
_MHA_SIGNATURE = inspect.signature(F.multi_head_attention_forward)
# Arguments of F.multi_head_attention_forward that fast_masks leaves to torch when given.
_MHA_UNCOVERED = ("bias_k", "bias_v", "static_k", "static_v", "key_padding_mask", "attn_mask")
# The arguments _fast_mha reads: under a torch whose F.multi_head_attention_forward takes any
# other, every call keeps torch's kernels rather than ignore what that argument asks for.
_MHA_ARGUMENTS = frozenset(
    {
        "query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight",
        "in_proj_bias", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias",
        "training", "need_weights", "use_separate_proj_weight", "q_proj_weight",
        "k_proj_weight", "v_proj_weight", "average_attn_weights", "is_causal", *_MHA_UNCOVERED,
    }
)  # fmt: skip
_MHA_COVERED = set(_MHA_SIGNATURE.parameters) == _MHA_ARGUMENTS


def _mask_level(p: float) -> int | None:
    """``k`` of the rate ``k / 2**16`` nearest ``p``, or ``None`` if ``p`` is too close to 0 or 1
    (or not a number) for that grid."""
    if not isinstance(p, (int, float)) or not 0.0 < p < 1.0:
        return None
    k = round(p * _MASK_LEVELS)
    return k if _MASK_MIN_LEVELS <= k <= _MASK_LEVELS - _MASK_MIN_LEVELS else None


def _fast_dropout(x: Tensor, k: int) -> Tensor:
    """Dropout of rate ``k / 2**16`` on ``x``, its masks drawn 16 bits per element.

    Each element is kept when its 16 random bits, read as an integer in ``[-2**15, 2**15)``,
    are at least ``k - 2**15`` (chance ``1 - k / 2**16``), and scaled by ``2**16 / (2**16 - k)``,
    so the output's expectation is ``x`` exactly. The bits come from ``Tensor.random_`` over the
    full 64-bit range, one word per four elements; the comparison runs in ``x``'s floating dtype
    (every 16-bit integer is exact there), because torch's comparisons into ``bool`` are several
    times slower on CPU.
    """
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device)
    words.random_(-(2**63), None)  # from the int64 minimum with no upper bound: all 64 bits
    bits = words.view(torch.int16)[:n].view(x.shape).to(x.dtype)
    keep = bits.ge_(k - _MASK_LEVELS // 2)  # 1.0 where kept, 0.0 where dropped
    return keep.mul_(x).mul_(_MASK_LEVELS / (_MASK_LEVELS - k))


def _cpu_floats(*tensors: object) -> bool:
    first = tensors[0]
    return isinstance(first, Tensor) and all(
        isinstance(t, Tensor)
        and t.device.type == "cpu"
        and t.dtype == first.dtype
        and t.dtype in (torch.float32, torch.float64)
        for t in tensors
    )


def _fast_attention(
    q: Tensor, k: Tensor, v: Tensor, level: int, is_causal: bool, scale: float | None
) -> tuple[Tensor, Tensor]:
    """Attention of ``(..., L, E)`` queries on ``(..., S, E)`` keys and values as torch's math
    kernel computes it (scores scaled by ``scale``, default ``E ** -0.5``; an optional causal
    mask; softmax; dropout of the weights; weights times values), the weights' dropout by
    :func:`_fast_dropout`. Returns the output and the dropped weights."""
    scores = (q * (q.size(-1) ** -0.5 if scale is None else scale)) @ k.transpose(-2, -1)
    if is_causal:
        keep = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    weights = _fast_dropout(scores.softmax(-1), level)
    return weights @ v, weights


def _fast_sdpa(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    **others: Any,
) -> Tensor | None:
    """``F.scaled_dot_product_attention`` with attention dropout by :func:`_fast_attention`, for
    the calls it covers (no ``attn_mask``, no grouped-query attention, no argument it does not
    know, CPU floats); ``None`` for the others."""
    level = _mask_level(dropout_p)
    if level is None or attn_mask is not None or enable_gqa or others:
        return None
    if not _cpu_floats(query, key, value) or query.dim() < 2:
        return None
    return _fast_attention(query, key, value, level, is_causal, scale)[0]


def _fast_mha(call: dict[str, Any]) -> tuple[Tensor, Tensor | None] | None:
    """``F.multi_head_attention_forward`` with attention dropout by :func:`_fast_attention`, for
    the calls it covers (a batched input, the packed in-projection without extra key/value
    biases, no mask, CPU floats); ``None`` for the others. ``call`` holds every argument."""
    query, key, value = call["query"], call["key"], call["value"]
    level = _mask_level(call["dropout_p"]) if call["training"] else None
    plain = (
        call["in_proj_weight"] is not None
        and not call["use_separate_proj_weight"]
        and not call["add_zero_attn"]
        and not call["is_causal"]
        and all(call[name] is None for name in _MHA_UNCOVERED)
    )
    if level is None or not plain or not _cpu_floats(query, key, value, call["in_proj_weight"]):
        return None
    if query.dim() != 3 or key.shape[1:] != query.shape[1:] or key.shape != value.shape:
        return None  # unbatched, or shapes torch's own checks will name
    seq, batch, width = query.shape
    heads = call["num_heads"]
    if width != call["embed_dim_to_check"] or width % heads:
        return None
    weight, bias = call["in_proj_weight"], call["in_proj_bias"]
    if query is key and key is value:
        q, k, v = F.linear(query, weight, bias).chunk(3, dim=-1)
    else:
        biases = bias.chunk(3) if bias is not None else (None, None, None)
        inputs = (query, key, value)
        q, k, v = (F.linear(*t) for t in zip(inputs, weight.chunk(3), biases, strict=True))

    def split(t: Tensor) -> Tensor:  # (S, N, E) -> (N, heads, S, E / heads)
        return t.unflatten(-1, (heads, width // heads)).permute(1, 2, 0, 3)

    out, weights = _fast_attention(split(q), split(k), split(v), level, False, None)
    out = out.permute(2, 0, 1, 3).reshape(seq, batch, width)
    out = F.linear(out, call["out_proj_weight"], call["out_proj_bias"])
    if not call["need_weights"]:
        return out, None
    return out, weights.mean(1) if call["average_attn_weights"] else weights


class _FastMasks(TorchFunctionMode):
    """The ``fast_masks=True`` path: while active (in this thread only) and gradients are off,
    dropout masks on CPU float32/float64 tensors are drawn 16 random bits per element
    (:func:`_fast_dropout`) instead of with torch's Bernoulli kernel, the slow part of MC dropout
    on CPU. Three calls are covered: ``F.dropout(x, p, training=True)`` (every ``nn.Dropout``,
    ``MCDropout`` and transformer layer calls it), ``F.scaled_dot_product_attention`` with
    ``dropout_p > 0`` and no ``attn_mask``, and ``F.multi_head_attention_forward`` (what
    ``nn.MultiheadAttention`` calls) in training with no mask, the packed in-projection and no
    extra key/value biases; these two are computed as torch's math attention kernel computes
    them. The law is the same for the rate rounded to a multiple of ``2**-16`` (each element
    kept with probability ``1 - p'`` and scaled by ``1 / (1 - p')``); the numbers differ from
    torch's under the same seed.

    It changes how a mask is drawn, never which dropouts are applied (train mode decides that):
    every other call runs unchanged, with torch's kernels: the channel and alpha variants,
    attention with a mask, the dropout inside ``nn.LSTM``, rates within ``2**-8`` of 0 or 1,
    and any call made from inside another torch function, which a ``TorchFunctionMode`` does
    not see (it is off while it handles a call)."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = None if torch.is_grad_enabled() else self._fast(func, args, kwargs)
        return func(*args, **kwargs) if out is None else out

    @staticmethod
    def _fast(func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        """The fast path's result of a call it covers, else ``None``."""
        if func is F.dropout and len(args) == 1 and set(kwargs) == {"p", "training", "inplace"}:
            x, level = args[0], _mask_level(kwargs["p"])
            covered = kwargs["training"] and not kwargs["inplace"] and _cpu_floats(x)
            return _fast_dropout(x, level) if covered and level is not None else None
        if func is F.scaled_dot_product_attention:
            return _fast_sdpa(*args, **kwargs)
        if func is F.multi_head_attention_forward and _MHA_COVERED:
            call = _MHA_SIGNATURE.bind(*args, **kwargs)
            call.apply_defaults()
            return _fast_mha(call.arguments)
        return None


def _dropout_sources(model: nn.Module) -> list[str]:
    """``name (Type, p=...)`` of every dropout module, attention and recurrent layer."""
    found = []
    for name, module in model.named_modules():
        p: object
        if isinstance(module, DROPOUT_MODULES):
            p = module.p
        elif isinstance(module, (nn.MultiheadAttention, nn.RNNBase)):
            p = module.dropout
        else:
            continue
        found.append(f"`{name or 'model'}` ({type(module).__name__}, p={p})")
    return found


def _batch_statistics_pass(model: nn.Module, rows: int, batch_size: int | None) -> int | None:
    """``batch_size``, or ``rows`` when ``model`` has BatchNorm layers without running
    statistics: in eval mode too they normalize with the statistics of the batch, so a pass
    must hold one sample of all the input's rows (the plain loop), never copies or a chunk."""
    names = [
        f"`{name or 'model'}` ({type(module).__name__})"
        for name, module in model.named_modules()
        if isinstance(module, _BATCH_NORMS) and module.running_mean is None
    ]
    if not names:
        return batch_size
    if batch_size is not None and batch_size < rows:
        raise ValueError(
            f"`batch_size={batch_size}` is below the input's {rows} rows, but "
            f"{', '.join(names)} normalize with the statistics of the batch "
            "(track_running_stats=False), so each forward pass must hold all the rows: leave "
            "`batch_size` unset or pass a smaller input."
        )
    return rows


def _sequence_first_layers(model: nn.Module) -> list[str]:
    """``name (Type)`` of the attention and recurrent layers that take the batch as dim 1
    (``batch_first=False``, torch's default for them)."""
    return [
        f"`{name or 'model'}` ({type(module).__name__})"
        for name, module in model.named_modules()
        if isinstance(module, (nn.MultiheadAttention, nn.RNNBase)) and not module.batch_first
    ]


def _check_batch_dim(model: nn.Module, batch_dim: int | None) -> int:
    """``batch_dim``, 0 when it is None; with a warning naming ``batch_dim=1`` when it is None
    and ``model`` has sequence-first layers."""
    if batch_dim is not None:
        return check_int("batch_dim", batch_dim, 0)
    layers = _sequence_first_layers(model)
    if layers:
        shown = ", ".join(layers[:3]) + (f" and {len(layers) - 3} more" if len(layers) > 3 else "")
        warnings.warn(
            f"MC dropout: {shown} take sequence-first input (batch_first=False), where the "
            "batch is dim 1, but `batch_dim` defaults to 0: the copies of each input would be "
            "stacked along the sequence and attend to each other, so the spread comes out too "
            "small. Pass batch_dim=1 for a (sequence, batch, ...) input (with "
            "output_batch_dim=0 if the output is (batch, ...)), or batch_dim=0 if the model "
            "takes the batch first and moves it itself.",
            UserWarning,
            stacklevel=3,
        )
    return 0


def _summarize(samples: Tensor, task: str, return_samples: bool) -> MCDropoutResult:
    std, mean = torch.std_mean(samples, dim=0, correction=0)
    entropy = -torch.special.xlogy(mean, mean).sum(-1) if task == "classification" else None
    return MCDropoutResult(mean, std, entropy, samples if return_samples else None)


def mc_dropout_predict(
    model: nn.Module,
    batch: Any,
    n_samples: int = 100,
    *,
    task: str,
    input_key: str | int | Callable[[Any], Tensor] | None = None,
    batch_dim: int | None = None,
    output_batch_dim: int | None = None,
    from_logits: bool = True,
    batch_size: int | None = None,
    eval_modules: Sequence[type[nn.Module]] = (),
    fast_masks: bool = False,
    return_samples: bool = False,
) -> MCDropoutResult:
    """Monte Carlo dropout: the mean and spread of ``n_samples`` stochastic forward passes.

    **What is sampled.** Inside :func:`mc_dropout_mode`: the model runs in train mode, so every
    dropout it applies in training is sampled, with torch's own kernels: dropout modules of
    every kind (``Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout``, ``FeatureAlphaDropout``,
    ``MCDropout``), ``F.dropout(x, p, training=self.training)`` in a ``forward``, the
    attention-weight dropout of ``nn.MultiheadAttention`` and of
    ``scaled_dot_product_attention(dropout_p=p if self.training else 0)``, the dropout between
    the layers of ``nn.LSTM``/``GRU``/``RNN``, and torch's transformer layers (their eval fast
    path, which skips dropout, is off in train mode). Other noise layers a model trains with
    (``nn.RReLU``'s random slopes) are sampled too. BatchNorm and InstanceNorm
    (:data:`STATISTICS_MODULES`) and the types in ``eval_modules`` stay in eval mode. Every
    submodule's mode is restored afterwards, also on error. Runs under ``torch.no_grad()``.

    Nothing is skipped silently: when every sample comes out identical (``std`` all zero while
    ``n_samples > 1``), a ``UserWarning`` says so and names the dropout layers found (none, or
    ``p=0``); a buffer that train mode changed is restored and named (see
    :func:`mc_dropout_mode`).

    **How.** The input is replicated along its batch dimension, so one forward pass computes
    many samples, up to ``batch_size`` rows at a time (by default as many as the activations'
    bytes allow; a chunk of the input's rows per pass when one row's activations are large).
    The model must treat the rows of a batch independently (true of dropout, linear,
    convolution, attention and recurrent layers, and of BatchNorm in eval mode). A BatchNorm
    without running statistics (``track_running_stats=False``) normalizes with the batch's
    statistics in eval mode too, so with one in the model each pass is one sample of all the
    input's rows, as the plain loop runs it. For a plain ``nn.Sequential`` with the batch
    first, the leading layers that cannot draw randomness (linear, convolution, pooling,
    normalization, activation layers of torch's own types) run once on the input itself and
    only their output is replicated: a CNN with dropout in its head pays for its convolutions
    once. A LightningModule with :class:`MCDropoutMixin` can point at
    its Sequential body with :meth:`MCDropoutMixin.mc_dropout_module`.

    Args:
        model: the model; its output is the prediction. Required.
        batch: the input as Lightning gives it: a tensor, or a tuple, list or dict batch (see
            ``input_key``). Required.
        n_samples: number of stochastic passes, an integer >= 1. Default ``100``.
        task: ``"classification"`` (the output's last dimension holds classes: samples are
            probabilities; ``entropy`` is computed) or ``"regression"`` (samples are the raw
            outputs; ``entropy`` is ``None``). Required, keyword only.
        input_key: which part of ``batch`` the model takes: a dict key or sequence index, or a
            callable ``batch -> tensor``. Default ``None``: ``batch`` itself if it is a tensor,
            its first element if it is a tuple or list; a dict needs ``input_key``.
        batch_dim: the input's batch dimension, an integer >= 0 (``1`` for a sequence-first
            ``nn.LSTM`` or transformer). Default ``None``: ``0``, with a ``UserWarning`` naming
            ``batch_dim=1`` when the model has sequence-first layers (``nn.MultiheadAttention``,
            torch's transformer layers or ``nn.RNN``/``LSTM``/``GRU`` with
            ``batch_first=False``): their copies would attend to each other. Pass ``0``
            explicitly for a model that takes the batch first and moves it itself.
        output_batch_dim: the output's batch dimension, an integer >= 0. Default ``None``: the
            same as ``batch_dim`` (set ``0`` for a sequence-first encoder with a head that
            returns ``(N, C)``).
        from_logits: classification only: the model returns logits (a softmax over the last
            dimension makes probabilities); ``False`` if it returns probabilities already.
            Default ``True``; outputs that look like probabilities (non-negative, rows summing
            to 1) warn.
        batch_size: the most input rows one forward pass may hold (replicas included; a chunk
            of the input's rows when ``batch_size`` is below their number). Default ``None``:
            from the size of the activations, measured by a probe pass of 16 rows (on a forked
            random generator): as many rows as keep the largest tensor of a pass, the attention
            weights included, within 1 MiB on CPU (64 MiB on other devices), at least one.
            The layers of a shared prefix (below) do not count: they run once per input.
        eval_modules: more module types to keep in eval mode. Default ``()``.
        fast_masks: the one faster path, for CPU: dropout masks are drawn from 16 random bits
            per element instead of with torch's Bernoulli kernel, in ``F.dropout`` (which every
            ``nn.Dropout``, ``MCDropout`` and transformer layer calls), in
            ``F.scaled_dot_product_attention`` without ``attn_mask`` and in
            ``nn.MultiheadAttention`` without masks (computed then as torch's math attention
            kernel does). The same law for the rate rounded to a multiple of ``2**-16`` (at most
            ``2**-17`` away; the kept elements are scaled by ``1 / (1 - p')``), other numbers
            than torch's under the same seed. The same dropouts are sampled as without it; only
            how these masks are drawn changes. Only CPU float32/float64 tensors; channel and
            alpha dropout, masked attention, LSTM dropout and rates within ``2**-8`` of 0 or 1
            keep torch's kernels. It acts within this call only (a ``TorchFunctionMode``, local
            to the thread). Default ``False``: torch's kernels.
        return_samples: also return every sample. Default ``False``.

    Returns:
        :class:`MCDropoutResult` with ``mean``, ``std``, ``entropy`` (classification) and
        ``samples`` (if asked for), each of the output's layout.

    Raises:
        TypeError: if an integer argument is not an integer, ``from_logits`` or
            ``return_samples`` is not a bool, or the selected input is not a tensor.
        ValueError: if ``task`` is not in :data:`TASKS`, an integer argument is out of range,
            a dict batch comes without ``input_key``, ``input_key`` selects nothing, the
            input or output has no such batch dimension, ``batch_size`` is below the
            input's rows while a BatchNorm has no running statistics, or a classifier's output
            has no class dimension after its batch dimension or one of size 1 (one logit or
            probability: no distribution over classes).

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(
        ...     torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Dropout(0.2),
        ...     torch.nn.Linear(128, 10),
        ... )
        >>> batch = (torch.randn(32, 64), torch.randint(0, 10, (32,)))  # (x, y) from a loader
        >>> result = mc_dropout_predict(model, batch, n_samples=50, task="classification")
        >>> result.mean.shape, result.entropy.shape
        (torch.Size([32, 10]), torch.Size([32]))
        >>> regression = mc_dropout_predict(model, {"x": batch[0]}, task="regression",
        ...                                 input_key="x")
        >>> regression.entropy is None, bool(regression.std.min() > 0)
        (True, True)
        >>> fast = mc_dropout_predict(model, batch, task="classification", fast_masks=True)
        >>> bool((fast.mean - result.mean).abs().max() < 0.1)  # the same law, other draws
        True
    """
    n_samples = check_int("n_samples", n_samples, 1)
    if task not in TASKS:
        raise ValueError(f"`task` must be one of {list(TASKS)}, got {task!r}.")
    batch_dim = _check_batch_dim(model, batch_dim)
    output_batch_dim = (
        batch_dim
        if output_batch_dim is None
        else check_int("output_batch_dim", output_batch_dim, 0)
    )
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    flags = (("from_logits", from_logits), ("fast_masks", fast_masks))
    for name, flag in (*flags, ("return_samples", return_samples)):
        if not isinstance(flag, bool):
            raise TypeError(f"`{name}` must be a bool, got {flag!r}.")
    x = _select_input(batch, input_key)
    if x.dim() <= batch_dim or x.shape[batch_dim] == 0:
        raise ValueError(
            f"The input must have a non-empty batch dimension {batch_dim}, got shape "
            f"{tuple(x.shape)}."
        )
    batch_size = _batch_statistics_pass(model, x.shape[batch_dim], batch_size)
    body = model.mc_dropout_module() if isinstance(model, MCDropoutMixin) else model
    masks = _FastMasks() if fast_masks else contextlib.nullcontext()
    with torch.no_grad(), mc_dropout_mode(model, eval_modules):
        with masks:
            samples = _draw(body, x, n_samples, batch_size, batch_dim, output_batch_dim)
        samples = samples.to(torch.promote_types(samples.dtype, torch.float32))
        if task == "classification":
            _check_classes(samples, output_batch_dim)
        if task == "classification" and from_logits:
            _warn_if_probabilities(samples)
            samples = samples.softmax(-1)
        result = _summarize(samples, task, return_samples)
    if n_samples > 1 and not bool(result.std.any()):
        sources = _dropout_sources(model)
        warnings.warn(
            f"MC dropout: all {n_samples} samples are identical, so `std` is 0: "
            f"{type(model).__name__} drew no randomness in train mode. Dropout layers found: "
            f"{', '.join(sources) if sources else 'none'}.",
            UserWarning,
            stacklevel=2,
        )
    return result


def _check_classes(samples: Tensor, output_batch_dim: int) -> None:
    """Raise ValueError unless the output's last dimension can hold classes: it is not the
    batch dimension and holds two classes or more."""
    shape = tuple(samples.shape[1:])  # one output
    if len(shape) - 1 == output_batch_dim:
        raise ValueError(
            "`task='classification'` reads the output's last dimension as classes, but in one "
            f"output of shape {shape} it is the batch dimension {output_batch_dim}: return "
            "logits or probabilities with the classes last, e.g. (N, C)."
        )
    if shape[-1] < 2:
        raise ValueError(
            "`task='classification'` reads the output's last dimension as classes, but it "
            f"has size 1 (one output of shape {shape}): return the logits or probabilities "
            "of both classes of a binary classifier (for a logit z, "
            "torch.cat([torch.zeros_like(z), z], -1)), or use `task='regression'`."
        )


def _warn_if_probabilities(samples: Tensor) -> None:
    """Warn when the samples taken for logits look like probabilities (non-negative, each row
    summing to 1): a softmax over them would flatten them towards uniform."""
    sums = samples.sum(-1, dtype=torch.float32)
    if bool((samples >= 0).all()) and bool(((sums - 1).abs() <= 1e-2).all()):
        warnings.warn(
            "MC dropout: the model's outputs look like probabilities (non-negative, each row "
            "sums to 1), yet `from_logits=True` softmaxes them again, which flattens them "
            "towards uniform: pass from_logits=False (MCDropoutMixin: set "
            "`mc_from_logits = False`) if the model returns probabilities.",
            UserWarning,
            stacklevel=3,
        )


def _check_mc_task(mc_task: object, mc_samples: int | None, owner: str) -> None:
    """Raise ValueError unless ``mc_task`` is in :data:`TASKS` (or ``None`` while
    ``mc_samples`` is ``None``), telling the user to set it on ``owner``, their class."""
    if mc_task in TASKS or (mc_task is None and mc_samples is None):
        return
    because = "" if mc_samples is None else f"`mc_samples={mc_samples!r}` is set, so "
    raise ValueError(
        f"{because}`mc_task` must say what the model predicts: "
        f"one of {list(TASKS)} (softmax probabilities and entropy, or the raw outputs' mean "
        f"and spread), got {mc_task!r}. Set it as a class attribute of {owner}, e.g. "
        f'`class {owner}(...): mc_task = "classification"` (or `"regression"`).'
    )


class MCDropoutMixin:
    """Makes ``Trainer.predict`` return Monte Carlo dropout summaries for a LightningModule.

    Mix it in before ``LightningModule``. Set ``self.mc_samples`` (an integer >= 1) to switch
    MC dropout on, and ``self.mc_task`` to say what the model predicts; ``mc_samples=None``
    (the default) keeps ordinary deterministic predictions.

    * ``on_predict_model_eval``: Lightning calls ``model.eval()`` before predicting; with
      ``mc_samples`` set, the model is put in :func:`mc_dropout_mode`'s modes instead (train
      mode, BatchNorm-type layers in eval; the Trainer restores every module's mode when
      predicting ends), so a custom ``predict_step`` also samples.
    * ``predict_step``: with ``mc_samples`` set, :func:`mc_dropout_predict`'s
      :class:`MCDropoutResult` for the batch; otherwise the model's raw output ``self(x)``
      (never a softmax added behind your back).

    Attributes:
        mc_samples: MC dropout samples per prediction, or ``None``. Default ``None``.
        mc_task: ``"classification"`` or ``"regression"`` (see :func:`mc_dropout_predict`);
            must be set when ``mc_samples`` is. Default ``None``.
        mc_input_key: ``input_key`` of :func:`mc_dropout_predict`: which part of the batch is
            the model input. Default ``None`` (the batch itself, or its first element).
        mc_batch_dim: ``batch_dim`` of :func:`mc_dropout_predict`. Default ``None``.
        mc_output_batch_dim: ``output_batch_dim`` of :func:`mc_dropout_predict`. Default
            ``None``.
        mc_batch_size: ``batch_size`` of :func:`mc_dropout_predict`. Default ``None``.
        mc_eval_modules: ``eval_modules`` of :func:`mc_dropout_predict`. Default ``()``.
        mc_fast_masks: ``fast_masks`` of :func:`mc_dropout_predict`. Default ``False``.
        mc_from_logits: ``from_logits`` of :func:`mc_dropout_predict`: ``False`` for a model
            that returns probabilities. Default ``True``.

    Example:
        >>> import lightning.pytorch as pl, torch
        >>> class Net(MCDropoutMixin, pl.LightningModule):
        ...     mc_task = "regression"
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.2),
        ...                                        torch.nn.Linear(8, 1))
        ...     def forward(self, x):
        ...         return self.net(x)
        >>> model = Net()
        >>> model.mc_samples, model.mc_input_key = 20, "x"
        >>> data = [{"x": torch.randn(3), "y": torch.randn(1)} for _ in range(4)]
        >>> loader = torch.utils.data.DataLoader(data, batch_size=4)  # batches of {"x", "y"}
        >>> trainer = pl.Trainer(logger=False, enable_progress_bar=False,
        ...                      enable_model_summary=False)
        >>> (result,) = trainer.predict(model, loader)
        >>> result.mean.shape
        torch.Size([4, 1])
    """

    mc_samples: int | None = None
    mc_task: str | None = None
    mc_input_key: str | int | Callable[[Any], Tensor] | None = None
    mc_batch_dim: int | None = None
    mc_output_batch_dim: int | None = None
    mc_batch_size: int | None = None
    mc_eval_modules: tuple[type[nn.Module], ...] = ()
    mc_fast_masks: bool = False
    mc_from_logits: bool = True

    def mc_dropout_module(self) -> nn.Module:
        """The module :func:`mc_dropout_predict` runs as this model's forward pass: ``self``.

        Override it to return an ``nn.Sequential`` that computes exactly this model's forward
        (for instance the body the model's ``forward`` calls): the layers before its first
        dropout then run once per input rather than once per sample.

        Example:
            >>> import lightning.pytorch as pl, torch
            >>> class Net(MCDropoutMixin, pl.LightningModule):
            ...     def __init__(self):
            ...         super().__init__()
            ...         self.body = torch.nn.Sequential(torch.nn.Linear(4, 4),
            ...                                         torch.nn.Dropout(0.1))
            ...     def forward(self, x):
            ...         return self.body(x)
            ...     def mc_dropout_module(self):
            ...         return self.body  # a Sequential: its dropout-free prefix runs once
            >>> Net().mc_dropout_module()[0]
            Linear(in_features=4, out_features=4, bias=True)
        """
        return self  # type: ignore[return-value]

    def on_predict_model_eval(self) -> None:
        super().on_predict_model_eval()  # type: ignore[misc]
        if self.mc_samples is None:
            return
        check_int("mc_samples", self.mc_samples, 1)
        _check_mc_task(self.mc_task, self.mc_samples, type(self).__name__)
        kept = _check_module_types(self.mc_eval_modules)
        _set_sampling_modes(self.trainer.model, kept)  # type: ignore[attr-defined]

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        if self.mc_samples is None:
            return self(_select_input(batch, self.mc_input_key))  # type: ignore[operator]
        return mc_dropout_predict(
            self,  # type: ignore[arg-type]
            batch,
            n_samples=self.mc_samples,
            task=self.mc_task,  # type: ignore[arg-type]
            input_key=self.mc_input_key,
            batch_dim=self.mc_batch_dim,
            output_batch_dim=self.mc_output_batch_dim,
            batch_size=self.mc_batch_size,
            eval_modules=self.mc_eval_modules,
            fast_masks=self.mc_fast_masks,
            from_logits=self.mc_from_logits,
        )
