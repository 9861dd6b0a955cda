"""Building blocks with sensible regularization defaults: activations, init presets, dense blocks.

The module side (:class:`~lightning_reg.module.RegularizedModule`) calls these functions with its
own defaults, the PyTorch analogue of the textbook's ``partial(Dense, activation=...,
kernel_initializer=...)`` idiom. Everything here works on plain ``nn.Module`` objects.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_reg._validation import check_int, check_number

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

# Gain g of the He preset (std = g / sqrt(fan_in)) for each activation: sqrt(2) for ReLU and its
# smooth variants (He et al., 2015; the textbook's table of initializations), torch's
# ``calculate_gain`` values for leaky ReLU, tanh and sigmoid, 1 (LeCun) for SELU and identity.
_GAINS: dict[str, float] = {
    "relu": math.sqrt(2.0),
    "leaky_relu": math.sqrt(2.0 / (1.0 + _LEAKY_SLOPE**2)),
    "elu": math.sqrt(2.0),
    "selu": 1.0,
    "gelu": math.sqrt(2.0),
    "silu": math.sqrt(2.0),
    "mish": math.sqrt(2.0),
    "softplus": math.sqrt(2.0),
    "tanh": 5.0 / 3.0,
    "sigmoid": 1.0,
    "identity": 1.0,
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

    Example::

        assert activation_gain("relu") == 2 ** 0.5
    """
    return _GAINS[_check_activation(name)]


def resolve_init(init: str, activation: str) -> str:
    """Validate an init preset and resolve ``"auto"``: LeCun normal for SELU, He normal otherwise.

    Args:
        init: one of :data:`INIT_PRESETS`.
        activation: the activation that follows the layer, from :data:`ACTIVATIONS`.

    Raises:
        TypeError: if ``init`` or ``activation`` is not a string.
        ValueError: if ``init`` or ``activation`` is unknown (the message lists the valid names).

    Example::

        assert resolve_init("auto", "selu") == "lecun_normal"
        assert resolve_init("auto", "relu") == "he_normal"
    """
    _check_activation(activation)
    if not isinstance(init, str):
        raise TypeError(f"`init` must be a string, got {type(init).__name__} {init!r}.")
    if init not in INIT_PRESETS:
        raise ValueError(f"`init` must be one of {list(INIT_PRESETS)}, got {init!r}.")
    if init == "auto":
        return "lecun_normal" if activation == "selu" else "he_normal"
    return init


def _fans(weight: Tensor) -> tuple[int, int]:
    receptive_field = math.prod(weight.shape[2:])
    return weight.shape[1] * receptive_field, weight.shape[0] * receptive_field


def _preset_std(preset: str, activation: str, weight: Tensor) -> float:
    fan_in, fan_out = _fans(weight)
    if preset.startswith("he"):
        return _GAINS[activation] / math.sqrt(fan_in)
    if preset.startswith("lecun"):
        return 1.0 / math.sqrt(fan_in)
    return math.sqrt(2.0 / (fan_in + fan_out))


def init_weights_(module: nn.Module, init: str = "auto", activation: str = "elu") -> nn.Module:
    """Initialize, in place, every Linear/Conv/ConvTranspose weight of ``module`` with a preset.

    Normal presets draw ``N(0, std**2)`` (not truncated, like ``nn.init.kaiming_normal_``);
    uniform presets draw from ``U(-a, a)`` with ``a = sqrt(3) * std``, the same variance:

    * He: ``std = gain / sqrt(fan_in)``, ``gain`` from :func:`activation_gain` (sqrt(2) for ReLU,
      ELU, GELU, SiLU...);
    * LeCun: ``std = 1 / sqrt(fan_in)``;
    * Glorot: ``std = sqrt(2 / (fan_in + fan_out))``.

    Biases are set to zero. ``"default"`` leaves the module untouched. Lazy (uninitialized)
    parameters are skipped.

    Args:
        module: the module to initialize (itself and all its submodules). Required.
        init: one of :data:`INIT_PRESETS`. Default ``"auto"`` (LeCun normal for SELU, He otherwise).
        activation: the activation that follows these layers. Default ``"elu"``.

    Returns:
        ``module`` itself.

    Raises:
        TypeError: if ``init`` or ``activation`` is not a string.
        ValueError: if ``init`` or ``activation`` is unknown.

    Example::

        layer = init_weights_(torch.nn.Linear(512, 256), "he_normal", "relu")
        assert abs(layer.weight.std().item() - (2 / 512) ** 0.5) < 0.003
    """
    preset = resolve_init(init, activation)
    if preset == "default":
        return module
    uniform = preset.endswith("uniform")
    with torch.no_grad():
        for layer in module.modules():
            if not isinstance(layer, INIT_MODULES):
                continue
            weight = cast(Tensor, layer.weight)
            bias = cast("Tensor | None", layer.bias)
            if nn.parameter.is_lazy(weight):
                continue
            std = _preset_std(preset, activation, weight)
            if uniform:
                bound = math.sqrt(3.0) * std
                weight.uniform_(-bound, bound)
            else:
                weight.normal_(0.0, std)
            if bias is not None and not nn.parameter.is_lazy(bias):
                bias.zero_()
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
        TypeError: if a width is not an integer or a name is not a string.
        ValueError: if a width is < 1, ``dropout`` is outside ``[0, 1)`` or a name is unknown.

    Example:
        >>> block = dense_block(64, 128, activation="selu", dropout=0.1)
        >>> tuple(type(layer).__name__ for layer in block)
        ('Linear', 'SELU', 'AlphaDropout')
    """
    check_int("in_features", in_features, 1)
    check_int("out_features", out_features, 1)
    p = _check_dropout(dropout)
    preset = resolve_init(init, activation)
    linear = init_weights_(nn.Linear(in_features, out_features), preset, activation)
    layers: list[nn.Module] = [linear, ACTIVATIONS[activation]()]
    if p > 0.0:
        if activation == "selu":
            layers.append(MCAlphaDropout(p) if mc else nn.AlphaDropout(p))
        else:
            layers.append(MCDropout(p) if mc else nn.Dropout(p))
    return nn.Sequential(*layers)
