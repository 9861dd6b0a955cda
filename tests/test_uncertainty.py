"""Monte Carlo dropout: summary numbers, module modes, batched sampling, Trainer.predict."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_reg.layers import MCDropout
from lightning_reg.uncertainty import (
    MCDropoutMixin,
    MCDropoutResult,
    _uniform_masks,
    mc_dropout_predict,
)
from tests.helpers import digits, digits_loader, make_trainer


def _net(p: float = 0.3, batchnorm: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(64, 64)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(64))
    layers += [nn.ReLU(), nn.Dropout(p), nn.Linear(64, 10)]
    return nn.Sequential(*layers)


def test_summary_is_consistent_with_the_samples() -> None:
    model = _net()
    x, _ = digits(32)
    result = mc_dropout_predict(model, x, n_samples=50, return_samples=True)
    assert isinstance(result, MCDropoutResult)
    assert result.samples is not None
    assert result.samples.shape == (50, 32, 10)
    assert result.mean.shape == result.std.shape == (32, 10)
    assert result.entropy.shape == (32,)
    torch.testing.assert_close(result.mean.sum(-1), torch.ones(32))
    torch.testing.assert_close(result.samples.sum(-1), torch.ones(50, 32))
    torch.testing.assert_close(result.mean, result.samples.mean(0))
    torch.testing.assert_close(result.std, result.samples.std(0, correction=0))
    expected_entropy = -(result.mean * result.mean.log()).sum(-1)
    torch.testing.assert_close(result.entropy, expected_entropy)
    assert result.std.min() >= 0 and result.std.mean() > 1e-3
    assert mc_dropout_predict(model, x, n_samples=5).samples is None


def test_without_dropout_std_is_zero_and_mean_is_the_deterministic_prediction() -> None:
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    x, _ = digits(16)
    with pytest.warns(UserWarning, match="no dropout module"):
        result = mc_dropout_predict(model, x, n_samples=20)
    assert torch.equal(result.std, torch.zeros_like(result.std))
    with torch.no_grad():
        torch.testing.assert_close(result.mean, F.softmax(model(x), -1))


def test_apply_softmax_false_for_models_returning_probabilities() -> None:
    model = nn.Sequential(_net(), nn.Softmax(-1))
    x, _ = digits(8)
    torch.manual_seed(5)
    probs = mc_dropout_predict(model, x, n_samples=7, apply_softmax=False, return_samples=True)
    torch.manual_seed(5)
    twice = mc_dropout_predict(model, x, n_samples=7, apply_softmax=True, return_samples=True)
    assert probs.samples is not None and twice.samples is not None
    torch.testing.assert_close(twice.samples, F.softmax(probs.samples, -1))


def test_batchnorm_stays_in_eval_and_its_statistics_are_untouched() -> None:
    model = _net(batchnorm=True)
    model.train()
    model(torch.randn(64, 64))  # give the running statistics non-trivial values
    bn = model[1]
    stats = {k: v.clone() for k, v in bn.state_dict().items()}
    seen: dict[str, bool] = {}
    bn.register_forward_hook(lambda m, i, o: seen.__setitem__("bn", m.training))
    model[3].register_forward_hook(lambda m, i, o: seen.__setitem__("dropout", m.training))
    x, _ = digits(32)
    mc_dropout_predict(model, x, n_samples=30)
    assert seen == {"bn": False, "dropout": True}
    for key, value in bn.state_dict().items():
        assert torch.equal(value, stats[key]), key
    assert all(m.training for m in model.modules())


class _Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def test_modes_restored_after_success_and_after_an_error() -> None:
    model = _net(batchnorm=True)
    model.eval()
    model[0].train()  # a mixed state must come back exactly
    before = [m.training for m in model.modules()]
    x, _ = digits(4)
    mc_dropout_predict(model, x, n_samples=3)
    assert [m.training for m in model.modules()] == before
    broken = nn.Sequential(model, _Boom())
    before = [m.training for m in broken.modules()]
    with pytest.raises(RuntimeError, match="boom"):
        mc_dropout_predict(broken, x, n_samples=3)
    assert [m.training for m in broken.modules()] == before
    assert torch.is_grad_enabled()


def _count_forwards(model: nn.Module) -> list[int]:
    rows: list[int] = []
    model.register_forward_pre_hook(lambda m, args: rows.append(len(args[0])))
    return rows


def test_batched_sampling_forward_counts() -> None:
    model = _net()
    x, _ = digits(32)
    rows = _count_forwards(model)
    mc_dropout_predict(model, x, n_samples=100)
    assert rows == [32, 3168]  # CPU default: one sample (measuring activations), then the rest
    rows.clear()
    mc_dropout_predict(model, x, n_samples=200)
    assert rows == [32, 4096, 2272]  # at most 4096 rows a pass on CPU: 1 + 128 + 71 samples
    rows.clear()
    mc_dropout_predict(model, torch.randn(5000, 64), n_samples=2)
    assert rows == [5000, 5000]  # never fewer rows than the input has
    rows.clear()
    mc_dropout_predict(model, x, n_samples=100, batch_size=1000)
    assert rows == [992, 992, 992, 224]  # 31 + 31 + 31 + 7 samples of 32 rows
    rows.clear()
    mc_dropout_predict(model, x, n_samples=3, batch_size=20)
    assert rows == [20, 20, 20, 12, 12, 12]  # rows chunked, one sample per pass


def test_cpu_default_passes_keep_the_largest_activation_within_budget() -> None:
    """A layer 4096x wider than the input: the first pass (one sample) measures it, and the
    passes after it hold at most 2**22 / 65536 = 64 rows, where the input alone allows 4096."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Dropout(0.1), nn.Linear(16, 65536), nn.ReLU(), nn.Linear(65536, 4), nn.Dropout(0.1)
    )
    rows = _count_forwards(model)
    result = mc_dropout_predict(model, torch.randn(16, 16), n_samples=20, return_samples=True)
    assert rows == [16, 64, 64, 64, 64, 48]  # 1 + 4 + 4 + 4 + 4 + 3 samples
    assert result.samples is not None and result.samples.shape == (20, 16, 4)


