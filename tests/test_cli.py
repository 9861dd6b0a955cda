"""The ``lightning-reg`` command, run in-process on the offline digits with short budgets."""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import runpy
import sys
import tomllib
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from packaging.requirements import Requirement
from torch import nn

from lightning_reg import ExponentialDecay, OneCycleScheduler, PerformanceScheduler, ScheduledLR
from lightning_reg.callbacks import LRCallback, MaxNorm
from lightning_reg.demos import DigitsDataModule, RegularizedMLP
from lightning_reg.demos.cli import (
    CLI_REQUIREMENTS,
    LightningRegCLI,
    config_names,
    config_path,
    main,
    missing_requirements,
    plain_help,
)
from lightning_reg.demos.report import ReportOptions, format_summary, read_metrics
from lightning_reg.schedules import OneCycle

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "configs"
QUIET = [
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--report.mc_samples=3",
]


def fit(tmp_path: Path, *args: str, epochs: int = 1, batches: int | None = 5) -> LightningRegCLI:
    """``lightning-reg fit`` into ``tmp_path`` with a short budget; returns the CLI object."""
    budget = [f"--trainer.max_epochs={epochs}"]
    if batches is not None:
        budget.append(f"--trainer.limit_train_batches={batches}")
    argv = ["fit", *QUIET, *args, f"--trainer.default_root_dir={tmp_path}", *budget]
    return LightningRegCLI(args=argv)


