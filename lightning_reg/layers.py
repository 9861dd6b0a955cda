"""Building blocks with sensible regularization defaults: activations, init presets, dense blocks.

The module side (:class:`~lightning_reg.module.RegularizedModule`) calls these functions with its
own defaults, the PyTorch analogue of the textbook's ``partial(Dense, activation=...,
kernel_initializer=...)`` idiom. Everything here works on plain ``nn.Module`` objects.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Literal, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from lightning_reg._validation import check_bool, check_int, check_number

__all__ = [
    "ACTIVATIONS",
    "INIT_PRESETS",
    "INIT_MODULES",
    "MCAlphaDropout",
    "MCDropout",
    "activation",
    "activation_gain",
    "dense_block",
    "init_weights_",
    "resolve_init",
]

_M = TypeVar("_M", bound=nn.Module)

_LEAKY_SLOPE = 0.01

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(_LEAKY_SLOPE),
    "elu": nn.ELU,
    "selu": nn.SELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}
"""Activation names accepted everywhere in the package, mapped to a factory of the module."""

# The He preset of each activation as arguments of ``torch.nn.init.kaiming_*_``/``calculate_gain``
# (nonlinearity, negative slope): ReLU's gain sqrt(2) for ReLU and its smooth variants (He et al.,
# 2015; the textbook's table of initializations), torch's own gains for leaky ReLU, tanh and
# sigmoid, and gain 1 ("linear", i.e. LeCun) for SELU and identity.
_Nonlinearity = Literal["linear", "relu", "leaky_relu", "tanh", "sigmoid"]
_NONLINEARITY: dict[str, tuple[_Nonlinearity, float]] = {
    "relu": ("relu", 0.0),
    "leaky_relu": ("leaky_relu", _LEAKY_SLOPE),
    "elu": ("relu", 0.0),
    "selu": ("linear", 0.0),
    "gelu": ("relu", 0.0),
    "silu": ("relu", 0.0),
    "mish": ("relu", 0.0),
    "softplus": ("relu", 0.0),
    "tanh": ("tanh", 0.0),
    "sigmoid": ("sigmoid", 0.0),
    "identity": ("linear", 0.0),
}

INIT_PRESETS: tuple[str, ...] = (
    "auto",
    "he_normal",
    "he_uniform",
    "lecun_normal",
    "lecun_uniform",
    "glorot_normal",
    "glorot_uniform",
    "default",
)
"""Init preset names. ``"auto"``: LeCun normal for SELU, He normal otherwise; ``"default"``: keep
PyTorch's own initialization untouched."""

INIT_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
"""Layer types whose weights :func:`init_weights_` initializes (biases are set to zero)."""

_TRANSPOSED_CONVS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


class MCDropout(nn.Dropout):
    """Dropout that stays on in eval mode, for Monte Carlo dropout (Gal & Ghahramani, 2016).

    Behaves like ``nn.Dropout(p)`` in training, and keeps dropping (and rescaling by
    ``1 / (1 - p)``) after ``model.eval()``, so repeated forward passes sample the posterior.
    Its masks are ``F.dropout``'s, drawn by torch's own kernel in every mode, with or without
    autograd.

    Args:
        p: probability of zeroing an element. Default ``0.5``.
        inplace: do the operation in place. Default ``False``.

    Raises:
        ValueError: if ``p`` is outside ``[0, 1]`` (raised by ``nn.Dropout``).

    Example:
        >>> import torch
        >>> layer = MCDropout(0.2).eval()
        >>> x = torch.ones(4, 1000)
        >>> torch.equal(layer(x), layer(x))
        False
    """

    def forward(self, input: Tensor) -> Tensor:
        return F.dropout(input, self.p, training=True, inplace=self.inplace)