def test_one_sample_per_pass_equals_the_plain_loop_under_the_same_seed() -> None:
    model = _net()
    x, _ = digits(32)
    torch.manual_seed(7)
    result = mc_dropout_predict(model, x, n_samples=10, batch_size=32, return_samples=True)
    torch.manual_seed(7)
    model.train()
    with torch.no_grad(), _uniform_masks(model):  # the masks mc_dropout_predict draws on CPU
        loop = torch.stack([F.softmax(model(x), -1) for _ in range(10)])
    assert result.samples is not None
    torch.testing.assert_close(result.samples, loop)


def test_batched_sampling_matches_the_loop_statistically() -> None:
    model = _net(p=0.5)
    x, _ = digits(32)
    n = 1500
    torch.manual_seed(0)
    batched = mc_dropout_predict(model, x, n_samples=n)
    model.train()
    with torch.no_grad():
        loop = torch.stack([F.softmax(model(x), -1) for _ in range(n)])
    std_loop, mean_loop = torch.std_mean(loop, 0, correction=0)
    standard_error = ((batched.std**2 + std_loop**2) / n).sqrt()
    assert ((batched.mean - mean_loop).abs() <= 6 * standard_error + 1e-6).all()
    torch.testing.assert_close(batched.std, std_loop, atol=0.01, rtol=0.15)
    # A wrong sample/row layout would mix different inputs' predictions: each row's mean must be
    # far closer to the loop's mean for the same input than to the loop's mean for any other.
    distances = torch.cdist(batched.mean, mean_loop)
    own = distances.diag()
    nearest_other = (distances + torch.eye(len(x)) * 1e9).min(1).values
    assert (own < 0.5 * nearest_other).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_samples": 0}, ValueError, "`n_samples` must be an integer >= 1, got 0"),
        ({"n_samples": 2.0}, TypeError, "`n_samples` must be an integer"),
        ({"n_samples": True}, TypeError, "`n_samples` must be an integer"),
        ({"batch_size": 0}, ValueError, "`batch_size` must be an integer >= 1, got 0"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        mc_dropout_predict(_net(), torch.randn(4, 64), **kwargs)


def test_mc_dropout_layer_counts_as_dropout() -> None:
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), MCDropout(0.4), nn.Linear(32, 10)).eval()
    result = mc_dropout_predict(model, digits(8)[0], n_samples=20)
    assert result.std.mean() > 1e-3


