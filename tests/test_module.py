"""WeightPenaltyMixin, RegularizedModule and RegularizedMLP, driven by a real Trainer on digits."""

from __future__ import annotations

import itertools
import math
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_reg.callbacks.max_norm import MaxNorm
from lightning_reg.callbacks.weight_penalty import WeightPenalty
from lightning_reg.demos import RegularizedMLP
from lightning_reg.demos.data import DigitsDataModule
from lightning_reg.module import RegularizedModule, WeightPenaltyMixin
from lightning_reg.uncertainty import MCDropoutResult
from tests.helpers import digits, digits_loader, fit, make_trainer

L1, L2 = 1e-3, 1e-2


class _Plain(pl.LightningModule):
    """A digits MLP that records the gradients its first optimizer step sees in the module's
    ``on_before_optimizer_step`` (data plus penalty gradient: the module's hook runs after the
    callbacks', among them the penalty's)."""

    def __init__(self, optimizer: str = "sgd", lr: float = 0.1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        self.optimizer_name = optimizer
        self.lr = lr
        self.grads: dict[str, torch.Tensor] = {}

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        if not self.grads:
            self.grads = {
                n: p.grad.clone() for n, p in self.named_parameters() if p.grad is not None
            }

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups: Any = self.parameters()
        if isinstance(self, WeightPenaltyMixin):
            groups = self.penalty_param_groups()
        if self.optimizer_name == "adamw":
            return torch.optim.AdamW(groups, lr=self.lr)
        return torch.optim.SGD(groups, lr=self.lr, momentum=0.9)


class _OwnStep(WeightPenaltyMixin, _Plain):
    def __init__(self, **penalty: Any) -> None:
        super().__init__()
        self.configure_penalty(**{"l1": L1, "l2": L2, **penalty})

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        return F.cross_entropy(self.net(x), y)


class _DictStep(_OwnStep):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        return {"loss": F.cross_entropy(self.net(x), y), "size": len(x)}


class _SuperStep(_OwnStep):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        return super().training_step(batch, batch_idx) * 1.0


class _InheritedStep(WeightPenaltyMixin, _Plain):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = L1, L2


def _fit(model: pl.LightningModule, tmp_path: Any, steps: int = 1, **kwargs: Any) -> pl.Trainer:
    return fit(tmp_path, model, digits_loader(n=192, batch_size=64), max_steps=steps, **kwargs)


@pytest.mark.parametrize("cls", [_OwnStep, _DictStep, _SuperStep, _InheritedStep])
def test_gradient_is_data_gradient_plus_penalty_gradient(cls: type, tmp_path: Any) -> None:
    plain, penalized = _Plain(), cls()
    initial = {n: p.detach().clone() for n, p in penalized.named_parameters()}
    _fit(plain, tmp_path / "plain")
    _fit(penalized, tmp_path / "penalized")
    for name, weight in initial.items():
        expected = plain.grads[name]
        if name.endswith("weight"):
            expected = expected + L1 * weight.sign() + 2 * L2 * weight
        torch.testing.assert_close(penalized.grads[name], expected, atol=1e-7, rtol=1e-5)
    # the penalty's part is far above the tolerance: a missing or doubled penalty fails
    assert (penalized.grads["net.0.weight"] - plain.grads["net.0.weight"]).abs().mean() > 1e-3


def test_penalty_logged_and_equal_to_closed_form(tmp_path: Any) -> None:
    model = _OwnStep()
    trainer = _fit(model, tmp_path, log_every_n_steps=1)
    weights = [model.net[0].weight.detach(), model.net[2].weight.detach()]
    expected = sum(L1 * w.abs().sum() + L2 * (w**2).sum() for w in weights)
    logged = trainer.callback_metrics["train/penalty"]  # the weights the epoch ended with
    torch.testing.assert_close(logged, torch.as_tensor(expected), rtol=1e-5, atol=0)


def test_selection_by_names(tmp_path: Any) -> None:
    model = _OwnStep(names=["net.0.weight"])
    _fit(model, tmp_path, steps=3)
    assert [w is model.net[0].weight for w in model.penalized_weights()] == [True]
    # only the named weight is penalized
    plain = _Plain()
    _fit(plain, tmp_path / "plain")
    torch.testing.assert_close(model.grads["net.2.weight"], plain.grads["net.2.weight"])


def test_returning_none_skips_the_step(tmp_path: Any) -> None:
    class Skip(_OwnStep):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return None

    model = Skip()
    before = [p.detach().clone() for p in model.parameters()]
    _fit(model, tmp_path, steps=2)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def _trajectory(tmp_path: Any, **penalty: Any) -> list[torch.Tensor]:
    model = _OwnStep(**penalty)
    _fit(model, tmp_path, steps=6)
    return [p.detach() for p in model.parameters()]


def test_weight_decay_path_matches_loss_path_for_sgd(tmp_path: Any) -> None:
    loss_path = _trajectory(tmp_path / "loss", l1=0.0, l2=L2)
    decay_path = _trajectory(tmp_path / "decay", l1=0.0, l2=L2, as_weight_decay=True)
    without = _trajectory(tmp_path / "none", l1=0.0, l2=0.0)
    for a, b in zip(loss_path, decay_path, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert max((a - c).abs().max().item() for a, c in zip(loss_path, without, strict=True)) > 1e-3


def test_weight_decay_path_sets_groups_and_keeps_l1_in_the_gradient(tmp_path: Any) -> None:
    model, plain = _OwnStep(as_weight_decay=True), _Plain()
    initial = model.net[0].weight.detach().clone()
    trainer = _fit(model, tmp_path)
    _fit(plain, tmp_path / "plain")
    groups = trainer.optimizers[0].param_groups
    assert [g["weight_decay"] for g in groups] == [2 * L2, 0.0]
    expected = plain.grads["net.0.weight"] + L1 * initial.sign()  # l2 left to the optimizer
    torch.testing.assert_close(model.grads["net.0.weight"], expected, atol=1e-7, rtol=1e-5)
    weights = [model.net[0].weight.detach(), model.net[2].weight.detach()]
    value = sum(L1 * w.abs().sum() + L2 * (w**2).sum() for w in weights)
    torch.testing.assert_close(model.penalty(), value, rtol=1e-5, atol=0)


def test_weight_decay_path_with_a_frozen_layer_in_penalty_param_groups(tmp_path: Any) -> None:
    def trajectory(**penalty: Any) -> tuple[list[torch.Tensor], pl.Trainer]:
        model = _OwnStep(l1=0.0, l2=L2, **penalty)
        model.net[0].requires_grad_(False)  # frozen when `configure_optimizers` runs
        trainer = _fit(model, tmp_path / str(penalty), steps=6)
        return [p.detach() for p in model.parameters()], trainer

    loss_path, _ = trajectory()
    decay_path, trainer = trajectory(as_weight_decay=True)
    for a, b in zip(loss_path, decay_path, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    groups = trainer.optimizers[0].param_groups  # the frozen kernel sits with the penalized ones
    assert [(len(g["params"]), g["weight_decay"]) for g in groups] == [(2, 2 * L2), (2, 0.0)]


def test_weight_decay_folded_even_when_on_fit_start_is_overridden(tmp_path: Any) -> None:
    class NoSuper(_OwnStep):
        def on_fit_start(self) -> None:
            self.started = True

    model = NoSuper(as_weight_decay=True)
    trainer = _fit(model, tmp_path)
    assert model.started
    assert [g["weight_decay"] for g in trainer.optimizers[0].param_groups] == [2 * L2, 0.0]


def test_configure_callbacks_without_super_is_refused_by_name(tmp_path: Any) -> None:
    class NoSuper(_OwnStep):
        def configure_callbacks(self) -> list:
            return []

    with pytest.raises(MisconfigurationException, match=r"return `super\(\).configure_callbacks"):
        _fit(NoSuper(), tmp_path)


def test_max_norm_without_super_configure_callbacks_is_refused_by_name(tmp_path: Any) -> None:
    class NoSuper(_Sub):
        def configure_callbacks(self) -> Any:
            return []

    with pytest.raises(MisconfigurationException, match=r"no MaxNorm\(0.5\) callback"):
        _fit(NoSuper(max_norm=0.5), tmp_path)
    model = NoSuper(max_norm=0.5)  # the same bound on the Trainer applies it: accepted
    _fit(model, tmp_path, steps=3, callbacks=[MaxNorm(0.5)])
    assert model.head.weight.norm(dim=1).max().item() <= 0.5 + 1e-6


def test_weight_decay_path_refuses_decoupled_and_mixed_groups(tmp_path: Any) -> None:
    class AdamW(_OwnStep):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.penalty_param_groups(), lr=0.01)

    with pytest.raises(ValueError, match="AdamW decays weights decoupled"):
        _fit(AdamW(as_weight_decay=True), tmp_path)

    class Decoupled(_OwnStep):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.penalty_param_groups(), decoupled_weight_decay=True)

    with pytest.raises(ValueError, match="Adam decays weights decoupled"):
        _fit(Decoupled(as_weight_decay=True), tmp_path)

    class Mixed(_OwnStep):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(ValueError, match="mixes the penalized weights with other parameters"):
        _fit(Mixed(as_weight_decay=True), tmp_path)

    class NoDecay(_OwnStep):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Rprop(self.penalty_param_groups())

    with pytest.raises(ValueError, match="Rprop has no `weight_decay` option"):
        _fit(NoDecay(as_weight_decay=True), tmp_path)


class _Manual(_OwnStep):
    def __init__(self, add_penalty: bool) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.add_penalty = add_penalty

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        optimizer = self.optimizers()
        loss = F.cross_entropy(self.net(x), y)
        if self.add_penalty:
            loss = loss + self.penalty()
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        return loss


def test_manual_optimization_applies_the_penalty_and_refuses_adding_it(tmp_path: Any) -> None:
    with pytest.raises(RuntimeError, match="would count twice"):
        _fit(_Manual(add_penalty=True), tmp_path)
    plain, manual = _Plain(), _Manual(add_penalty=False)
    initial = manual.net[0].weight.detach().clone()
    _fit(plain, tmp_path / "plain")
    trainer = _fit(manual, tmp_path / "manual", log_every_n_steps=1)
    step = plain.grads["net.0.weight"] + L1 * initial.sign() + 2 * L2 * initial
    torch.testing.assert_close(manual.net[0].weight, initial - 0.1 * step, atol=1e-7, rtol=1e-5)
    assert "train/penalty" in trainer.callback_metrics


def test_configure_penalty_keeps_what_it_is_not_given() -> None:
    """A subclass choosing the weights keeps the factors and flags its constructor got (from
    ``RegularizedModule``'s arguments, a CLI, ``self.l1 = ...``) instead of resetting them."""

    class Linears(RegularizedModule):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.configure_penalty(modules=(nn.Linear,))

    model = Linears(l1=L1, l2=L2, as_weight_decay=True)
    assert model.penalty_config[:3] == (L1, L2, (nn.Linear,))
    assert model.penalty_config.as_weight_decay
    model.l1 = 0.5
    model.configure_penalty(l2=0.0, proximal_l1=True)
    assert model.penalty_config[:2] == (0.5, 0.0) and model.penalty_config.proximal_l1


def test_layers_named_l1_l2_keep_working(tmp_path: Any) -> None:
    class Named(WeightPenaltyMixin, _Plain):
        def __init__(self) -> None:
            super().__init__()
            self.l1 = self.net[0]
            self.l2 = self.net[2]
            self.configure_penalty(l1=L1, l2=L2)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            return F.cross_entropy(self.l2(F.relu(self.l1(x))), y)

    plain, named = _Plain(), Named()
    assert named.l1 is named.net[0] and named.l2 is named.net[2]
    initial = named.net[0].weight.detach().clone()
    _fit(plain, tmp_path / "plain")
    _fit(named, tmp_path / "named")
    expected = plain.grads["net.0.weight"] + L1 * initial.sign() + 2 * L2 * initial
    torch.testing.assert_close(named.grads["net.0.weight"], expected, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"l1": -1.0}, ValueError, "`l1` must be a finite number >= 0, got -1.0"),
        ({"l2": float("nan")}, ValueError, "`l2` must be a finite number >= 0"),
        ({"l2": "1e-4"}, TypeError, "`l2` must be a finite number"),
        ({"modules": (nn.Linear, int)}, TypeError, "`modules` must be a non-empty tuple"),
        ({"predicate": 3}, TypeError, "`predicate` must be callable"),
        ({"names": "net.0.weight"}, TypeError, "`names` must be an iterable"),
        ({"names": ["a"], "predicate": lambda n, p: True}, ValueError, "at most one"),
        ({"as_weight_decay": 1}, TypeError, "`as_weight_decay` must be a bool"),
    ],
)
def test_configure_penalty_validation(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        _OwnStep(**kwargs)


class _Sub(RegularizedModule):
    """A user subclass with arguments of its own."""

    def __init__(self, width: int = 32, depth: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        widths = [64] + [width] * depth
        self.body = nn.Sequential(*[self.dense(a, b) for a, b in itertools.pairwise(widths)])
        self.head = self.apply_init(nn.Linear(width, 10), activation="identity")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.penalty_param_groups(), lr=0.05)


def test_defaults_and_presets() -> None:
    torch.manual_seed(0)
    elu = RegularizedModule()
    assert (elu.dropout_rate, elu.activation_name, elu.init_name) == (0.0, "elu", "auto")
    assert (elu.l1, elu.l2, elu.max_norm, elu.mc_samples) == (0.0, 0.0, None, None)
    block = elu.dense(1000, 500)
    assert [type(m) for m in block] == [nn.Linear, nn.ELU]
    assert block[0].weight.std().item() == pytest.approx(math.sqrt(2 / 1000), rel=0.01)
    relu = RegularizedModule(activation="relu", dropout=0.2).dense(1000, 500)
    assert relu[0].weight.std().item() == pytest.approx(math.sqrt(2 / 1000), rel=0.01)
    assert isinstance(relu[2], nn.Dropout) and relu[2].p == 0.2
    selu = RegularizedModule(activation="selu", dropout=0.1).dense(1000, 500)
    assert selu[0].weight.std().item() == pytest.approx(math.sqrt(1 / 1000), rel=0.01)
    assert isinstance(selu[2], nn.AlphaDropout)
    glorot = RegularizedModule(init="glorot_normal").dense(1000, 500, activation="tanh")
    assert glorot[0].weight.std().item() == pytest.approx(math.sqrt(2 / 1500), rel=0.01)
    assert torch.count_nonzero(block[0].bias) == 0


def test_selu_preset_self_normalizes_through_20_layers() -> None:
    torch.manual_seed(0)
    module = RegularizedModule(activation="selu")
    net = nn.Sequential(module.dense(64, 128), *[module.dense(128, 128) for _ in range(19)])
    with torch.no_grad():
        h = net(digits()[0])
    assert abs(h.mean().item()) < 0.2 and abs(h.std().item() - 1) < 0.2
    relu = RegularizedModule(activation="relu", init="lecun_normal")
    net = nn.Sequential(relu.dense(64, 128), *[relu.dense(128, 128) for _ in range(19)])
    with torch.no_grad():
        assert net(digits()[0]).std().item() < 0.01  # the wrong preset vanishes


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"dropout": 1.0}, ValueError, r"`dropout` must be a finite number in \[0, 1\), got 1.0"),
        ({"dropout": -0.1}, ValueError, "`dropout` must be a finite number in"),
        ({"activation": "swish"}, ValueError, r"`activation` must be one of \[.*'selu'"),
        ({"init": "xavier"}, ValueError, r"`init` must be one of \['auto', 'he_normal'"),
        ({"init": 3}, TypeError, "`init` must be a string"),
        ({"max_norm": 0}, ValueError, "`max_norm` must be a finite number > 0, got 0"),
        ({"max_norm": -1.0}, ValueError, "`max_norm` must be a finite number > 0"),
        ({"l2": -1e-4}, ValueError, "`l2` must be a finite number >= 0"),
        ({"mc_samples": 0}, ValueError, "`mc_samples` must be an integer >= 1, got 0"),
        ({"hidden": (64, 0)}, ValueError, "`hidden` must be an integer >= 1, got 0"),
        ({"hidden": "64"}, TypeError, "`hidden` must be a sequence"),
        ({"num_classes": 1}, ValueError, "`num_classes` must be an integer >= 2"),
        ({"lr": 0.0}, ValueError, "`lr` must be a finite number > 0"),
        ({"optimizer": "lbfgs"}, ValueError, r"`optimizer` must be one of \['sgd'"),
        ({"momentum": 1.0}, ValueError, r"`momentum` must be a number in \[0, 1\)"),
        ({"optimizer": "adamw", "l2": 1e-4, "as_weight_decay": True}, ValueError, "decouples"),
        ({"droput": 0.1}, TypeError, "droput"),
    ],
)
def test_invalid_arguments_raise(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        RegularizedMLP(**kwargs)


def test_mc_samples_without_mc_task_raises_at_construction() -> None:
    # _Sub sets no `mc_task`: mc_samples used to fail only in Trainer.predict
    with pytest.raises(ValueError) as caught:
        _Sub(mc_samples=5)
    message = str(caught.value)
    assert "`mc_samples=5` is set, so `mc_task` must say what the model predicts" in message
    assert "['classification', 'regression']" in message and "got None" in message
    assert 'class attribute of _Sub, e.g. `class _Sub(...): mc_task = "classification"`' in message

    class Typo(_Sub):
        mc_task = "clasification"

    with pytest.raises(ValueError, match=r"`mc_task` must .* got 'clasification'"):
        Typo()

    class Regressor(_Sub):
        mc_task = "regression"

    assert (Regressor(mc_samples=5).mc_samples, Regressor(mc_samples=5).mc_task) == (
        5,
        "regression",
    )
    assert _Sub().mc_samples is None  # no mc_samples, no mc_task needed

    class SetsItLate(_Sub):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.mc_task = "classification"

    late = SetsItLate()  # without mc_samples at construction it still works
    late.mc_samples = 4
    assert late.mc_task == "classification"


def test_hparams_of_subclasses_saved_and_restored(tmp_path: Any) -> None:
    model = _Sub(width=24, depth=3, dropout=0.1, activation="selu", l2=1e-4, max_norm=2.5)
    expected = {
        "width": 24,
        "depth": 3,
        "dropout": 0.1,
        "activation": "selu",
        "init": "auto",
        "l1": 0.0,
        "l2": 1e-4,
        "max_norm": 2.5,
        "as_weight_decay": False,
        "mc_samples": None,
        "proximal_l1": False,
    }
    assert dict(model.hparams) == expected
    trainer = _fit(model, tmp_path, steps=3)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    restored = _Sub.load_from_checkpoint(path)
    assert dict(restored.hparams) == expected
    assert len(restored.body) == 3 and isinstance(restored.body[0][2], nn.AlphaDropout)
    assert (restored.max_norm, restored.l2) == (2.5, 1e-4)
    model.eval()
    restored.eval()
    x = digits(16)[0]
    torch.testing.assert_close(restored(x), model(x))


def test_a_subclass_that_fixes_a_default_is_rebuilt_from_its_checkpoint(tmp_path: Any) -> None:
    class Selu(_Sub):  # fixes two of RegularizedModule's arguments, forwards the rest
        def __init__(self, width: int = 32, **kwargs: Any) -> None:
            super().__init__(width=width, depth=1, activation="selu", **kwargs)

    model = Selu(width=24, dropout=0.1, l2=1e-4)
    assert (model.hparams["activation"], model.hparams["depth"]) == ("selu", 1)  # as built
    path = tmp_path / "model.ckpt"
    _fit(model, tmp_path, steps=2).save_checkpoint(path)
    # Before, the checkpoint held activation and depth, passed back with the fixed ones:
    # TypeError: got multiple values for keyword argument.
    restored = Selu.load_from_checkpoint(path)
    assert dict(restored.hparams) == dict(model.hparams)
    model.eval()
    restored.eval()
    x = digits(16)[0]
    torch.testing.assert_close(restored(x), model(x))


def test_configure_callbacks_adds_max_norm_and_merges(tmp_path: Any) -> None:
    assert [type(c) for c in RegularizedModule().configure_callbacks()] == [WeightPenalty]
    _, callback = RegularizedModule(max_norm=3.0).configure_callbacks()
    assert isinstance(callback, MaxNorm) and callback.max_value == 3.0

    class WithOwn(_Sub):
        def configure_callbacks(self) -> Any:
            return [*super().configure_callbacks(), EarlyStopping("val_loss")]

    kinds = [type(c) for c in WithOwn(max_norm=1.0).configure_callbacks()]
    assert kinds == [WeightPenalty, MaxNorm, EarlyStopping]
    model = _Sub(width=64, max_norm=0.5)
    assert model.body[0][0].weight.norm(dim=1).max() > 0.5
    _fit(model, tmp_path, steps=3)
    for layer in (model.body[0][0], model.body[1][0], model.head):
        assert layer.weight.norm(dim=1).max().item() <= 0.5 + 1e-6


def test_mlp_trains_on_digits_with_regularization(tmp_path: Any) -> None:
    pl.seed_everything(0)
    model = RegularizedMLP(hidden=(128, 128), dropout=0.2, l2=1e-4, max_norm=3.0)
    trainer = make_trainer(tmp_path, max_epochs=4, log_every_n_steps=10)
    dm = DigitsDataModule(batch_size=32)
    trainer.fit(model, datamodule=dm)
    metrics = trainer.callback_metrics
    assert metrics["val/acc"] > 0.85
    torch.testing.assert_close(metrics["val_loss"], metrics["val/loss"])
    assert metrics["train/penalty"] > 0
    (result,) = trainer.test(model, datamodule=dm, verbose=False)
    assert result["test/acc"] > 0.85
    for module in model.modules():
        if isinstance(module, nn.Linear):
            assert module.weight.norm(dim=1).max().item() <= 3.0 + 1e-5

    probabilities = trainer.predict(model, datamodule=dm)
    assert probabilities is not None
    probs = torch.cat(probabilities)  # type: ignore[arg-type]
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(probs)))
    model.mc_samples = 30
    summaries = trainer.predict(model, datamodule=dm)
    assert summaries is not None
    first = summaries[0]
    assert isinstance(first, MCDropoutResult)
    assert first.std.mean() > 1e-3
    # the MC mean agrees with the deterministic prediction on most samples
    agree = first.mean.argmax(-1) == probs[: len(first.mean)].argmax(-1)
    assert agree.float().mean() > 0.9


