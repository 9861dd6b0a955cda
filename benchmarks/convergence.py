"""Learning-rate schedules compared on real data: the textbook's experiment, with lightning-reg.

    python benchmarks/convergence.py                      # MNIST-5k and digits, offline
    python benchmarks/convergence.py --dataset mnist5k    # one dataset
    python benchmarks/convergence.py --dataset fashion-mnist  # needs torchvision and a download
    python benchmarks/convergence.py --quick --no-write   # tiny run that only prints

A ``RegularizedMLP`` 784-300-100-10 (64-300-100-10 on digits; ELU, He init, SGD with momentum
0.9, batch 64) is trained through a real ``Trainer`` with each arm and several seeds (the seed
sets the init and the batch order; the data split is fixed). Medians over seeds. The arms, in
order (``c`` is the best constant rate):

1. ``constant``: each rate of ``--lr-grid`` for ``--epochs`` (30) epochs; the best (highest
   median final validation accuracy) is ``c``, and its median final validation accuracy is the
   target ``T`` of the "epochs to T" column.
2. ``exponential``: ``ExponentialDecay(lr0=3c, s=total_steps, rate=1/d)``, tuned over a decay
   ``d`` in {10, 100} over the run.
3. ``power``: ``PowerDecay(lr0=3c, s=total_steps/9, c=1)`` (ends at ``3c/10``), not tuned.
4. ``performance``: ``PerformanceScheduler`` on ``val_loss`` from ``3c`` with ``patience=2``,
   tuned over ``factor`` in {0.5, 0.2}.
5. ``1cycle``: ``OneCycleScheduler(max_lr)`` (textbook defaults), ``max_lr`` in
   ``--max-lr-grid`` ({0.01, 0.03, 0.1, 0.3}), for each of ``--cycle-epochs`` (5 and 10).
6. ``1cycle auto``: ``OneCycleScheduler(max_lr="auto")`` for the same epochs; its fit time
   includes the range test, whose own time is reported beside it.

A tuned arm's row is its best setting (highest median final validation accuracy); every setting
is in the second table. The learning curves (mean over seeds) go to ``docs/img``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from _common import IMG, machine_header, markdown_table, quiet_lightning, write_section

from lightning_reg import (
    ExponentialDecay,
    OneCycleScheduler,
    PerformanceScheduler,
    PowerDecay,
    ScheduledLR,
)
from lightning_reg.demos import DigitsDataModule, RegularizedMLP
from lightning_reg.demos.data import FashionMNISTDataModule, MNIST5kDataModule

DATASETS = ("mnist5k", "digits")
# The Trainer arguments of every benchmark fit: one CPU process, no logging, no files.
QUIET_CPU: dict[str, Any] = {
    "accelerator": "cpu",
    "devices": 1,
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
}
THRESHOLDS = {"mnist5k": 0.93, "digits": 0.97, "fashion-mnist": 0.85}


@dataclass
class Run:
    """What one training run produced."""

    val_acc: list[float] = field(default_factory=list)  # one per epoch
    val_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)  # at the end of each epoch
    test_acc: float = math.nan
    seconds: float = math.nan  # wall time of fit, range test included
    auto_max_lr: float = math.nan
    sweep_seconds: float = 0.0
    sweep_steps: int = 0


@dataclass
class Arm:
    """One setting: ``make(total_steps)`` gives the LR callback (``None``: constant ``lr``)."""

    group: str
    label: str
    epochs: int
    lr: float
    make: Callable[[int], pl.Callback | None]
    runs: list[Run] = field(default_factory=list)

    def median(self, value: Callable[[Run], float]) -> float:
        return statistics.median(value(r) for r in self.runs)

    @property
    def final(self) -> float:
        return self.median(lambda r: r.val_acc[-1])


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


def make_data(name: str, batch: int) -> pl.LightningDataModule:
    if name == "digits":
        return DigitsDataModule(batch_size=batch)
    if name == "fashion-mnist":  # needs torchvision and a download
        return FashionMNISTDataModule(batch_size=batch)
    return MNIST5kDataModule(batch_size=batch)


def train(
    dm: pl.LightningDataModule,
    callback: Callable[[int], pl.Callback | None],
    lr: float,
    epochs: int,
    seed: int,
    hidden: list[int],
    test: bool = True,
) -> Run:
    """Fit a fresh model for ``epochs`` epochs with the LR callback ``callback(total_steps)``."""
    pl.seed_everything(seed, verbose=False)
    model = RegularizedMLP(in_features=dm.num_features, hidden=tuple(hidden), lr=lr)  # type: ignore[attr-defined]
    run = Run()
    steps_per_epoch = len(dm.train_dataloader())
    cb = callback(epochs * steps_per_epoch)
    trainer = pl.Trainer(
        max_epochs=epochs, callbacks=[Recorder(run), *([cb] if cb else [])], **QUIET_CPU
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    run.seconds = time.perf_counter() - start
    result = getattr(cb, "range_test_result", None)
    if result is not None:
        run.auto_max_lr = result.max_lr
        run.sweep_seconds = result.seconds
        run.sweep_steps = len(result.lrs)
    if test:
        (metrics,) = trainer.test(model, datamodule=dm, verbose=False)
        run.test_acc = float(metrics["test/acc"])
    return run


def epochs_to(target: float, curve: list[float]) -> float:
    """First epoch (1-based) whose accuracy is >= ``target``; ``inf`` if none."""
    return next((i + 1 for i, acc in enumerate(curve) if acc >= target - 1e-9), math.inf)


def constant_arms(grid: list[float], epochs: int) -> list[Arm]:
    return [Arm("constant", f"lr {lr:g}", epochs, lr, lambda total: None) for lr in grid]


def decay_arms(c: float, epochs: int) -> list[Arm]:
    """The exponential, power, piecewise and performance settings, from the best constant c."""
    arms = [
        Arm(
            "exponential",
            f"lr0 {3 * c:g}, {d}x lower at the end",
            epochs,
            3 * c,
            lambda total, d=d: ScheduledLR(ExponentialDecay(lr0=3 * c, s=total, rate=1 / d)),
        )
        for d in (10, 100)
    ]
    arms.append(
        Arm(
            "power",
            f"lr0 {3 * c:g}, s T/9, c 1",
            epochs,
            3 * c,
            lambda total: ScheduledLR(PowerDecay(lr0=3 * c, s=total / 9, c=1.0)),
        )
    )
    for factor in (0.5, 0.2):
        arms.append(
            Arm(
                "performance",
                f"lr0 {3 * c:g}, factor {factor}, patience 2",
                epochs,
                3 * c,
                lambda total, factor=factor: PerformanceScheduler(
                    monitor="val_loss", factor=factor, patience=2
                ),
            )
        )
    return arms


def cycle_arms(grid: list[float], budgets: list[int], lr: float) -> list[Arm]:
    arms = []
    for epochs in budgets:
        for m in grid:
            arms.append(
                Arm(
                    f"1cycle, {epochs} epochs",
                    f"max_lr {m:g}",
                    epochs,
                    lr,
                    lambda total, m=m: OneCycleScheduler(max_lr=m),
                )
            )
        arms.append(
            Arm(
                f"1cycle auto, {epochs} epochs",
                'max_lr "auto"',
                epochs,
                lr,
                lambda total: OneCycleScheduler(max_lr="auto"),
            )
        )
    return arms


def best_per_group(arms: list[Arm]) -> dict[str, Arm]:
    best: dict[str, Arm] = {}
    for arm in arms:
        if arm.group not in best or arm.final > best[arm.group].final:
            best[arm.group] = arm
    return best


def fmt_epochs(value: float) -> str:
    return "-" if math.isinf(value) else f"{value:g}"


def arm_cells(arm: Arm, target: float, threshold: float) -> list[str]:
    reaches = [epochs_to(target, r.val_acc) for r in arm.runs]
    label = arm.label
    if arm.group.startswith("1cycle auto"):
        chosen = arm.median(lambda r: r.auto_max_lr)
        sweep = arm.median(lambda r: r.sweep_seconds)
        steps = arm.median(lambda r: r.sweep_steps)
        label += f" (chose {chosen:.3g}; range test {steps:g} steps, {sweep:.2f} s)"
    return [
        label,
        str(arm.epochs),
        fmt_epochs(statistics.median(reaches)),
        f"{sum(not math.isinf(e) for e in reaches)}/{len(reaches)}",
        fmt_epochs(arm.median(lambda r: epochs_to(threshold, r.val_acc))),
        f"{100 * arm.final:.2f}",
        f"{100 * arm.median(lambda r: r.test_acc):.2f}",
        f"{arm.median(lambda r: r.seconds):.1f}",
    ]


def verdict(best: dict[str, Arm], budgets: list[int], target: float) -> list[str]:
    """The issue's targets: 1cycle reaches T within 10 epochs; "auto" within 0.5 point of the
    best hand-tuned max_lr at the same budget."""
    lines = []
    for epochs in budgets:
        hand, auto = best[f"1cycle, {epochs} epochs"], best[f"1cycle auto, {epochs} epochs"]
        reach = statistics.median(epochs_to(target, r.val_acc) for r in hand.runs)
        gap = 100 * (auto.final - hand.final)
        lines.append(
            f"- 1cycle, {epochs} epochs ({hand.label}): reaches T = {100 * target:.2f}% at epoch "
            f"{fmt_epochs(reach)} (median), final {100 * hand.final:.2f}%; "
            f'"auto": final {100 * auto.final:.2f}%, {gap:+.2f} points from the best '
            f"hand-tuned max_lr ({'within' if gap >= -0.5 else 'not within'} 0.5)."
        )
    return lines


def plot(best: dict[str, Arm], path: str, title: str) -> None:
    """Mean validation accuracy, loss and the LR per epoch of each group's best arm, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for group, arm in best.items():
        for ax, attr in zip(axes, ("val_acc", "val_loss", "lr"), strict=True):
            curves = [getattr(r, attr) for r in arm.runs]
            mean = [statistics.fmean(values) for values in zip(*curves, strict=True)]
            style = "--" if "auto" in group else "-"
            ax.plot(range(1, len(mean) + 1), mean, style, label=f"{group}: {arm.label}")
    for ax, label in zip(
        axes, ("validation accuracy", "validation loss", "learning rate"), strict=True
    ):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    top = max(
        max(statistics.fmean(v) for v in zip(*[r.val_acc for r in a.runs], strict=True))
        for a in best.values()
    )
    axes[0].set_ylim(top - 0.06, top + 0.01)
    axes[1].set_yscale("log")
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.savefig(path, dpi=90)


