"""`mkdocs build --strict` passes, and every public name has a pasteable example."""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lightning_reg

ROOT = Path(__file__).resolve().parents[1]
_EXAMPLE = re.compile(r"^(?P<indent>[ \t]*)Examples?::[ \t]*$", re.MULTILINE)


def example_code(doc: str) -> str:
    """The indented code block that follows ``Example::`` in a docstring ("" when absent)."""
    doc = inspect.cleandoc(doc)
    match = _EXAMPLE.search(doc)
    if match is None:
        return ""
    base = len(match.group("indent"))
    block: list[str] = []
    for line in doc[match.end() :].splitlines()[1:]:
        if line.strip() and len(line) - len(line.lstrip()) <= base:
            break
        block.append(line)
    return textwrap.dedent("\n".join(block)).strip()


@pytest.mark.parametrize("name", lightning_reg.__all__)
def test_public_name_has_a_pasteable_example(name: str) -> None:
    doc = getattr(lightning_reg, name).__doc__ or ""
    assert "Example" in doc, f"{name}'s docstring has no example"
    if ">>>" in doc:
        return  # a doctest: run by `pytest --doctest-modules lightning_reg`
    code = example_code(doc)
    assert code, f"{name}'s docstring has no code block after `Example::`"
    compile(code, f"<{name} example>", "exec")  # a user can paste it: it is valid Python


def test_example_code_reads_the_indented_block() -> None:
    doc = """Summary.

    Example::

        x = 1

        y = 2
    Trailing text.
    """
    assert example_code(doc) == "x = 1\n\ny = 2"
    assert example_code("No example here.") == ""


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
    reason="needs the docs extra (mkdocs, mkdocs-material, mkdocstrings[python])",
)
def test_site_builds_strict_with_the_api_reference(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    pages = {path: path.read_text(encoding="utf-8") for path in site.rglob("*.html")}
    api = "\n".join(text for path, text in pages.items() if "api" in path.parts)
    # Every public name has an entry (an anchor) in the API reference.
    for name in lightning_reg.__all__:
        assert re.search(rf'id="lightning_reg\.[\w.]+\.{name}"', api), f"{name} not in the API"
    # `Example::` blocks render as highlighted Python examples, not as literal text.
    assert not [path for path, text in pages.items() if "Example::" in text]
    assert 'class="example"' in api and '<span class="kn">import</span>' in api
