"""Fixtures shared by the test files."""

from __future__ import annotations

import pytest

from tests.distributed.harness import Checks, run_checks


@pytest.fixture(scope="session")
def ddp_checks(tmp_path_factory: pytest.TempPathFactory) -> Checks:
    """Every check of ``tests/distributed/worker.py``, run once per session by one 2-rank DDP
    job; ``ddp_checks["name"]`` is each rank's result of ``check_name``."""
    return run_checks(tmp_path_factory.mktemp("ddp_checks"))