class MCAlphaDropout(nn.AlphaDropout):
    """Alpha dropout (keeps SELU's self-normalization) that stays on in eval mode.

    Args:
        p: probability of dropping an element. Default ``0.5``.
        inplace: do the operation in place. Default ``False``.

    Raises:
        ValueError: if ``p`` is outside ``[0, 1]`` (raised by ``nn.AlphaDropout``).

    Example:
        >>> import torch
        >>> layer = MCAlphaDropout(0.1).eval()
        >>> x = torch.randn(4, 1000)
        >>> torch.equal(layer(x), layer(x))
        False
    """

    def forward(self, input: Tensor) -> Tensor:
        return F.alpha_dropout(input, self.p, training=True, inplace=self.inplace)


def _check_activation(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"`activation` must be a string, got {type(name).__name__} {name!r}.")
    if name not in ACTIVATIONS:
        raise ValueError(f"`activation` must be one of {sorted(ACTIVATIONS)}, got {name!r}.")
    return name


def activation(name: str) -> nn.Module:
    """Return a fresh activation module by name.

    Args:
        name: one of :data:`ACTIVATIONS` (``"relu"``, ``"leaky_relu"`` (slope 0.01), ``"elu"``,
            ``"selu"``, ``"gelu"``, ``"silu"``, ``"mish"``, ``"softplus"``, ``"tanh"``,
            ``"sigmoid"``, ``"identity"``).

    Raises:
        TypeError: if ``name`` is not a string.
        ValueError: if ``name`` is unknown (the message lists the valid names).

    Example:
        >>> activation("elu")
        ELU(alpha=1.0)
    """
    return ACTIVATIONS[_check_activation(name)]()


def activation_gain(name: str) -> float:
    """Gain ``g`` of the He preset for an activation: weights get ``std = g / sqrt(fan_in)``.

    Args:
        name: an activation name from :data:`ACTIVATIONS`.

    Raises:
        TypeError: if ``name`` is not a string.
        ValueError: if ``name`` is unknown.

    Examples:
        >>> activation_gain("relu") == 2**0.5 == activation_gain("elu")
        True
        >>> activation_gain("selu"), activation_gain("tanh")
        (1.0, 1.6666666666666667)
    """
    nonlinearity, slope = _NONLINEARITY[_check_activation(name)]
    return float(nn.init.calculate_gain(nonlinearity, slope))


def resolve_init(init: str, activation: str) -> str:
    """Validate an init preset and resolve ``"auto"``: LeCun normal for SELU, He normal otherwise.

    Args:
        init: one of :data:`INIT_PRESETS`.
        activation: the activation that follows the layer, from :data:`ACTIVATIONS`.

    Raises:
        TypeError: if ``init`` or ``activation`` is not a string.
        ValueError: if ``init`` or ``activation`` is unknown (the message lists the valid names).

    Examples:
        >>> resolve_init("auto", "selu"), resolve_init("auto", "relu")
        ('lecun_normal', 'he_normal')
    """
    _check_activation(activation)
    if not isinstance(init, str):
        raise TypeError(f"`init` must be a string, got {type(init).__name__} {init!r}.")
    if init not in INIT_PRESETS:
        raise ValueError(f"`init` must be one of {list(INIT_PRESETS)}, got {init!r}.")
    if init == "auto":
        return "lecun_normal" if activation == "selu" else "he_normal"
    return init


def _init_weight_(weight: Tensor, preset: str, activation: str, fan_in: int | None) -> None:
    """Draw ``weight`` from a resolved preset with ``torch.nn.init`` (torch's own fans, or
    ``fan_in`` for He and LeCun when given)."""
    nonlinearity, slope = _NONLINEARITY[activation]
    if preset.startswith("lecun"):
        nonlinearity, slope = "linear", 0.0
    uniform = preset.endswith("uniform")
    if preset.startswith(("he", "lecun")) and fan_in is not None:
        std = nn.init.calculate_gain(nonlinearity, slope) / math.sqrt(fan_in)
        if uniform:
            nn.init.uniform_(weight, -math.sqrt(3.0) * std, math.sqrt(3.0) * std)
        else:
            nn.init.normal_(weight, 0.0, std)
    elif preset.startswith(("he", "lecun")):
        init = nn.init.kaiming_uniform_ if uniform else nn.init.kaiming_normal_
        init(weight, a=slope, mode="fan_in", nonlinearity=nonlinearity)
    elif preset == "glorot_uniform":
        nn.init.xavier_uniform_(weight)
    else:
        nn.init.xavier_normal_(weight)


