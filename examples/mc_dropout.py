"""Monte Carlo dropout on the offline digits data: accuracy and uncertainty.

Run: ``python examples/mc_dropout.py`` (under a minute on 2 CPU cores, nothing is downloaded).

A ``RegularizedMLP`` with dropout 0.3 is trained briefly. On the test split the script compares
the deterministic prediction (dropout off) with the Monte Carlo dropout prediction (the mean of
100 stochastic passes in train mode with BatchNorm-type layers in eval, drawn in batched form by
``mc_dropout_predict``), then prints the mean predictive entropy of the correct and of the wrong
MC predictions: a useful uncertainty is higher where the model is wrong. The last line repeats
the MC prediction through ``Trainer.predict`` with ``model.mc_samples = 100``.
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch

from lightning_reg.demos import RegularizedMLP
from lightning_reg.demos.data import DigitsDataModule
from lightning_reg.uncertainty import MCDropoutResult, mc_dropout_predict


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description="MC dropout vs deterministic predictions.")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    pl.seed_everything(args.seed, verbose=False)
    data = DigitsDataModule(batch_size=32)
    model = RegularizedMLP(hidden=(256, 256), dropout=0.3, l2=1e-4)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    trainer.fit(model, datamodule=data)

    batches = list(data.test_dataloader())
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    model.eval()
    with torch.no_grad():
        deterministic = model(x).argmax(-1)
    mc = mc_dropout_predict(model, x, n_samples=args.samples, task="classification")
    predicted = mc.mean.argmax(-1)
    correct = predicted == y
    det_acc = float((deterministic == y).float().mean())
    mc_acc = float(correct.float().mean())
    entropy_right = float(mc.entropy[correct].mean())
    entropy_wrong = float(mc.entropy[~correct].mean()) if (~correct).any() else float("nan")

    model.mc_samples = args.samples
    results = trainer.predict(model, datamodule=data)
    assert results is not None
    summaries = [r for r in results if isinstance(r, MCDropoutResult)]
    predict_acc = float((torch.cat([s.mean for s in summaries]).argmax(-1) == y).float().mean())

    print(f"test samples: {len(y)}, MC samples: {args.samples}")
    print(f"deterministic accuracy: {det_acc:.4f}")
    print(f"MC dropout accuracy: {mc_acc:.4f}")
    print(f"mean entropy (correct): {entropy_right:.4f} nats over {int(correct.sum())}")
    print(f"mean entropy (wrong): {entropy_wrong:.4f} nats over {int((~correct).sum())}")
    print(f"Trainer.predict MC accuracy: {predict_acc:.4f}")
    return {
        "det_acc": det_acc,
        "mc_acc": mc_acc,
        "entropy_correct": entropy_right,
        "entropy_wrong": entropy_wrong,
        "predict_acc": predict_acc,
    }


if __name__ == "__main__":
    main()
