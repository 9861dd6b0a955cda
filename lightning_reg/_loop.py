"""Where the Trainer's fit loop stands, read the same way by every part of the package."""

from __future__ import annotations

import lightning.pytorch as pl


def batches_that_stepped(trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
    """The training batches before the current one that stepped, the count Lightning's
    ``log_every_n_steps`` is applied to.

    Under automatic optimization that is ``trainer.global_step`` (one optimizer step per batch
    that stepped). Under manual optimization ``global_step`` counts every optimizer's step, so the
    batches are counted instead (no gradient accumulation applies there).
    """
    if pl_module.automatic_optimization:
        return trainer.global_step
    return trainer.fit_loop.epoch_loop.batch_progress.total.ready - 1
