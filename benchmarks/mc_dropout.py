"""Cost of Monte Carlo dropout: ``mc_dropout_predict(n_samples=100)`` vs one forward pass.

Run: ``python benchmarks/mc_dropout.py [--batch N]`` (``--quick``: 3 rounds of batch 8).

For each model the four timings are interleaved (one of each per round, so drifts in machine
load hit all alike) and the table reports medians:

* one forward pass of the batch in eval mode (``torch.no_grad``);
* ``mc_dropout_predict(model, x, n_samples=100)``: batched sampling (the batch replicated along
  the batch dimension), the layers before the first dropout run once, summary (mean, std,
  entropy) included;
* the same with the whole model replicated (the model hidden behind a plain ``nn.Module``, so
  nothing is shared): what batched sampling costs without the shared prefix;
* the naive loop: 100 separate forward passes with dropout on, plus the same summary.

Models: an MLP 784-512x3-10 with dropout after each hidden layer, the digits
``RegularizedMLP`` (through ``mc_dropout_module()``, its ``nn.Sequential`` body), and the
textbook's small CNN on 28x28 inputs with dropout only in its dense head. Measured on the
development machine (2 shared CPU cores, torch 2.13, 2 threads, batch 128, median of 30 rounds):

=============================== ========= ========= ======= ========== ======= ========= ======
model                           1 fwd ms  ours ms   ratio   whole ms   ratio   loop ms   loop /
                                                                                         ours
=============================== ========= ========= ======= ========== ======= ========= ======
MLP 784-512x3-10                1.215     112.36    92.5x   181.44     149.4x  237.41    2.11x
digits RegularizedMLP 64-128x2  0.107     11.94     111.5x  13.43      125.4x  31.35     2.63x
CNN 28x28, dropout in the head  22.267    26.59     1.2x    2010.36    90.3x   2022.97   76.07x
=============================== ========= ========= ======= ========== ======= ========= ======

``--batch 1``: 15.1x, 10.2x, 3.6x. The target was 100 samples within 20x one forward pass: met
by the CNN and by every model on a single input; not by the MLPs at batch 128, where one pass
already keeps the CPU busy and 100 samples do 100x the arithmetic after the first dropout.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from lightning_reg.demos import RegularizedMLP
from lightning_reg.uncertainty import mc_dropout_predict

N_SAMPLES = 100


def _mlp_784() -> nn.Module:
    layers: list[nn.Module] = []
    width = 784
    for _ in range(3):
        layers += [nn.Linear(width, 512), nn.ReLU(), nn.Dropout(0.2)]
        width = 512
    return nn.Sequential(*layers, nn.Linear(width, 10))


def _cnn() -> nn.Module:
    """The textbook's small CNN: dropout only in the dense head."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(128, 10),
    )


class _Whole(nn.Module):
    """Hides that a model is an ``nn.Sequential``, so every layer runs on the replicated input
    (what ``mc_dropout_predict`` did before it ran the dropout-free prefix once)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def _loop(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.train()
    try:
        samples = torch.stack([model(x).softmax(-1) for _ in range(N_SAMPLES)])
    finally:
        model.eval()
    std, mean = torch.std_mean(samples, 0, correction=0)
    return -torch.special.xlogy(mean, mean).sum(-1) + std.sum()


def _median_ms(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def bench(name: str, model: nn.Module, x: torch.Tensor, rounds: int) -> dict[str, float | str]:
    model.eval()

    def forward() -> object:
        return model(x)

    body = model.mc_dropout_module() if isinstance(model, RegularizedMLP) else model
    whole = _Whole(body)
    fns: dict[str, Callable[[], object]] = {
        "forward": forward,
        "mc": lambda: mc_dropout_predict(model, x, n_samples=N_SAMPLES),
        "whole": lambda: mc_dropout_predict(whole, x, n_samples=N_SAMPLES),
        "loop": lambda: _loop(model, x),
    }
    with torch.no_grad():
        _median_ms(fns, 2)  # warm-up
        ms = _median_ms(fns, rounds)
    return {
        "model": name,
        **ms,
        "ratio": ms["mc"] / ms["forward"],
        "whole_ratio": ms["whole"] / ms["forward"],
        "speedup": ms["loop"] / ms["mc"],
    }


def main(argv: list[str] | None = None) -> list[dict[str, float | str]]:
    parser = argparse.ArgumentParser(description="MC dropout vs one forward pass.")
    parser.add_argument("--quick", action="store_true", help="few rounds of batch 8 (smoke run)")
    parser.add_argument("--batch", type=int, default=None, help="rows of x (default 128)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rounds = 3 if args.quick else 30
    if args.batch is None:
        args.batch = 8 if args.quick else 128
    torch.manual_seed(0)
    digits = RegularizedMLP(hidden=(128, 128), dropout=0.2)
    rows = [
        bench("MLP 784-512x3-10", _mlp_784(), torch.randn(args.batch, 784), rounds),
        bench("digits RegularizedMLP 64-128x2-10", digits, torch.randn(args.batch, 64), rounds),
        bench("CNN 28x28, dropout in the head", _cnn(), torch.randn(args.batch, 1, 28, 28), rounds),
    ]
    print(
        f"\nMC dropout, {N_SAMPLES} samples, batch {args.batch}, "
        f"{torch.get_num_threads()} threads, median of {rounds} interleaved rounds\n"
    )
    print(
        "| model | 1 forward (ms) | mc_dropout_predict (ms) | ratio | whole model replicated "
        "(ms) | ratio | naive loop (ms) | loop / ours |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['model']} | {r['forward']:.3f} | {r['mc']:.2f} | {r['ratio']:.1f}x | "
            f"{r['whole']:.2f} | {r['whole_ratio']:.1f}x | {r['loop']:.2f} | {r['speedup']:.2f}x |"
        )
    return rows


if __name__ == "__main__":
    main()
