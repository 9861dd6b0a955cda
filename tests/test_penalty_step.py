"""The penalty applied as a gradient on each real optimizer step, against the loss route.

The reference (the old behaviour) adds ``weight_penalty`` to the loss ``training_step`` returns
or to the manual loss; the step route must give the same SGD trajectory under accumulation,
clipping, mixed precision, a skipped AMP step, manual optimization and freezing.
"""

from __future__ import annotations

import shutil
import warnings
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BackboneFinetuning, BaseFinetuning, Callback
from lightning.pytorch.plugins import MixedPrecision
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_reg.module import WeightPenaltyMixin
from lightning_reg.penalties import select_weights, soft_threshold_, weight_penalty
from tests.helpers import digits_loader, fit, make_trainer

L1, L2 = 2e-3, 2e-2


class _Base(pl.LightningModule):
    """A digits MLP; ``loss_route=True`` adds the penalty to the loss (the reference)."""

    def __init__(self, loss_route: bool, l1: float = L1, l2: float = L2, **penalty: Any) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(64, 24), nn.ReLU())
        self.head = nn.Linear(24, 10)
        self.loss_route = loss_route
        self.factors = (l1, l2)
        if not loss_route:
            self.configure_penalty(l1=l1, l2=l2, **penalty)  # type: ignore[attr-defined]

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        loss = F.cross_entropy(self.head(self.backbone(x.to(self.dtype))), y)
        if self.loss_route:
            l1, l2 = self.factors
            loss = loss + weight_penalty(select_weights(self), l1=l1, l2=l2)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=0.1, momentum=0.9)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        _record_gradients(self)


def _norms(grads: list[torch.Tensor]) -> torch.Tensor:
    """The norm of each gradient (none: an empty tensor, a window that skipped every batch)."""
    return torch.tensor([float(g.double().norm()) for g in grads], dtype=torch.float64)