def test_test_validate_predict_keep_the_fitted_callbacks_for_a_checkpoint(tmp_path: Any) -> None:
    torch.manual_seed(0)
    model = RegularizedMLP(hidden=(32,), lr=0.5, l2=1e-2, as_weight_decay=True, max_norm=3.0)
    trainer = make_trainer(tmp_path, max_steps=3)
    trainer.fit(model, digits_loader())
    fitted = [c for c in trainer.callbacks if isinstance(c, (WeightPenalty, MaxNorm))]
    assert [type(c) for c in fitted] == [WeightPenalty, MaxNorm]
    trainer.test(model, digits_loader())
    trainer.validate(model, digits_loader())
    trainer.predict(model, digits_loader())
    # Not replaced by fresh ones: a checkpoint saved now holds the fit's fold and step count.
    assert [c for c in trainer.callbacks if isinstance(c, (WeightPenalty, MaxNorm))] == fitted
    trainer.save_checkpoint(tmp_path / "after_test.ckpt")
    states = torch.load(tmp_path / "after_test.ckpt", weights_only=False)["callbacks"]
    assert states["WeightPenalty"] == {"fold": 0.02, "groups": [2]}
    assert states[fitted[1].state_key] == {"steps": {0: 3}}
    # A later fit on the same Trainer starts fresh callbacks, as each fit does.
    trainer.fit_loop.epoch_loop.max_steps = 5
    trainer.fit(model, digits_loader())
    again = [c for c in trainer.callbacks if isinstance(c, (WeightPenalty, MaxNorm))]
    assert len(again) == 2 and not set(map(id, again)) & set(map(id, fitted))
    assert again[1].steps == {0: 2}
