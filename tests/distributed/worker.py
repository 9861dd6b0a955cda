"""Distributed checks, run by one launch: ``python tests/distributed/worker.py OUT [CHECK...]``.

``tests/distributed/harness.py`` starts this script once; the first ``Trainer(strategy="ddp",
devices=2)`` makes Lightning's launcher re-run it for local rank 1, and every later Trainer of
the job (DDP or FSDP2) reuses the 2-rank process group. Each rank runs the checks in order and
saves what each returns to ``OUT/CHECK/rank<k>.pt``; a check that raises writes its traceback to
``OUT/CHECK/rank<k>.error`` and stops the job (the other ranks may be waiting in a collective).

Adding a check is adding one function here, named ``check_<name>``, taking the :class:`Launch`
and returning a dict of what the test compares (tensors, lists, numbers; ``torch.save``-able)::

    def check_my_feature(launch: Launch) -> dict[str, Any]:
        torch.manual_seed(0)  # every check seeds what it draws: checks share one process
        rec = Recorder()
        ddp_fit(launch, DigitsClassifier(), digits_loader(128, 16), callbacks=[rec], max_steps=4)
        return {"lrs": rec.lrs}

Its test takes the session fixture ``ddp_checks`` (``tests/conftest.py``):
``results = ddp_checks["my_feature"]`` is the list of each rank's dict, and raises with the
rank's traceback when the check failed. Run the checks by hand with
``python tests/distributed/worker.py /tmp/out my_feature`` (every check when none is named).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.utils.data import DataLoader

from lightning_reg.callbacks import (
    LRCallback,
    MaxNorm,
    OneCycleScheduler,
    PerformanceScheduler,
    ScheduledLR,
)
from lightning_reg.demos import RegularizedMLP
from lightning_reg.max_norm import apply_max_norm_
from lightning_reg.module import WeightPenaltyMixin
from lightning_reg.penalties import select_weights, weight_penalty, zero_fraction
from lightning_reg.schedules import Chain, Constant, CosineDecay, LinearWarmup, OneCycle
from tests.helpers import (
    DigitsClassifier,
    DigitsRegressor,
    digits,
    digits_loader,
    fit,
    make_trainer,
)


@dataclass(frozen=True)
class Launch:
    """Where a check runs: its own output folder, and the job's layout."""

    out: Path
    devices: int = 2
    num_nodes: int = 1


class Recorder(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])


class FirstStepGrad(Callback):
    """The gradient (flat) that the fit's first optimizer step used, read by a step post-hook."""

    def __init__(self) -> None:
        self.grad: torch.Tensor | None = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        def record(*_: Any) -> None:
            if self.grad is None:
                self.grad = torch.cat([p.grad.reshape(-1) for p in pl_module.parameters()])

        trainer.optimizers[0].register_step_post_hook(record)


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    """All parameters as one vector (sharded DTensors are gathered to their full value)."""
    full = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.parameters()]
    return torch.cat([p.detach().reshape(-1) for p in full])


class Regularized(WeightPenaltyMixin, DigitsClassifier):
    """The digits MLP with an l1+l2 penalty; with `shard=True` FSDP2 shards every Linear."""

    def __init__(self, shard: bool = False) -> None:
        super().__init__(lr=0.5, momentum=0.0)
        self.configure_penalty(l1=1e-3, l2=1e-2)
        self.shard = shard

    def configure_model(self) -> None:
        if not self.shard:
            return
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)


def regularized_kwargs() -> dict[str, Any]:
    """Trainer arguments of the regularized runs (a fresh MaxNorm each time)."""
    return {"max_steps": 6, "callbacks": [MaxNorm(max_value=0.5)]}


def ddp_trainer(launch: Launch, **kwargs: Any) -> pl.Trainer:
    """A quiet ``make_trainer`` on every rank of the launch, writing under the check's folder."""
    return make_trainer(
        launch.out, strategy="ddp", devices=launch.devices, num_nodes=launch.num_nodes, **kwargs
    )


