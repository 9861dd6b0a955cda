"""Monte Carlo dropout: what is sampled, modes, inputs, outputs, batching, Trainer.predict."""

from __future__ import annotations

import warnings
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_reg.demos import RegularizedMLP
from lightning_reg.layers import MCDropout
from lightning_reg.uncertainty import (
    MCDropoutMixin,
    MCDropoutResult,
    mc_dropout_mode,
    mc_dropout_predict,
)
from tests.distributed.harness import Checks
from tests.helpers import DigitsRegressor, digits, digits_loader, make_trainer


def _net(p: float = 0.3, batchnorm: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(64, 64)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(64))
    layers += [nn.ReLU(), nn.Dropout(p), nn.Linear(64, 10)]
    return nn.Sequential(*layers)


class _Opaque(nn.Module):
    """Runs a model without letting mc_dropout_predict see that it is a Sequential."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def _reference(model: nn.Module, x: torch.Tensor, n: int, softmax: bool) -> torch.Tensor:
    """``n`` plain forward passes in train mode with BatchNorm-type layers in eval."""
    was = [m.training for m in model.modules()]
    model.train()
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm1d)):
            m.eval()
    with torch.no_grad():
        out = torch.stack([model(x) for _ in range(n)])
    for m, mode in zip(model.modules(), was, strict=True):
        m.training = mode
    return out.softmax(-1) if softmax else out


def _assert_same_law(
    a: torch.Tensor, b: torch.Tensor, z: float = 5.0, spread_tolerance: float = 0.06
) -> None:
    """Samples ``a`` and ``b`` (first dim: samples) agree per output in mean and variance
    within ``z`` standard errors (the variance's error from the samples' fourth moment), and
    their std ratio averaged over the outputs is within ``spread_tolerance`` of 1: the per-output
    checks alone would miss one dropout of several left out (about 13% less spread for the
    transformer's attention dropout)."""
    n_a, n_b = len(a), len(b)
    std_a, mean_a = torch.std_mean(a, 0)
    std_b, mean_b = torch.std_mean(b, 0)
    se_mean = (std_a**2 / n_a + std_b**2 / n_b).sqrt()
    assert ((mean_a - mean_b).abs() <= z * se_mean + 1e-6).all()

    def var_se(s: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        m4 = ((s - s.mean(0)) ** 4).mean(0)
        return ((m4 - var**2).clamp_min(0) / len(s)).sqrt()

    se_var = (var_se(a, std_a**2) ** 2 + var_se(b, std_b**2) ** 2).sqrt()
    assert ((std_a**2 - std_b**2).abs() <= z * se_var + 1e-6).all()
    ratio = (std_a / std_b).mean().item()
    assert abs(ratio - 1) < spread_tolerance, ratio


# ------------------------------------------------------------------ what is sampled


class _TransformerClassifier(nn.Module):
    """A small nn.TransformerEncoder classifier with a BatchNorm in its head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.3, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.norm = nn.BatchNorm1d(16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.encoder(x).mean(1)))


@pytest.mark.slow
def test_transformer_spread_equals_train_mode_passes_in_law() -> None:
    model = _TransformerClassifier()
    model.train()
    model(torch.randn(64, 5, 16))  # non-trivial running statistics
    model.eval()
    torch.manual_seed(1)
    x = torch.randn(6, 5, 16)
    with torch.no_grad():  # eval mode: torch's fast path, no dropout at all
        assert torch.equal(model(x), model(x))
    n = 400
    torch.manual_seed(2)
    result = mc_dropout_predict(model, x, n_samples=n, task="classification", return_samples=True)
    torch.manual_seed(3)
    reference = _reference(model, x, n, softmax=True)
    assert result.samples is not None
    assert result.std.min() > 1e-3
    _assert_same_law(result.samples, reference)
    assert not any(m.training for m in model.modules())
    # Without the attention dropout (not sampled, as torch's eval fast path would have it) the
    # law differs, and the check above sees it.
    for layer in model.encoder.layers:
        layer.self_attn.dropout = 0.0
    without_attention = _reference(model, x, n, softmax=True)
    with pytest.raises(AssertionError):
        _assert_same_law(result.samples, without_attention)
    # The BatchNorm in train mode would normalize with the batch's statistics: another law.
    model.train()
    with torch.no_grad():
        batch_stats = torch.stack([model(x).softmax(-1) for _ in range(50)]).mean(0)
    assert (batch_stats - result.mean).abs().max() > 0.05


class _Attention(nn.Module):
    """Only attention-weight dropout (MultiheadAttention's own, then SDPA's dropout_p)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.attention = nn.MultiheadAttention(8, 2, dropout=0.5, batch_first=True)
        self.qkv = nn.Linear(8, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attention(x, x, x, need_weights=False)[0]
        q, k, v = self.qkv(x).unflatten(-1, (3, 8)).unbind(-2)
        p = 0.5 if self.training else 0.0
        b = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return (a + b).sum(1)


class _Functional(nn.Module):
    """Dropout written as ``F.dropout(x, p, training=self.training)`` in a forward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(F.dropout(x, 0.4, training=self.training))


class _SeqFirstLSTM(nn.Module):
    """A sequence-first LSTM (input ``(L, N, F)``, dropout between its layers) with a head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lstm = nn.LSTM(8, 16, num_layers=2, dropout=0.4)
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0][-1])


@pytest.mark.parametrize(
    ("model", "shape", "kwargs"),
    [
        (_Attention(), (5, 4, 8), {}),
        (_Functional(), (5, 8), {}),
        (_SeqFirstLSTM(), (4, 5, 8), {"batch_dim": 1, "output_batch_dim": 0}),
    ],
    ids=["attention", "functional", "lstm_sequence_first"],
)
def test_dropout_outside_dropout_modules_is_sampled_in_law(
    model: nn.Module, shape: tuple[int, ...], kwargs: dict[str, Any]
) -> None:
    model.eval()
    torch.manual_seed(0)
    x = torch.randn(shape)
    n = 400
    result = mc_dropout_predict(
        model, x, n_samples=n, task="regression", return_samples=True, **kwargs
    )
    assert result.samples is not None and result.std.min() > 1e-3
    assert result.samples.shape == (n, 5, *result.mean.shape[1:])
    _assert_same_law(result.samples, _reference(model, x, n, softmax=False))


def test_one_sample_per_pass_is_the_plain_train_mode_loop_bit_for_bit() -> None:
    """With one sample per forward pass the samples are torch's own: the same numbers as
    calling the model in train mode (BatchNorm in eval) under the same seed."""
    model = _Opaque(_net(batchnorm=True))
    x, _ = digits(16)
    torch.manual_seed(5)
    result = mc_dropout_predict(
        model, x, n_samples=6, task="regression", batch_size=16, return_samples=True
    )
    torch.manual_seed(5)
    torch.testing.assert_close(result.samples, _reference(model, x, 6, softmax=False))
    lstm = _SeqFirstLSTM()
    x = torch.randn(4, 5, 8)
    torch.manual_seed(6)
    seq = mc_dropout_predict(
        lstm, x, 3, task="regression", batch_dim=1, output_batch_dim=0, batch_size=5,
        return_samples=True,
    )  # fmt: skip
    torch.manual_seed(6)
    torch.testing.assert_close(seq.samples, _reference(lstm, x, 3, softmax=False))


def test_batchnorm_and_instancenorm_stay_in_eval_and_their_statistics_are_untouched() -> None:
    model = nn.Sequential(
        nn.Linear(64, 64),
        nn.BatchNorm1d(64),
        nn.Unflatten(1, (4, 16)),
        nn.InstanceNorm1d(4, track_running_stats=True),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(64, 10),
    )
    model.train()
    model(torch.randn(64, 64))  # non-trivial running statistics
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    seen: dict[str, bool] = {}
    for i in (1, 3, 5):
        model[i].register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(str(i), m.training))
    mc_dropout_predict(model, digits(32)[0], n_samples=30, task="classification")
    assert seen == {"1": False, "3": False, "5": True}
    for key, value in model.state_dict().items():
        assert torch.equal(value, stats[key]), key
    assert all(m.training for m in model.modules())


