"""Max-norm: the core against ``torch.renorm``, then ``MaxNorm`` on a real Trainer (digits)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BackboneFinetuning, Callback, ModelCheckpoint
from lightning.pytorch.plugins import MixedPrecision
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.nn.utils import parametrizations

from lightning_reg.callbacks.max_norm import MaxNorm
from lightning_reg.max_norm import apply_max_norm_, max_norm_, row_groups
from lightning_reg.selection import select_weights
from tests.distributed.worker import TwoOptimizerSteps
from tests.helpers import DigitsClassifier, digits_loader, make_trainer, run_as_script

MAX = 0.5
PATHS = [False, True]  # foreach: the per-tensor reference, the multi-tensor path

# ------------------------------------------------------------------------------------ the core


def mixed_rows(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Rows of norms from tiny to large, so some rows exceed any bound used here and some do not."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g, dtype=torch.float64)
    scale = torch.logspace(-2, 1, shape[0], dtype=torch.float64).view(-1, *(1,) * (len(shape) - 1))
    return (w * scale).to(dtype)


def rows_over(w: torch.Tensor, max_value: float, p: float = 2.0) -> torch.Tensor:
    return torch.linalg.vector_norm(w.float().flatten(1), p, dim=1) > max_value


SHAPES = [(7, 5), (6, 3, 4), (5, 3, 3, 3), (4, 2, 2, 2, 2)]  # Linear, Conv1d/2d/3d


@pytest.mark.parametrize("foreach", PATHS)
@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, math.inf])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_both_paths_are_bit_identical_to_torch_renorm(
    foreach: bool, p: float, dtype: torch.dtype
) -> None:
    for max_value in (0.1, 0.7, 1.5):  # 0.1 and 0.7 are not representable in binary
        weights = [mixed_rows(shape, dtype, seed) for seed, shape in enumerate(SHAPES)]
        weights.append(mixed_rows((5, 4), dtype, 9) * 1e-3)  # every row within: left untouched
        original = [w.clone() for w in weights]
        expected = [torch.renorm(w, p, 0, max_value) for w in weights]
        assert rows_over(original[0], max_value, p).any()
        assert not rows_over(original[0], max_value, p).all()
        apply_max_norm_(weights, max_value=max_value, norm_type=p, foreach=foreach)
        for w, ref, before in zip(weights, expected, original, strict=True):
            assert torch.equal(w, ref)
            keep = ~rows_over(before, max_value, p)
            assert torch.equal(w[keep], before[keep])  # rows within the bound: bit-identical


@pytest.mark.parametrize("foreach", PATHS)
@pytest.mark.parametrize("p", [2.0, math.inf])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_nan_row_leaves_the_other_rows_of_its_weight_constrained(
    foreach: bool, p: float, dtype: torch.dtype
) -> None:
    nan, inf = float("nan"), float("inf")
    w = torch.tensor([[nan, 3.0], [5.0, 0.1], [0.01, 0.02], [inf, 1.0]], dtype=dtype)
    expected = torch.renorm(w, p, 0, 1.0)
    assert expected[1, 1] < 0.05  # the row over the bound is scaled, the NaN row kept
    apply_max_norm_(w, max_value=1.0, norm_type=p, foreach=foreach)
    torch.testing.assert_close(w, expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("foreach", PATHS)
def test_a_row_at_the_bound_rounded_to_float32_is_left_alone(foreach: bool) -> None:
    # 0.1 rounds up to float32 0.10000000149...: torch.renorm compares in float32, so a row whose
    # norm is that float32 is within the bound although it exceeds the float64 0.1; the next
    # float32 up is over it.
    at = torch.tensor(0.1, dtype=torch.float32)
    above = torch.nextafter(at, torch.tensor(1.0))
    w = torch.stack([at, above, at / 2]).view(3, 1).repeat(1, 2) * torch.tensor([1.0, 0.0])
    expected = torch.renorm(w, math.inf, 0, 0.1)
    assert torch.equal(expected[0], w[0]) and not torch.equal(expected[1], w[1])
    apply_max_norm_(w, max_value=0.1, norm_type=math.inf, foreach=foreach)
    assert torch.equal(w, expected)


@pytest.mark.parametrize("p", [2.0, math.inf])
def test_within_the_bound_nothing_is_written_and_accelerators_never_sync(p: float) -> None:
    """On CPU the host check skips weights with no row over the bound; without it (an
    accelerator's path, run here on CPU) the clamped factor multiplies every weight: both give
    torch.renorm's bits."""
    inside = [mixed_rows((6, 4), torch.float32, 0) * 1e-3, mixed_rows((5, 3, 2), torch.float64, 1)]
    over = mixed_rows((7, 5), torch.float32, 2)
    weights = [*inside, over]
    expected = [torch.renorm(w, p, 0, MAX) for w in weights]
    apply_max_norm_(weights, MAX, p)
    assert all(torch.equal(w, ref) for w, ref in zip(weights, expected, strict=True))
    again = [w.clone() * 3 for w in expected]
    expected = [torch.renorm(w, p, 0, MAX) for w in again]
    max_norm_(row_groups(again), MAX, p, host_check=False)  # the clamped factor, one multiply
    assert all(torch.equal(w, ref) for w, ref in zip(again, expected, strict=True))


@pytest.mark.parametrize("foreach", PATHS)
def test_mixed_dtypes_sizes_and_an_empty_weight(foreach: bool) -> None:
    weights = [mixed_rows((300, 300), torch.float32, 0), mixed_rows((8, 8), torch.float64, 1)]
    weights += [mixed_rows((9, 3), torch.bfloat16, 2), torch.empty(0, 4)]
    weights += [mixed_rows((6, 6), torch.float32, 3) * 1e-4]
    expected = [torch.renorm(w, 2, 0, 2.0) for w in weights]
    apply_max_norm_(iter(weights), max_value=2.0, foreach=foreach)
    for w, ref in zip(weights, expected, strict=True):
        assert torch.equal(w, ref)


def test_one_tensor_is_one_weight() -> None:
    w = mixed_rows((6, 4), torch.float64, 0)
    expected = torch.renorm(w, 2, 0, 1.0)
    apply_max_norm_(w)  # not an iterable of rows
    assert torch.equal(w, expected)


class Zoo(nn.Module):
    """Every kind of kernel, all far above the bound: plain, recurrent, attention, parametrized."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(6, 5)
        self.fc = nn.Linear(5, 8)
        self.bn = nn.BatchNorm1d(8)
        self.conv = nn.Conv1d(1, 4, 3)
        self.frozen = nn.Linear(8, 8)
        self.frozen.weight.requires_grad_(False)
        self.normed = parametrizations.weight_norm(nn.Linear(8, 6))
        self.old_normed = torch.nn.utils.weight_norm(nn.Linear(8, 6))
        self.spectral = parametrizations.spectral_norm(nn.Linear(8, 6))
        with torch.no_grad():
            for p in self.parameters():
                p.mul_(30.0)


def test_module_form_constrains_kernels_and_weight_norm_magnitudes() -> None:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated
        zoo = Zoo()
    before = {n: p.detach().clone() for n, p in zoo.named_parameters()}
    with pytest.warns(UserWarning) as record:
        apply_max_norm_(zoo, max_value=0.5)
    messages = [str(w.message) for w in record]
    # The hook-based weight norm's g and v are no kernels; spectral norm cannot be bounded.
    named = "old_normed.weight_g (Linear); old_normed.weight_v (Linear); spectral.weight (Linear,"
    assert any(
        f"does not constrain these weights of Zoo: {named} parametrized)." in m for m in messages
    )
    # The embedding is no default type: named, with the way to constrain it.
    assert any("parameters of Zoo: emb.weight (Embedding). They" in m for m in messages)
    after = dict(zoo.named_parameters())
    for name in ("fc.weight", "conv.weight"):
        assert torch.equal(after[name], torch.renorm(before[name], 2, 0, 0.5)), name
    # Weight norm: the magnitude g is bounded, so every row of the kernel has norm <= 0.5,
    # and the direction v is left as it was.
    g, v = "normed.parametrizations.weight.original0", "normed.parametrizations.weight.original1"
    assert torch.equal(after[g], torch.renorm(before[g], 2, 0, 0.5))
    assert torch.equal(after[v], before[v])
    kernel = zoo.normed.weight.detach()
    torch.testing.assert_close(kernel.norm(dim=1), torch.full((6,), 0.5), rtol=1e-6, atol=0)
    untouched = ("emb.weight", "bn.weight", "fc.bias", "frozen.weight")
    untouched += ("spectral.parametrizations.weight.original", "old_normed.weight_g")
    untouched += ("old_normed.weight_v",)
    for name in untouched:
        assert torch.equal(after[name], before[name]), name
    apply_max_norm_(zoo, max_value=0.5, modules=(nn.Embedding,), norm_type=math.inf)
    assert torch.equal(zoo.emb.weight, torch.renorm(before["emb.weight"], math.inf, 0, 0.5))


def test_weight_norm_with_another_p_and_look_alike_parametrizations_are_named() -> None:
    layer = parametrizations.weight_norm(nn.Linear(4, 3))
    g = layer.parametrizations.weight.original0.detach().clone()
    with pytest.warns(UserWarning, match=r"weight \(Linear, weight norm bounds 2-norms only\)"):
        apply_max_norm_(layer, max_value=1e-3, norm_type=1.0)
    assert torch.equal(layer.parametrizations.weight.original0, g)

    class RowScale(nn.Module):
        """``(s, v) -> s * v``: the shapes of weight norm's ``(g, v)``, without the norm; with
        ``unit``, also its values at the start (rows of ``v`` of norm 1, ``s`` their lengths),
        which training does not keep."""

        def __init__(self, unit: bool) -> None:
            super().__init__()
            self.unit = unit

        def forward(self, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return s * v

        def right_inverse(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            s = w.norm(dim=1, keepdim=True) if self.unit else torch.ones(len(w), 1)
            return s, w / s

    for unit in (False, True):
        scaled = nn.Linear(4, 3)
        torch.nn.utils.parametrize.register_parametrization(scaled, "weight", RowScale(unit))
        before = [p.detach().clone() for p in scaled.parameters()]
        with pytest.warns(UserWarning, match=r"weight \(Linear, parametrized\)"):
            apply_max_norm_(scaled, max_value=1e-3)
        assert all(torch.equal(a, b) for a, b in zip(scaled.parameters(), before, strict=True))


def test_hook_weight_norm_on_an_lstm_weight_is_named_and_left_alone() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated
        torch.nn.utils.weight_norm(lstm, "weight_hh_l0")
    named = r"weight_hh_l0_g \(LSTM\), weight_hh_l0_v \(LSTM\)"
    with pytest.warns(UserWarning, match=rf"not regularized: {named}\."):
        assert select_weights(lstm) == [lstm.weight_ih_l0]
    with torch.no_grad():
        lstm.weight_hh_l0_g.mul_(30.0)
        lstm.weight_ih_l0.mul_(30.0)
    before = {n: p.detach().clone() for n, p in lstm.named_parameters()}
    with pytest.warns(
        UserWarning, match=rf"constrain these weights of LSTM: {named.replace(',', ';')}\. Only"
    ):
        apply_max_norm_(lstm, max_value=0.5)
    after = dict(lstm.named_parameters())
    assert torch.equal(after["weight_ih_l0"], torch.renorm(before["weight_ih_l0"], 2, 0, 0.5))
    for name in ("weight_hh_l0_g", "weight_hh_l0_v", "bias_ih_l0", "bias_hh_l0"):
        assert torch.equal(after[name], before[name]), name


def test_a_parametrized_bias_is_neither_selected_nor_named() -> None:
    class Shift(nn.Module):
        def forward(self, b: torch.Tensor) -> torch.Tensor:
            return b + 1.0

    layer = nn.Linear(4, 3)
    torch.nn.utils.parametrize.register_parametrization(layer, "bias", Shift())
    original_bias = layer.parametrizations.bias.original
    assert select_weights(layer) == [layer.weight]
    with torch.no_grad():
        layer.weight.mul_(30.0)
        original_bias.fill_(30.0)
    weight = layer.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a bias is no kernel: nothing to name
        apply_max_norm_(layer, max_value=0.5)
    assert torch.equal(layer.weight, torch.renorm(weight, 2, 0, 0.5))
    assert torch.equal(original_bias, torch.full((3,), 30.0))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_value": 0.0}, ValueError, r"`max_value` must be a finite number > 0, got 0.0"),
        ({"max_value": math.inf}, ValueError, r"`max_value` must be a finite number > 0"),
        ({"max_value": True}, TypeError, r"`max_value` must be a finite number > 0, got True"),
        (
            {"norm_type": 0.5},
            ValueError,
            r"`norm_type` must be a finite number >= 1 or math.inf, got 0.5",
        ),
        ({"norm_type": "fro"}, TypeError, r"`norm_type` must be a finite number >= 1"),
        ({"norm_type": True}, TypeError, r"`norm_type` must be a finite number >= 1"),
        ({"norm_type": math.nan}, ValueError, r"`norm_type` must be a finite number >= 1"),
        ({"norm_type": -math.inf}, ValueError, r"`norm_type` must be a finite number >= 1"),
        ({"modules": (nn.ConvTranspose2d,)}, ValueError, r"`modules` cannot hold transposed"),
        ({"modules": nn.Linear}, TypeError, r"`modules` must be a non-empty tuple"),
        ({"foreach": 1}, TypeError, r"`foreach` must be True, False or None, got 1"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        apply_max_norm_(nn.Linear(3, 3), **kwargs)


def test_bad_tensors() -> None:
    with pytest.raises(ValueError, match=r">= 2 dims, got shape \(4,\)"):
        apply_max_norm_([torch.ones(4, 4), torch.ones(4)])
    with pytest.raises(TypeError, match=r"floating-point weights, got dtype torch\.int64"):
        apply_max_norm_([torch.ones(4, 4, dtype=torch.long)])
    with pytest.raises(TypeError, match="must hold tensors, got list"):
        apply_max_norm_([[1.0, 2.0]])  # type: ignore[list-item]


# ---------------------------------------------------------------------- MaxNorm on a Trainer


def blown_up(seed: int = 0, **kwargs: Any) -> DigitsClassifier:
    """A digits MLP whose rows start far above the bound and whose biases start at 5."""
    torch.manual_seed(seed)
    model = DigitsClassifier(lr=0.5, **kwargs)
    with torch.no_grad():
        for layer in (model.net[0], model.net[2]):
            layer.weight.mul_(20.0)
            layer.bias.fill_(5.0)
    return model


def renorm_(layers: Any, bound: float = MAX) -> None:
    with torch.no_grad():
        for layer in layers:
            layer.weight.copy_(torch.renorm(layer.weight, 2, 0, bound))


class RenormAfterStep(DigitsClassifier):
    """Reference: ``torch.renorm`` on each Linear weight right after every optimizer step."""

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        renorm_((self.net[0], self.net[2]))


class StepsAt(Callback):
    """``MaxNorm.steps`` at the end of every batch."""

    def __init__(self, max_norm: MaxNorm) -> None:
        self.max_norm = max_norm
        self.steps: list[dict[int, int]] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, i: int):
        self.steps.append(self.max_norm.steps)


def copy_init(source: nn.Module, target: nn.Module) -> nn.Module:
    target.load_state_dict(source.state_dict())
    return target


def assert_same_params(got: nn.Module, want: nn.Module) -> None:
    for a, b in zip(got.parameters(), want.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("foreach", PATHS)
def test_bound_holds_biases_free_and_matches_renorm_after_each_step(
    tmp_path: Path, foreach: bool
) -> None:
    model = blown_up()
    reference = copy_init(model, RenormAfterStep(lr=0.5))
    trainer = make_trainer(tmp_path, max_steps=12, callbacks=[MaxNorm(MAX, foreach=foreach)])
    trainer.fit(model, digits_loader())
    make_trainer(tmp_path, max_steps=12).fit(reference, digits_loader())
    for layer in (model.net[0], model.net[2]):
        assert (layer.weight.norm(dim=1) <= MAX * (1 + 1e-6)).all()
        assert layer.bias.abs().max() > 2 * MAX  # biases never constrained
    assert_same_params(model, reference)


def test_conv_filters_are_bounded(tmp_path: Path) -> None:
    class ConvDigits(DigitsClassifier):
        def __init__(self) -> None:
            super().__init__(lr=0.5)
            self.net = nn.Sequential(
                nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(),
                nn.Linear(144, 10),
            )  # fmt: skip

    torch.manual_seed(0)
    model = ConvDigits()
    with torch.no_grad():
        model.net[1].weight.mul_(10.0)
    assert (torch.linalg.vector_norm(model.net[1].weight.flatten(1), dim=1) > 0.3).all()
    make_trainer(tmp_path, max_steps=5, callbacks=[MaxNorm(0.3, norm_type=math.inf)]).fit(
        model, digits_loader()
    )
    filters = model.net[1].weight.flatten(1)
    assert torch.isclose(filters.abs().amax(dim=1), torch.tensor(0.3)).all()


def test_acts_once_per_optimizer_step_under_accumulation(tmp_path: Path) -> None:
    max_norm = MaxNorm(MAX)
    seen = StepsAt(max_norm)
    model = blown_up()
    reference = copy_init(model, RenormAfterStep(lr=0.5))
    loader = digits_loader(n=512, batch_size=32)
    make_trainer(tmp_path, max_steps=4, accumulate_grad_batches=4, callbacks=[max_norm, seen]).fit(
        model, loader
    )
    assert [s.get(0, 0) for s in seen.steps] == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4]
    make_trainer(tmp_path, max_steps=4, accumulate_grad_batches=4).fit(reference, loader)
    assert_same_params(model, reference)


def test_manual_optimization_constrains_each_optimizers_weights_after_its_step(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    model = TwoOptimizerSteps()  # rows far above the bound; net[2] stepped every second batch
    reference = copy_init(model, TwoOptimizerSteps(renorm=True))
    second_before = model.net[2].weight.detach().clone()

    class SecondAfterBatch0(Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            if trainer.fit_loop.epoch_loop.batch_idx == 0:
                self.weight = pl_module.net[2].weight.detach().clone()

    max_norm, probe = MaxNorm(MAX), SecondAfterBatch0()
    seen = StepsAt(max_norm)
    make_trainer(
        tmp_path, max_epochs=1, limit_train_batches=4, callbacks=[max_norm, seen, probe]
    ).fit(model, digits_loader())
    # Batch 0 stepped only the first optimizer: the second one's weights were not touched.
    assert torch.equal(probe.weight, second_before)
    assert seen.steps == [{0: 1}, {0: 2, 1: 1}, {0: 3, 1: 1}, {0: 4, 1: 2}]
    make_trainer(tmp_path, max_epochs=1, limit_train_batches=4).fit(reference, digits_loader())
    assert_same_params(model, reference)


class Poisoned(DigitsClassifier):
    """Fills a gradient with inf on the batches in ``poisoned``: the GradScaler skips them."""

    def __init__(self, poisoned: frozenset[int]) -> None:
        super().__init__(lr=0.5)
        self.poisoned = poisoned

    def on_after_backward(self) -> None:
        if self.trainer.fit_loop.epoch_loop.batch_progress.current.ready - 1 in self.poisoned:
            self.net[0].weight.grad.fill_(math.inf)


def test_a_step_skipped_by_the_grad_scaler_is_not_a_step(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Poisoned(frozenset({2}))
    with torch.no_grad():
        model.net[0].weight.mul_(20.0)
    max_norm = MaxNorm(MAX)
    seen = StepsAt(max_norm)
    scaler = torch.amp.GradScaler("cpu", init_scale=16.0)  # only the poisoned step overflows
    precision = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    trainer = make_trainer(tmp_path, max_steps=5, callbacks=[max_norm, seen], plugins=[precision])
    trainer.fit(model, digits_loader())
    assert trainer.global_step == 5  # Lightning counts the skipped step
    assert [s[0] for s in seen.steps] == [1, 2, 2, 3, 4]  # MaxNorm does not
    assert scaler.get_scale() == 8.0
    assert (model.net[0].weight.norm(dim=1) <= MAX * (1 + 1e-6)).all()


class WithBackbone(DigitsClassifier):
    def __init__(self) -> None:
        super().__init__(lr=0.5)
        self.backbone = nn.Sequential(nn.Linear(64, 32), nn.ReLU())
        self.head = nn.Linear(32, 10)
        with torch.no_grad():
            self.backbone[0].weight.mul_(20.0)
            self.head.weight.mul_(20.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(filter(lambda p: p.requires_grad, self.parameters()), lr=self.lr)


class BackboneWeights(Callback):
    """The backbone's weight at the end of every epoch."""

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.weights.append(pl_module.backbone[0].weight.detach().clone())


def test_frozen_backbone_untouched_then_constrained_after_unfreezing(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = WithBackbone()
    initial = model.backbone[0].weight.detach().clone()
    record = BackboneWeights()
    finetuning = BackboneFinetuning(unfreeze_backbone_at_epoch=2, lambda_func=lambda epoch: 1.0)
    make_trainer(
        tmp_path, max_epochs=3, limit_train_batches=3, callbacks=[finetuning, MaxNorm(MAX), record]
    ).fit(model, digits_loader())
    assert torch.equal(record.weights[0], initial) and torch.equal(record.weights[1], initial)
    assert float(initial.norm(dim=1).min()) > 10 * MAX
    assert float(record.weights[2].norm(dim=1).max()) == pytest.approx(MAX, rel=1e-5)
    assert float(model.head.weight.detach().norm(dim=1).max()) == pytest.approx(MAX, rel=1e-5)


class AddHeadGroup(Callback):
    """Adds the head's parameters to the optimizer as a new param group when epoch 1 starts."""

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch == 1:
            head = list(pl_module.head.parameters())
            trainer.optimizers[0].add_param_group({"params": head, "lr": pl_module.lr})


def test_a_param_group_added_during_fit_is_constrained_from_then_on(tmp_path: Path) -> None:
    class HeadLater(WithBackbone):
        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.backbone.parameters(), lr=self.lr)

    torch.manual_seed(0)
    model = HeadLater()
    initial = model.head.weight.detach().clone()

    class HeadWeights(Callback):
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            self.after_epoch_0 = getattr(self, "after_epoch_0", pl_module.head.weight.clone())

    record = HeadWeights()
    make_trainer(
        tmp_path, max_epochs=2, limit_train_batches=3,
        callbacks=[AddHeadGroup(), MaxNorm(MAX), record],
    ).fit(model, digits_loader())  # fmt: skip
    assert torch.equal(record.after_epoch_0, initial)  # not in the optimizer: not updated
    assert float(model.head.weight.detach().norm(dim=1).max()) == pytest.approx(MAX, rel=1e-5)


def test_one_callbacks_list_reused_across_trainers_binds_every_fold(tmp_path: Path) -> None:
    callbacks = [MaxNorm(MAX)]
    for fold in range(3):
        model = blown_up(seed=fold)
        fresh = copy_init(model, DigitsClassifier(lr=0.5))
        make_trainer(tmp_path, max_epochs=2, limit_train_batches=4, callbacks=callbacks).fit(
            model, digits_loader()
        )
        make_trainer(tmp_path, max_epochs=2, limit_train_batches=4, callbacks=[MaxNorm(MAX)]).fit(
            fresh, digits_loader()
        )
        assert callbacks[0].steps == {0: 8}
        assert float(model.net[0].weight.norm(dim=1).max()) == pytest.approx(MAX, rel=1e-5)
        assert_same_params(model, fresh)


class EmbeddingClassifier(DigitsClassifier):
    """Digits pixels (0..16) looked up in an embedding, then the MLP."""

    def __init__(self) -> None:
        super().__init__(lr=0.5)
        self.emb = nn.Embedding(17, 4)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 10))
        with torch.no_grad():
            self.emb.weight.mul_(5.0)
            self.net[1].weight.mul_(100.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.emb(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self((x * 4).round().clamp(0, 16).long()), y)


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_two_max_norms_coexist_and_each_resumes_from_its_checkpoint_state(tmp_path: Path) -> None:
    # One batch per epoch: Lightning 2.6 replays a checkpointed epoch's end as one more short
    # epoch, which shifts the data of a multi-batch loader; with one batch the data stays aligned.
    loader = digits_loader(n=32, batch_size=32)

    def callbacks() -> list[MaxNorm]:
        return [MaxNorm(3.0), MaxNorm(0.2, modules=(nn.Embedding,))]

    saver = ModelCheckpoint(tmp_path, "{epoch}", save_top_k=-1, save_on_train_epoch_end=True)
    torch.manual_seed(0)
    uninterrupted = EmbeddingClassifier()
    make_trainer(
        tmp_path, max_steps=10, enable_checkpointing=True, callbacks=[*callbacks(), saver]
    ).fit(uninterrupted, loader)
    assert float(uninterrupted.emb.weight.norm(dim=1).max()) == pytest.approx(0.2, rel=1e-5)
    assert float(uninterrupted.net[1].weight.norm(dim=1).max()) == pytest.approx(3.0, rel=1e-5)
    ckpt = tmp_path / "epoch=4.ckpt"
    saved = torch.load(ckpt, weights_only=False)["callbacks"]
    states = {key: state for key, state in saved.items() if key.startswith("MaxNorm")}
    assert sorted(states) == sorted(cb.state_key for cb in callbacks())
    assert list(states.values()) == [{"steps": {0: 5}}, {"steps": {0: 5}}]

    resumed_callbacks = callbacks()
    torch.manual_seed(1)  # another init: everything must come from the checkpoint
    resumed = EmbeddingClassifier()
    make_trainer(tmp_path, max_steps=10, callbacks=resumed_callbacks).fit(
        resumed, loader, ckpt_path=ckpt
    )
    assert [cb.steps for cb in resumed_callbacks] == [{0: 10}, {0: 10}]
    assert_same_params(resumed, uninterrupted)


class RowLinear(nn.Module):
    """A user's own linear layer: a weight of its own, used through ``F.linear``."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class OwnLayers(EmbeddingClassifier):
    """The embedding classifier with a custom layer, a model-level 2-dim parameter, attention
    with bias_k/bias_v (3-dim biases of a default type) and a frozen custom weight."""

    def __init__(self) -> None:
        super().__init__()
        self.custom = RowLinear(10, 10)
        self.gain = nn.Parameter(torch.ones(1, 10))
        self.attention = nn.MultiheadAttention(4, 1, add_bias_kv=True, batch_first=True)
        self.frozen = RowLinear(10, 10).requires_grad_(False)
        with torch.no_grad():
            self.custom.weight.mul_(30.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.emb(x)
        seq, _ = self.attention(seq, seq, seq)
        return self.frozen(self.custom(self.net(seq))) * self.gain


def test_weights_outside_the_default_types_are_named_and_left_alone(tmp_path: Path) -> None:
    def fit(*callbacks: MaxNorm) -> tuple[OwnLayers, str]:
        torch.manual_seed(0)
        model = OwnLayers()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            make_trainer(tmp_path, max_steps=2, callbacks=list(callbacks)).fit(
                model, digits_loader(n=64)
            )
        named = [str(w.message) for w in caught if "trainable parameters of" in str(w.message)]
        assert len(named) <= 1, named
        return model, " ".join(named)

    model, named = fit(MaxNorm(3.0))
    names = "gain (OwnLayers), emb.weight (Embedding), custom.weight (RowLinear). They"
    assert f"parameters of OwnLayers: {names}" in named
    assert "bias_k" not in named and "frozen" not in named  # a bias; not trainable
    assert float(model.net[1].weight.norm(dim=1).max()) == pytest.approx(3.0, rel=1e-5)
    assert float(model.custom.weight.norm(dim=1).max()) > 30.0  # named, not constrained
    # Another MaxNorm on the Trainer constrains the embedding: only the others are named.
    model, named = fit(MaxNorm(3.0), MaxNorm(0.2, modules=(nn.Embedding,)))
    assert "custom.weight" in named and "emb.weight" not in named
    assert float(model.emb.weight.norm(dim=1).max()) == pytest.approx(0.2, rel=1e-5)
    # Two with the default types leave the same parameters out: named once, by the first.
    assert "MaxNorm(3) does not constrain" in fit(MaxNorm(3.0), MaxNorm(2.0))[1]
    # Layer types the user chose: no check.
    assert fit(MaxNorm(3.0, modules=(nn.Linear,)))[1] == ""
    assert fit(MaxNorm(3.0, modules=(nn.Linear, RowLinear)))[1] == ""


class Sequence(DigitsClassifier):
    """The digits' 8 pixel rows as a sequence: LSTM, self-attention, a weight-normed head."""

    def __init__(self) -> None:
        super().__init__(lr=0.5)
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = parametrizations.weight_norm(nn.Linear(16, 10))
        with torch.no_grad():
            for p in self.parameters():
                if p.dim() >= 2:
                    p.mul_(20.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq, _ = self.lstm(x.view(-1, 8, 8))
        seq, _ = self.attention(seq, seq, seq)
        return self.head(seq.mean(1))


def test_recurrent_attention_and_weight_normed_kernels_are_constrained_or_named(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    model = Sequence()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(tmp_path, max_steps=3, callbacks=[MaxNorm(MAX)]).fit(model, digits_loader())
    named = " ".join(str(w.message) for w in caught if "does not constrain" in str(w.message))
    kernels = {
        "lstm.weight_ih_l0": model.lstm.weight_ih_l0,
        "lstm.weight_hh_l0": model.lstm.weight_hh_l0,
        "attention.in_proj_weight": model.attention.in_proj_weight,
        "attention.out_proj.weight": model.attention.out_proj.weight,
        "head.weight": model.head.weight,  # computed from g and v: bounded through g
    }
    for name, kernel in kernels.items():
        largest = float(kernel.detach().norm(dim=1).max())
        constrained = largest == pytest.approx(MAX, rel=1e-5)
        assert constrained != (name in named), (name, largest, named)
    assert "head.weight" not in named and "attention.out_proj.weight" not in named


def test_no_layer_of_the_types_fails_at_fit_start(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_steps=1, callbacks=[MaxNorm(modules=(nn.Conv2d,))])
    with pytest.raises(MisconfigurationException, match="no layer of type Conv2d in Digits"):
        trainer.fit(DigitsClassifier(), digits_loader(n=32))


def test_config_state_key_and_bad_arguments() -> None:
    callback = MaxNorm(2.0, modules=(nn.Linear, nn.Embedding), norm_type=math.inf)
    config = callback.get_config()
    assert config == {
        "max_value": 2.0,
        "modules": (nn.Linear, nn.Embedding),
        "norm_type": math.inf,
        "foreach": None,
    }
    assert MaxNorm(**config).get_config() == config
    assert MaxNorm(**config).state_key == callback.state_key
    assert len({MaxNorm(1.0).state_key, MaxNorm(2.0).state_key, callback.state_key}) == 3
    with pytest.raises(ValueError, match=r"`max_value` must be a finite number > 0, got -1.0"):
        MaxNorm(-1.0)
    with pytest.raises(TypeError, match=r"`max_value` must be a finite number > 0, got '1'"):
        MaxNorm("1")  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"`norm_type` must be a finite number >= 1 or math.inf, got 0"
    ):
        MaxNorm(norm_type=0)
    with pytest.raises(ValueError, match=r"`modules` cannot hold transposed convolutions"):
        MaxNorm(modules=(nn.Linear, nn.ConvTranspose1d))
    with pytest.raises(TypeError, match=r"`modules` must be a non-empty tuple"):
        MaxNorm(modules=[nn.Linear])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`foreach` must be True, False or None, got 'yes'"):
        MaxNorm(foreach="yes")  # type: ignore[arg-type]


def test_benchmark_prints_the_max_norm_table(capsys: pytest.CaptureFixture[str]) -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "regularization.py"
    # Model (c) alone (--models): no penalty rows, the max-norm rows of (c) only.
    run_as_script(script, "--quick", "--models", "c")
    lines = capsys.readouterr().out.splitlines()
    assert not any(line.startswith("| (") for line in lines)
    rows = [line for line in lines if line.startswith("| max-norm, (")]
    max_norm = [row.split("|") for row in rows]
    assert [(c[1].split(":")[0][11:].strip(), c[2].strip(), c[3].strip()) for c in max_norm] == [
        ("(c) MLP 784-512x3-10", p, state)
        for p in ("2", "inf")
        for state in ("within", "one over", "over")
    ]
    for cells in max_norm:
        ref, fast, floor, two_pass, *ratios = (float(c.strip().rstrip("x")) for c in cells[4:12])
        assert min(ref, fast, floor, two_pass) > 0
        # The printed ratios are the ratios of the printed times (to their rounding).
        expected = [ref / floor, fast / floor, ref / two_pass, fast / two_pass]
        assert ratios == pytest.approx(expected, rel=0.01, abs=0.006)


def test_module_max_norm_keeps_the_trainers_own_with_a_warning(tmp_path: Path) -> None:
    from lightning_reg.demos import RegularizedMLP

    torch.manual_seed(0)
    model = RegularizedMLP(hidden=(32,), lr=0.5, max_norm=3.0)
    own = MaxNorm(0.1)
    trainer = make_trainer(tmp_path, max_steps=3, callbacks=[own])
    with pytest.warns(UserWarning, match=r"RegularizedMLP\(max_norm=3\) adds MaxNorm\(3\) beside "
                      r"the Trainer's MaxNorm\(0.1\).*smallest bound holds"):  # fmt: skip
        trainer.fit(model, digits_loader())
    acting = [c for c in trainer.callbacks if isinstance(c, MaxNorm)]
    assert [c.max_value for c in acting] == [0.1, 3.0] and acting[0] is own
    assert own.steps == {0: 3} and acting[1].steps == {0: 3}
    for layer in model.modules():
        if isinstance(layer, nn.Linear):
            assert float(layer.weight.detach().norm(dim=1).max()) == pytest.approx(0.1, rel=1e-5)


def test_module_max_norm_equal_to_the_trainers_is_added_once(tmp_path: Path) -> None:
    from lightning_reg.demos import RegularizedMLP

    own = MaxNorm(3.0)
    trainer = make_trainer(tmp_path, max_steps=2, callbacks=[own])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(RegularizedMLP(hidden=(32,), max_norm=3.0), digits_loader())
    assert not [w for w in caught if "MaxNorm" in str(w.message)]
    assert [c for c in trainer.callbacks if isinstance(c, MaxNorm)] == [own]
    assert own.steps == {0: 2}


def test_module_max_norm_changed_between_fits_of_one_trainer(tmp_path: Path) -> None:
    from lightning_reg.demos import RegularizedMLP

    def bounds() -> list[float]:
        return [c.max_value for c in trainer.callbacks if isinstance(c, MaxNorm)]

    def row_norm() -> float:
        return max(float(m.weight.detach().norm(dim=1).max()) for m in model.net.modules()
                   if isinstance(m, nn.Linear))  # fmt: skip

    torch.manual_seed(0)
    model = RegularizedMLP(hidden=(32,), lr=0.5, max_norm=0.1)
    own = MaxNorm(7.0)
    trainer = make_trainer(tmp_path, max_steps=3, callbacks=[own])
    with pytest.warns(UserWarning, match=r"beside the Trainer's MaxNorm\(7\):"):
        trainer.fit(model, digits_loader())
    assert bounds() == [7.0, 0.1] and row_norm() == pytest.approx(0.1, rel=1e-5)
    # Fit again with another bound: the first fit's MaxNorm(0.1) no longer acts, as on a fresh
    # Trainer, and the warning names the Trainer's own MaxNorm only.
    model.max_norm = 5.0
    trainer.fit_loop.epoch_loop.max_steps = 6
    with pytest.warns(UserWarning, match=r"beside the Trainer's MaxNorm\(7\):"):
        trainer.fit(model, digits_loader())
    assert bounds() == [7.0, 5.0] and row_norm() > 0.2
    model.max_norm = None
    trainer.fit_loop.epoch_loop.max_steps = 9
    trainer.fit(model, digits_loader())
    assert bounds() == [7.0] and own.steps == {0: 3}
