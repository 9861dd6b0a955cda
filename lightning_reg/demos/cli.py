"""The ``lightning-reg`` command: Lightning's ``LightningCLI`` set up for the default experiment.

``lightning-reg fit`` with no arguments trains :class:`~lightning_reg.RegularizedMLP` (ELU, He
init, dropout 0.2, l2 1e-4, max-norm 3) on the offline digits data with the 1cycle policy, tests
it, and writes a report (schedule and learning-curve plots, an MC-dropout summary) into the run's
folder. Every option is a command-line flag and a YAML key; see ``docs/cli.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.model_helpers import is_overridden

from lightning_reg.callbacks import LRCallback
from lightning_reg.demos import RegularizedMLP
from lightning_reg.demos.report import ReportOptions, format_summary, write_report

__all__ = ["DEFAULTS", "LightningRegCLI", "main"]

DEFAULTS: dict[str, Any] = {
    "model.hidden": [128, 128],
    "model.activation": "elu",
    "model.dropout": 0.2,
    "model.l2": 1e-4,
    "model.max_norm": 3.0,
    "data": {"class_path": "lightning_reg.demos.DigitsDataModule"},
    "lr_schedule": {"class_path": "lightning_reg.OneCycleScheduler", "init_args": {"max_lr": 0.1}},
    "trainer.max_epochs": 15,
    "trainer.log_every_n_steps": 10,
    "trainer.default_root_dir": "lightning_reg_runs",
    "trainer.logger": {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"name": ""},
    },
}
"""The defaults of ``lightning-reg fit`` on top of the classes' own (dotted config keys)."""


def _data_attribute(name: str) -> Any:
    def read(data: LightningDataModule) -> Any:
        if not hasattr(data, name):
            raise AttributeError(
                f"The model's `{name}` is taken from the data module, but "
                f"{type(data).__name__} has no `{name}` attribute. Give it one (a class "
                "attribute is enough), as DigitsDataModule and FashionMNISTDataModule do."
            )
        return getattr(data, name)

    return read


def _innermost(err: BaseException) -> BaseException:
    """The exception ``err`` wraps through ``__cause__`` and quotes, or ``err`` itself."""
    while isinstance(err.__cause__, (ValueError, TypeError)) and str(err.__cause__) in str(err):
        err = err.__cause__
    return err


