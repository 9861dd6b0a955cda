"""PerformanceScheduler: bookkeeping against a hand-computed sequence, then on a real Trainer."""

from __future__ import annotations

import copy
import math
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_reg.callbacks import PerformanceScheduler
from lightning_reg.schedules import LinearWarmup
from tests.helpers import DigitsClassifier, digits_loader, fit, make_trainer


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
    fit(
        tmp_path,
        model,
        digits_loader(64, 32),
        digits_loader(32, 32),
        callbacks=[PerformanceScheduler(**kwargs)],
        max_epochs=len(script),
        limit_train_batches=2,
        limit_val_batches=1,
    )
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


class LogsInEpochEndHook(DigitsClassifier):
    def on_train_epoch_end(self) -> None:
        self.log("epoch_metric", 1.0)


def test_a_metric_logged_in_the_modules_train_epoch_end_hook_is_named_as_too_late(
    tmp_path: Path,
) -> None:
    # Lightning calls callbacks' `on_train_epoch_end` before the module's (only EarlyStopping
    # and ModelCheckpoint after it): the metric is missing at the first check, and stale after.
    # The message said only "Log it with `self.log(...)`", which the module did.
    cb = PerformanceScheduler(monitor="epoch_metric", check_on="train_epoch_end")
    trainer = make_trainer(tmp_path, callbacks=[cb], max_epochs=2, limit_train_batches=2)
    with pytest.raises(MisconfigurationException, match=r"before the LightningModule's"):
        trainer.fit(LogsInEpochEndHook(), digits_loader(64, 32))


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


def test_a_resume_watching_another_metric_starts_the_plateau_count_afresh(tmp_path: Path) -> None:
    # The checkpoint's best is a val_loss (1.0, mode "min"); the resumed fit watches val_acc in
    # mode "max". Compared with that best, the rising accuracies 0.5, 0.6 were two bad
    # evaluations and halved the LR twice, silently.
    cb = PerformanceScheduler(patience=1, min_delta=0.0)
    trainer = make_trainer(
        tmp_path, callbacks=[cb], max_epochs=2, limit_train_batches=2, limit_val_batches=1
    )
    trainer.fit(ScriptedLoss([1.0, 1.0]), digits_loader(64, 32), digits_loader(32, 32))
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    resumed = PerformanceScheduler(monitor="val_acc", mode="max", patience=1, min_delta=0.0)
    model = ScriptedLoss([0.0, 0.0, 0.5, 0.6], key="val_acc")
    trainer = make_trainer(
        tmp_path, callbacks=[resumed], max_epochs=4, limit_train_batches=2, limit_val_batches=1
    )
    with pytest.warns(UserWarning, match=r"is of \{'monitor': 'val_loss', 'mode': 'min'\}"):
        trainer.fit(
            model, digits_loader(64, 32), digits_loader(32, 32), ckpt_path=tmp_path / "a.ckpt"
        )
    assert (resumed.num_reductions, resumed.best) == (1, pytest.approx(0.6))
    assert model.lr_after_eval == [0.04, 0.04]


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
        (dict(strict="no"), "strict", TypeError),  # was bool("no"): strict, silently
        (dict(min_lr="0.1"), r"`min_lr`.*'0\.1'", TypeError),  # was split into '0', '.', '1'
        (dict(min_lr=[]), "min_lr", ValueError),  # was refused only at fit time
    ],
)
def test_rejects_bad_hyperparameters(
    kwargs: dict[str, Any], match: str, error: type[Exception]
) -> None:
    with pytest.raises(error, match=match):
        PerformanceScheduler(**kwargs)