def _record_gradients(module: pl.LightningModule) -> None:
    """The gradient norms the module's ``on_before_optimizer_step`` sees (after the callbacks',
    before clipping): data plus penalty gradient on both routes."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    seen = module.__dict__.setdefault("seen_before_step", [])
    seen.append(_norms(grads))


class _Step(WeightPenaltyMixin, _Base):
    pass


class _Recorder(Callback):
    """Weights after every batch; gradient norms seen by on_after_backward and the Trainer's
    callbacks (``callback_before_step``) and by the module's on_before_optimizer_step
    (``before_step``, filled in from the module after fit)."""

    def __init__(self) -> None:
        self.weights: list[list[torch.Tensor]] = []
        self.before_step: list[torch.Tensor] = []
        self.callback_before_step: list[torch.Tensor] = []
        self.after_backward: list[torch.Tensor] = []

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.after_backward.append(_norms(grads))

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.callback_before_step.append(_norms(grads))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        self.weights.append([p.detach().double().clone() for p in pl_module.parameters()])


class _Overflow(Callback):
    """Fills a gradient with inf on the given backward calls (a skipped AMP step)."""

    def __init__(self, calls: set[int]) -> None:
        self.calls, self.count = calls, 0

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.count in self.calls:
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            grads[0].fill_(float("inf"))
        self.count += 1


def _run(cls: type, tmp_path: Any, dtype: torch.dtype, callbacks: list, **kwargs: Any) -> Any:
    recorder = _Recorder()
    model = cls(loss_route=not issubclass(cls, WeightPenaltyMixin)).to(dtype)
    trainer = fit(tmp_path, model, digits_loader(160), callbacks=[*callbacks, recorder], **kwargs)
    recorder.before_step = model.__dict__.get("seen_before_step", [])
    return recorder, model, trainer


def _assert_same(
    ref: _Recorder, got: _Recorder, rtol: float, atol: float, hooks: bool = True
) -> None:
    assert len(ref.weights) == len(got.weights) > 0
    for a, b in zip(ref.weights, got.weights, strict=True):
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(y, x, rtol=rtol, atol=atol)
    if not hooks:
        return
    assert len(ref.before_step) == len(got.before_step) > 0
    for x, y in zip(ref.before_step, got.before_step, strict=True):
        torch.testing.assert_close(y, x, rtol=rtol, atol=atol)


CASES = {
    # 5 batches of 32 per epoch: windows of 2, 2 and a short last window of 1.
    "accumulate_2": dict(accumulate_grad_batches=2, max_epochs=2),
    "clip_norm": dict(gradient_clip_val=0.05, max_epochs=1),
    "clip_value_accumulate": dict(
        gradient_clip_val=0.002, gradient_clip_algorithm="value", accumulate_grad_batches=2
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_step_route_equals_loss_route_float64(case: str, tmp_path: Any) -> None:
    kwargs = {"max_epochs": 2, **CASES[case]}
    ref, _, _ = _run(_Base, tmp_path, torch.float64, [], **kwargs)
    got, _, _ = _run(_Step, tmp_path, torch.float64, [], **kwargs)
    _assert_same(ref, got, rtol=1e-10, atol=1e-13)
    # The Trainer's callbacks and on_after_backward see the data gradient (the penalty's is
    # added after their hooks): the first one differs from the loss route's, which holds both.
    for seen in ("callback_before_step", "after_backward"):
        first_ref, first_got = getattr(ref, seen)[0], getattr(got, seen)[0]
        assert not torch.allclose(first_got, first_ref, rtol=1e-6, atol=0)
    if "clip" in case:  # the clipping was active, on data + penalty gradient
        assert max(float(n.max()) for n in ref.before_step) > 0.05


def test_bf16_mixed_on_cpu(tmp_path: Any) -> None:
    ref, _, _ = _run(_Base, tmp_path, torch.float32, [], precision="bf16-mixed", max_steps=6)
    got, _, _ = _run(_Step, tmp_path, torch.float32, [], precision="bf16-mixed", max_steps=6)
    _assert_same(ref, got, rtol=1e-4, atol=1e-6)


def test_fp16_grad_scaler_with_a_skipped_step(tmp_path: Any) -> None:
    def run(cls: type) -> Any:
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
        out = _run(cls, tmp_path, torch.float32, [_Overflow({2})], plugins=[plugin], max_steps=5)
        return (*out, scaler)

    ref, _, _, ref_scaler = run(_Base)
    got, _, trainer, scaler = run(_Step)
    assert trainer.global_step == 5
    assert scaler.get_scale() == ref_scaler.get_scale() == 2.0**9  # one step skipped
    assert all(torch.equal(a, b) for a, b in zip(got.weights[1], got.weights[2], strict=True))
    for a, b in zip(ref.weights, got.weights, strict=True):
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-7)
    # The module's hook sees the unscaled data + penalty gradient of the loss route.
    torch.testing.assert_close(got.before_step[0], ref.before_step[0], rtol=1e-5, atol=0)


class _Manual(pl.LightningModule):
    """Two sub-networks, each with its own optimizer, stepped by hand; with ``clip`` set, each
    optimizer's gradients are clipped by norm with ``self.clip_gradients`` in the module's
    ``on_before_optimizer_step`` (after the penalty's gradient is added, as Lightning clips
    under automatic optimization)."""

    clip: float | None = None

    def __init__(self, loss_route: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
        self.b = nn.Sequential(nn.Linear(64, 12), nn.Tanh(), nn.Linear(12, 10))
        self.automatic_optimization = False
        self.loss_route = loss_route
        if not loss_route:
            self.configure_penalty(l1=L1, l2=L2)  # type: ignore[attr-defined]

    def loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(net(x), y)
        if self.loss_route:
            loss = loss + weight_penalty(select_weights(net), l1=L1, l2=L2)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        x = x.to(self.dtype)
        for net, opt in zip((self.a, self.b), self.optimizers(), strict=True):  # type: ignore[arg-type]
            self.manual_backward(self.loss(net, x, y))
            opt.step()
            opt.zero_grad()

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        if self.clip is not None:
            self.clip_gradients(optimizer, self.clip, gradient_clip_algorithm="norm")
        _record_gradients(self)

    def configure_optimizers(self) -> Any:
        sgd = torch.optim.SGD(self.a.parameters(), lr=0.1, momentum=0.9)
        return sgd, torch.optim.Adam(self.b.parameters(), lr=0.01)


class _ManualStep(WeightPenaltyMixin, _Manual):
    pass


def test_manual_optimization_two_optimizers(tmp_path: Any) -> None:
    ref, _, _ = _run(_Manual, tmp_path, torch.float64, [], max_epochs=1)
    got, _, trainer = _run(_ManualStep, tmp_path, torch.float64, [], max_epochs=1)
    assert trainer.global_step == 10  # 5 batches, 2 optimizer steps each
    # Trajectory, and the gradient norms the module's on_before_optimizer_step sees.
    _assert_same(ref, got, rtol=1e-10, atol=1e-13)
    # on_after_backward sees the data gradient (which optimizer steps next is not known yet).
    data = got.after_backward[0]
    assert not torch.allclose(data, ref.after_backward[0], rtol=1e-6, atol=0)


class _ManualClip(_Manual):
    clip = 0.05


class _ManualClipStep(WeightPenaltyMixin, _ManualClip):
    pass


def test_manual_optimization_clip_gradients_sees_the_penalty(tmp_path: Any) -> None:
    ref, _, _ = _run(_ManualClip, tmp_path, torch.float64, [], max_epochs=1)
    got, _, trainer = _run(_ManualClipStep, tmp_path, torch.float64, [], max_epochs=1)
    assert trainer.global_step == 10
    # Clipping in the module's on_before_optimizer_step clips data + penalty gradient: the same
    # update and the same (clipped) norms as the loss route.
    _assert_same(ref, got, rtol=1e-10, atol=1e-13)
    total = [float(n.norm()) for n in ref.before_step]
    assert total == pytest.approx([0.05] * 10, rel=1e-4)  # every step was clipped


class _ManualClipSkip(_ManualClip):
    """Batch 0: clipped, then the steps are skipped (``zero_grad`` instead)."""

    def training_step(self, batch: Any, batch_idx: int) -> None:
        if batch_idx > 0:
            return super().training_step(batch, batch_idx)
        x, y = batch
        for net, opt in zip((self.a, self.b), self.optimizers(), strict=True):  # type: ignore[arg-type]
            self.manual_backward(self.loss(net, x.to(self.dtype), y))
            self.clip_gradients(opt, self.clip, gradient_clip_algorithm="norm")
            opt.zero_grad()
        return None


class _ManualClipSkipStep(WeightPenaltyMixin, _ManualClipSkip):
    pass


def test_manual_optimization_clipped_but_skipped_step_leaves_nothing_pending(
    tmp_path: Any,
) -> None:
    ref, _, _ = _run(_ManualClipSkip, tmp_path, torch.float64, [], max_epochs=1)
    got, _, trainer = _run(_ManualClipSkipStep, tmp_path, torch.float64, [], max_epochs=1)
    assert trainer.global_step == 8  # batch 0 did not step
    _assert_same(ref, got, rtol=1e-10, atol=1e-13)


def _manual_fp16(cls: type, tmp_path: Any) -> Any:
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    # backward calls 0-1 are batch 0's two optimizers: the 4th (optimizer b, batch 1) overflows.
    out = _run(cls, tmp_path, torch.float32, [_Overflow({3})], plugins=[plugin], max_steps=8)
    return (*out, scaler)


class _ManualFusedStep(WeightPenaltyMixin, _Manual):
    """Fused optimizers unscale inside their step: Lightning leaves their gradients scaled."""

    def configure_optimizers(self) -> Any:
        sgd = torch.optim.SGD(self.a.parameters(), lr=0.1, momentum=0.9, fused=True)
        return sgd, torch.optim.Adam(self.b.parameters(), lr=0.01, fused=True)


MANUAL_FP16 = {"plain": (_Manual, _ManualStep), "clip": (_ManualClip, _ManualClipStep)}


@pytest.mark.parametrize("case", list(MANUAL_FP16))
def test_manual_optimization_fp16_grad_scaler_skipped_step(case: str, tmp_path: Any) -> None:
    ref_cls, step_cls = MANUAL_FP16[case]
    clip = case == "clip"
    ref, _, _, ref_scaler = _manual_fp16(ref_cls, tmp_path)
    got, _, trainer, scaler = _manual_fp16(step_cls, tmp_path)
    assert trainer.global_step == 8
    assert scaler.get_scale() == ref_scaler.get_scale() == 2.0**9  # one step skipped
    b = [i for i, (n, _) in enumerate(trainer.lightning_module.named_parameters()) if n[0] == "b"]
    assert all(torch.equal(got.weights[0][i], got.weights[1][i]) for i in b)  # b skipped batch 1
    # A skipped step neither leaves the penalty pending nor adds it twice: same trajectory.
    for x_ref, x_got in zip(ref.weights, got.weights, strict=True):
        for x, y in zip(x_ref, x_got, strict=True):
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-7)
    if clip:  # the module's hook sees the loss route's clipped norms (nan when skipped)
        for x, y in zip(ref.before_step, got.before_step, strict=True):
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-7, equal_nan=True)


def test_fused_optimizer_under_a_grad_scaler_is_refused_by_name(tmp_path: Any) -> None:
    with pytest.raises(MisconfigurationException, match="fused optimizer unscales its gradients"):
        _manual_fp16(_ManualFusedStep, tmp_path)


class _ManualClosure(_Manual):
    """``manual_backward`` inside ``opt.step(closure)``: Lightning runs the closure, then
    ``on_before_optimizer_step``, then the update."""

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        for net, opt in zip((self.a, self.b), self.optimizers(), strict=True):  # type: ignore[arg-type]

            def closure(net: nn.Module = net, opt: Any = opt) -> torch.Tensor:
                opt.zero_grad()
                loss = self.loss(net, x.to(self.dtype), y)
                self.manual_backward(loss)
                return loss

            opt.step(closure)


class _ManualClosureStep(WeightPenaltyMixin, _ManualClosure):
    pass


def test_manual_backward_inside_a_step_closure_equals_the_loss_route(tmp_path: Any) -> None:
    ref, _, _ = _run(_ManualClosure, tmp_path, torch.float64, [], max_epochs=1)
    got, _, trainer = _run(_ManualClosureStep, tmp_path, torch.float64, [], max_epochs=1)
    assert trainer.global_step == 10
    _assert_same(ref, got, rtol=1e-10, atol=1e-13)


class _Finetune(_Base):
    def __init__(self, loss_route: bool) -> None:
        super().__init__(loss_route, l1=0.0, l2=L2)


class _FinetuneStep(WeightPenaltyMixin, _Finetune):
    pass


def test_backbone_finetuning_penalized_after_unfreezing_only(tmp_path: Any) -> None:
    def run(cls: type) -> Any:
        finetune = BackboneFinetuning(unfreeze_backbone_at_epoch=1, lambda_func=lambda _: 1.0)
        return _run(cls, tmp_path, torch.float64, [finetune], max_epochs=2)

    ref, _, _ = run(_Finetune)
    got, model, _ = run(_FinetuneStep)
    _assert_same(ref, got, rtol=1e-10, atol=1e-13)
    backbone = [i for i, (n, _) in enumerate(model.named_parameters()) if n.startswith("backbone")]
    start = [w.clone() for w in got.weights[0]]
    assert all(torch.equal(got.weights[4][i], start[i]) for i in backbone)  # frozen in epoch 0
    assert not any(torch.equal(got.weights[9][i], start[i]) for i in backbone)
    assert len(model.penalized_weights()) == 2


class _FinetuneDecay(WeightPenaltyMixin, _Finetune):
    """l2 folded into weight decay: the head's weight in a group of its own, its bias apart."""

    def __init__(self, loss_route: bool) -> None:
        super().__init__(loss_route)
        self.configure_penalty(l2=L2, as_weight_decay=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = [{"params": [self.head.weight]}, {"params": [self.head.bias], "weight_decay": 0}]
        return torch.optim.SGD(groups, lr=0.1, momentum=0.9)


class _UnfreezeInOwnGroups(BaseFinetuning):
    """Unfreezes the backbone at epoch 1 into two new groups: its weight, its bias (no decay)."""

    def freeze_before_training(self, pl_module: Any) -> None:
        self.freeze(pl_module.backbone)

    def finetune_function(self, pl_module: Any, epoch: int, optimizer: Any) -> None:
        if epoch == 1:
            self.make_trainable(pl_module.backbone)
            optimizer.add_param_group({"params": [pl_module.backbone[0].weight]})
            optimizer.add_param_group({"params": [pl_module.backbone[0].bias], "weight_decay": 0})


@pytest.mark.parametrize("unfreeze", ["backbone_finetuning", "own_groups"])
def test_weight_decay_route_reaches_a_param_group_added_during_fit(
    unfreeze: str, tmp_path: Any
) -> None:
    def run(cls: type) -> Any:
        if unfreeze == "own_groups":
            callback: BaseFinetuning = _UnfreezeInOwnGroups()
        else:
            callback = BackboneFinetuning(unfreeze_backbone_at_epoch=1, lambda_func=lambda _: 1.0)
        return _run(cls, tmp_path, torch.float64, [callback], max_epochs=2)

    ref, _, _ = run(_Finetune)  # l2 in the loss
    got, _, trainer = run(_FinetuneDecay)
    _assert_same(ref, got, rtol=1e-10, atol=1e-13, hooks=False)
    # The groups added during fit keep their own decay: the backbone's l2 went through its
    # gradient (in the loss route's trajectory, checked above), the head's through the fold.
    decays = [g["weight_decay"] for g in trainer.optimizers[0].param_groups]
    assert decays == ([2 * L2, 0, 0, 0] if unfreeze == "own_groups" else [2 * L2, 0, 0])


class _FinetuneDecayRef(_Finetune):
    """The loss route with ``_FinetuneDecay``'s param groups, resumed from its checkpoint: the
    folded decay the checkpoint restores is reset to 0."""

    configure_optimizers = _FinetuneDecay.configure_optimizers

    def on_train_start(self) -> None:
        for group in self.trainer.optimizers[0].param_groups:
            group["weight_decay"] = 0.0


@pytest.mark.parametrize(("new_l2", "new_fold"), [(L2, True), (L2, False), (3 * L2, True)])
def test_weight_decay_route_resumes_after_backbone_finetuning_added_a_group(
    new_l2: float, new_fold: bool, tmp_path: Any
) -> None:
    def finetune() -> BackboneFinetuning:
        return BackboneFinetuning(unfreeze_backbone_at_epoch=1, lambda_func=lambda _: 1.0)

    trainer = make_trainer(tmp_path, max_epochs=2, callbacks=[finetune()])
    trainer.fit(_FinetuneDecay(False).double(), digits_loader(n=160))
    ckpt = tmp_path / "unfrozen.ckpt"
    trainer.save_checkpoint(ckpt)  # the backbone's group (weight and bias) added during fit

    def resume(model: Any) -> Any:
        recorder = _Recorder()
        trainer = make_trainer(tmp_path, max_epochs=3, callbacks=[finetune(), recorder])
        trainer.fit(model.double(), digits_loader(n=160), ckpt_path=ckpt)
        return recorder, trainer

    reference = _FinetuneDecayRef(True)
    reference.factors = (0.0, new_l2)
    model = _FinetuneDecay(False)
    model.configure_penalty(l2=new_l2, as_weight_decay=new_fold)
    ref, _ = resume(reference)
    # BackboneFinetuning restores every group, the checkpoint's fold included, before the
    # penalty's `on_fit_start`; its restored group is still one added during fit.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got, trainer = resume(model)
    _assert_same(ref, got, rtol=1e-10, atol=1e-13, hooks=False)
    decays = [g["weight_decay"] for g in trainer.optimizers[0].param_groups]
    assert decays == [2 * new_l2 if new_fold else 0.0, 0, 0]
    assert not [w for w in caught if "restored `weight_decay" in str(w.message)]


class _SparseEmbedding(pl.LightningModule):
    """Digits pixels (0..16) through ``nn.Embedding(sparse=True)``: sparse embedding gradients."""

    def __init__(self, loss_route: bool, optimizer: str = "sgd") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(17, 4, sparse=True)
        self.head = nn.Linear(4, 10)
        self.loss_route, self.optimizer_name = loss_route, optimizer
        if not loss_route:
            self.configure_penalty(l1=self.l1_factor, l2=L2, as_weight_decay=self.fold)  # type: ignore[attr-defined]

    l1_factor, fold = L1, False

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        tokens = (x * 4).round().clamp(0, 16).long()
        loss = F.cross_entropy(self.head(self.emb(tokens).mean(1)), y)
        if self.loss_route:
            loss = loss + weight_penalty(select_weights(self), l1=self.l1_factor, l2=L2)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "sparse_adam":
            return torch.optim.SparseAdam(list(self.emb.parameters()))
        kernels = {"params": [self.emb.weight, self.head.weight]}  # their own group: the fold
        return torch.optim.SGD([kernels, {"params": [self.head.bias]}], lr=0.5)


class _SparseEmbeddingStep(WeightPenaltyMixin, _SparseEmbedding):
    pass


def test_sparse_embedding_gradients_take_the_penalty_as_the_loss_route(tmp_path: Any) -> None:
    ref, _, _ = _run(_SparseEmbedding, tmp_path, torch.float64, [], max_epochs=1)
    got, model, _ = _run(_SparseEmbeddingStep, tmp_path, torch.float64, [], max_epochs=1)
    _assert_same(ref, got, rtol=1e-10, atol=1e-13, hooks=False)
    assert model.emb.weight in model.penalized_weights()
    # SparseAdam takes sparse gradients only: the penalty's dense one is refused by name.
    trainer = make_trainer(tmp_path, max_steps=1)
    with pytest.raises(MisconfigurationException, match="SparseAdam on the weights it updates"):
        trainer.fit(_SparseEmbeddingStep(False, "sparse_adam"), digits_loader(n=32))


class _SparseEmbeddingL2(_SparseEmbedding):
    l1_factor, fold = 0.0, True


class _SparseEmbeddingL2Step(WeightPenaltyMixin, _SparseEmbeddingL2):
    pass


@pytest.mark.parametrize("l1", [0.0, L1])
def test_sparse_embedding_gradients_take_l2_as_weight_decay(tmp_path: Any, l1: float) -> None:
    # Without l1 no penalty gradient is added to the group whose l2 is folded into SGD's
    # `weight_decay`, whose dense decay term a sparse `.grad` cannot take.
    ref_cls = type("Ref", (_SparseEmbeddingL2,), {"l1_factor": l1})
    step_cls = type("Step", (_SparseEmbeddingL2Step,), {"l1_factor": l1})
    ref, _, _ = _run(ref_cls, tmp_path, torch.float64, [], max_epochs=1)
    got, _, trainer = _run(step_cls, tmp_path, torch.float64, [], max_epochs=1)
    _assert_same(ref, got, rtol=1e-10, atol=1e-13, hooks=False)
    assert trainer.optimizers[0].param_groups[0]["weight_decay"] == 2 * L2


class _ChangeAtEpoch1(Callback):
    """At the start of epoch 1: doubles l2 (the mixin's ``l2``, or the loss route's factor), or
    calls ``change(pl_module)``."""

    def __init__(self, change: Any = None) -> None:
        self.change = change

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.current_epoch != 1:
            return
        if self.change is not None:
            self.change(pl_module)
        elif isinstance(pl_module, WeightPenaltyMixin):
            pl_module.l2 = 2 * L2
        else:
            pl_module.factors = (L1, 2 * L2)


def test_a_factor_changed_during_fit_applies_from_the_next_step(tmp_path: Any) -> None:
    ref, _, _ = _run(_Base, tmp_path, torch.float64, [_ChangeAtEpoch1()], max_epochs=2)
    got, model, _ = _run(_Step, tmp_path, torch.float64, [_ChangeAtEpoch1()], max_epochs=2)
    _assert_same(ref, got, rtol=1e-10, atol=1e-13)
    assert model.l2 == 2 * L2


class _StepDecay(_Step):
    def __init__(self, loss_route: bool) -> None:
        super().__init__(loss_route)
        self.configure_penalty(l1=L1, l2=L2, as_weight_decay=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.penalty_param_groups(), lr=0.1, momentum=0.9)


class _StepOff(_Step):
    def __init__(self, loss_route: bool) -> None:
        super().__init__(loss_route, l1=0.0, l2=0.0)


def _set_l2(module: Any) -> None:
    module.l2 = 2 * L2


@pytest.mark.parametrize(
    ("cls", "change", "match"),
    [
        (_StepDecay, _set_l2, "l2 is the optimizer's weight_decay, set"),
        (_StepOff, _set_l2, r"the penalty was off \(l1 = l2 = 0\)"),
        (_Step, lambda m: m.configure_penalty(l2=0.5), "cannot be called during fit"),
    ],
)
def test_changes_during_fit_that_would_be_ignored_are_refused(
    cls: type, change: Any, match: str, tmp_path: Any
) -> None:
    with pytest.raises(RuntimeError, match=match):
        _run(cls, tmp_path, torch.float64, [_ChangeAtEpoch1(change)], max_epochs=2)
    model = cls(loss_route=False)
    change(model)  # outside fit: no objection


_INDUCTOR = pytest.param(
    "inductor",
    marks=pytest.mark.skipif(
        shutil.which("c++") is None, reason="inductor on CPU needs a C++ compiler"
    ),
)


@pytest.mark.parametrize("backend", ["eager", "aot_eager", _INDUCTOR])
def test_compiled_module_trains_with_the_penalty(backend: str, tmp_path: Any) -> None:
    # aot_eager runs AOTAutograd (the traced forward and backward graphs inductor compiles);
    # inductor, torch.compile's default, compiles them to C++ (about 15 s on 2 cores).
    ref, _, _ = _run(_Step, tmp_path, torch.float32, [], max_steps=3)
    recorder = _Recorder()
    model = torch.compile(_Step(loss_route=False), backend=backend)
    trainer = make_trainer(tmp_path, callbacks=[recorder], max_steps=3)
    trainer.fit(model, train_dataloaders=digits_loader(n=160, batch_size=32))  # type: ignore[arg-type]
    _assert_same(ref, recorder, rtol=1e-6, atol=1e-7, hooks=False)


class _DoubleCount(_Step):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        return super().training_step(batch, batch_idx) + self.penalty()


class _LogsPenalty(_Step):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.log("mine", self.penalty().detach())
        return super().training_step(batch, batch_idx)


def test_penalty_added_to_the_loss_is_detected_but_logging_it_is_fine(tmp_path: Any) -> None:
    with pytest.raises(RuntimeError, match=r"count twice.*Remove `\+ self.penalty\(\)`"):
        make_trainer(tmp_path, max_steps=1).fit(_DoubleCount(False), digits_loader(n=32))
    model = _LogsPenalty(False)
    make_trainer(tmp_path, max_steps=1).fit(model, digits_loader(n=32))
    assert model.trainer.global_step == 1


class _Lbfgs(_Step):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.LBFGS(self.parameters())


def test_lbfgs_refused_by_name(tmp_path: Any) -> None:
    with pytest.raises(MisconfigurationException, match="cannot be used with LBFGS"):
        make_trainer(tmp_path, max_steps=1).fit(_Lbfgs(False), digits_loader(n=32))


class _Maximize(_Step):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, maximize=True)