def run_dataset(name: str, args: argparse.Namespace) -> str:
    dm = make_data(name, args.batch)
    seeds = range(args.seeds)

    def fill(arms: list[Arm]) -> list[Arm]:
        for arm in arms:
            arm.runs = [train(dm, arm.make, arm.lr, arm.epochs, s, args.hidden) for s in seeds]
            print(f"  {name} {arm.group} {arm.label}: {100 * arm.final:.2f}%", flush=True)
        return arms

    constants = fill(constant_arms(args.lr_grid, args.epochs))
    c_arm = max(constants, key=lambda a: a.final)
    c, target = c_arm.lr, c_arm.final
    arms = [*constants, *fill(decay_arms(c, args.epochs))]
    arms += fill(cycle_arms(args.max_lr_grid, args.cycle_epochs, c))
    best = best_per_group(arms)
    threshold = THRESHOLDS[name] if not args.quick else 0.5
    headers = [
        "schedule",
        "setting",
        "epochs",
        f"epochs to T = {100 * target:.2f}%",
        "seeds that reach T",
        f"epochs to {100 * threshold:g}%",
        "final val acc (%)",
        "test acc (%)",
        "fit time (s)",
    ]
    summary = markdown_table(
        headers,
        [[group, *arm_cells(arm, target, threshold)] for group, arm in best.items()],
        "llrrrrrrr",
    )
    every = markdown_table(
        headers,
        [[arm.group, *arm_cells(arm, target, threshold)] for arm in arms],
        "llrrrrrrr",
    )
    settings = (
        f"{name}, RegularizedMLP hidden {args.hidden} (ELU, He init), SGD momentum 0.9, batch "
        f"{args.batch}, seeds {list(seeds)}; medians over seeds; T is the best constant rate's "
        f"median validation accuracy after {args.epochs} epochs"
    )
    body = (
        f"{machine_header(torch.device('cpu'))}\n- Settings: {settings}.\n\n"
        f"Best setting of each schedule:\n\n{summary}\n\n"
        + "\n".join(verdict(best, args.cycle_epochs, target))
        + f"\n\n<details><summary>Every setting</summary>\n\n{every}\n\n</details>"
    )
    if not args.no_write:
        IMG.mkdir(parents=True, exist_ok=True)
        png = f"convergence_{name}.png"
        plot(best, str(IMG / png), f"{name}: best setting of each schedule, mean over seeds")
        body += f"\n\n![learning curves on {name}](img/{png})"
        write_section(f"convergence-{name}", body)
    return body


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset", choices=(*DATASETS, "fashion-mnist", "all"), default="all", help="all: offline"
    )
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the non-1cycle arms")
    parser.add_argument("--cycle-epochs", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. n-1")
    parser.add_argument("--batch", type=int, default=64, help="batch size")
    parser.add_argument("--hidden", type=int, nargs="+", default=[300, 100], help="MLP widths")
    parser.add_argument(
        "--lr-grid", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1], help="constant LRs"
    )
    parser.add_argument(
        "--max-lr-grid", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3], help="1cycle"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: default)")
    parser.add_argument("--quick", action="store_true", help="digits, 2 epochs, 1 seed")
    parser.add_argument("--no-write", action="store_true", help="print only; no docs, no plot")
    args = parser.parse_args(argv)
    if args.quick:
        args.dataset, args.epochs, args.cycle_epochs, args.seeds = "digits", 2, [2], 1
        args.lr_grid, args.max_lr_grid, args.hidden = [0.01, 0.03], [0.1], [32]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    quiet_lightning()
    for name in DATASETS if args.dataset == "all" else (args.dataset,):
        print(run_dataset(name, args), flush=True)


if __name__ == "__main__":
    main()
