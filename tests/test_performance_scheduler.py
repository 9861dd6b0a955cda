"""PerformanceScheduler: bookkeeping against a hand-computed sequence, then on a real Trainer."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_reg.callbacks import PerformanceScheduler
from tests.helpers import DigitsClassifier, digits_loader, make_trainer


def decisions(sched: PerformanceScheduler, values: list[float]) -> list[bool]:
    return [sched.step(v) for v in values]


def test_plateau_rules() -> None:
    # patience 2: the 2nd consecutive evaluation without improvement reduces.
    sched = PerformanceScheduler(patience=2, min_delta=0.0)
    assert decisions(sched, [1.0, 0.9, 0.95, 0.95, 0.8, 0.9, 0.9, 0.9]) == [
        False,
        False,
        False,
        True,
        False,
        False,
        True,
        False,
    ]
    # min_delta: an improvement smaller than min_delta does not count.
    sched = PerformanceScheduler(patience=1, min_delta=0.1)
    assert decisions(sched, [1.0, 0.95, 0.85]) == [False, True, False]
    # cooldown as Keras: counted down before the check, so cooldown=3 leaves 2 evaluations out.
    sched = PerformanceScheduler(patience=1, cooldown=3, min_delta=0.0)
    assert decisions(sched, [1.0] * 8) == [False, True, False, False, True, False, False, True]
    # mode="max"
    sched = PerformanceScheduler(mode="max", patience=1, min_delta=0.0)
    assert decisions(sched, [0.5, 0.6, 0.55]) == [False, False, True]


def test_nan_and_inf_never_improve() -> None:
    sched = PerformanceScheduler(patience=2, min_delta=0.0)
    assert decisions(sched, [1.0, math.nan, math.inf]) == [False, False, True]
    assert sched.best == 1.0


class ScriptedLoss(DigitsClassifier):
    """Logs a scripted `val_loss` at each validation run (the model still trains for real)."""

    def __init__(self, script: list[float], key: str = "val_loss") -> None:
        super().__init__(lr=0.08)
        self.script = script
        self.key = key
        self.lr_after_eval: list[float] = []

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log(self.key, torch.tensor(self.script[self.current_epoch]))

    def on_train_epoch_end(self) -> None:
        self.lr_after_eval.append(self.optimizers().param_groups[0]["lr"])


def run(tmp_path: Path, script: list[float], **kwargs: Any) -> list[float]:
    model = ScriptedLoss(script)
    trainer = make_trainer(
        tmp_path,
        callbacks=[PerformanceScheduler(**kwargs)],
        max_epochs=len(script),
        limit_train_batches=2,
        limit_val_batches=1,
    )
    trainer.fit(model, digits_loader(64, 32), digits_loader(32, 32))
    return model.lr_after_eval


def test_reduces_at_the_right_evaluations_with_cooldown_and_min_lr(tmp_path: Path) -> None:
    # Validation runs before on_train_epoch_end, so entry e is the LR after evaluation e.
    lrs = run(
        tmp_path,
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5],
        patience=1,
        cooldown=1,
        factor=0.5,
        min_lr=0.015,
        min_delta=0.0,
    )
    # Keras' cooldown=1 leaves no evaluation out (its counter is back at 0 when checked).
    assert lrs == pytest.approx([0.08, 0.04, 0.02, 0.015, 0.015, 0.015, 0.015, 0.015])


def test_missing_monitor_lists_available_keys(tmp_path: Path) -> None:
    with pytest.raises(
        MisconfigurationException, match=r"'val_acc'.*available: train_loss, val_loss"
    ):
        run(tmp_path, [1.0, 1.0], monitor="val_acc")
    with pytest.warns(UserWarning, match="Skipping this check"):
        lrs = run(tmp_path, [1.0, 1.0, 1.0], monitor="val_acc", strict=False, patience=0)
    assert lrs == [0.08, 0.08, 0.08]


def test_check_on_train_epoch_end(tmp_path: Path) -> None:
    model = DigitsClassifier(lr=0.08)
    # A huge min_delta: the first epoch sets the best, the next two are not improvements.
    cb = PerformanceScheduler(
        monitor="train_loss", check_on="train_epoch_end", patience=1, min_delta=1e6
    )
    trainer = make_trainer(tmp_path, callbacks=[cb], max_epochs=3, limit_train_batches=2)
    trainer.fit(model, digits_loader(64, 32))
    assert cb.num_reductions == 2
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.08 / 4)


def test_state_survives_a_checkpoint(tmp_path: Path) -> None:
    model = ScriptedLoss([1.0, 1.0, 1.0, 1.0])
    cb = PerformanceScheduler(patience=3, min_delta=0.0)
    trainer = make_trainer(
        tmp_path, callbacks=[cb], max_epochs=2, limit_train_batches=2, limit_val_batches=1
    )
    trainer.fit(model, digits_loader(64, 32), digits_loader(32, 32))
    assert (cb.best, cb.num_bad) == (1.0, 1)
    trainer.save_checkpoint(tmp_path / "a.ckpt")

    resumed = PerformanceScheduler(patience=3, min_delta=0.0)
    model = ScriptedLoss([1.0, 1.0, 1.0, 1.0])
    trainer = make_trainer(
        tmp_path, callbacks=[resumed], max_epochs=4, limit_train_batches=2, limit_val_batches=1
    )
    trainer.fit(model, digits_loader(64, 32), digits_loader(32, 32), ckpt_path=tmp_path / "a.ckpt")
    # Two more bad evaluations make three in a row: exactly one reduction, as without the break.
    assert resumed.num_reductions == 1
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.04)


@pytest.mark.parametrize(
    ("kwargs", "match", "error"),
    [
        (dict(factor=1.0), "factor", ValueError),
        (dict(factor=0.0), "factor", ValueError),
        (dict(factor=math.nan), "factor", ValueError),
        (dict(patience=-1), "patience", ValueError),
        (dict(patience=1.5), "patience", TypeError),
        (dict(mode="lowest"), "mode", ValueError),
        (dict(min_delta=-0.1), "min_delta", ValueError),
        (dict(cooldown=-2), "cooldown", ValueError),
        (dict(min_lr=-1e-3), "min_lr", ValueError),
        (dict(monitor=""), "monitor", TypeError),
        (dict(check_on="batch"), "check_on", ValueError),
    ],
)
def test_rejects_bad_hyperparameters(
    kwargs: dict[str, Any], match: str, error: type[Exception]
) -> None:
    with pytest.raises(error, match=match):
        PerformanceScheduler(**kwargs)