def init_weights_(module: _M, init: str = "auto", activation: str = "elu") -> _M:
    """Initialize, in place, every Linear/Conv/ConvTranspose weight of ``module`` with a preset.

    Normal presets draw ``N(0, std**2)`` (not truncated); uniform presets draw from ``U(-a, a)``
    with ``a = sqrt(3) * std``, the same variance. The draws are ``torch.nn.init``'s, with its fans
    (but for a ConvTranspose's He and LeCun fan-in, below):

    * He: ``std = gain / sqrt(fan_in)``, ``gain`` from :func:`activation_gain` (sqrt(2) for ReLU,
      ELU, GELU, SiLU...): ``nn.init.kaiming_normal_``/``kaiming_uniform_`` with
      ``mode="fan_in"``;
    * LeCun: ``std = 1 / sqrt(fan_in)``: the same with ``nonlinearity="linear"``;
    * for a ConvTranspose, whose weight is ``(in, out / groups, *kernel)``, He and LeCun take
      ``fan_in = in_channels / groups * kernel size`` (the inputs each output sees at stride
      1; torch's fan-in would count output channels) and draw with ``nn.init.normal_`` /
      ``uniform_``;
    * Glorot: ``std = sqrt(2 / (fan_in + fan_out))``: ``nn.init.xavier_normal_``/
      ``xavier_uniform_``.

    Biases are set to zero. ``"default"`` leaves the module untouched. Other layers with weight
    matrices (``nn.Embedding``, ``nn.LSTM``, ``nn.Bilinear``, ``nn.MultiheadAttention``'s
    in-projection; its out-projection is a Linear) keep PyTorch's init, with a ``UserWarning``
    naming those weights. A lazy layer not yet materialized is skipped with a ``UserWarning``
    naming it (it would keep PyTorch's init). A parametrized weight
    (``torch.nn.utils.parametrize``, e.g. weight normalization) is drawn whole and assigned, so
    the parametrization's ``right_inverse`` sets its originals.

    Args:
        module: the module to initialize (itself and all its submodules). Required.
        init: one of :data:`INIT_PRESETS`. Default ``"auto"`` (LeCun normal for SELU, He otherwise).
        activation: the activation that follows these layers. Default ``"elu"``.

    Returns:
        ``module`` itself.

    Raises:
        TypeError: if ``init`` or ``activation`` is not a string, or a weight is computed by
            the forward pre-hook of the deprecated ``torch.nn.utils.weight_norm``.
        ValueError: if ``init`` or ``activation`` is unknown.

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> layer = init_weights_(torch.nn.Linear(512, 256), "he_normal", "relu")
        >>> round(layer.weight.std().item() / (2 / 512) ** 0.5, 2), layer.bias.abs().max().item()
        (1.0, 0.0)
    """
    preset = resolve_init(init, activation)
    if preset == "default":
        return module
    with torch.no_grad():
        for name, layer in module.named_modules():
            if not isinstance(layer, INIT_MODULES):
                continue
            weight = cast(Tensor, layer.weight)
            bias = cast("Tensor | None", layer.bias)
            if nn.parameter.is_lazy(weight):
                warnings.warn(
                    f"`{name or 'module'}` ({type(layer).__name__}) has no weight yet, so it "
                    f"keeps PyTorch's init, not {preset!r}: initialize it after a forward pass "
                    "has materialized it (or give it its input size).",
                    UserWarning,
                    stacklevel=2,
                )
                continue
            fan_in = None  # torch's: weight.size(1) * kernel size
            if isinstance(layer, _TRANSPOSED_CONVS):  # weight (in, out / groups, *kernel)
                fan_in = weight.shape[0] // cast(int, layer.groups) * weight[0, 0].numel()
            if parametrize.is_parametrized(layer, "weight"):
                drawn = torch.empty_like(weight)
                _init_weight_(drawn, preset, activation, fan_in)
                layer.weight = drawn  # the parametrization's right_inverse sets its originals
            elif isinstance(weight, nn.Parameter):
                _init_weight_(weight, preset, activation, fan_in)
            else:
                raise TypeError(
                    f"The weight of `{name or 'module'}` ({type(layer).__name__}) is computed "
                    "from other parameters by a forward pre-hook (torch.nn.utils.weight_norm), "
                    "which an init cannot reach: use torch.nn.utils.parametrizations.weight_norm."
                )
            if bias is not None and not nn.parameter.is_lazy(bias):
                bias.zero_()
    others = []  # the weight matrices left, by layer (an attention's out_proj is a Linear)
    for name, layer in module.named_modules():
        if isinstance(layer, (*INIT_MODULES, parametrize.ParametrizationList)):
            continue
        left = [
            f"`{name}.{p_name}`" if name else f"`{p_name}`"
            for p_name, p in layer.named_parameters(recurse=False)
            if not nn.parameter.is_lazy(p) and p.dim() >= 2
        ]
        if left:
            others.append(f"{', '.join(left)} ({type(layer).__name__})")
    if others:
        warnings.warn(
            f"{', '.join(others)} keep PyTorch's init: the {preset!r} preset covers Linear, Conv "
            "and ConvTranspose weights only; initialize their weight matrices with torch.nn.init "
            "if PyTorch's init is not what you want.",
            UserWarning,
            stacklevel=2,
        )
    return module


