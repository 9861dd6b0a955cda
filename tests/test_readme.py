"""The README's Python blocks run as written, in order, in one namespace (their Trainers a few
batches per epoch)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from tests.helpers import few_batches

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_python_examples() -> None:
    assert len(python_blocks()) >= 3


def test_readme_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # files the blocks write (plots, logs) land here
    few_batches(monkeypatch)
    namespace: dict[str, object] = {"__name__": "readme"}
    for block in python_blocks():
        if 'if __name__ == "__main__":' in block:
            continue  # a multi-process script: examples/ddp.py runs it in the tests
        exec(compile(block, str(README), "exec"), namespace)
    assert (tmp_path / "one_cycle.png").stat().st_size > 0
    assert float(namespace["result"].entropy.mean()) >= 0  # type: ignore[attr-defined]


def test_readme_renders_on_a_package_index() -> None:
    # A package index shows README.md alone: links must be absolute, and a user who is not in a
    # checkout needs an install line and every extra named.
    text = README.read_text()
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert links and all(link.startswith("https://") for link in links), links
    assert 'pip install "lightning-reg[cli]"' in text
    extras = tomllib.loads((README.parent / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for extra in extras:
        assert f"| `{extra}` |" in text, f"the `{extra}` extra is not in the README's table"
