"""Demo code that sits beside the library, as ``lightning.pytorch.demos`` does in Lightning.

- :mod:`lightning_reg.demos.data`: the offline digits data module and Fashion-MNIST.
- :mod:`lightning_reg.demos.mlp`: :class:`RegularizedMLP`, the ready MLP classifier.
- :mod:`lightning_reg.demos.report`: the end-of-run report of the ``lightning-reg`` command.
- :mod:`lightning_reg.demos.cli`: the ``lightning-reg`` command (``LightningCLI``).

The data module needs the ``data`` extra (scikit-learn); the report and the command need the
``cli`` extra.
"""

from lightning_reg.demos.data import DigitsDataModule, FashionMNISTDataModule, load_digits_tensors
from lightning_reg.demos.mlp import RegularizedMLP

__all__ = ["DigitsDataModule", "FashionMNISTDataModule", "RegularizedMLP", "load_digits_tensors"]