def test_batchnorm_without_running_statistics_gets_one_sample_of_all_rows_per_pass() -> None:
    """A BatchNorm without running statistics normalizes with the batch's statistics even in
    eval mode, so a pass holding the copies of other samples, or a chunk of the rows, would
    change every sample: each pass is one sample of all the input's rows, the user's loop."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 16), nn.Dropout(0.5), nn.BatchNorm1d(16, track_running_stats=False),
        nn.Linear(16, 3),
    )  # fmt: skip
    x, _ = digits(8)
    torch.manual_seed(7)
    result = mc_dropout_predict(model, x, n_samples=5, task="regression", return_samples=True)
    torch.manual_seed(7)
    torch.testing.assert_close(result.samples, _reference(model, x, 5, softmax=False))
    with pytest.raises(ValueError, match=r"batch_size=4.*8 rows.*`2` \(BatchNorm1d\)"):
        mc_dropout_predict(model, x, n_samples=5, task="regression", batch_size=4)


class _Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def test_modes_restored_after_success_and_after_an_error() -> None:
    model = _net(batchnorm=True)
    model.eval()
    model[0].train()  # a mixed state must come back exactly
    before = [m.training for m in model.modules()]
    x, _ = digits(4)
    mc_dropout_predict(model, x, n_samples=3, task="classification")
    assert [m.training for m in model.modules()] == before
    broken = nn.Sequential(model, _Boom())
    before = [m.training for m in broken.modules()]
    with pytest.raises(RuntimeError, match="boom"):
        mc_dropout_predict(broken, x, n_samples=3, task="classification")
    assert [m.training for m in broken.modules()] == before
    assert torch.is_grad_enabled()


def test_zero_spread_is_never_silent() -> None:
    x, _ = digits(16)
    plain = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    with pytest.warns(UserWarning, match=r"all 20 samples are identical.*found: none"):
        result = mc_dropout_predict(plain, x, n_samples=20, task="classification")
    assert torch.equal(result.std, torch.zeros_like(result.std))
    with torch.no_grad():
        torch.testing.assert_close(result.mean, F.softmax(plain(x), -1))
    off = nn.Sequential(nn.Linear(64, 8), nn.Dropout(0.0))
    with pytest.warns(UserWarning, match=r"`1` \(Dropout, p=0.0\)"):
        mc_dropout_predict(off, x, n_samples=5, task="regression")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mc_dropout_predict(off, x, n_samples=1, task="regression")  # one sample: no spread


def test_a_buffer_changed_by_train_mode_is_restored_and_named() -> None:
    torch.manual_seed(0)
    linear = nn.utils.parametrizations.spectral_norm(nn.Linear(8, 8))
    model = nn.Sequential(linear, nn.Dropout(0.2))
    saved = {k: v.clone() for k, v in model.named_buffers()}
    x = torch.randn(4, 8)
    with pytest.warns(UserWarning, match=r"`0.parametrizations.weight.0._u` \(_SpectralNorm\)"):
        mc_dropout_predict(model, x, n_samples=5, task="regression")
    for name, value in model.named_buffers():
        assert torch.equal(value, saved[name]), name
    spectral = type(linear.parametrizations.weight[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mc_dropout_predict(model, x, n_samples=5, task="regression", eval_modules=(spectral,))


def test_mc_dropout_mode_is_train_mode_with_statistics_layers_in_eval() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.RReLU(), nn.GroupNorm(2, 4))
    model.eval()
    with mc_dropout_mode(model, eval_modules=(nn.GroupNorm,)):
        assert [m.training for m in model] == [True, False, True, False]
    assert not any(m.training for m in model.modules())
    bad = ("BatchNorm",)
    with (
        pytest.raises(TypeError, match=r"`eval_modules` must hold nn\.Module subclasses"),
        mc_dropout_mode(model, eval_modules=bad),  # type: ignore[arg-type]
    ):
        pass


# ------------------------------------------------------------------ outputs


def test_classification_summary_is_consistent_with_the_samples() -> None:
    model = _net()
    x, _ = digits(32)
    result = mc_dropout_predict(model, x, n_samples=50, task="classification", return_samples=True)
    assert isinstance(result, MCDropoutResult)
    assert result.samples is not None and result.entropy is not None
    assert result.samples.shape == (50, 32, 10)
    assert result.mean.shape == result.std.shape == (32, 10)
    torch.testing.assert_close(result.samples.sum(-1), torch.ones(50, 32))
    torch.testing.assert_close(result.mean, result.samples.mean(0))
    torch.testing.assert_close(result.std, result.samples.std(0, correction=0))
    torch.testing.assert_close(result.entropy, -(result.mean * result.mean.log()).sum(-1))
    assert result.std.mean() > 1e-3
    assert mc_dropout_predict(model, x, n_samples=5, task="classification").samples is None


def test_regression_summarizes_the_raw_outputs() -> None:
    model = _net()
    x, _ = digits(32)
    torch.manual_seed(4)
    raw = mc_dropout_predict(model, x, n_samples=40, task="regression", return_samples=True)
    torch.manual_seed(4)
    probs = mc_dropout_predict(model, x, n_samples=40, task="classification", return_samples=True)
    assert raw.entropy is None and raw.samples is not None and probs.samples is not None
    torch.testing.assert_close(probs.samples, raw.samples.softmax(-1))  # same passes
    torch.testing.assert_close(raw.mean, raw.samples.mean(0))
    torch.testing.assert_close(raw.std, raw.samples.std(0, correction=0))
    assert not torch.allclose(raw.mean.sum(-1), torch.ones(32))
    with torch.no_grad():  # dropout right before the last Linear is unbiased: E = eval output
        expected = model.eval()(x)
    assert ((raw.mean - expected).abs() <= 5 * raw.std / 40**0.5 + 1e-5).all()


def test_from_logits_false_for_models_returning_probabilities() -> None:
    model = nn.Sequential(_net(), nn.Softmax(-1))
    x, _ = digits(8)
    torch.manual_seed(5)
    probs = mc_dropout_predict(
        model, x, 7, task="classification", from_logits=False, return_samples=True
    )
    torch.manual_seed(5)
    raw = mc_dropout_predict(model, x, 7, task="regression", return_samples=True)
    assert probs.samples is not None and probs.entropy is not None
    torch.testing.assert_close(probs.samples, raw.samples)


def test_probabilities_taken_for_logits_warn() -> None:
    """A model ending in a softmax, left at ``from_logits=True``, had its probabilities
    softmaxed again: flattened towards uniform (entropy near log C) without a word."""
    model = nn.Sequential(_net(), nn.Softmax(-1))
    x, _ = digits(8)
    with pytest.warns(UserWarning, match="look like probabilities.*from_logits=False"):
        mc_dropout_predict(model, x, 5, task="classification")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mc_dropout_predict(model, x, 5, task="classification", from_logits=False)
        mc_dropout_predict(_net(), x, 5, task="classification")
        mc_dropout_predict(nn.Sequential(_net(), nn.LogSoftmax(-1)), x, 5, task="classification")


@pytest.mark.parametrize("from_logits", [True, False])
def test_classification_without_a_class_dimension_raises(from_logits: bool) -> None:
    """A binary classifier's single logit or probability is no distribution over classes: a
    softmax over it gave probability 1 with zero spread (and a warning blaming the dropout),
    probabilities gave the entropy ``-p log p`` of one class."""
    model = nn.Sequential(nn.Linear(64, 16), nn.Dropout(0.3), nn.Linear(16, 1))
    if not from_logits:
        model.append(nn.Sigmoid())
    x, _ = digits(8)
    with pytest.raises(ValueError, match=r"last dimension.*size 1.*\(8, 1\).*both classes"):
        mc_dropout_predict(model, x, 5, task="classification", from_logits=from_logits)
    assert mc_dropout_predict(model, x, 5, task="regression").std.min() > 0
    model.append(nn.Flatten(0))  # (8,): a softmax over the batch
    with pytest.raises(ValueError, match=r"shape \(8,\) it is the batch dimension 0"):
        mc_dropout_predict(model, x, 5, task="classification", from_logits=from_logits)


# ------------------------------------------------------------------ inputs


def test_batches_as_lightning_gives_them() -> None:
    model = _net()
    x, y = digits(8)

    def run(batch: Any, **kwargs: Any) -> torch.Tensor:
        torch.manual_seed(9)
        result = mc_dropout_predict(
            model, batch, 5, task="regression", return_samples=True, **kwargs
        )
        assert result.samples is not None
        return result.samples

    expected = run(x)
    torch.testing.assert_close(run((x, y)), expected)
    torch.testing.assert_close(run([x, y]), expected)
    torch.testing.assert_close(run((y, x), input_key=1), expected)
    torch.testing.assert_close(run({"image": x, "label": y}, input_key="image"), expected)
    nested = {"inputs": {"x": x}}
    torch.testing.assert_close(run(nested, input_key=lambda b: b["inputs"]["x"]), expected)
    with pytest.raises(ValueError, match=r"dict with keys \['image', 'label'\].*`input_key`"):
        run({"image": x, "label": y})
    with pytest.raises(ValueError, match="`input_key='x'` selects nothing in the dict batch"):
        run({"image": x}, input_key="x")
    with pytest.raises(ValueError, match="`input_key=0` selects from a tuple, list or dict"):
        run(x, input_key=0)
    with pytest.raises(TypeError, match="The model input must be a tensor, got str"):
        run(("text", x))


def test_output_batch_dim_must_match_the_output() -> None:
    with pytest.raises(ValueError, match="set `output_batch_dim`"):
        mc_dropout_predict(_SeqFirstLSTM(), torch.randn(4, 5, 8), 3, task="regression", batch_dim=1)
    lstm = nn.Sequential(nn.Dropout(0.1), nn.LSTM(8, 4))  # returns (output, (h, c))
    with pytest.raises(TypeError, match="returns a tensor, got tuple"):
        mc_dropout_predict(lstm, torch.randn(4, 5, 8), 3, task="regression")


# ------------------------------------------------------------------ batched sampling


def _rows_seen(module: nn.Module) -> list[int]:
    rows: list[int] = []
    module.register_forward_pre_hook(lambda m, args: rows.append(len(args[0])))
    return rows


def test_pass_sizes() -> None:
    model = _net()
    x, _ = digits(32)
    first, last = _rows_seen(model[0]), _rows_seen(model[3])
    mc_dropout_predict(model, x, n_samples=100, task="classification")
    # A probe of 16 rows, then passes of at most 1 MiB: 4096 rows of 64 float32 activations.
    assert first == [32] and last == [16, 3200]
    last.clear()
    mc_dropout_predict(model, torch.randn(5000, 64), n_samples=2, task="classification")
    assert last == [16, 4096, 4096, 1808]  # chunks of 4096 rows: 5000 = 4096 + 904
    last.clear()
    mc_dropout_predict(model, torch.randn(2000, 64), n_samples=3, task="classification")
    assert last == [16, 4000, 2000]
    last.clear()
    mc_dropout_predict(model, x, n_samples=100, task="classification", batch_size=1000)
    assert last == [992, 992, 992, 224]  # 31 + 31 + 31 + 7 samples of 32 rows
    first.clear()
    last.clear()
    mc_dropout_predict(model, x, n_samples=3, task="classification", batch_size=20)
    assert first == [20, 12] and last == [20, 20, 20, 12, 12, 12]  # rows chunked


def test_layers_before_the_first_random_layer_run_once_and_give_the_same_samples() -> None:
    model = _net()  # Linear, ReLU, Dropout, Linear
    first, last = _rows_seen(model[0]), _rows_seen(model[3])
    x, _ = digits(32)
    torch.manual_seed(3)
    kwargs: dict[str, Any] = {"task": "regression", "batch_size": 800, "return_samples": True}
    shared = mc_dropout_predict(model, x, 100, **kwargs)
    assert first == [32] and last == [800] * 4
    first.clear()
    torch.manual_seed(3)
    whole = mc_dropout_predict(_Opaque(model), x, 100, **kwargs)
    assert first == [800] * 4
    assert shared.samples is not None and whole.samples is not None
    torch.testing.assert_close(shared.samples, whole.samples, rtol=1e-5, atol=1e-6)


class _Noise(nn.Module):
    """Randomness that is not a dropout module, on in every mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn_like(x)


