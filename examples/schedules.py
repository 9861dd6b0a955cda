"""Each learning-rate schedule side by side on the offline digits data.

Run: ``python examples/schedules.py [--epochs 8] [--plot schedules.png]``.

Trains the same RegularizedMLP with a constant LR, exponential, power and piecewise-constant
decay, performance scheduling and 1cycle, and prints the final validation accuracy of each.
With ``--plot`` it also saves the step-based LR curves (needs the ``plot`` extra).
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl

from lightning_reg import (
    ExponentialDecay,
    OneCycle,
    PerformanceScheduler,
    PiecewiseConstant,
    PowerDecay,
    Schedule,
    ScheduledLR,
    plot_schedule,
)
from lightning_reg.demos import DigitsDataModule, RegularizedMLP

NAMES = ("constant", "exponential", "power", "piecewise", "performance", "1cycle")


def step_schedules(total: int) -> dict[str, Schedule]:
    """The step-based schedules of a run of ``total`` optimizer steps."""
    return {
        "exponential": ExponentialDecay(lr0=0.05, s=total),  # lr0 / 10 after `total` steps
        "power": PowerDecay(lr0=0.05, s=total / 4),
        "1cycle": OneCycle(total_steps=total, max_lr=0.1),
    }


def callbacks(name: str, steps_per_epoch: int, epochs: int) -> list[pl.Callback]:
    if name == "constant":
        return []
    if name == "piecewise":  # per epoch: drop halfway and three quarters through
        first = max(1, epochs // 2)
        boundaries = [first, max(first + 1, 3 * epochs // 4)]
        return [ScheduledLR(PiecewiseConstant(boundaries, [0.05, 0.02, 0.005]), "epoch")]
    if name == "performance":
        return [PerformanceScheduler(monitor="val_loss", patience=1, factor=0.5)]
    return [ScheduledLR(step_schedules(steps_per_epoch * epochs)[name])]


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--plot", default=None, help="save the LR curves to this PNG file")
    args = parser.parse_args(argv)

    data = DigitsDataModule(batch_size=64)
    data.setup()
    steps_per_epoch = len(data.train_dataloader())
    results: dict[str, float] = {}
    for name in NAMES:
        pl.seed_everything(0, verbose=False)
        model = RegularizedMLP(hidden=(128, 128), lr=0.05, dropout=0.1)
        trainer = pl.Trainer(
            max_epochs=args.epochs,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=callbacks(name, steps_per_epoch, args.epochs),
        )
        trainer.fit(model, datamodule=data)
        results[name] = float(trainer.callback_metrics["val/acc"])
        print(f"{name:>12}: val accuracy {results[name]:.3f}")

    if args.plot:
        from matplotlib.figure import Figure

        total = steps_per_epoch * args.epochs
        schedules = list(step_schedules(total).items())
        fig = Figure(figsize=(12, 3.5), layout="constrained")
        for ax, (name, schedule) in zip(fig.subplots(1, len(schedules)), schedules, strict=True):
            plot_schedule(schedule, total_steps=total, ax=ax)
            ax.set_title(name)
        fig.savefig(args.plot)
        print(f"saved {args.plot}")
    return results


if __name__ == "__main__":
    main()