def test_a_maximizing_optimizer_is_refused_by_name(tmp_path: Any) -> None:
    """``maximize=True`` ascends the gradient: the penalty's would grow the weights (measured:
    l2 = 0.1 took a kernel's norm from 3.37 to 4.52 over 3 epochs, and folded into the decay,
    which torch applies after the sign flip, to 2.50)."""
    with pytest.raises(MisconfigurationException, match=r"SGD .* `maximize=True`"):
        make_trainer(tmp_path, max_steps=1).fit(_Maximize(False), digits_loader(n=32))


class _Sequence(_Base):
    """Digits as 8 rows of 8 pixels: LSTM, self-attention, a weight-normed Linear head."""

    def __init__(self, loss_route: bool) -> None:
        super().__init__(loss_route)
        torch.manual_seed(0)
        self.backbone = nn.LSTM(8, 12, batch_first=True)
        self.attention = nn.MultiheadAttention(12, 2, batch_first=True)
        self.head = nn.utils.parametrizations.weight_norm(nn.Linear(12, 10))

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        h, _ = self.backbone(x.to(self.dtype).view(-1, 8, 8))
        h, _ = self.attention(h, h, h)
        loss = F.cross_entropy(self.head(h.mean(1)), y)
        if self.loss_route:
            loss = loss + weight_penalty(select_weights(self), *self.factors)
        return loss