def test_the_prefix_ends_at_any_layer_that_may_draw_randomness() -> None:
    x, _ = digits(8)
    for noisy in (_Noise(), nn.RReLU(), nn.Sequential(nn.Linear(64, 64), _Noise())):
        model = nn.Sequential(nn.Linear(64, 64), noisy, nn.Linear(64, 4))
        first, last = _rows_seen(model[0]), _rows_seen(model[2])
        result = mc_dropout_predict(model, x, 10, task="regression")
        assert first == [8] and last == [8, 80]  # a probe pass of the 8 rows, then 10 samples
        assert result.std.min() > 1e-3  # drawn for every sample, not once
    trunk = nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU(), nn.Flatten())
    model = nn.Sequential(trunk, nn.Sequential(nn.Dropout(0.3), nn.Linear(124, 4)))
    conv = _rows_seen(trunk[0])
    mc_dropout_predict(model, x[:, None], 10, task="regression")
    assert conv == [8]  # nested Sequentials are expanded

    class Doubling(nn.Sequential):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2

    conv.clear()
    mc_dropout_predict(Doubling(*model), x[:, None], 10, task="regression")
    assert conv == [8, 80]  # a Sequential with its own forward runs whole (after the probe)
    conv.clear()
    hooked = nn.Sequential(*model)
    hooked.register_forward_hook(lambda m, args, out: None)
    mc_dropout_predict(hooked, x[:, None], 10, task="regression")
    assert conv == [8, 80]  # and so does one with hooks of its own (they run)


