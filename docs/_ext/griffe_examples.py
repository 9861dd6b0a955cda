"""Griffe extension: render the reST-style ``Example::`` blocks of our docstrings as code.

The package's Google-style docstrings end with ``Example::`` followed by an indented code
block (the form Lightning uses). Griffe's Google parser does not know that header, so the code
would render as an unhighlighted block under a literal "Example::". This extension rewrites
each such block, before parsing, into a Google ``Example:`` section holding a fenced
``python`` block. The docstrings in the source stay as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_HEADER = re.compile(r"^(?P<indent>[ \t]*)Examples?::[ \t]*$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def fence_example_blocks(text: str) -> str:
    """Rewrite every ``Example::`` + indented block of ``text`` as ``Example:`` + fenced code."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _HEADER.match(lines[i])
        if match is None:
            out.append(lines[i])
            i += 1
            continue
        base = len(match.group("indent"))
        j = i + 1
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
            j += 1
        body = lines[i + 1 : j]
        while body and not body[-1].strip():
            body.pop()
        code = [line for line in body if line.strip()]
        if not code:
            out.append(lines[i])
            i += 1
            continue
        pad = " " * min(_indent(line) for line in code)
        start = next(k for k, line in enumerate(body) if line.strip())
        out.append(" " * base + "Example:")
        out.append(pad + "```python")
        out.extend(body[start:])
        out.append(pad + "```")
        out.extend(lines[i + 1 + len(body) : j])
        i = j
    return "\n".join(out)


class FenceExampleBlocks(griffe.Extension):
    """Apply :func:`fence_example_blocks` to every docstring griffe loads."""

    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_example_blocks(obj.docstring.value)