class _SequenceStep(WeightPenaltyMixin, _Sequence):
    pass


def test_recurrent_attention_and_weight_normed_kernels_are_penalized(tmp_path: Any) -> None:
    ref, _, _ = _run(_Sequence, tmp_path, torch.float64, [], max_steps=4)
    got, model, _ = _run(_SequenceStep, tmp_path, torch.float64, [], max_steps=4)
    _assert_same(ref, got, rtol=1e-10, atol=1e-13)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(w)] for w in model.penalized_weights()) == [
        "attention.in_proj_weight",
        "attention.out_proj.weight",
        "backbone.weight_hh_l0",
        "backbone.weight_ih_l0",
        "head.parametrizations.weight.original0",
        "head.parametrizations.weight.original1",
    ]


@pytest.mark.parametrize("cls", [_Step, _ManualStep])
def test_penalty_of_each_epochs_last_weights_logged_once_per_epoch(
    cls: type, tmp_path: Any
) -> None:
    # One value per epoch (also for runs shorter than log_every_n_steps), over the weights of
    # every optimizer (two under manual optimization).
    expected: list[float] = []
    seen: list[float] = []

    class Watch(Callback):
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:  # before the module's
            ws = select_weights(pl_module)
            expected.append(sum(L1 * w.abs().sum() + L2 * (w**2).sum() for w in ws).item())

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            if trainer.current_epoch > 0:
                seen.append(float(trainer.callback_metrics["train/penalty"]))

    model = cls(loss_route=False).double()
    trainer = make_trainer(tmp_path, callbacks=[Watch()], max_epochs=2, log_every_n_steps=2)
    trainer.fit(model, digits_loader(n=160, batch_size=32))
    seen.append(float(trainer.callback_metrics["train/penalty"]))
    assert len(expected) == 2 and expected[0] != expected[1]
    assert seen == pytest.approx(expected, rel=1e-12)


