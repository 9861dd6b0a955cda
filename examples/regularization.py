"""Regularization on the offline digits data: dropout, an l2 penalty and a max-norm constraint.

Run: ``python examples/regularization.py`` (under a minute on 2 CPU cores, nothing is
downloaded; docs/snippets/regularization.txt holds its output and time).

A ``RegularizedMLP`` (ELU, He init, dropout 0.2) is trained with ``l2=1e-4``: the
``WeightPenaltyMixin`` adds the penalty's gradient ``2 * l2 * w`` to the weights' gradients at
every optimizer step (the same update as adding ``l2 * sum(w**2)`` to the loss, which stays the
cross-entropy), and ``max_norm=1.0`` is enforced after every optimizer step by the ``MaxNorm``
callback its ``configure_callbacks`` returns. The script prints the validation and test
accuracy, the final weight penalty and the largest incoming-weight norm of any unit.
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
from torch import nn

from lightning_reg.demos import RegularizedMLP
from lightning_reg.demos.data import DigitsDataModule


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description="RegularizedMLP with l2, max-norm and dropout.")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--l2", type=float, default=1e-4)
    parser.add_argument("--max-norm", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    pl.seed_everything(args.seed, verbose=False)
    data = DigitsDataModule(batch_size=32)
    model = RegularizedMLP(
        hidden=(128, 128),
        dropout=args.dropout,
        l2=args.l2,
        max_norm=args.max_norm,
    )
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    trainer.fit(model, datamodule=data)
    val = trainer.validate(model, datamodule=data, verbose=False)[0]
    test = trainer.test(model, datamodule=data, verbose=False)[0]

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    max_row_norm = max(float(m.weight.detach().norm(dim=1).max()) for m in linears)
    penalty = float(model.penalty().detach())
    print(f"validation accuracy: {val['val/acc']:.4f}")
    print(f"test accuracy: {test['test/acc']:.4f}")
    print(f"l2 penalty: {penalty:.6f} (l2={args.l2})")
    print(f"max row norm: {max_row_norm:.4f} (max_norm={args.max_norm})")
    return {
        "val_acc": val["val/acc"],
        "test_acc": test["test/acc"],
        "penalty": penalty,
        "max_row_norm": max_row_norm,
    }


if __name__ == "__main__":
    main()
