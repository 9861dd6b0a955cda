"""Small datasets that ship offline, wrapped as ``LightningDataModule``s.

The default data of every example, test and of the main job is scikit-learn's
``load_digits`` (1,797 8x8 greyscale digits, bundled with scikit-learn), so nothing
is downloaded at run time.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["DigitsDataModule", "load_digits_tensors"]


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """Return scikit-learn's digits as ``(x, y)``: ``x`` float32 ``(1797, 64)``, ``y`` int64.

    Raises:
        ImportError: if scikit-learn is not installed (``pip install "lightning-reg[data]"``).

    Example::

        x, y = load_digits_tensors()
        assert x.shape == (1797, 64) and int(y.max()) == 9
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "The digits data needs scikit-learn: "
            'install it with `pip install "lightning-reg[data]"`.'
        ) from err
    bunch = load_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float32)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    return x, y


class DigitsDataModule(pl.LightningDataModule):
    """scikit-learn's digits, standardized and split into train/val/test with a fixed seed.

    Features are standardized with the training split's mean and standard deviation
    (a constant pixel keeps standard deviation 1), so every split sees the same transform.

    Args:
        batch_size: mini-batch size of every loader. Default ``64``.
        val_fraction: share of the samples held out for validation. Default ``0.15``.
        test_fraction: share of the samples held out for testing. Default ``0.15``.
        seed: seed of the split permutation. Default ``0``.
        num_workers: ``DataLoader`` workers. Default ``0`` (the data is tiny and in memory).

    Raises:
        ValueError: if a fraction is outside ``[0, 1)`` or both together leave no training data,
            or ``batch_size < 1``.

    Example::

        dm = DigitsDataModule(batch_size=32)
        trainer = Trainer(max_epochs=3)
        trainer.fit(model, datamodule=dm)
    """

    num_features = 64
    num_classes = 10

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an integer >= 1, got {batch_size!r}.")
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {value!r}.")
        if val_fraction + test_fraction >= 1.0:
            raise ValueError(
                "`val_fraction + test_fraction` must be < 1 to leave training data, got "
                f"{val_fraction} + {test_fraction}."
            )
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.num_workers = num_workers
        self.save_hyperparameters()
        self._splits: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        x, y = load_digits_tensors()
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
        n_val = round(self.val_fraction * len(x))
        n_test = round(self.test_fraction * len(x))
        test_idx, val_idx, train_idx = (
            perm[:n_test],
            perm[n_test : n_test + n_val],
            perm[n_test + n_val :],
        )
        mean = x[train_idx].mean(0)
        std = x[train_idx].std(0)
        std = torch.where(std > 0, std, torch.ones_like(std))
        x = (x - mean) / std
        self._splits = {
            "train": TensorDataset(x[train_idx], y[train_idx]),
            "val": TensorDataset(x[val_idx], y[val_idx]),
            "test": TensorDataset(x[test_idx], y[test_idx]),
        }

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader[Any]:
        self.setup()
        return DataLoader(
            self._splits[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader[Any]:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader[Any]:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader[Any]:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader[Any]:
        return self._loader("test")
