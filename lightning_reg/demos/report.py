"""The end-of-run report of the ``lightning-reg`` command: plots and an MC-dropout summary.

Everything here reads what a run left behind (the CSV logger's ``metrics.csv``, the trained
model, the test data) and writes files; nothing runs during training. Figures are made with
matplotlib's object API (``matplotlib.figure.Figure``), so no GUI backend or global state is used.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch import Callback
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError
from typing_extensions import override

from lightning_reg._validation import check_int
from lightning_reg.callbacks._lr_base import momentum_key
from lightning_reg.plotting import matplotlib_figure
from lightning_reg.uncertainty import mc_dropout_predict

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "ReportOptions",
    "format_summary",
    "mc_dropout_summary",
    "plot_learning_curves",
    "OptimizerTrace",
    "plot_schedule_trace",
    "read_metrics",
    "write_report",
]

ECE_BINS = 15
"""Confidence bins of the expected calibration error (torchmetrics' default)."""


@dataclass(frozen=True)
class ReportOptions:
    """What the ``lightning-reg fit`` command does after training (the ``report`` config group).

    Args:
        enabled: test the model and write the report into the run's folder. Default ``True``.
        mc_samples: Monte Carlo dropout samples per test example, an integer >= 1.
            Default ``50``.

    Raises:
        TypeError: if ``enabled`` is not a bool or ``mc_samples`` is not an integer.
        ValueError: if ``mc_samples < 1``.

    Examples:
        >>> ReportOptions(mc_samples=100)
        ReportOptions(enabled=True, mc_samples=100)

        On the command line: ``lightning-reg fit --report.mc_samples 100`` (or
        ``--report.enabled false``).
    """

    enabled: bool = True
    mc_samples: int = 50

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise TypeError(f"`enabled` must be a bool, got {self.enabled!r}.")
        check_int("mc_samples", self.mc_samples, 1)


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Read a CSV logger's ``metrics.csv`` into one dict per row, keeping only filled cells.

    Args:
        path: the ``metrics.csv`` file. Required.

    Returns:
        The rows in file order, each mapping column name to value (``epoch`` and ``step`` too).

    Raises:
        FileNotFoundError: if ``path`` does not exist.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = Path(folder) / "metrics.csv"
        ...     _ = path.write_text("epoch,step,train/loss,val/acc\\n0,9,0.5,\\n0,9,,0.75\\n")
        ...     for row in read_metrics(path):
        ...         print(row)
        {'epoch': 0.0, 'step': 9.0, 'train/loss': 0.5}
        {'epoch': 0.0, 'step': 9.0, 'val/acc': 0.75}
    """
    with open(path, newline="") as file:
        return [
            {key: float(value) for key, value in row.items() if key and value not in (None, "")}
            for row in csv.DictReader(file)
        ]


def _series(rows: Sequence[dict[str, float]], x: str, y: str) -> tuple[list[float], list[float]]:
    pairs = [(row[x], row[y]) for row in rows if x in row and y in row]
    return [a for a, _ in pairs], [b for _, b in pairs]


def _new_figure(ncols: int = 1) -> tuple[Figure, list[Any]]:
    figure = matplotlib_figure("The report's plots")(
        figsize=(5.5 * ncols, 4.0), layout="constrained"
    )
    return figure, [figure.add_subplot(1, ncols, k + 1) for k in range(ncols)]


class OptimizerTrace(Callback):
    """Records what the optimizer really uses: each param group's learning rate and momentum
    (``momentum``, or the first of Adam's ``betas``) just before every optimizer step.

    It reads ``optimizer.param_groups`` in Lightning's ``on_before_optimizer_step`` hook, after
    any learning-rate callback has set them and whatever that callback logs, so
    :func:`plot_schedule_trace` draws every step the run took (the 1cycle peak at ``max_lr``),
    not the rows logged every ``log_every_n_steps``. Several optimizers are recorded apart; the
    trace starts afresh when each fit's training starts.

    Attributes:
        lrs: per optimizer (its index in ``trainer.optimizers``), one list per step of the
            learning rate of each param group.
        momenta: the same for the momentum (``None`` for an optimizer without one).

    Examples:
        >>> import lightning.pytorch as pl
        >>> from lightning_reg import OneCycleScheduler
        >>> from lightning_reg.demos import DigitsDataModule, RegularizedMLP
        >>> trace = OptimizerTrace()
        >>> trainer = pl.Trainer(max_steps=20, logger=False, enable_checkpointing=False,
        ...                      enable_progress_bar=False, enable_model_summary=False,
        ...                      callbacks=[trace, OneCycleScheduler(max_lr=0.1)])
        >>> trainer.fit(RegularizedMLP(), datamodule=DigitsDataModule())
        >>> len(trace.lrs[0]), max(lr for lr, *_ in trace.lrs[0])  # every step, the peak
        (20, 0.1)
    """

    def __init__(self) -> None:
        self.lrs: dict[int, list[list[float]]] = {}
        self.momenta: dict[int, list[list[float | None]]] = {}

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Afresh at each fit, after anything done in `on_fit_start` (the LR range test of
        # `max_lr="auto"` takes its steps there, then restores the model and the optimizer).
        self.lrs, self.momenta = {}, {}

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        index = next(i for i, opt in enumerate(trainer.optimizers) if opt is optimizer)
        groups = optimizer.param_groups
        self.lrs.setdefault(index, []).append([float(g["lr"]) for g in groups])
        self.momenta.setdefault(index, []).append([_momentum(g) for g in groups])


def _momentum(group: dict[str, Any]) -> float | None:
    key = momentum_key(group)
    if key is None:
        return None
    return float(group[key][0] if key == "betas" else group[key])


def _columns(values: Sequence[Sequence[Any]]) -> list[tuple[str, list[Any]]]:
    """``(label, series)`` per param group; groups that followed the same series are one."""
    merged: list[tuple[list[int], list[Any]]] = []
    for k, column in enumerate(map(list, zip(*values, strict=True))):
        same = next((groups for groups, kept in merged if kept == column), None)
        if same is None:
            merged.append(([k], column))
        else:
            same.append(k)
    if len(merged) == 1 and len(merged[0][0]) > 1:
        return [(f"all {len(merged[0][0])} param groups", merged[0][1])]
    return [
        (f"param group{'s' if len(g) > 1 else ''} {', '.join(map(str, g))}", column)
        for g, column in merged
    ]


_STYLES = ("-", "--", ":", "-.")


def plot_schedule_trace(
    lrs: Sequence[Sequence[float]], momenta: Sequence[Sequence[float | None]] | None = None
) -> Figure | None:
    """Plot the learning rate and momentum of each param group at every optimizer step.

    Param groups that followed the same values are one line (``"all 2 param groups"``); the
    title gives the peak learning rate and its step; the legend sits above the plot, clear of
    the lines.

    Args:
        lrs: one list per optimizer step of the learning rate of each param group
            (:attr:`OptimizerTrace.lrs` of one optimizer). Required.
        momenta: the same for the momentum. Default ``None`` (no momentum line).

    Returns:
        The figure (learning rates on the left axis, momentum on a twin axis), or ``None`` when
        ``lrs`` is empty.

    Raises:
        ImportError: if matplotlib is not installed.

    Examples:
        >>> figure = plot_schedule_trace([[0.01, 0.01], [0.1, 0.1], [0.05, 0.05]],
        ...                              [[0.95, 0.95], [0.85, 0.85], [0.9, 0.9]])
        >>> [ax.get_ylabel() for ax in figure.axes]
        ['learning rate', 'momentum']
        >>> figure.axes[0].get_title()
        'learning rate at each optimizer step (peak 0.1 at step 1)'
        >>> [text.get_text() for text in figure.legends[0].get_texts()]
        ['lr, all 2 param groups', 'momentum, all 2 param groups']
    """
    if not lrs:
        return None
    figure, (ax,) = _new_figure()
    steps = list(range(len(lrs)))
    handles = []
    for k, (label, column) in enumerate(_columns(lrs)):
        (line,) = ax.plot(steps, column, linestyle=_STYLES[k % len(_STYLES)], label=f"lr, {label}")
        handles.append(line)
    peak = max(max(row) for row in lrs)
    at = next(t for t, row in enumerate(lrs) if max(row) == peak)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title(f"learning rate at each optimizer step (peak {peak:.4g} at step {at})")
    columns = _columns(momenta) if momenta else []
    columns = [(label, column) for label, column in columns if None not in column]
    if columns:
        twin = ax.twinx()
        for k, (label, column) in enumerate(columns):
            (line,) = twin.plot(
                steps, column, color="tab:red", alpha=0.6, linestyle=_STYLES[k % len(_STYLES)],
                label=f"momentum, {label}",
            )  # fmt: skip
            handles.append(line)
        twin.set_ylabel("momentum", color="tab:red")
    figure.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 2))
    return figure


_CURVES = (
    ("loss", ("train/loss_epoch", "train/loss"), "val/loss"),
    ("accuracy", ("train/acc_epoch", "train/acc"), "val/acc"),
)


def plot_learning_curves(rows: Sequence[dict[str, float]]) -> Figure | None:
    """Plot training and validation loss and accuracy per epoch from ``metrics.csv`` rows.

    Reads ``train/loss_epoch`` (or ``train/loss``), ``val/loss``, ``train/acc`` and ``val/acc``,
    the names :class:`~lightning_reg.demos.RegularizedMLP` logs.

    Args:
        rows: rows of ``metrics.csv`` (see :func:`read_metrics`). Required.

    Returns:
        A figure with a loss panel and an accuracy panel, or ``None`` when none of these metrics
        was logged per epoch.

    Raises:
        ImportError: if matplotlib is not installed.

    Examples:
        >>> rows = [{"epoch": 0.0, "train/loss_epoch": 0.9, "val/loss": 0.7, "val/acc": 0.8},
        ...         {"epoch": 1.0, "train/loss_epoch": 0.5, "val/loss": 0.4, "val/acc": 0.9}]
        >>> [ax.get_title() for ax in plot_learning_curves(rows).axes]
        ['loss', 'accuracy']
    """
    panels = []
    for title, train_names, val_name in _CURVES:
        train_name = next((n for n in train_names if any(n in row for row in rows)), None)
        lines = [(name, _series(rows, "epoch", name)) for name in (train_name, val_name) if name]
        lines = [(name, xy) for name, xy in lines if xy[0]]
        if lines:
            panels.append((title, lines))
    if not panels:
        return None
    from matplotlib.ticker import MaxNLocator

    figure, axes = _new_figure(len(panels))
    for ax, (title, lines) in zip(axes, panels, strict=True):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for name, (epochs, values) in lines:
            ax.plot(epochs, values, marker="o", markersize=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(title)
        ax.set_title(title)
        ax.legend()
    return figure


def _log_mean_probs(logits: Tensor) -> Tensor:
    """``log(mean_s softmax(logits[s]))`` over the samples ``s`` of ``logits`` ``(S, N, C)``,
    from log-probabilities (``max + log(mean(exp(lp - max)))``): no probability is clamped, and
    ``S`` identical samples give exactly the log-softmax of one, so one eval-mode pass
    (``S = 1``) and samples that do not differ score the same."""
    log_probs = logits.log_softmax(-1)
    top = log_probs.amax(0)
    return top + (log_probs - top).exp().mean(0).log()


def _scores(log_probs: Tensor, y: Tensor) -> dict[str, float]:
    probs = log_probs.exp()
    num_classes = probs.shape[-1]
    accuracy = MulticlassAccuracy(num_classes).to(probs.device)(probs, y)
    ece = MulticlassCalibrationError(num_classes, n_bins=ECE_BINS, norm="l1").to(probs.device)
    nll = -log_probs.gather(1, y[:, None]).mean()
    entropy = -(probs * log_probs).sum(-1).mean()
    return {
        "accuracy": float(accuracy),
        "ece": float(ece(probs, y)),
        "nll": float(nll),
        "mean_entropy": float(entropy),
    }


def mc_dropout_summary(
    model: nn.Module, x: Tensor, y: Tensor, n_samples: int = 50
) -> dict[str, Any]:
    """Score deterministic and Monte Carlo dropout predictions of a classifier on ``(x, y)``.

    Deterministic: one pass in eval mode (dropout off). MC dropout: ``n_samples`` passes with
    only the dropout layers on (:func:`~lightning_reg.mc_dropout_predict`), averaged as
    probabilities. Both rows go through the same numerics: the log of the mean probability is
    computed from the log-softmax of each pass (one pass for the deterministic row), so with no
    dropout in the model the two rows are equal. Each is scored with torchmetrics'
    ``MulticlassAccuracy`` (its default, macro average over classes: the ``test/acc`` that
    :class:`~lightning_reg.demos.RegularizedMLP` logs) and ``MulticlassCalibrationError``
    (expected calibration error, ``l1`` norm, 15 bins), plus the negative log-likelihood and the
    mean predictive entropy (nats). The model's modes are restored afterwards.

    Args:
        model: a classifier returning logits of shape ``(N, C)``. Required.
        x: inputs, on any device (moved to the model's device). Required.
        y: integer labels of shape ``(N,)``. Required.
        n_samples: MC dropout samples, an integer >= 1. Default ``50``.

    Returns:
        ``{"n_samples", "num_examples", "ece_bins", "deterministic": {...}, "mc_dropout":
        {...}}`` where both inner dicts hold ``accuracy``, ``ece``, ``nll`` and ``mean_entropy``;
        ``mc_dropout`` also holds ``mean_std`` (the per-class standard deviation of the
        probabilities over the samples, averaged).

    Raises:
        TypeError, ValueError: if ``n_samples`` is not an integer >= 1.

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
        >>> x, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
        >>> summary = mc_dropout_summary(model, x, y, n_samples=10)
        >>> sorted(summary["mc_dropout"]), summary["num_examples"]
        (['accuracy', 'ece', 'mean_entropy', 'mean_std', 'nll'], 30)
    """
    check_int("n_samples", n_samples, 1)
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        model.train(was_training)
    # The raw outputs (logits) of every pass: "regression" summarizes them without a softmax.
    mc = mc_dropout_predict(model, x, n_samples=n_samples, task="regression", return_samples=True)
    assert mc.samples is not None
    mean_std = torch.std_mean(mc.samples.softmax(-1), dim=0, correction=0)[0].mean()
    return {
        "n_samples": n_samples,
        "num_examples": len(y),
        "ece_bins": ECE_BINS,
        "deterministic": _scores(_log_mean_probs(logits[None]), y),
        "mc_dropout": {**_scores(_log_mean_probs(mc.samples), y), "mean_std": float(mean_std)},
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The MC-dropout summary as a small text table (what the command prints).

    Args:
        summary: the result of :func:`mc_dropout_summary`. Required.

    Returns:
        The table, one line per prediction mode.

    Examples:
        >>> scores = {"accuracy": 0.9, "ece": 0.05, "nll": 0.3, "mean_entropy": 0.2}
        >>> print(format_summary({"num_examples": 270, "n_samples": 50, "ece_bins": 15,
        ...     "deterministic": scores, "mc_dropout": {**scores, "mean_std": 0.01}}))
        MC dropout on 270 test examples (50 samples, ECE over 15 bins):
                                accuracy       ECE       NLL   entropy
        deterministic             0.9000    0.0500    0.3000    0.2000
        MC dropout                0.9000    0.0500    0.3000    0.2000
    """
    header = f"{'':<22}{'accuracy':>10}{'ECE':>10}{'NLL':>10}{'entropy':>10}"
    lines = [
        f"MC dropout on {summary['num_examples']} test examples "
        f"({summary['n_samples']} samples, ECE over {summary['ece_bins']} bins):",
        header,
    ]
    for label, key in (("deterministic", "deterministic"), ("MC dropout", "mc_dropout")):
        s = summary[key]
        lines.append(
            f"{label:<22}{s['accuracy']:>10.4f}{s['ece']:>10.4f}{s['nll']:>10.4f}"
            f"{s['mean_entropy']:>10.4f}"
        )
    return "\n".join(lines)


def write_report(
    out_dir: str | Path,
    model: nn.Module | None = None,
    test_data: tuple[Tensor, Tensor] | None = None,
    mc_samples: int = 50,
    trace: OptimizerTrace | None = None,
) -> dict[str, Path]:
    """Write the plots and the MC-dropout summary of a finished run into ``out_dir``.

    * ``schedule.png``: :func:`plot_schedule_trace` of the first optimizer in ``trace``.
    * ``learning_curves.png``: :func:`plot_learning_curves` of ``out_dir/metrics.csv``.
    * ``mc_dropout.json``: :func:`mc_dropout_summary` of ``model`` on ``test_data``.

    A file whose input is missing (no trace, no ``metrics.csv``, nothing logged, no model or
    test data) is skipped. Call it on one process only (rank zero).

    Args:
        out_dir: the run's folder (the CSV logger's ``log_dir``), created if missing. Required.
        model: the trained classifier. Default ``None`` (no MC-dropout summary).
        test_data: ``(x, y)`` to score the model on. Default ``None`` (no MC-dropout summary).
        mc_samples: MC dropout samples per example, an integer >= 1. Default ``50``.
        trace: the run's :class:`OptimizerTrace`. Default ``None`` (no ``schedule.png``).

    Returns:
        The files written, keyed ``"schedule"``, ``"learning_curves"`` and ``"mc_dropout"``.

    Raises:
        TypeError, ValueError: if ``mc_samples`` is not an integer >= 1.
        ImportError: if matplotlib is not installed and there is something to plot.

    Examples:
        >>> import tempfile
        >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
        >>> data = (torch.randn(30, 4), torch.randint(0, 3, (30,)))
        >>> with tempfile.TemporaryDirectory() as folder:  # no metrics.csv there: no plots
        ...     print(sorted(write_report(folder, model, data, mc_samples=5)))
        ['mc_dropout']
    """
    check_int("mc_samples", mc_samples, 1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    metrics = out / "metrics.csv"
    rows = read_metrics(metrics) if metrics.is_file() else []
    first = min(trace.lrs, default=None) if trace is not None else None
    figures = {
        "schedule": None
        if trace is None or first is None
        else plot_schedule_trace(trace.lrs[first], trace.momenta[first]),
        "learning_curves": plot_learning_curves(rows),
    }
    for name, figure in figures.items():
        if figure is not None:
            written[name] = out / f"{name}.png"
            figure.savefig(written[name], dpi=110)
    if model is not None and test_data is not None:
        summary = mc_dropout_summary(model, *test_data, n_samples=mc_samples)
        written["mc_dropout"] = out / "mc_dropout.json"
        written["mc_dropout"].write_text(json.dumps(summary, indent=2) + "\n")
    return written
