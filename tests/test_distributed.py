"""Real 2-process runs (DDP on CPU over gloo, and a simulated 2-node job): every rank agrees."""

from __future__ import annotations

import pytest
import torch

from lightning_reg.schedules import OneCycle
from tests.distributed.harness import Checks

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


def test_one_cycle_is_sized_for_two_ranks_with_accumulation(ddp_checks: Checks) -> None:
    results = ddp_checks["one_cycle"]
    # 6 batches per rank per epoch, accumulated by 2: 3 optimizer steps per epoch, 2 epochs.
    assert results[0]["estimated"] == 6
    sched = OneCycle(6, 0.1)
    assert results[0]["lrs"] == pytest.approx([sched(k) for k in range(6)], rel=1e-12)
    assert_same_on_every_rank(results, "lrs")
    assert_same_on_every_rank(results, "params")


def test_auto_max_lr_sweeps_one_curve_and_picks_one_value_on_every_rank(
    ddp_checks: Checks,
) -> None:
    results = ddp_checks["auto_max_lr"]
    assert_same_on_every_rank(results, "losses")
    assert_same_on_every_rank(results, "max_lr")
    # The curve is the mean over ranks: its first point averages the ranks' own first losses,
    # which differ (each rank draws other samples).
    local = [r["local_first_loss"] for r in results]
    assert local[0] != pytest.approx(local[1])
    assert results[0]["losses"][0] == pytest.approx(sum(local) / 2, rel=1e-5)
    # The sweep's first step used DDP's synced gradient: the mean of the ranks' own gradients.
    mean_grad = (results[0]["local_first_grad"] + results[1]["local_first_grad"]) / 2
    assert not torch.allclose(results[0]["local_first_grad"], mean_grad, rtol=1e-3, atol=1e-5)
    for r in results:
        torch.testing.assert_close(r["sweep_first_grad"], mean_grad, rtol=1e-5, atol=1e-6)
    # The run after the sweep is the run with that max_lr by hand, on every rank.
    for r in results:
        assert torch.equal(r["auto_params"], r["hand_params"])
    assert_same_on_every_rank(results, "auto_params")


def test_plateau_decision_is_the_same_on_every_rank(ddp_checks: Checks) -> None:
    results = ddp_checks["plateau"]
    # Mean over ranks: 1.0, 1.05, 1.1, 1.15, 1.2 -> only the first evaluation is a best;
    # patience 1 reduces at each later one (rank 0 alone would never reduce).
    assert results[0]["lrs"] == pytest.approx([0.08, 0.04, 0.02, 0.01, 0.005])
    assert_same_on_every_rank(results, "lrs")
    assert_same_on_every_rank(results, "state")
    assert_same_on_every_rank(results, "params")


def test_two_simulated_nodes_agree(two_node_checks: Checks) -> None:
    results = two_node_checks["plateau"]
    assert results[0]["lrs"] == pytest.approx([0.08, 0.04, 0.02, 0.01, 0.005])
    assert_same_on_every_rank(results, "lrs")
    assert_same_on_every_rank(results, "params")


@pytest.fixture(scope="module")
def single_process_reference(tmp_path_factory: pytest.TempPathFactory) -> torch.Tensor:
    """The regularized run in one process, each batch the union of the 2 ranks' batches.

    Lightning gives a training loader a shuffling ``DistributedSampler`` (seed 0): rank r takes
    ``perm[r::2]`` of ``perm = randperm(n)``, so global batch k is ``perm[32k : 32k + 32]``.
    """
    from torch.utils.data import DataLoader, TensorDataset

    from tests.distributed.worker import Regularized, flat_params, regularized_kwargs
    from tests.helpers import digits, fit

    x, y = digits(6 * 32)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(x[perm], y[perm]), batch_size=32)
    torch.manual_seed(0)
    model = Regularized()
    fit(tmp_path_factory.mktemp("ref"), model, loader, **regularized_kwargs())
    # The constraint binds in this run: the largest row norm sits at the bound.
    largest = max(
        float(m.weight.detach().norm(dim=1).max()) for m in model.net if hasattr(m, "weight")
    )
    assert largest == pytest.approx(0.5, rel=1e-5)
    return flat_params(model)


