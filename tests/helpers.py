"""Shared test helpers: a tiny real classifier on scikit-learn's digits, a quiet Trainer, and a
script (a benchmark, an example) run in this process as its command line runs it."""

from __future__ import annotations

import logging
import runpy
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_reg import RegularizedModule
from lightning_reg.demos.data import load_digits_tensors

_DIGITS: tuple[torch.Tensor, torch.Tensor] | None = None

# The time limit of a test's subprocess: a guard against a hang, never a speed check. A loaded
# machine (many test runs on two cores) stretches a 20-second job several times over, not 60.
HANG_GUARD_S = 1200.0


def digits(n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardized digits (cached); the first ``n`` samples if given."""
    global _DIGITS
    if _DIGITS is None:
        x, y = load_digits_tensors()
        std = x.std(0)
        x = (x - x.mean(0)) / torch.where(std > 0, std, torch.ones_like(std))
        _DIGITS = (x, y)
    x, y = _DIGITS
    return (x[:n], y[:n]) if n is not None else (x, y)


def digits_loader(n: int = 256, batch_size: int = 32, shuffle: bool = False) -> DataLoader[Any]:
    x, y = digits(n)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)


class DigitsClassifier(pl.LightningModule):
    """A small MLP on the 64 digit pixels. ``optimizer`` is "sgd", "adam", "adamw" or "rmsprop"."""

    def __init__(
        self,
        optimizer: str = "sgd",
        lr: float = 0.05,
        momentum: float = 0.9,
        hidden: int = 32,
        val_loss: bool = True,
    ) -> None:
        super().__init__()
        self.optimizer_name = optimizer
        self.lr = lr
        self.momentum = momentum
        self.log_val_loss = val_loss
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        if self.log_val_loss:
            self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> Any:
        params = self.parameters()
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum)
        if self.optimizer_name == "adam":
            return torch.optim.Adam(params, lr=self.lr)
        if self.optimizer_name == "adamw":
            return torch.optim.AdamW(params, lr=self.lr)
        if self.optimizer_name == "rmsprop":
            return torch.optim.RMSprop(params, lr=self.lr)
        raise ValueError(self.optimizer_name)


def make_trainer(root: Any, **kwargs: Any) -> pl.Trainer:
    """A quiet CPU Trainer writing under ``root``; keyword arguments override the defaults."""
    defaults: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        default_root_dir=str(root),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def fit(
    root: Any,
    model: pl.LightningModule | None = None,
    train: DataLoader[Any] | None = None,
    val: DataLoader[Any] | None = None,
    **trainer_kwargs: Any,
) -> pl.Trainer:
    """The suite's fit: ``make_trainer(root, **trainer_kwargs).fit(model, train, val)``; returns
    the Trainer (the model is ``trainer.lightning_module``).

    Defaults: a ``DigitsClassifier`` drawn after ``torch.manual_seed(0)``, trained on the first
    256 digits in order, in batches of 32 (``digits_loader()``), without validation. A test file
    wraps it (with its recorders, its model) rather than writing its own Trainer set-up.
    """
    if model is None:
        torch.manual_seed(0)
        model = DigitsClassifier()
    trainer = make_trainer(root, **trainer_kwargs)
    trainer.fit(model, train if train is not None else digits_loader(), val)
    return trainer


class DigitsRegressor(RegularizedModule):
    """A ``RegularizedModule`` regressing 2 outputs from the 64 digit pixels: two dense layers
    (with the module's dropout), a linear head; MC dropout summarizes it as a regression."""

    mc_task = "regression"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        torch.manual_seed(0)
        self.body = nn.Sequential(self.dense(64, 32), self.dense(32, 32))
        self.head = self.apply_init(nn.Linear(32, 2), activation="identity")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def run_as_script(path: Path, *args: str) -> None:
    """Run ``python PATH ARGS`` in this process: the file's ``__main__`` block, with ``sys.argv``
    as that command sets it and the file's folder first on ``sys.path`` (its sibling imports).

    What scripts set for their whole process is put back after: ``sys.argv``, ``sys.path``,
    torch's thread count and the level of Lightning's loggers. Read the output with ``capsys``.
    """
    argv, path_before, threads = sys.argv, sys.path[:], torch.get_num_threads()
    loggers = [logging.getLogger(f"lightning{sub}") for sub in ("", ".pytorch", ".fabric")]
    levels = [logger.level for logger in loggers]
    sys.argv = [str(path), *args]
    sys.path.insert(0, str(path.parent))
    try:
        runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = argv, path_before
        torch.set_num_threads(threads)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def few_batches(monkeypatch: pytest.MonkeyPatch, batches: int = 4) -> None:
    """Every Trainer built without limits of its own runs ``batches`` batches per epoch of its
    train, validation and test loops (Lightning's ``PL_TRAINER_*`` defaults), for this test: code
    quoted in the docs runs as written, at toy size."""
    for loop in ("TRAIN", "VAL", "TEST"):
        monkeypatch.setenv(f"PL_TRAINER_LIMIT_{loop}_BATCHES", str(batches))