def _check_dropout(dropout: float) -> float:
    return check_number("dropout", dropout, "in [0, 1)", lambda p: 0.0 <= p < 1.0)


def dense_block(
    in_features: int,
    out_features: int,
    activation: str = "elu",
    dropout: float = 0.0,
    init: str = "auto",
    mc: bool = False,
) -> nn.Sequential:
    """Linear -> activation -> dropout, initialized for the activation.

    SELU gets alpha dropout (plain dropout would break its self-normalization); every other
    activation gets ``nn.Dropout``. No dropout layer is added when ``dropout == 0``.

    Args:
        in_features: input width, an integer >= 1. Required.
        out_features: output width, an integer >= 1. Required.
        activation: a name from :data:`ACTIVATIONS`. Default ``"elu"``.
        dropout: drop probability in ``[0, 1)``. Default ``0.0``.
        init: a name from :data:`INIT_PRESETS`. Default ``"auto"``.
        mc: use :class:`MCDropout` / :class:`MCAlphaDropout`, which stay on in eval mode.
            Default ``False``.

    Returns:
        ``nn.Sequential(Linear, activation[, dropout])``.

    Raises:
        TypeError: if a width is not an integer, a name is not a string or ``mc`` is not a
            bool.
        ValueError: if a width is < 1, ``dropout`` is outside ``[0, 1)`` or a name is unknown.

    Example:
        >>> block = dense_block(64, 128, activation="selu", dropout=0.1)
        >>> tuple(type(layer).__name__ for layer in block)
        ('Linear', 'SELU', 'AlphaDropout')
    """
    check_int("in_features", in_features, 1)
    check_int("out_features", out_features, 1)
    p = _check_dropout(dropout)
    check_bool("mc", mc)
    preset = resolve_init(init, activation)
    linear = init_weights_(nn.Linear(in_features, out_features), preset, activation)
    layers: list[nn.Module] = [linear, ACTIVATIONS[activation]()]
    if p > 0.0:
        if activation == "selu":
            layers.append(MCAlphaDropout(p) if mc else nn.AlphaDropout(p))
        else:
            layers.append(MCDropout(p) if mc else nn.Dropout(p))
    return nn.Sequential(*layers)
