"""The max-norm weight constraint as a Lightning callback."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_reg._validation import check_positive
from lightning_reg.penalties import (
    DEFAULT_MAX_NORM_MODULES,
    _check_max_norm_modules,
    _check_norm_type,
    _select_weights,
    apply_max_norm_,
)

__all__ = ["MaxNorm"]


class MaxNorm(Callback):
    """Keep every output unit's incoming weight vector within a norm of ``max_value``.

    After each optimizer step, every row of a Linear weight (whole output filter of a Conv weight)
    whose ``norm_type``-norm exceeds ``max_value`` is rescaled to that norm, exactly as
    ``torch.renorm(w, norm_type, 0, max_value)``, fused over all weights by
    :func:`~lightning_reg.penalties.apply_max_norm_`. Biases and normalization parameters are never
    touched, nor are frozen weights.

    When it acts: in ``on_train_batch_end``, only if ``trainer.global_step`` advanced since it last
    acted, so once per real optimizer step: under ``accumulate_grad_batches=4`` once every 4
    batches. It does not act before the first update (as Keras constraints, it follows updates).
    Under manual optimization ``global_step`` counts ``optimizer.step()`` calls, so it acts after
    each batch that stepped at least one optimizer, once however many steps that batch took. A
    mixed-precision step skipped by the gradient scaler still advances ``global_step``; acting then
    changes nothing, since rows already within the bound stay bit-identical. Under DDP every rank
    holds the same weights and computes the same result; FSDP2 parameters (``DTensor`` sharded on
    dim 0) are constrained shard by shard, each shard holding whole rows.

    Args:
        max_value: the largest allowed norm, finite and ``> 0``. Default ``1.0``.
        modules: layer types whose ``.weight`` is constrained, a non-empty tuple without transposed
            convolutions. Default ``(nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)``; add
            ``nn.Embedding`` to bound embedding vectors too.
        norm_type: ``p`` of the p-norm, a number ``>= 1`` or ``math.inf``. Default ``2.0``.

    Raises:
        TypeError: if an argument has the wrong type.
        ValueError: if ``max_value`` or ``norm_type`` is out of range, or ``modules`` holds a
            transposed convolution.
        MisconfigurationException: when fitting starts and the model has no trainable weight in a
            layer of ``modules``.

    Example::

        from lightning.pytorch import Trainer
        from lightning_reg.callbacks import MaxNorm

        trainer = Trainer(max_epochs=5, callbacks=[MaxNorm(max_value=3.0)])
        trainer.fit(model, datamodule=dm)
    """

    def __init__(
        self,
        max_value: float = 1.0,
        modules: tuple[type[nn.Module], ...] = DEFAULT_MAX_NORM_MODULES,
        norm_type: float = 2.0,
    ) -> None:
        self.max_value = check_positive("max_value", max_value)
        _check_max_norm_modules("modules", modules)
        self.modules = modules
        self.norm_type = _check_norm_type(norm_type)
        self._last_step = 0
        self._weights: list[nn.Parameter] = []

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments, so that ``MaxNorm(**callback.get_config())`` is equal."""
        return {"max_value": self.max_value, "modules": self.modules, "norm_type": self.norm_type}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if isinstance(trainer.strategy, FSDPStrategy):
            raise MisconfigurationException(
                "MaxNorm cannot run under `strategy='fsdp'` (FSDP1): its flattened parameter "
                "shards split rows across ranks, so per-row norms would be wrong. Use FSDP2: "
                "`ModelParallelStrategy` with `fully_shard` in `configure_model` (every shard "
                "then holds whole rows), or DDP."
            )
        # Selected once per fit (after `configure_model`), not walked again every step.
        self._weights = _select_weights(pl_module, self.modules)
        if not self._weights:
            kinds = ", ".join(m.__name__ for m in self.modules)
            raise MisconfigurationException(
                f"MaxNorm found no trainable weight of a layer of type {kinds} in "
                f"{type(pl_module).__name__}: pass the layer types to constrain as `modules`."
            )

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if trainer.global_step > self._last_step:
            apply_max_norm_(self._weights, self.max_value, self.norm_type)
            self._last_step = trainer.global_step

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_step = state_dict["last_step"]
