"""The pure core: weight selection, fused penalties and fused max-norm, against torch's own ops."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from lightning_reg.penalties import weight_penalty
from lightning_reg.selection import select_weights

SHAPES = {"linear": (7, 5), "conv1d": (6, 3, 4), "conv2d": (5, 3, 3, 3), "conv3d": (4, 2, 2, 2, 2)}
NORMS = (1.0, 2.0, 3.0, math.inf)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.fc = nn.Linear(4, 6)
        self.bn = nn.BatchNorm1d(6)
        self.ln = nn.LayerNorm(6)
        self.conv = nn.Conv1d(1, 2, 3)
        self.deconv = nn.ConvTranspose1d(2, 1, 3)
        self.bil = nn.Bilinear(3, 3, 2)
        self.out = nn.Linear(6, 10)


def ids(params: list[nn.Parameter]) -> list[int]:
    return [id(p) for p in params]


def rows_over(w: torch.Tensor, max_value: float, p: float = 2.0) -> torch.Tensor:
    return torch.linalg.vector_norm(w.float().flatten(1), p, dim=1) > max_value


def mixed_rows(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Rows of norms from tiny to large, so some rows exceed any bound used here and some do not."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g, dtype=torch.float64)
    scale = torch.logspace(-2, 1, shape[0], dtype=torch.float64).view(-1, *(1,) * (len(shape) - 1))
    return (w * scale).to(dtype)


# --------------------------------------------------------------------------------- selection


def test_default_selection_is_kernels_only_in_parameter_order() -> None:
    net = Net()
    expected = [net.emb.weight, net.fc.weight, net.conv.weight, net.deconv.weight]
    expected += [net.bil.weight, net.out.weight]
    assert ids(select_weights(net)) == ids(expected)


def test_tied_weight_counted_once_and_frozen_left_out() -> None:
    net = Net()
    net.out.weight = net.emb.weight  # (10, 4) tied, as in a language model
    net.fc = nn.Linear(4, 4)
    net.conv.weight.requires_grad_(False)
    selected = select_weights(net)
    assert ids(selected) == ids([net.emb.weight, net.fc.weight, net.deconv.weight, net.bil.weight])


def test_predicate_and_names_choose_instead_of_modules() -> None:
    net = Net()
    biases = select_weights(net, predicate=lambda name, p: name.endswith("bias"))
    assert ids(biases) == ids([p for n, p in net.named_parameters() if n.endswith("bias")])
    assert ids(select_weights(net, names=["bn.weight", "fc.weight"])) == ids(
        [net.fc.weight, net.bn.weight]
    )
    assert ids(select_weights(net, modules=(nn.LayerNorm,))) == ids([net.ln.weight])
    net.out.weight = net.emb.weight
    seen: list[str] = []
    tied = select_weights(net, predicate=lambda name, p: seen.append(name) or name == "out.weight")
    assert "out.weight" in seen and ids(tied) == ids([net.emb.weight])
    assert ids(select_weights(net, names=["out.weight"])) == ids([net.emb.weight])


def test_selection_errors_and_empty_warning() -> None:
    net = Net()
    with pytest.raises(ValueError, match=r"Unknown parameter names \['fc.wieght'\].*fc.weight"):
        select_weights(net, names=["fc.wieght"])
    with pytest.raises(ValueError, match="`predicate` and `names`"):
        select_weights(net, predicate=lambda n, p: True, names=["fc.weight"])
    with pytest.raises(TypeError, match="`names`"):
        select_weights(net, names="fc.weight")
    with pytest.raises(TypeError, match="`modules`"):
        select_weights(net, modules=nn.Linear)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`modules`"):
        select_weights(net, modules=())
    with pytest.raises(TypeError, match="`module`"):
        select_weights([net.fc.weight])  # type: ignore[arg-type]
    with pytest.warns(UserWarning, match="No trainable parameter"):
        assert select_weights(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3))) == []


# --------------------------------------------------------------------------------- penalties


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_penalty_equals_naive_reference(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    tol = {"rtol": 1e-12, "atol": 0.0} if dtype == torch.float64 else {"rtol": 2e-6, "atol": 0.0}
    for trial in range(60):
        n = int(torch.randint(1, 8, (1,), generator=g))
        params = []
        for _ in range(n):
            shape = torch.randint(1, 6, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g)
            params.append(torch.randn(*shape.tolist(), generator=g, dtype=dtype))
        l1, l2 = (
            torch.rand(2, generator=g, dtype=torch.float64) * 10.0 ** (trial % 5 - 3)
        ).tolist()
        if trial % 7 == 0:
            l1 = 0.0
        if trial % 11 == 0:
            l2 = 0.0
        expected = sum(l1 * p.double().abs().sum() + l2 * (p.double() ** 2).sum() for p in params)
        got = weight_penalty(params, l1=l1, l2=l2)
        assert got.dim() == 0
        torch.testing.assert_close(got.double(), torch.as_tensor(expected).double(), **tol)


def test_penalty_gradient_is_l1_sign_plus_2_l2_w_and_finite_at_zero() -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(5, 4, generator=g, dtype=torch.float64)
    w[0] = 0.0
    w[2, 1] = 0.0
    params = [w.requires_grad_(), torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)]
    for l1, l2 in [(0.3, 0.7), (0.3, 0.0), (0.0, 0.7)]:
        for p in params:
            p.grad = None
        weight_penalty(params, l1=l1, l2=l2).backward()
        for p in params:
            assert p.grad is not None and torch.isfinite(p.grad).all()
            expected = l1 * torch.sign(p.detach()) + 2 * l2 * p.detach()
            torch.testing.assert_close(p.grad, expected, rtol=1e-12, atol=1e-15)


def test_penalty_backward_scales_keeps_dtypes_and_is_twice_differentiable() -> None:
    """The upstream gradient (a GradScaler's scale, 1/accumulation) multiplies the penalty's;
    each weight's gradient keeps its dtype; frozen inputs get none; gradcheck and gradgradcheck
    pass on float64 (the backward is itself differentiable); torch.func.grad works."""
    g = torch.Generator().manual_seed(2)
    half = torch.randn(4, 3, generator=g).half().requires_grad_()
    single = torch.randn(3, 3, generator=g).requires_grad_()
    frozen = torch.randn(2, 2, generator=g)
    (weight_penalty([half, single, frozen], l1=0.1, l2=0.2) * 1024.0).backward()
    assert frozen.grad is None
    for w in (half, single):
        assert w.grad is not None and w.grad.dtype == w.dtype
        ref = 1024.0 * (0.1 * torch.sign(w.detach().float()) + 0.4 * w.detach().float())
        torch.testing.assert_close(w.grad.float(), ref, rtol=1e-3 if w is half else 1e-6, atol=0)
    ws = [torch.randn(3, 2, generator=g, dtype=torch.float64).requires_grad_() for _ in range(2)]
    for l1, l2 in [(0.3, 0.7), (0.0, 0.7), (0.3, 0.0)]:
        assert torch.autograd.gradcheck(lambda *w, a=l1, b=l2: weight_penalty(w, l1=a, l2=b), ws)
        assert torch.autograd.gradgradcheck(
            lambda *w, a=l1, b=l2: weight_penalty(w, l1=a, l2=b), ws
        )
    with torch.no_grad():
        assert not weight_penalty(ws, l1=0.1, l2=0.1).requires_grad
    # torch.func transforms accept it too (functional per-parameter gradients).
    w = ws[0].detach()
    functional = torch.func.grad(lambda t: weight_penalty([t], l1=0.3, l2=0.7))(w)
    torch.testing.assert_close(functional, 0.3 * torch.sign(w) + 1.4 * w)


def test_penalty_degenerate_inputs_and_precision() -> None:
    w = nn.Parameter(torch.randn(3, 3))
    zero = weight_penalty([w], l1=0.0, l2=0.0)
    assert zero.dim() == 0 and zero.item() == 0.0 and not zero.requires_grad
    assert weight_penalty([], l1=1.0, l2=1.0).item() == 0.0
    # A single tensor is one parameter, not an iterable of rows.
    torch.testing.assert_close(weight_penalty(w, l1=1.0), w.detach().abs().sum())
    # Half-precision weights: a squared norm of 1e8 overflows float16, not the float32 accumulator.
    half = torch.full((100, 100), 100.0, dtype=torch.float16)
    got = weight_penalty([half], l1=1.0, l2=1.0)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(1e6 + 1e8, rel=1e-6)
    mixed = weight_penalty([half, torch.ones(2, dtype=torch.float64)], l2=1.0)
    assert mixed.dtype == torch.float64 and mixed.item() == pytest.approx(1e8 + 2.0, rel=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"l1": True}, TypeError, r"`l1` must be a finite number >= 0, got True"),
        ({"l2": "0.1"}, TypeError, r"`l2` must be a finite number >= 0, got '0.1'"),
        ({"l1": -1e-4}, ValueError, r"`l1` must be a finite number >= 0, got -0.0001"),
        ({"l2": math.inf}, ValueError, r"`l2` must be a finite number >= 0, got inf"),
        ({"l1": math.nan}, ValueError, r"`l1` must be a finite number >= 0, got nan"),
    ],
)
def test_penalty_rejects_bad_factors(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        weight_penalty([torch.ones(2)], **kwargs)


# --------------------------------------------------------------------------------- DTensor


def test_dtensor_shards_over_two_ranks(ddp_checks: Any) -> None:
    """``check_dtensor_shards`` of tests/distributed/worker.py: DTensors sharded over 2 ranks."""
    for result in ddp_checks["dtensor_shards"]:
        w = result["w"]
        assert torch.equal(result["shard0"], torch.renorm(w, 3.0, 0, 1.0))
        assert torch.equal(result["replicate"], torch.renorm(w, 3.0, 0, 1.0))
        assert "Shard(0) and Replicate()" in result["shard1_error"]
        assert result["shard0_only"] and result["local_rows"] == 3
        first = result["full"][0]
        assert torch.equal(first, torch.renorm(result["before"], 2, 0, 1.0))
        reference = sum(0.1 * f.abs().sum() + 0.2 * (f**2).sum() for f in result["full"])
        assert result["penalty_type"] == "Tensor"
        torch.testing.assert_close(result["penalty"], reference)
        torch.testing.assert_close(result["grad"], 0.1 * first.sign() + 0.4 * first)