def ddp_fit(
    launch: Launch,
    model: pl.LightningModule,
    train: DataLoader[Any],
    val: DataLoader[Any] | None = None,
    strategy: Any = "ddp",
    **kwargs: Any,
) -> pl.Trainer:
    """The suite's ``fit`` on every rank of the launch (DDP unless ``strategy`` says otherwise),
    writing under the check's folder."""
    layout = {"devices": launch.devices, "num_nodes": launch.num_nodes}
    return fit(launch.out, model, train, val, strategy=strategy, **layout, **kwargs)


def check_one_cycle(launch: Launch) -> dict[str, Any]:
    """1cycle sized by the Trainer with 2 ranks, accumulation and limit_train_batches."""
    torch.manual_seed(0)
    model = DigitsClassifier()
    cb, rec = OneCycleScheduler(max_lr=0.1), Recorder()
    # 256 samples in batches of 16: 16 batches, 8 per rank, limited to 6, accumulated by 2.
    trainer = ddp_fit(
        launch,
        model,
        digits_loader(256, 16),
        callbacks=[cb, rec],
        max_epochs=2,
        accumulate_grad_batches=2,
        limit_train_batches=6,
    )
    return {
        "lrs": rec.lrs,
        "estimated": trainer.estimated_stepping_batches,
        "params": flat_params(model),
    }


class RankDependentLoss(DigitsClassifier):
    """Each rank logs its own `val_loss` without `sync_dist`: rank 0 improves, rank 1 worsens."""

    scripts = ([1.0, 0.9, 0.8, 0.7, 0.6], [1.0, 1.2, 1.4, 1.6, 1.8])

    def __init__(self) -> None:
        super().__init__(lr=0.08)
        self.lr_after_eval: list[float] = []

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        value = self.scripts[self.global_rank][self.current_epoch]
        self.log("val_loss", torch.tensor(value), sync_dist=False)

    def on_train_epoch_end(self) -> None:
        self.lr_after_eval.append(self.optimizers().param_groups[0]["lr"])


def check_plateau(launch: Launch) -> dict[str, Any]:
    torch.manual_seed(0)
    model = RankDependentLoss()
    cb = PerformanceScheduler(patience=1, min_delta=0.0)
    ddp_fit(
        launch,
        model,
        digits_loader(128, 16),
        digits_loader(64, 16),
        callbacks=[cb],
        max_epochs=5,
        limit_train_batches=2,
        limit_val_batches=1,
    )
    return {
        "lrs": model.lr_after_eval,
        "state": cb.state_dict(),
        "params": flat_params(model),
    }


def check_regularized_ddp(launch: Launch) -> dict[str, Any]:
    """MaxNorm + l1/l2 penalty under DDP: 2 ranks of 16 samples = one process with 32."""
    torch.manual_seed(0)
    model = Regularized()
    ddp_fit(launch, model, digits_loader(6 * 32, 16), **regularized_kwargs())
    return {"params": flat_params(model)}


def check_regularized_fsdp2(launch: Launch) -> dict[str, Any]:
    """The same under FSDP2 (ModelParallelStrategy + fully_shard): every weight is a DTensor."""
    torch.manual_seed(0)
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    model = Regularized(shard=True)
    loader = digits_loader(6 * 32, 16)
    ddp_fit(launch, model, loader, None, strategy, deterministic=False, **regularized_kwargs())
    params = flat_params(model)
    kinds = sorted({type(p).__name__ for p in model.parameters()})
    return {"params": params, "param_types": kinds}


def sgd_per_layer(model: DigitsClassifier) -> tuple[torch.optim.SGD, torch.optim.SGD]:
    """One SGD optimizer for ``net[0]`` and one for ``net[2]`` (manual optimization cases)."""
    return (
        torch.optim.SGD(model.net[0].parameters(), lr=model.lr),
        torch.optim.SGD(model.net[2].parameters(), lr=model.lr),
    )


