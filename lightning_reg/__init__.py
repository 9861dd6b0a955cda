"""lightning-reg: learning-rate scheduling and regularization for PyTorch Lightning."""

from lightning_reg.data import DigitsDataModule, load_digits_tensors

__all__ = ["DigitsDataModule", "load_digits_tensors"]
__version__ = "0.1.0"
