"""OneCycleScheduler and ScheduledLR on a real Trainer with the digits data."""

from __future__ import annotations

import csv
import math
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_reg.callbacks import LRCallback, OneCycleScheduler, PerformanceScheduler, ScheduledLR
from lightning_reg.schedules import (
    Chain,
    Constant,
    CosineDecay,
    ExponentialDecay,
    LinearWarmup,
    OneCycle,
    PiecewiseConstant,
)
from tests import helpers
from tests.distributed.harness import Checks
from tests.distributed.worker import FlatValLoss, composed_callbacks, composed_trainer_kwargs
from tests.helpers import DigitsClassifier, digits_loader, make_trainer


class Recorder(Callback):
    """Records group 0's LR and momentum of optimizer 0 right before every optimizer step."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.moms: list[float] = []

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        group = optimizer.param_groups[0]
        self.lrs.append(group["lr"])
        self.moms.append(group["betas"][0] if "betas" in group else group.get("momentum", math.nan))


def fit(
    tmp_path: Path,
    callbacks: list[Callback],
    model: pl.LightningModule | None = None,
    loader_n: int = 256,
    batch_size: int = 32,
    **trainer_kwargs: Any,
) -> tuple[Recorder, pl.LightningModule]:
    torch.manual_seed(0)  # also for a model given: the same draws in training
    rec = Recorder()
    loader = digits_loader(loader_n, batch_size)
    trainer = helpers.fit(tmp_path, model, loader, callbacks=[*callbacks, rec], **trainer_kwargs)
    return rec, trainer.lightning_module


def test_textbook_one_cycle_trace_on_trainer(tmp_path: Path) -> None:
    # 256 samples / 32 = 8 batches per epoch, 4 epochs: the cycle is sized to 32 steps.
    rec, _ = fit(tmp_path, [OneCycleScheduler(max_lr=0.1)], max_epochs=4)
    sched = OneCycle(total_steps=32, max_lr=0.1)
    assert len(rec.lrs) == 32
    assert rec.lrs == pytest.approx([sched(k) for k in range(32)], rel=1e-12, abs=0)
    assert rec.moms == pytest.approx([sched.momentum(k) for k in range(32)], rel=1e-12)
    # Textbook shape: starts at max_lr/10, peaks at max_lr, ends near start_lr/1000.
    assert rec.lrs[0] == pytest.approx(0.01)
    assert max(rec.lrs) == pytest.approx(0.1)
    assert rec.lrs[-1] < 0.01 and rec.lrs[-1] >= 0.01 / 1000
    assert rec.moms[rec.lrs.index(max(rec.lrs))] == pytest.approx(0.85)


class TorchOneCycleModule(DigitsClassifier):
    def __init__(self, total_steps: int, **kwargs: Any) -> None:
        super().__init__()
        self.total_steps = total_steps
        self.kwargs = kwargs

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, total_steps=self.total_steps, **self.kwargs
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@pytest.mark.parametrize("three_phase", [False, True])
@pytest.mark.parametrize("anneal", ["cos", "linear"])
def test_parity_with_torch_one_cycle_lr_on_trainer(
    tmp_path: Path, three_phase: bool, anneal: str
) -> None:
    kwargs = dict(max_lr=0.2, pct_start=0.25, anneal_strategy=anneal, three_phase=three_phase)
    torch.manual_seed(0)  # same init as fit()'s default model
    ref, ref_model = fit(tmp_path / "a", [], model=TorchOneCycleModule(24, **kwargs), max_epochs=3)
    ours, our_model = fit(
        tmp_path / "b", [ScheduledLR(OneCycle.from_torch(total_steps=24, **kwargs))], max_epochs=3
    )
    assert len(ours.lrs) == 24
    assert ours.lrs == pytest.approx(ref.lrs, rel=1e-12, abs=1e-15)
    assert ours.moms == pytest.approx(ref.moms, rel=1e-12)
    for a, b in zip(ref_model.parameters(), our_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("accumulate", [1, 2, 4])
def test_accumulation_gives_same_per_optimizer_step_trace(tmp_path: Path, accumulate: int) -> None:
    # 8 optimizer steps per epoch whatever the accumulation: 8 * accumulate batches of 16.
    rec, _ = fit(
        tmp_path,
        [OneCycleScheduler(max_lr=0.1)],
        loader_n=16 * 8 * accumulate,
        batch_size=16,
        max_epochs=2,
        accumulate_grad_batches=accumulate,
    )
    sched = OneCycle(total_steps=16, max_lr=0.1)
    assert rec.lrs == pytest.approx([sched(k) for k in range(16)], rel=1e-12)


def test_a_gradient_accumulation_scheduler_sizes_the_cycle_epoch_by_epoch(tmp_path: Path) -> None:
    # Accumulation 1 for epochs 0-1, then 4: 8 + 8 + 2 + 2 = 20 optimizer steps. The Trainer's
    # estimate takes the accumulation when training starts for every epoch (32 steps): the
    # cycle stopped at 62% with the LR at 0.06 instead of its final 1e-5.
    from lightning.pytorch.callbacks import GradientAccumulationScheduler

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*training ended after")
        rec, _ = fit(
            tmp_path,
            [OneCycleScheduler(max_lr=0.1), GradientAccumulationScheduler({0: 1, 2: 4})],
            max_epochs=4,
        )
    cycle = OneCycle(total_steps=20, max_lr=0.1)
    assert rec.lrs == pytest.approx([cycle(k) for k in range(20)], rel=1e-12)


def test_a_second_fit_of_the_same_trainer_sizes_the_cycle_to_the_steps_left(tmp_path: Path) -> None:
    # Training 2 more epochs on the same Trainer: the Trainer's estimate counts from epoch 0
    # (32 steps), so the cycle stopped halfway, at LR 0.087, with a warning blaming max_time.
    cb, rec = OneCycleScheduler(max_lr=0.1), Recorder()
    trainer = make_trainer(tmp_path, callbacks=[cb, rec], max_epochs=2)
    model = DigitsClassifier()
    trainer.fit(model, digits_loader(256, 32))
    trainer.fit_loop.max_epochs = 4
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*training ended after")
        trainer.fit(model, digits_loader(256, 32))
    cycle = OneCycle(total_steps=16, max_lr=0.1)
    assert rec.lrs[16:] == pytest.approx([cycle(k) for k in range(16)], rel=1e-12)


def test_limit_train_batches_and_max_steps_size_the_cycle(tmp_path: Path) -> None:
    rec, _ = fit(
        tmp_path / "a", [OneCycleScheduler(max_lr=0.1)], max_epochs=3, limit_train_batches=5
    )
    assert rec.lrs == pytest.approx([OneCycle(15, 0.1)(k) for k in range(15)], rel=1e-12)
    rec, _ = fit(tmp_path / "b", [OneCycleScheduler(max_lr=0.1)], max_steps=11, max_epochs=-1)
    assert rec.lrs == pytest.approx([OneCycle(11, 0.1)(k) for k in range(11)], rel=1e-12)


def test_resume_mid_cycle_reproduces_trace_and_weights(tmp_path: Path) -> None:
    def cb() -> OneCycleScheduler:
        return OneCycleScheduler(max_lr=0.1, total_steps=32)

    full, full_model = fit(tmp_path / "full", [cb()], max_epochs=4)

    torch.manual_seed(0)
    model = DigitsClassifier()
    first = Recorder()
    trainer = make_trainer(tmp_path / "part", callbacks=[cb(), first], max_epochs=2)
    trainer.fit(model, digits_loader(256, 32))
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)

    torch.manual_seed(123)  # a different init: everything must come from the checkpoint
    resumed_model = DigitsClassifier()
    second = Recorder()
    trainer = make_trainer(tmp_path / "part", callbacks=[cb(), second], max_epochs=4)
    trainer.fit(resumed_model, digits_loader(256, 32), ckpt_path=ckpt)

    assert len(first.lrs) == 16 and len(second.lrs) == 16
    assert first.lrs + second.lrs == full.lrs
    assert first.moms + second.moms == full.moms
    for a, b in zip(full_model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_an_epoch_schedule_resumed_mid_epoch_continues_the_uninterrupted_trace(
    tmp_path: Path,
) -> None:
    # The checkpoint after step 12 is in the middle of epoch 1 (8 batches per epoch): the resumed
    # fit trains the rest of epoch 1 at epoch 1's value, not at the schedule's first.
    from lightning.pytorch.callbacks import ModelCheckpoint

    def schedule() -> ScheduledLR:
        return ScheduledLR(PiecewiseConstant([1, 2], [0.3, 0.2, 0.1]), "epoch")

    saver = ModelCheckpoint(tmp_path, "{step}", every_n_train_steps=4, save_top_k=-1)
    full, _ = fit(tmp_path, [schedule(), saver], max_epochs=3, enable_checkpointing=True)
    assert full.lrs == [0.3] * 8 + [0.2] * 8 + [0.1] * 8
    resumed = Recorder()
    trainer = make_trainer(tmp_path, callbacks=[schedule(), resumed], max_epochs=3)
    trainer.fit(DigitsClassifier(), digits_loader(256, 32), ckpt_path=tmp_path / "step=12.ckpt")
    assert resumed.lrs == full.lrs[12:]


def test_past_the_end_holds_final_lr_and_warns_once(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="past the schedule's end") as record:
        rec, _ = fit(tmp_path, [OneCycleScheduler(max_lr=0.1, total_steps=5)], max_steps=9)
    assert sum("past the schedule's end" in str(w.message) for w in record) == 1
    sched = OneCycle(5, 0.1)
    assert rec.lrs[5:] == [sched(k) for k in range(5, 9)]
    assert rec.lrs[5:] == pytest.approx([sched.final_lr] * 4, rel=1e-12)
    assert rec.lrs[:5] == pytest.approx([OneCycle(5, 0.1)(k) for k in range(5)], rel=1e-12)


def test_adam_betas_are_cycled(tmp_path: Path) -> None:
    rec, _ = fit(
        tmp_path,
        [OneCycleScheduler(max_lr=0.01, total_steps=16)],
        model=DigitsClassifier("adam"),
        max_epochs=2,
    )
    sched = OneCycle(16, 0.01)
    assert rec.moms == pytest.approx([sched.momentum(k) for k in range(16)], rel=1e-12)


class AdagradModule(DigitsClassifier):
    def configure_optimizers(self) -> Any:
        return torch.optim.Adagrad(self.parameters(), lr=0.1)


def test_optimizer_without_momentum_warns_once_and_cycles_lr(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="neither `momentum` nor `betas`"):
        rec, _ = fit(
            tmp_path,
            [OneCycleScheduler(max_lr=0.1, total_steps=8)],
            model=AdagradModule(),
            max_steps=8,
        )
    assert rec.lrs == pytest.approx([OneCycle(8, 0.1)(k) for k in range(8)], rel=1e-12)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*neither `momentum` nor `betas`")
        fit(
            tmp_path,
            [OneCycleScheduler(max_lr=0.1, total_steps=8, cycle_momentum=False)],
            model=AdagradModule(),
            max_steps=8,
        )


class TwoGroups(DigitsClassifier):
    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(
            [{"params": self.net[0].parameters()}, {"params": self.net[2].parameters()}],
            lr=0.1,
            momentum=0.9,
        )


def test_max_lr_per_param_group(tmp_path: Path) -> None:
    class Both(Recorder):
        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            self.lrs.append(tuple(g["lr"] for g in optimizer.param_groups))  # type: ignore[arg-type]

    rec = Both()
    trainer = make_trainer(
        tmp_path, callbacks=[OneCycleScheduler([0.1, 0.02], total_steps=8), rec], max_steps=8
    )
    trainer.fit(TwoGroups(), digits_loader(256, 32))
    a, b = OneCycle(8, 0.1), OneCycle(8, 0.02)
    assert rec.lrs == [pytest.approx((a(k), b(k)), rel=1e-12) for k in range(8)]
    with pytest.raises(ValueError, match="3 values but the optimizers have 2 param groups"):
        make_trainer(
            tmp_path, callbacks=[OneCycleScheduler([0.1, 0.2, 0.3], total_steps=8)], max_steps=2
        ).fit(TwoGroups(), digits_loader(64, 32))


class ManualModule(DigitsClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self(x), y)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        return loss


def test_manual_optimization_is_supported(tmp_path: Path) -> None:
    rec, _ = fit(tmp_path, [OneCycleScheduler(max_lr=0.1)], model=ManualModule(), max_epochs=2)
    assert rec.lrs == pytest.approx([OneCycle(16, 0.1)(k) for k in range(16)], rel=1e-12)


class WithScheduler(DigitsClassifier):
    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1)]


class NoOptimizer(DigitsClassifier):
    def configure_optimizers(self) -> Any:
        return None


def test_refuses_configurations_it_cannot_drive(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match="StepLR"):
        fit(tmp_path, [OneCycleScheduler(max_lr=0.1)], model=WithScheduler(), max_steps=2)
    with pytest.raises(MisconfigurationException, match="Keep one learning-rate callback"):
        fit(tmp_path, [OneCycleScheduler(max_lr=0.1), ScheduledLR(lambda s: 0.1)], max_steps=2)
    with (
        pytest.raises(MisconfigurationException, match="configure_optimizers` returned none"),
        pytest.warns(UserWarning),
    ):
        fit(
            tmp_path,
            [OneCycleScheduler(max_lr=0.1, total_steps=4)],
            model=NoOptimizer(),
            max_steps=2,
        )


def test_unknown_length_asks_for_total_steps(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Pass `total_steps="):
        fit(
            tmp_path,
            [OneCycleScheduler(max_lr=0.1)],
            max_epochs=-1,
            max_steps=-1,
            max_time="00:00:01:00",
        )


@pytest.mark.parametrize(
    ("kwargs", "match", "error"),
    [
        (dict(max_lr=-0.1), "max_lr", ValueError),
        (dict(max_lr=math.nan), "max_lr", ValueError),
        (dict(max_lr=math.inf), "max_lr", ValueError),
        (dict(max_lr=[0.1, -1.0]), "max_lr", ValueError),
        (dict(max_lr="0.1"), "max_lr", TypeError),
        (dict(max_lr=0.1, total_steps=0), "total_steps", ValueError),
        (dict(max_lr=0.1, total_steps=2.5), "total_steps", TypeError),
        (dict(max_lr=0.1, start_lr=0.2), "start_lr", ValueError),
        (dict(max_lr=0.1, anneal="cubic"), "anneal", ValueError),
    ],
)
def test_one_cycle_scheduler_rejects_bad_hyperparameters(
    kwargs: dict[str, Any], match: str, error: type[Exception]
) -> None:
    with pytest.raises(error, match=match):
        OneCycleScheduler(**kwargs)


def read_csv(logger: CSVLogger) -> list[dict[str, str]]:
    with open(Path(logger.log_dir) / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def series(rows: list[dict[str, str]], key: str) -> dict[int, float]:
    return {int(r["step"]): float(r[key]) for r in rows if r.get(key)}


@pytest.mark.parametrize("monitor_momentum", [None, False, True])
def test_logging_is_lightnings_lr_monitor_once(
    tmp_path: Path, monitor_momentum: bool | None
) -> None:
    # Without a LearningRateMonitor the callback runs its own (LR and momentum); beside one, that
    # monitor logs (the momentum only with `log_momentum=True`): one series each, Lightning's
    # names, every step logged once with the value that step trained with.
    logger = CSVLogger(tmp_path, name="csv")
    monitor = [] if monitor_momentum is None else [LearningRateMonitor("step", monitor_momentum)]
    fit(
        tmp_path,
        [OneCycleScheduler(max_lr=0.1), *monitor],
        max_epochs=2,
        logger=logger,
        log_every_n_steps=1,
    )
    rows = read_csv(logger)
    keys = {key for row in rows for key, value in row.items() if value}
    sched = OneCycle(16, 0.1)
    expected = {"lr-SGD"} if monitor_momentum is False else {"lr-SGD", "lr-SGD-momentum"}
    assert {k for k in keys if k.startswith(("lr", "momentum"))} == expected
    steps = [int(r["step"]) for r in rows if r.get("lr-SGD")]
    assert steps == list(range(16))  # each step once
    assert series(rows, "lr-SGD") == {k: pytest.approx(sched(k), rel=1e-12) for k in range(16)}
    if monitor_momentum is not False:
        moms = series(rows, "lr-SGD-momentum")
        assert moms == {k: pytest.approx(sched.momentum(k), rel=1e-12) for k in range(16)}


def test_scheduled_lr_per_step_and_per_epoch(tmp_path: Path) -> None:
    decay = ExponentialDecay(lr0=0.1, s=4)
    rec, _ = fit(tmp_path / "a", [ScheduledLR(decay)], max_epochs=2)
    assert rec.lrs == pytest.approx([0.1 * 0.1 ** (k / 4) for k in range(16)], rel=1e-12)
    assert all(math.isclose(m, 0.9) for m in rec.moms)  # no momentum schedule: untouched

    rec, _ = fit(
        tmp_path / "b",
        [ScheduledLR(PiecewiseConstant([1, 2], [0.3, 0.2, 0.1]), "epoch")],
        max_epochs=3,
    )
    assert rec.lrs == [0.3] * 8 + [0.2] * 8 + [0.1] * 8

    rec, _ = fit(tmp_path / "c", [ScheduledLR(lambda step: 0.05 / (1 + step))], max_steps=5)
    assert rec.lrs == pytest.approx([0.05 / (1 + k) for k in range(5)])


def test_scheduled_lr_rejects_bad_schedules(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="schedule"):
        ScheduledLR(0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="interval"):
        ScheduledLR(lambda s: 0.1, interval="batch")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must return a Python number"):
        fit(tmp_path, [ScheduledLR(lambda s: torch.tensor(0.1))], max_steps=2)
    with pytest.raises(ValueError, match="finite and >= 0"):
        fit(tmp_path, [ScheduledLR(lambda s: -1.0)], max_steps=2)
    with pytest.raises(
        ValueError, match="`schedule` has 2 values but the optimizers have 1 param groups"
    ):
        fit(tmp_path, [ScheduledLR([lambda s: 0.1, lambda s: 0.2])], max_steps=2)


class InfGradOnStep(DigitsClassifier):
    """Poisons the gradient of the given batches, so the GradScaler skips their optimizer step."""

    def __init__(self, poisoned: set[int]) -> None:
        super().__init__()
        self.poisoned = poisoned

    def on_after_backward(self) -> None:
        if self.trainer.fit_loop.epoch_loop.batch_progress.current.ready - 1 in self.poisoned:
            self.net[0].weight.grad.fill_(math.inf)


def test_steps_skipped_by_the_grad_scaler_do_not_advance_the_schedule(tmp_path: Path) -> None:
    from lightning.pytorch.plugins import MixedPrecision

    scaler = torch.amp.GradScaler("cpu")
    plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    rec, _ = fit(
        tmp_path,
        [OneCycleScheduler(max_lr=0.1, total_steps=10)],
        model=InfGradOnStep({3, 4}),
        max_steps=8,
        plugins=[plugin],
    )
    sched = OneCycle(10, 0.1)
    # Batches 3 and 4 are skipped by the scaler: their steps take the LR of step 3 again.
    expected = [sched(k) for k in (0, 1, 2, 3, 3, 3, 4, 5)]
    assert rec.lrs == pytest.approx(expected, rel=1e-12)
    assert scaler.get_scale() < 2.0**16  # the scaler did back off


# -- lifecycle: reuse across fits, resume with a changed config -------------------------------


def test_one_callbacks_list_reused_across_folds_trains_each_fold_alike(tmp_path: Path) -> None:
    # Cross-validation: one callbacks list, three Trainers. Each fold's trace is the trace of a
    # fresh instance (before, fold 2 ran at the previous cycle's final LR, 1e-5, throughout).
    cbs: list[Callback] = [OneCycleScheduler(max_lr=0.1)]
    fresh, _ = fit(tmp_path / "fresh", [OneCycleScheduler(max_lr=0.1)], max_epochs=2)
    assert fresh.lrs == pytest.approx([OneCycle(16, 0.1)(k) for k in range(16)], rel=1e-12)
    for fold in range(3):
        rec, _ = fit(tmp_path / f"fold{fold}", cbs, max_epochs=2)
        assert rec.lrs == fresh.lrs
        assert rec.moms == fresh.moms


def checkpointed_fit(
    tmp_path: Path, cb: Callback, **kwargs: Any
) -> tuple[Recorder, pl.Trainer, Path]:
    torch.manual_seed(0)
    rec = Recorder()
    trainer = make_trainer(tmp_path, callbacks=[cb, rec], **kwargs)
    trainer.fit(DigitsClassifier(), digits_loader(256, 32))
    ckpt = tmp_path / "first.ckpt"
    trainer.save_checkpoint(ckpt)
    return rec, trainer, ckpt


def test_resume_with_more_epochs_continues_the_saved_cycle_and_names_total_steps(
    tmp_path: Path,
) -> None:
    # Fit 2 epochs (a 16-step cycle sized by the Trainer), then resume with max_epochs=4. Before,
    # the cycle was silently re-sized to 32 and the LR jumped from 1e-5 back to 0.087.
    with pytest.warns(UserWarning, match="training ended after 16 of the 16|"):
        first, _, ckpt = checkpointed_fit(tmp_path, OneCycleScheduler(max_lr=0.1), max_epochs=2)
    second = Recorder()
    trainer = make_trainer(
        tmp_path, callbacks=[OneCycleScheduler(max_lr=0.1), second], max_epochs=4
    )
    with pytest.warns(UserWarning) as record:
        trainer.fit(DigitsClassifier(), digits_loader(256, 32), ckpt_path=ckpt)
    messages = [str(w.message) for w in record]
    assert any("`total_steps`: [16] in the checkpoint, [32] now" in m for m in messages)
    # The past-the-end warning names the resume, not `total_steps=None` (which was already set).
    (past,) = [m for m in messages if "past the schedule's end" in m]
    assert "resumed a checkpoint" in past and "total_steps=None" not in past
    cycle = OneCycle(16, 0.1)
    assert first.lrs == pytest.approx([cycle(k) for k in range(16)], rel=1e-12)
    assert second.lrs == [cycle(k) for k in range(16, 32)]  # the saved cycle's final LR held
    assert max(second.lrs) == pytest.approx(1e-5)


def test_schedule_longer_than_the_planned_run_names_the_trainer_estimate(tmp_path: Path) -> None:
    # The run ends where the Trainer planned it: the warning names that plan, not max_time or
    # EarlyStopping, and no OneCycleScheduler-only `total_steps` for a ScheduledLR.
    schedule = Chain([LinearWarmup(4, 0.1, start_lr=0.01), CosineDecay(16, 0.1)])
    with pytest.warns(UserWarning, match="training ended after 6 of the 20") as record:
        rec, _ = fit(tmp_path, [ScheduledLR(schedule)], max_steps=6)
    (message,) = [str(w.message) for w in record if "training ended after" in str(w.message)]
    assert "planned only 6 optimizer steps (`trainer.estimated_stepping_batches`" in message
    assert "EarlyStopping" not in message
    assert rec.lrs == pytest.approx([schedule(k) for k in range(6)], rel=1e-12)

    class StopAt3(Callback):  # as EarlyStopping would
        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            trainer.should_stop = trainer.should_stop or trainer.global_step == 3

    with pytest.warns(UserWarning, match="training ended after 3 of the 20") as record:
        fit(tmp_path, [ScheduledLR(schedule), StopAt3()], max_steps=20)
    (message,) = [str(w.message) for w in record if "training ended after" in str(w.message)]
    assert "EarlyStopping" in message and "planned only" not in message


def test_schedule_longer_than_a_gradient_accumulation_scheduler_run_names_its_plan(
    tmp_path: Path,
) -> None:
    # Accumulation 1 for epochs 0-1, then 4: 8 + 8 + 2 + 2 = 20 optimizer steps. At the end of
    # training `trainer.estimated_stepping_batches` takes accumulation 4 for every epoch (8).
    from lightning.pytorch.callbacks import GradientAccumulationScheduler

    schedule = Chain([LinearWarmup(4, 0.1, start_lr=0.01), CosineDecay(20, 0.1)])
    accumulation = GradientAccumulationScheduler({0: 1, 2: 4})
    with pytest.warns(UserWarning, match="training ended after 20 of the 24") as record:
        fit(tmp_path, [ScheduledLR(schedule), accumulation], max_epochs=4)
    (message,) = [str(w.message) for w in record if "training ended after" in str(w.message)]
    assert "planned only 20 optimizer steps (each epoch's batches over " in message


def test_resume_from_last_checkpoint_with_a_changed_max_lr_keeps_the_saved_cycle(
    tmp_path: Path,
) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    def trainer(cb: Callback, rec: Recorder, epochs: int) -> pl.Trainer:
        ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpts", save_last=True)
        return make_trainer(
            tmp_path, callbacks=[cb, rec, ckpt], enable_checkpointing=True, max_epochs=epochs
        )

    torch.manual_seed(0)
    first = Recorder()
    trainer(OneCycleScheduler(max_lr=0.1, total_steps=32), first, 2).fit(
        DigitsClassifier(), digits_loader(256, 32)
    )
    second = Recorder()
    resumed = trainer(OneCycleScheduler(max_lr=0.2, total_steps=32), second, 4)
    # Before, the new max_lr changed the state key: the saved state was dropped, the warm-up
    # restarted at step 0.
    with pytest.warns(UserWarning, match=r"`max_lr`: \[0.1\] in the checkpoint, \[0.2\] now"):
        resumed.fit(DigitsClassifier(), digits_loader(256, 32), ckpt_path="last")
    cycle = OneCycle(32, 0.1)
    assert first.lrs + second.lrs == pytest.approx([cycle(k) for k in range(32)], rel=1e-12)


def test_resume_from_a_checkpoint_without_our_state_says_so(tmp_path: Path) -> None:
    _, _, ckpt = checkpointed_fit(tmp_path, Callback(), max_steps=4)
    trainer = make_trainer(tmp_path, callbacks=[OneCycleScheduler(0.1, total_steps=8)], max_steps=8)
    with pytest.warns(UserWarning, match="holds no state of OneCycleScheduler"):
        trainer.fit(DigitsClassifier(), digits_loader(256, 32), ckpt_path=ckpt)


def test_resume_from_the_cli_continues_the_saved_cycle(tmp_path: Path) -> None:
    from lightning_reg.demos.cli import LightningRegCLI

    common = [
        "fit",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--report.enabled=false",
        "--trainer.limit_train_batches=4",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    with pytest.warns(UserWarning, match="training ended|"):
        first = LightningRegCLI(args=[*common, "--trainer.max_epochs=2"])
    (ckpt,) = (Path(first.trainer.log_dir) / "checkpoints").glob("*.ckpt")
    with pytest.warns(UserWarning, match=r"`total_steps`: \[8\] in the checkpoint, \[16\] now"):
        second = LightningRegCLI(args=[*common, "--trainer.max_epochs=4", f"--ckpt_path={ckpt}"])
    lr = second.trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == OneCycle(8, 0.1)(16)  # the saved 8-step cycle's final LR, not a jump back up


# -- manual optimization: cycles sized per optimizer -------------------------------------------


class TwoOptimizerGAN(DigitsClassifier):
    """Manual optimization with two optimizers stepped once per batch each (a GAN's shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.lrs: tuple[list[float], list[float]] = ([], [])

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        for k, opt in enumerate(self.optimizers()):  # type: ignore[union-attr]
            self.lrs[k].append(opt.param_groups[0]["lr"])
            loss = torch.nn.functional.cross_entropy(self(x), y)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()

    def configure_optimizers(self) -> Any:
        return [
            torch.optim.SGD(self.net[0].parameters(), lr=0.1, momentum=0.9),
            torch.optim.Adam(self.net[2].parameters(), lr=0.01),
        ]


@pytest.mark.parametrize("max_steps", [16, 15])
def test_two_optimizers_under_manual_optimization_each_end_at_final_lr(
    tmp_path: Path, max_steps: int
) -> None:
    # `global_step` counts both optimizers' steps: max_steps=16 is 8 batches, 8 steps each.
    # Before, each cycle was sized for 16 steps and the run ended at the peak. The Trainer
    # checks `max_steps` between batches: 15 is 8 batches too (sized 7, the 8th was past the end).
    model = TwoOptimizerGAN()
    cb = OneCycleScheduler(max_lr=[0.1, 0.01])
    trainer = make_trainer(tmp_path, callbacks=[cb], max_steps=max_steps)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past the schedule's end")
        trainer.fit(model, digits_loader(512, 32))
    assert trainer.global_step == 16 and cb.steps == [8, 8]
    for k, (peak, opt) in enumerate(zip((0.1, 0.01), trainer.optimizers, strict=True)):
        cycle = OneCycle(8, peak)
        assert model.lrs[k] == pytest.approx([cycle(s) for s in range(8)], rel=1e-12)
        assert opt.param_groups[0]["lr"] == cycle(8) == pytest.approx(cycle.final_lr)


def test_a_schedule_longer_than_the_manual_optimization_plan_names_the_plan(
    tmp_path: Path,
) -> None:
    # Before, under manual optimization the warning blamed `max_time`/`EarlyStopping` for a run
    # that ended as planned (`max_steps=16` is 8 steps of each of the 2 optimizers).
    trainer = make_trainer(tmp_path, callbacks=[ScheduledLR(CosineDecay(40, 0.1))], max_steps=16)
    with pytest.warns(UserWarning) as record:
        trainer.fit(TwoOptimizerGAN(), digits_loader(512, 32))
    ended = [str(w.message) for w in record if "ended after" in str(w.message)]
    assert len(ended) == 2
    for idx, message in enumerate(ended):
        assert f"8 of the 40 optimizer steps the schedule of optimizer {idx} spans" in message
        assert "planned only 8 optimizer steps (`max_steps=16` shared by 2 optimizers" in message


class LoggingGAN(TwoOptimizerGAN):
    """``TwoOptimizerGAN`` that logs a per-batch metric with ``self.log``."""

    def training_step(self, batch: Any, batch_idx: int) -> None:
        super().training_step(batch, batch_idx)
        self.log("batch_idx", float(batch_idx), on_step=True, on_epoch=False)


@pytest.mark.parametrize("every", [1, 2])
def test_lr_rows_share_the_steps_of_self_log_under_manual_optimization(
    tmp_path: Path, every: int
) -> None:
    # Two optimizers: `global_step` advances twice per batch, Lightning's log step once. The LR
    # rows must be the rows of the module's own metrics (not at 0, 2, 4, ... 16), and each holds
    # the LR its batch trained with (batch b ran with the cycles' step b).
    model = LoggingGAN()
    logger = CSVLogger(tmp_path, name="csv")
    trainer = make_trainer(
        tmp_path,
        callbacks=[OneCycleScheduler(max_lr=[0.1, 0.01])],
        max_steps=16,
        logger=logger,
        log_every_n_steps=every,
    )
    trainer.fit(model, digits_loader(512, 32))
    rows = read_csv(logger)
    batches = series(rows, "batch_idx")
    assert batches == {b: b for b in range(8) if (b + 1) % every == 0}  # step == batch index
    for key, peak in (("lr-SGD", 0.1), ("lr-Adam", 0.01)):
        lrs, moms = series(rows, key), series(rows, f"{key}-momentum")
        assert lrs.keys() == moms.keys() == batches.keys()
        assert lrs == {b: pytest.approx(OneCycle(8, peak)(b), rel=1e-12) for b in lrs}
        assert moms == {b: pytest.approx(OneCycle(8, peak).momentum(b), rel=1e-12) for b in lrs}


# -- runs that end before the schedule; short runs --------------------------------------------


class ShortStream(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    """Six batches of 32 digits, then exhausted."""

    def __iter__(self) -> Any:
        return iter(digits_loader(192, 32))


def test_iterable_dataset_shorter_than_max_steps_warns_how_far_it_got(tmp_path: Path) -> None:
    model = DigitsClassifier()
    trainer = make_trainer(tmp_path, callbacks=[OneCycleScheduler(0.1)], max_steps=20, max_epochs=1)
    loader = torch.utils.data.DataLoader(ShortStream(), batch_size=None)
    with pytest.warns(UserWarning, match=r"ended after 6 of the 20 optimizer steps .*30\.0%"):
        trainer.fit(model, loader)


def test_a_stream_of_unknown_length_is_no_plan_of_minus_one_steps(tmp_path: Path) -> None:
    # No `__len__` and no `max_steps`: Lightning's `estimated_stepping_batches` is -1 ("unknown").
    schedule = Chain([LinearWarmup(4, 0.1, start_lr=0.01), CosineDecay(16, 0.1)])
    trainer = make_trainer(tmp_path, callbacks=[ScheduledLR(schedule)], max_epochs=1)
    loader = torch.utils.data.DataLoader(ShortStream(), batch_size=None)
    with pytest.warns(UserWarning, match="training ended after 6 of the 20") as record:
        trainer.fit(DigitsClassifier(), loader)
    (message,) = [str(w.message) for w in record if "training ended after" in str(w.message)]
    assert "-1" not in message and "planned only" not in message
    assert "IterableDataset" in message
    with pytest.raises(ValueError, match=r"could not size the cycle: .* is inf \(an infinite"):
        make_trainer(tmp_path, callbacks=[OneCycleScheduler(0.1)], max_epochs=1).fit(
            DigitsClassifier(), loader
        )


def test_early_stopping_before_the_end_of_the_cycle_warns(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import EarlyStopping

    class Flat(DigitsClassifier):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", torch.tensor(1.0))

    trainer = make_trainer(
        tmp_path,
        callbacks=[OneCycleScheduler(0.1), EarlyStopping("val_loss", patience=1)],
        max_epochs=10,
        limit_train_batches=4,
    )
    with pytest.warns(UserWarning, match=r"ended after 8 of the 40 optimizer steps .*20\.0%"):
        trainer.fit(Flat(), digits_loader(256, 32), digits_loader(32, 32))


def test_fast_dev_run_works_and_a_two_step_run_says_where_the_count_came_from(
    tmp_path: Path,
) -> None:
    # fast_dev_run: a smoke test of one step on a 3-step cycle, no early-end warning.
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*OneCycleScheduler.*")
        rec, _ = fit(tmp_path, [OneCycleScheduler(max_lr=0.1)], fast_dev_run=True)
    assert rec.lrs == [OneCycle(3, 0.1)(0)]
    # Two steps: no 1cycle fits; the error names the Trainer's estimate and what to change.
    with pytest.raises(ValueError) as info:
        fit(tmp_path, [OneCycleScheduler(max_lr=0.1)], max_steps=2)
    message = str(info.value)
    assert "`trainer.estimated_stepping_batches` = 2" in message
    assert "`max_steps`" in message and "total_steps=" in message


# -- quiet overrides ---------------------------------------------------------------------------


def test_momentum_switched_on_is_warned(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"momentum 0 .*switches momentum on"):
        rec, _ = fit(
            tmp_path,
            [OneCycleScheduler(max_lr=0.1, total_steps=8)],
            model=DigitsClassifier(momentum=0.0),
            max_steps=8,
        )
    assert rec.moms[0] == 0.95
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*switches momentum on")
        rec, _ = fit(
            tmp_path,
            [OneCycleScheduler(max_lr=0.1, total_steps=8, cycle_momentum=False)],
            model=DigitsClassifier(momentum=0.0),
            max_steps=8,
        )
    assert rec.moms == [0.0] * 8


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (lambda: DigitsClassifier(momentum=0.0), r"momentum 0 .*\(0.95 at step 0\) switches"),
        (AdagradModule, "neither `momentum` nor `betas`"),
    ],
    ids=["momentum_0", "adagrad"],
)
def test_a_schedule_driving_momentum_warns_as_one_cycle_does(
    tmp_path: Path, model: Any, message: str
) -> None:
    # `ScheduledLR(OneCycle.from_torch(...))` (torch's parity path) switched SGD's momentum 0
    # on, or left Adagrad's LR cycled without its momentum, silently (torch's OneCycleLR raises
    # for Adagrad); OneCycleScheduler warned. A schedule without momentum stays quiet.
    cycle = OneCycle.from_torch(total_steps=8, max_lr=0.1)
    with pytest.warns(UserWarning, match=message):
        rec, _ = fit(tmp_path, [ScheduledLR(cycle)], model=model(), max_steps=8)
    assert rec.lrs == pytest.approx([cycle(k) for k in range(8)], rel=1e-12)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*(switches momentum on|nor `betas`)")
        fit(tmp_path, [ScheduledLR(ExponentialDecay(0.1, 8))], model=model(), max_steps=8)


def test_lightnings_lr_finder_in_the_same_fit_keeps_the_fresh_fit_checks(tmp_path: Path) -> None:
    # LearningRateFinder loads back the checkpoint it took when the fit started, which loads
    # our (fresh) state: the fit was taken for a resume and skipped the fresh-fit warnings.
    from lightning.pytorch.callbacks import LearningRateFinder

    finder = LearningRateFinder(num_training_steps=10)
    with pytest.warns(UserWarning, match="switches momentum on"):
        rec, _ = fit(
            tmp_path,
            [finder, OneCycleScheduler(max_lr=0.1)],
            model=DigitsClassifier(momentum=0.0),
            max_epochs=2,
        )
    cycle = OneCycle(16, 0.1)
    assert rec.lrs == pytest.approx([cycle(k) for k in range(16)], rel=1e-12)


class RatioGroups(DigitsClassifier):
    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(
            [
                {"params": self.net[0].parameters(), "lr": 0.1},
                {"params": self.net[2].parameters(), "lr": 0.001},
            ],
            momentum=0.9,
        )


def test_one_max_lr_over_groups_with_different_lrs_is_warned(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, callbacks=[OneCycleScheduler(0.1, total_steps=4)], max_steps=4)
    with pytest.warns(UserWarning, match=r"different learning rates \[0.1, 0.001\].*\[1.0, 0.01\]"):
        trainer.fit(RatioGroups(), digits_loader(128, 32))
    # One max_lr per group keeps the ratio, and says nothing.
    cb = OneCycleScheduler([0.1, 0.001], total_steps=4)
    trainer = make_trainer(tmp_path, callbacks=[cb], max_steps=4)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*erasing their ratio")
        trainer.fit(RatioGroups(), digits_loader(128, 32))
    lrs = [g["lr"] for g in trainer.optimizers[0].param_groups]
    assert lrs[0] == pytest.approx(100 * lrs[1], rel=1e-12)


# -- composition: warm-up + cosine, 1cycle + constant, warm-up + plateau ------------------------


def expected_composed_trace(name: str) -> list[float]:
    if name == "warmup_plateau":
        # Warm-up over steps 0..7; the evaluation at step 4 is ignored (hand-over at 8), the one
        # at step 8 sets the best, each later flat one halves the LR (patience 1).
        warm = LinearWarmup(8, 0.08, start_lr=0.008)
        return [warm(k) for k in range(8)] + [0.08] * 4 + [0.04] * 4
    schedule = composed_callbacks()[name]().as_schedule()
    return [schedule(k) for k in range(16)]


def composed_fit(
    root: Path, name: str, epochs: int, ckpt: Path | None = None
) -> tuple[Recorder, pl.Trainer, pl.LightningModule]:
    torch.manual_seed(0 if ckpt is None else 123)  # a resumed run takes everything from ckpt
    model, rec = FlatValLoss(), Recorder()
    kwargs = {**composed_trainer_kwargs(), "max_epochs": epochs}
    trainer = make_trainer(root, callbacks=[composed_callbacks()[name](), rec], **kwargs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*training ended after")
        trainer.fit(model, digits_loader(256, 32), digits_loader(32, 32), ckpt_path=ckpt)
    return rec, trainer, model


@pytest.mark.slow
@pytest.mark.parametrize("name", ["warmup_cosine", "one_cycle_constant", "warmup_plateau"])
def test_composed_schedule_runs_and_resumes_exactly_mid_chain(tmp_path: Path, name: str) -> None:
    full, _, full_model = composed_fit(tmp_path / "full", name, 4)
    assert full.lrs == pytest.approx(expected_composed_trace(name), rel=1e-12)
    if name == "one_cycle_constant":  # the cycle drives momentum, the constant tail keeps 0.95
        cycle = OneCycle(10, 0.1)
        assert full.moms == pytest.approx([cycle.momentum(min(k, 10)) for k in range(16)])
    for stop in (1, 3):  # mid first part (step 4) and in the last part (step 12)
        first, trainer, _ = composed_fit(tmp_path / f"a{stop}", name, stop)
        ckpt = tmp_path / f"stop{stop}.ckpt"
        trainer.save_checkpoint(ckpt)
        second, _, model = composed_fit(tmp_path / f"b{stop}", name, 4, ckpt)
        assert first.lrs + second.lrs == full.lrs
        assert first.moms + second.moms == full.moms
        for a, b in zip(full_model.parameters(), model.parameters(), strict=True):
            assert torch.equal(a, b)


@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)
def test_composed_schedules_give_identical_lrs_on_two_ddp_ranks(ddp_checks: Checks) -> None:
    results = ddp_checks["composed_schedules"]
    for name in ("warmup_cosine", "one_cycle_constant", "warmup_plateau"):
        assert results[0][name] == results[1][name], name
        assert results[0][name] == pytest.approx(expected_composed_trace(name), rel=1e-12), name


class EndProcessGroup(Callback):
    """Tears down the process group Lightning leaves up in the ranks it spawned, before they
    exit: gloo's threads otherwise abort a rank now and then at exit ("terminate called without
    an active exception", SIGABRT), as tests/distributed/worker.py notes for its own jobs."""

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)
def test_a_fit_in_processes_started_for_it_says_its_state_stays_there(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # `ddp_spawn` runs the fit in processes it starts and sends no callback state back, so the
    # callback here kept its state from before the fit (no step counts; `range_test_result`
    # None under "auto") and `trainer.save_checkpoint` after fit saved that, silently.
    cb = ScheduledLR(ExponentialDecay(0.1, 4))
    callbacks = [cb, EndProcessGroup()]
    trainer = make_trainer(
        tmp_path, callbacks=callbacks, max_steps=4, strategy="ddp_spawn", devices=2
    )
    trainer.fit(DigitsClassifier(), digits_loader(128, 32))
    assert cb.steps == []  # Lightning's to decide; the warning names it
    err = capfd.readouterr().err
    assert "ScheduledLR runs this fit in a process other than the one that made it" in err
    assert "`strategy='ddp'`" in err


def _fit_in_this_process(cb: ScheduledLR, root: str, queue: Any) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = make_trainer(Path(root), callbacks=[cb], max_steps=4)
        trainer.fit(DigitsClassifier(), digits_loader(128, 32))
    queue.put((cb.steps, [str(w.message) for w in caught]))


@pytest.mark.slow
def test_a_fit_in_a_process_the_user_started_reads_its_state_there_unwarned(
    tmp_path: Path,
) -> None:
    # A callback made here and a whole fit run in a process the user started (multiprocessing,
    # a hyperparameter search) where the state is read: it holds the fit's state there, so the
    # warning that Lightning's processes keep it was false (it fired on the process id alone).
    context = torch.multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(
        target=_fit_in_this_process,
        args=(ScheduledLR(ExponentialDecay(0.1, 4)), str(tmp_path), queue),
    )
    child.start()
    steps, messages = queue.get(timeout=300)
    child.join(timeout=60)
    assert steps == [4]
    assert not [m for m in messages if "process other than" in m], messages


@pytest.mark.parametrize("name", ["warmup_cosine", "warmup_plateau", "one_cycle_constant"])
def test_composed_schedule_configs_run_through_the_cli(tmp_path: Path, name: str) -> None:
    from lightning_reg.demos.cli import LightningRegCLI

    config = Path(__file__).resolve().parents[1] / "examples" / "configs" / f"{name}.yaml"
    argv = [
        "fit",
        f"--config={config}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--report.enabled=false",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=6",
    ]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*training ended after")
        cli = LightningRegCLI(args=argv)
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, (ScheduledLR, PerformanceScheduler))]
    lr = cli.trainer.optimizers[0].param_groups[0]["lr"]
    if name == "warmup_plateau":
        assert isinstance(cb, PerformanceScheduler)
        assert cb.schedule == LinearWarmup(40, 0.05, start_lr=0.001) and cb.steps == [6]
        assert lr == cb.schedule(6)
    else:
        schedule = cb.as_schedule()
        assert isinstance(schedule, Chain) and cb.steps == [6]
        first = (LinearWarmup(30, 0.1, 0.001), OneCycle(200, 0.1))
        assert schedule.schedules[0] in first
        assert lr == schedule(6)