class TwoOptimizerSteps(DigitsClassifier):
    """Manual optimization: ``net[0]`` stepped every batch, ``net[2]`` every second batch; with
    ``renorm=True`` each optimizer's weight is renormed by hand right after its step."""

    def __init__(self, renorm: bool = False) -> None:
        super().__init__(lr=0.5)
        self.automatic_optimization = False
        self.renorm = renorm
        with torch.no_grad():
            self.net[0].weight.mul_(20.0)
            self.net[2].weight.mul_(20.0)

    def _step(self, optimizer: Any, layer: nn.Linear) -> None:
        optimizer.step()
        if self.renorm:
            with torch.no_grad():
                layer.weight.copy_(torch.renorm(layer.weight, 2, 0, 0.5))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        first, second = self.optimizers()
        loss = torch.nn.functional.cross_entropy(self(x), y)
        self.manual_backward(loss)
        self._step(first, self.net[0])
        if batch_idx % 2 == 1:
            self._step(second, self.net[2])
        first.zero_grad()
        second.zero_grad()
        return loss

    def configure_optimizers(self) -> Any:
        return sgd_per_layer(self)


def check_max_norm_two_optimizers(launch: Launch) -> dict[str, Any]:
    """MaxNorm with two manually stepped optimizers under DDP, one callbacks list for two fits,
    against the same run renorming by hand after each optimizer's step."""
    callbacks = [MaxNorm(max_value=0.5)]
    runs, steps = {}, []
    for name in ("callback", "callback again", "by hand"):
        torch.manual_seed(0)
        model = TwoOptimizerSteps(renorm=name == "by hand")
        by_hand = name == "by hand"
        loader = digits_loader(8 * 32, 16)
        ddp_fit(launch, model, loader, max_epochs=1, callbacks=[] if by_hand else callbacks)
        runs[name] = flat_params(model)
        steps.append(callbacks[0].steps)
    return {"steps": steps[:2], **runs}


def check_mc_predict(launch: Launch) -> dict[str, Any]:
    """`Trainer.predict` with MC dropout under DDP: each rank samples its share of the data."""
    torch.manual_seed(0)
    model = RegularizedMLP(hidden=(32,), dropout=0.3, mc_samples=16)
    trainer = ddp_trainer(launch)
    outputs = trainer.predict(model, digits_loader(96, 16))
    assert outputs is not None
    return {
        "mean": torch.cat([o.mean for o in outputs]),  # type: ignore[union-attr]
        "std": torch.cat([o.std for o in outputs]),  # type: ignore[union-attr]
        "training_modes": sorted({m.training for m in model.modules()}),
        "params": flat_params(model),
    }


def composed_callbacks() -> dict[str, Callable[[], LRCallback]]:
    """The three composed schedules tested in one process, resumed, and under DDP."""
    return {
        "warmup_cosine": lambda: ScheduledLR(
            Chain([LinearWarmup(4, 0.1, start_lr=0.01), CosineDecay(10, 0.1, final_lr=1e-3)])
        ),
        "one_cycle_constant": lambda: ScheduledLR(Chain([OneCycle(10, 0.1), Constant(1e-3)])),
        "warmup_plateau": lambda: PerformanceScheduler(
            patience=1, min_delta=0.0, schedule=LinearWarmup(8, 0.08, start_lr=0.008)
        ),
    }


