"""The LR range test of ``OneCycleScheduler(max_lr="auto")``: the rule, the exact undo, resume."""

from __future__ import annotations

import csv
import math
import random
import signal
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import (
    EarlyStopping,
    GradientAccumulationScheduler,
    LearningRateMonitor,
    ModelCheckpoint,
)
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins import MixedPrecision
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import MeanMetric

from lightning_reg import OneCycle, OneCycleScheduler
from lightning_reg.demos import RegularizedMLP
from lightning_reg.lr_range import LRRangeTest, RangeTestResult, smooth, suggest_max_lr
from lightning_reg.module import WeightPenaltyMixin
from tests import helpers
from tests.helpers import DigitsClassifier, digits, run_as_script

# A short sweep keeps every test to about a second.
FAST = LRRangeTest(min_lr=1e-4, max_lr=10.0, num_steps=40)


class DropoutClassifier(DigitsClassifier):
    """The digits MLP with dropout (so the sweep draws random numbers) and a logged metric."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss


class MeanLossClassifier(DropoutClassifier):
    """Keeps its epoch's mean training loss in a torchmetrics ``MeanMetric`` (which a step
    updates in place) and records it at every epoch's end."""

    def __init__(self) -> None:
        super().__init__()
        self.mean_loss = MeanMetric()
        self.epoch_means: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.mean_loss.update(loss.detach())
        return loss

    def on_train_epoch_end(self) -> None:
        self.epoch_means.append(float(self.mean_loss.compute()))
        self.mean_loss.reset()


class Record:
    """What each `training_step` call saw, sweep steps included: a list inside this object, which
    the sweep's undo leaves alone (a list attribute of the module it would put back)."""

    def __init__(self) -> None:
        self.items: list[Any] = []


def loader(shuffle: bool = True, generator: torch.Generator | None = None) -> DataLoader[Any]:
    x, y = digits(320)
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=shuffle, generator=generator)


def fit(
    max_lr: Any,
    tmp_path: Path,
    name: str,
    epochs: int = 2,
    generator_seed: int | None = None,
    module: type[DropoutClassifier] = DropoutClassifier,
    callbacks: Sequence[pl.Callback] = (),
    **trainer_kwargs: Any,
) -> tuple[OneCycleScheduler, DropoutClassifier, pl.Trainer]:
    pl.seed_everything(7, verbose=False)
    model = module()
    cb = OneCycleScheduler(max_lr=max_lr, range_test=FAST)
    gen = None if generator_seed is None else torch.Generator().manual_seed(generator_seed)
    trainer = helpers.fit(
        tmp_path,
        model,
        loader(generator=gen),
        loader(shuffle=False),
        max_epochs=epochs,
        logger=CSVLogger(tmp_path, name=name),
        log_every_n_steps=1,
        callbacks=[cb, *callbacks],
        **trainer_kwargs,
    )
    return cb, model, trainer


def metrics_rows(trainer: pl.Trainer) -> list[dict[str, str]]:
    path = Path(trainer.logger.log_dir) / "metrics.csv"  # type: ignore[union-attr]
    with path.open() as f:
        return list(csv.DictReader(f))


# -- the rule ------------------------------------------------------------------------------------
def test_smooth_is_a_bias_corrected_moving_average() -> None:
    losses = [3.0, 1.0, 2.0, 5.0]
    expected, avg = [], 0.0
    for k, loss in enumerate(losses):
        avg = 0.8 * avg + 0.2 * loss
        expected.append(avg / (1 - 0.8 ** (k + 1)))
    assert smooth(losses, 0.8) == pytest.approx(expected, rel=1e-15)
    assert smooth(losses, 0.0) == losses


def test_suggest_max_lr_is_the_lowest_smoothed_loss_over_the_divisor() -> None:
    lrs = [10 ** (-4 + k / 10) for k in range(50)]
    # A valley at lr 1e-2 (k = 20), then a blow-up ending in NaN.
    losses = [2.0 + (math.log10(lr) + 2) ** 2 / 4 for lr in lrs[:40]] + [50.0] * 9 + [math.nan]
    curve = smooth(losses[:49], 0.9)
    best = min(range(49), key=curve.__getitem__)
    assert best > 20  # the smoothing lags: the lowest smoothed loss comes later than the raw one
    assert suggest_max_lr(lrs, losses, beta=0.9, divisor=3.0) == pytest.approx(lrs[best] / 3)
    assert suggest_max_lr(lrs, losses, beta=0.0) == pytest.approx(lrs[20] / 4)  # default: / 4


