"""Learning-rate schedules compared on real data: the textbook's experiment, with lightning-reg.

    python benchmarks/convergence.py                  # digits, offline; rewrites docs/benchmarks.md
    python benchmarks/convergence.py --dataset fashion-mnist  # needs torchvision and a download
    python benchmarks/convergence.py --quick --no-write       # tiny run that only prints

The same ``RegularizedMLP`` (ELU, He init, SGD with momentum 0.9) is trained for the same number
of epochs with each schedule and several seeds (the seed sets the init and the batch order; the
data split is fixed). How each schedule's learning rate was chosen, in order:

1. ``constant``: the best of ``--lr-grid`` (highest median over seeds of the best validation
   accuracy). Every other schedule is set from that best constant rate ``c``.
2. ``exponential``: ``ExponentialDecay(lr0=3c, s=T)``, down 10x over the ``T`` steps of the run.
3. ``power``: ``PowerDecay(lr0=3c, s=T/9, c=1)``, also ending at ``3c/10``.
4. ``piecewise``: ``PiecewiseConstant`` at ``3c``, then ``c`` after half the run, then ``3c/10``
   after three quarters.
5. ``performance``: ``PerformanceScheduler`` on ``val_loss``, starting at ``3c``, ``factor=0.5``,
   ``patience=3`` epochs.
6. ``1cycle``: ``OneCycleScheduler`` sized to the run, ``max_lr`` the best of
   ``--one-cycle-grid`` times ``c`` (same selection rule as the constant rate).
7. ``1cycle, 1/3 budget``: the same ``max_lr``, the cycle run for a third of the epochs: the
   claim of 1cycle is reaching a given accuracy in far fewer epochs.

Reported per schedule (medians over seeds): the epoch at which validation accuracy first reaches
the best validation accuracy of the constant-rate run with the same seed ("-" when it never does)
and how many seeds reach it at all; the epoch at which it first reaches a fixed ``--threshold``
(97%); the final validation and test accuracy; the wall time of ``fit``. The learning curves
(mean validation accuracy and loss over seeds, and the learning rate) go to ``docs/img``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from _common import IMG, machine_header, markdown_table, quiet_lightning, write_section
from torch.utils.data import DataLoader, TensorDataset

from lightning_reg import (
    ExponentialDecay,
    OneCycleScheduler,
    PerformanceScheduler,
    PiecewiseConstant,
    PowerDecay,
    ScheduledLR,
)
from lightning_reg.demos import DigitsDataModule, RegularizedMLP

SCHEDULES = (
    "constant",
    "exponential",
    "power",
    "piecewise",
    "performance",
    "1cycle",
    "1cycle, 1/3 budget",
)


@dataclass
class Run:
    """What one training run produced."""

    val_acc: list[float] = field(default_factory=list)  # one per epoch
    val_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)  # at the end of each epoch
    test_acc: float = math.nan
    seconds: float = math.nan


class Recorder(pl.Callback):
    """Collects validation accuracy and loss after every validation run, and the LR per epoch."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.run.val_acc.append(float(trainer.callback_metrics["val/acc"]))
            self.run.val_loss.append(float(trainer.callback_metrics["val/loss"]))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.run.lr.append(float(trainer.optimizers[0].param_groups[0]["lr"]))


class FashionMNIST(pl.LightningDataModule):
    """Fashion-MNIST through torchvision (downloaded once), flattened and standardized."""

    num_features, num_classes = 784, 10

    def __init__(self, root: str, batch_size: int) -> None:
        super().__init__()
        try:
            from torchvision.datasets import FashionMNIST as Dataset
        except ImportError as err:
            raise SystemExit(
                "--dataset fashion-mnist needs torchvision (`pip install torchvision`) and "
                "internet access for the first download; the default --dataset digits needs "
                "neither."
            ) from err
        train = Dataset(root, train=True, download=True)
        test = Dataset(root, train=False, download=True)
        x = train.data.flatten(1).float() / 255.0
        mean, std = x[:55_000].mean(), x[:55_000].std()

        def prep(images: torch.Tensor) -> torch.Tensor:
            return (images.flatten(1).float() / 255.0 - mean) / std

        x_test = prep(test.data)
        self.splits = {
            "train": TensorDataset(prep(train.data[:55_000]), train.targets[:55_000]),
            "val": TensorDataset(prep(train.data[55_000:]), train.targets[55_000:]),
            "test": TensorDataset(x_test, test.targets),
        }
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.splits["train"], batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.splits["val"], batch_size=1024)

    def test_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.splits["test"], batch_size=1024)


def make_data(args: argparse.Namespace) -> pl.LightningDataModule:
    if args.dataset == "digits":
        return DigitsDataModule(batch_size=args.batch)
    return FashionMNIST(args.data_dir, args.batch)


