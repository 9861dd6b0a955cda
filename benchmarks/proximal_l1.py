"""Proximal l1 on digits: exact zeros at no cost in accuracy, against subgradient l1 and no l1.

Run: ``python benchmarks/proximal_l1.py`` (about 6 minutes on 2 CPU cores). ``RegularizedMLP``
(64-128-128-10, ELU, SGD momentum 0.9, lr 0.01, batch 32, 40 epochs) is trained for each seed
without l1, with Keras' subgradient l1 and with ``proximal_l1=True``; the table gives the share
of penalized weights exactly zero and the validation accuracy after the last epoch. It is
written into ``docs/regularization.md`` between the ``proximal-l1`` markers.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import lightning.pytorch as pl
import torch

from benchmarks._common import machine_header, markdown_table, quiet_lightning, write_section
from lightning_reg.demos import DigitsDataModule, RegularizedMLP
from lightning_reg.penalties import zero_fraction

DOC = Path(__file__).resolve().parents[1] / "docs" / "regularization.md"


def train(seed: int, epochs: int, **penalty: float | bool) -> tuple[float, float]:
    """(share of penalized weights exactly zero, validation accuracy) after ``epochs``."""
    pl.seed_everything(seed, verbose=False)
    model = RegularizedMLP(hidden=(128, 128), lr=0.01, **penalty)  # type: ignore[arg-type]
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    data = DigitsDataModule(batch_size=32)
    trainer.fit(model, datamodule=data)
    (result,) = trainer.validate(model, datamodule=data, verbose=False)
    return float(zero_fraction(model.penalized_weights())), result["val/acc"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--l1", type=float, default=1e-2)
    parser.add_argument("--no-write", action="store_true", help="print, do not edit the docs")
    args = parser.parse_args(argv)
    quiet_lightning()
    torch.set_num_threads(1)
    arms = {
        "no l1": {},
        f"subgradient l1={args.l1:g}": {"l1": args.l1},
        f"proximal l1={args.l1:g}": {"l1": args.l1, "proximal_l1": True},
    }
    rows = []
    for name, penalty in arms.items():
        runs = [train(seed, args.epochs, **penalty) for seed in args.seeds]
        zeros = [z for z, _ in runs]
        accs = [a for _, a in runs]
        rows.append(
            [
                name,
                " / ".join(f"{100 * z:.1f}" for z in zeros),
                " / ".join(f"{a:.4f}" for a in accs),
                f"{statistics.mean(accs):.4f}",
            ]
        )
        print(rows[-1], flush=True)
    seeds = ", ".join(map(str, args.seeds))
    table = markdown_table(
        ["arm", f"exact zeros % (seeds {seeds})", "val acc per seed", "mean val acc"],
        rows,
        "lrrr",
    )
    section = f"{machine_header(torch.device('cpu'))}\n\n{table}"
    print(section)
    if not args.no_write:
        write_section("proximal-l1", section, DOC)


if __name__ == "__main__":
    main()