@pytest.mark.parametrize(
    ("losses", "message"),
    [
        ([math.inf, 1.0, 0.5], "no finite loss"),
        ([1.0, 1.5, 3.0], "never fell below its value at the first LR"),
    ],
)
def test_suggest_max_lr_says_why_it_cannot(losses: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        suggest_max_lr([0.1, 1.0, 10.0], losses)


@pytest.mark.parametrize(
    ("lrs", "losses"), [([0.1, 1.0], [2.0]), ([], [])], ids=["differ", "empty"]
)
def test_suggest_max_lr_names_a_curve_of_wrong_length(
    lrs: list[float], losses: list[float]
) -> None:
    with pytest.raises(ValueError, match=f"need one length > 0: {len(lrs)} and {len(losses)}"):
        suggest_max_lr(lrs, losses)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"min_lr": 0.0}, ValueError, "`min_lr` must be a finite number > 0, got 0.0."),
        ({"max_lr": 1e-6}, ValueError, "`max_lr` must be a finite number > min_lr"),
        ({"num_steps": 1}, ValueError, "`num_steps` must be an integer >= 2, got 1."),
        ({"early_stop_threshold": 1.0}, ValueError, "`early_stop_threshold` must be"),
        ({"divisor": 0.5}, ValueError, "`divisor` must be a finite number >= 1, got 0.5."),
        ({"num_steps": 2.5}, TypeError, "`num_steps` must be an integer"),
    ],
)
def test_range_test_rejects_bad_arguments(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(".", r"\.")):
        LRRangeTest(**kwargs)


def test_one_cycle_rejects_other_strings_and_range_tests() -> None:
    with pytest.raises(TypeError, match="`max_lr` must be a number"):
        OneCycleScheduler(max_lr="fast")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`range_test` must be an LRRangeTest"):
        OneCycleScheduler(max_lr="auto", range_test={"num_steps": 10})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no range test has run yet"):
        OneCycleScheduler(max_lr="auto", total_steps=100).as_schedule()


def test_the_plot_draws_the_curve_and_leaves_out_a_non_finite_end() -> None:
    pytest.importorskip("matplotlib")
    lrs, losses = [0.01, 0.1, 1.0, 10.0], [2.0, 1.0, 0.5, math.nan]
    ax = RangeTestResult(lrs, losses, 0.25, "non-finite loss", 0.1).plot().axes[0]
    raw, smoothed, chosen = ax.get_lines()
    assert list(raw.get_ydata())[:3] == losses[:3]
    assert list(smoothed.get_ydata())[:3] == pytest.approx(smooth(losses[:3]))
    assert list(chosen.get_xdata()) == [0.25, 0.25]
    assert ax.get_xlim()[1] < 10.0  # the NaN point at lr 10 is not drawn


# -- the sweep inside fit ------------------------------------------------------------------------
@pytest.mark.parametrize("generator_seed", [None, 3], ids=["global-rng", "loader-generator"])
def test_auto_run_equals_the_run_with_the_chosen_max_lr_by_hand(
    tmp_path: Path, generator_seed: int | None
) -> None:
    auto, auto_model, auto_trainer = fit("auto", tmp_path, "auto", generator_seed=generator_seed)
    result = auto.range_test_result
    assert result is not None and math.isfinite(result.max_lr) and result.max_lr > 0
    assert 2 <= len(result.lrs) <= FAST.num_steps
    assert result.lrs == pytest.approx(FAST.lrs()[: len(result.lrs)])
    _, hand_model, hand_trainer = fit(
        result.max_lr, tmp_path, "hand", generator_seed=generator_seed
    )
    hand_state = hand_model.state_dict()
    for name, value in auto_model.state_dict().items():
        assert torch.equal(value, hand_state[name]), name
    # The same batches, dropout masks and logged losses: the sweep left no trace in the run...
    auto_rows, hand_rows = metrics_rows(auto_trainer), metrics_rows(hand_trainer)
    train_losses = [r["train_loss_step"] for r in auto_rows if r.get("train_loss_step")]
    assert train_losses == [r["train_loss_step"] for r in hand_rows if r.get("train_loss_step")]
    assert len(train_losses) == 20
    # ...but its curve and its choice are logged beside it.
    curve = [float(r["lr_range_test/loss"]) for r in auto_rows if r.get("lr_range_test/loss")]
    assert curve == pytest.approx(result.losses)
    chosen = [float(r["lr_range_test/max_lr"]) for r in auto_rows if r.get("lr_range_test/max_lr")]
    assert chosen == [pytest.approx(result.max_lr)]


