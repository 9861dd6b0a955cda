"""Run real multi-process Lightning jobs (DDP on CPU, gloo) from pytest; collect per-rank results.

One job is ``python tests/distributed/worker.py OUT CHECK...`` in a new process session: every
rank runs every named check in order (``worker.py`` says how a check is written). The worker
builds real ``Trainer(strategy="ddp", accelerator="cpu", devices=2)`` objects; Lightning re-runs
the same script for the other local rank. The harness picks a free port and kills the whole
process group on the way out, so no process outlives the test. Its time limit is a guard against
a hung job only (``HANG_GUARD_S``), far above what a job takes on a busy machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tests.helpers import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("worker.py")


_LIVE: set[subprocess.Popen[str]] = set()


def stop_jobs() -> None:
    """Kill every job still running (a test session cut short leaves no process behind)."""
    for proc in list(_LIVE):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(cmds: list[list[str]], envs: list[dict[str, str]]) -> list[tuple[int, str]]:
    """Run the commands side by side; each one's exit code and output (stdout and stderr)."""
    procs = [
        subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for cmd, env in zip(cmds, envs, strict=True)
    ]
    _LIVE.update(procs)
    try:
        outputs = [proc.communicate(timeout=HANG_GUARD_S)[0] for proc in procs]
    except subprocess.TimeoutExpired as err:
        raise AssertionError(
            f"distributed job hung: running after {HANG_GUARD_S} s: {cmds}"
        ) from err
    finally:
        _LIVE.difference_update(procs)
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    return [(proc.returncode, out) for proc, out in zip(procs, outputs, strict=True)]


def _env(port: int, **extra: str) -> dict[str, str]:
    # Lightning's own variables (seeds, ranks) set by earlier in-process runs must not leak in.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PL_", "LOCAL_RANK", "NODE_RANK"))
    }
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
    )
    env.update(extra)
    return env


@dataclass(frozen=True)
class Checks:
    """What one job left in ``out``: each check's result on every rank, or why there is none."""

    out: Path
    world_size: int
    output: str

    def __getitem__(self, check: str) -> list[dict[str, Any]]:
        """Each rank's dict returned by ``check``, in rank order; an ``AssertionError`` with the
        ranks' tracebacks if it raised, or with the job's output if it never finished."""
        folder = self.out / check
        errors = [
            f"--- rank {rank} ---\n{path.read_text()}"
            for rank in range(self.world_size)
            if (path := folder / f"rank{rank}.error").exists()
        ]
        if errors:
            raise AssertionError(f"distributed check {check!r} raised:\n" + "\n".join(errors))
        missing = [r for r in range(self.world_size) if not (folder / f"rank{r}.pt").exists()]
        if missing:
            failed = sorted({path.parent.name for path in self.out.glob("*/rank*.error")})
            why = f"the job stopped at check {failed}" if failed else "the job died"
            raise AssertionError(
                f"distributed check {check!r} left no result on rank(s) {missing}: {why}. "
                f"The job's output ends:\n{self.output[-6000:]}"
            )
        return [
            torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(self.world_size)
        ]


def run_checks(out: Path, checks: Sequence[str] = ()) -> Checks:
    """One job on 2 local ranks (Lightning launches the second) running ``checks`` (default:
    every check of ``worker.py``)."""
    cmd = [sys.executable, str(WORKER), str(out), *checks, "--devices", "2"]
    ((_, output),) = _run([cmd], [_env(free_port())])
    return Checks(out, 2, output)


def run_checks_on_two_nodes(out: Path, checks: Sequence[str]) -> Checks:
    """Simulate ``num_nodes=2`` on this machine: two launches on 127.0.0.1, node ranks 0 and 1."""
    port = free_port()
    cmd = [sys.executable, str(WORKER), str(out), *checks, "--devices", "1", "--num-nodes", "2"]
    runs = _run([cmd, cmd], [_env(port, NODE_RANK="0"), _env(port, NODE_RANK="1")])
    return Checks(out, 2, "\n".join(output for _, output in runs))


def run_script(args: list[str]) -> str:
    """Run ``python ARGS`` (a script that may launch its own DDP ranks) on a free port; return
    its output, or fail with it if the script exits non-zero."""
    ((code, output),) = _run([[sys.executable, *args]], [_env(free_port())])
    assert code == 0, f"{args} failed (exit {code}):\n{output[-6000:]}"
    return output
