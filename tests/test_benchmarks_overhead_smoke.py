"""The overhead and convergence benchmarks run end to end at tiny sizes and print their tables.

They are not timed tests: this only keeps them from rotting. Each runs in this process as its
command line runs it; ``--no-write`` keeps the docs as they are, so the check is that each
script finishes and prints a complete, well-formed table.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path

import pytest

from tests.helpers import run_as_script

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def run_quick(capsys: pytest.CaptureFixture[str], script: str, *args: str) -> list[str]:
    """The table rows ``python benchmarks/SCRIPT --quick --no-write ARGS`` prints."""
    before = DOCS.read_text() if DOCS.exists() else None
    run_as_script(BENCHMARKS / script, "--quick", "--no-write", *args)
    out = capsys.readouterr().out
    assert (DOCS.read_text() if DOCS.exists() else None) == before, "--no-write wrote the docs"
    command = shlex.join(["python", f"benchmarks/{script}", "--quick", "--no-write", *args])
    assert f"- Command: `{command}`" in out
    return [line for line in out.splitlines() if line.startswith("| ")]


def cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_overhead_quick(capsys: pytest.CaptureFixture[str]) -> None:
    header, rule, *rows = run_quick(capsys, "overhead.py")
    assert cells(header)[:4] == ["model", "arm", "CPU ms/step, best round", "x bare"]
    assert rule.count("|") == header.count("|")
    arms = [cells(row)[1] for row in rows]
    assert arms[0] == "bare" and "all: ours" in arms and "plateau: peer" in arms
    for label in ("1cycle", "exponential", "max-norm", "l1+l2 penalty", "plateau", "all"):
        assert f"{label}: ours" in arms and f"{label}: peer" in arms
    by_arm = {cells(row)[1]: cells(row) for row in rows}
    assert float(by_arm["bare"][3]) == 1.0 and float(by_arm["bare + validation"][3]) == 1.0
    for row in rows:
        best, ratio, median, paired, wall = (float(x) for x in cells(row)[2:7])
        assert 0 < best <= median and ratio > 0 and paired > 0 and wall > 0, row


def test_overhead_penalty_arms_quick(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [cells(line) for line in run_quick(capsys, "overhead.py", "--arms", "penalty")]
    rows = [row for row in rows if row[0].startswith("tiny")]
    arms = [row[1] for row in rows[:8]]
    assert arms[:2] == ["bare", "floors"] and arms[2].startswith("hand-written floor")
    targets = {row[1]: row for row in rows[8:]}
    assert len(targets) == 7
    for row in targets.values():  # a toy model's time differences are noise: any sign
        assert math.isfinite(float(row[2].split()[0])), row
        assert math.isfinite(float(row[3].rstrip("x"))), row


def test_convergence_quick(capsys: pytest.CaptureFixture[str]) -> None:
    lines = run_quick(capsys, "convergence.py")
    starts = [k for k, line in enumerate(lines) if cells(line)[0] == "schedule"]
    assert len(starts) == 2  # the best setting of each schedule, then every setting
    summary = lines[starts[0] + 2 : starts[1]]
    names = [cells(row)[0] for row in summary]
    assert names == [
        "constant",
        "exponential",
        "power",
        "performance",
        "1cycle, 2 epochs",
        "1cycle auto, 2 epochs",
    ]
    for row in summary:
        final_val, test = float(cells(row)[6]), float(cells(row)[7])
        assert 10.0 < final_val <= 100.0 and 10.0 < test <= 100.0, row  # trained: above chance
    assert "range test" in cells(summary[-1])[1]  # "auto" reports its chosen value and cost