def test_regularized_mlp_shares_its_prefix_unless_forward_is_overridden() -> None:
    model = RegularizedMLP(hidden=(32, 32), dropout=0.2)
    first = _rows_seen(model.net[1][0])
    mc_dropout_predict(model, digits(16)[0], n_samples=50, task="classification")
    assert first == [16]

    class Scaled(RegularizedMLP):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) / 2.0

    scaled = Scaled(hidden=(32, 32), dropout=0.2)
    assert scaled.mc_dropout_module() is scaled


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_samples": 0}, ValueError, "`n_samples` must be an integer >= 1, got 0"),
        ({"n_samples": 2.0}, TypeError, "`n_samples` must be an integer"),
        ({"n_samples": True}, TypeError, "`n_samples` must be an integer"),
        ({"task": "softmax"}, ValueError, r"`task` must be one of \['classification', 're"),
        ({"batch_size": 0}, ValueError, "`batch_size` must be an integer >= 1, got 0"),
        ({"batch_dim": -1}, ValueError, "`batch_dim` must be an integer >= 0, got -1"),
        ({"batch_dim": 2}, ValueError, "non-empty batch dimension 2, got shape"),
        ({"output_batch_dim": 1.0}, TypeError, "`output_batch_dim` must be an integer"),
        ({"from_logits": 1}, TypeError, "`from_logits` must be a bool, got 1"),
        ({"return_samples": None}, TypeError, "`return_samples` must be a bool"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    kwargs = {"task": "classification", **kwargs}
    with pytest.raises(error, match=match):
        mc_dropout_predict(_net(), torch.randn(4, 64), **kwargs)


def test_task_is_required() -> None:
    with pytest.raises(TypeError, match="task"):
        mc_dropout_predict(_net(), torch.randn(4, 64))  # type: ignore[call-arg]


# ------------------------------------------------------------------ fast_masks


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.001])
def test_fast_masks_keep_each_element_with_probability_1_minus_p(p: float) -> None:
    # The rate drawn is p rounded to a multiple of 2**-16; 0.001 is too close to 0 for that grid
    # and keeps torch's kernel, with p itself.
    rate = round(p * 2**16) / 2**16 if 2**-8 <= p <= 1 - 2**-8 else p
    x = torch.rand(1, 20_000) + 0.5
    result = mc_dropout_predict(
        nn.Dropout(p), x, 10, task="regression", fast_masks=True, return_samples=True
    )
    assert result.samples is not None
    kept = result.samples != 0
    n = kept.numel()
    assert abs(kept.float().mean().item() - (1 - rate)) < 5 * (rate * (1 - rate) / n) ** 0.5
    survivors = result.samples[kept]
    torch.testing.assert_close(survivors, x.expand_as(result.samples)[kept] / (1 - rate))


