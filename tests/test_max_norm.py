"""MaxNorm with a real Trainer on the digits: bound held, timing per optimizer step, resume."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_reg.callbacks.max_norm import MaxNorm
from tests.helpers import DigitsClassifier, digits_loader, make_trainer

MAX = 0.5


def blown_up(seed: int = 0, **kwargs: Any) -> DigitsClassifier:
    """A digits MLP whose rows start far above the bound and whose biases start at 5."""
    torch.manual_seed(seed)
    model = DigitsClassifier(lr=0.5, **kwargs)
    with torch.no_grad():
        for layer in (model.net[0], model.net[2]):
            layer.weight.mul_(20.0)
            layer.bias.fill_(5.0)
    return model


class RenormAfterStep(DigitsClassifier):
    """Reference: ``torch.renorm`` on each Linear weight right after every optimizer step."""

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        with torch.no_grad():
            for layer in (self.net[0], self.net[2]):
                layer.weight.copy_(torch.renorm(layer.weight, 2, 0, MAX))


class ManualSteps(DigitsClassifier):
    """Manual optimization stepping every second batch (manual accumulation)."""

    def __init__(self, renorm: bool = False) -> None:
        super().__init__(lr=0.5)
        self.automatic_optimization = False
        self.renorm = renorm

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.manual_backward(loss)
        if batch_idx % 2 == 1:
            optimizer = self.optimizers()
            optimizer.step()
            optimizer.zero_grad()
            if self.renorm:
                with torch.no_grad():
                    for layer in (self.net[0], self.net[2]):
                        layer.weight.copy_(torch.renorm(layer.weight, 2, 0, MAX))
        return loss


class ActedAt(Callback):
    """Records the batches after which MaxNorm acted (its saved step changed)."""

    def __init__(self, max_norm: MaxNorm) -> None:
        self.max_norm = max_norm
        self.batches: list[int] = []
        self.steps: list[int] = []

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.start_state = self.max_norm.state_dict()

    def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
        self.before = self.max_norm.state_dict()["last_step"]

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, i: int):
        if self.max_norm.state_dict()["last_step"] != self.before:
            self.batches.append(i)
            self.steps.append(trainer.global_step)


def copy_init(source: nn.Module, target: nn.Module) -> nn.Module:
    target.load_state_dict(source.state_dict())
    return target


def test_bound_holds_biases_free_and_matches_renorm_after_each_step(tmp_path: Path) -> None:
    model = blown_up()
    reference = copy_init(model, RenormAfterStep(lr=0.5))
    make_trainer(tmp_path, max_steps=12, callbacks=[MaxNorm(MAX)]).fit(model, digits_loader())
    make_trainer(tmp_path, max_steps=12).fit(reference, digits_loader())
    for layer in (model.net[0], model.net[2]):
        assert (layer.weight.norm(dim=1) <= MAX * (1 + 1e-6)).all()
        assert layer.bias.abs().max() > 2 * MAX  # biases never constrained
    for got, want in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_conv_filters_are_bounded(tmp_path: Path) -> None:
    class ConvDigits(DigitsClassifier):
        def __init__(self) -> None:
            super().__init__(lr=0.5)
            self.net = nn.Sequential(
                nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(),
                nn.Linear(144, 10),
            )  # fmt: skip

    torch.manual_seed(0)
    model = ConvDigits()
    with torch.no_grad():
        model.net[1].weight.mul_(10.0)
    over = torch.linalg.vector_norm(model.net[1].weight.flatten(1), dim=1) > 0.3
    assert over.all()
    make_trainer(tmp_path, max_steps=5, callbacks=[MaxNorm(0.3, norm_type=math.inf)]).fit(
        model, digits_loader()
    )
    filters = model.net[1].weight.flatten(1)
    assert (filters.abs().amax(dim=1) <= 0.3 * (1 + 1e-6)).all()
    assert torch.isclose(filters.abs().amax(dim=1), torch.tensor(0.3)).all()


def test_acts_once_per_optimizer_step_under_accumulation(tmp_path: Path) -> None:
    max_norm = MaxNorm(MAX)
    acted = ActedAt(max_norm)
    model = blown_up()
    reference = copy_init(model, RenormAfterStep(lr=0.5))
    loader = digits_loader(n=512, batch_size=32)
    make_trainer(tmp_path, max_steps=4, accumulate_grad_batches=4, callbacks=[max_norm, acted]).fit(
        model, loader
    )
    assert acted.batches == [3, 7, 11, 15] and acted.steps == [1, 2, 3, 4]
    make_trainer(tmp_path, max_steps=4, accumulate_grad_batches=4).fit(reference, loader)
    for got, want in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_manual_optimization_acts_after_batches_that_stepped(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ManualSteps()
    with torch.no_grad():
        model.net[0].weight.mul_(20.0)
    reference = copy_init(model, ManualSteps(renorm=True))
    max_norm = MaxNorm(MAX)
    acted = ActedAt(max_norm)
    make_trainer(tmp_path, max_steps=3, callbacks=[max_norm, acted]).fit(model, digits_loader())
    assert acted.batches == [1, 3, 5] and acted.steps == [1, 2, 3]
    make_trainer(tmp_path, max_steps=3).fit(reference, digits_loader())
    for got, want in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_checkpoint_round_trip_resumes_exactly(tmp_path: Path) -> None:
    # One batch per epoch: Lightning 2.6 replays a checkpointed epoch's end as one more short
    # epoch, which shifts the data of a multi-batch loader; with one batch the data stays aligned.
    loader = digits_loader(n=32, batch_size=32)
    saver = ModelCheckpoint(tmp_path, "{epoch}", save_top_k=-1, save_on_train_epoch_end=True)
    uninterrupted = blown_up()
    make_trainer(
        tmp_path, max_steps=16, enable_checkpointing=True, callbacks=[MaxNorm(MAX), saver]
    ).fit(uninterrupted, loader)
    ckpt = tmp_path / "epoch=7.ckpt"
    saved = torch.load(ckpt, weights_only=False)["callbacks"]
    assert [state for key, state in saved.items() if key.startswith("MaxNorm")] == [
        {"last_step": 8}
    ]

    resumed_callback = MaxNorm(MAX)
    acted = ActedAt(resumed_callback)
    resumed = blown_up(seed=1)  # another init: everything must come from the checkpoint
    make_trainer(tmp_path, max_steps=16, callbacks=[resumed_callback, acted]).fit(
        resumed, loader, ckpt_path=ckpt
    )
    assert acted.start_state == {"last_step": 8} and acted.steps == list(range(9, 17))
    for got, want in zip(resumed.parameters(), uninterrupted.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_no_selected_layer_fails_at_fit_start(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_steps=1, callbacks=[MaxNorm(modules=(nn.Conv2d,))])
    with pytest.raises(MisconfigurationException, match="no trainable weight of a layer of type"):
        trainer.fit(DigitsClassifier(), digits_loader(n=32))


def test_config_and_bad_arguments() -> None:
    callback = MaxNorm(2.0, modules=(nn.Linear, nn.Embedding), norm_type=math.inf)
    config = callback.get_config()
    assert config == {"max_value": 2.0, "modules": (nn.Linear, nn.Embedding), "norm_type": math.inf}
    assert MaxNorm(**config).get_config() == config
    with pytest.raises(ValueError, match=r"`max_value` must be a finite number > 0, got -1.0"):
        MaxNorm(-1.0)
    with pytest.raises(TypeError, match=r"`max_value` must be a finite number > 0, got '1'"):
        MaxNorm("1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`norm_type` must be a number >= 1 or math.inf, got 0"):
        MaxNorm(norm_type=0)
    with pytest.raises(ValueError, match=r"`modules` cannot hold transposed convolutions"):
        MaxNorm(modules=(nn.Linear, nn.ConvTranspose1d))
    with pytest.raises(TypeError, match=r"`modules` must be a non-empty tuple"):
        MaxNorm(modules=[nn.Linear])  # type: ignore[arg-type]