def test_zero_fraction_of_each_epochs_last_weights_logged_with_proximal_l1(tmp_path: Any) -> None:
    model = _Step(loss_route=False, l1=0.05, l2=0.0, proximal_l1=True).double()
    trainer = make_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, digits_loader(n=160, batch_size=32))
    ws = select_weights(model)
    zeros = sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)
    assert zeros > 0.1
    assert float(trainer.callback_metrics["train/zero_fraction"]) == pytest.approx(zeros)


# ------------------------------------------------------------------ seams of the one route


class _Skip(_Base):
    """Returns ``None`` (Lightning's documented skip) on the batch indices in ``skipped``."""

    skipped: frozenset[int] = frozenset()

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        return None if batch_idx in self.skipped else super().training_step(batch, batch_idx)


# 5 batches per epoch: windows [0,1][2,3][4] under 2, [0,1,2][3,4] under 3.
SKIPS = [(1, {1}), (2, {0}), (2, {1}), (2, {4}), (3, {0}), (3, {1}), (3, {2}), (3, {3, 4})]


@pytest.mark.parametrize(("accumulate", "skipped"), SKIPS)
def test_a_skipped_micro_batch_gets_the_loss_routes_factor(
    accumulate: int, skipped: set[int], tmp_path: Any
) -> None:
    """First, middle and last micro-batches of a window, a whole window: the penalty counts the
    micro-batches that ran backward, as the loss does."""
    ref_cls = type("Ref", (_Skip,), {"skipped": frozenset(skipped)})
    step_cls = type("Step", (WeightPenaltyMixin, ref_cls), {})
    kwargs: dict[str, Any] = dict(max_epochs=1, accumulate_grad_batches=accumulate)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`training_step` returned `None`")
        ref, _, _ = _run(ref_cls, tmp_path, torch.float64, [], **kwargs)
        got, _, _ = _run(step_cls, tmp_path, torch.float64, [], **kwargs)
    _assert_same(ref, got, rtol=1e-10, atol=1e-13)
    plain = _run(_Skip, tmp_path, torch.float64, [], **kwargs)[0]  # the penalty matters
    assert (ref.weights[-1][0] - plain.weights[-1][0]).abs().max() > 1e-4


