"""Lightning plumbing the callbacks share: finding callbacks and each epoch's accumulation, refusing
FSDP1, owning optimizer hooks for a fit."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, GradientAccumulationScheduler
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

__all__ = ["HookOwner", "accumulation", "callbacks_of", "refuse_fsdp1"]

_C = TypeVar("_C", bound=Callback)


def callbacks_of(trainer: pl.Trainer, kind: type[_C]) -> list[_C]:
    """The Trainer's callbacks of type ``kind``."""
    callbacks: list[Callback] = trainer.callbacks  # type: ignore[attr-defined]
    return [cb for cb in callbacks if isinstance(cb, kind)]


def accumulation(trainer: pl.Trainer) -> Callable[[int], int]:
    """Each epoch's gradient accumulation: ``GradientAccumulationScheduler``'s (which sets the
    Trainer's only when its epoch starts), else the Trainer's ``accumulate_grad_batches``.

    Examples:
        >>> accumulation(pl.Trainer(accumulate_grad_batches=4, logger=False))(0)
        4
    """
    gas = callbacks_of(trainer, GradientAccumulationScheduler)
    return gas[0].get_accumulate_grad_batches if gas else lambda _: trainer.accumulate_grad_batches


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


class HookOwner(Callback):
    """A callback that registers optimizer hooks for a fit in ``handles`` and removes them when
    the fit ends, normally (``teardown``) or by an exception (``on_exception``).

    Examples:
        >>> HookOwner().handles
        []
    """

    def __init__(self) -> None:
        self.handles: list[RemovableHandle] = []

    def remove_hooks(self) -> None:
        """Remove the hooks registered so far."""
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def release(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Remove the hooks of the last fit (extend it to drop more per-fit state)."""
        self.remove_hooks()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.release(trainer, pl_module)

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.release(trainer, pl_module)