class FlatValLoss(DigitsClassifier):
    """Trains for real; logs a constant `val_loss`, so plateau decisions are known in advance."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", torch.tensor(1.0), sync_dist=True)


def composed_trainer_kwargs() -> dict[str, Any]:
    """4 optimizer steps and one validation batch per epoch, 4 epochs: 16 steps."""
    return {"max_epochs": 4, "limit_train_batches": 4, "limit_val_batches": 1}


def check_composed_schedules(launch: Launch) -> dict[str, Any]:
    """Each composed schedule under 2-rank DDP; every rank records its LR before each step."""
    result: dict[str, Any] = {}
    for name, make in composed_callbacks().items():
        torch.manual_seed(0)
        rec = Recorder()
        train, val = digits_loader(256, 16), digits_loader(64, 16)
        ddp_fit(
            launch, FlatValLoss(), train, val, callbacks=[make(), rec], **composed_trainer_kwargs()
        )
        result[name] = rec.lrs
    return result


def check_auto_max_lr(launch: Launch) -> dict[str, Any]:
    """`OneCycleScheduler(max_lr="auto")` on 2 ranks, then the same run with the value by hand."""
    import torch.nn.functional as F

    from lightning_reg.lr_range import LRRangeTest

    sweep = LRRangeTest(min_lr=1e-4, max_lr=10.0, num_steps=30)
    out: dict[str, Any] = {}
    for name in ("auto", "hand"):
        torch.manual_seed(0)
        model = DigitsClassifier()
        if name == "auto":
            # This rank's first batch of epoch 0 (DistributedSampler, seed 0): rank r takes
            # perm[r::2]. Its loss under the initial weights is this rank's first sweep loss.
            x, y = digits(256)
            perm = torch.randperm(256, generator=torch.Generator().manual_seed(0))
            first = perm[int(os.environ.get("LOCAL_RANK", 0)) :: 2][:16]
            loss = F.cross_entropy(model(x[first]), y[first])
            out["local_first_loss"] = float(loss)
            grads = torch.autograd.grad(loss, list(model.parameters()))
            out["local_first_grad"] = torch.cat([g.reshape(-1) for g in grads])
        cb = OneCycleScheduler(max_lr=out.get("max_lr", "auto"), range_test=sweep)
        first_step = FirstStepGrad()
        ddp_fit(
            launch,
            model,
            digits_loader(256, 16, shuffle=True),
            callbacks=[cb, first_step],
            max_epochs=2,
        )
        if name == "auto":
            assert cb.range_test_result is not None
            out["max_lr"] = cb.range_test_result.max_lr
            out["losses"] = cb.range_test_result.losses
            out["sweep_first_grad"] = first_step.grad
        out[f"{name}_params"] = flat_params(model)
    return out


class PenaltyByLoss(DigitsClassifier):
    """The reference: the penalty added to the loss (the old route); FSDP2 shards if asked."""

    def __init__(self, shard: bool = False, l1: float = 1e-3, l2: float = 1e-2) -> None:
        super().__init__(lr=0.2, momentum=0.9)
        self.shard, self.factors = shard, (l1, l2)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        if not isinstance(self, WeightPenaltyMixin):
            loss = loss + weight_penalty(select_weights(self), *self.factors)
        return loss

    def configure_model(self) -> None:
        if self.shard:
            from torch.distributed.fsdp import fully_shard

            mesh = self.device_mesh["data_parallel"]
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer, mesh=mesh)
            fully_shard(self.net, mesh=mesh)


class PenaltyByStep(WeightPenaltyMixin, PenaltyByLoss):
    def __init__(self, shard: bool = False, proximal: bool = False) -> None:
        l1 = 0.05 if proximal else 1e-3
        super().__init__(shard, l1=l1)
        self.configure_penalty(l1=l1, l2=1e-2, proximal_l1=proximal)


def _penalty_routes(launch: Launch, shard: bool) -> dict[str, Any]:
    """The loss route, the step route and proximal l1, each fit with accumulation 2 over
    windows of 2, 2 and a short 1 (5 batches of 16 per rank)."""
    out: dict[str, Any] = {}
    for route in ("loss", "step", "proximal"):
        torch.manual_seed(0)
        model = (
            PenaltyByLoss(shard) if route == "loss" else PenaltyByStep(shard, route == "proximal")
        )
        if shard:
            strategy: Any = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
            extra: dict[str, Any] = {"deterministic": False}
        else:
            strategy, extra = "ddp", {"gradient_clip_val": 0.3}
        loader = digits_loader(192, 16)
        windows = {"limit_train_batches": 5, "accumulate_grad_batches": 2}
        ddp_fit(launch, model, loader, None, strategy, max_epochs=1, **windows, **extra)
        out[route] = flat_params(model)
        if route == "proximal":
            out["zero_fraction"] = float(zero_fraction(model.penalized_weights()))
    return out


def check_mc_predict_dict(launch: Launch) -> dict[str, Any]:
    """`Trainer.predict` under DDP, dict batches, regression: each rank summarizes its rows."""
    model = DigitsRegressor(dropout=0.2, mc_samples=64)
    model.mc_input_key = "pixels"
    x, y = digits(64)
    data = [{"pixels": x[i], "label": y[i]} for i in range(64)]
    trainer = ddp_trainer(launch)
    outputs = trainer.predict(model, torch.utils.data.DataLoader(data, batch_size=16))
    assert outputs is not None
    return {
        "mean": torch.cat([o.mean for o in outputs]),  # type: ignore[union-attr]
        "std": torch.cat([o.std for o in outputs]),  # type: ignore[union-attr]
        "modes": sorted({m.training for m in model.modules()}),
        "state": model.state_dict(),
    }


def check_penalty_routes_ddp(launch: Launch) -> dict[str, Any]:
    return _penalty_routes(launch, shard=False)


def check_penalty_routes_fsdp2(launch: Launch) -> dict[str, Any]:
    return _penalty_routes(launch, shard=True)


class ManualPenalty(DigitsClassifier):
    """Manual optimization with two optimizers: ``net[0]`` stepped every batch, its gradients
    clipped by norm with ``self.clip_gradients`` in ``on_before_optimizer_step`` (after the
    penalty's gradient is added), ``net[2]`` every second batch. The reference (``by_loss``)
    adds the penalty of the weights each batch steps to the loss it back-propagates."""

    def __init__(self, by_loss: bool = True) -> None:
        super().__init__(lr=0.2, momentum=0.0)
        self.automatic_optimization = False
        self.by_loss = by_loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        first, second = self.optimizers()
        steps_second = batch_idx % 2 == 1
        loss = torch.nn.functional.cross_entropy(self(x), y)
        if self.by_loss:
            stepped = [self.net[0].weight, *([self.net[2].weight] if steps_second else [])]
            loss = loss + weight_penalty(stepped, l1=1e-3, l2=1e-2)
        self.manual_backward(loss)
        first.step()
        if steps_second:
            second.step()
        first.zero_grad()
        second.zero_grad()
        return loss

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        if optimizer is self.trainer.optimizers[0]:
            self.clip_gradients(optimizer, gradient_clip_val=0.05, gradient_clip_algorithm="norm")

    def configure_optimizers(self) -> Any:
        return sgd_per_layer(self)


class ManualPenaltyByStep(WeightPenaltyMixin, ManualPenalty):
    def __init__(self) -> None:
        super().__init__(by_loss=False)
        self.configure_penalty(l1=1e-3, l2=1e-2)


def check_penalty_manual_ddp(launch: Launch) -> dict[str, Any]:
    """Manual optimization, two optimizers, manual clipping, under DDP: the step route (the
    mixin) against the loss route, 6 batches of 16 per rank."""
    out: dict[str, Any] = {}
    for route in ("loss", "step"):
        torch.manual_seed(0)
        model = ManualPenalty() if route == "loss" else ManualPenaltyByStep()
        ddp_fit(launch, model, digits_loader(192, 16), max_epochs=1, limit_train_batches=6)
        out[route] = flat_params(model)
    return out


def check_dtensor_shards(launch: Launch) -> dict[str, Any]:
    """``apply_max_norm_`` and ``weight_penalty`` on DTensors sharded over the job's ranks (each
    rank holds 3 of 6 rows): placements given by hand, then ``fully_shard`` (FSDP2)."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor, init_device_mesh

    if not torch.distributed.is_initialized():  # run alone: a DDP fit starts the other rank
        ddp_fit(launch, DigitsClassifier(), digits_loader(32, 16), max_steps=1)
    mesh = init_device_mesh("cpu", (torch.distributed.get_world_size(),))
    w = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)) * 2
    out: dict[str, Any] = {"w": w}
    for key, placement in (("shard0", Shard(0)), ("replicate", Replicate())):
        d = nn.Parameter(distribute_tensor(w.clone(), mesh, [placement]))
        apply_max_norm_([d], max_value=1.0, norm_type=3.0)
        out[key] = d.full_tensor()
    try:
        apply_max_norm_([distribute_tensor(w.clone(), mesh, [Shard(1)])])
        out["shard1_error"] = ""
    except ValueError as err:
        out["shard1_error"] = str(err)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2))
    with torch.no_grad():
        model[0].weight.mul_(10.0)
    out["before"] = model[0].weight.detach().clone()
    fully_shard(model, mesh=mesh)
    out["shard0_only"] = [p.is_shard(0) for p in model[0].weight.placements] == [True]
    out["local_rows"] = model[0].weight.to_local().shape[0]
    apply_max_norm_(model, max_value=1.0)
    out["full"] = [model[0].weight.full_tensor(), model[1].weight.full_tensor()]
    penalty = weight_penalty([model[0].weight, model[1].weight], l1=0.1, l2=0.2)
    out["penalty_type"] = type(penalty).__name__
    penalty.backward()
    out["penalty"] = penalty.detach()
    out["grad"] = model[0].weight.grad.full_tensor()
    return out