def test_fast_masks_sample_the_same_law_and_act_only_within_the_call() -> None:
    model = _net(p=0.5)
    x, _ = digits(16)
    n = 600
    torch.manual_seed(0)
    fast = mc_dropout_predict(model, x, n, task="regression", fast_masks=True, return_samples=True)
    plain = mc_dropout_predict(model, x, n, task="regression", return_samples=True)
    assert fast.samples is not None and plain.samples is not None
    _assert_same_law(fast.samples, plain.samples)
    torch.manual_seed(1)
    one_per_pass: dict[str, Any] = {"task": "regression", "batch_size": 16, "return_samples": True}
    fast = mc_dropout_predict(model, x, 4, fast_masks=True, **one_per_pass)
    torch.manual_seed(1)
    plain = mc_dropout_predict(model, x, 4, **one_per_pass)
    assert not torch.equal(fast.samples, plain.samples)  # other numbers: another sampler
    torch.manual_seed(1)
    torch.testing.assert_close(plain.samples, _reference(model, x, 4, softmax=False))


class _AttentionWithWeights(nn.Module):
    """``nn.MultiheadAttention`` (self- or cross-attention) returning its output and per-head
    weights side by side, so a sample shows the dropped weights and what they produced."""

    def __init__(self, cross: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.attention = nn.MultiheadAttention(8, 2, dropout=0.3, batch_first=True)
        self.memory = torch.randn(1, 6, 8) if cross else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kv = x if self.memory is None else self.memory.expand(x.shape[0], -1, -1)
        out, weights = self.attention(x, kv, kv, need_weights=True, average_attn_weights=False)
        return torch.cat([out.flatten(1), weights.flatten(1)], 1)


@pytest.mark.parametrize("cross", [False, True], ids=["self_attention", "cross_attention"])
def test_fast_masks_attention_is_torchs_attention_with_dropped_weights(cross: bool) -> None:
    # fast_masks computes nn.MultiheadAttention itself to draw the weights' dropout: each
    # sample's weights are torch's (eval mode, no dropout) kept or scaled by 1 / (1 - p'), and
    # its output is the out-projection of those weights times torch's value projection.
    model = _AttentionWithWeights(cross).eval()
    attention = model.attention
    torch.manual_seed(1)
    x = torch.randn(3, 4, 8)
    kv = x if model.memory is None else model.memory.expand(3, -1, -1)
    n, rows, keys = 30, 4, kv.shape[1]
    result = mc_dropout_predict(
        model, x, n, task="regression", fast_masks=True, return_samples=True
    )
    assert result.samples is not None
    out, weights = result.samples.split([rows * 8, 2 * rows * keys], -1)
    out = out.unflatten(-1, (rows, 8))
    weights = weights.unflatten(-1, (2, rows, keys))
    with torch.no_grad():
        _, expected = attention(x, kv, kv, need_weights=True, average_attn_weights=False)
        values = F.linear(kv, attention.in_proj_weight[16:], attention.in_proj_bias[16:])
        values = values.unflatten(-1, (2, 4)).transpose(1, 2)  # (N, heads, S, 4)
        mixed = (weights @ values).transpose(2, 3).flatten(-2)  # (samples, N, L, 8)
        projected = attention.out_proj(mixed)
    rate = round(0.3 * 2**16) / 2**16
    kept = weights != 0
    assert 0.5 < kept.float().mean() < 0.9
    torch.testing.assert_close(weights[kept], expected.expand_as(weights)[kept] / (1 - rate))
    torch.testing.assert_close(out, projected)


class _MaskedAttention(nn.Module):
    """Dropout fast_masks leaves to torch: attention with a padding mask, channel dropout."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.attention = nn.MultiheadAttention(8, 2, dropout=0.5, batch_first=True)
        self.channels = nn.Dropout1d(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding = torch.zeros(x.shape[:2], dtype=torch.bool)
        padding[:, -1] = True
        a = self.attention(x, x, x, key_padding_mask=padding, need_weights=False)[0]
        return self.channels(a).sum(1)


def test_fast_masks_leave_the_calls_they_do_not_cover_to_torch() -> None:
    model = _MaskedAttention().eval()
    x = torch.randn(4, 5, 8)
    torch.manual_seed(2)
    plain = mc_dropout_predict(model, x, 8, task="regression", return_samples=True)
    torch.manual_seed(2)
    fast = mc_dropout_predict(model, x, 8, task="regression", fast_masks=True, return_samples=True)
    assert plain.std.min() > 1e-3
    assert plain.samples is not None and fast.samples is not None
    assert torch.equal(fast.samples, plain.samples)  # torch's own kernels, same numbers


class _CausalAttention(nn.Module):
    """Only ``scaled_dot_product_attention(is_causal=True, dropout_p=...)``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.qkv = nn.Linear(8, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, 8)).unbind(-2)
        p = 0.4 if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True).sum(1)