def keras_reduce_lr_on_plateau(
    values: list[float], patience: int, cooldown: int, min_delta: float
) -> list[bool]:
    """Keras' ReduceLROnPlateau.on_epoch_end (mode "min", min_lr 0), transcribed: which epochs
    reduce the LR."""
    best, wait, cooldown_counter, out = math.inf, 0, 0, []
    for current in values:
        reduced = False
        if cooldown_counter > 0:
            cooldown_counter -= 1
            wait = 0
        if current < best - min_delta:
            best, wait = current, 0
        elif not cooldown_counter > 0:
            wait += 1
            if wait >= patience:
                reduced, cooldown_counter, wait = True, cooldown, 0
        out.append(reduced)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_patience_and_cooldown_follow_keras(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    values = [round(float(v), 2) for v in torch.rand(40, generator=gen)]
    for patience, cooldown in [(1, 0), (1, 1), (1, 3), (2, 2), (3, 1), (4, 5)]:
        sched = PerformanceScheduler(patience=patience, cooldown=cooldown, min_delta=0.05)
        expected = keras_reduce_lr_on_plateau(values, patience, cooldown, 0.05)
        assert decisions(sched, values) == expected, (patience, cooldown)


def torch_reduces(mode: str, best: float, value: float) -> bool:
    """Whether torch's ReduceLROnPlateau (patience 0, rel 10 %) reduces on ``value`` after
    ``best``: its public ``step`` is the reference."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt,
        mode=mode,
        patience=0,
        threshold=0.1,
        threshold_mode="rel",  # type: ignore[arg-type]
    )
    theirs.step(best)
    theirs.step(value)
    return opt.param_groups[0]["lr"] < 0.1


def test_relative_threshold_is_torchs() -> None:
    values = [10.0, 9.5, 9.0, 8.5, 11.0, -1.0, -1.05, -0.95]
    for mode in ("min", "max"):
        for best in values:
            for value in values:
                ours = PerformanceScheduler(
                    mode=mode,  # type: ignore[arg-type]
                    patience=1,
                    min_delta=0.1,
                    threshold_mode="rel",
                )
                assert decisions(ours, [best, value])[1] == torch_reduces(mode, best, value)
    # 9.5 is not 10 % better than 10 (relative), though 0.5 better (absolute).
    abs_mode = PerformanceScheduler(patience=1, min_delta=0.1)
    assert decisions(abs_mode, [10.0, 9.5, 8.5]) == [False, False, False]


def test_relative_threshold_on_a_trainer(tmp_path: Path) -> None:
    script = [10.0, 9.5, 8.5]
    assert run(tmp_path, script, patience=1, min_delta=0.1, threshold_mode="rel") == (
        pytest.approx([0.08, 0.04, 0.04])
    )
    assert run(tmp_path, script, patience=1, min_delta=0.1) == pytest.approx([0.08] * 3)


def test_a_reduction_is_announced_on_rank_zero(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="lightning.pytorch.utilities.rank_zero"):
        run(tmp_path, [1.0, 1.0, 1.0], patience=1, min_delta=0.0, min_lr=0.03)
    messages = [r.getMessage() for r in caplog.records if "PerformanceScheduler" in r.getMessage()]
    assert len(messages) == 2
    assert "'val_loss' has not improved on 1 for 1 evaluation(s)" in messages[0]
    assert "0.08 -> 0.04" in messages[0] and "0.04 -> 0.03" in messages[1]


def test_one_instance_reused_across_fits_starts_each_fit_afresh(tmp_path: Path) -> None:
    # Before, fold 2 inherited `best` and the bad count: it halved the LR after its first epoch.
    cb = PerformanceScheduler(patience=2, min_delta=0.0)
    lrs = []
    for fold in range(3):
        model = ScriptedLoss([1.0, 1.0, 0.5])
        trainer = make_trainer(
            tmp_path / str(fold),
            callbacks=[cb],
            max_epochs=3,
            limit_train_batches=2,
            limit_val_batches=1,
        )
        trainer.fit(model, digits_loader(64, 32), digits_loader(32, 32))
        lrs.append(model.lr_after_eval)
    assert lrs == [[0.08, 0.08, 0.08]] * 3
    assert cb.num_reductions == 0


def test_validate_after_fit_leaves_the_learning_rate_and_the_plateau_state_alone(
    tmp_path: Path,
) -> None:
    # Only the fit's evaluations count: a `Trainer.validate` after fit whose loss is no better
    # would otherwise be a bad evaluation, each one reducing the LR at patience 1.
    model = ScriptedLoss([1.0, 1.0, 1.0])
    cb = PerformanceScheduler(patience=1, min_delta=0.0)
    trainer = make_trainer(
        tmp_path, callbacks=[cb], max_epochs=2, limit_train_batches=2, limit_val_batches=1
    )
    trainer.fit(model, digits_loader(64, 32), digits_loader(32, 32))
    assert model.lr_after_eval == pytest.approx([0.08, 0.04])
    state = copy.deepcopy(cb.state_dict())
    for _ in range(2):
        trainer.validate(model, digits_loader(32, 32), verbose=False)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.04)
    assert cb.state_dict() == state


@pytest.mark.parametrize("case", ["limit_val_batches=0", "no val loader", "no validation_step"])
def test_refuses_a_fit_where_it_could_never_act(tmp_path: Path, case: str) -> None:
    # Before, it silently never acted.
    model = DigitsClassifier()
    kwargs: dict[str, Any] = {"max_epochs": 1, "limit_train_batches": 2}
    val = digits_loader(32, 32)
    if case == "limit_val_batches=0":
        kwargs["limit_val_batches"] = 0
    elif case == "no val loader":
        val = None
    else:
        model.validation_step = None  # type: ignore[assignment,method-assign]
    trainer = make_trainer(tmp_path, callbacks=[PerformanceScheduler()], **kwargs)
    with pytest.raises(MisconfigurationException, match="would never change the learning rate"):
        trainer.fit(model, digits_loader(64, 32), val)


class TinyLR(ScriptedLoss):
    """``ScriptedLoss`` with an LR of 2e-9 (a float, or a tensor with ``tensor=True``)."""

    def __init__(self, script: list[float], tensor: bool = False) -> None:
        super().__init__(script)
        self.tensor = tensor

    def configure_optimizers(self) -> Any:
        lr = torch.tensor(2e-9) if self.tensor else 2e-9
        return torch.optim.SGD(self.parameters(), lr=lr, momentum=0.9)

    def on_train_epoch_end(self) -> None:
        self.lr_after_eval.append(float(self.optimizers().param_groups[0]["lr"]))


@pytest.mark.parametrize("tensor", [False, True])
def test_any_lr_above_min_lr_is_reduced_as_keras_and_a_tensor_lr_stays_one(
    tmp_path: Path, tensor: bool
) -> None:
    # torch's ReduceLROnPlateau skips a reduction smaller than eps=1e-8, so 2e-9 would stay;
    # Keras reduces any LR above min_lr. A tensor LR is filled in place, as torch's schedulers do.
    model = TinyLR([1.0, 1.0, 1.0], tensor=tensor)
    trainer = make_trainer(
        tmp_path,
        callbacks=[PerformanceScheduler(patience=1, min_delta=0.0, min_lr=6e-10)],
        max_epochs=3,
        limit_train_batches=2,
        limit_val_batches=1,
    )
    trainer.fit(model, digits_loader(64, 32), digits_loader(32, 32))
    assert model.lr_after_eval == pytest.approx([2e-9, 1e-9, 6e-10], rel=1e-6)
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) == tensor


class TiedTensorLR(ScriptedLoss):
    """``ScriptedLoss`` with two param groups sharing torch's one ``lr`` tensor (the default)."""

    def configure_optimizers(self) -> Any:
        groups = [{"params": self.net[0].parameters()}, {"params": self.net[2].parameters()}]
        return torch.optim.SGD(groups, lr=torch.tensor(0.08), momentum=0.9)

    def on_train_epoch_end(self) -> None:
        self.lr_after_eval.append([float(g["lr"]) for g in self.optimizers().param_groups])


def test_groups_sharing_one_tensor_lr_are_reduced_once(tmp_path: Path) -> None:
    # Each group's LR was multiplied in place in turn, so the shared tensor got factor ** 2
    # (0.08 -> 0.02; torch's ReduceLROnPlateau does the same). Each group now has its own.
    model = TiedTensorLR([1.0, 1.0, 1.0])
    trainer = make_trainer(
        tmp_path,
        callbacks=[PerformanceScheduler(patience=1, min_delta=0.0)],
        max_epochs=3,
        limit_train_batches=2,
        limit_val_batches=1,
    )
    trainer.fit(model, digits_loader(64, 32), digits_loader(32, 32))
    expected = [[0.08, 0.08], [0.04, 0.04], [0.02, 0.02]]
    assert model.lr_after_eval == [pytest.approx(lrs, rel=1e-6) for lrs in expected]
    assert all(isinstance(g["lr"], torch.Tensor) for g in trainer.optimizers[0].param_groups)


def test_a_reduction_at_the_hand_over_survives_a_resume(tmp_path: Path) -> None:
    # A warm-up of 4 steps (2 epochs); the evaluation at step 4 is the first one counted and, NaN,
    # reduces the LR there. A resume from that checkpoint wrote the warm-up's last LR (0.08) over
    # the reduced one the optimizer state restored, unlike the uninterrupted run.
    script = [1.0, math.nan, 1.0, 1.0]

    def plateau() -> PerformanceScheduler:
        return PerformanceScheduler(schedule=LinearWarmup(4, 0.08), patience=1, min_delta=0.0)

    whole = run(tmp_path, script, schedule=LinearWarmup(4, 0.08), patience=1, min_delta=0.0)
    trainer = make_trainer(
        tmp_path, callbacks=[plateau()], max_epochs=2, limit_train_batches=2, limit_val_batches=1
    )
    trainer.fit(ScriptedLoss(script), digits_loader(64, 32), digits_loader(32, 32))
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    model = ScriptedLoss(script)
    trainer = make_trainer(
        tmp_path, callbacks=[plateau()], max_epochs=4, limit_train_batches=2, limit_val_batches=1
    )
    trainer.fit(model, digits_loader(64, 32), digits_loader(32, 32), ckpt_path=tmp_path / "a.ckpt")
    assert whole == pytest.approx([0.04, 0.04, 0.04, 0.02])
    assert model.lr_after_eval == pytest.approx(whole[2:])


@pytest.mark.parametrize(
    ("saved", "old"),
    [(LinearWarmup(8, 0.08), False), (None, False), (LinearWarmup(8, 0.08), True)],
    ids=["changed", "added", "old checkpoint"],
)
def test_a_resume_with_another_warm_up_names_it_and_follows_the_one_given_now(
    tmp_path: Path, saved: LinearWarmup | None, old: bool
) -> None:
    # The checkpoint was saved 4 steps into a warm-up of 8 steps to 0.08 (or with no warm-up);
    # the resumed fit is given a warm-up to 0.16. Before, its LR followed the new warm-up (or a
    # warm-up appeared 4 steps into plateau scheduling) without a word.
    first = PerformanceScheduler(schedule=saved, patience=9, min_delta=0.0)
    trainer = make_trainer(
        tmp_path, callbacks=[first], max_epochs=2, limit_train_batches=2, limit_val_batches=1
    )
    trainer.fit(ScriptedLoss([1.0] * 4), digits_loader(64, 32), digits_loader(32, 32))
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    if old:  # saved before PerformanceScheduler kept its config: loads, nothing to compare
        checkpoint = torch.load(tmp_path / "a.ckpt", weights_only=False)
        del checkpoint["callbacks"]["PerformanceScheduler"]["config"]
        torch.save(checkpoint, tmp_path / "a.ckpt")
    warm = LinearWarmup(8, 0.16)
    model = ScriptedLoss([1.0] * 4)
    resumed = PerformanceScheduler(schedule=warm, patience=9, min_delta=0.0)
    trainer = make_trainer(
        tmp_path, callbacks=[resumed], max_epochs=4, limit_train_batches=2, limit_val_batches=1
    )
    before = "None" if saved is None else r"\{'class': 'LinearWarmup', .*'lr': 0\.08"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(
            model, digits_loader(64, 32), digits_loader(32, 32), ckpt_path=tmp_path / "a.ckpt"
        )
    named = [
        str(w.message) for w in caught if "differs from the one in the checkpoint" in str(w.message)
    ]
    assert len(named) == (not old), named
    assert all(re.search(rf"`schedule`: {before}.* in the checkpoint, .*0\.16", m) for m in named)
    assert resumed.steps == [8] and resumed.restored
    assert model.lr_after_eval == pytest.approx([warm(6), warm(8)], rel=1e-12)
