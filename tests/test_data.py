"""The data modules: digits splits and standardization, Fashion-MNIST's preprocessing and errors."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_reg.demos.data import (
    DigitsDataModule,
    FashionMNISTDataModule,
    fashion_mnist_splits,
    load_digits_tensors,
    stratified_split,
)

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


def test_digits_splits_are_stratified_seeded_and_standardized_with_train_statistics() -> None:
    from sklearn.model_selection import train_test_split

    dm = DigitsDataModule(val_fraction=0.2, test_fraction=0.1, seed=3)
    dm.setup()
    x, y = load_digits_tensors()
    n_test, n_val = round(0.1 * len(x)), round(0.2 * len(x))
    # The reference: scikit-learn's stratified split, test first, then validation of the rest.
    rest, test_idx = train_test_split(
        np.arange(len(x)), test_size=n_test, stratify=y.numpy(), random_state=3
    )
    train_idx, val_idx = train_test_split(
        rest, test_size=n_val, stratify=y.numpy()[rest], random_state=3
    )
    mean, std = x[train_idx].mean(0), x[train_idx].std(0)
    std[std == 0] = 1.0
    counts = y.bincount()
    for split, idx in (("train", train_idx), ("val", val_idx), ("test", test_idx)):
        xs, ys = dm._splits[split].tensors
        torch.testing.assert_close(xs, (x[idx] - mean) / std)
        assert torch.equal(ys, y[idx])
        # Stratified: each class within one example of its share of the data.
        share = counts * len(idx) / len(x)
        assert (ys.bincount(minlength=10) - share).abs().max() <= 1.0
    assert sorted([*train_idx, *val_idx, *test_idx]) == list(range(len(x)))
    assert len(dm.train_dataloader().dataset) == len(x) - n_test - n_val  # type: ignore[arg-type]


def test_stratified_split_holds_out_nothing_for_a_zero_fraction() -> None:
    y = load_digits_tensors()[1]
    kept, held = stratified_split(y, 0, seed=0)
    assert torch.equal(kept, torch.arange(len(y))) and len(held) == 0
    dm = DigitsDataModule(val_fraction=0.0, test_fraction=0.0)
    dm.setup()
    assert len(dm._splits["train"]) == len(y) and len(dm._splits["test"]) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "`batch_size` must be an integer >= 1, got 0."),
        ({"val_fraction": 1.0}, "`val_fraction` must be a finite number in [0, 1), got 1.0."),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "`val_fraction + test_fraction` must be < 1"),
        (
            {"val_fraction": 0.003},
            "`val_fraction` leaves 5 of the 1797 digits in its split; a stratified split holds 0",
        ),
        (
            {"val_fraction": 0.5, "test_fraction": 0.497},
            "`1 - val_fraction - test_fraction` leaves 6 of the 1797 digits",
        ),
    ],
)
def test_digits_rejects_bad_arguments(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        DigitsDataModule(**kwargs)  # type: ignore[arg-type]


def fake_fashion(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
    images[:, 0, 0] = 7  # a constant pixel keeps standard deviation 1
    return images, torch.randint(0, 10, (n,), generator=g)


def test_fashion_mnist_splits_flatten_and_standardize_with_train_statistics() -> None:
    train_images, train_labels = fake_fashion(200, seed=0)
    test_images, test_labels = fake_fashion(30, seed=1)
    splits = fashion_mnist_splits(train_images, train_labels, test_images, test_labels, 0.25, 5)
    perm = torch.randperm(200, generator=torch.Generator().manual_seed(5))
    val_idx, train_idx = perm[:50], perm[50:]
    x = train_images.reshape(200, 784).double() / 255
    mean, std = x[train_idx].mean(0), x[train_idx].std(0)
    std[std == 0] = 1.0
    expected = {
        "train": ((x[train_idx] - mean) / std, train_labels[train_idx]),
        "val": ((x[val_idx] - mean) / std, train_labels[val_idx]),
        "test": ((test_images.reshape(30, 784).double() / 255 - mean) / std, test_labels),
    }
    for name, (ex, ey) in expected.items():
        xs, ys = splits[name].tensors
        assert xs.dtype == torch.float32 and ys.dtype == torch.int64
        torch.testing.assert_close(xs.double(), ex, atol=1e-5, rtol=1e-5)
        assert torch.equal(ys, ey)
    assert splits["train"].tensors[0][:, 0].abs().max() == 0  # the constant pixel


def test_fashion_mnist_module_is_configured_without_torchvision() -> None:
    dm = FashionMNISTDataModule(data_dir=Path("somewhere"), batch_size=32, val_fraction=0.2)
    assert (dm.num_features, dm.num_classes, dm.data_dir) == (784, 10, "somewhere")
    assert dm.hparams["batch_size"] == 32 and dm.hparams["val_fraction"] == 0.2


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"batch_size": 0}, ValueError, "`batch_size` must be an integer >= 1, got 0."),
        (
            {"val_fraction": -0.1},
            ValueError,
            r"`val_fraction` must be a finite number in \[0, 1\), got -0.1.",
        ),
        ({"download": "yes"}, TypeError, "`download` must be a bool, got 'yes'."),
    ],
)
def test_fashion_mnist_rejects_bad_arguments(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        FashionMNISTDataModule(**kwargs)  # type: ignore[arg-type]


@pytest.mark.skipif(HAS_TORCHVISION, reason="torchvision is installed")
@pytest.mark.parametrize("hook", ["prepare_data", "setup"])
def test_fashion_mnist_without_torchvision_says_what_to_install(tmp_path: Path, hook: str) -> None:
    dm = FashionMNISTDataModule(data_dir=tmp_path)
    with pytest.raises(ImportError, match=r"`pip install torchvision`.*DigitsDataModule"):
        getattr(dm, hook)()


@pytest.mark.skipif(not HAS_TORCHVISION, reason="needs torchvision")
def test_fashion_mnist_missing_files_say_what_to_do(tmp_path: Path) -> None:
    dm = FashionMNISTDataModule(data_dir=tmp_path, download=False)
    with pytest.raises(RuntimeError, match=r"could not be found in .*DigitsDataModule"):
        dm.setup("fit")
