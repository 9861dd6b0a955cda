"""Quick start: a regularized MLP on the offline digits data, trained with the 1cycle policy.

Run: ``python examples/quickstart.py`` (under a minute on 2 CPU cores, nothing is downloaded).

It prints what the schedule did (LR and momentum at the start, the peak and the end of the
cycle), the largest row norm under the max-norm constraint, and validation/test accuracy.
"""

from __future__ import annotations

import argparse
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch import nn

from lightning_reg import OneCycleScheduler
from lightning_reg.demos import DigitsDataModule, RegularizedMLP


class StepTrace(Callback):
    """Remembers the LR and momentum of every optimizer step (for the printout)."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.moms: list[float] = []

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        group = optimizer.param_groups[0]
        self.lrs.append(group["lr"])
        self.moms.append(group["momentum"])


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    pl.seed_everything(args.seed, verbose=False)
    data = DigitsDataModule(batch_size=64)
    model = RegularizedMLP(hidden=(128, 128), activation="elu", dropout=0.1, l2=1e-4, max_norm=3.0)
    trace = StepTrace()
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        callbacks=[OneCycleScheduler(max_lr=args.max_lr), trace],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data)
    val = trainer.validate(model, datamodule=data, verbose=False)[0]
    test = trainer.test(model, datamodule=data, verbose=False)[0]

    peak = max(range(len(trace.lrs)), key=trace.lrs.__getitem__)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    max_row_norm = max(float(m.weight.detach().norm(dim=1).max()) for m in linears)
    print(f"\n1cycle over {len(trace.lrs)} optimizer steps (max_lr={args.max_lr}):")
    for name, k in (("start", 0), ("peak", peak), ("end", len(trace.lrs) - 1)):
        print(f"  {name:>5} step {k:4d}: lr={trace.lrs[k]:.6f} momentum={trace.moms[k]:.3f}")
    print(f"largest incoming-weight norm: {max_row_norm:.3f} (max_norm=3.0)")
    print(f"validation accuracy: {val['val/acc']:.3f}   test accuracy: {test['test/acc']:.3f}")
    return {"val_acc": val["val/acc"], "test_acc": test["test/acc"], "max_row_norm": max_row_norm}


if __name__ == "__main__":
    main()