@pytest.mark.parametrize("case", ["regularized_ddp", "regularized_fsdp2"])
def test_max_norm_and_penalty_match_a_single_process(
    ddp_checks: Checks, single_process_reference: torch.Tensor, case: str
) -> None:
    results = ddp_checks[case]
    assert_same_on_every_rank(results, "params")
    torch.testing.assert_close(results[0]["params"], single_process_reference, rtol=1e-5, atol=1e-6)
    if case == "regularized_fsdp2":
        assert results[0]["param_types"] == ["DTensor"]


def test_max_norm_two_optimizers_reused_across_fits_under_ddp(ddp_checks: Checks) -> None:
    results = ddp_checks["max_norm_two_optimizers"]
    # 256 samples, 16 per rank and batch: 8 batches; the second optimizer steps every second one.
    assert results[0]["steps"] == [{0: 8, 1: 4}, {0: 8, 1: 4}]  # the second fit started fresh
    for key in ("callback", "callback again", "by hand", "steps"):
        assert_same_on_every_rank(results, key)
    assert torch.equal(results[0]["callback"], results[0]["by hand"])
    assert torch.equal(results[0]["callback again"], results[0]["by hand"])


def test_mc_dropout_predict_under_ddp(ddp_checks: Checks) -> None:
    results = ddp_checks["mc_predict"]
    # 96 samples over 2 ranks: 48 each, every one with MC statistics.
    assert [len(r["mean"]) for r in results] == [48, 48]
    for r in results:
        torch.testing.assert_close(r["mean"].sum(-1), torch.ones(48))
        assert bool((r["std"] > 0).any())
        assert r["training_modes"] == [True]  # the model was in train mode before predict
    assert_same_on_every_rank(results, "params")
    # Different ranks predicted different samples.
    assert not torch.equal(results[0]["mean"], results[1]["mean"])


@pytest.mark.slow
def test_penalty_step_route_equals_loss_route_under_ddp_and_fsdp2(ddp_checks: Checks) -> None:
    """Accumulation 2 with a short last window (and clipping under DDP): the step route's
    weights are the loss route's; proximal l1 leaves exact zeros, the same on every rank."""
    ddp = ddp_checks["penalty_routes_ddp"]
    fsdp2 = ddp_checks["penalty_routes_fsdp2"]
    for results in (ddp, fsdp2):
        for key in ("step", "proximal", "zero_fraction"):
            assert_same_on_every_rank(results, key)
        torch.testing.assert_close(results[0]["step"], results[0]["loss"], rtol=1e-5, atol=1e-7)
        assert results[0]["zero_fraction"] > 0.2


@pytest.mark.slow
def test_penalty_under_manual_optimization_with_clipping_equals_loss_route_under_ddp(
    ddp_checks: Checks,
) -> None:
    """Two manually stepped optimizers, `self.clip_gradients` on one, 2 DDP ranks: the mixin's
    weights are the loss route's on every rank (clipping sees data plus penalty gradient)."""
    results = ddp_checks["penalty_manual_ddp"]
    for key in ("loss", "step"):
        assert_same_on_every_rank(results, key)
    torch.testing.assert_close(results[0]["step"], results[0]["loss"], rtol=1e-5, atol=1e-7)


def test_fsdp2_resume_keeps_the_momentum_a_schedule_switched_on(ddp_checks: Checks) -> None:
    """torch's distributed checkpoint restores only the optimizer state that the optimizer as it
    is makes: the LR callback switches momentum on before the restore, so the checkpoint's
    momentum buffers come back and the resumed run is the uninterrupted one."""
    results = ddp_checks["fsdp2_resume_switched_on_momentum"]
    assert results[0]["resumed_lrs"] == results[0]["lrs"][3:]
    torch.testing.assert_close(results[0]["resumed"], results[0]["params"], rtol=1e-6, atol=1e-7)
    assert_same_on_every_rank(results, "resumed")


def test_regularized_mlp_logs_losses_over_every_rank(ddp_checks: Checks) -> None:
    """The CLI's model logs `val/loss` (and `test/loss`) with `sync_dist`: the mean over the
    ranks, not rank 0's share of the rows, as `val/acc` (a torchmetrics metric) already was."""
    results = ddp_checks["mlp_logs_global_losses"]
    local = [r["local"] for r in results]
    assert local[0] != pytest.approx(local[1])
    for r in results:
        assert r["logged"] == pytest.approx(sum(local) / 2, rel=1e-5)
