"""Fused max-norm and weight penalty against per-tensor loops and the memory-bandwidth floor.

Runs every case of a model in interleaved repeats (each repeat runs every case once, in a new
random order) and prints the medians as a Markdown table. On CPU each run is timed in process
CPU time (``--clock cpu``, the default there): on a machine shared with other jobs, a wall-clock
time also counts the slices the scheduler gave to them, which inflates long cases more than short
ones; on CUDA it is wall time around synchronized runs.

    python benchmarks/regularization.py                 # CPU, full sizes
    python benchmarks/regularization.py --device cuda   # if a GPU is present
    python benchmarks/regularization.py --quick         # tiny sizes (smoke test)
    python benchmarks/regularization.py --models c --norm-types 2 --threads 1  # max-norm, (c)

Models: (a) ``--layers`` Linear layers of ``--width`` x ``--width`` with biases (only the weights
are selected: 50 x 256 x 256 by default, 100 tensors in the model) and (b) an MLP of
``--mlp-layers`` Linear layers of ``--mlp-width`` x ``--mlp-width`` (6 x 2048 x 2048, about 25M
parameters). The floor is one read+write pass over the same weights,
``torch._foreach_mul_(weights, 1.0)``. Penalty rows: "penalty value" is ``weight_penalty``
(what logging computes) against the per-tensor loop, both without autograd; "penalty gradient"
is ``add_penalty_grad_`` (``foreach=True``, what a training step pays) against its reference
loop (``foreach=False``); "gradient vs loss route" is the same call against the loss route's
forward and backward (gradients reset to ``None`` first).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import random
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from lightning_reg.max_norm import apply_max_norm_
from lightning_reg.penalties import add_penalty_grad_, weight_penalty
from lightning_reg.selection import select_weights

L1, L2, MAX_VALUE = 1e-5, 1e-4, 0.5
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--repeats", type=int, default=30, help="timed repeats of each case")
    parser.add_argument("--warmup", type=int, default=3, help="untimed repeats first")
    parser.add_argument("--layers", type=int, default=50, help="Linear layers of model (a)")
    parser.add_argument("--width", type=int, default=256, help="width of model (a)")
    parser.add_argument("--mlp-layers", type=int, default=6, help="Linear layers of model (b)")
    parser.add_argument("--mlp-width", type=int, default=2048, help="width of model (b)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default=None,
        help="process CPU time or wall time (default: cpu on a CPU device, wall on others)",
    )
    parser.add_argument(
        "--norm-types",
        type=lambda text: [float(p) for p in text.split(",")],
        default=[2.0, math.inf],
        help="p of the max-norm rows, comma-separated (default: 2,inf)",
    )
    parser.add_argument(
        "--models",
        type=lambda text: text.split(","),
        default=["a", "b", "c"],
        help="comma list of the models to run: a, b (penalty and max-norm) and c (max-norm only)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.models) - {"a", "b", "c"})
    if unknown:
        parser.error(f"--models: unknown model(s) {', '.join(unknown)}; choose from a, b, c")
    if args.clock is None:
        args.clock = "cpu" if torch.device(args.device).type == "cpu" else "wall"
    if args.quick:
        args.repeats, args.warmup = 3, 1
        args.layers, args.width, args.mlp_layers, args.mlp_width = 5, 32, 2, 64
    return args


def stack_of_linears(layers: int, width: int, device: torch.device) -> nn.Module:
    return nn.Sequential(*(nn.Linear(width, width) for _ in range(layers))).to(device)


def mlp_784(quick: bool, device: torch.device) -> nn.Module:
    """The 784-512x3-10 MLP of ``overhead.py`` (64-32x3-10 with ``--quick``)."""
    sizes = [64, 32, 32, 32, 10] if quick else [784, 512, 512, 512, 10]
    layers = [nn.Linear(a, b) for a, b in itertools.pairwise(sizes)]
    return nn.Sequential(*layers).to(device)


def time_interleaved(
    cases: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int,
    device: torch.device,
    setup: dict[str, Callable[[], object]] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median time (ms) of each case by ``clock``, the cases run in turn within every repeat.

    ``setup[name]``, if given, runs untimed right before every run of case ``name``.
    """
    setup = setup or {}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        for name, fn in cases.items():
            if name in setup:
                setup[name]()
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    order = random.Random(0)
    for _ in range(repeats):
        # A new order each repeat: a case that runs right after another one touching the same
        # weights finds them in cache, one after the allocation-heavy penalty cases does not,
        # and no case may always have the same neighbour.
        for name in order.sample(list(cases), len(cases)):
            fn = cases[name]
            if name in setup:
                setup[name]()
            sync()
            start = clock()
            fn()
            sync()
            times[name].append((clock() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def bench_model(name: str, model: nn.Module, args: argparse.Namespace) -> list[str]:
    weights = select_weights(model)
    device = weights[0].device

    def renorm_loop() -> None:
        with torch.no_grad():
            for w in weights:
                w.renorm_(2, 0, MAX_VALUE)

    def floor() -> None:
        with torch.no_grad():
            torch._foreach_mul_(weights, 1.0)

    def penalty_loop() -> torch.Tensor:
        return L1 * sum(w.abs().sum() for w in weights) + L2 * sum((w * w).sum() for w in weights)

    def training(penalty: Callable[[], torch.Tensor]) -> Callable[[], None]:
        """Forward and backward as in a training step (gradients reset to None first)."""

        def step() -> None:
            for w in weights:
                w.grad = None
            penalty().backward()

        return step

    def no_grad(fn: Callable[[], object]) -> Callable[[], object]:
        return lambda: torch.no_grad()(fn)()

    def gradient(foreach: bool) -> Callable[[], None]:
        def add() -> None:
            for w in weights:
                if w.grad is None:
                    w.grad = torch.zeros_like(w)
            add_penalty_grad_(weights, l1=L1, l2=L2, foreach=foreach)

        return add

    ms = time_interleaved(
        {
            "max-norm fused": lambda: apply_max_norm_(weights, MAX_VALUE),
            "max-norm loop": renorm_loop,
            "floor": floor,
            "penalty value fused": no_grad(lambda: weight_penalty(weights, l1=L1, l2=L2)),
            "penalty value loop": no_grad(penalty_loop),
            "penalty gradient fused": gradient(True),
            "penalty gradient loop": gradient(False),
            "gradient vs loss route fused": gradient(True),
            "gradient vs loss route loop": training(penalty_loop),
        },
        args.repeats,
        args.warmup,
        device,
        clock=CLOCKS[args.clock],
    )
    size = f"{name}: {len(list(model.parameters()))} tensors, {sum(w.numel() for w in weights):,}"
    rows = []
    for op in ("max-norm", "penalty value", "penalty gradient", "gradient vs loss route"):
        fused, loop = ms[f"{op} fused"], ms[f"{op} loop"]
        rows.append(
            f"| {size} | {op} | {fused:.3f} | {loop:.3f} | {loop / fused:.2f}x "
            f"| {ms['floor']:.3f} | {fused / ms['floor']:.2f}x |"
        )
    return rows


def bench_max_norm(name: str, model: nn.Module, args: argparse.Namespace) -> list[str]:
    """Max-norm rows: both paths of ``apply_max_norm_`` against two floors, in three states per
    norm type.

    "within": every row already within the bound (a loose bound; ``renorm_`` still writes every
    weight). "one over": the rows of the first weight over the bound, the others within (a bound
    that binds in one layer). "over": every row of every weight over the bound. Each case has its
    own copy of the weights, reset from that state's values, untimed, right before every run
    (the floors' too), so every case starts with its weights equally warm in cache.

    "floor" is one read+write pass, ``torch._foreach_mul_(weights, 1.0)``: all that a state in
    which nothing changes needs. "two-pass floor" is the least that public torch ops allow when
    rows must change: one read pass for the row 2-norms (``linalg.vector_norm(w, 2, dim=1)``) and
    then one read+write pass; torch has no CPU op that scales rows by their norm in one pass.
    "row norms" is that read pass alone: every 2-norm path must know each row's norm, so no path
    built of torch's kernels is faster than it.
    """
    base = select_weights(model)
    device = base[0].device
    floor_init = [w.detach().clone() for w in base]
    floor_weights = [w.clone() for w in floor_init]

    def floor() -> None:
        with torch.no_grad():
            torch._foreach_mul_(floor_weights, 1.0)

    def row_norms() -> None:
        with torch.no_grad():
            for w in floor_weights:
                torch.linalg.vector_norm(w, 2, tuple(range(1, w.dim())), True)

    def two_pass_floor() -> None:
        row_norms()
        with torch.no_grad():
            torch._foreach_mul_(floor_weights, 1.0)

    reset_floor = functools.partial(torch._foreach_copy_, floor_weights, floor_init)
    floors = {"floor": floor, "two-pass floor": two_pass_floor, "row norms": row_norms}
    cases: dict[str, Callable[[], object]] = dict(floors)
    setup: dict[str, Callable[[], object]] = dict.fromkeys(floors, reset_floor)
    for p in args.norm_types:
        for state, initial in max_norm_states(base, p).items():
            for path in ("reference", "foreach"):
                key = f"{p:g} {state} {path}"
                weights = [w.clone() for w in initial]
                cases[key] = functools.partial(
                    apply_max_norm_, weights, MAX_VALUE, p, foreach=path == "foreach"
                )
                setup[key] = functools.partial(torch._foreach_copy_, weights, initial)
    ms = time_interleaved(cases, args.repeats, args.warmup, device, setup, CLOCKS[args.clock])
    one, two, norms = ms["floor"], ms["two-pass floor"], ms["row norms"]
    size = f"max-norm, {name}: {len(base)} weights, {sum(w.numel() for w in base):,}"
    rows = []
    for key in cases:
        if key.endswith(" reference"):
            ref, fast = ms[key], ms[key.replace(" reference", " foreach")]
            p_text, state = key.removesuffix(" reference").split(" ", 1)
            rows.append(
                f"| {size} | {p_text} | {state} | {ref:.4g} | {fast:.4g} | {one:.4g} | {two:.4g} "
                f"| {ref / one:.2f}x | {fast / one:.2f}x | {ref / two:.2f}x | {fast / two:.2f}x "
                f"| {norms:.4g} | {norms / one:.2f}x |"
            )
    return rows


def max_norm_states(weights: list[torch.Tensor], p: float) -> dict[str, list[torch.Tensor]]:
    """Copies of ``weights`` scaled so that, in ``p``-norm, every row is within ``MAX_VALUE``
    ("within"), the first weight's rows are all over it ("one over"), or every row is ("over")."""
    with torch.no_grad():
        norms = [torch.linalg.vector_norm(w.flatten(1), p, dim=1) for w in weights]
        largest = max(float(n.max()) for n in norms)
        within = [w * (0.5 * MAX_VALUE / largest) for w in weights]
        over = [w * (2.0 * MAX_VALUE / float(n.min())) for w, n in zip(weights, norms, strict=True)]
    return {"within": within, "one over": [over[0], *within[1:]], "over": over}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} "
        f"repeats={args.repeats} clock={args.clock} (medians, ms)\n"
    )
    print(
        "| model: tensors, weight elements | op | fused (ms) | per-tensor loop (ms) | "
        "loop / fused | floor (ms) | fused / floor |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    models: dict[str, nn.Module] = {}
    if "a" in args.models:
        models["(a) Linear stack"] = stack_of_linears(args.layers, args.width, device)
    if "b" in args.models:
        models["(b) MLP"] = stack_of_linears(args.mlp_layers, args.mlp_width, device)
    for name, model in models.items():
        for row in bench_model(name, model, args):
            print(row)
    print(
        "\n| max-norm model: weights, elements | p | rows | reference (ms) | foreach (ms) "
        "| floor (ms) | two-pass floor (ms) | reference / floor | foreach / floor "
        "| reference / two-pass | foreach / two-pass | row norms (ms) | row norms / floor |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    if "c" in args.models:
        models["(c) MLP 784-512x3-10"] = mlp_784(args.quick, device)
    for name, model in models.items():
        for row in bench_max_norm(name, model, args):
            print(row)


if __name__ == "__main__":
    main()