class _Resumable(_Base):
    """Penalized weights in a param group of their own (weight decay ``decay``), the rest in
    another without decay. The loss route resets the decay a checkpoint restores to 0."""

    decay = 0.0

    def configure_optimizers(self) -> torch.optim.Optimizer:
        weights = select_weights(self)
        others = [p for p in self.parameters() if all(p is not w for w in weights)]
        groups = [{"params": weights, "weight_decay": self.decay}, {"params": others}]
        return torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=0.0)

    def on_train_start(self) -> None:
        if self.loss_route:
            for group in self.trainer.optimizers[0].param_groups:
                group["weight_decay"] = 0.0


def _resumable(
    loss_route: bool, l2: float, fold: bool = False, decay: float = 0.0, l1: float = L1
) -> Any:
    cls = _Resumable if loss_route else type("Step", (WeightPenaltyMixin, _Resumable), {})
    model = cls(loss_route=True) if loss_route else cls(loss_route=False, l1=l1, l2=l2)
    model.factors, model.decay = (l1, l2), decay
    if not loss_route:
        model.configure_penalty(l1=l1, l2=l2, as_weight_decay=fold)
    return model.double()


RESUMES = {
    # (first fit: l2, as_weight_decay, decay of its group), (resumed: l2, as_weight_decay[, l1])
    "l2 changed": ((L2, False, 0.0), (2 * L2, False)),
    "l2 changed, folded": ((L2, True, 0.0), (5 * L2, True)),
    "fold switched off": ((L2, True, 0.0), (L2, False)),
    "fold switched on": ((L2, False, 0.0), (L2, True)),
    "a decay nothing explains": ((L2, False, 0.3), (L2, False)),
    "penalty switched off": ((L2, True, 0.0), (0.0, True, 0.0)),
}