def test_max_time_before_the_end_of_the_cycle_warns(tmp_path: Path) -> None:
    class Slow(DigitsClassifier):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            time.sleep(0.25)
            return super().training_step(batch, batch_idx)

    trainer = make_trainer(
        tmp_path,
        callbacks=[OneCycleScheduler(0.1)],
        max_epochs=100,
        limit_train_batches=4,
        max_time={"seconds": 1},
    )
    with pytest.warns(UserWarning, match=r"ended after \d+ of the 400 optimizer steps") as record:
        trainer.fit(Slow(), digits_loader(128, 32))
    assert trainer.global_step < 400
    (message,) = [str(w.message) for w in record if "ended after" in str(w.message)]
    assert f"ended after {trainer.global_step} of the 400" in message


def test_resumed_scheduled_lr_with_a_different_schedule_warns_and_uses_it(tmp_path: Path) -> None:
    _, _, ckpt = checkpointed_fit(tmp_path, ScheduledLR(ExponentialDecay(0.1, 4)), max_steps=4)
    rec = Recorder()
    trainer = make_trainer(
        tmp_path, callbacks=[ScheduledLR(ExponentialDecay(0.2, 4)), rec], max_steps=8
    )
    with pytest.warns(
        UserWarning, match=r"differs from the one in the checkpoint .*'lr0': 0\.1.*'lr0': 0\.2"
    ):
        trainer.fit(DigitsClassifier(), digits_loader(256, 32), ckpt_path=ckpt)
    assert rec.lrs == pytest.approx([0.2 * 0.1 ** (k / 4) for k in range(4, 8)], rel=1e-12)


