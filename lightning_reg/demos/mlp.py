"""The ready-made MLP classifier of the demos: :class:`RegularizedMLP`.

It is the model of the ``lightning-reg`` command and of the examples; the library parts it is
built from (:class:`~lightning_reg.RegularizedModule`) live in :mod:`lightning_reg.module`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lightning_reg._validation import check_int, check_positive
from lightning_reg.module import RegularizedModule

__all__ = ["RegularizedMLP"]

_OPTIMIZERS = ("sgd", "adam", "adamw", "nadam")


class RegularizedMLP(RegularizedModule):
    """A multilayer-perceptron classifier built from :meth:`RegularizedModule.dense` blocks.

    Flattens the input, applies the dense blocks and a Linear output layer (initialized for
    no activation), and trains with cross-entropy. Logs ``train/loss`` (without the penalty,
    which is logged as ``train/penalty``), ``train/acc``, ``val/loss`` (also as ``val_loss``
    for callbacks, the default monitor of ``PerformanceScheduler``, but not to the logger),
    ``val/acc``, ``test/loss`` and ``test/acc``.
    ``Trainer.predict`` returns class probabilities (softmax of the logits), or Monte Carlo
    dropout summaries of the probabilities (``mc_task = "classification"``) when ``mc_samples``
    is set.

    Args:
        in_features: input features after flattening, >= 1. Default ``64``.
        num_classes: number of classes, >= 2. Default ``10``.
        hidden: widths of the hidden dense blocks (each >= 1; may be empty). Default
            ``(128, 128)``.
        lr: learning rate, finite and > 0. Default ``0.01``.
        optimizer: ``"sgd"`` (with ``momentum``), ``"adam"``, ``"adamw"`` (torch's default
            decoupled decay on the penalized weights only) or ``"nadam"``. Default ``"sgd"``.
        momentum: SGD momentum in ``[0, 1)``. Default ``0.9``.
        **regularized_module_kwargs: :class:`RegularizedModule` arguments (``dropout``,
            ``activation``, ``init``, ``l1``, ``l2``, ``max_norm``, ``as_weight_decay``,
            ``mc_samples``).

    Raises:
        TypeError: if an argument has the wrong type.
        ValueError: if an argument is out of range, or ``as_weight_decay=True`` is combined with
            ``optimizer="adamw"``.

    Example:
        >>> import torch
        >>> model = RegularizedMLP(hidden=(128, 128), dropout=0.2, l2=1e-4, max_norm=3.0)
        >>> model(torch.randn(4, 64)).shape  # logits; Trainer.predict gives probabilities
        torch.Size([4, 10])
        >>> model.mc_task  # with mc_samples set, MC summaries of the probabilities
        'classification'
    """

    mc_task = "classification"

    def __init__(
        self,
        in_features: int = 64,
        num_classes: int = 10,
        hidden: Sequence[int] = (128, 128),
        lr: float = 0.01,
        optimizer: str = "sgd",
        momentum: float = 0.9,
        **regularized_module_kwargs: Any,
    ) -> None:
        super().__init__(**regularized_module_kwargs)
        check_int("in_features", in_features, 1)
        check_int("num_classes", num_classes, 2)
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise TypeError(f"`hidden` must be a sequence of integers >= 1, got {hidden!r}.")
        for width in hidden:
            check_int("hidden", width, 1)
        self.lr = check_positive("lr", lr)
        if optimizer not in _OPTIMIZERS:
            raise ValueError(f"`optimizer` must be one of {list(_OPTIMIZERS)}, got {optimizer!r}.")
        if optimizer == "adamw" and self.penalty_config.as_weight_decay:
            raise ValueError(
                "`as_weight_decay=True` needs a coupled weight decay, but `optimizer='adamw'` "
                "decouples it. Use optimizer='sgd', 'adam' or 'nadam', or as_weight_decay=False."
            )
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
            raise TypeError(f"`momentum` must be a number in [0, 1), got {momentum!r}.")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"`momentum` must be a number in [0, 1), got {momentum!r}.")
        self.optimizer_name = optimizer
        self.momentum = float(momentum)
        widths = [in_features, *hidden]
        blocks = [self.dense(a, b) for a, b in itertools.pairwise(widths)]
        head = self.apply_init(nn.Linear(widths[-1], num_classes), activation="identity")
        self.net = nn.Sequential(nn.Flatten(), *blocks, head)
        self.train_acc = MulticlassAccuracy(num_classes)
        self.val_acc = MulticlassAccuracy(num_classes)
        self.test_acc = MulticlassAccuracy(num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape ``(N, num_classes)``."""
        return cast(Tensor, self.net(x))

    def mc_dropout_module(self) -> nn.Module:
        """``self.net``, which is the whole forward pass, so MC dropout runs the layers before
        the first dropout once per input (see :meth:`MCDropoutMixin.mc_dropout_module`); ``self``
        when a subclass overrides ``forward``.

        Example:
            >>> import torch
            >>> isinstance(RegularizedMLP().mc_dropout_module(), torch.nn.Sequential)
            True
        """
        if type(self).forward is not RegularizedMLP.forward:
            return self
        return self.net

    @override
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        """Class probabilities ``softmax(self(x))`` of the batch's input, or with ``mc_samples``
        set, :class:`~lightning_reg.uncertainty.MCDropoutResult` of the probabilities."""
        if self.mc_samples is not None:
            return super().predict_step(batch, batch_idx, dataloader_idx)
        return super().predict_step(batch, batch_idx, dataloader_idx).softmax(-1)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log("train/loss", loss, on_step=True, on_epoch=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, batch: Any, stage: str, accuracy: MulticlassAccuracy) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        accuracy(logits, y)
        # Once per epoch: under DDP the mean over every rank's rows, as the accuracy is.
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True)
        self.log(f"{stage}/acc", accuracy, prog_bar=stage == "val")
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss = self._evaluate(batch, "val", self.val_acc)
        # For callbacks only (PerformanceScheduler's default monitor): metrics.csv keeps one
        # validation-loss column, val/loss.
        self.log("val_loss", loss, logger=False, sync_dist=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = self.penalty_param_groups()
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(groups, lr=self.lr, momentum=self.momentum)
        if self.optimizer_name == "adam":
            return torch.optim.Adam(groups, lr=self.lr)
        if self.optimizer_name == "adamw":
            return torch.optim.AdamW(groups, lr=self.lr)
        return torch.optim.NAdam(groups, lr=self.lr)
