"""Figures the README and the docs quote from a run are what the commands print.

``docs/snippets/generate.py`` writes each documented command's output into a snippet; the docs
include the snippets or quote figures from them. Here each command runs again (in-process, as
the console script runs it) and must print its snippet, and every quote must be its snippet's.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
from pathlib import Path
from types import ModuleType

import pytest

from lightning_reg.demos.cli import main

ROOT = Path(__file__).resolve().parents[1]
SNIPPETS = ROOT / "docs" / "snippets"
REGENERATE = "out of date: regenerate it with `python docs/snippets/generate.py`"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate", SNIPPETS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def snippet(name: str) -> tuple[str, int, str]:
    """``(command, seconds, printed)`` of ``docs/snippets/<name>.txt``."""
    header, dots, printed = (SNIPPETS / f"{name}.txt").read_text().split("\n", 2)
    match = re.fullmatch(r"\$ (.+?)   # (\d+) s on .+", header)
    assert match and dots == "...", f"{name}.txt has no `$ command   # N s on ...` header"
    assert match[1] == " ".join(generator().COMMANDS[name]), f"{name}.txt {REGENERATE}"
    return match[1], int(match[2]), printed


def flat(path: Path) -> str:
    return " ".join(path.read_text().split())


def test_default_fit_prints_its_snippet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The main job as the README runs it (no progress bar here: it draws nothing random).
    monkeypatch.chdir(tmp_path)
    main(["fit", "--trainer.enable_progress_bar=false"])
    printed = generator().shown("default_fit", capsys.readouterr().out)
    assert printed == snippet("default_fit")[2], f"default_fit.txt {REGENERATE}"


def test_bad_value_prints_its_snippet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["fit", "--model.dropout", "1.5"])
    printed = generator().shown("bad_value", capsys.readouterr().err)
    assert printed == snippet("bad_value")[2], f"bad_value.txt {REGENERATE}"


def test_regularization_example_prints_its_snippet(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("example", ROOT / "examples/regularization.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    with contextlib.redirect_stderr(io.StringIO()):
        example.main([])
    assert capsys.readouterr().out == snippet("regularization")[2], (
        f"regularization.txt {REGENERATE}"
    )


def test_the_docs_quote_the_snippets() -> None:
    # docs/cli.md shows the snippets themselves.
    cli = (ROOT / "docs" / "cli.md").read_text()
    for name in ("default_fit", "bad_value"):
        assert f'--8<-- "{name}.txt"' in cli, name
    # The README quotes the main job's accuracies and time.
    _, seconds, printed = snippet("default_fit")
    scores = re.search(r"validation accuracy ([\d.]+) \| test accuracy ([\d.]+)", printed)
    assert scores, printed
    readme = flat(ROOT / "README.md")
    assert f"(about {seconds} s on the development machine's 2 CPU cores" in readme
    quoted = f"({float(scores[1]):.3f} and {float(scores[2]):.3f} in the run shown in"
    assert quoted in readme
    # docs/regularization.md quotes the example's figures and time.
    _, seconds, printed = snippet("regularization")
    figures = dict(re.findall(r"^([a-z ]+): ([\d.]+)", printed, flags=re.MULTILINE))
    page = flat(ROOT / "docs" / "regularization.md")
    expected = (
        f"`python examples/regularization.py` runs this in about {seconds} s on 2 CPU cores "
        f"(validation accuracy {figures['validation accuracy']}, test accuracy "
        f"{figures['test accuracy']}, largest row norm {figures['max row norm']}: at the bound)"
    )
    assert expected in page
