"""The ``lightning-reg`` command: Lightning's ``LightningCLI`` set up for the default experiment.

``lightning-reg fit`` with no arguments trains :class:`~lightning_reg.demos.RegularizedMLP` (ELU,
He init, dropout 0.2, l2 1e-4, max-norm 3) on the offline digits data with the 1cycle policy,
tests it, and writes a report (schedule and learning-curve plots, an MC-dropout summary) into the
run's folder. Every option is a command-line flag and a YAML key; ``lightning-reg configs`` lists
the example configs. The command needs the ``cli`` extra (``pip install "lightning-reg[cli]"``);
:func:`main` checks for it before anything else.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from argparse import Action
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.strategies import StrategyRegistry
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.model_helpers import is_overridden
from packaging.requirements import Requirement
from typing_extensions import override

from lightning_reg.callbacks import LRCallback
from lightning_reg.demos.mlp import RegularizedMLP
from lightning_reg.demos.report import (
    OptimizerTrace,
    ReportOptions,
    format_summary,
    write_report,
)

__all__ = [
    "CLI_REQUIREMENTS",
    "DEFAULTS",
    "LightningRegCLI",
    "config_names",
    "config_path",
    "main",
    "missing_requirements",
    "plain_help",
]

CLI_REQUIREMENTS: tuple[str, ...] = (
    "jsonargparse[signatures]>=4.39.0",
    "scikit-learn>=1.4.2",
    "matplotlib>=3.8.4",
    "mlxtend>=0.23.0",
)
"""What the command needs beyond the library: the ``cli`` extra of ``pyproject.toml``."""

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

_DESCRIPTION = (
    "lightning-reg: train the default experiment (RegularizedMLP on the offline digits, 1cycle, "
    "l2 + dropout + max-norm) or your variant of it, then test it and write a report. Every "
    "option is a flag and a YAML key. `lightning-reg configs` lists the example configs."
)
_USAGE = "lightning-reg [-c CONFIG] {fit,validate,test,predict,configs} ..."
_CONFIGS_HELP = (
    "One more subcommand, configs: `lightning-reg configs` lists the example configs that ship "
    "with the package, `lightning-reg configs NAME` prints one, and `lightning-reg configs "
    '--path NAME` prints its file, to run it with `lightning-reg fit --config "$(lightning-reg '
    'configs --path NAME)"`.'
)
_SUBCOMMAND_DESCRIPTIONS = {
    "fit": "Train, then test the model and write the report (plots, MC-dropout table) into the "
    "run's folder <trainer.default_root_dir>/version_<n>/. Options below; the value after "
    "`default:` is the one this command uses.",
    "validate": "Run one validation epoch (give --ckpt_path to load trained weights).",
    "test": "Run one test epoch (give --ckpt_path to load trained weights).",
    "predict": "Predict on the data module's predict loader (give --ckpt_path).",
}


def _installed(requirement: Requirement) -> bool:
    """Whether ``requirement`` (its version and, recursively, its extras) is installed."""
    try:
        installed = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        return False
    if not requirement.specifier.contains(installed, prereleases=True):
        return False
    for extra in requirement.extras:
        for line in metadata.requires(requirement.name) or []:
            nested = Requirement(line)
            if nested.marker is not None and nested.marker.evaluate({"extra": extra}):
                nested.marker = None
                if not _installed(nested):
                    return False
    return True


def missing_requirements(requirements: Sequence[str] = CLI_REQUIREMENTS) -> list[str]:
    """The requirements that are not installed (or too old), in the order given.

    Args:
        requirements: requirement strings (``"name[extra]>=version"``). Default
            :data:`CLI_REQUIREMENTS`.

    Returns:
        The requirement strings whose distribution, version or extra is missing.

    Examples:
        >>> missing_requirements(["torch>=2.0", "no-such-distribution>=1"])
        ['no-such-distribution>=1']
    """
    return [line for line in requirements if not _installed(Requirement(line))]


def _configs_dir() -> Path:
    """Where the example configs are: inside the package after a wheel install, else the
    checkout's ``examples/configs``."""
    packaged = Path(__file__).resolve().parent / "configs"
    return (
        packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "examples/configs"
    )


