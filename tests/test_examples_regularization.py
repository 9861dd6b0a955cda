"""The regularization and MC dropout examples, run in-process on short budgets: their printed
numbers."""

from __future__ import annotations

import re

import pytest

from tests.test_examples import load


def printed(capsys: pytest.CaptureFixture[str]) -> dict[str, float]:
    """The ``name: number`` lines the example printed."""
    numbers: dict[str, float] = {}
    for line in capsys.readouterr().out.splitlines():
        match = re.match(r"^([A-Za-z. ()0-9]+?): (-?[0-9.]+|nan)\b", line)
        if match:
            numbers[match.group(1)] = float(match.group(2))
    return numbers


def test_regularization_example(capsys: pytest.CaptureFixture[str]) -> None:
    result = load("regularization").main(["--epochs", "4", "--max-norm", "1.0"])
    out = printed(capsys)
    assert out["validation accuracy"] > 0.85
    assert out["test accuracy"] > 0.85
    assert out["l2 penalty"] > 0
    # the constraint binds: the largest row sits exactly at the bound
    assert abs(out["max row norm"] - 1.0) < 1e-3
    assert out["max row norm"] == pytest.approx(result["max_row_norm"], abs=1e-4)


def test_mc_dropout_example(capsys: pytest.CaptureFixture[str]) -> None:
    result = load("mc_dropout").main(["--epochs", "4", "--samples", "50"])
    out = printed(capsys)
    assert out["deterministic accuracy"] > 0.85
    assert out["MC dropout accuracy"] > 0.85
    assert out["mean entropy (wrong)"] > out["mean entropy (correct)"]
    assert abs(out["Trainer.predict MC accuracy"] - out["MC dropout accuracy"]) < 0.03
    assert out["MC dropout accuracy"] == pytest.approx(result["mc_acc"], abs=1e-4)