def printed_config(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    with pytest.raises(SystemExit) as info:
        main(["fit", *args, "--print_config"])
    assert info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def lr_callbacks(cli: LightningRegCLI) -> list[LRCallback]:
    return [cb for cb in cli.trainer.callbacks if isinstance(cb, LRCallback)]


def ece(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error (l1, equal-width confidence bins), written out independently."""
    confidence, prediction = probs.max(1), probs.argmax(1)
    correct = (prediction == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    for low, high in itertools.pairwise(edges):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            total += in_bin.mean() * abs(confidence[in_bin].mean() - correct[in_bin].mean())
    return total


def test_default_run_trains_tests_and_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = fit(tmp_path, epochs=2, batches=None)
    model, trainer = cli.model, cli.trainer
    # The documented defaults: RegularizedMLP with l2, dropout and max-norm, 1cycle at 0.1.
    assert isinstance(model, RegularizedMLP) and isinstance(cli.datamodule, DigitsDataModule)
    assert (model.hparams["in_features"], model.hparams["num_classes"]) == (64, 10)
    assert list(model.hparams["hidden"]) == [128, 128]
    assert (model.dropout_rate, model.l2, model.max_norm) == (0.2, 1e-4, 3.0)
    (schedule,) = lr_callbacks(cli)
    assert isinstance(schedule, OneCycleScheduler) and schedule.max_lr == [0.1]
    assert any(isinstance(cb, MaxNorm) for cb in trainer.callbacks)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert max(float(m.weight.detach().norm(dim=1).max()) for m in linears) <= 3.0 + 1e-5

    out = Path(trainer.log_dir)
    assert out == tmp_path / "version_0"
    for name in ("config.yaml", "metrics.csv", "schedule.png", "learning_curves.png"):
        assert (out / name).is_file(), name
    for name in ("schedule.png", "learning_curves.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The schedule in metrics.csv is the 1cycle closed form over the run's optimizer steps.
    metrics = read_metrics(out / "metrics.csv")
    total = trainer.global_step
    assert total == 2 * len(cli.datamodule.train_dataloader())
    cycle = OneCycle(total_steps=total, max_lr=0.1)
    lr_key = "lr-SGD/pg1"  # LearningRateMonitor's name of the first of the model's two groups
    logged = [(int(r["step"]), r[lr_key], r[f"{lr_key}-momentum"]) for r in metrics if lr_key in r]
    assert len(logged) >= 4
    for step, lr, momentum in logged:
        assert lr == pytest.approx(cycle(step), rel=1e-6)
        assert momentum == pytest.approx(cycle.momentum(step), rel=1e-6)

    # mc_dropout.json: the deterministic scores are the logged test metrics, ECE recomputed here.
    summary = json.loads((out / "mc_dropout.json").read_text())
    test = trainer.callback_metrics
    assert summary["num_examples"] == 270 and summary["n_samples"] == 3
    assert summary["deterministic"]["accuracy"] == pytest.approx(float(test["test/acc"]), abs=1e-6)
    assert summary["deterministic"]["nll"] == pytest.approx(float(test["test/loss"]), rel=1e-4)
    x, y = (torch.cat(t) for t in zip(*cli.datamodule.test_dataloader(), strict=True))
    model.eval()
    with torch.no_grad():
        probs = model(x).softmax(-1).double().numpy()
    assert summary["deterministic"]["ece"] == pytest.approx(ece(probs, y.numpy()), abs=1e-5)
    entropy = -(probs * np.log(probs)).sum(1).mean()
    assert summary["deterministic"]["mean_entropy"] == pytest.approx(entropy, rel=1e-4)
    assert summary["mc_dropout"]["mean_std"] > 0  # dropout 0.2: the samples differ

    printed = capsys.readouterr().out
    assert "deterministic" in printed and "MC dropout" in printed
    assert f"test accuracy {float(test['test/acc']):.4f}" in printed
    assert f"Outputs in {out}" in printed


def test_no_arguments_means_the_default_config(capsys: pytest.CaptureFixture[str]) -> None:
    defaults = printed_config(capsys)
    assert defaults == printed_config(capsys, f"--config={CONFIGS / 'default.yaml'}")
    assert defaults["trainer"]["max_epochs"] == 15
    assert defaults["trainer"]["default_root_dir"] == "lightning_reg_runs"
    assert defaults["trainer"]["logger"]["class_path"] == "lightning.pytorch.loggers.CSVLogger"
    assert defaults["lr_schedule"]["class_path"] == "lightning_reg.OneCycleScheduler"
    assert defaults["lr_schedule"]["init_args"]["max_lr"] == 0.1
    assert defaults["model"]["dropout"] == 0.2 and defaults["model"]["max_norm"] == 3.0
    assert defaults["seed_everything"] == 0


def test_print_config_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        f"--config={CONFIGS / 'selu.yaml'}",
        "--model.dropout=0.05",
        "--lr_schedule.max_lr=0.03",
    ]
    first = printed_config(capsys, *args)
    saved = tmp_path / "saved.yaml"
    saved.write_text(yaml.safe_dump(first))
    assert printed_config(capsys, f"--config={saved}") == first
    cli = fit(tmp_path, f"--config={saved}")
    assert cli.model.dropout_rate == 0.05 and cli.model.activation_name == "selu"
    (schedule,) = lr_callbacks(cli)
    assert schedule.max_lr == [0.03]


@pytest.mark.parametrize("name", ["default", "selu", "performance", "l1_l2", "exponential"])
def test_each_shipped_config_trains(tmp_path: Path, name: str) -> None:
    cli = fit(tmp_path, f"--config={CONFIGS / f'{name}.yaml'}", batches=4)
    model, trainer = cli.model, cli.trainer
    assert trainer.global_step == 4
    (schedule,) = lr_callbacks(cli)
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    if name == "selu":
        dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout | nn.AlphaDropout)]
        assert len(dropouts) == 3 and all(isinstance(m, nn.AlphaDropout) for m in dropouts)
        assert model.max_norm is None and schedule.max_lr == [0.05]
    elif name == "performance":
        assert isinstance(schedule, PerformanceScheduler)
        assert (schedule.patience, schedule.factor, schedule.min_lr) == (2, 0.5, [1e-4])
        assert lr == 0.05  # one validation run cannot be a plateau of patience 2
    elif name == "l1_l2":
        assert (model.l1, model.l2, model.dropout_rate) == (1e-5, 1e-4, 0.0)
        weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
        expected = sum(1e-5 * w.abs().sum() + 1e-4 * w.pow(2).sum() for w in weights)
        assert float(model.penalty()) == pytest.approx(float(expected), rel=1e-5)
    elif name == "exponential":
        assert isinstance(schedule, ScheduledLR)
        assert lr == pytest.approx(ExponentialDecay(lr0=0.05, s=300, rate=0.1)(4), rel=1e-9)
    else:
        assert isinstance(schedule, OneCycleScheduler)
        total = trainer.global_step
        assert lr == pytest.approx(OneCycle(total_steps=total, max_lr=0.1)(total), rel=1e-9)
    assert (Path(trainer.log_dir) / "mc_dropout.json").is_file()


def test_null_schedule_keeps_the_model_lr(tmp_path: Path) -> None:
    cli = fit(tmp_path, "--lr_schedule=null", "--model.lr=0.02", "--report.enabled=false")
    assert lr_callbacks(cli) == []
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == 0.02
    assert not (Path(cli.trainer.log_dir) / "mc_dropout.json").exists()


def expected_message(build: Any) -> str:
    with pytest.raises((ValueError, TypeError)) as info:
        build()
    return str(info.value)


@pytest.mark.parametrize(
    ("flag", "build"),
    [
        ("--model.dropout=1.5", lambda: RegularizedMLP(dropout=1.5)),
        ("--model.activation=swish", lambda: RegularizedMLP(activation="swish")),
        ("--lr_schedule.max_lr=-1", lambda: OneCycleScheduler(max_lr=-1.0)),
        ("--data.batch_size=0", lambda: DigitsDataModule(batch_size=0)),
        ("--report.mc_samples=0", lambda: ReportOptions(mc_samples=0)),
    ],
)
def test_bad_values_raise_the_python_api_error(tmp_path: Path, flag: str, build: Any) -> None:
    with pytest.raises((ValueError, TypeError), match=f"^{re.escape(expected_message(build))}$"):
        fit(tmp_path, flag)


def test_bad_value_in_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  dropout: 1.5\n")
    with pytest.raises(ValueError) as info:
        fit(tmp_path, f"--config={config}")
    assert str(info.value) == expected_message(lambda: RegularizedMLP(dropout=1.5))


def test_wrong_type_is_a_parser_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["fit", "--model.dropout=abc"])
    assert info.value.code == 2
    assert 'Parser key "model.dropout"' in capsys.readouterr().err


@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)
@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)
def test_fit_under_ddp_tests_on_every_rank_and_reports_on_rank_zero(cli_ddp_output: str) -> None:
    """`lightning-reg fit --trainer.devices 2 --trainer.strategy ddp`: both ranks finish the
    command (the job exits 0) and rank 0 writes the report, once."""
    assert cli_ddp_output.count("Outputs in ") == 1
    listed = re.findall(r"^  (\S+)$", cli_ddp_output, flags=re.MULTILINE)
    for name in ("config.yaml", "metrics.csv", "schedule.png", "mc_dropout.json"):
        assert name in listed, name


def test_test_subcommand_reloads_the_checkpoint(tmp_path: Path) -> None:
    cli = fit(tmp_path, "--report.enabled=false")
    (ckpt,) = (Path(cli.trainer.log_dir) / "checkpoints").glob("*.ckpt")
    fitted = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    tested = LightningRegCLI(
        args=["test", f"--ckpt_path={ckpt}", f"--trainer.default_root_dir={tmp_path}", *QUIET[:2]]
    )
    assert float(tested.trainer.callback_metrics["test/acc"]) == pytest.approx(fitted["test/acc"])


@pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed"
)
def test_fashion_mnist_config_without_torchvision(tmp_path: Path) -> None:
    with pytest.raises(ImportError, match="pip install torchvision"):
        fit(tmp_path, f"--config={CONFIGS / 'fashion_mnist.yaml'}")


def test_cli_requirements_are_the_cli_extra() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert list(CLI_REQUIREMENTS) == pyproject["project"]["optional-dependencies"]["cli"]
    # jsonargparse's floor is at least the one Lightning itself asks of it.
    lightning_floor = [
        Requirement(line)
        for line in metadata.requires("lightning") or []
        if line.startswith("jsonargparse") and "extra" in line
    ]
    (ours,) = (Requirement(line) for line in CLI_REQUIREMENTS if line.startswith("jsonargparse"))
    assert lightning_floor and "signatures" in ours.extras
    for theirs in lightning_floor:
        floor = next(s.version for s in theirs.specifier if s.operator == ">=")
        assert ours.specifier.contains(floor) and not ours.specifier.contains(_below(floor))
    assert missing_requirements() == []  # the dev install has them all


def _below(version: str) -> str:
    """A version just below ``version`` (``4.39.0`` -> ``4.38.999``)."""
    major, minor, *_ = version.split(".")
    return f"{major}.{int(minor) - 1}.999"


def test_missing_requirements_checks_versions_and_extras(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert missing_requirements(["torch>=2.0", "torch>=999", "no-such-dist"]) == [
        "torch>=999",
        "no-such-dist",
    ]
    # A distribution whose extra needs something missing: the extra counts as missing.
    info = tmp_path / "fakepkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.0\nProvides-Extra: x\n"
        'Requires-Dist: no-such-dist; extra == "x"\nRequires-Dist: torch\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert missing_requirements(["fakepkg>=1", "fakepkg[x]", "fakepkg>1"]) == [
        "fakepkg[x]",
        "fakepkg>1",
    ]


def test_without_the_cli_extra_the_command_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A too-old jsonargparse found first on sys.path, as after `pip install lightning-reg` with
    # an old jsonargparse: the command stops before parsing anything and writes nothing.
    fake = tmp_path / "site" / "jsonargparse-4.27.0.dist-info"
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: jsonargparse\nVersion: 4.27.0\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.chdir(run_dir)
    message = (
        "lightning-reg: the command needs the `cli` extra (missing: "
        'jsonargparse[signatures]>=4.39.0); install it with: pip install "lightning-reg[cli]"'
    )
    # The console script's two entries, `lightning-reg fit` and `lightning-reg --help`: exit
    # code 1 with the message, no warning, nothing else printed.
    for argv in (["fit"], ["--help"]):
        monkeypatch.setattr(sys, "argv", ["lightning-reg", *argv])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(SystemExit) as info:
                main()
        assert info.value.code == message
    assert capsys.readouterr() == ("", "")
    assert list(run_dir.iterdir()) == []


def test_configs_subcommand_lists_and_prints_the_example_configs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert config_names() == sorted(path.stem for path in CONFIGS.glob("*.yaml"))
    main(["configs"])
    listing = capsys.readouterr().out
    for name in config_names():
        assert f"{name} " in listing and str(config_path(name)) in listing
    main(["configs", "selu"])
    assert capsys.readouterr().out == (CONFIGS / "selu.yaml").read_text()
    main(["configs", "--path", "selu"])
    assert capsys.readouterr().out == f"{(CONFIGS / 'selu.yaml').resolve()}\n"
    assert config_path("selu.yaml") == config_path("selu") == (CONFIGS / "selu.yaml").resolve()
    with pytest.raises(SystemExit, match="No example config named 'nope'; the configs are"):
        main(["configs", "nope"])


def test_python_dash_m_runs_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `python -m lightning_reg.demos.cli ...` (no console script on the PATH) used to import the
    # module, do nothing and exit 0. runpy runs the module's `__main__` as `python -m` does.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [main.__module__, "configs", "--path", "warmup_cosine"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "'lightning_reg.demos.cli' found in sys.modules")
        runpy.run_module(main.__module__, run_name="__main__", alter_sys=True)
    assert capsys.readouterr().out.strip() == str(CONFIGS / "warmup_cosine.yaml")


def test_fit_help_describes_the_app_in_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    top = capsys.readouterr().out
    assert top.startswith("usage: lightning-reg ")
    assert "lightning-reg: train the default experiment" in top
    assert "Lightning Trainer command line tool" not in top
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # undo the line wrapping
    assert "Train, then test the model and write the report" in text
    for markup in ("``", ":class:", ":meth:", ":func:", ":data:", ">`_"):
        assert markup not in text, markup
    # One default per option, the one the command uses (the docstring's own is dropped).
    assert "dropout rate of dense blocks, in [0, 1). (type: float, default: 0.2)" in text
    assert "or None for no constraint. (type: float | null, default: 3.0)" in text
    assert "Default 0.0" not in text
    # Group headings: the first sentence of each class's docstring.
    assert "training, val, test splits, data preparation and transforms: --data.help" in text


def test_plain_help_examples() -> None:
    assert plain_help("a :class:`~lightning_reg.MaxNorm` (``r``). Default ``1.0``.") == (
        "a MaxNorm (r)."
    )
    assert plain_help("Uses ``x``. Default: ``True``. (type: bool)") == "Uses x. (type: bool)"


@pytest.mark.slow
@pytest.mark.parametrize("name", config_names())
def test_every_example_config_parses_and_says_what_it_is(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Adding a config is adding its file: it is listed, shipped, parsed here, and its opening
    # comment is its line in docs/cli.md's table (docs/hooks/example_configs.py).
    path = config_path(name)
    assert path.read_text().startswith("# "), f"{path.name} opens without a comment"
    config = printed_config(capsys, f"--config={path}")
    assert config["model"] and "class_path" in config["data"]


def test_the_quoted_default_run_has_the_current_output_format() -> None:
    # docs/cli.md quotes docs/snippets/default_fit.txt (written by docs/snippets/generate.py): its
    # table must be what format_summary prints today, its accuracies consistent with the table.
    lines = (ROOT / "docs" / "snippets" / "default_fit.txt").read_text().splitlines()
    assert lines[0].startswith("$ lightning-reg fit") and lines[1] == "..."
    scores = {"accuracy": 0.0, "ece": 0.0, "nll": 0.0, "mean_entropy": 0.0}
    summary = {"num_examples": 270, "n_samples": 50, "ece_bins": 15}
    table = format_summary({**summary, "deterministic": scores, "mc_dropout": scores})
    assert lines[2:4] == table.splitlines()[:2]
    deterministic = float(lines[4].split()[1])
    match = re.fullmatch(r"validation accuracy ([\d.]+) \| test accuracy ([\d.]+)", lines[6])
    assert match and float(match[2]) == deterministic
    # The README quotes the same run.
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"({float(match[1]):.3f} and {float(match[2]):.3f} in the run shown in" in readme
    assert lines[7] == "Outputs in lightning_reg_runs/version_0:"
