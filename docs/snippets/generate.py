"""Regenerate the command outputs that the README and the docs quote (docs/snippets/*.txt).

    python docs/snippets/generate.py

Each snippet is what a documented command prints, run here as a user runs it (a fresh Python
process, in a temporary folder), with the wall time it took on this machine in its first line:

- ``default_fit.txt``: ``lightning-reg fit`` (the main job), from the MC-dropout table on;
- ``bad_value.txt``: ``lightning-reg fit --model.dropout 1.5``, its last line (the error);
- ``regularization.txt``: ``python examples/regularization.py``.

docs/cli.md includes the first two; the README and docs/regularization.md quote figures from
them. ``tests/test_quoted_figures.py`` reruns the commands and fails when a snippet or a quote
differs from what they print now.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
COMMANDS = {
    "default_fit": ["lightning-reg", "fit"],
    "bad_value": ["lightning-reg", "fit", "--model.dropout", "1.5"],
    "regularization": ["python", "examples/regularization.py"],
}


def _argv(command: list[str]) -> list[str]:
    """``command`` as this interpreter runs it (the console script is the CLI module's main)."""
    if command[0] == "lightning-reg":
        return [sys.executable, "-m", "lightning_reg.demos.cli", *command[1:]]
    return [sys.executable, str(ROOT / command[1]), *command[2:]]


def shown(name: str, printed: str) -> str:
    """The part of a command's output that its snippet keeps."""
    if name == "default_fit":
        return printed[printed.index("MC dropout on") :]
    if name == "bad_value":
        return printed.splitlines()[-1] + "\n"
    return printed


def run(name: str) -> tuple[str, float]:
    """What the command ``name`` prints (stdout, then stderr), and its wall time in seconds."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        result = subprocess.run(
            _argv(COMMANDS[name]), cwd=folder, env=env, capture_output=True, text=True
        )
        seconds = time.perf_counter() - start
    if name != "bad_value" and result.returncode != 0:
        raise RuntimeError(f"{' '.join(COMMANDS[name])} failed:\n{result.stderr[-3000:]}")
    printed = result.stdout if name != "bad_value" else result.stderr
    return shown(name, printed), seconds


def snippet(name: str) -> str:
    """The snippet's text: the command with the time it took, then what it printed."""
    printed, seconds = run(name)
    setting = (
        f"{round(seconds)} s on {platform.machine()} CPU, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, lightning {lightning.__version__}"
    )
    return f"$ {' '.join(COMMANDS[name])}   # {setting}\n...\n{printed}"


if __name__ == "__main__":
    for name in sys.argv[1:] or COMMANDS:
        path = HERE / f"{name}.txt"
        path.write_text(snippet(name))
        print(path.read_text())
