"""Smoke-run the regularization and MC dropout examples as subprocesses and check their numbers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    numbers: dict[str, float] = {}
    for line in result.stdout.splitlines():
        match = re.match(r"^([A-Za-z. ()0-9]+?): (-?[0-9.]+|nan)\b", line)
        if match:
            numbers[match.group(1)] = float(match.group(2))
    return numbers


def test_regularization_example() -> None:
    out = _run("regularization.py", "--epochs", "4", "--max-norm", "1.0")
    assert out["validation accuracy"] > 0.85
    assert out["test accuracy"] > 0.85
    assert out["l2 penalty"] > 0
    # the constraint binds: the largest row sits exactly at the bound
    assert abs(out["max row norm"] - 1.0) < 1e-3


def test_mc_dropout_example() -> None:
    out = _run("mc_dropout.py", "--epochs", "4", "--samples", "50")
    assert out["deterministic accuracy"] > 0.85
    assert out["MC dropout accuracy"] > 0.85
    assert out["mean entropy (wrong)"] > out["mean entropy (correct)"]
    assert abs(out["Trainer.predict MC accuracy"] - out["MC dropout accuracy"]) < 0.03
