"""The docs' own machinery, without building the site: the API pages get cross-references, not
raw Sphinx roles; the configs table keeps ``|`` in a comment; the pages name the extras'
packages as ``pyproject.toml`` does."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
griffe = pytest.importorskip("griffe", reason="needs the docs extra (mkdocstrings[python])")


def hook(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "hooks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def docstrings(obj: Any) -> list[tuple[str, str]]:
    """``(path, docstring)`` of ``obj`` and every object defined under it."""
    found = [(obj.path, obj.docstring.value)] if obj.docstring is not None else []
    for member in obj.members.values():
        if not member.is_alias:
            found += docstrings(member)
    return found


def outside_examples(text: str) -> str:
    """``text`` without its ``>>>`` examples (each up to the next blank line)."""
    return re.sub(r"^\s*>>>.*?(?=^\s*$|\Z)", "", text, flags=re.MULTILINE | re.DOTALL)


def test_api_docstrings_carry_cross_references_not_roles() -> None:
    roles = hook("sphinx_roles")
    package = griffe.load(
        "lightning_reg",
        search_paths=[str(ROOT)],
        extensions=griffe.load_extensions(roles.SphinxRoles),
    )
    texts = docstrings(package)
    assert len(texts) > 100
    raw = [path for path, text in texts if roles.ROLE.search(outside_examples(text))]
    assert raw == [], raw
    links = [
        target
        for _, text in texts
        for target in re.findall(r'<autoref identifier="([\w.]+)" optional>', text)
    ]
    assert len(links) > 100  # the docstrings hold about 180 roles, nearly all to the package
    unknown = {target for target in links if not target.startswith("lightning_reg")}
    assert unknown == set()
    # A role inside a `>>>` example is code: left as written.
    plain_help = package["demos.cli.plain_help"].docstring.value
    assert '>>> plain_help("dropout of :meth:`dense` blocks' in plain_help


def test_a_role_becomes_a_link_to_the_canonical_path() -> None:
    roles = hook("sphinx_roles")
    package = griffe.load("lightning_reg", search_paths=[str(ROOT)])
    scope = package["uncertainty"]
    assert roles.rewrite(package, scope, "see :func:`mc_dropout_predict`.") == (
        'see <autoref identifier="lightning_reg.uncertainty.mc_dropout_predict" optional>'
        "<code>mc_dropout_predict</code></autoref>."
    )
    # Through a re-export, shown short with `~`; outside the package: plain code.
    assert roles.rewrite(package, scope, ":class:`~lightning_reg.demos.RegularizedMLP`") == (
        '<autoref identifier="lightning_reg.demos.mlp.RegularizedMLP" optional>'
        "<code>RegularizedMLP</code></autoref>"
    )
    assert roles.rewrite(package, scope, ":class:`torch.nn.Module`") == (
        "<code>torch.nn.Module</code>"
    )


def test_the_configs_table_escapes_pipes_and_leaves_out_commands() -> None:
    table = hook("example_configs").configs_table()
    assert r"l1 * sum\|w\| + l2 * sum w**2" in table  # rendered as |w|, not a cell border
    assert "/w/" not in table
    assert "lightning-reg configs --path mnist5k" not in table  # the header's command line


def test_the_docs_name_the_extras_packages() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    names = {
        extra: {re.split(r"[\[<>=]", line)[0] for line in extras[extra]}
        for extra in ("data", "cli")
    }
    started = " ".join((ROOT / "docs" / "getting-started.md").read_text().split())
    data = re.search(r"`data` \(([^)]*)\)", started)
    cli = re.search(r"`cli` \(([^)]*)\)", started)
    assert data and cli
    for extra, match in (("data", data), ("cli", cli)):
        for name in names[extra]:
            assert name in match[1], (extra, name)
    command = " ".join((ROOT / "docs" / "cli.md").read_text().split())
    listed = re.search(r'pip install -e "\.\[cli\]"` in a checkout: ([^)]*)\)', command)
    assert listed and all(name in listed[1] for name in names["cli"])