def config_names() -> list[str]:
    """The names of the example configs (``examples/configs/<name>.yaml``), sorted.

    Examples:
        >>> {"default", "selu"} <= set(config_names())
        True
    """
    return sorted(path.stem for path in _configs_dir().glob("*.yaml"))


def config_path(name: str) -> Path:
    """The file of the example config ``name`` (shipped in the wheel, or in the checkout).

    Args:
        name: a config name from :func:`config_names` (``"selu"`` or ``"selu.yaml"``). Required.

    Returns:
        The path of the YAML file, to pass as ``--config``.

    Raises:
        ValueError: if there is no such config (the message lists the names).

    Examples:
        >>> config_path("selu").name
        'selu.yaml'
    """
    stem = name.removesuffix(".yaml")
    path = _configs_dir() / f"{stem}.yaml"
    if not path.is_file():
        raise ValueError(f"No example config named {name!r}; the configs are {config_names()}.")
    return path


def _configs_command(args: Sequence[str]) -> None:
    """``lightning-reg configs [--path] [NAME]``: list the configs, print one, or its path."""
    args = list(args)
    as_path = "--path" in args
    if as_path:
        args.remove("--path")
    if not args or args[0] in ("-h", "--help"):
        print("Example configs: `lightning-reg configs NAME` prints one, `lightning-reg configs")
        print('--path NAME` its file, to run it: lightning-reg fit --config "$(lightning-reg')
        print('configs --path NAME)"')
        names = config_names()
        width = max(len(name) for name in names) + 2
        for name in names:
            print(f"  {name:<{width}}{config_path(name)}")
        return
    try:
        path = config_path(args[0])
    except ValueError as err:
        raise SystemExit(f"lightning-reg configs: {err}") from None
    print(path if as_path else path.read_text(), end="\n" if as_path else "")


def _data_attribute(name: str) -> Any:
    def read(data: LightningDataModule) -> Any:
        if not hasattr(data, name):
            raise AttributeError(
                f"The model's `{name}` is taken from the data module, but "
                f"{type(data).__name__} has no `{name}` attribute. Give it one (a class "
                "attribute is enough), as DigitsDataModule and FashionMNISTDataModule do."
            )
        return getattr(data, name)

    read.__name__ = name  # how the help's "Linked arguments" section names it
    return read


def _innermost(err: BaseException) -> BaseException:
    """The exception ``err`` wraps through ``__cause__`` and quotes, or ``err`` itself."""
    while isinstance(err.__cause__, (ValueError, TypeError)) and str(err.__cause__) in str(err):
        err = err.__cause__
    return err


_NAMES = re.compile(r"`(\w+)(?:=[^`]*)?`")


def _flags_named(message: str, config: Any) -> list[str]:
    """The flags of the config keys that ``message`` names in backquotes (```dropout```, or
    ```optimizer='adamw'```), in order: ``["--model.dropout"]``. A name several keys end in
    (``max_lr`` of the schedule and of its range test) gives the keys whose value the message
    quotes, or all of them."""
    leaves: dict[str, list[str]] = {}
    for key in config.keys():  # noqa: SIM118 (a Namespace: keys() gives the nested, dotted keys)
        leaves.setdefault(key.rpartition(".")[2], []).append(key)
    flags: list[str] = []
    for name in dict.fromkeys(_NAMES.findall(message)):
        keys = leaves.get(name, [])
        quoted = [key for key in keys if repr(config[key]) in message]
        for key in quoted or keys:
            flags.append("--" + key.replace(".init_args.", "."))
    return flags


