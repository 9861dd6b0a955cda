"""Mixed precision: bf16 runs give the same schedule; steps the GradScaler skips change nothing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins import MixedPrecision

from lightning_reg import MaxNorm, OneCycle, OneCycleScheduler, WeightPenaltyMixin
from tests.helpers import DigitsClassifier, digits_loader, make_trainer


class Penalized(WeightPenaltyMixin, DigitsClassifier):
    def __init__(self, poisoned: frozenset[int] = frozenset()) -> None:
        super().__init__(lr=0.5)
        self.configure_penalty(l1=1e-4, l2=1e-3)
        self.poisoned = poisoned

    def on_after_backward(self) -> None:
        if self.trainer.fit_loop.epoch_loop.batch_progress.current.ready - 1 in self.poisoned:
            self.net[0].weight.grad.fill_(math.inf)


class WeightsAround(Callback):
    """Copies of all parameters at the start and at the end of every batch."""

    def __init__(self) -> None:
        self.before: list[list[torch.Tensor]] = []
        self.after: list[list[torch.Tensor]] = []
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, i: int) -> None:
        self.before.append([p.detach().clone() for p in pl_module.parameters()])

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])

    def on_train_batch_end(self, trainer: Any, pl_module: Any, out: Any, b: Any, i: int) -> None:
        self.after.append([p.detach().clone() for p in pl_module.parameters()])


def test_a_skipped_step_changes_no_weight_and_no_schedule(tmp_path: Path) -> None:
    scaler = torch.amp.GradScaler("cpu")
    rec = WeightsAround()
    trainer = make_trainer(
        tmp_path,
        callbacks=[OneCycleScheduler(max_lr=0.5, total_steps=8), MaxNorm(0.5), rec],
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
        max_steps=6,
    )
    trainer.fit(Penalized(poisoned=frozenset({2})), digits_loader(256, 32))
    # Batch 2 was skipped by the scaler: MaxNorm ran after it (global_step advanced), yet
    # every parameter is bit-identical, and the schedule did not advance.
    assert all(torch.equal(a, b) for a, b in zip(rec.before[2], rec.after[2], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(rec.before[1], rec.after[1], strict=True))
    sched = OneCycle(8, 0.5)
    assert rec.lrs == pytest.approx([sched(k) for k in (0, 1, 2, 2, 3, 4)], rel=1e-12)
    for module in trainer.lightning_module.net:
        if isinstance(module, torch.nn.Linear):
            assert float(module.weight.norm(dim=1).max()) <= 0.5 + 1e-6


def test_bf16_mixed_gives_the_same_schedule_and_constraint(tmp_path: Path) -> None:
    rec = WeightsAround()
    trainer = make_trainer(
        tmp_path,
        callbacks=[OneCycleScheduler(max_lr=0.5), MaxNorm(0.5), rec],
        precision="bf16-mixed",
        max_epochs=2,
    )
    model = Penalized()
    trainer.fit(model, digits_loader(256, 32))
    sched = OneCycle(16, 0.5)
    assert rec.lrs == pytest.approx([sched(k) for k in range(16)], rel=1e-12)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    for module in model.net:
        if isinstance(module, torch.nn.Linear):
            assert float(module.weight.norm(dim=1).max()) <= 0.5 + 1e-6
    assert math.isfinite(float(model.penalty().detach()))