def _test_tensors(data: LightningDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    """All batches of the data module's test loader, concatenated into ``(x, y)``."""
    xs, ys = zip(*data.test_dataloader(), strict=True)
    return torch.cat(xs), torch.cat(ys)


class LightningRegCLI(LightningCLI):
    """``LightningCLI`` for :class:`~lightning_reg.RegularizedMLP` with a learning-rate callback
    and an end-of-run report.

    On top of Lightning's own groups (``trainer``, ``model``, ``data``, ``seed_everything``,
    ``ckpt_path``) it adds:

    * ``lr_schedule``: one learning-rate callback, any subclass of
      :class:`~lightning_reg.LRCallback` (default ``OneCycleScheduler(max_lr=0.1)``;
      ``PerformanceScheduler``, ``ScheduledLR`` or ``null`` for a constant learning rate).
    * ``report``: :class:`~lightning_reg.demos.report.ReportOptions` (after ``fit``: test the
      model and write ``schedule.png``, ``learning_curves.png`` and ``mc_dropout.json`` into the
      run's folder, printing the MC-dropout table and where the files are).

    The model is always ``RegularizedMLP`` (its options sit directly under ``model:``, so configs
    stay short); its ``in_features`` and ``num_classes`` are taken from the data module's
    ``num_features`` and ``num_classes``. The data module may be any ``LightningDataModule``
    (``data: class_path: ...``), by default :class:`~lightning_reg.DigitsDataModule`. The CSV
    logger writes into ``trainer.default_root_dir``. Optimizer options come from the model
    (``model.optimizer``, ``model.lr``, ``model.momentum``): Lightning's automatic ``optimizer``
    and ``lr_scheduler`` groups are off, since the model builds its optimizer from its penalty
    param groups and the learning-rate callbacks refuse a second scheduler.

    Args:
        args: command-line arguments as a list (``["fit", "--trainer.max_epochs", "3"]``), a dict
            or a ``Namespace``. Default ``None``: ``sys.argv[1:]``.
        run: run the subcommand (``fit``, ``validate``, ``test``, ``predict``) given in
            ``args``. Default ``True``; ``False`` only instantiates the classes.
        **kwargs: other ``LightningCLI`` arguments (e.g. ``save_config_kwargs``,
            ``parser_kwargs``, ``trainer_defaults``).

    Raises:
        SystemExit: for arguments the parser rejects (unknown key, wrong type), with the parser's
            message.
        ValueError, TypeError: for values the classes reject, with the same message as the
            Python API (e.g. ``model.dropout: 1.5``).

    Example::

        cli = LightningRegCLI(args=["fit", "--trainer.max_epochs", "5", "--model.dropout", "0.1"])
        print(cli.trainer.callback_metrics["val/acc"])
    """

    def __init__(self, args: ArgsType = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(
            RegularizedMLP,
            LightningDataModule,
            subclass_mode_data=True,
            seed_everything_default=0,
            auto_configure_optimizers=False,
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(
            LRCallback, "lr_schedule", subclass_mode=True, required=False
        )
        parser.add_class_arguments(ReportOptions, "report")
        for name, target in (
            ("num_features", "model.in_features"),
            ("num_classes", "model.num_classes"),
        ):
            parser.link_arguments(
                "data", target, compute_fn=_data_attribute(name), apply_on="instantiate"
            )
        parser.link_arguments("trainer.default_root_dir", "trainer.logger.init_args.save_dir")
        parser.set_defaults(DEFAULTS)

    def instantiate_classes(self) -> None:
        """Instantiate as ``LightningCLI`` does, but raise a class's own ``ValueError`` or
        ``TypeError`` as is (jsonargparse wraps those of subclass-typed groups in a union error
        that only quotes them)."""
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            raise _innermost(err) from None

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer with the configured callbacks, plus ``lr_schedule`` unless it is null."""
        keys = self._parser(self.subcommand).callback_keys
        extra = [self._get(self.config_init, key) for key in keys]
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        return self._instantiate_trainer(config, [cb for cb in extra if cb is not None])

    def after_fit(self) -> None:
        """Test the trained model and write the report (``report.enabled``), on rank zero."""
        options: ReportOptions = self._get(self.config_init, "report")
        if not options.enabled or self.trainer.interrupted:
            return
        trainer, data = self.trainer, self.datamodule
        val_acc = trainer.callback_metrics.get("val/acc")
        has_test = data is not None and is_overridden("test_dataloader", data, LightningDataModule)
        test_acc = None
        if has_test:
            test_acc = trainer.test(self.model, datamodule=data)[0].get("test/acc")
        if not trainer.is_global_zero:
            return
        out_dir = Path(trainer.log_dir or trainer.default_root_dir)
        test_data = _test_tensors(data) if has_test else None
        written = write_report(out_dir, self.model, test_data, options.mc_samples)
        if "mc_dropout" in written:
            print(format_summary(json.loads(written["mc_dropout"].read_text())))
        scores = [
            f"{name} accuracy {float(value):.4f}"
            for name, value in (("validation", val_acc), ("test", test_acc))
            if value is not None
        ]
        if scores:
            print(" | ".join(scores))
        print(f"Outputs in {out_dir}:")
        for path in sorted(out_dir.iterdir()):
            print(f"  {path.name}{'/' if path.is_dir() else ''}")


def main(args: ArgsType = None) -> None:
    """Entry point of the ``lightning-reg`` console script.

    Args:
        args: the arguments after ``lightning-reg`` as a list, or ``None`` for ``sys.argv[1:]``.
            Default ``None``.

    Raises:
        SystemExit: for arguments the parser rejects (and for ``--help``/``--print_config``).
        ValueError, TypeError: for values a class rejects, with the Python API's message.

    Example::

        main(["fit", "--config", "examples/configs/selu.yaml", "--trainer.max_epochs", "3"])
    """
    LightningRegCLI(args=args)
