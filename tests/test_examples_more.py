"""Smoke-run the custom-module, LR-finder and DDP examples on short budgets; check the numbers."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch
from torch import nn

from lightning_reg.schedules import OneCycle
from tests.test_examples import load


def test_custom_module_gets_penalty_max_norm_and_one_cycle() -> None:
    out = load("custom_module").main(["--epochs", "3", "--max-norm", "1.5"])
    # 1cycle drove every optimizer step: 1258 training digits / 64 = 20 steps per epoch.
    schedule = OneCycle(total_steps=60, max_lr=0.1)
    assert out["lrs"] == pytest.approx([schedule(k) for k in range(60)], rel=1e-12)
    assert out["momentums"] == pytest.approx([schedule.momentum(k) for k in range(60)])
    # The loss Lightning back-propagated is the cross-entropy: the penalty acts on the gradient.
    assert out["penalty"] > 0
    assert out["loss"] == out["data_loss"]
    # The penalty covers the Linear weights only (l1=1e-5, l2=1e-4), not the biases.
    model = out["model"]
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, nn.Linear)]
    expected = sum(1e-5 * w.abs().sum() + 1e-4 * (w * w).sum() for w in weights)
    assert float(model.penalty().detach()) == pytest.approx(float(expected), rel=1e-5)
    # MaxNorm binds: the largest incoming-weight norm sits at the bound.
    assert out["max_row_norm"] == pytest.approx(1.5, abs=1e-4)
    assert out["val_acc"] > 0.9


def test_lr_finder_feeds_one_cycle() -> None:
    out = load("lr_finder").main(["--epochs", "2", "--num-training", "60"])
    lrs, losses = out["lrs"], out["losses"]
    finite = [loss for loss in losses if math.isfinite(loss)]
    # max_lr is the LR of the lowest smoothed loss of Lightning's range test, divided by 10.
    assert out["turning"] == lrs[losses.index(min(finite))]
    assert out["max_lr"] == out["turning"] / 10
    assert 1e-4 <= out["max_lr"] < out["turning"] <= 10
    assert lrs[0] == pytest.approx(1e-4)
    assert all(a < b for a, b in itertools.pairwise(lrs))
    # The turning-point rule trains well; Lightning's steepest-slope suggestion is lower.
    assert out["suggestion"] < out["max_lr"]
    assert out["chosen_acc"] > 0.85
    assert out["chosen_acc"] > out["suggestion_acc"] + 0.05
    # "auto" runs its own range test inside fit and trains as well as the hand-read value.
    assert 1e-4 < out["auto_max_lr"] < 10 and out["auto_acc"] > 0.85


def _lines(stdout: str) -> dict[str, str]:
    pairs = (re.match(r"^([^:]+): (.+)$", line) for line in stdout.splitlines())
    return {m.group(1): m.group(2) for m in pairs if m}


@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)
def test_ddp_example_ranks_agree(ddp_example_output: str) -> None:
    out = _lines(ddp_example_output)
    assert out["world size"] == "2"
    # 1258 training digits over 2 ranks, batches of 32: 20 optimizer steps per epoch.
    assert out["optimizer steps per rank"] == "40"
    assert out["LR traces identical on every rank"] == "True"
    assert out["weights identical on every rank"] == "True"
    assert out["LR trace equals OneCycle(total_steps=40, max_lr=0.1)"] == "True"
    assert out["rank 0"] == out["rank 1"]
    assert float(out["max row norm"].split()[0]) <= 1.5 + 1e-5
    assert float(out["validation accuracy"]) > 0.85
