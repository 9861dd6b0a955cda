"""What the ``lightning-reg`` command prints for a bad value and for ``--help``: one line naming
the flag and the allowed range, no traceback; ``configs`` among the subcommands."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_reg.demos.cli import main


def one_line_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(["fit", *args])
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--model.dropout=1.5"],
            "--model.dropout: `dropout` must be a finite number in [0, 1), got 1.5.",
        ),
        (
            ["--lr_schedule.max_lr=-1"],
            "--lr_schedule.max_lr: `max_lr` must be a finite number > 0, got -1.0.",
        ),
        (
            ["--data.batch_size=0"],
            "--data.batch_size: `batch_size` must be an integer >= 1, got 0.",
        ),
        (  # Lightning's own check of a Trainer flag
            ["--trainer.max_epochs=-2"],
            "--trainer.max_epochs: `max_epochs` must be a non-negative integer or -1. You passed "
            "in -2.",
        ),
        (
            ["--report.mc_samples=0"],
            "--report.mc_samples: `mc_samples` must be an integer >= 1, got 0.",
        ),
        (  # the ranks would hold the run's state, away from the report
            ["--trainer.strategy=ddp_spawn", "--trainer.devices=2", "--trainer.accelerator=cpu"],
            "--trainer.strategy: `strategy='ddp_spawn'` starts the ranks from this process, which "
            "then holds none of the run's state, so the report after fit would be split or "
            "missing. Use `--trainer.strategy ddp`: Lightning runs the command on every rank.",
        ),
        (
            ["--model.optimizer=adamw", "--model.as_weight_decay=true"],
            "--model.as_weight_decay, --model.optimizer: `as_weight_decay=True` needs a coupled "
            "weight decay, but `optimizer='adamw'` decouples it. Use optimizer='sgd', 'adam' or "
            "'nadam', or as_weight_decay=False.",
        ),
    ],
)
def test_a_bad_value_ends_in_one_line_naming_the_flag_and_the_range(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    line: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert one_line_error(capsys, *args) == f"lightning-reg fit: error: {line}"
    assert list(tmp_path.iterdir()) == []  # stopped before writing anything


def test_a_bad_value_in_a_config_file_names_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  hidden: [64, 0]\n")
    assert one_line_error(capsys, f"--config={config}") == (
        "lightning-reg fit: error: --model.hidden: `hidden` must be an integer >= 1, got 0."
    )


def test_help_lists_the_configs_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: lightning-reg [-c CONFIG] {fit,validate,test,predict,configs}")
    flat = " ".join(text.split())
    assert "One more subcommand, configs: `lightning-reg configs` lists the example configs" in flat


@pytest.mark.parametrize("with_config", [False, True], ids=["fit", "-c CONFIG fit"])
def test_a_value_the_run_rejects_at_fit_start_ends_in_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    with_config: bool,
) -> None:
    # The cycle is sized from the Trainer's plan only when the fit starts.
    monkeypatch.chdir(tmp_path)
    args = ["--lr_schedule.final_steps=100000", "--trainer.max_epochs=1"]
    config = []
    if with_config:  # the `lightning-reg -c CONFIG fit` form, a top-level config
        (tmp_path / "top.yaml").write_text("fit:\n  trainer:\n    max_epochs: 1\n")
        config = ["-c", str(tmp_path / "top.yaml")]
    with pytest.raises(SystemExit) as info:
        main([*config, "fit", "--trainer.enable_model_summary=false", *args])
    assert info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("lightning-reg fit: error: OneCycleScheduler sizes its cycle from")
    assert "`trainer.estimated_stepping_batches` = 20" in line and "got 100000" in line


def test_only_this_packages_own_errors_lose_their_traceback() -> None:
    from lightning_reg.demos.cli import _raised_by_this_package
    from lightning_reg.schedules import OneCycle

    with pytest.raises(ValueError) as ours:
        OneCycle(total_steps=10, max_lr=-1.0)
    with pytest.raises(ValueError) as elsewhere:
        int("ten")
    assert _raised_by_this_package(ours.value)
    assert not _raised_by_this_package(elsewhere.value)
