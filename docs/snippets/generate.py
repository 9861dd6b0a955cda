"""Regenerate the command outputs that the docs quote (docs/snippets/*.txt).

    python docs/snippets/generate.py

Runs ``lightning-reg fit`` (the default experiment) in a temporary folder and keeps what it
prints after training: the MC-dropout table, the accuracies and the list of output files.
docs/cli.md includes the result, so the page shows a real run rather than hand-copied numbers.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import tempfile
from pathlib import Path

import lightning
import torch

from lightning_reg.demos.cli import main

HERE = Path(__file__).resolve().parent


def default_fit() -> str:
    """What ``lightning-reg fit`` prints from the MC-dropout table on, with how it was made."""
    out = io.StringIO()
    with tempfile.TemporaryDirectory() as folder:
        cwd = Path.cwd()
        os.chdir(folder)
        try:
            with contextlib.redirect_stdout(out):
                main(["fit", "--trainer.enable_progress_bar=false"])
        finally:
            os.chdir(cwd)
    printed = out.getvalue()
    tail = printed[printed.index("MC dropout on") :]
    header = (
        f"$ lightning-reg fit   # {platform.machine()} CPU, torch {torch.__version__}, "
        f"lightning {lightning.__version__}\n...\n"
    )
    return header + tail


if __name__ == "__main__":
    path = HERE / "default_fit.txt"
    path.write_text(default_fit())
    print(path.read_text())
