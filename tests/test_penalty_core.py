"""The penalty's pure core: kernel selection, the in-place gradient, the proximal step."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from lightning_reg import WeightPenaltyMixin
from lightning_reg.penalties import (
    add_penalty_grad_,
    soft_threshold_,
    weight_penalty,
    zero_fraction,
)
from lightning_reg.selection import select_weights
from tests.helpers import DigitsClassifier, digits, digits_loader, make_trainer


def names_of(model: nn.Module, selected: list[nn.Parameter]) -> list[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for p in selected]


def test_recurrent_and_attention_kernels_are_selected() -> None:
    model = nn.ModuleDict(
        {
            "lstm": nn.LSTM(4, 3, num_layers=2, bidirectional=True, proj_size=2),
            "gru": nn.GRU(4, 3),
            "cell": nn.RNNCell(4, 3),
            "mha": nn.MultiheadAttention(8, 2),
            "cross": nn.MultiheadAttention(8, 2, kdim=5, vdim=6),
            "bag": nn.EmbeddingBag(7, 4, mode="mean"),
        }
    )
    lstm = [
        f"lstm.weight_{k}_l{layer}{d}"
        for layer in (0, 1)
        for d in ("", "_reverse")
        for k in ("ih", "hh", "hr")
    ]
    expected = [*lstm, "gru.weight_ih_l0", "gru.weight_hh_l0", "cell.weight_ih", "cell.weight_hh"]
    expected += ["mha.in_proj_weight", "mha.out_proj.weight"]
    expected += ["cross.q_proj_weight", "cross.k_proj_weight", "cross.v_proj_weight"]
    expected += ["cross.out_proj.weight", "bag.weight"]
    assert sorted(names_of(model, select_weights(model))) == sorted(expected)


def test_parametrized_kernels_select_the_parameters_the_optimizer_updates() -> None:
    class Positive(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.abs()

    model = nn.Sequential(
        parametrizations.weight_norm(nn.Linear(4, 4)),
        parametrizations.spectral_norm(nn.Linear(4, 4)),
        nn.Linear(4, 4),
    )
    parametrize.register_parametrization(model[2], "weight", Positive())
    expected = [
        "0.parametrizations.weight.original0",
        "0.parametrizations.weight.original1",
        "1.parametrizations.weight.original",
        "2.parametrizations.weight.original",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # handled: no warning
        assert sorted(names_of(model, select_weights(model))) == sorted(expected)
    # Every one of them is a leaf the optimizer steps; none is a bias.
    assert all(p.is_leaf and p.requires_grad for p in select_weights(model))


def test_hook_based_weight_norm_and_spectral_norm_are_named_not_selected() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated
        model = nn.Sequential(
            nn.Linear(4, 4),
            torch.nn.utils.weight_norm(nn.Linear(4, 4)),
            torch.nn.utils.spectral_norm(nn.Linear(4, 3)),
        )
    named = r"1\.weight_g \(Linear\), 1\.weight_v \(Linear\), 2\.weight_orig \(Linear\)"
    with pytest.warns(UserWarning, match=rf"not regularized: {named}\. Only kernels"):
        assert names_of(model, select_weights(model)) == ["0.weight"]


def test_unresolvable_kernel_is_named_in_a_warning() -> None:
    layer = nn.Linear(3, 3)
    del layer.weight
    layer.register_buffer("weight", torch.ones(3, 3))  # computed elsewhere: not a parameter
    model = nn.Sequential(nn.Linear(3, 3), layer)
    with pytest.warns(UserWarning, match=r"not regularized: 1\.weight \(Linear\)"):
        assert names_of(model, select_weights(model)) == ["0.weight"]


class OwnLayers(WeightPenaltyMixin, DigitsClassifier):
    """A user's own layer with a weight, a model-level 2-dim parameter, a frozen one, and
    attention with bias_k/bias_v (3-dim biases of a default type)."""

    def __init__(self, **penalty: Any) -> None:
        super().__init__()
        self.custom = nn.Module()
        self.custom.weight = nn.Parameter(torch.eye(10))
        self.gain = nn.Parameter(torch.ones(1, 10))
        self.frozen = nn.Parameter(torch.ones(10, 10), requires_grad=False)
        self.attention = nn.MultiheadAttention(2, 1, add_bias_kv=True, batch_first=True)
        self.configure_penalty(**penalty)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq, _ = self.attention(*(x.view(-1, 32, 2),) * 3)
        out = self.net(seq.flatten(1)) @ self.custom.weight @ self.frozen.T
        return out * self.gain


@pytest.mark.parametrize(
    ("penalty", "named"),
    [
        ({"l2": 0.1}, True),
        ({"l1": 0.1, "proximal_l1": True}, True),
        ({"l2": 0.1, "modules": (nn.Linear, nn.MultiheadAttention)}, False),
        ({"l2": 0.1, "predicate": lambda name, p: name.endswith("weight")}, False),
        ({"l2": 0.0}, False),  # no penalty
    ],
)
def test_weights_outside_the_default_types_are_named_at_fit_start(
    tmp_path: Any, penalty: dict[str, Any], named: bool
) -> None:
    model = OwnLayers(**penalty)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(tmp_path, max_steps=1).fit(model, digits_loader(n=32))
    messages = [str(w.message) for w in caught if "does not apply to these" in str(w.message)]
    if not named:
        assert messages == []
        return
    assert len(messages) == 1
    assert "parameters of OwnLayers: gain (OwnLayers), custom.weight (Module). They" in messages[0]
    # What is named is indeed not penalized; the kernels of the default types are.
    penalized = {id(p) for p in model.penalized_weights()}
    assert id(model.custom.weight) not in penalized and id(model.gain) not in penalized
    assert id(model.net[0].weight) in penalized and id(model.attention.in_proj_weight) in penalized


def test_frozen_weights_are_candidates_only_on_request() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    model[0].weight.requires_grad_(False)
    assert names_of(model, select_weights(model)) == ["1.weight"]
    assert names_of(model, select_weights(model, trainable_only=False)) == ["0.weight", "1.weight"]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(("l1", "l2"), [(0.3, 0.7), (0.3, 0.0), (0.0, 0.7)])
def test_penalty_gradient_equals_autograd_of_the_value(foreach: bool, l1: float, l2: float) -> None:
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 4), (3,), (2, 2, 2), (130, 130)]
    weights = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    weights[0][1] = 0.0  # sign(0) = 0: no pull on weights at zero
    params = [nn.Parameter(w) for w in weights]
    reference = [nn.Parameter(w.clone()) for w in weights]
    for p, r in zip(params, reference, strict=True):
        data_grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
        p.grad, r.grad = data_grad.clone(), data_grad.clone()
    params[1].grad = reference[1].grad = None  # a weight without gradient gets one
    scale = 512.0
    add_penalty_grad_(params, l1=l1, l2=l2, scale=scale, foreach=foreach)
    (weight_penalty(reference, l1=l1, l2=l2) * scale).backward()
    for p, r in zip(params, reference, strict=True):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-13, atol=1e-12)
    before = [p.grad.clone() for p in params]  # type: ignore[union-attr]
    add_penalty_grad_(params, l1=l1, l2=l2, scale=0.25, foreach=foreach)
    for p, b in zip(params, before, strict=True):
        expected = b + 0.25 * (l1 * p.detach().sign() + 2 * l2 * p.detach())
        torch.testing.assert_close(p.grad, expected, rtol=1e-13, atol=1e-15)


def test_penalty_gradient_rejects_bad_factors_and_ignores_zero() -> None:
    w = nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=r"`l2` must be a finite number >= 0, got -1"):
        add_penalty_grad_([w], l2=-1)
    add_penalty_grad_([w])
    assert w.grad is None


def test_a_sparse_gradient_takes_the_penalty_and_becomes_dense() -> None:
    emb = nn.Embedding(5, 3, sparse=True)
    emb(torch.tensor([1, 3, 3])).sum().backward()
    assert emb.weight.grad is not None and emb.weight.grad.is_sparse
    data = emb.weight.grad.to_dense()
    add_penalty_grad_([emb.weight], l1=0.1, l2=0.2)
    w = emb.weight.detach()
    assert not emb.weight.grad.is_sparse
    torch.testing.assert_close(emb.weight.grad, data + 0.1 * w.sign() + 0.4 * w)


def test_soft_threshold_is_the_proximal_step_of_l1() -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(200, generator=g, dtype=torch.float64)
    expected = torch.sign(w) * torch.clamp(w.abs() - 0.3, min=0.0)
    # The minimizer of 0.3 * |v| + (v - w)**2 / 2, elementwise, checked on a grid.
    grid = torch.linspace(-4, 4, 80001, dtype=torch.float64)
    objective = 0.3 * grid.abs() + (grid[None] - w[:20, None]) ** 2 / 2
    torch.testing.assert_close(grid[objective.argmin(1)], expected[:20], rtol=0, atol=1e-4)
    for threshold in (0.3, torch.tensor(0.3, dtype=torch.float64)):
        got = w.clone()
        soft_threshold_(got, threshold)
        assert torch.equal(got, expected)
        assert int((got == 0).sum()) == int((w.abs() <= 0.3).sum()) > 0
    assert zero_fraction([got, torch.zeros(50)]).item() == pytest.approx(
        (int((got == 0).sum()) + 50) / 250
    )


@pytest.mark.parametrize("start", [0, 3])
def test_proximal_l1_on_a_trainer_equals_a_plain_torch_loop(start: int, tmp_path: Any) -> None:
    """SGD without momentum, two param groups with their own lr: after each step the penalized
    weights are soft-thresholded by lr * l1 of their group; biases never. With ``start=3``, l1
    is 0 when the fit starts and set before step 3: it applies from that step."""
    import lightning.pytorch as pl

    from lightning_reg.module import WeightPenaltyMixin

    l1, l2 = 0.02, 1e-3

    def build() -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).double()

    def groups(net: nn.Sequential) -> list[dict[str, Any]]:
        return [{"params": net[0].parameters(), "lr": 0.5}, {"params": net[2].parameters()}]

    class Net(WeightPenaltyMixin, pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = build()
            self.configure_penalty(l1=l1 if start == 0 else 0.0, l2=l2, proximal_l1=True)

        def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
            if batch_idx == start:
                self.l1 = l1

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.net(x.double()), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(groups(self.net), lr=0.1)

    model = Net()
    trainer = make_trainer(tmp_path, max_steps=8, log_every_n_steps=4)
    trainer.fit(model, digits_loader(n=256, batch_size=32))

    net = build()
    optimizer = torch.optim.SGD(groups(net), lr=0.1)
    x, y = digits(256)
    for k in range(8):
        xb, yb = x[32 * k : 32 * k + 32].double(), y[32 * k : 32 * k + 32]
        optimizer.zero_grad()
        loss = F.cross_entropy(net(xb), yb) + weight_penalty([net[0].weight, net[2].weight], l2=l2)
        loss.backward()
        optimizer.step()
        if k >= start:
            soft_threshold_(net[0].weight, 0.5 * l1)
            soft_threshold_(net[2].weight, 0.1 * l1)
    for got, ref in zip(model.net.parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    zeros = zero_fraction([net[0].weight, net[2].weight])
    assert float(trainer.callback_metrics["train/zero_fraction"]) == pytest.approx(float(zeros))
    assert float(zeros) > 0.2 and not bool((net[0].bias == 0).any())


@pytest.mark.parametrize("where", ["trainer", "module"])
def test_the_proximal_step_runs_before_max_norm_wherever_it_sits(where: str, tmp_path: Any) -> None:
    """After each step the soft-threshold, then the bound (for the 2-norm the exact proximal map
    of l1 plus the bound), whether the ``MaxNorm`` is on the Trainer's callbacks (their hooks run
    before the module's callbacks') or made by ``RegularizedModule(max_norm=...)``."""
    from lightning_reg import MaxNorm, RegularizedModule

    l1, bound, lr = 0.03, 0.6, 0.1

    def build() -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).double()

    class Net(RegularizedModule):
        def __init__(self, max_norm: float | None) -> None:
            super().__init__(l1=l1, proximal_l1=True, max_norm=max_norm)
            self.net = build()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.net(x.double()), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=lr)

    model = Net(max_norm=bound if where == "module" else None)
    callbacks = [MaxNorm(bound)] if where == "trainer" else []
    make_trainer(tmp_path, max_steps=8, callbacks=callbacks).fit(model, digits_loader())

    def reference(prox_first: bool) -> nn.Sequential:
        net = build()
        optimizer = torch.optim.SGD(net.parameters(), lr=lr)
        x, y = digits(256)
        for k in range(8):
            optimizer.zero_grad()
            F.cross_entropy(
                net(x[32 * k : 32 * k + 32].double()), y[32 * k : 32 * k + 32]
            ).backward()
            optimizer.step()
            for w in (net[0].weight, net[2].weight):
                if prox_first:
                    soft_threshold_(w, lr * l1)
                with torch.no_grad():
                    w.renorm_(2, 0, bound)
                if not prox_first:
                    soft_threshold_(w, lr * l1)
        return net

    net, other = reference(prox_first=True), reference(prox_first=False)
    for got, ref in zip(model.net.parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    assert (net[0].weight - other[0].weight).abs().max() > 1e-3  # the order matters here


# ------------------------------------------------------------- public torch and Lightning only

REGULARIZER_SOURCES = [
    "lightning_reg/selection.py",
    "lightning_reg/penalties.py",
    "lightning_reg/max_norm.py",
    "lightning_reg/module.py",
    "lightning_reg/_hooks.py",
    "lightning_reg/callbacks/max_norm.py",
    "lightning_reg/callbacks/weight_penalty.py",
    # The learning-rate callbacks count real steps through torch's public hooks too.
    "lightning_reg/schedules.py",
    "lightning_reg/callbacks/_lr_base.py",
    "lightning_reg/callbacks/scheduled.py",
    "lightning_reg/callbacks/one_cycle.py",
    "lightning_reg/callbacks/performance.py",
]
# Lightning's loop state and plumbing: never read, underscore or not.
BANNED = {"fit_loop", "precision_plugin", "log_every_n_steps", "_trainer", "scaler"}
# Underscore names that are public API: NamedTuple's `_replace`, torch's multi-tensor kernels
# (`torch._foreach_*`, what torch.optim and clip_grad_norm_ call), and `_generate_state_key`,
# the way Lightning's Callback.state_key documentation builds a key.
ALLOWED = {"_replace", "_generate_state_key"}
READERS = ("getattr", "hasattr")


def _private_uses(path: Path) -> list[str]:
    """Attribute reads of another object's underscore names, and of BANNED names, in ``path``.

    ``self._x`` is allowed only where this package defines ``_x`` (assigned on ``self``,
    annotated in a class body or a method), so ``self._trainer`` of a LightningModule fails.
    """
    tree = ast.parse(path.read_text())
    own: set[str] = set()
    for source in REGULARIZER_SOURCES:
        for node in ast.walk(ast.parse(Path(source).read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                own.add(node.name)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                own.add(node.target.id)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for sub in ast.walk(target):
                        if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name):
                            own.add(sub.attr)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            name, base = node.attr, node.value
            on_self = isinstance(base, ast.Name) and base.id in ("self", "cls")
            foreach = isinstance(base, ast.Name) and base.id == "torch" and "_foreach_" in name
            private = name.startswith("_") and not name.startswith("__") and name not in ALLOWED
            if name in BANNED or (private and not foreach and not (on_self and name in own)):
                found.append(f"{path}:{node.lineno}: .{name}")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in READERS:
            arg = node.args[1] if len(node.args) > 1 else None
            name = arg.value if isinstance(arg, ast.Constant) else None
            private = isinstance(name, str) and name.startswith("_") and not name.startswith("__")
            if private or name in BANNED:
                found.append(f"{path}:{node.lineno}: getattr {name!r}")
    return found


def test_the_regularizers_read_no_private_torch_or_lightning_state() -> None:
    root = Path(__file__).resolve().parents[1]
    uses = [use for source in REGULARIZER_SOURCES for use in _private_uses(root / source)]
    assert uses == []


def test_the_private_state_scan_catches_what_it_must(tmp_path: Path) -> None:
    source = tmp_path / "bad.py"
    source.write_text(
        "def f(self, trainer, opt):\n"
        "    trainer.fit_loop.epoch_loop\n"
        "    self._trainer\n"
        "    trainer.strategy.precision_plugin\n"
        "    opt._step_supports_amp_scaling\n"
        "    getattr(opt, '_opt_called')\n"
        "    torch._foreach_mul_([], 1.0)\n"
    )
    uses = _private_uses(source)
    assert sorted(u.split(": ")[1] for u in uses) == [
        "._step_supports_amp_scaling",
        "._trainer",
        ".fit_loop",
        ".precision_plugin",
        "getattr '_opt_called'",
    ]
