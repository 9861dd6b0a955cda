"""Settings and fixtures shared by the test files.

The jobs that run in processes of their own (the 2-rank DDP job running every check of
``tests/distributed/worker.py``, the simulated 2-node job, the DDP example script, the strict
docs build) start in the background, one after another, once the tests that read them are
collected, while the in-process tests run: the suite's own process uses one core (one torch
thread), the jobs the other. Each job's fixture waits for its result. Selecting tests (``-k``)
starts only the jobs they read.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.distributed.harness import (
    Checks,
    run_checks,
    run_checks_on_two_nodes,
    run_script,
    stop_jobs,
)
from tests.helpers import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]


def build_site(out: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``mkdocs build --strict`` of the docs into ``OUT/site``: the finished process, the site."""
    site = out / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    return result, site


# `lightning-reg fit` on 2 DDP ranks, small: a rank that leaves the command early makes the
# other fail in its next collective, so the job exits non-zero.
CLI_DDP_FLAGS = [
    "--trainer.strategy=ddp",
    "--trainer.devices=2",
    "--trainer.accelerator=cpu",
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=4",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
    "--trainer.enable_progress_bar=false",
    "--report.mc_samples=4",
]

# Fixture name -> the job that makes it, given a fresh folder. Listed in the order they start:
# each is done before the tests reading it come up (test_distributed runs after a minute of
# in-process tests; the docs build is short, so it goes first).
JOBS: dict[str, Callable[[Path], Any]] = {
    "built_site": build_site,
    "ddp_checks": run_checks,
    "two_node_checks": lambda out: run_checks_on_two_nodes(out, ["plateau"]),
    "ddp_example_output": lambda out: run_script([str(ROOT / "examples/ddp.py"), "--epochs", "2"]),
    "cli_ddp_output": lambda out: run_script(
        [
            "-m",
            "lightning_reg.demos.cli",
            "fit",
            *CLI_DDP_FLAGS,
            f"--trainer.default_root_dir={out}",
        ]
    ),
}
_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-jobs")
_STARTED: dict[str, Future[Any]] = {}
_FOLDER = Path(tempfile.mkdtemp(prefix="lightning_reg_test_jobs_"))


def pytest_configure(config: pytest.Config) -> None:
    # The suite's models are tiny: a second intra-op thread buys little, and on a busy machine
    # the two threads wait on each other (tests/test_examples.py took 66 s with two threads
    # and 20 s with one, side by side at load 8 on 2 cores). The DDP workers set one each too.
    torch.set_num_threads(1)


def _start(name: str) -> Future[Any]:
    if name not in _STARTED:
        _STARTED[name] = _POOL.submit(JOBS[name], _FOLDER / name)
    return _STARTED[name]


def pytest_runtestloop(session: pytest.Session) -> None:
    """Start the jobs the selected tests read, before the first test runs."""
    if session.config.option.collectonly:
        return
    wanted = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    for name in JOBS:
        if name in wanted:
            _start(name)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Drop the jobs not started, kill the one running (a session cut short), clean up."""
    _POOL.shutdown(wait=False, cancel_futures=True)
    stop_jobs()
    _POOL.shutdown(wait=True)
    shutil.rmtree(_FOLDER, ignore_errors=True)


@pytest.fixture(scope="session")
def ddp_checks() -> Checks:
    """Every check of ``tests/distributed/worker.py``, run once per session by one 2-rank DDP
    job; ``ddp_checks["name"]`` is each rank's result of ``check_name``."""
    return _start("ddp_checks").result()


@pytest.fixture(scope="session")
def two_node_checks() -> Checks:
    """The ``plateau`` check run by a simulated 2-node job (node ranks 0 and 1, 1 device each)."""
    return _start("two_node_checks").result()


@pytest.fixture(scope="session")
def ddp_example_output() -> str:
    """What ``python examples/ddp.py --epochs 2`` printed (2 ranks started by Lightning)."""
    return _start("ddp_example_output").result()


@pytest.fixture(scope="session")
def cli_ddp_output() -> str:
    """What ``lightning-reg fit`` with ``CLI_DDP_FLAGS`` (2 DDP ranks) printed."""
    return _start("cli_ddp_output").result()


@pytest.fixture(scope="session")
def built_site() -> tuple[subprocess.CompletedProcess[str], Path]:
    """The strict docs build (``build_site``): the finished ``mkdocs`` process and the site."""
    return _start("built_site").result()
