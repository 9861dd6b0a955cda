"""Griffe extension: the docstrings' Sphinx roles become cross-references on the API pages.

The docstrings use reST roles (``:func:`mc_dropout_predict```, ``:class:`~lightning_reg.MaxNorm```),
which the command's help also reads (``plain_help``). mkdocstrings renders Markdown, where a role
would show as raw text; this extension (listed under the Python handler's ``extensions`` in
``mkdocs.yml``) rewrites each role, once the package is loaded, into an autorefs cross-reference
to the object's canonical path: a link where that object has a page, plain code where it has
none (``optional``: no warning). A name outside ``lightning_reg`` (``torch.nn.Module``) becomes
plain code. ``~`` shows the last part of the name, as in Sphinx.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|data|mod|obj|exc|const):`(~?)\.?([^`]+)`")
PACKAGE = "lightning_reg"


def _find(pkg: griffe.Module, path: str) -> griffe.Object | griffe.Alias | None:
    """The object at the dotted ``path`` inside ``pkg``, or None."""
    if path == pkg.path:
        return pkg
    if not path.startswith(pkg.path + "."):
        return None
    try:
        return pkg[path.removeprefix(pkg.path + ".")]
    except (KeyError, ValueError, griffe.AliasResolutionError):
        return None


def canonical(pkg: griffe.Module, scope: griffe.Object, name: str) -> str | None:
    """The canonical path of ``name`` as written in ``scope``'s docstring (absolute, or relative
    to the scope: a member, an import, ``Class.method``), or None outside the package."""
    first, _, rest = name.partition(".")
    candidates = [name]
    try:
        resolved = scope.resolve(first)
    except griffe.NameResolutionError:
        resolved = None
    if resolved is not None:
        candidates.append(f"{resolved}.{rest}" if rest else resolved)
    for path in candidates:
        found = _find(pkg, path)
        if found is not None:
            try:
                return found.canonical_path
            except griffe.AliasResolutionError:
                return None
    return None


def rewrite(pkg: griffe.Module, scope: griffe.Object, text: str) -> str:
    """``text`` with every role replaced by an optional autorefs cross-reference (or code),
    except in code: ``>>>`` examples (to the next blank line) and fenced blocks."""

    def replace(match: re.Match[str]) -> str:
        short, name = match[1], match[2]
        shown = f"<code>{html.escape(name.rsplit('.', 1)[-1] if short else name)}</code>"
        path = canonical(pkg, scope, name)
        if path is None:
            return shown
        return f'<autoref identifier="{path}" optional>{shown}</autoref>'

    lines, example, fenced = [], False, False
    for line in text.split("\n"):
        stripped = line.strip()
        fence = stripped.startswith("```")
        example = (example and bool(stripped)) or stripped.startswith(">>>")
        lines.append(line if example or fenced or fence else ROLE.sub(replace, line))
        fenced = fenced != fence
    return "\n".join(lines)


class SphinxRoles(griffe.Extension):
    """Rewrites the roles of every docstring in the ``lightning_reg`` package."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.path != PACKAGE:
            return
        seen: set[int] = set()
        todo: list[griffe.Object] = [pkg]
        while todo:
            obj = todo.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = rewrite(pkg, obj, obj.docstring.value)
            todo.extend(member for member in obj.members.values() if not member.is_alias)
