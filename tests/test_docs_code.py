"""Every ```python block of docs/*.md runs as written: per page, in order, in one namespace; its
Trainers run a few batches per epoch.

A block that cannot run here (a multi-process script, a GPU job) is fenced as ```text instead,
or guarded by ``if __name__ == "__main__":`` (run as a script by the examples' tests).
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import matplotlib
import pytest

from tests.helpers import few_batches

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(DOCS.glob("*.md"))


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.DOTALL | re.MULTILINE)


def test_docs_have_python_blocks() -> None:
    assert sum(len(python_blocks(page)) for page in PAGES) >= 10


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.name)
def test_docs_python_blocks_run(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # files the blocks write (plots, logs, checkpoints) land here
    few_batches(monkeypatch)
    matplotlib.use("Agg")
    # A real module (dataclasses and pickling look classes up in sys.modules), not "__main__".
    module = types.ModuleType(f"docs_{page.stem.replace('-', '_')}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for number, block in enumerate(python_blocks(page), start=1):
        code = compile(block, f"{page.name}, python block {number}", "exec")
        exec(code, module.__dict__)
