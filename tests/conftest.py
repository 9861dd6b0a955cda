"""Fixtures shared by the test files."""

from __future__ import annotations

import pytest
import torch

from tests.distributed.harness import Checks, run_checks


def pytest_configure(config: pytest.Config) -> None:
    # The suite's models are tiny: a second intra-op thread buys little, and on a busy machine
    # the two threads wait on each other (tests/test_examples.py took 66 s with two threads
    # and 20 s with one, side by side at load 8 on 2 cores). The DDP workers set one each too.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ddp_checks(tmp_path_factory: pytest.TempPathFactory) -> Checks:
    """Every check of ``tests/distributed/worker.py``, run once per session by one 2-rank DDP
    job; ``ddp_checks["name"]`` is each rank's result of ``check_name``."""
    return run_checks(tmp_path_factory.mktemp("ddp_checks"))