def check_fsdp2_resume_switched_on_momentum(launch: Launch) -> dict[str, Any]:
    """FSDP2 with ``SGD(momentum=0)``, whose momentum ``OneCycleScheduler`` switches on: 6 steps
    in one fit, and 3 steps, a checkpoint, then a fit resumed from it to 6."""

    def run(epochs: int, ckpt_path: Path | None = None) -> tuple[torch.Tensor, list[float]]:
        torch.manual_seed(0)
        model = PenaltyByLoss(shard=True)
        model.momentum = 0.0
        rec = Recorder()
        trainer = make_trainer(
            launch.out,
            strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
            devices=launch.devices,
            num_nodes=launch.num_nodes,
            max_epochs=epochs,
            callbacks=[rec, OneCycleScheduler(max_lr=0.3, total_steps=6)],
            deterministic=False,
        )
        trainer.fit(model, digits_loader(32, 16), ckpt_path=ckpt_path)  # one step per epoch
        if ckpt_path is None and epochs < 6:
            trainer.save_checkpoint(launch.out / "ckpt")
        return flat_params(model), rec.lrs

    params, lrs = run(6)
    run(3)
    resumed, resumed_lrs = run(6, launch.out / "ckpt")
    return {"params": params, "lrs": lrs, "resumed": resumed, "resumed_lrs": resumed_lrs}


