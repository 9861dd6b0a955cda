"""Layers: MC dropout layers, activations, init presets (statistics), dense blocks."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_reg.layers import (
    ACTIVATIONS,
    INIT_PRESETS,
    MCAlphaDropout,
    MCDropout,
    activation,
    activation_gain,
    dense_block,
    init_weights_,
    resolve_init,
)


def test_mc_dropout_stays_on_in_eval_and_matches_torch_dropout() -> None:
    layer = MCDropout(0.3).eval()
    x = torch.ones(200, 500)
    torch.manual_seed(1)
    out = layer(x)
    torch.manual_seed(1)
    expected = F.dropout(x, 0.3, training=True)
    assert torch.equal(out, expected)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.01
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / 0.7))
    assert not torch.equal(layer(x), layer(x))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_mc_dropout_masks_do_not_depend_on_grad_mode(mode: str) -> None:
    layer = MCDropout(0.3).train(mode == "train")
    x = torch.randn(64, 128, requires_grad=True)
    torch.manual_seed(2)
    with_grad = layer(x)
    torch.manual_seed(2)
    with torch.no_grad():
        without = layer(x)
    torch.manual_seed(2)
    with torch.inference_mode():
        inference = layer(x)
    assert torch.equal(with_grad.detach(), without) and torch.equal(without, inference)
    with_grad.sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, (with_grad != 0).float() / 0.7)


def test_mc_alpha_dropout_stays_on_in_eval_and_matches_torch() -> None:
    layer = MCAlphaDropout(0.2).eval()
    x = torch.randn(100, 400)
    torch.manual_seed(3)
    out = layer(x)
    torch.manual_seed(3)
    assert torch.equal(out, F.alpha_dropout(x, 0.2, training=True))
    assert not torch.equal(out, x)
    assert torch.equal(nn.AlphaDropout(0.2).eval()(x), x)


def test_activation_names() -> None:
    assert isinstance(activation("selu"), nn.SELU)
    assert isinstance(activation("leaky_relu"), nn.LeakyReLU)
    assert activation("relu") is not activation("relu")
    with pytest.raises(ValueError, match=r"`activation` must be one of .*'elu'.*got 'swishy'"):
        activation("swishy")
    with pytest.raises(TypeError, match="`activation` must be a string"):
        activation(nn.ReLU)  # type: ignore[arg-type]


def test_gains_match_torch_calculate_gain() -> None:
    assert activation_gain("relu") == pytest.approx(nn.init.calculate_gain("relu"))
    assert activation_gain("leaky_relu") == pytest.approx(
        nn.init.calculate_gain("leaky_relu", 0.01)
    )
    assert activation_gain("tanh") == pytest.approx(nn.init.calculate_gain("tanh"))
    assert activation_gain("elu") == pytest.approx(math.sqrt(2))
    assert activation_gain("selu") == 1.0
    assert set(ACTIVATIONS) >= {"relu", "elu", "selu", "gelu", "leaky_relu", "tanh", "sigmoid"}


def test_resolve_init() -> None:
    assert resolve_init("auto", "selu") == "lecun_normal"
    assert resolve_init("auto", "elu") == "he_normal"
    assert resolve_init("glorot_uniform", "selu") == "glorot_uniform"
    with pytest.raises(ValueError, match=r"`init` must be one of .*'he_normal'.*got 'xavier'"):
        resolve_init("xavier", "relu")
    with pytest.raises(TypeError, match="`init` must be a string"):
        resolve_init(None, "relu")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("init", "act", "expected_std"),
    [
        ("he_normal", "relu", math.sqrt(2 / 1000)),
        ("he_normal", "elu", math.sqrt(2 / 1000)),
        ("he_uniform", "relu", math.sqrt(2 / 1000)),
        ("he_normal", "tanh", (5 / 3) / math.sqrt(1000)),
        ("lecun_normal", "relu", math.sqrt(1 / 1000)),
        ("lecun_uniform", "selu", math.sqrt(1 / 1000)),
        ("glorot_normal", "tanh", math.sqrt(2 / 1500)),
        ("glorot_uniform", "tanh", math.sqrt(2 / 1500)),
        ("auto", "selu", math.sqrt(1 / 1000)),
        ("auto", "gelu", math.sqrt(2 / 1000)),
    ],
)
def test_init_presets_statistics(init: str, act: str, expected_std: float) -> None:
    torch.manual_seed(0)
    layer = init_weights_(nn.Linear(1000, 500), init, act)
    w = layer.weight
    # 500k draws: the sample std is within ~0.1% of the true one
    assert w.std().item() == pytest.approx(expected_std, rel=0.01)
    assert abs(w.mean().item()) < 0.01 * expected_std
    assert torch.count_nonzero(layer.bias) == 0
    if init.endswith("uniform"):
        assert w.abs().max().item() <= math.sqrt(3) * expected_std
    else:
        # normal: about 0.27% of the draws beyond 3 std (a uniform would have none)
        assert (w.abs() > 3 * expected_std).float().mean().item() == pytest.approx(0.0027, rel=0.2)


def test_init_conv_uses_receptive_field_and_default_keeps_torch_init() -> None:
    torch.manual_seed(0)
    conv = init_weights_(nn.Conv2d(64, 128, 3), "he_normal", "relu")
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.02)
    layer = nn.Linear(10, 10)
    before = [p.clone() for p in layer.parameters()]
    init_weights_(layer, "default", "relu")
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters(), strict=True))
    with pytest.warns(UserWarning, match=r"`1` \(LazyLinear\).*after a forward pass"):
        lazy = init_weights_(nn.Sequential(nn.Linear(4, 4), nn.LazyLinear(4)), "he_normal")
    assert nn.parameter.is_lazy(lazy[1].weight)


@pytest.mark.parametrize("groups", [1, 4])
def test_he_and_lecun_fan_in_of_a_transposed_convolution_counts_its_input_channels(
    groups: int,
) -> None:
    """A ConvTranspose weight is ``(in, out / groups, *kernel)``, so torch's fan-in
    (``weight.size(1) * kernel``) counts output channels: 64 -> 8 channels came out with 8
    times the variance. LeCun keeps the output variance of a standardized input at 1."""
    layer = nn.ConvTranspose2d(64, 8 * groups, 3, groups=groups)
    torch.manual_seed(0)
    init_weights_(layer, "lecun_normal", "selu")
    fan_in = 64 // groups * 9
    expected = torch.empty_like(layer.weight)
    torch.manual_seed(0)
    nn.init.normal_(expected, 0.0, fan_in**-0.5)
    torch.testing.assert_close(layer.weight, expected)
    torch.manual_seed(0)
    init_weights_(layer, "he_uniform", "relu")
    bound = math.sqrt(3) * math.sqrt(2 / fan_in)
    torch.manual_seed(0)
    torch.testing.assert_close(layer.weight, torch.empty_like(expected).uniform_(-bound, bound))
    init_weights_(layer, "lecun_normal", "selu")
    with torch.no_grad():
        out = layer(torch.randn(256, 64, 10, 10))[..., 2:-2, 2:-2]  # every tap inside
    assert out.var().item() == pytest.approx(1.0, rel=0.1)


def test_init_reaches_parametrized_weights_through_right_inverse() -> None:
    """A parametrized weight is drawn whole and assigned, so the parametrization's
    ``right_inverse`` sets its originals (weight norm: ``g`` and ``v``); writing into the
    evaluated ``layer.weight`` changed nothing."""
    layer = nn.utils.parametrizations.weight_norm(nn.Linear(256, 128))
    spectral = nn.utils.parametrizations.spectral_norm(nn.Linear(256, 128))
    expected = torch.empty(128, 256)
    torch.manual_seed(3)
    nn.init.kaiming_normal_(expected, nonlinearity="relu")
    for module in (layer, spectral):
        torch.manual_seed(3)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the parametrizations' originals are not named
            init_weights_(module, "he_normal", "relu")
    torch.testing.assert_close(layer.weight, expected)
    torch.testing.assert_close(spectral.parametrizations.weight.original, expected)
    with pytest.warns(FutureWarning):
        hooked = nn.utils.weight_norm(nn.Linear(4, 4))  # the deprecated hook form
    with pytest.raises(TypeError, match=r"`0` \(Linear\).*parametrizations.weight_norm"):
        init_weights_(nn.Sequential(hooked), "he_normal", "relu")


def test_init_names_the_weight_matrices_it_leaves_at_pytorchs_init() -> None:
    """Only Linear/Conv/ConvTranspose weights get the preset: an LSTM, an embedding or an
    attention's in-projection in the module keeps PyTorch's init, and a warning names those
    weights (the attention's out_proj is a Linear: initialized)."""
    model = nn.Sequential(nn.Linear(8, 8), nn.LSTM(8, 8), nn.MultiheadAttention(8, 2))
    lstm = [p.clone() for p in model[1].parameters()]
    in_proj = model[2].in_proj_weight.clone()
    torch.manual_seed(0)
    out_proj = model[2].out_proj.weight.clone()
    # Before, the warning named `2` (MultiheadAttention) as a whole, whose out_proj (a Linear)
    # the preset does draw.
    with pytest.warns(UserWarning) as record:
        init_weights_(model, "he_normal", "relu")
    (message,) = [str(w.message) for w in record]
    assert message.startswith(
        "`1.weight_ih_l0`, `1.weight_hh_l0` (LSTM), `2.in_proj_weight` (MultiheadAttention) keep"
    )
    assert all(torch.equal(a, b) for a, b in zip(lstm, model[1].parameters(), strict=True))
    assert torch.equal(in_proj, model[2].in_proj_weight)
    assert not torch.equal(out_proj, model[2].out_proj.weight)
    expected = torch.empty(8, 8)
    torch.manual_seed(0)
    nn.init.kaiming_normal_(expected, nonlinearity="relu")
    assert torch.equal(model[0].weight, expected)


def test_dense_block_structure_and_validation() -> None:
    block = dense_block(64, 128, activation="relu", dropout=0.25)
    assert [type(m) for m in block] == [nn.Linear, nn.ReLU, nn.Dropout]
    assert block[2].p == 0.25
    selu = dense_block(64, 128, activation="selu", dropout=0.1)
    assert isinstance(selu[2], nn.AlphaDropout)
    assert [type(m) for m in dense_block(8, 8, dropout=0.0)] == [nn.Linear, nn.ELU]
    assert isinstance(dense_block(8, 8, dropout=0.5, mc=True)[2], MCDropout)
    assert isinstance(dense_block(8, 8, "selu", dropout=0.5, mc=True)[2], MCAlphaDropout)
    with pytest.raises(ValueError, match=r"`dropout` must be a finite number in \[0, 1\), got 1.0"):
        dense_block(8, 8, dropout=1.0)
    with pytest.raises(TypeError, match="`dropout`"):
        dense_block(8, 8, dropout="0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`out_features` must be an integer >= 1, got 0"):
        dense_block(8, 0)
    with pytest.raises(ValueError, match="`init` must be one of"):
        dense_block(8, 8, init="orthogonal")
    with pytest.raises(TypeError, match="`mc` must be a bool, got 'no'"):
        dense_block(8, 8, dropout=0.5, mc="no")  # type: ignore[arg-type]


def test_selu_lecun_preset_self_normalizes_through_20_layers() -> None:
    torch.manual_seed(0)
    from tests.helpers import digits

    x, _ = digits()
    blocks = [dense_block(64, 128, "selu")] + [dense_block(128, 128, "selu") for _ in range(19)]
    h = x
    with torch.no_grad():
        for block in blocks:
            h = block(h)
    assert abs(h.mean().item()) < 0.2
    assert abs(h.std().item() - 1.0) < 0.2
    # the same net with PyTorch's default init collapses: the preset is what makes it work
    for block in blocks:
        block[0].reset_parameters()
    h = x
    with torch.no_grad():
        for block in blocks:
            h = block(h)
    assert h.std().item() < 0.5


def test_selu_alpha_dropout_keeps_self_normalization_in_training() -> None:
    """SELU's dropout is alpha dropout (docs/regularization.md): 20 training-mode blocks at rate
    0.1 keep mean 0 and std 1, where nn.Dropout in its place drifts the std to about 1.27."""
    from tests.helpers import digits

    x, _ = digits()
    torch.manual_seed(0)
    blocks = [dense_block(64, 128, "selu", 0.1)] + [
        dense_block(128, 128, "selu", 0.1) for _ in range(19)
    ]

    def output() -> torch.Tensor:
        torch.manual_seed(1)
        h = x
        with torch.no_grad():
            for block in blocks:
                h = block(h)
        return h

    h = output()
    assert abs(h.mean().item()) < 0.05 and abs(h.std().item() - 1.0) < 0.05
    for block in blocks:
        block[2] = nn.Dropout(0.1)
    assert output().std().item() > 1.15


def test_init_presets_listed() -> None:
    assert set(INIT_PRESETS) == {
        "auto",
        "he_normal",
        "he_uniform",
        "lecun_normal",
        "lecun_uniform",
        "glorot_normal",
        "glorot_uniform",
        "default",
    }