class _ChannelCNN(nn.Module):
    """Channel dropout (``Dropout2d``, torch's kernel on both paths) and element dropout."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3)
        self.channels = nn.Dropout2d(0.3)
        self.head = nn.Sequential(nn.Flatten(), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.channels(self.conv(x)))


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (_net(p=0.3), (6, 64)),
        (_ChannelCNN(), (6, 1, 6, 6)),
        (_TransformerClassifier(), (6, 5, 16)),
        (_Functional(), (6, 8)),
        (_Attention(), (6, 4, 8)),
        (_CausalAttention(), (6, 4, 8)),
    ],
    ids=["mlp", "cnn_channel_dropout", "transformer", "functional", "attention", "causal"],
)
def test_fast_masks_sample_the_same_dropouts_as_the_plain_path(
    model: nn.Module, shape: tuple[int, ...]
) -> None:
    # The per-output mean/variance checks and the average spread ratio (within 6%) see any
    # dropout of several left out; the functional and attention models have only one.
    model.eval()
    torch.manual_seed(0)
    x = torch.randn(shape)
    n = 500
    fast = mc_dropout_predict(model, x, n, task="regression", fast_masks=True, return_samples=True)
    plain = mc_dropout_predict(model, x, n, task="regression", return_samples=True)
    assert fast.samples is not None and plain.samples is not None
    assert plain.std.min() > 1e-3
    _assert_same_law(fast.samples, plain.samples)


def test_mc_dropout_layer_counts_as_dropout() -> None:
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), MCDropout(0.4), nn.Linear(32, 10)).eval()
    result = mc_dropout_predict(model, digits(8)[0], n_samples=20, task="classification")
    assert result.std.mean() > 1e-3


# ------------------------------------------------------------------ Trainer.predict


class _MCClassifier(MCDropoutMixin, pl.LightningModule):
    mc_task = "classification"

    def __init__(self) -> None:
        super().__init__()
        self.net = _net(p=0.3, batchnorm=True)
        self.dropout_modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.dropout_modes.append(self.net[3].training)
        return self.net(x)


def test_trainer_predict_returns_mc_summaries_and_raw_outputs(tmp_path: Any) -> None:
    model = _MCClassifier()
    loader = digits_loader(n=64, batch_size=32)
    x, _ = digits(64)
    trainer = make_trainer(tmp_path)
    model.mc_samples = 40
    results = trainer.predict(model, dataloaders=loader)
    assert results is not None and len(results) == 2
    first = results[0]
    assert isinstance(first, MCDropoutResult) and first.entropy is not None
    torch.testing.assert_close(first.mean.sum(-1), torch.ones(32))
    assert first.std.mean() > 1e-3
    assert model.dropout_modes and all(model.dropout_modes)
    assert model.training and model.net[1].training  # Trainer restored the modes

    model.mc_samples = None
    model.dropout_modes.clear()
    plain = trainer.predict(model, dataloaders=loader)
    assert plain is not None
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.cat(plain), model.net(x))  # logits, no softmax
    assert model.dropout_modes == [False, False]


class _MCProbabilities(_MCClassifier):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).softmax(-1)


def test_trainer_predict_of_a_model_returning_probabilities(tmp_path: Any) -> None:
    """``mc_from_logits = False`` passes ``from_logits=False`` on: the probabilities are
    averaged as they are, the numbers of ``mc_dropout_predict`` under the same seed."""
    model = _MCProbabilities()
    model.mc_samples = 20
    loader = digits_loader(n=32, batch_size=32)
    with pytest.warns(UserWarning, match="look like probabilities"):
        make_trainer(tmp_path).predict(model, dataloaders=loader)
    model.mc_from_logits = False
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "MC dropout")
        results = make_trainer(tmp_path).predict(model, dataloaders=loader)
    torch.manual_seed(0)
    batch = next(iter(loader))  # the loader's iterator draws its seed, as in predict
    expected = mc_dropout_predict(model, batch, 20, task="classification", from_logits=False)
    assert results is not None and isinstance(results[0], MCDropoutResult)
    torch.testing.assert_close(results[0].mean, expected.mean)


def test_trainer_predict_in_bf16_summarizes_in_float32(tmp_path: Any) -> None:
    """Under ``precision="bf16-mixed"`` the logits are bfloat16; their softmax, mean, spread and
    entropy are computed in float32, as the user's loop over the same logits computes them (a
    bfloat16 probability near 1 is rounded by up to 2**-9, the entropy of a sure prediction
    by several percent)."""
    model = _MCClassifier()
    model.mc_samples, model.mc_batch_size = 30, 32  # one sample per pass: the plain loop's
    loader = digits_loader(n=32, batch_size=32)
    torch.manual_seed(0)
    results = make_trainer(tmp_path, precision="bf16-mixed").predict(model, loader)
    assert results is not None
    torch.manual_seed(0)
    x, _ = next(iter(loader))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = _reference(model, x, 30, softmax=False)
    assert logits.dtype == torch.bfloat16
    std, mean = torch.std_mean(logits.float().softmax(-1), 0, correction=0)
    result = results[0]
    assert result.mean.dtype == torch.float32
    torch.testing.assert_close(result.mean, mean)
    torch.testing.assert_close(result.std, std)
    torch.testing.assert_close(result.entropy, -torch.special.xlogy(mean, mean).sum(-1))


class _InPlaceInputDropout(MCDropoutMixin, pl.LightningModule):
    mc_task = "regression"

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(F.dropout(x, 0.5, self.training, inplace=True))


def test_in_place_dropout_of_the_input_samples_the_input_as_given(tmp_path: Any) -> None:
    """A model whose first op drops its input in place: the mean of a linear map of dropped
    inputs is the map of the input itself (closed form). The probe pass that sizes the passes
    must not drop the input's first rows for the samples that follow, nor change the batch."""
    model = _InPlaceInputDropout()
    model.mc_samples = 2000
    (result,) = make_trainer(tmp_path).predict(model, digits_loader(n=32, batch_size=32))
    x, _ = digits(32)
    with torch.no_grad():
        expected = model.linear(x)
    assert ((result.mean - expected).abs() <= 6 * result.std / 2000**0.5).all()
    given = x.clone()
    mc_dropout_predict(model, x, 10, task="regression")
    torch.testing.assert_close(x, given)