def check_mlp_logs_global_losses(launch: Launch) -> dict[str, Any]:
    """``RegularizedMLP`` (the CLI's model) validated on 2 ranks: its logged ``val/loss`` and the
    loss of this rank's share of the validation rows (rank r takes rows r, r + 2, ...)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = RegularizedMLP(hidden=(16,))
    trainer = ddp_fit(launch, model, digits_loader(64, 16), digits_loader(64, 16), max_epochs=1)
    x, y = digits(64)
    share = torch.arange(trainer.global_rank, 64, trainer.world_size)
    with torch.no_grad():
        local = F.cross_entropy(model.eval()(x[share]), y[share])
    return {"logged": float(trainer.callback_metrics["val/loss"]), "local": float(local)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run distributed checks on this rank.")
    parser.add_argument("out", type=Path, help="each check writes OUT/CHECK/rank<k>.pt")
    parser.add_argument("checks", nargs="*", help=f"default: all of {', '.join(CHECKS)}")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--num-nodes", type=int, default=1)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.checks) - set(CHECKS))
    if unknown:
        parser.error(f"no check named {', '.join(unknown)}")
    torch.set_num_threads(1)
    # Lightning's launcher starts the other local ranks with LOCAL_RANK set; the harness sets
    # NODE_RANK for a simulated second node.
    rank = int(os.environ.get("NODE_RANK", 0)) * args.devices + int(os.environ.get("LOCAL_RANK", 0))
    for name in args.checks or CHECKS:
        launch = Launch(args.out / name, args.devices, args.num_nodes)
        launch.out.mkdir(parents=True, exist_ok=True)
        try:
            result = CHECKS[name](launch)
        except BaseException:
            (launch.out / f"rank{rank}.error").write_text(traceback.format_exc())
            # Stop the job: the other ranks may wait in a collective this rank will never join.
            # Exiting closes this rank's gloo connections, so their wait fails at once.
            sys.stdout.flush()
            os._exit(1)
        torch.save(result, launch.out / f"rank{rank}.pt")
    # Lightning leaves the process group up; tearing it down before exit keeps gloo's threads
    # from aborting the process ("terminate called without an active exception").
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


CHECKS: dict[str, Callable[[Launch], dict[str, Any]]] = {
    name.removeprefix("check_"): function
    for name, function in list(globals().items())
    if name.startswith("check_") and callable(function)
}

if __name__ == "__main__":
    main()
