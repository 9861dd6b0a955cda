"""Your own LightningModule with lightning-reg: the penalty mixin plus two callbacks.

Run: ``python examples/custom_module.py`` (about 15 s on 2 CPU cores, nothing is downloaded).

``DigitsNet`` is a plain ``LightningModule`` with its own layers, ``training_step`` and
``configure_optimizers``. Three additions regularize and schedule it:

- ``WeightPenaltyMixin`` (listed before ``LightningModule``) applies ``l1 * sum|w| + l2 * sum w**2``
  over the Linear weights (not the biases): at each optimizer step it adds the penalty's gradient
  to the weights' gradients, so ``training_step`` returns the data loss only; it logs the value as
  ``train/penalty``. ``configure_penalty`` in ``__init__`` sets the factors.
- ``MaxNorm(max_value)`` rescales every unit's incoming weight vector to norm ``<= max_value``
  after each optimizer step.
- ``OneCycleScheduler(max_lr)`` sets the LR and momentum of every optimizer step (1cycle).

The script prints the loss of the last step (cross-entropy only) and the penalty, the LR at the
start, peak and end of the cycle, the largest incoming-weight norm and the validation accuracy.
"""

from __future__ import annotations

import argparse
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_reg import MaxNorm, OneCycleScheduler, WeightPenaltyMixin
from lightning_reg.demos import DigitsDataModule


class DigitsNet(WeightPenaltyMixin, pl.LightningModule):
    """An MLP on the 64 digit pixels, written as any LightningModule would be."""

    def __init__(
        self, hidden: int = 128, dropout: float = 0.2, l1: float = 1e-5, l2: float = 1e-4
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(64, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 10),
        )
        self.configure_penalty(l1=l1, l2=l2)  # Linear weights only; biases are never penalized
        self.val_acc = MulticlassAccuracy(num_classes=10)
        self.last_losses: tuple[Tensor, Tensor] | None = None
        self._data_loss: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/data_loss", loss)
        self._data_loss = loss.detach()
        return loss  # the data loss only: the mixin adds the penalty's gradient at each step

    def on_before_backward(self, loss: Tensor) -> None:
        # `loss` is what Lightning back-propagates: kept (no host sync) to show it is the data loss.
        assert self._data_loss is not None
        self.last_losses = (loss.detach(), self._data_loss)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.val_acc(self(x), y)
        self.log("val/acc", self.val_acc)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # The LR is OneCycleScheduler's to set; `lr` here is only the constructor's placeholder.
        # penalty_param_groups() puts the penalized weights in a group of their own.
        return torch.optim.SGD(self.penalty_param_groups(), lr=0.01, momentum=0.9)


class StepTrace(Callback):
    """Remembers the LR and momentum of every optimizer step (for the printout)."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.moms: list[float] = []

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        group = optimizer.param_groups[0]
        self.lrs.append(group["lr"])
        self.moms.append(group["momentum"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--max-lr", type=float, default=0.1)
    parser.add_argument("--max-norm", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    pl.seed_everything(args.seed, verbose=False)
    data = DigitsDataModule(batch_size=64)
    model = DigitsNet()
    trace = StepTrace()
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        callbacks=[OneCycleScheduler(max_lr=args.max_lr), MaxNorm(args.max_norm), trace],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    trainer.fit(model, datamodule=data)
    penalty = float(model.penalty().detach())  # the penalty of the trained weights
    val = trainer.validate(model, datamodule=data, verbose=False)[0]

    assert model.last_losses is not None
    total, data_loss = (float(t) for t in model.last_losses)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    max_row_norm = max(float(m.weight.detach().norm(dim=1).max()) for m in linears)
    peak = max(range(len(trace.lrs)), key=trace.lrs.__getitem__)

    print(f"last step: loss {total:.6f} (cross-entropy {data_loss:.6f}), penalty {penalty:.6f}")
    print(f"1cycle over {len(trace.lrs)} optimizer steps (max_lr={args.max_lr}):")
    for name, k in (("start", 0), ("peak", peak), ("end", len(trace.lrs) - 1)):
        print(f"  {name:>5} step {k:4d}: lr={trace.lrs[k]:.6f} momentum={trace.moms[k]:.3f}")
    print(f"max row norm: {max_row_norm:.4f} (max_norm={args.max_norm})")
    print(f"validation accuracy: {val['val/acc']:.4f}")
    return {
        "model": model,
        "val_acc": val["val/acc"],
        "loss": total,
        "data_loss": data_loss,
        "penalty": penalty,
        "max_row_norm": max_row_norm,
        "lrs": trace.lrs,
        "momentums": trace.moms,
    }


if __name__ == "__main__":
    main()