def lr_callback(schedule: str, lr: float, total: int) -> pl.Callback | None:
    """The learning-rate callback of ``schedule``: ``lr`` is the constant or starting rate,
    ``max_lr`` for 1cycle; ``total`` the optimizer steps of the run."""
    if schedule == "constant":
        return None
    if schedule == "exponential":
        return ScheduledLR(ExponentialDecay(lr0=lr, s=total))
    if schedule == "power":
        return ScheduledLR(PowerDecay(lr0=lr, s=total / 9, c=1.0))
    if schedule == "piecewise":
        return ScheduledLR(PiecewiseConstant([total // 2, 3 * total // 4], [lr, lr / 3, lr / 10]))
    if schedule == "performance":
        return PerformanceScheduler(monitor="val_loss", factor=0.5, patience=3)
    return OneCycleScheduler(max_lr=lr)


def train(
    schedule: str,
    lr: float,
    epochs: int,
    seed: int,
    dm: pl.LightningDataModule,
    args: argparse.Namespace,
) -> Run:
    """Fit a fresh model with ``schedule`` for ``epochs`` epochs, then test it."""
    pl.seed_everything(seed, verbose=False)
    in_features = getattr(dm, "num_features", 64)
    model = RegularizedMLP(in_features=in_features, hidden=tuple(args.hidden), lr=lr)
    run = Run()
    steps_per_epoch = len(dm.train_dataloader())
    callback = lr_callback(schedule, lr, epochs * steps_per_epoch)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[Recorder(run), *([callback] if callback else [])],
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    run.seconds = time.perf_counter() - start
    (metrics,) = trainer.test(model, datamodule=dm, verbose=False)
    run.test_acc = float(metrics["test/acc"])
    return run


def best_of(grid: list[float], runs: dict[float, list[Run]]) -> float:
    """The grid value whose runs have the highest median best validation accuracy."""
    return max(grid, key=lambda v: statistics.median(max(r.val_acc) for r in runs[v]))


def epochs_to(target: float, curve: list[float]) -> float:
    """First epoch (1-based) whose accuracy is >= ``target``; ``inf`` if none."""
    return next((i + 1 for i, acc in enumerate(curve) if acc >= target - 1e-9), math.inf)


def summary_rows(
    runs: dict[str, list[Run]], lrs: dict[str, str], epochs: dict[str, int], threshold: float
) -> list[list[str]]:
    targets = [max(r.val_acc) for r in runs["constant"]]
    rows = []
    for schedule in SCHEDULES:
        seeds = runs[schedule]
        reaches = [epochs_to(t, r.val_acc) for t, r in zip(targets, seeds, strict=True)]
        reach = statistics.median(reaches)
        fixed = statistics.median(epochs_to(threshold, r.val_acc) for r in seeds)
        rows.append(
            [
                schedule,
                lrs[schedule],
                str(epochs[schedule]),
                "-" if math.isinf(reach) else f"{reach:g}",
                f"{sum(not math.isinf(e) for e in reaches)}/{len(reaches)}",
                "-" if math.isinf(fixed) else f"{fixed:g}",
                f"{100 * statistics.median(r.val_acc[-1] for r in seeds):.2f}",
                f"{100 * statistics.median(r.test_acc for r in seeds):.2f}",
                f"{statistics.median(r.seconds for r in seeds):.1f}",
            ]
        )
    return rows


def verdict(runs: dict[str, list[Run]]) -> list[str]:
    """The 1cycle targets: reach the constant run's best accuracy in <= 1/3 of the epochs that
    run took to get there (median over seeds), and end at least as accurate."""
    lines = []
    targets = [max(r.val_acc) for r in runs["constant"]]
    constant = statistics.median(
        epochs_to(t, r.val_acc) for t, r in zip(targets, runs["constant"], strict=True)
    )
    final_constant = statistics.median(r.val_acc[-1] for r in runs["constant"])
    test_constant = statistics.median(r.test_acc for r in runs["constant"])
    for schedule in ("1cycle", "1cycle, 1/3 budget"):
        seeds = runs[schedule]
        reach = statistics.median(
            epochs_to(t, r.val_acc) for t, r in zip(targets, seeds, strict=True)
        )
        fast = "met" if reach <= constant / 3 else "not met"
        final = statistics.median(r.val_acc[-1] for r in seeds)
        test = statistics.median(r.test_acc for r in seeds)
        at = "never" if math.isinf(reach) else f"at epoch {reach:g}"
        lines.append(
            f"- {schedule}: reaches the constant rate's best validation accuracy {at} vs "
            f"epoch {constant:g} for the constant rate ({fast}: target <= {constant / 3:.1f}); "
            f"final validation accuracy {100 * final:.2f}% vs "
            f"{100 * final_constant:.2f}%, test {100 * test:.2f}% vs {100 * test_constant:.2f}% "
            f"({'met' if final >= final_constant else 'not met'})."
        )
    return lines


def plot(runs: dict[str, list[Run]], path: str, title: str) -> None:
    """Mean validation accuracy, loss and the LR per epoch of every schedule, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for schedule in SCHEDULES:
        seeds = runs[schedule]
        for ax, attr in zip(axes, ("val_acc", "val_loss", "lr"), strict=True):
            curves = [getattr(r, attr) for r in seeds]
            mean = [statistics.fmean(values) for values in zip(*curves, strict=True)]
            style = "--" if schedule.endswith("budget") else "-"
            ax.plot(range(1, len(mean) + 1), mean, style, label=schedule)
    for ax, label in zip(
        axes, ("validation accuracy", "validation loss", "learning rate"), strict=True
    ):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(bottom=0.9)
    axes[1].set_yscale("log")
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=90)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("digits", "fashion-mnist"), default="digits")
    parser.add_argument("--data-dir", default="data", help="torchvision download folder")
    parser.add_argument("--epochs", type=int, default=30, help="epoch budget of every schedule")
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0 .. n-1")
    parser.add_argument("--batch", type=int, default=64, help="batch size")
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 128], help="MLP widths")
    parser.add_argument(
        "--lr-grid", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1], help="constant LRs"
    )
    parser.add_argument(
        "--one-cycle-grid", type=float, nargs="+", default=[3.0, 10.0], help="max_lr / best LR"
    )
    parser.add_argument(
        "--threshold", type=float, default=0.97, help="fixed validation accuracy to reach"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: default)")
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 seed, tiny grids")
    parser.add_argument("--no-write", action="store_true", help="print only; no docs, no plot")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.seeds, args.lr_grid, args.one_cycle_grid = 3, 1, [0.01], [3.0]
        args.hidden, args.threshold = [32], 0.5
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    quiet_lightning()
    dm = make_data(args)
    seeds = range(args.seeds)
    runs: dict[str, list[Run]] = {}
    lrs: dict[str, str] = {}
    epochs = dict.fromkeys(SCHEDULES, args.epochs)
    epochs["1cycle, 1/3 budget"] = max(1, round(args.epochs / 3))

    def each_seed(schedule: str, lr: float) -> list[Run]:
        return [train(schedule, lr, epochs[schedule], s, dm, args) for s in seeds]

    constant = {lr: each_seed("constant", lr) for lr in args.lr_grid}
    c = best_of(args.lr_grid, constant)
    runs["constant"], lrs["constant"] = constant[c], f"{c:g} (best of {args.lr_grid})"
    for schedule in ("exponential", "power", "piecewise", "performance"):
        runs[schedule], lrs[schedule] = each_seed(schedule, 3 * c), f"lr0 {3 * c:g}"
    cycle_grid = [m * c for m in args.one_cycle_grid]
    cycles = {m: each_seed("1cycle", m) for m in cycle_grid}
    max_lr = best_of(cycle_grid, cycles)
    runs["1cycle"] = cycles[max_lr]
    lrs["1cycle"] = f"max_lr {max_lr:g} (best of {[round(m, 6) for m in cycle_grid]})"
    runs["1cycle, 1/3 budget"] = each_seed("1cycle, 1/3 budget", max_lr)
    lrs["1cycle, 1/3 budget"] = f"max_lr {max_lr:g}"

    table = markdown_table(
        [
            "schedule",
            "learning rate",
            "epochs",
            "epochs to best constant val acc",
            "seeds that reach it",
            f"epochs to {100 * args.threshold:g}% val acc",
            "final val acc (%)",
            "test acc (%)",
            "fit time (s)",
        ],
        summary_rows(runs, lrs, epochs, args.threshold),
        "llrrrrrrr",
    )
    device = torch.device(args.device)
    settings = (
        f"{args.dataset}, RegularizedMLP hidden {args.hidden}, SGD momentum 0.9, batch "
        f"{args.batch}, {args.epochs} epochs, seeds {list(seeds)}"
    )
    body = (
        f"{machine_header(device)}\n- Settings: {settings}; medians over seeds.\n\n{table}\n\n"
        + "\n".join(verdict(runs))
    )
    print(body)
    if not args.no_write:
        IMG.mkdir(parents=True, exist_ok=True)
        name = f"convergence_{args.dataset.replace('-', '_')}.png"
        plot(runs, str(IMG / name), f"Means over seeds. {settings}")
        body += f"\n\n![learning curves](img/{name})"
        write_section(f"convergence-{args.dataset}", body)


if __name__ == "__main__":
    main()