def test_fast_dev_run_from_the_cli(tmp_path: Path) -> None:
    from lightning_reg.demos.cli import LightningRegCLI

    cli = LightningRegCLI(
        args=[
            "fit",
            "--trainer.fast_dev_run=true",
            "--trainer.enable_progress_bar=false",
            "--report.enabled=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    # One step on a 3-step cycle: the LR of the next step is the peak (before: an error naming
    # `total_steps`, which the user never passed).
    assert cli.trainer.global_step == 1
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == OneCycle(3, 0.1)(1)


def test_plateau_hand_over_not_reached_warns(tmp_path: Path) -> None:
    cb = PerformanceScheduler(schedule=LinearWarmup(100, 0.05))
    trainer = make_trainer(tmp_path, callbacks=[cb], max_epochs=1, limit_train_batches=4)
    with pytest.warns(UserWarning, match="before the hand-over to plateau scheduling at step 100"):
        trainer.fit(FlatValLoss(), digits_loader(256, 32), digits_loader(32, 32))
    assert trainer.optimizers[0].param_groups[0]["lr"] == LinearWarmup(100, 0.05)(4)


# -- logging: the logged trace is the one the optimizer used ------------------------------------


class GroupRecorder(Callback):
    """Every param group's LR and momentum of every optimizer step, as Python floats."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []
        self.moms: list[list[float]] = []

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # A range test (max_lr="auto") sweeps real optimizer steps in an earlier callback's
        # on_train_start; the trace to compare starts with training.
        self.lrs.clear()
        self.moms.clear()

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        groups = optimizer.param_groups
        self.lrs.append([float(g["lr"]) for g in groups])
        self.moms.append([float(g["betas"][0] if "betas" in g else g["momentum"]) for g in groups])


def assert_logged_trace_is_the_used_one(rows: list[dict[str, str]], rec: GroupRecorder) -> None:
    """With one optimizer and `log_every_n_steps=1`: every batch logs, once, the LR and momentum
    of each param group that its optimizer step used (Lightning's names)."""
    num_groups = len(rec.lrs[0])
    lr_keys = sorted({k for r in rows for k, v in r.items() if k.startswith("lr-") and v})
    names = [k for k in lr_keys if not k.endswith("-momentum")]
    assert len(names) == num_groups, lr_keys
    for j, name in enumerate(names):
        assert [int(r["step"]) for r in rows if r.get(name)] == list(range(len(rec.lrs)))
        assert series(rows, name) == {k: lrs[j] for k, lrs in enumerate(rec.lrs)}, name
        assert series(rows, f"{name}-momentum") == {k: m[j] for k, m in enumerate(rec.moms)}


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "examples" / "configs").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.stem)
def test_logged_trace_is_what_the_optimizer_used_for_every_shipped_config(
    tmp_path: Path, config: Path
) -> None:
    from lightning_reg.demos.cli import LightningRegCLI

    args = [
        f"--config={config}",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.max_epochs=3",
        "--trainer.limit_train_batches=16",  # 48 steps: past warmup_plateau's 40-step warm-up
        "--trainer.limit_val_batches=2",
        "--trainer.log_every_n_steps=1",
    ]
    if config.stem == "fashion_mnist":  # its data is a download: its schedule on the digits
        args.append("--data=lightning_reg.demos.DigitsDataModule")
    cli = LightningRegCLI(args=args, run=False)
    rec = GroupRecorder()
    cli.trainer.callbacks.append(rec)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*training ended after")
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert len(rec.lrs) == cli.trainer.global_step > 30
    assert_logged_trace_is_the_used_one(read_csv(cli.trainer.logger), rec)  # type: ignore[arg-type]


def test_warm_up_hand_over_is_logged_as_the_optimizer_used_it(tmp_path: Path) -> None:
    # Before, PerformanceScheduler(schedule=LinearWarmup(...)) logged no LR during the warm-up.
    logger = CSVLogger(tmp_path, name="csv")
    cb = PerformanceScheduler(schedule=LinearWarmup(8, 0.08, start_lr=0.008), patience=1)
    rec = GroupRecorder()
    trainer = make_trainer(
        tmp_path, callbacks=[cb, rec], max_epochs=4, logger=logger, log_every_n_steps=1
    )
    trainer.fit(FlatValLoss(), digits_loader(256, 32), digits_loader(32, 32))
    assert_logged_trace_is_the_used_one(read_csv(logger), rec)
    warm = LinearWarmup(8, 0.08, start_lr=0.008)
    lrs = [lr for (lr,) in rec.lrs]
    # Evaluations at the end of each epoch (flat loss, patience 1): the one at step 8 sets the
    # best, each later one halves the LR.
    expected = [warm(k) for k in range(8)] + [0.08] * 8 + [0.04] * 8 + [0.02] * 8
    assert lrs == pytest.approx(expected, rel=1e-12)


# -- composing with StochasticWeightAveraging --------------------------------------------------


def swa_fit(tmp_path: Path, cb: LRCallback) -> Recorder:
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    swa = StochasticWeightAveraging(swa_lrs=0.02, swa_epoch_start=3, annealing_epochs=1)
    rec, _ = fit(tmp_path, [cb, swa], max_epochs=5)  # 8 steps per epoch; SWA from epoch 2
    return rec


def test_one_cycle_then_swa_hands_the_lr_over_at_swa_epoch_start(tmp_path: Path) -> None:
    # The cycle is sized to the two epochs before `swa_epoch_start`; SWALR starts from the
    # cycle's final LR (its first epoch), then holds swa_lrs. Before, our callback kept writing
    # after every step and SWALR's LR was overwritten at once.
    cb = OneCycleScheduler(max_lr=0.1)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*OneCycleScheduler")
        rec = swa_fit(tmp_path, cb)
    cycle = OneCycle(16, 0.1)
    assert cb.config["total_steps"] == [16] and cb.taken_over == "SWALR"
    assert rec.lrs[:16] == pytest.approx([cycle(k) for k in range(16)], rel=1e-12)
    assert rec.lrs[16:24] == pytest.approx([cycle(16)] * 8, rel=1e-12)
    assert rec.lrs[24:] == pytest.approx([0.02] * 16, rel=1e-12)


def test_swa_cutting_a_schedule_short_says_how_far_it_got(tmp_path: Path) -> None:
    # The step is a number, not a list of one ("from optimizer step [16] on" before).
    match = r"SWALR.*from optimizer step 16 on.*optimizer 0 at step 16 of 32.*swa_epoch_start"
    with pytest.warns(UserWarning, match=match):
        rec = swa_fit(tmp_path, ScheduledLR(CosineDecay(32, 0.1)))
    assert rec.lrs[24:] == pytest.approx([0.02] * 16, rel=1e-12)


def test_swa_from_the_first_epoch_leaves_no_cycle_and_says_so_by_number(tmp_path: Path) -> None:
    # Before, a plan of 0 steps was called "an infinite or unknown number of training steps".
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    swa = StochasticWeightAveraging(swa_lrs=0.02, swa_epoch_start=1)
    with pytest.raises(ValueError, match=r"\(epoch 0\) = 0\), which is too short") as info:
        fit(tmp_path, [OneCycleScheduler(max_lr=0.1), swa], max_epochs=3)
    assert "infinite" not in str(info.value)


# -- param groups at fixed ratios; tensor learning rates ----------------------------------------


class ScaledGroups(DigitsClassifier):
    def __init__(self, scales: tuple[Any, ...] = (1.0, 0.1)) -> None:
        super().__init__()
        self.scales = scales

    def configure_optimizers(self) -> Any:
        layers = (self.net[0], self.net[2])
        return torch.optim.SGD(
            [
                {"params": layer.parameters(), "lr": 0.1 * scale, "lr_scale": scale}
                for layer, scale in zip(layers, self.scales, strict=True)
            ],
            momentum=0.9,
        )


def test_one_cycle_drives_groups_at_fixed_ratios_with_lr_scale(tmp_path: Path) -> None:
    # Discriminative fine-tuning: one 1cycle, each group at max_lr * lr_scale (timm's way).
    rec = GroupRecorder()
    trainer = make_trainer(
        tmp_path, callbacks=[OneCycleScheduler(0.1, total_steps=8), rec], max_steps=8
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*erasing their ratio")
        trainer.fit(ScaledGroups(), digits_loader(256, 32))
    cycle = OneCycle(8, 0.1)
    assert rec.lrs == [[cycle(k), cycle(k) * 0.1] for k in range(8)]
    assert rec.moms == [[cycle.momentum(k)] * 2 for k in range(8)]
    trainer = make_trainer(tmp_path, callbacks=[OneCycleScheduler(0.1, total_steps=8)], max_steps=8)
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['lr_scale'\]. must be .* > 0"):
        trainer.fit(ScaledGroups((1.0, -0.5)), digits_loader(64, 32))


def test_a_run_stopped_early_names_the_lr_and_end_value_of_a_scaled_group_alike(
    tmp_path: Path,
) -> None:
    # Before, the warning set group 0's LR (times its lr_scale) against the schedule's end value
    # without it: "its learning rate is 0.008, not the end value 1e-05" for a cycle at 10%.
    cycle = OneCycle(16, 0.1)
    trainer = make_trainer(
        tmp_path, callbacks=[OneCycleScheduler(0.1, total_steps=16)], max_steps=8
    )
    with pytest.warns(UserWarning, match="ended after 8 of the 16") as record:
        trainer.fit(ScaledGroups((0.1, 1.0)), digits_loader(256, 32))
    message = next(str(w.message) for w in record if "ended after" in str(w.message))
    assert f"is {cycle(8) * 0.1:.4g}, not the end value {cycle(16) * 0.1:.4g}." in message


class TensorLR(DigitsClassifier):
    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=torch.tensor(0.1), momentum=0.9)


def test_a_tensor_learning_rate_stays_a_tensor(tmp_path: Path) -> None:
    # torch's schedulers fill a tensor LR in place; a float would change the optimizer's path.
    rec = GroupRecorder()
    trainer = make_trainer(
        tmp_path, callbacks=[ScheduledLR(ExponentialDecay(0.1, 4)), rec], max_steps=4
    )
    trainer.fit(TensorLR(), digits_loader(128, 32))
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and float(lr) == pytest.approx(0.1 * 0.1, rel=1e-6)
    assert [lrs[0] for lrs in rec.lrs] == pytest.approx([0.1 * 0.1 ** (k / 4) for k in range(4)])


class TiedTensorLR(DigitsClassifier):
    """Two param groups at ``lr_scale`` 1 and 0.1 that share torch's one ``lr`` tensor: torch
    gives every group without an ``lr`` of its own the optimizer's default, the same object."""

    def configure_optimizers(self) -> Any:
        groups = [
            {"params": self.net[0].parameters(), "lr_scale": 1.0},
            {"params": self.net[2].parameters(), "lr_scale": 0.1},
        ]
        return torch.optim.SGD(groups, lr=torch.tensor(0.1), momentum=0.9)


def test_groups_sharing_one_tensor_lr_each_get_their_own_value(tmp_path: Path) -> None:
    # Filling the shared tensor in place gave both groups the last group's LR (here the 0.1x
    # one), silently; each group now holds its own tensor, still a tensor.
    rec = GroupRecorder()
    trainer = make_trainer(
        tmp_path, callbacks=[OneCycleScheduler(0.1, total_steps=8), rec], max_steps=8
    )
    trainer.fit(TiedTensorLR(), digits_loader(256, 32))
    cycle = OneCycle(8, 0.1)
    assert rec.lrs == [pytest.approx([cycle(k), cycle(k) * 0.1], rel=1e-6) for k in range(8)]
    assert all(isinstance(g["lr"], torch.Tensor) for g in trainer.optimizers[0].param_groups)


class TiedTensorMomentum(DigitsClassifier):
    """Two param groups sharing torch's one momentum tensor (Adam's ``betas``, SGD's
    ``momentum``): every group without its own takes the optimizer's default, the same object."""

    def configure_optimizers(self) -> Any:
        groups = [{"params": self.net[0].parameters()}, {"params": self.net[2].parameters()}]
        if self.optimizer_name == "adam":
            betas = (torch.tensor(0.9), torch.tensor(0.999))
            return torch.optim.Adam(groups, lr=0.01, betas=betas, foreach=False)
        return torch.optim.SGD(groups, lr=0.05, momentum=torch.tensor(0.9), foreach=False)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_groups_sharing_one_tensor_momentum_each_get_their_own_value(
    tmp_path: Path, optimizer: str
) -> None:
    # The first group's cycled momentum was filled into the shared tensor, so the second group
    # (whose schedule drives no momentum) and the optimizer's default (which a group added later,
    # as BackboneFinetuning adds one, takes) followed it, silently.
    rec = GroupRecorder()
    cb = ScheduledLR([OneCycle(8, 0.05), Constant(0.01)])
    trainer = make_trainer(tmp_path, callbacks=[cb, rec], max_steps=8)
    trainer.fit(TiedTensorMomentum(optimizer), digits_loader(256, 32))
    cycle = OneCycle(8, 0.05)
    assert rec.moms == [pytest.approx([cycle.momentum(k), 0.9]) for k in range(8)]
    opt = trainer.optimizers[0]
    default = opt.defaults["betas"][0] if optimizer == "adam" else opt.defaults["momentum"]
    assert float(default) == pytest.approx(0.9)


class FailsAtBatch2(DigitsClassifier):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if batch_idx == 2:
            raise RuntimeError("boom at batch 2")
        return super().training_step(batch, batch_idx)


def test_a_failed_fit_leaves_no_step_hook_on_the_optimizer(tmp_path: Path) -> None:
    cb = ScheduledLR(ExponentialDecay(0.1, 10, 0.5))
    trainer = make_trainer(tmp_path, callbacks=[cb], max_steps=8)
    with pytest.raises(RuntimeError, match="boom at batch 2"):
        trainer.fit(FailsAtBatch2(), digits_loader(256, 32))
    assert cb.steps == [2]
    trainer.optimizers[0].step()  # a step after the fit is not counted: the hook is gone
    assert cb.steps == [2]


# -- composing with BackboneFinetuning ----------------------------------------------------------


class Backboned(DigitsClassifier):
    """Its first layer is the ``backbone`` that BackboneFinetuning freezes, then unfreezes as a
    new param group of the optimizer."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = self.net[0]

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum)


@pytest.mark.parametrize(
    ("make", "schedule"),
    [
        (lambda: OneCycleScheduler(max_lr=0.1), OneCycle(32, 0.1)),
        (lambda: ScheduledLR(ExponentialDecay(0.1, 8, 0.5)), ExponentialDecay(0.1, 8, 0.5)),
    ],
    ids=["one_cycle", "scheduled"],
)
def test_a_param_group_added_during_fit_is_left_to_the_callback_that_added_it(
    tmp_path: Path, make: Any, schedule: Any
) -> None:
    # BackboneFinetuning adds the backbone as a new param group at epoch 1 and sets its LR at the
    # start of each epoch. The schedule keeps driving the group planned at fit start, and leaves
    # the new one alone; a fit resumed after the unfreeze does the same. Before, the schedule
    # failed with an IndexError at the first step after the unfreeze.
    from lightning.pytorch.callbacks import BackboneFinetuning, ModelCheckpoint

    def run(path: Path, ckpt: Path | None = None) -> GroupRecorder:
        torch.manual_seed(0)
        rec = GroupRecorder()
        every_epoch = ModelCheckpoint(dirpath=path, save_top_k=-1, every_n_epochs=1)
        unfreeze = BackboneFinetuning(unfreeze_backbone_at_epoch=1)
        callbacks = [make(), unfreeze, rec, every_epoch]
        trainer = make_trainer(path, callbacks=callbacks, max_epochs=4, enable_checkpointing=True)
        with pytest.warns(UserWarning, match=r"1 param group\(s\) were added to SGD during fit"):
            trainer.fit(Backboned(), digits_loader(256, 32), ckpt_path=ckpt)
        return rec

    full = run(tmp_path / "full")
    assert [lrs[0] for lrs in full.lrs] == pytest.approx(
        [schedule(k) for k in range(32)], rel=1e-12
    )
    assert [len(lrs) for lrs in full.lrs] == [1] * 8 + [2] * 24
    for epoch in (1, 2, 3):  # only BackboneFinetuning writes it, at the start of each epoch
        assert len({lrs[1] for lrs in full.lrs[8 * epoch : 8 * (epoch + 1)]}) == 1
    (after_unfreeze,) = (tmp_path / "full").glob("epoch=1-*.ckpt")
    resumed = run(tmp_path / "resumed", after_unfreeze)
    assert resumed.lrs == full.lrs[16:]