def test_auto_beside_lightnings_checkpoint_early_stopping_and_lr_monitor_is_the_hand_set_run(
    tmp_path: Path,
) -> None:
    # The sweep's optimizer steps are not the loop's: no checkpoint saved at a step, no logged
    # row, no step counted, no callback state changed by them.
    def run(max_lr: Any, name: str) -> tuple[Any, ...]:
        saver = ModelCheckpoint(tmp_path / name, "{step}", every_n_train_steps=1, save_top_k=-1)
        stopper = EarlyStopping("val_loss", patience=1)
        monitor = LearningRateMonitor("step", log_momentum=True)
        callbacks = [saver, stopper, monitor]
        cb, model, trainer = fit(
            max_lr, tmp_path, name, 3, callbacks=callbacks, enable_checkpointing=True
        )
        rows = [
            {k: v for k, v in row.items() if not k.startswith("lr_range_test/")}
            for row in metrics_rows(trainer)
            if not row.get("lr_range_test/loss") and not row.get("lr_range_test/max_lr")
        ]
        files = {path.name for path in (tmp_path / name).glob("*.ckpt")}
        return cb, model, trainer.global_step, rows, files, repr(stopper.state_dict())

    auto = run("auto", "auto")
    assert auto[0].range_test_result is not None
    hand = run(auto[0].range_test_result.max_lr, "hand")
    for a, b in zip(auto[1].parameters(), hand[1].parameters(), strict=True):
        assert torch.equal(a, b)
    assert auto[2:] == hand[2:]
    assert auto[4] == {f"step={k}.ckpt" for k in range(1, auto[2] + 1)}


def test_a_diverging_sweep_stops_early_and_still_picks_a_finite_value(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    sweep = LRRangeTest(min_lr=1e-3, max_lr=1e4, num_steps=60)
    cb = OneCycleScheduler(max_lr="auto", range_test=sweep)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, callbacks=[cb])
    trainer.fit(DigitsClassifier(), loader())
    result = cb.range_test_result
    assert result is not None
    assert len(result.lrs) < 60 and result.lrs[-1] < 1e4
    assert result.stop_reason.startswith(("loss diverged", "non-finite loss"))
    assert math.isfinite(result.max_lr) and result.max_lr < result.lrs[-1]


def test_a_sweep_that_diverges_from_its_first_step_says_why(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    sweep = LRRangeTest(min_lr=1e3, max_lr=1e5, num_steps=20)
    cb = OneCycleScheduler(max_lr="auto", range_test=sweep)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, callbacks=[cb])
    with pytest.raises(ValueError, match="Lower `min_lr` of the range test, or pass `max_lr`"):
        trainer.fit(DigitsClassifier(), loader())


def test_resume_after_the_sweep_does_not_sweep_again(tmp_path: Path) -> None:
    """Stop after epoch 1 of 3, resume with a fresh callback: no second sweep, same weights as
    the uninterrupted run."""

    def run(callbacks: list[Any], ckpt: str | None, **kwargs: Any) -> DigitsClassifier:
        pl.seed_everything(1, verbose=False)
        model = DigitsClassifier()
        trainer = pl.Trainer(
            max_epochs=3, logger=False, enable_progress_bar=False, callbacks=callbacks, **kwargs
        )
        trainer.fit(model, loader(shuffle=False), ckpt_path=ckpt)
        return model

    saver = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, filename="{epoch}")
    first = OneCycleScheduler(max_lr="auto", range_test=FAST)
    full = run([first, saver], None)
    assert first.range_test_result is not None
    resumed_cb = OneCycleScheduler(max_lr="auto", range_test=FAST)
    resumed = run([resumed_cb], str(tmp_path / "epoch=0.ckpt"), enable_checkpointing=False)
    assert resumed_cb.range_test_result is None  # restored, not swept
    for a, b in zip(full.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_one_callback_reused_across_trainers_sweeps_in_each_fit(tmp_path: Path) -> None:
    cb = OneCycleScheduler(max_lr="auto", range_test=FAST)
    results = []
    for seed in (0, 1):
        pl.seed_everything(seed, verbose=False)
        trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, callbacks=[cb])
        trainer.fit(DigitsClassifier(), loader())
        results.append(cb.range_test_result)
    assert results[0] is not None and results[1] is not None
    assert results[0].losses != results[1].losses  # the second fit swept its own model


class ManualClassifier(DigitsClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (ManualClassifier, "needs automatic optimization"),
    ],
)
def test_run_shapes_the_sweep_cannot_undo_are_named(model: type, message: str) -> None:
    cb = OneCycleScheduler(max_lr="auto", range_test=FAST)
    trainer = pl.Trainer(max_steps=20, logger=False, enable_checkpointing=False, callbacks=[cb])
    with pytest.raises(MisconfigurationException, match=message):
        trainer.fit(model(), loader())


