"""Real 2-process runs (DDP on CPU over gloo, and a simulated 2-node job): every rank agrees."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_reg.schedules import OneCycle
from tests.distributed.harness import run_ddp, run_two_nodes

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)


def assert_same_on_every_rank(results: list[dict], key: str) -> None:
    first = results[0][key]
    for other in results[1:]:
        if isinstance(first, torch.Tensor):
            assert torch.equal(first, other[key]), key
        else:
            assert first == other[key], key


def test_one_cycle_is_sized_for_two_ranks_with_accumulation(tmp_path: Path) -> None:
    results = run_ddp("one_cycle", tmp_path)
    # 6 batches per rank per epoch, accumulated by 2: 3 optimizer steps per epoch, 2 epochs.
    assert results[0]["estimated"] == 6
    sched = OneCycle(6, 0.1)
    assert results[0]["lrs"] == pytest.approx([sched(k) for k in range(6)], rel=1e-12)
    assert_same_on_every_rank(results, "lrs")
    assert_same_on_every_rank(results, "params")


def test_plateau_decision_is_the_same_on_every_rank(tmp_path: Path) -> None:
    results = run_ddp("plateau", tmp_path)
    # Mean over ranks: 1.0, 1.05, 1.1, 1.15, 1.2 -> only the first evaluation is a best;
    # patience 1 reduces at each later one (rank 0 alone would never reduce).
    assert results[0]["lrs"] == pytest.approx([0.08, 0.04, 0.02, 0.01, 0.005])
    assert_same_on_every_rank(results, "lrs")
    assert_same_on_every_rank(results, "state")
    assert_same_on_every_rank(results, "params")


def test_two_simulated_nodes_agree(tmp_path: Path) -> None:
    results = run_two_nodes("plateau", tmp_path)
    assert results[0]["lrs"] == pytest.approx([0.08, 0.04, 0.02, 0.01, 0.005])
    assert_same_on_every_rank(results, "lrs")
    assert_same_on_every_rank(results, "params")
