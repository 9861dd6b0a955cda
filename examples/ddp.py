"""A 2-process DDP run on CPU with lightning-reg's callbacks: every rank sets the same LR.

Run: ``python examples/ddp.py`` (about 20 s on 2 CPU cores, nothing is downloaded).

Scaling out is the Trainer's job: ``Trainer(strategy="ddp", accelerator="cpu", devices=2)``
starts a second process (Lightning re-runs this script for local rank 1, which is why the
work sits under ``if __name__ == "__main__":``) and the processes talk over gloo. Our code
needs no change: ``OneCycleScheduler`` counts the optimizer steps each rank takes and sizes
the cycle from ``trainer.estimated_stepping_batches`` (which divides the batches between the
ranks), and ``MaxNorm`` constrains the same weights on every rank. At the end each rank's LR
trace and weights are gathered, and rank 0 prints whether they agree.

On a GPU machine, use ``accelerator="gpu"`` and ``devices=N`` (NCCL); on a cluster, add
``num_nodes=M``. Nothing else changes.
"""

from __future__ import annotations

import argparse
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from lightning_reg import MaxNorm, OneCycle, OneCycleScheduler
from lightning_reg.demos import DigitsDataModule, RegularizedMLP


class GatherTrace(Callback):
    """Records this rank's LR per optimizer step; at the end gathers all ranks' LRs and weights."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.all_lrs: torch.Tensor | None = None
        self.all_params: torch.Tensor | None = None

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        lrs = torch.tensor(self.lrs, dtype=torch.float64)
        params = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        self.all_lrs = trainer.strategy.all_gather(lrs)  # (world_size, steps)
        self.all_params = trainer.strategy.all_gather(params)  # (world_size, n_params)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--max-lr", type=float, default=0.1)
    parser.add_argument("--max-norm", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # one process per core
    pl.seed_everything(args.seed, verbose=False)
    model = RegularizedMLP(hidden=(128, 128), dropout=0.1, l2=1e-4)
    trace = GatherTrace()
    trainer = pl.Trainer(
        strategy="ddp",
        accelerator="cpu",
        devices=args.devices,
        max_epochs=args.epochs,
        callbacks=[OneCycleScheduler(max_lr=args.max_lr), MaxNorm(args.max_norm), trace],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
    val_acc = float(trainer.callback_metrics["val/acc"])  # synced over ranks by torchmetrics
    if not trainer.is_global_zero:
        return None

    assert trace.all_lrs is not None and trace.all_params is not None
    all_lrs, all_params = trace.all_lrs, trace.all_params
    steps = all_lrs.shape[1]
    expected = torch.tensor([OneCycle(steps, args.max_lr)(k) for k in range(steps)])
    lr_agree = bool((all_lrs == all_lrs[0]).all())
    params_agree = bool((all_params == all_params[0]).all())
    follows_schedule = bool(torch.allclose(all_lrs[0], expected.to(all_lrs), rtol=1e-12))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    max_row_norm = max(float(m.weight.detach().norm(dim=1).max()) for m in linears)

    print(f"world size: {trainer.world_size}")
    print(f"optimizer steps per rank: {steps}")
    for rank, lrs in enumerate(all_lrs.tolist()):
        peak = max(range(steps), key=lrs.__getitem__)
        print(
            f"rank {rank}: lr start {lrs[0]:.6f}, peak {lrs[peak]:.6f} at step {peak}, "
            f"end {lrs[-1]:.6f}"
        )
    print(f"LR traces identical on every rank: {lr_agree}")
    print(f"weights identical on every rank: {params_agree}")
    schedule = f"OneCycle(total_steps={steps}, max_lr={args.max_lr})"
    print(f"LR trace equals {schedule}: {follows_schedule}")
    print(f"max row norm: {max_row_norm:.4f} (max_norm={args.max_norm})")
    print(f"validation accuracy: {val_acc:.4f}")
    return {
        "world_size": trainer.world_size,
        "steps": steps,
        "lr_agree": lr_agree,
        "params_agree": params_agree,
        "follows_schedule": follows_schedule,
        "max_row_norm": max_row_norm,
        "val_acc": val_acc,
    }


if __name__ == "__main__":
    main()