# -- "auto" on the LR callbacks' lifecycle (fresh state per fit, the saved cycle on resume) -------
def _auto_then_resume(
    tmp_path: Path,
    first_max_lr: Any,
    resumed_max_lr: Any,
    resumed_epochs: int,
    range_test: LRRangeTest = FAST,
) -> tuple[OneCycleScheduler, OneCycleScheduler, list[str]]:
    """Fit 2 epochs (checkpoint after epoch 0), then resume from it with a fresh callback."""
    saver = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, filename="{epoch}")
    first = OneCycleScheduler(max_lr=first_max_lr, range_test=FAST)
    pl.seed_everything(1, verbose=False)
    trainer = pl.Trainer(
        max_epochs=2, logger=False, enable_progress_bar=False, callbacks=[first, saver]
    )
    trainer.fit(DigitsClassifier(), loader(shuffle=False))
    resumed = OneCycleScheduler(max_lr=resumed_max_lr, range_test=range_test)
    trainer = pl.Trainer(
        max_epochs=resumed_epochs,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        callbacks=[resumed],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(DigitsClassifier(), loader(shuffle=False), ckpt_path=tmp_path / "epoch=0.ckpt")
    return first, resumed, [str(w.message) for w in caught]


def test_an_auto_resume_continues_the_saved_cycle_without_a_changed_config_warning(
    tmp_path: Path,
) -> None:
    first, resumed, messages = _auto_then_resume(tmp_path, "auto", "auto", resumed_epochs=2)
    assert first.range_test_result is not None and resumed.range_test_result is None
    assert resumed.config["max_lr"] == first.config["max_lr"] == [first.range_test_result.max_lr]
    assert resumed.config["total_steps"] == first.config["total_steps"] == [20]
    assert not [m for m in messages if "different cycle" in m], messages
    assert resumed.state_dict()["auto_max_lr"] == first.range_test_result.max_lr


def test_an_auto_resume_with_more_epochs_names_only_total_steps(tmp_path: Path) -> None:
    first, resumed, messages = _auto_then_resume(tmp_path, "auto", "auto", resumed_epochs=3)
    assert resumed.range_test_result is None  # no second sweep
    (warning,) = [m for m in messages if "different cycle" in m]
    assert "`total_steps`: [20] in the checkpoint, [30] now" in warning
    assert "`max_lr`" not in warning
    assert resumed.config["total_steps"] == [20]  # the saved cycle continues
    assert resumed.config["max_lr"] == first.config["max_lr"]


def test_an_auto_resume_with_another_range_test_names_it_and_keeps_the_saved_value(
    tmp_path: Path,
) -> None:
    # The checkpoint's value is kept and no second sweep runs, as documented; before, the range
    # test given now (another range, fewer steps) went unused without a word.
    other = LRRangeTest(max_lr=1.0, num_steps=20)
    first, resumed, messages = _auto_then_resume(tmp_path, "auto", "auto", 2, range_test=other)
    assert resumed.range_test_result is None
    assert resumed.config["max_lr"] == first.config["max_lr"]
    (warning,) = [m for m in messages if "different cycle" in m]
    assert "`range_test`: {'min_lr': 0.0001, 'max_lr': 10.0, 'num_steps': 40" in warning
    assert "{'min_lr': 0.0001, 'max_lr': 1.0, 'num_steps': 20" in warning


def test_auto_resumed_from_a_hand_set_cycle_continues_it_and_says_so(tmp_path: Path) -> None:
    _, resumed, messages = _auto_then_resume(tmp_path, 0.05, "auto", resumed_epochs=2)
    assert resumed.range_test_result is None  # the checkpoint's cycle is continued, not swept
    (warning,) = [m for m in messages if "different cycle" in m]
    assert "`max_lr`: [0.05] in the checkpoint, 'auto' now" in warning
    assert resumed.config["max_lr"] == [0.05]


def test_the_sweep_does_not_mark_the_callback_as_resumed() -> None:
    """The undo loads back only what the sweep changed: the scheduler's own state is untouched,
    so a fresh fit keeps its fresh-fit warnings (here: cycling switches momentum 0 on)."""
    pl.seed_everything(0, verbose=False)
    cb = OneCycleScheduler(max_lr="auto", range_test=FAST)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, callbacks=[cb])
    with pytest.warns(UserWarning, match="has momentum 0"):
        trainer.fit(DigitsClassifier(momentum=0.0), loader())
    assert cb.range_test_result is not None and not cb.restored


# -- each sweep step is a real training step -----------------------------------------------------
L2 = 0.05


class Penalized(WeightPenaltyMixin, DigitsClassifier):
    """The digits MLP with an l2 penalty (public API), no momentum, no dropout."""

    def __init__(self) -> None:
        super().__init__(momentum=0.0)
        self.configure_penalty(l2=L2)


class FirstStepGradients(pl.Callback):
    """The gradients the fit's first optimizer step used (the sweep's first step), read by the
    optimizer's step post-hook, and the GradScaler's scale at every `on_before_optimizer_step`."""

    def __init__(self) -> None:
        self.grads: list[torch.Tensor] | None = None
        self.scales: list[float] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        def record(*_: Any) -> None:
            if self.grads is None:
                self.grads = [p.grad.detach().clone() for p in pl_module.parameters()]  # type: ignore[union-attr]

        trainer.optimizers[0].register_step_post_hook(record)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            self.scales.append(float(scaler.get_scale()))


