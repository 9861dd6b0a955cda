"""Run real multi-process Lightning jobs (DDP on CPU, gloo) from pytest; collect per-rank results.

Each job is ``python tests/distributed/worker.py CASE OUT_DIR ...`` in a new process session. The
worker builds a real ``Trainer(strategy="ddp", accelerator="cpu", devices=2)``; Lightning re-runs
the same script for the other local rank. Every rank writes ``OUT_DIR/rank<k>.pt``. The harness
picks a free port, enforces a timeout and kills the whole process group on the way out, so no
process outlives the test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("worker.py")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(cmds: list[list[str]], envs: list[dict[str, str]], timeout: float) -> list[str]:
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
    try:
        outputs = [proc.communicate(timeout=timeout)[0] for proc in procs]
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"distributed job timed out after {timeout} s: {cmds}") from err
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    for proc, out in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            raise AssertionError(f"distributed job failed (exit {proc.returncode}):\n{out[-6000:]}")
    return outputs


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


def run_ddp(case: str, out: Path, *args: str, timeout: float = 180) -> list[dict[str, Any]]:
    """Run ``case`` on 2 local ranks; return each rank's result dict (rank order)."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(WORKER), case, str(out), "--devices", "2", *args]
    _run([cmd], [_env(free_port())], timeout)
    return load_results(out, 2)


def run_two_nodes(case: str, out: Path, *args: str, timeout: float = 180) -> list[dict[str, Any]]:
    """Simulate ``num_nodes=2`` on this machine: two launches on 127.0.0.1, node ranks 0 and 1."""
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [sys.executable, str(WORKER), case, str(out), "--devices", "1", "--num-nodes", "2", *args]
    _run([cmd, cmd], [_env(port, NODE_RANK="0"), _env(port, NODE_RANK="1")], timeout)
    return load_results(out, 2)


def run_script(args: list[str], timeout: float = 120) -> str:
    """Run ``python ARGS`` (a script that may launch its own DDP ranks) on a free port; return
    its output."""
    return _run([[sys.executable, *args]], [_env(free_port())], timeout)[0]


def load_results(out: Path, world_size: int) -> list[dict[str, Any]]:
    results = []
    for rank in range(world_size):
        path = out / f"rank{rank}.pt"
        assert path.exists(), f"rank {rank} wrote no result in {out}"
        results.append(torch.load(path, weights_only=False))
    return results