class _MCClassifier(MCDropoutMixin, pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = _net(p=0.3, batchnorm=True)
        self.dropout_modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.dropout_modes.append(self.net[3].training)
        return self.net(x)


def test_trainer_predict_returns_mc_summaries(tmp_path: Any) -> None:
    model = _MCClassifier()
    loader = digits_loader(n=64, batch_size=32)
    x, _ = digits(64)
    trainer = make_trainer(tmp_path)
    model.mc_samples = 40
    results = trainer.predict(model, dataloaders=loader)
    assert results is not None and len(results) == 2
    first = results[0]
    assert isinstance(first, MCDropoutResult)
    assert first.mean.shape == (32, 10)
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
        expected = F.softmax(model.net(x), -1)
    torch.testing.assert_close(torch.cat(plain), expected)  # type: ignore[arg-type]
    assert model.dropout_modes == [False, False]


def test_trainer_predict_rejects_invalid_mc_samples(tmp_path: Any) -> None:
    model = _MCClassifier()
    model.mc_samples = 0
    with pytest.raises(ValueError, match="`mc_samples` must be an integer >= 1, got 0"):
        make_trainer(tmp_path).predict(model, dataloaders=digits_loader(n=8))


def test_on_predict_model_eval_leaves_dropout_on_for_a_custom_predict_step(tmp_path: Any) -> None:
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
    assert batchnorm_modes == [False, False]  # only dropout was switched back on
    model.mc_samples = None
    first, second = (trainer.predict(model, dataloaders=loader) for _ in range(2))
    assert first is not None and second is not None
    assert torch.equal(first[0], second[0])


# ------------------------------------------------------------------ shared dropout-free prefix


def _rows_seen(module: nn.Module) -> list[int]:
    rows: list[int] = []
    module.register_forward_pre_hook(lambda m, args: rows.append(len(args[0])))
    return rows


class _Opaque(nn.Module):
    """Runs a model without letting mc_dropout_predict see that it is a Sequential."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_layers_before_the_first_dropout_run_once_per_input_row() -> None:
    model = _net()  # Linear, ReLU, Dropout, Linear
    first, last = _rows_seen(model[0]), _rows_seen(model[3])
    x, _ = digits(32)
    torch.manual_seed(3)
    shared = mc_dropout_predict(model, x, n_samples=100, return_samples=True)
    assert first == [32] and last == [32, 3168]
    first.clear()
    last.clear()
    # The same samples as running the whole model on the replicated input: same masks drawn.
    torch.manual_seed(3)
    whole = mc_dropout_predict(_Opaque(model), x, n_samples=100, return_samples=True)
    assert first == [32, 3168] and last == [32, 3168]
    assert shared.samples is not None and whole.samples is not None
    torch.testing.assert_close(shared.samples, whole.samples, rtol=1e-5, atol=1e-6)
    first.clear()
    last.clear()
    mc_dropout_predict(model, x, n_samples=200)  # 1 + 128 + 71 samples
    assert first == [32] and last == [32, 4096, 2272]


def test_nested_sequentials_are_expanded_but_custom_forwards_and_hooks_are_respected() -> None:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(64, 32), nn.ReLU())
    head = nn.Sequential(nn.Sequential(nn.Dropout(0.3), nn.Linear(32, 32)), nn.Linear(32, 10))
    model = nn.Sequential(trunk, head)
    first = _rows_seen(trunk[0])
    x, _ = digits(8)
    mc_dropout_predict(model, x, n_samples=10)
    assert first == [8]

    class Doubling(nn.Sequential):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2

    first.clear()
    custom = Doubling(trunk, head)
    torch.manual_seed(1)
    got = mc_dropout_predict(custom, x, n_samples=10, apply_softmax=False, return_samples=True)
    torch.manual_seed(1)
    plain = mc_dropout_predict(model, x, n_samples=10, apply_softmax=False, return_samples=True)
    assert first == [8, 72, 8]  # Doubling ran whole (1 + 9 samples); the plain model shared
    assert got.samples is not None and plain.samples is not None
    torch.testing.assert_close(got.samples, 2 * plain.samples)

    first.clear()
    calls: list[int] = []
    model.register_forward_hook(lambda m, args, out: calls.append(len(out)))
    mc_dropout_predict(model, x, n_samples=10)
    assert calls == [8, 72] and first == [8, 72]  # a hook on the model itself still runs


def test_regularized_mlp_shares_its_prefix_unless_forward_is_overridden() -> None:
    from lightning_reg.demos import RegularizedMLP

    model = RegularizedMLP(hidden=(32, 32), dropout=0.2)
    linears = [m for m in model.net.modules() if isinstance(m, nn.Linear)]
    first = _rows_seen(linears[0])
    x, _ = digits(16)
    mc_dropout_predict(model, x, n_samples=50)
    assert first == [16]

    class Scaled(RegularizedMLP):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) / 2.0

    scaled = Scaled(hidden=(32, 32), dropout=0.2)
    assert scaled.mc_dropout_module() is scaled


# ------------------------------------------------------------------ CPU mask sampler


def test_cpu_masks_have_dropouts_distribution_and_are_confined_to_the_call() -> None:
    from lightning_reg.layers import _sample_dropout

    torch.manual_seed(0)
    x = torch.randn(400_000).abs() + 0.1
    for p in (0.05, 0.2, 0.5, 0.9):
        y = _sample_dropout(x, p)
        kept = y != 0
        # keep rate 1 - p within 5 standard errors; survivors scaled by exactly 1 / (1 - p)
        assert abs(kept.float().mean().item() - (1 - p)) < 5 * (p * (1 - p) / len(x)) ** 0.5
        torch.testing.assert_close(y[kept], x[kept] * (1 / (1 - p)), rtol=1e-6, atol=0)
    model = _net()
    dropout = model[2]
    model.register_forward_hook(lambda m, args, out: None)  # keep the whole model unsplit
    x, _ = digits(8)
    with pytest.raises(RuntimeError, match="boom"):
        mc_dropout_predict(nn.Sequential(model, _Boom()), x, n_samples=2)
    assert "forward" not in vars(dropout)  # the patched forward is removed, also on error
    mc_dropout_predict(model, x, n_samples=2)
    assert "forward" not in vars(dropout)
    # Outside MC prediction (training, autograd on) the module is torch's own dropout.
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(1)
    b = model[3](F.dropout(model[1](model[0](x)), 0.3, training=True))
    torch.testing.assert_close(a, b)


def test_mc_dropout_layer_uses_torch_dropout_when_training() -> None:
    layer = MCDropout(0.3)
    x = torch.randn(64, 32, requires_grad=True)
    torch.manual_seed(2)
    y = layer(x)
    torch.manual_seed(2)
    torch.testing.assert_close(y, F.dropout(x, 0.3, training=True))
    y.sum().backward()
    assert x.grad is not None
    with torch.no_grad():  # prediction on CPU: the uniform-draw sampler, same distribution
        kept = (layer(torch.ones(200_000)) != 0).float().mean().item()
    assert abs(kept - 0.7) < 0.005
