"""Two pieces of Lightning plumbing the regularizers share: refusing FSDP1, dropping hooks."""

from __future__ import annotations

from collections.abc import Iterable

import lightning.pytorch as pl
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.hooks import RemovableHandle

__all__ = ["refuse_fsdp1", "remove_handles"]


def refuse_fsdp1(trainer: pl.Trainer, who: str, why: str) -> None:
    """Raise if ``trainer`` runs ``strategy="fsdp"`` (FSDP1), saying ``why`` ``who`` cannot.

    Examples:
        >>> refuse_fsdp1(pl.Trainer(accelerator="cpu", logger=False), "MaxNorm", "rows split")
    """
    if isinstance(trainer.strategy, FSDPStrategy):
        raise MisconfigurationException(
            f"{who} cannot run under `strategy='fsdp'` (FSDP1): {why}. Use FSDP2 "
            "(`ModelParallelStrategy` with `fully_shard` in `configure_model`, where every shard "
            "holds whole rows of a weight) or DDP."
        )


def remove_handles(handles: Iterable[RemovableHandle]) -> list[RemovableHandle]:
    """Remove every hook of ``handles``; return an empty list to hold the next ones.

    Examples:
        >>> remove_handles([])
        []
    """
    for handle in handles:
        handle.remove()
    return []
