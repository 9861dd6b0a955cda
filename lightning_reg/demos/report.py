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

import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from lightning_reg._validation import check_int
from lightning_reg.plotting import matplotlib_figure
from lightning_reg.uncertainty import mc_dropout_predict

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "ReportOptions",
    "format_summary",
    "mc_dropout_summary",
    "plot_learning_curves",
    "plot_logged_schedule",
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


_STYLES = ("-", "--", ":", "-.")


def plot_logged_schedule(rows: Sequence[dict[str, float]]) -> Figure | None:
    """Plot the learning rates and the first momentum that ``LearningRateMonitor`` logged.

    The learning-rate callbacks log what they set through Lightning's ``LearningRateMonitor``
    (``lr-SGD``, ``lr-SGD-momentum``, ``lr-Adam/pg2``, ...) at the start of every logged batch,
    with the value that batch trained with, so this is the schedule the run really followed.

    Args:
        rows: rows of ``metrics.csv`` (see :func:`read_metrics`). Required.

    Returns:
        The figure (learning rates on the left axis, momentum on a twin axis), or ``None`` when
        no learning rate was logged.

    Raises:
        ImportError: if matplotlib is not installed.

    Examples:
        >>> rows = [{"step": 0.0, "lr-SGD": 0.01, "lr-SGD-momentum": 0.95},
        ...         {"step": 10.0, "lr-SGD": 0.1, "lr-SGD-momentum": 0.85}]
        >>> figure = plot_logged_schedule(rows)
        >>> [ax.get_ylabel() for ax in figure.axes]
        ['learning rate', 'momentum']
        >>> plot_logged_schedule([{"step": 0.0, "train/loss": 1.0}]) is None
        True
    """
    keys = sorted({key for row in rows for key in row if key.startswith("lr-")})
    columns = [key for key in keys if not key.endswith(("-momentum", "-weight_decay"))]
    if not columns:
        return None
    figure, (ax,) = _new_figure()
    for k, column in enumerate(columns):
        ax.plot(*_series(rows, "step", column), linestyle=_STYLES[k % len(_STYLES)], label=column)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title("learning-rate schedule (as logged)")
    handles, labels = ax.get_legend_handles_labels()
    momentum_key = f"{columns[0]}-momentum"
    steps, momentum = _series(rows, "step", momentum_key)
    if momentum:
        twin = ax.twinx()
        (line,) = twin.plot(steps, momentum, color="tab:red", alpha=0.6, label=momentum_key)
        twin.set_ylabel("momentum", color="tab:red")
        handles, labels = [*handles, line], [*labels, momentum_key]
    ax.legend(handles, labels, loc="upper right")
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


def _scores(probs: Tensor, log_probs: Tensor, y: Tensor) -> dict[str, float]:
    num_classes = probs.shape[-1]
    accuracy = MulticlassAccuracy(num_classes).to(probs.device)(probs, y)
    ece = MulticlassCalibrationError(num_classes, n_bins=ECE_BINS, norm="l1").to(probs.device)
    nll = -log_probs.gather(1, y[:, None]).mean()
    entropy = -torch.special.xlogy(probs, probs).sum(-1).mean()
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

    Deterministic: one pass in eval mode (dropout off). MC dropout: the mean of ``n_samples``
    passes with only the dropout layers on (:func:`~lightning_reg.mc_dropout_predict`). Each is
    scored with torchmetrics' ``MulticlassAccuracy`` (its default, macro average over classes:
    the ``test/acc`` that :class:`~lightning_reg.demos.RegularizedMLP` logs) and
    ``MulticlassCalibrationError`` (expected calibration error, ``l1`` norm, 15 bins), plus the
    negative log-likelihood and the mean predictive entropy (nats). The model's modes are
    restored afterwards.

    Args:
        model: a classifier returning logits of shape ``(N, C)``. Required.
        x: inputs, on any device (moved to the model's device). Required.
        y: integer labels of shape ``(N,)``. Required.
        n_samples: MC dropout samples, an integer >= 1. Default ``50``.

    Returns:
        ``{"n_samples", "num_examples", "ece_bins", "deterministic": {...}, "mc_dropout":
        {...}}`` where both inner dicts hold ``accuracy``, ``ece``, ``nll`` and ``mean_entropy``;
        ``mc_dropout`` also holds ``mean_std`` (the per-class standard deviation over the samples,
        averaged).

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
    mc = mc_dropout_predict(model, x, n_samples=n_samples, task="classification")
    mc_log_probs = mc.mean.clamp_min(torch.finfo(mc.mean.dtype).tiny).log()
    return {
        "n_samples": n_samples,
        "num_examples": len(y),
        "ece_bins": ECE_BINS,
        "deterministic": _scores(logits.softmax(-1), logits.log_softmax(-1), y),
        "mc_dropout": {**_scores(mc.mean, mc_log_probs, y), "mean_std": float(mc.std.mean())},
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
) -> dict[str, Path]:
    """Write the plots and the MC-dropout summary of a finished run into ``out_dir``.

    * ``schedule.png``: :func:`plot_logged_schedule` of ``out_dir/metrics.csv``.
    * ``learning_curves.png``: :func:`plot_learning_curves` of ``out_dir/metrics.csv``.
    * ``mc_dropout.json``: :func:`mc_dropout_summary` of ``model`` on ``test_data``.

    A file whose input is missing (no ``metrics.csv``, nothing logged, no model or test data)
    is skipped. Call it on one process only (rank zero).

    Args:
        out_dir: the run's folder (the CSV logger's ``log_dir``), created if missing. Required.
        model: the trained classifier. Default ``None`` (no MC-dropout summary).
        test_data: ``(x, y)`` to score the model on. Default ``None`` (no MC-dropout summary).
        mc_samples: MC dropout samples per example, an integer >= 1. Default ``50``.

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
    for name, plot in (
        ("schedule", plot_logged_schedule),
        ("learning_curves", plot_learning_curves),
    ):
        figure = plot(rows)
        if figure is not None:
            written[name] = out / f"{name}.png"
            figure.savefig(written[name], dpi=110)
    if model is not None and test_data is not None:
        summary = mc_dropout_summary(model, *test_data, n_samples=mc_samples)
        written["mc_dropout"] = out / "mc_dropout.json"
        written["mc_dropout"].write_text(json.dumps(summary, indent=2) + "\n")
    return written