@pytest.mark.parametrize("case", list(RESUMES))
def test_a_resume_trains_as_the_new_configuration_says(case: str, tmp_path: Any) -> None:
    (l2, fold, decay), (new_l2, new_fold, *rest) = RESUMES[case]
    new_l1 = rest[0] if rest else L1
    first = _resumable(False, l2, fold, decay)
    trainer = make_trainer(tmp_path, max_epochs=1)
    trainer.fit(first, digits_loader(n=160, batch_size=32))
    ckpt = tmp_path / "first.ckpt"
    trainer.save_checkpoint(ckpt)

    def resume(model: Any) -> Any:
        recorder = _Recorder()
        trainer = make_trainer(tmp_path, max_epochs=2, callbacks=[recorder])
        trainer.fit(model, digits_loader(n=160, batch_size=32), ckpt_path=ckpt)
        return recorder, trainer

    ref, _ = resume(_resumable(True, new_l2, l1=new_l1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got, trainer = resume(_resumable(False, new_l2, new_fold, l1=new_l1))
    _assert_same(ref, got, rtol=1e-10, atol=1e-13, hooks=False)
    named = [str(w.message) for w in caught if "restored `weight_decay" in str(w.message)]
    if case == "a decay nothing explains":
        assert len(named) == 1 and "weight_decay=0.3" in named[0] and "group 0 of SGD" in named[0]
    else:
        assert named == []
    decays = [g["weight_decay"] for g in trainer.optimizers[0].param_groups]
    assert decays == [2 * new_l2 if new_fold else 0.0, 0.0]


class _SpectralNorm(_Base):
    """The first layer under ``parametrizations.spectral_norm``: its power iteration (buffers
    ``_u``, ``_v``) runs in every training forward, and only there."""

    def __init__(self, loss_route: bool, **penalty: Any) -> None:
        super().__init__(loss_route, **penalty)
        torch.manual_seed(1)
        self.backbone[0] = nn.utils.parametrizations.spectral_norm(nn.Linear(64, 24))


_SpectralNormStep = type("_SpectralNormStep", (WeightPenaltyMixin, _SpectralNorm), {})


def test_spectral_norm_layer_step_route_equals_loss_route(tmp_path: Any) -> None:
    runs = [
        _run(cls, tmp_path, torch.float64, [], max_steps=6)
        for cls in (_SpectralNorm, _SpectralNormStep)
    ]
    (ref, ref_model, _), (got, model, _) = runs
    _assert_same(ref, got, rtol=1e-10, atol=1e-13)
    for a, b in zip(ref_model.buffers(), model.buffers(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)  # as many power iterations


def test_a_max_norm_that_never_binds_leaves_a_spectral_norm_run_bit_identical(
    tmp_path: Any,
) -> None:
    from lightning_reg import MaxNorm

    without, model_without, _ = _run(_SpectralNormStep, tmp_path, torch.float64, [], max_steps=6)
    with pytest.warns(UserWarning, match=r"backbone.0.weight \(Linear, parametrized\)"):
        bounded, model, _ = _run(
            _SpectralNormStep, tmp_path, torch.float64, [MaxNorm(100.0)], max_steps=6
        )
    for a, b in zip(without.weights, bounded.weights, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    for a, b in zip(model_without.buffers(), model.buffers(), strict=True):
        assert torch.equal(a, b)


class _Branch(_Resumable):
    """A hidden layer used on odd batches only: on even ones its weight has no ``.grad`` (Lightning
    zeroes gradients to ``None``), yet the loss route's l2 still decays it."""

    fold = False

    def __init__(self, loss_route: bool) -> None:
        super().__init__(loss_route, l1=0.0, as_weight_decay=self.fold)
        torch.manual_seed(2)
        self.branch = nn.Linear(24, 24)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        h = self.backbone(x.to(self.dtype))
        if batch_idx % 2:
            h = torch.relu(self.branch(h))
        loss = F.cross_entropy(self.head(h), y)
        if self.loss_route:
            loss = loss + weight_penalty(select_weights(self), *self.factors)
        return loss


@pytest.mark.parametrize(("fold", "accumulate"), [(False, 1), (True, 1), (False, 2), (True, 2)])
def test_a_weight_without_gradient_at_a_step_takes_the_loss_routes_l2(
    fold: bool, accumulate: int, tmp_path: Any
) -> None:
    """Under accumulation 2 the 5 batches make windows of 2, 2 and 1: the short last window's
    loss route takes half the penalty, which a folded decay (all of it) must make up for."""
    step_cls = type("Step", (WeightPenaltyMixin, _Branch), {"fold": fold})
    kwargs: dict[str, Any] = dict(max_epochs=1, accumulate_grad_batches=accumulate)
    ref, _, _ = _run(_Branch, tmp_path, torch.float64, [], **kwargs)
    got, _, trainer = _run(step_cls, tmp_path, torch.float64, [], **kwargs)
    _assert_same(ref, got, rtol=1e-10, atol=1e-13, hooks=False)
    assert trainer.optimizers[0].param_groups[0]["weight_decay"] == (2 * L2 if fold else 0.0)


class _Stack(_Finetune):
    """A ``RegularizedModule``-style stack by hand: l2 in the loss; after each step, each kernel
    the step updated soft-thresholded with the step's learning rate, then renormed."""

    l1, bound = 2e-2, 0.5

    def __init__(self, loss_route: bool) -> None:
        super().__init__(loss_route)
        self.backbone.append(nn.Dropout(0.1))

    configure_optimizers = _FinetuneDecay.configure_optimizers

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, closure: Any) -> None:
        lrs = [group["lr"] for group in optimizer.param_groups]
        super().optimizer_step(epoch, batch_idx, optimizer, closure)
        if not self.loss_route:
            return
        for lr, group in zip(lrs, optimizer.param_groups, strict=True):
            for w in group["params"]:
                if w.dim() > 1 and w.requires_grad:
                    soft_threshold_(w, lr * self.l1)
                    with torch.no_grad():
                        w.renorm_(2, 0, self.bound)


@pytest.mark.parametrize("fold", [False, True])
def test_the_whole_stack_equals_the_one_written_by_hand(fold: bool, tmp_path: Any) -> None:
    """Proximal l1, l2 (folded or not), a MaxNorm on the Trainer, 1cycle, BackboneFinetuning
    adding a group at epoch 1, dropout: the by-hand stack's trajectory."""
    from lightning_reg import MaxNorm
    from lightning_reg.callbacks import OneCycleScheduler

    def run(model: pl.LightningModule, *callbacks: Callback) -> _Recorder:
        finetune = BackboneFinetuning(unfreeze_backbone_at_epoch=1, lambda_func=lambda _: 1.0)
        recorder = _Recorder()
        torch.manual_seed(1)  # the dropout masks
        callbacks += (OneCycleScheduler(max_lr=0.1), finetune, recorder)
        fit(tmp_path, model.double(), digits_loader(160), max_epochs=3, callbacks=list(callbacks))
        return recorder

    ref = run(_Stack(loss_route=True))
    model = type("Step", (WeightPenaltyMixin, _Stack), {})(loss_route=False)
    model.configure_penalty(l1=_Stack.l1, proximal_l1=True, as_weight_decay=fold)
    got = run(model, MaxNorm(_Stack.bound))
    _assert_same(ref, got, rtol=1e-10, atol=1e-13, hooks=False)