def _test_tensors(data: LightningDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    """All batches of the data module's test loader, concatenated into ``(x, y)``."""
    xs, ys = zip(*data.test_dataloader(), strict=True)
    return torch.cat(xs), torch.cat(ys)


_ROLE = re.compile(r":[a-z]+:`~?(?:[\w.]*\.)?([^`.]+)`")
_LINK = re.compile(r"`([^`<]+?)\s*<([^>]+)>`_")
_DEFAULT_SENTENCE = re.compile(r"\s*Default:?\s+``[^`]*``(?:\s*\([^)]*\))?\.")


def plain_help(text: str) -> str:
    """A docstring's argument description as plain help text: reST roles and literals become
    plain words, and its ``Default ...`` sentence is dropped (the help prints the default the
    command really uses after it).

    Examples:
        >>> plain_help("dropout of :meth:`dense` blocks, in ``[0, 1)``. Default ``0.0``.")
        'dropout of dense blocks, in [0, 1).'
        >>> plain_help("see `the notes <https://example.org/notes>`_.")
        'see the notes (https://example.org/notes).'
    """
    text = _DEFAULT_SENTENCE.sub("", text)
    text = _LINK.sub(r"\1 (\2)", text)
    return _ROLE.sub(r"\1", text).replace("``", "")


def _help_formatter() -> type:
    """jsonargparse's help formatter with :func:`plain_help` applied to every description."""
    from jsonargparse import DefaultHelpFormatter

    class PlainHelpFormatter(DefaultHelpFormatter):
        @override
        def _get_help_string(self, action: Action) -> str:
            # argparse's documented way to change help text (ArgumentDefaultsHelpFormatter
            # overrides this method too); jsonargparse's formatter appends type and default.
            return plain_help(super()._get_help_string(action))

        @override
        def start_section(self, heading: str | None) -> None:
            # Group headings are the first line of each class's docstring: keep its first sentence
            # (argparse adds the colon).
            if heading is not None:
                heading = plain_help(heading)
                if ". " in heading:
                    heading = heading.split(". ", 1)[0]
            super().start_section(heading)

    return PlainHelpFormatter


class LightningRegCLI(LightningCLI):
    """``LightningCLI`` for :class:`~lightning_reg.demos.RegularizedMLP` with a learning-rate
    callback and an end-of-run report.

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
    (``data: class_path: ...``), by default :class:`~lightning_reg.demos.DigitsDataModule`. The
    CSV logger writes into ``trainer.default_root_dir``. Optimizer options come from the model
    (``model.optimizer``, ``model.lr``, ``model.momentum``): Lightning's automatic ``optimizer``
    and ``lr_scheduler`` groups are off, since the model builds its optimizer from its penalty
    param groups and the learning-rate callbacks refuse a second scheduler.

    Args:
        args: command-line arguments as a list (``["fit", "--trainer.max_epochs", "3"]``), a dict
            or a ``Namespace``. Default ``None``: ``sys.argv[1:]``.
        run: run the subcommand (``fit``, ``validate``, ``test``, ``predict``) given in
            ``args``. Default ``True``; ``False`` only instantiates the classes.
        exit_on_bad_value: for a value a class rejects, exit (code 2) with one line naming the
            flag and the class's message, as the parser does for a misspelt key, instead of
            raising. Default ``False``; the ``lightning-reg`` command sets it.
        **kwargs: other ``LightningCLI`` arguments (e.g. ``save_config_kwargs``,
            ``parser_kwargs``, ``trainer_defaults``).

    Raises:
        SystemExit: for arguments the parser rejects (unknown key, wrong type), with the parser's
            message.
        ValueError, TypeError: for values the classes reject, with the same message as the
            Python API (e.g. ``model.dropout: 1.5``), unless ``exit_on_bad_value``.

    Examples:
        >>> cli = LightningRegCLI(
        ...     args=["--trainer.max_steps=2", "--trainer.logger=false", "--model.dropout=0.1"],
        ...     run=False,
        ... )
        >>> cli.model.dropout_rate, type(cli.datamodule).__name__
        (0.1, 'DigitsDataModule')
        >>> [type(cb).__name__ for cb in cli.trainer.callbacks if hasattr(cb, "max_lr")]
        ['OneCycleScheduler']
    """

    def __init__(
        self,
        args: ArgsType = None,
        run: bool = True,
        *,
        exit_on_bad_value: bool = False,
        **kwargs: Any,
    ) -> None:
        self.exit_on_bad_value = exit_on_bad_value
        self.trace = OptimizerTrace()  # what schedule.png draws: the LRs of every step
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        parser_kwargs = dict(kwargs.pop("parser_kwargs", None) or {})
        parser_kwargs.setdefault("description", _DESCRIPTION)
        parser_kwargs.setdefault("formatter_class", _help_formatter())
        parser_kwargs.setdefault("prog", "lightning-reg")
        parser_kwargs.setdefault("usage", _USAGE)
        parser_kwargs.setdefault("epilog", _CONFIGS_HELP)
        for subcommand, description in _SUBCOMMAND_DESCRIPTIONS.items():
            sub = parser_kwargs[subcommand] = dict(parser_kwargs.get(subcommand) or {})
            sub.setdefault("description", description)
            sub.setdefault("formatter_class", parser_kwargs["formatter_class"])
        super().__init__(
            RegularizedMLP,
            LightningDataModule,
            subclass_mode_data=True,
            seed_everything_default=0,
            auto_configure_optimizers=False,
            parser_kwargs=parser_kwargs,
            args=args,
            run=run,
            **kwargs,
        )

    def _section(self, key: str, default: Any = None) -> Any:
        """``key`` of the instantiated config (inside the subcommand's part when there is one)."""
        config = self.config_init
        if self.subcommand is not None:
            config = config[self.subcommand]
        return config.get(key, default)

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Not `add_lightning_class_args`: a callback group registered there must not be null.
        # `instantiate_trainer` adds the schedule to the Trainer's callbacks instead.
        parser.add_subclass_arguments(LRCallback, "lr_schedule", required=False)
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

    @override
    def instantiate_classes(self) -> None:
        """Instantiate as ``LightningCLI`` does, but raise a class's own ``ValueError`` or
        ``TypeError`` as is (jsonargparse wraps those of subclass-typed groups in a union error
        that only quotes them), or with ``exit_on_bad_value``, exit with one line naming the
        flag."""
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, MisconfigurationException) as err:
            inner = _innermost(err)
            if not self.exit_on_bad_value:
                raise inner from None
            config = self.config if self.subcommand is None else self.config[self.subcommand]
            flags = ", ".join(_flags_named(str(inner), config))
            where = f"{flags}: " if flags else ""
            self.parser.exit(2, _error_line(self.subcommand, f"{where}{inner}") + "\n")

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer with the configured callbacks, plus ``lr_schedule`` unless it is null.
        A ``fit`` under a strategy that starts its ranks from this process (``ddp_spawn``,
        ``ddp_fork``, ``ddp_notebook``) is refused with a ``ValueError`` naming ``ddp``: the
        report after fit reads the run's state, which those ranks keep to themselves."""
        strategy = self._section("trainer", {}).get("strategy")
        registered = isinstance(strategy, str) and strategy in StrategyRegistry
        start = (
            StrategyRegistry[strategy]["init_params"].get("start_method") if registered else None
        )
        if self.subcommand == "fit" and start in ("spawn", "fork"):
            raise ValueError(
                f"`strategy={strategy!r}` starts the ranks from this process, which then holds "
                "none of the run's state, so the report after fit would be split or missing. Use "
                "`--trainer.strategy ddp`: Lightning runs the command on every rank."
            )
        schedule = self._section("lr_schedule")
        if "callbacks" not in kwargs:
            trainer = self._section("trainer", {})
            configured = trainer.get("callbacks") or []
            if not isinstance(configured, list):
                configured = [configured]
            ours = [self.trace] if schedule is None else [schedule, self.trace]
            if trainer.get("enable_checkpointing") is not False and not any(
                isinstance(cb, ModelCheckpoint) for cb in configured
            ):
                # Lightning's default checkpoint, given explicitly: Lightning then shows no
                # "Tip" about its model registry.
                ours.append(ModelCheckpoint())
            kwargs["callbacks"] = [*configured, *ours]
        # Lightning reports while building the Trainer (devices found, a "Tip" about its
        # experiment platform) at INFO level on this logger: keep the command's output to the run.
        rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
        level = rank_zero.level
        rank_zero.setLevel(logging.WARNING)
        try:
            return super().instantiate_trainer(**kwargs)
        finally:
            rank_zero.setLevel(level)

    def after_fit(self) -> None:
        """Test the trained model and write the report (``report.enabled``), on rank zero."""
        options: ReportOptions = self._section("report")
        if not options.enabled or self.trainer.interrupted:
            return
        trainer, data = self.trainer, self.datamodule
        val_acc = trainer.callback_metrics.get("val/acc")
        has_test = data is not None and is_overridden("test_dataloader", data, LightningDataModule)
        test_acc = None
        if has_test:
            test_acc = trainer.test(self.model, datamodule=data)[0].get("test/acc")
        # `log_dir` is broadcast from rank 0 under DDP: every rank reads it.
        out_dir = Path(trainer.log_dir or trainer.default_root_dir)
        if not trainer.is_global_zero:
            return
        test_data = _test_tensors(data) if has_test else None
        written = write_report(out_dir, self.model, test_data, options.mc_samples, self.trace)
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

    First checks that the ``cli`` extra is installed (:data:`CLI_REQUIREMENTS`); if not, exits
    with one line naming ``pip install "lightning-reg[cli]"`` before anything is parsed or
    written. ``lightning-reg configs [--path] [NAME]`` lists the example configs, prints one, or
    prints its file's path; anything else goes to :class:`LightningRegCLI`.

    Args:
        args: the arguments after ``lightning-reg`` as a list, or ``None`` for ``sys.argv[1:]``.
            Default ``None``.

    Raises:
        SystemExit: when the ``cli`` extra is missing (code 1), for arguments the parser rejects
            and values a class rejects (code 2, one line naming the flag and the allowed range:
            ``lightning-reg fit: error: --model.dropout: `dropout` must be a finite number in
            [0, 1), got 1.5.``), for a ``ValueError`` or ``MisconfigurationException`` that
            this package raises while the run starts (code 2, its message on one line: a
            schedule the Trainer's plan cannot hold, say; errors raised elsewhere keep their
            traceback), and for ``--help``/``--print_config`` (code 0).

    Examples:
        >>> main(["configs", "selu"])  # doctest: +ELLIPSIS
        # A self-normalizing net: SELU picks LeCun normal init ...
        model:
          hidden: [128, 128, 128]
          activation: selu
        ...
    """
    missing = missing_requirements()
    if missing:
        raise SystemExit(
            f"lightning-reg: the command needs the `cli` extra (missing: {', '.join(missing)}); "
            'install it with: pip install "lightning-reg[cli]"'
        )
    argv = sys.argv[1:] if args is None else args
    if isinstance(argv, list | tuple) and argv and argv[0] == "configs":
        _configs_command(argv[1:])
        return
    try:
        LightningRegCLI(args=args, exit_on_bad_value=True)
    except (ValueError, MisconfigurationException) as err:
        if not _raised_by_this_package(err):
            raise
        names = LightningCLI.subcommands()
        given = argv if isinstance(argv, list | tuple) else []
        subcommand = next((arg for arg in given if arg in names), None)
        print(_error_line(subcommand, str(err)), file=sys.stderr)
        raise SystemExit(2) from None


def _error_line(subcommand: str | None, message: str) -> str:
    """The command's one-line error: ``lightning-reg fit: error: <message>``."""
    return f"{' '.join(filter(None, ('lightning-reg', subcommand)))}: error: {message}"


def _raised_by_this_package(err: BaseException) -> bool:
    """Whether the innermost frame of ``err``'s traceback is in ``lightning_reg``: our own
    checks, whose messages say what to change, as opposed to a fault worth its traceback."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    package = Path(__file__).resolve().parents[1]
    return tb is not None and package in Path(tb.tb_frame.f_code.co_filename).resolve().parents


if __name__ == "__main__":  # `python -m lightning_reg.demos.cli ...`
    main()