@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_sweep_gradient_includes_the_weight_penalty(accumulate: int) -> None:
    # With a GradientAccumulationScheduler the penalty was added twice per accumulated step: the
    # sweep ran 2 backwards while `trainer.accumulate_grad_batches` still said 1.
    pl.seed_everything(0, verbose=False)
    model = Penalized()
    start = [p.detach().clone() for p in model.parameters()]
    x, y = digits(32 * accumulate)  # the first batches of the unshuffled loader
    loss = sum(F.cross_entropy(model(b), t) for b, t in zip(x.split(32), y.split(32), strict=True))
    data_grads = torch.autograd.grad(loss / accumulate, list(model.parameters()))
    rec = FirstStepGradients()
    cb = OneCycleScheduler(max_lr="auto", range_test=FAST)
    callbacks = [rec, cb, GradientAccumulationScheduler({0: accumulate})]
    trainer = pl.Trainer(max_steps=4, logger=False, enable_checkpointing=False, callbacks=callbacks)
    trainer.fit(model, loader(shuffle=False))
    assert rec.grads is not None
    for (name, _), w, data, seen in zip(
        model.named_parameters(), start, data_grads, rec.grads, strict=True
    ):
        penalty = 2 * L2 * w if name.endswith("weight") else torch.zeros_like(w)
        torch.testing.assert_close(seen, data + penalty, rtol=1e-5, atol=1e-6, msg=name)
        if name.endswith("weight"):  # the penalty is material: without it the check fails
            assert (penalty.abs() > 1e-3).any(), name


class InfOnFirstBackward(pl.Callback):
    """Fills a gradient with inf after the fit's first backward (the sweep's first step)."""

    def __init__(self) -> None:
        self.done = False

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.done:
            next(pl_module.parameters()).grad.fill_(math.inf)  # type: ignore[union-attr]
            self.done = True


def test_a_sweep_step_goes_through_the_grad_scaler_which_is_restored() -> None:
    """The inf gradient of the first sweep step is caught by the GradScaler (the step is skipped
    and the scale halved) instead of reaching the weights; the scale is restored for training."""
    pl.seed_everything(0, verbose=False)
    rec = FirstStepGradients()
    cb = OneCycleScheduler(max_lr="auto", range_test=FAST)
    scaler = torch.amp.GradScaler("cpu")
    trainer = pl.Trainer(
        max_steps=4,
        logger=False,
        enable_checkpointing=False,
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
        callbacks=[InfOnFirstBackward(), rec, cb],
    )
    trainer.fit(DigitsClassifier(), loader())
    result = cb.range_test_result
    assert result is not None and all(math.isfinite(v) for v in result.losses[:-1])
    swept = len(result.lrs)
    assert swept > 10  # the skipped step left the weights finite: the sweep went on
    assert rec.scales[:2] == [65536.0, 32768.0]  # the scaler skipped the first step
    assert rec.scales[swept:] == [65536.0] * 4  # training starts from the restored scaler