def test_trainer_predict_with_fast_masks_samples_the_same_law(tmp_path: Any) -> None:
    # Lightning predicts under inference mode; mc_fast_masks draws there too.
    model = _MCClassifier()
    loader = digits_loader(n=32, batch_size=32)
    model.mc_samples = 400
    torch.manual_seed(0)
    plain = make_trainer(tmp_path).predict(model, dataloaders=loader)
    model.mc_fast_masks = True
    torch.manual_seed(0)
    fast = make_trainer(tmp_path).predict(model, dataloaders=loader)
    assert plain is not None and fast is not None
    p, f = plain[0], fast[0]
    assert isinstance(p, MCDropoutResult) and isinstance(f, MCDropoutResult)
    torch.testing.assert_close(f.mean.sum(-1), torch.ones(32))
    assert f.std.mean() > 1e-3
    assert not torch.equal(f.mean, p.mean)  # same seed, other sampler: the fast path ran
    standard_error = (p.std**2 / 400 + f.std**2 / 400).sqrt() + 1e-6
    assert ((f.mean - p.mean).abs() / standard_error).max() < 5
    assert 0.9 < (f.std.mean() / p.std.mean()).item() < 1.1


def test_regularized_module_predict_is_the_raw_output_unless_it_is_a_classifier(
    tmp_path: Any,
) -> None:
    loader = digits_loader(n=32, batch_size=16)
    x, _ = digits(32)
    regressor = DigitsRegressor(dropout=0.2)
    out = make_trainer(tmp_path).predict(regressor, dataloaders=loader)
    assert out is not None
    with torch.no_grad():
        torch.testing.assert_close(torch.cat(out), regressor.eval()(x))  # not softmax rows
    regressor.mc_samples = 200
    summaries = make_trainer(tmp_path).predict(regressor, dataloaders=loader)
    assert summaries is not None
    summary = summaries[0]
    assert isinstance(summary, MCDropoutResult)
    assert summary.entropy is None and summary.std.min() > 1e-3
    direct = mc_dropout_predict(regressor, x[:16], 200, task="regression")
    se = ((summary.std**2 + direct.std**2) / 200).sqrt()
    assert ((summary.mean - direct.mean).abs() <= 5 * se + 1e-6).all()

    mlp = RegularizedMLP(hidden=(16,), dropout=0.2)
    probs = make_trainer(tmp_path).predict(mlp, dataloaders=loader)
    assert probs is not None
    with torch.no_grad():
        torch.testing.assert_close(torch.cat(probs), mlp.eval()(x).softmax(-1))


def test_trainer_predict_checks_mc_samples_and_mc_task(tmp_path: Any) -> None:
    model = _MCClassifier()
    model.mc_samples = 0
    with pytest.raises(ValueError, match="`mc_samples` must be an integer >= 1, got 0"):
        make_trainer(tmp_path).predict(model, dataloaders=digits_loader(n=8))
    untold = DigitsRegressor(mc_samples=5)
    untold.mc_task = None
    with pytest.raises(ValueError, match="`mc_task` must say what the model predicts"):
        make_trainer(tmp_path).predict(untold, dataloaders=digits_loader(n=8))


def test_trainer_predict_with_a_dict_batch(tmp_path: Any) -> None:
    x, y = digits(32)
    data = [{"pixels": x[i], "label": y[i]} for i in range(32)]
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    model = DigitsRegressor(dropout=0.2, mc_samples=8)
    model.mc_input_key = "pixels"
    results = make_trainer(tmp_path).predict(model, dataloaders=loader)
    assert results is not None
    assert [r.mean.shape for r in results] == [(16, 2), (16, 2)]
    model.mc_samples = None
    raw = make_trainer(tmp_path).predict(model, dataloaders=loader)
    assert raw is not None
    with torch.no_grad():
        torch.testing.assert_close(torch.cat(raw), model.eval()(x))


