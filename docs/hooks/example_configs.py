"""mkdocs hook: the table of example configs on the command's page, built from the files.

Each ``examples/configs/<name>.yaml`` opens with a comment saying what it changes; the
``<!-- example-configs -->`` marker in a page becomes a table of those names and comments, so
adding a config is adding its file (``lightning-reg configs`` lists the same files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MARKER = "<!-- example-configs -->"
CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"


def header_comment(path: Path) -> str:
    """The comment lines at the top of a YAML file, joined into one paragraph; indented lines
    (``#   lightning-reg fit ...``, a command to run it) are left out."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("#  "):
            lines.append(line.lstrip("#").strip())
    return " ".join(lines)


def configs_table() -> str:
    """The Markdown table; a ``|`` in a comment (``sum|w|``) is escaped, not a cell border."""
    rows = ["| Config | What it is |", "| --- | --- |"]
    for path in sorted(CONFIGS.glob("*.yaml")):
        comment = header_comment(path).replace("|", "\\|")
        rows.append(f"| `{path.stem}` | {comment} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return markdown.replace(MARKER, configs_table()) if MARKER in markdown else markdown
