"""The package's metadata and the floors it declares (the built wheel and sdist are checked by
`.ci/package`: twine, a fresh venv without and with the `cli` extra)."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def floor(requirement: str) -> tuple[str, Version]:
    req = Requirement(requirement)
    (spec,) = (s for s in req.specifier if s.operator == ">=")
    return req.name, Version(spec.version)


def test_the_license_file_is_the_declared_license() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert PROJECT["license"] == "Apache-2.0" and PROJECT["license-files"] == ["LICENSE"]
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a pointer to it


def test_classifiers_say_only_what_is_tested() -> None:
    classifiers = PROJECT["classifiers"]
    assert not [c for c in classifiers if c.startswith("Framework :: Pytest")]
    versions = [c.rsplit(" ", 1)[1] for c in classifiers if re.fullmatch(r".*:: 3\.\d+", c)]
    tested = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert versions == [tested]  # the Python CI runs
    assert PROJECT["requires-python"] == f">={tested}"
    assert set(PROJECT["urls"]) == {"Homepage", "Documentation", "Repository", "Issues"}


def test_every_floor_is_installed_by_the_package_check() -> None:
    # .ci/package installs the wheel with torch==2.13.0 and the `cli` extra at these pins.
    script = (ROOT / ".ci" / "package").read_text()
    pins = dict(re.findall(r"([\w-]+)(?:\[\w+\])?==([\d.]+)", script))
    declared = [*PROJECT["dependencies"], *PROJECT["optional-dependencies"]["cli"]]
    for requirement in declared:
        name, version = floor(requirement)
        if name in ("packaging", "typing-extensions"):
            continue  # Lightning's own dependencies, at versions above these floors
        assert name in pins, f"{name}'s floor is not installed by .ci/package"
        assert Version(pins[name]) == version, f"{name}: declared >={version}, checked {pins[name]}"


def test_the_extras_agree() -> None:
    extras = PROJECT["optional-dependencies"]
    floors = {floor(line) for name in ("plot", "data", "cli") for line in extras[name]}
    assert len({name for name, _ in floors}) == len(floors)  # one floor per package
    assert set(extras) == {"plot", "data", "cli", "docs", "dev"}
    assert {"build", "twine"} <= {Requirement(line).name for line in extras["dev"]}