@pytest.mark.parametrize(
    "kwargs",
    [
        {"accumulate_grad_batches": 2, "gradient_clip_val": 0.5},
        {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]},
        {"precision": "bf16-mixed"},
    ],
    ids=["accumulate-clip", "grad-scaler", "bf16-mixed"],
)
def test_auto_equals_the_hand_set_run_with_accumulation_clipping_and_mixed_precision(
    tmp_path: Path, kwargs: dict[str, Any]
) -> None:
    auto, auto_model, _ = fit("auto", tmp_path, "auto", **kwargs)
    assert auto.range_test_result is not None
    if "plugins" in kwargs:  # a fresh scaler for the hand-set run
        kwargs = {
            "plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]
        }
    _, hand_model, _ = fit(auto.range_test_result.max_lr, tmp_path, "hand", **kwargs)
    for a, b in zip(auto_model.parameters(), hand_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_sweep_step_accumulates_as_the_gradient_accumulation_schedulers_first_epoch() -> None:
    # Before, the sweep (when training starts) read `trainer.accumulate_grad_batches` before the
    # scheduler set epoch 0's: one batch per step, a quarter of the training's batch.
    model = Counting()
    cb = OneCycleScheduler(max_lr="auto", range_test=FAST)
    gas = GradientAccumulationScheduler({0: 4})
    trainer = pl.Trainer(
        max_steps=3,
        limit_train_batches=8,
        logger=False,
        enable_checkpointing=False,
        callbacks=[cb, gas],
    )
    trainer.fit(model, loader())
    assert cb.range_test_result is not None
    assert len(model.calls.items) == 4 * (len(cb.range_test_result.losses) + 3)


def test_a_torchmetrics_state_the_sweep_updated_in_place_is_put_back(tmp_path: Path) -> None:
    auto, auto_model, _ = fit("auto", tmp_path, "auto", module=MeanLossClassifier)
    assert auto.range_test_result is not None
    max_lr = auto.range_test_result.max_lr
    _, hand_model, _ = fit(max_lr, tmp_path, "hand", module=MeanLossClassifier)
    assert isinstance(auto_model, MeanLossClassifier) and isinstance(hand_model, MeanLossClassifier)
    assert len(auto_model.epoch_means) == 2
    assert auto_model.epoch_means == hand_model.epoch_means  # no sweep loss in epoch 0's mean


class DropoutOff(DropoutClassifier):
    """Its dropout left in eval mode by the user before fit (Lightning trains it so, with a
    warning); records that mode at every `training_step`."""

    def __init__(self) -> None:
        super().__init__()
        self.net[2].eval()
        self.dropout_modes = Record()  # kept through the sweep's undo

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.dropout_modes.items.append(self.net[2].training)
        return super().training_step(batch, batch_idx)


def test_the_sweep_steps_in_the_modes_training_steps_in(tmp_path: Path) -> None:
    # Before, the sweep put the whole module in train mode: its steps ran the dropout the
    # training does not run (its curve was not the training's), then the mode was put back.
    auto, model, _ = fit("auto", tmp_path, "auto", module=DropoutOff)
    assert auto.range_test_result is not None and isinstance(model, DropoutOff)
    modes = model.dropout_modes.items
    assert len(modes) == len(auto.range_test_result.losses) + 20
    assert not any(modes)


class CountsInABuffer(DropoutClassifier):
    """Counts its training steps in a buffer it rebinds (``self.seen = self.seen + 1``)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.seen = self.seen + 1
        return super().training_step(batch, batch_idx)


def test_a_buffer_the_sweep_rebound_is_put_back(tmp_path: Path) -> None:
    # Before, the sweep copied the saved value into the buffer it found, which the module no
    # longer held: the count went on from the sweep's steps (and into the checkpoint).
    _, model, _ = fit("auto", tmp_path, "auto", module=CountsInABuffer)
    assert int(model.get_buffer("seen")) == 20  # 2 epochs of 10 batches


class KeepsItsFirstBatch(DropoutClassifier):
    """Keeps the first batch it trains on, set on first use (e.g. for a figure at the end)."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if not hasattr(self, "first_x"):
            self.first_x = batch[0]
        return super().training_step(batch, batch_idx)


def test_an_attribute_first_set_in_the_sweep_is_removed(tmp_path: Path) -> None:
    # Before, only the attributes the module had before the sweep were put back: one set for
    # the first time by a sweep step stayed, and the training kept the sweep's first batch.
    auto, auto_model, _ = fit("auto", tmp_path, "auto", module=KeepsItsFirstBatch)
    assert auto.range_test_result is not None
    _, hand_model, _ = fit(
        auto.range_test_result.max_lr, tmp_path, "hand", module=KeepsItsFirstBatch
    )
    assert isinstance(auto_model, KeepsItsFirstBatch) and isinstance(hand_model, KeepsItsFirstBatch)
    assert torch.equal(auto_model.first_x, hand_model.first_x)


class KeepsItsLosses(DropoutClassifier):
    """Appends every training loss to a list and counts steps in a dict (e.g. for a plot)."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: list[float] = []
        self.counts = {"steps": 0}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.losses.append(float(loss))
        self.counts["steps"] += 1
        return loss


def test_a_list_and_a_dict_the_sweep_changed_in_place_are_put_back(tmp_path: Path) -> None:
    # Before, an attribute was put back as the object it held, which a sweep step had changed in
    # place: the list started with the sweep's losses and the count with its steps.
    auto, auto_model, _ = fit("auto", tmp_path, "auto", module=KeepsItsLosses)
    assert auto.range_test_result is not None
    _, hand_model, _ = fit(auto.range_test_result.max_lr, tmp_path, "hand", module=KeepsItsLosses)
    assert isinstance(auto_model, KeepsItsLosses) and isinstance(hand_model, KeepsItsLosses)
    assert auto_model.counts == hand_model.counts == {"steps": 20}
    assert auto_model.losses == hand_model.losses


class ScaledHead(DigitsClassifier):
    """The head at a tenth of the body's learning rate (an ``lr_scale`` of 0.1)."""

    def configure_optimizers(self) -> Any:
        head = {"params": self.net[2].parameters(), "lr_scale": 0.1}
        return torch.optim.SGD([{"params": self.net[0].parameters()}, head], lr=0.1)


class GroupLRs(pl.Callback):
    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        self.lrs.append([group["lr"] for group in optimizer.param_groups])


class OwnOptimizerStep(DigitsClassifier):
    """Overrides Lightning's `optimizer_step` hook (where a module skips or adds to an update);
    records the batch index of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = Record()

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, closure: Any) -> None:
        self.calls.items.append(batch_idx)
        optimizer.step(closure=closure)


def test_a_sweep_step_goes_through_the_modules_optimizer_step_hook() -> None:
    # Before, the sweep called the strategy's optimizer_step itself: a module's override of the
    # hook that automatic optimization steps through was left out of the sweep's steps.
    model = OwnOptimizerStep()
    cb = OneCycleScheduler(max_lr="auto", range_test=FAST)
    trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, callbacks=[cb])
    trainer.fit(model, loader())
    assert cb.range_test_result is not None
    swept = len(cb.range_test_result.losses)
    assert model.calls.items == [*range(swept), 0, 1, 2]


def test_the_sweep_keeps_the_lr_scale_of_each_param_group() -> None:
    # Before, every group was swept at the same LR, while the training runs the head at a tenth.
    cb, rec = OneCycleScheduler(max_lr="auto", range_test=FAST), GroupLRs()
    trainer = pl.Trainer(max_steps=8, logger=False, enable_checkpointing=False, callbacks=[cb, rec])
    trainer.fit(ScaledHead(), loader())
    assert cb.range_test_result is not None
    swept = cb.range_test_result.lrs
    assert rec.lrs[: len(swept)] == [[lr, lr * 0.1] for lr in swept]


def test_a_loader_with_persistent_workers_is_named() -> None:
    # The sweep starts the workers and the training goes on with them: the run after it drew
    # other random numbers than the hand-set run (other weights after 2 epochs), silently.
    x, y = digits(320)
    workers = DataLoader(TensorDataset(x, y), batch_size=32, num_workers=1, persistent_workers=True)
    cb = OneCycleScheduler(max_lr="auto", range_test=FAST)
    trainer = pl.Trainer(max_steps=4, logger=False, enable_checkpointing=False, callbacks=[cb])
    with pytest.warns(UserWarning, match=r"`persistent_workers=True`.*Pass `persistent_workers="):
        trainer.fit(DigitsClassifier(), workers)


class RandomStates(pl.Callback):
    """The torch, Python and NumPy random states when training starts (before the sweep)."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.states = random_states()


def random_states() -> tuple[Any, ...]:
    return torch.get_rng_state(), random.getstate(), np.random.get_state()[1]


class FailingSweep(DigitsClassifier):
    """Raises ``error`` in its 6th `training_step` (inside the sweep)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error, self.calls = error, Record()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.calls.items.append(batch_idx)
        if len(self.calls.items) == 6:
            raise self.error
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()], ids=repr)
def test_an_error_in_the_sweep_leaves_the_model_as_it_was(error: BaseException) -> None:
    pl.seed_everything(0, verbose=False)
    model = FailingSweep(error)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cb, states = OneCycleScheduler(max_lr="auto", range_test=FAST), RandomStates()
    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, callbacks=[states, cb]
    )
    handler = signal.getsignal(signal.SIGINT)
    try:
        # Lightning turns a KeyboardInterrupt into a graceful shutdown and `exit(1)`.
        with pytest.raises(RuntimeError if isinstance(error, RuntimeError) else SystemExit):
            trainer.fit(model, loader())
    finally:
        signal.signal(signal.SIGINT, handler)
    assert len(model.calls.items) == 6  # five sweep steps had updated the weights
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    optimizer = trainer.optimizers[0]
    assert not optimizer.state and optimizer.param_groups[0]["lr"] == model.lr
    torch_rng, python_rng, numpy_rng = random_states()  # the sweep drew batches and dropout
    assert torch.equal(torch_rng, states.states[0]) and python_rng == states.states[1]
    assert (numpy_rng == states.states[2]).all()


class Counting(DigitsClassifier):
    def __init__(self, output: str = "loss") -> None:
        super().__init__()
        self.output, self.calls = output, Record()

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.calls.items.append(batch_idx)
        loss = super().training_step(batch, batch_idx)
        return loss if self.output == "loss" else {"logits_mean": loss.detach()}


def test_a_cycle_that_cannot_be_sized_fails_before_any_sweep_step() -> None:
    model = Counting()
    cb = OneCycleScheduler(max_lr="auto", range_test=FAST)
    trainer = pl.Trainer(max_epochs=-1, logger=False, enable_checkpointing=False, callbacks=[cb])
    with pytest.raises(ValueError, match="could not size the cycle"):
        trainer.fit(model, loader())
    assert model.calls.items == []


def test_a_run_too_short_for_the_phases_fails_before_any_sweep_step() -> None:
    model = Counting()
    cb = OneCycleScheduler(max_lr="auto", final_steps=5, range_test=FAST)
    trainer = pl.Trainer(max_steps=6, logger=False, enable_checkpointing=False, callbacks=[cb])
    with pytest.raises(ValueError, match="too short for this 1cycle") as info:
        trainer.fit(model, loader())
    assert "`trainer.estimated_stepping_batches` = 6" in str(info.value)
    assert model.calls.items == []


def test_fast_dev_run_skips_the_sweep_as_lightnings_tuners_do() -> None:
    # fast_dev_run (a smoke test of one step) took the sweep's 50 training steps first, where
    # Lightning's LearningRateFinder and batch size scaler skip under it.
    model = Counting()
    cb = OneCycleScheduler(max_lr="auto")
    trainer = pl.Trainer(fast_dev_run=True, callbacks=[cb])
    with pytest.warns(UserWarning, match=r"Skipping .*range test.*`fast_dev_run`.*0\.05"):
        trainer.fit(model, loader())
    assert model.calls.items == [0] and cb.range_test_result is None and cb.auto_max_lr is None
    assert cb.config["max_lr"] == [0.05]  # DigitsClassifier's SGD(lr=0.05)
    assert trainer.optimizers[0].param_groups[0]["lr"] == OneCycle(3, 0.05)(1)
    # What is checked before a sweep is still checked.
    trainer = pl.Trainer(fast_dev_run=True, callbacks=[OneCycleScheduler(max_lr="auto")])
    with pytest.raises(MisconfigurationException, match="needs automatic optimization"):
        trainer.fit(ManualClassifier(), loader())


def test_a_training_step_without_loss_is_refused_in_lightnings_words_at_the_first_step() -> None:
    pl.seed_everything(0, verbose=False)
    model = Counting(output="dict")
    before = [p.detach().clone() for p in model.parameters()]
    cb = OneCycleScheduler(max_lr="auto", range_test=FAST)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, callbacks=[cb])
    with pytest.raises(MisconfigurationException, match="'loss' key needs to be present"):
        trainer.fit(model, loader())
    assert model.calls.items == [0]
    for a, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(a, b)


def test_a_minimum_at_the_top_of_the_range_warns_and_names_the_argument() -> None:
    lrs = [10 ** (-4 + k / 10) for k in range(30)]
    falling = [3.0 - 0.05 * k for k in range(30)]
    with pytest.warns(UserWarning, match=r"top of the swept range.*`LRRangeTest\(max_lr=\.\.\.\)`"):
        value = suggest_max_lr(lrs, falling)
    assert value == pytest.approx(lrs[-1] / 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a valley inside the range: no warning
        suggest_max_lr(lrs, falling[:20] + [2.5] * 10)


def test_a_sweep_that_stops_below_the_minimum_warns_in_fit() -> None:
    pl.seed_everything(0, verbose=False)
    low = LRRangeTest(min_lr=1e-4, max_lr=1e-2, num_steps=20)
    cb = OneCycleScheduler(max_lr="auto", range_test=low)
    trainer = pl.Trainer(max_steps=4, logger=False, enable_checkpointing=False, callbacks=[cb])
    with pytest.warns(UserWarning, match=r"LRRangeTest\(max_lr=\.\.\.\)"):
        trainer.fit(DigitsClassifier(), loader())


@pytest.mark.parametrize(
    "options",
    [{}, {"as_weight_decay": True, "proximal_l1": True, "max_norm": 1.0}],
    ids=["gradient", "weight-decay-proximal-max-norm"],
)
def test_auto_with_a_weight_penalty_equals_the_hand_set_run_logged_penalty_included(
    tmp_path: Path, options: dict[str, Any]
) -> None:
    """The seam of a sweep and a penalty: the sweep's steps add the penalty, and nothing of it
    (weights, the value kept for logging) reaches the run; also with l2 folded into the decay,
    l1 as a proximal step and a max-norm constraint, which act on the sweep's steps too."""

    def run(max_lr: Any) -> tuple[OneCycleScheduler, RegularizedMLP, list[str]]:
        pl.seed_everything(0, verbose=False)
        model = RegularizedMLP(hidden=(32,), l1=1e-4, l2=1e-3, **options)
        cb = OneCycleScheduler(max_lr=max_lr, range_test=FAST)
        trainer = pl.Trainer(
            max_epochs=2,
            logger=CSVLogger(tmp_path, name=str(max_lr)),
            log_every_n_steps=1,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[cb],
        )
        trainer.fit(model, loader())
        rows = metrics_rows(trainer)
        logged = [r[k] for r in rows for k in ("train/penalty", "train/penalty_step") if r.get(k)]
        return cb, model, logged

    auto, auto_model, auto_logged = run("auto")
    assert auto.range_test_result is not None
    _, hand_model, hand_logged = run(auto.range_test_result.max_lr)
    for a, b in zip(auto_model.parameters(), hand_model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert len(auto_logged) == 2 and auto_logged == hand_logged  # once per epoch


def test_the_rule_benchmark_runs_at_a_tiny_size(capsys: pytest.CaptureFixture[str]) -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "lr_range_rule.py"
    run_as_script(script, "--quick", "--no-write")
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| digits")]
    arms = [row.split("|")[3].strip() for row in rows]
    assert arms[:2] == ["hand 0.1", "lowest smoothed loss / 2"]
    assert arms[-1] == '"auto" (lowest smoothed loss / 4)'
    assert "Rule kept on the tuning tasks" in out
