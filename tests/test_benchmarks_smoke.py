"""The regularization and MC dropout benchmarks run end to end at tiny sizes (in this process,
as their command lines run them) and print their Markdown tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_as_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "regularization.py"


def printed(capsys: pytest.CaptureFixture[str], script: Path, *args: str) -> list[str]:
    """The lines ``python SCRIPT ARGS`` prints."""
    run_as_script(script, *args)
    return capsys.readouterr().out.splitlines()


def test_regularization_benchmark_quick(capsys: pytest.CaptureFixture[str]) -> None:
    lines = printed(capsys, SCRIPT, "--quick")
    assert any(
        line.startswith("| model: tensors, weight elements | op | fused (ms)") for line in lines
    )
    rows = [line for line in lines if line.startswith("| (")]
    ops = ["max-norm", "penalty value", "penalty gradient", "gradient vs loss route"]
    assert [row.split("|")[2].strip() for row in rows] == ops * 2
    assert "(a) Linear stack: 10 tensors, 5,120" in rows[0]  # 5 layers of 32 x 32, weights only
    for row in rows:
        timings = [float(cell.strip().rstrip("x")) for cell in row.split("|")[3:8]]
        assert all(t > 0 for t in timings), row
    max_norm = [line.split(":")[0] for line in lines if line.startswith("| max-norm, (")]
    assert sorted(set(max_norm)) == [
        "| max-norm, (a) Linear stack",
        "| max-norm, (b) MLP",
        "| max-norm, (c) MLP 784-512x3-10",
    ]


MC_SCRIPT = SCRIPT.parent / "mc_dropout.py"


def test_mc_dropout_benchmark_quick(capsys: pytest.CaptureFixture[str]) -> None:
    lines = printed(capsys, MC_SCRIPT, "--quick", "--batch", "2")
    rows = [line for line in lines if line.startswith("| ") and line.rstrip(" |)").endswith("x")]
    assert [row.split("|")[1].strip() for row in rows] == [
        "MLP 784-512x3-10",
        "CNN 28x28, dropout in the head",
        "transformer 16x32, 2 layers",
        "transformer 16x32, 2 layers, feed-forward 2048",
    ]
    for row in rows:
        cells = [cell.strip() for cell in row.split("|")[2:-1]]
        assert len(cells) == 9, row
        assert (cells[2] == "-") == ("transformer" not in row), row  # math floor: attention only
        numbers = [float(c.split()[0].rstrip("x")) for c in cells if c != "-"]
        assert all(n > 0 for n in numbers), row


def test_mc_dropout_benchmark_sweep_and_profile_quick(capsys: pytest.CaptureFixture[str]) -> None:
    def run(flag: str) -> list[list[str]]:
        lines = printed(capsys, MC_SCRIPT, "--quick", "--batch", "2", "--rounds", "1", flag)
        return [
            [cell.strip() for cell in line.split("|")[1:-1]] for line in lines if line[:2] == "| "
        ]

    sweep = [row for row in run("--sweep") if row[1] != "case" and not row[1].startswith("-")]
    cases = ["floor", "mc_dropout_predict", "fast_masks"]
    assert [row[1] for row in sweep] == cases * 3  # --quick: the three small models
    assert all(len(row) == 8 and all(float(c) > 0 for c in row[2:]) for row in sweep)
    rows = run("--profile")
    mlp = rows[: [row[0] for row in rows].index("total")]  # the first table: the MLP's
    profile = {row[0]: row[1:] for row in mlp if row[0].startswith("`")}
    # The floor draws no randomness, the plain path draws with torch's Bernoulli kernel,
    # fast_masks with random bits.
    assert {"`aten::bernoulli_`", "`aten::random_`"} <= set(profile), mlp
    bernoulli, bits = profile["`aten::bernoulli_`"], profile["`aten::random_`"]
    assert float(bernoulli[0]) == 0 and float(bernoulli[1]) > 0 and float(bernoulli[2]) == 0
    assert float(bits[0]) == 0 and float(bits[1]) == 0 and float(bits[2]) > 0
