"""Helpers shared by ``overhead.py`` and ``convergence.py``.

* :func:`machine_header`: the command, machine, versions and date, as Markdown bullets.
* :func:`markdown_table`: a Markdown table from headers, rows and column alignments.
* :func:`write_section`: rewrite one marked section of ``docs/benchmarks.md``, leaving the rest.
* :func:`quiet_lightning`: silence Lightning's per-fit info lines and known harmless warnings.
"""

from __future__ import annotations

import datetime
import logging
import os
import platform
import shlex
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
IMG = ROOT / "docs" / "img"


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_header(device: torch.device) -> str:
    """Markdown bullets: the command that produced the numbers, machine, versions, date."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_name = str(script.relative_to(ROOT))
    except ValueError:
        script_name = script.name
    command = shlex.join(["python", script_name, *sys.argv[1:]])
    machine = f"{cpu_name()}, {os.cpu_count()} logical CPUs"
    if device.type == "cuda":
        machine += f", {torch.cuda.get_device_name(device)}"
    versions = (
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"lightning {lightning.__version__}, {torch.get_num_threads()} torch thread(s), "
        f"device `{device}`"
    )
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            f"- Command: `{command}`",
            f"- Machine: {machine}",
            f"- Versions: {versions}",
            f"- Date: {date}",
        ]
    )


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    """A Markdown table; ``align`` holds one ``l`` (left) or ``r`` (right) per column."""
    if len(align) != len(headers) or any(len(row) != len(headers) for row in rows):
        raise ValueError("every row and `align` need one entry per header")
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = [headers, rule, *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def write_section(name: str, body: str, path: Path = DOCS) -> None:
    """Replace the text between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` in ``path``.

    The markers are appended at the end of the file when missing; the rest is left as it is.
    """
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def quiet_lightning() -> None:
    """Silence the info lines Lightning prints for every fit and warnings that do not apply."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for message in (
        ".*does not have many workers.*",
        ".*GPU available but not used.*",
        ".*is smaller than the logging interval.*",
        ".*LeafSpec.*",
        ".*validation_step. but have no .val_dataloader.*",
    ):
        warnings.filterwarnings("ignore", message=message)