def test_on_predict_model_eval_samples_in_a_custom_predict_step(tmp_path: Any) -> None:
    batchnorm_modes: list[bool] = []

    class Custom(_MCClassifier):
        def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
            batchnorm_modes.append(self.net[1].training)
            return self(batch[0])

    model = Custom()
    trainer = make_trainer(tmp_path)
    loader = digits_loader(n=32, batch_size=32)
    model.mc_samples = 10
    first, second = (trainer.predict(model, dataloaders=loader) for _ in range(2))
    assert first is not None and second is not None
    assert not torch.equal(first[0], second[0])
    assert model.dropout_modes == [True, True]
    assert batchnorm_modes == [False, False]  # BatchNorm went back to eval
    model.mc_samples = None
    first, second = (trainer.predict(model, dataloaders=loader) for _ in range(2))
    assert first is not None and second is not None
    assert torch.equal(first[0], second[0])


@pytest.mark.slow
def test_trainer_predict_under_ddp_with_a_dict_batch(ddp_checks: Checks) -> None:
    """2-rank DDP: each rank summarizes its share of the rows (rank r: rows r, r + 2, ...);
    the result agrees in law with a single-process run on the same rows."""
    results = ddp_checks["mc_predict_dict"]
    x, _ = digits(64)
    for rank, r in enumerate(results):
        assert r["modes"] == [True]
        rows = x[rank::2]
        assert r["mean"].shape == r["std"].shape == (32, 2)
        model = DigitsRegressor(dropout=0.2)
        model.load_state_dict(r["state"])
        torch.manual_seed(rank)
        local = mc_dropout_predict(model, rows, 64, task="regression", return_samples=True)
        assert local.samples is not None
        se = (r["std"] ** 2 / 64 + local.std**2 / 64).sqrt()
        assert ((r["mean"] - local.mean).abs() <= 5 * se + 1e-6).all()
        torch.testing.assert_close(r["std"].mean(), local.std.mean(), rtol=0.15, atol=0)


# ---------------------------------------------------------------------------------------------
# Issue 23: passes sized by the activations' bytes; sequence-first layers and the default
# batch_dim. (Kept apart from the tests above to ease merging.)


def _largest_outputs(model: nn.Module) -> list[int]:
    """Bytes of the largest output of any submodule, per top-level forward of ``model``."""
    sizes: list[int] = []

    def record(module: nn.Module, args: Any, out: Any) -> None:
        outs = out if isinstance(out, tuple) else (out,)
        largest = max((t.nbytes for t in outs if isinstance(t, torch.Tensor)), default=0)
        sizes[-1] = max(sizes[-1], largest)

    model.register_forward_pre_hook(lambda module, args: sizes.append(0))
    for module in model.modules():
        module.register_forward_hook(record)
    return sizes


def test_pass_size_follows_the_bytes_of_the_activations() -> None:
    # Two models with the same input and prefix: the one with 4096-wide layers after the
    # dropout makes smaller passes, each within 1 MiB (the CPU default), not a fixed row count.
    x, _ = digits(32)
    torch.manual_seed(0)
    narrow = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 10))
    wide = nn.Sequential(
        nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 4096), nn.ReLU(),
        nn.Linear(4096, 10),
    )  # fmt: skip
    rows = {}
    for name, model in (("narrow", narrow), ("wide", wide)):
        seen = _rows_seen(model[2])
        mc_dropout_predict(model, x, n_samples=100, task="classification")
        rows[name] = seen[1:]  # after the probe's 16 rows
    assert rows["narrow"] == [3200]  # 4096 rows of 256 bytes would fit
    assert rows["wide"] == [64] * 50  # 64 rows of 4096 float32: 1 MiB


def test_a_transformer_with_torchs_default_feed_forward_stays_within_the_pass_bytes() -> None:
    # dim_feedforward=2048 (torch's default): 16 tokens make 128 KiB of activations per row,
    # so a pass holds 8 rows (the input is chunked), where rows-based passes made 16-64 MiB.
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, dropout=0.1, batch_first=True)
    x = torch.randn(40, 16, 32)
    sizes = _largest_outputs(layer)
    rows = _rows_seen(layer)
    torch.manual_seed(3)
    result = mc_dropout_predict(layer, x, n_samples=5, task="regression", return_samples=True)
    assert rows == [16] + [8] * 25  # the probe, then 5 samples of each 8-row chunk
    assert max(sizes[1:]) <= 2**20
    # The same samples as passes of explicitly 8 rows: the probe leaves the random stream.
    torch.manual_seed(3)
    again = mc_dropout_predict(
        layer, x, n_samples=5, task="regression", batch_size=8, return_samples=True
    )
    assert result.samples is not None and again.samples is not None
    torch.testing.assert_close(result.samples, again.samples, rtol=0, atol=0)


@pytest.mark.parametrize(
    "layer",
    [
        nn.TransformerEncoderLayer(8, 2, 16, dropout=0.2),
        nn.MultiheadAttention(8, 2, dropout=0.2),
        nn.LSTM(8, 8, num_layers=2, dropout=0.2),
        nn.GRU(8, 8, num_layers=2, dropout=0.2),
        nn.RNN(8, 8, num_layers=2, dropout=0.2),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_sequence_first_layers_with_the_default_batch_dim_warn(layer: nn.Module) -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.layer(x, x, x) if isinstance(self.layer, nn.MultiheadAttention) else None
            out = self.layer(x) if out is None else out
            return out[0] if isinstance(out, tuple) else out

    model = Net()
    x = torch.randn(5, 3, 8)  # (sequence, batch, features)
    with pytest.warns(UserWarning, match=r"`layer.*batch_first=False.*Pass batch_dim=1"):
        mc_dropout_predict(model, x, n_samples=4, task="regression")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for batch_dim in (0, 1):  # said explicitly: no warning
            mc_dropout_predict(model, x, n_samples=4, task="regression", batch_dim=batch_dim)


def test_batch_first_layers_do_not_warn() -> None:
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.2, batch_first=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mc_dropout_predict(layer, torch.randn(3, 5, 8), n_samples=4, task="regression")
