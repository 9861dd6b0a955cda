"""The examples run offline and do what they say (in-process, with short budgets)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_trains_a_constrained_model(capsys: pytest.CaptureFixture[str]) -> None:
    result = load("quickstart").main(["--epochs", "3"])
    out = capsys.readouterr().out
    assert "1cycle over 60 optimizer steps" in out
    assert "peak step" in out and "lr=0.100000 momentum=0.850" in out
    assert result["val_acc"] > 0.85
    assert result["max_row_norm"] <= 3.0 + 1e-5


def test_schedules_example_runs_every_schedule(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    plot = tmp_path / "schedules.png"
    results = load("schedules").main(["--epochs", "2", "--plot", str(plot)])
    assert set(results) == {
        "constant",
        "exponential",
        "power",
        "piecewise",
        "performance",
        "1cycle",
    }
    assert all(acc > 0.5 for acc in results.values())
    assert plot.stat().st_size > 0
