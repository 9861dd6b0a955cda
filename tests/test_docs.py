"""The docs: `mkdocs build --strict` covers every public module, and every public class and
function has a ``>>>`` example that pytest runs as a doctest (``--doctest-modules``)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import re
import subprocess
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
import yaml

import lightning_reg

ROOT = Path(__file__).resolve().parents[1]


def public_modules() -> list[ModuleType]:
    """``lightning_reg`` and every module under it whose dotted name has no ``_`` part."""
    names = [
        info.name
        for info in pkgutil.walk_packages(lightning_reg.__path__, "lightning_reg.")
        if not any(part.startswith("_") for part in info.name.split("."))
    ]
    return [lightning_reg, *(importlib.import_module(name) for name in names)]


def public_objects() -> dict[str, object]:
    """Every name in a public module's ``__all__``, by its defining module's dotted path."""
    found: dict[str, object] = {}
    for module in public_modules():
        for name in module.__all__:
            obj = getattr(module, name)
            home = getattr(obj, "__module__", module.__name__)
            found[f"{home}.{name}"] = obj
    return found


def classes_and_functions() -> list[str]:
    return sorted(
        path
        for path, obj in public_objects().items()
        if inspect.isclass(obj) or inspect.isfunction(obj)
    )


def test_every_public_module_has_an_all() -> None:
    for module in public_modules():
        assert isinstance(getattr(module, "__all__", None), list), module.__name__


@pytest.mark.parametrize("path", classes_and_functions())
def test_public_name_has_a_doctest_example(path: str) -> None:
    doc = inspect.getdoc(public_objects()[path]) or ""
    assert "Example::" not in doc, f"{path}: an `Example::` block (write it as `>>>` lines)"
    assert re.search(r"^\s*>>> ", doc, flags=re.MULTILINE), f"{path} has no `>>>` example"


def test_the_index_table_names_the_library_api() -> None:
    # docs/index.md: "The library API is reached from `lightning_reg` (the table below)": the
    # names of its first column (less the demos, the command and what a parenthesis places in a
    # submodule) are exactly what `from lightning_reg import ...` offers.
    table = (ROOT / "docs" / "index.md").read_text().split("| --- | --- | --- |\n")[1]
    firsts = [row.split(" | ")[0] for row in table.split("\n\n")[0].splitlines()]
    listed = {
        name
        for first in firsts
        if not first.startswith(("| `lightning_reg.demos`", "| `lightning-reg`"))
        for name in re.findall(r"`(\w+)`", re.sub(r"\(.*?\)", "", first))
    }
    assert listed == set(lightning_reg.__all__)


def test_the_cli_page_lists_every_model_option(capsys: pytest.CaptureFixture[str]) -> None:
    from lightning_reg.demos.cli import main

    with pytest.raises(SystemExit):
        main(["fit", "--print_config"])
    options = yaml.safe_load(capsys.readouterr().out)["model"]
    text = (ROOT / "docs" / "cli.md").read_text()
    listed = text.split("- **`model`**: the options of `RegularizedMLP` and `RegularizedModule` (")[
        1
    ]
    assert set(re.findall(r"`(\w+)`", listed.split(")")[0])) == set(options)


def test_pytest_collects_the_docstring_examples() -> None:
    # The README's test command, `python -m pytest`, runs them: the package is a test path and
    # doctest collection is on.
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "lightning_reg" in options["testpaths"]
    assert "--doctest-modules" in options["addopts"].split()


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
    reason="needs the docs extra (mkdocs, mkdocs-material, mkdocstrings[python])",
)
def test_site_builds_strict_with_the_api_reference(
    built_site: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, site = built_site
    assert result.returncode == 0, result.stderr[-4000:]
    pages = {path: path.read_text(encoding="utf-8") for path in site.rglob("*.html")}
    api = "\n".join(text for path, text in pages.items() if "api" in path.parts)
    # Every public module has a page, every public name an entry (an anchor) on it.
    for module in public_modules():
        if module.__name__.count(".") < 2:  # lightning_reg.callbacks.one_cycle: its package's page
            assert f'id="{module.__name__}"' in api, f"{module.__name__} has no API page"
    for path in public_objects():
        name = path.rsplit(".", 1)[1]
        assert re.search(rf'id="lightning_reg\.[\w.]+\.{name}"', api), f"{path} not in the API"
    # The command's page lists every example config (built from the files by a mkdocs hook).
    cli_page = pages[site / "cli" / "index.html"]
    for config in sorted((ROOT / "examples" / "configs").glob("*.yaml")):
        assert f"<td><code>{config.stem}</code></td>" in cli_page, config.name
    # Examples render as highlighted Python sessions, not as literal text.
    assert not [path for path, text in pages.items() if "Example::" in text]
    assert '<span class="gp">&gt;&gt;&gt; </span>' in api
