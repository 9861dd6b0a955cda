"""The end-of-run report of ``lightning-reg fit``, on real short runs: the MC row and the
deterministic row share their numerics, and ``schedule.png`` draws the LR of every step."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_reg import OneCycleScheduler
from lightning_reg.demos.cli import LightningRegCLI
from lightning_reg.demos.report import (
    OptimizerTrace,
    mc_dropout_summary,
    plot_schedule_trace,
    read_metrics,
)
from lightning_reg.schedules import OneCycle

QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def short_fit(tmp_path: Path, *args: str) -> LightningRegCLI:
    """``lightning-reg fit`` for one epoch of 6 batches into ``tmp_path``."""
    argv = [
        "fit",
        *QUIET,
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=6",
        "--report.mc_samples=4",
        f"--trainer.default_root_dir={tmp_path}",
        *args,
    ]
    return LightningRegCLI(args=argv)


def test_with_dropout_0_the_mc_row_equals_the_deterministic_row(tmp_path: Path) -> None:
    # The mnist5k config has dropout 0: the MC samples are the eval-mode pass, so the rows must
    # be equal (the MC row's NLL used to come from probabilities clamped at finfo.tiny and
    # showed 0.4979 against 0.5201).
    with pytest.warns(UserWarning, match="all 4 samples are identical"):
        cli = short_fit(tmp_path, "--model.dropout=0.0", "--model.max_norm=null")
    summary = json.loads((Path(cli.trainer.log_dir) / "mc_dropout.json").read_text())
    mc = dict(summary["mc_dropout"])
    assert mc.pop("mean_std") == 0.0
    assert mc == summary["deterministic"]
    assert summary["deterministic"]["nll"] == pytest.approx(
        float(cli.trainer.callback_metrics["test/loss"]), rel=1e-5
    )


def test_the_mc_row_is_the_log_of_the_mean_probability() -> None:
    # Against an independent float64 computation: -log(mean_s softmax(logits_s)[y]), with
    # confidently wrong answers whose probabilities underflow float32 (about e**-200).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))
    with torch.no_grad():
        model[3].bias[0] = 200.0
    x, y = torch.randn(40, 4), torch.randint(1, 3, (40,))
    torch.manual_seed(1)
    summary = mc_dropout_summary(model, x, y, n_samples=8)
    torch.manual_seed(1)
    model.train()
    with torch.no_grad():  # the same passes as mc_dropout_predict makes: 8 copies at once
        logits = model(x.repeat(8, 1)).unflatten(0, (8, 40)).double()
    probs = logits.softmax(-1)
    log_mean = torch.logsumexp(logits.log_softmax(-1), 0) - math.log(8)
    nll = -log_mean.gather(1, y[:, None]).mean()
    assert summary["mc_dropout"]["nll"] == pytest.approx(float(nll), rel=1e-5)
    # A clamp at finfo(float32).tiny would cap each term at -log(tiny) = 87.3.
    assert summary["mc_dropout"]["nll"] > 150
    entropy = -(probs.mean(0) * log_mean).sum(-1).mean()
    assert summary["mc_dropout"]["mean_entropy"] == pytest.approx(float(entropy), rel=1e-5)
    std = probs.std(0, correction=0).mean()
    assert summary["mc_dropout"]["mean_std"] == pytest.approx(float(std), rel=1e-5)


def test_schedule_png_draws_the_lr_of_every_optimizer_step(tmp_path: Path) -> None:
    cli = short_fit(tmp_path, "--trainer.log_every_n_steps=4", "--report.enabled=true")
    (trace,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, OptimizerTrace)]
    cycle = OneCycle(total_steps=6, max_lr=0.1)
    lrs, momenta = trace.lrs[0], trace.momenta[0]
    assert len(lrs) == cli.trainer.global_step == 6
    for step, (groups, moms) in enumerate(zip(lrs, momenta, strict=True)):
        assert groups == pytest.approx([cycle(step)] * 2, rel=1e-12)  # 2 param groups
        assert moms == pytest.approx([cycle.momentum(step)] * 2, rel=1e-12)
    # The logged rows (every 4 steps) miss the peak; the plot has it.
    rows = read_metrics(Path(cli.trainer.log_dir) / "metrics.csv")
    (name,) = {k for row in rows for k in row if k.startswith("lr-") and k.endswith("/pg1")}
    logged = [row[name] for row in rows if name in row]
    assert logged and max(logged) < 0.1
    figure = plot_schedule_trace(lrs, momenta)
    assert figure is not None
    (lr_line,) = figure.axes[0].get_lines()
    assert max(lr_line.get_ydata()) == 0.1 and len(lr_line.get_ydata()) == 6
    assert "peak 0.1 at step" in figure.axes[0].get_title()
    # Equal groups are one line each for lr and momentum, named; the legend is above the axes.
    (legend,) = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "lr, all 2 param groups",
        "momentum, all 2 param groups",
    ]
    figure.canvas.draw()
    axes_top = figure.axes[0].get_window_extent().y1
    assert legend.get_window_extent().y0 >= axes_top
    assert (Path(cli.trainer.log_dir) / "schedule.png").is_file()


def test_different_param_groups_are_named() -> None:
    figure = plot_schedule_trace([[0.1, 0.01, 0.1], [0.2, 0.02, 0.2]])
    assert figure is not None
    assert [t.get_text() for t in figure.legends[0].get_texts()] == [
        "lr, param groups 0, 2",
        "lr, param group 1",
    ]
    assert plot_schedule_trace([]) is None


def test_metrics_csv_has_one_validation_loss_column(tmp_path: Path) -> None:
    cli = short_fit(tmp_path, "--report.enabled=false")
    header = (Path(cli.trainer.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val/loss" in header and "val_loss" not in header
    # PerformanceScheduler's default monitor is still there for callbacks.
    metrics = cli.trainer.callback_metrics
    torch.testing.assert_close(metrics["val_loss"], metrics["val/loss"])


def test_the_command_prints_no_lightning_tips(tmp_path: Path) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    lightning_logger = logging.getLogger("lightning.pytorch")
    lightning_logger.addHandler(handler)
    try:
        cli = short_fit(tmp_path, "--report.enabled=false")
    finally:
        lightning_logger.removeHandler(handler)
    messages = [record.getMessage() for record in records]
    assert any("`Trainer.fit` stopped" in message for message in messages)  # INFO gets here
    assert not [message for message in messages if "Tip" in message]
    # Lightning's own default checkpoint is still written.
    assert list((Path(cli.trainer.log_dir) / "checkpoints").glob("*.ckpt"))


def test_the_trace_leaves_out_the_range_test_of_max_lr_auto(tmp_path: Path) -> None:
    # The range test takes real optimizer steps (up to LR 10) inside `fit`, then restores
    # everything: schedule.png shows the cycle that followed, peaking at the chosen max_lr.
    cli = short_fit(tmp_path, "--lr_schedule.max_lr=auto", "--report.enabled=false")
    (trace,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, OptimizerTrace)]
    (schedule,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, OneCycleScheduler)]
    result = schedule.range_test_result
    assert result is not None and len(result.lrs) > 6
    lrs = [groups[0] for groups in trace.lrs[0]]
    assert len(lrs) == cli.trainer.global_step == 6
    cycle = OneCycle(total_steps=6, max_lr=result.max_lr)
    assert lrs == pytest.approx([cycle(step) for step in range(6)], rel=1e-12)
