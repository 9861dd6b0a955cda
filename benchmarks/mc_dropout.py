"""Cost of Monte Carlo dropout: ``mc_dropout_predict(n_samples=100)`` against its arithmetic floor.

Run: ``python benchmarks/mc_dropout.py [--batch N] [--rounds R] [--threads T]`` (``--quick``:
2 rounds of batch 8, a smoke run). Numbers go in ``docs/benchmarks.md``, not here.

For each model, these are timed in one run, interleaved (one of each per round, so drifts in
machine load hit all alike), and the table reports medians:

* ``1 forward``: one eval-mode forward pass of the batch (``torch.no_grad``), for scale;
* ``floor``: the arithmetic MC dropout cannot avoid, the same layers run the same way without
  dropout: a copy of the model with every dropout probability set to 0 (dropout modules and
  ``nn.MultiheadAttention``), in the modes MC dropout samples in (train mode, BatchNorm in
  eval), the layers before the first random layer once on the batch, the rest once on the
  batch replicated 100 times;
* ``mc_dropout_predict``: 100 samples with ``task="classification"`` (softmax, mean, std and
  entropy included);
* ``fast_masks``: the same with ``fast_masks=True`` (masks from uniform numbers, CPU only);
* ``loop``: the naive loop, 100 forward passes in train mode with the same summary.

Models: an MLP 784-512x3-10 with dropout 0.2 after each hidden layer (an ``nn.Sequential``:
its first Linear runs once); the textbook's small CNN on 28x28 inputs with dropout only in its
dense head (a Sequential: the convolutions run once); a small transformer classifier (a
custom module, so it runs whole on the replicated input): a Linear embedding of 16 tokens of
32 features to width 64, ``nn.TransformerEncoder`` of 2 layers (4 heads, feed-forward 128,
dropout 0.1, which includes attention-weight dropout), mean over tokens, Linear to 10 classes.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from lightning_reg.uncertainty import DROPOUT_MODULES, _split, mc_dropout_mode, mc_dropout_predict

N_SAMPLES = 100


def _mlp() -> nn.Module:
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


class TransformerClassifier(nn.Module):
    """Linear token embedding, a 2-layer ``nn.TransformerEncoder``, mean pooling, a head."""

    def __init__(self, features: int = 32, width: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(features, width)
        layer = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))


def without_dropout(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every dropout probability set to 0."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, DROPOUT_MODULES):
            module.p = 0.0
        if isinstance(module, nn.MultiheadAttention):
            module.dropout = 0.0
    return twin


def floor_fn(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """The floor: ``model`` without dropout, its prefix once, the rest on 100 replicas."""
    twin = without_dropout(model)
    prefix, rest = _split(twin, 0)

    def run() -> object:
        with mc_dropout_mode(twin):
            h = x
            for layer in prefix:
                h = layer(h)
            h = h.repeat(N_SAMPLES, *([1] * (h.dim() - 1)))
            if rest is None:
                return twin(h)
            for layer in rest:
                h = layer(h)
            return h

    return run


def _loop(model: nn.Module, x: torch.Tensor) -> object:
    with mc_dropout_mode(model):
        samples = torch.stack([model(x).softmax(-1) for _ in range(N_SAMPLES)])
    std, mean = torch.std_mean(samples, 0, correction=0)
    return -torch.special.xlogy(mean, mean).sum(-1), std


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
    fns: dict[str, Callable[[], object]] = {
        "forward": lambda: model(x),
        "floor": floor_fn(model, x),
        "mc": lambda: mc_dropout_predict(model, x, N_SAMPLES, task="classification"),
        "fast": lambda: mc_dropout_predict(
            model, x, N_SAMPLES, task="classification", fast_masks=True
        ),
        "loop": lambda: _loop(model, x),
    }
    with torch.no_grad():
        _median_ms(fns, 1)  # warm-up
        ms = _median_ms(fns, rounds)
    return {"model": name, **ms}


def main(argv: list[str] | None = None) -> list[dict[str, float | str]]:
    parser = argparse.ArgumentParser(description="MC dropout against its arithmetic floor.")
    parser.add_argument("--quick", action="store_true", help="2 rounds of batch 8 (smoke run)")
    parser.add_argument("--batch", type=int, default=None, help="rows of x (default 128)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 15)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (2 if args.quick else 15)
    batch = args.batch or (8 if args.quick else 128)
    torch.manual_seed(0)
    cases = [
        ("MLP 784-512x3-10", _mlp(), (784,)),
        ("CNN 28x28, dropout in the head", _cnn(), (1, 28, 28)),
        ("transformer 16x32, 2 layers", TransformerClassifier(), (16, 32)),
    ]
    rows = [bench(name, model, torch.randn(batch, *shape), rounds) for name, model, shape in cases]
    print(
        f"\nMC dropout, {N_SAMPLES} samples, batch {batch}, {torch.get_num_threads()} threads, "
        f"median of {rounds} interleaved rounds\n"
    )
    print(
        "| model | 1 forward (ms) | floor (ms) | mc_dropout_predict (ms) | / floor "
        "| fast_masks=True (ms) | / floor | naive loop (ms) | / floor |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        floor = float(r["floor"])
        print(
            f"| {r['model']} | {r['forward']:.2f} | {floor:.2f} "
            f"| {r['mc']:.2f} | {float(r['mc']) / floor:.2f}x "
            f"| {r['fast']:.2f} | {float(r['fast']) / floor:.2f}x "
            f"| {r['loop']:.2f} | {float(r['loop']) / floor:.2f}x |"
        )
    return rows


if __name__ == "__main__":
    main()
