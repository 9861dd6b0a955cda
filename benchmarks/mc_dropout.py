"""Cost of Monte Carlo dropout: ``mc_dropout_predict(n_samples=100)`` against its arithmetic floor.

Run: ``python benchmarks/mc_dropout.py [--batch N] [--rounds R] [--threads T]`` (``--quick``:
2 rounds of batch 8, a smoke run). Instead of the table, ``--sweep`` times the floor (the math
floor for a model with attention dropout), ``mc_dropout_predict`` and ``fast_masks=True`` by
input rows per pass, to check that the default pass size is near the best one; ``--profile``
prints self CPU time by op from ``torch.profiler``, to see where the time beyond the floor
goes. Numbers go in ``docs/benchmarks.md``, not here.

For each model, these are timed in one run, interleaved (one of each per round, so drifts in
machine load hit all alike), and the table reports medians:

* ``1 forward``: one eval-mode forward pass of the batch (``torch.no_grad``), for scale;
* ``floor``: the arithmetic MC dropout cannot avoid, the same layers run the same way without
  dropout: a copy of the model with every dropout probability set to 0 (dropout modules and
  ``nn.MultiheadAttention``), in the modes MC dropout samples in (train mode, BatchNorm in
  eval), run by ``mc_dropout_predict``'s own sampler (``_draw``): the layers before the first
  random layer once on the batch, the rest on the batch replicated 100 times, in the same
  passes (same number of samples per pass);
* ``math floor`` (models with attention-weight dropout only): the same floor with
  ``scaled_dot_product_attention`` held on its math path (``sdpa_kernel(SDPBackend.MATH)``).
  Sampling attention dropout needs the attention weights materialized: torch's fused CPU
  kernels refuse ``dropout_p > 0`` ("Both fused kernels do not support non-zero dropout"), so
  the model's own attention runs on the math path whenever its dropout is sampled. This is the
  physical floor of the same work; the fused-kernel floor is printed beside it;
* ``mc_dropout_predict``: 100 samples with ``task="classification"`` (softmax, mean, std and
  entropy included);
* ``fast_masks``: the same with ``fast_masks=True`` (masks from 16 random bits per element,
  CPU only);
* ``loop``: the naive loop, 100 forward passes in train mode with the same summary.

The ratios are to the math floor where the model has attention dropout (to the fused-kernel
floor in parentheses), else to the floor.

Models: an MLP 784-512x3-10 with dropout 0.2 after each hidden layer (an ``nn.Sequential``:
its first Linear runs once); the textbook's small CNN on 28x28 inputs with dropout only in its
dense head (a Sequential: the convolutions run once); a small transformer classifier (a
custom module, so it runs whole on the replicated input): a Linear embedding of 16 tokens of
32 features to width 64, ``nn.TransformerEncoder`` of 2 layers (4 heads, feed-forward 128,
dropout 0.1, which includes attention-weight dropout), mean over tokens, Linear to 10 classes;
the same transformer with torch's default feed-forward width, 2048 (each row's activations are
then 128 KiB: the pass size must follow the activations, not the input).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from lightning_reg.uncertainty import DROPOUT_MODULES, _draw, mc_dropout_mode, mc_dropout_predict

N_SAMPLES = 100
# The kernels that draw dropout masks: torch's Bernoulli and fast_masks' random bits.
RANDOM_OPS = ("aten::bernoulli_", "aten::random_")


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

    def __init__(
        self, features: int = 32, width: int = 64, classes: int = 10, feedforward: int = 128
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(features, width)
        layer = nn.TransformerEncoderLayer(width, 4, feedforward, dropout=0.1, batch_first=True)
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


def has_attention_dropout(model: nn.Module) -> bool:
    """Whether ``model`` has an ``nn.MultiheadAttention`` with attention-weight dropout."""
    return any(isinstance(m, nn.MultiheadAttention) and m.dropout > 0 for m in model.modules())


def floor_fn(
    model: nn.Module, x: torch.Tensor, math_attention: bool = False, batch_size: int | None = None
) -> Callable[[], object]:
    """The floor: ``model`` without dropout through ``mc_dropout_predict``'s sampler (its
    prefix once, the rest on 100 replicas in the same passes), attention on the math path if
    ``math_attention``; ``batch_size`` as in ``mc_dropout_predict``."""
    twin = without_dropout(model)

    def run() -> object:
        kernel = sdpa_kernel(SDPBackend.MATH) if math_attention else contextlib.nullcontext()
        with mc_dropout_mode(twin), kernel:
            return _draw(twin, x, N_SAMPLES, batch_size, 0, 0)

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
    if has_attention_dropout(model):
        fns["math floor"] = floor_fn(model, x, math_attention=True)
    with torch.no_grad():
        _median_ms(fns, 1)  # warm-up
        ms = _median_ms(fns, rounds)
    return {"model": name, **ms}


SWEEP = (16, 64, 256, 1024, 4096)
"""Input rows per pass (``batch_size``, replicas included) of ``--sweep``."""


def sweep(name: str, model: nn.Module, x: torch.Tensor, rounds: int) -> list[str]:
    """Markdown rows: the floor (math attention if the model has attention dropout),
    ``mc_dropout_predict`` and ``fast_masks=True`` in ms by input rows per pass
    (``batch_size``), and with the default pass size; interleaved, medians."""
    model.eval()
    math_attention = has_attention_dropout(model)

    def predict(batch_size: int | None, fast: bool) -> Callable[[], object]:
        return lambda: mc_dropout_predict(
            model, x, N_SAMPLES, task="classification", batch_size=batch_size, fast_masks=fast
        )

    sizes: list[int | None] = [*SWEEP, None]
    fns: dict[tuple[str, int | None], Callable[[], object]] = {}
    for size in sizes:
        fns["floor", size] = floor_fn(model, x, math_attention, size)
        fns["mc_dropout_predict", size] = predict(size, False)
        fns["fast_masks", size] = predict(size, True)
    times: dict[str, Callable[[], object]] = {f"{c}/{s}": fn for (c, s), fn in fns.items()}
    with torch.no_grad():
        _median_ms(times, 1)
        ms = _median_ms(times, rounds)
    cases = ("floor", "mc_dropout_predict", "fast_masks")
    return [
        f"| {name} | {case} | " + " | ".join(f"{ms[f'{case}/{s}']:.1f}" for s in sizes) + " |"
        for case in cases
    ]


def table_row(r: dict[str, float | str]) -> str:
    """One Markdown row of :func:`bench`'s timings: the ratios are to the math floor where the
    model has attention dropout (to the fused-kernel floor in parentheses), else to the floor."""
    fused = float(r["floor"])
    floor = float(r.get("math floor", fused))

    def ratio(key: str) -> str:
        own = f"{float(r[key]) / floor:.2f}x"
        return f"{own} ({float(r[key]) / fused:.2f}x)" if "math floor" in r else own

    math_cell = f"{floor:.2f}" if "math floor" in r else "-"
    return (
        f"| {r['model']} | {r['forward']:.2f} | {fused:.2f} | {math_cell} "
        f"| {r['mc']:.2f} | {ratio('mc')} | {r['fast']:.2f} | {ratio('fast')} "
        f"| {r['loop']:.2f} | {ratio('loop')} |"
    )


def profile_ops(name: str, model: nn.Module, x: torch.Tensor, rounds: int) -> str:
    """A Markdown table: self CPU time (ms, ``torch.profiler``) by op of the floor (the math
    floor for a model with attention dropout), ``mc_dropout_predict`` and ``fast_masks=True``,
    from the round with the least total; the ops above 1% of a total, the kernels that draw
    the masks (always), and the total."""
    model.eval()
    fns = {
        "floor": floor_fn(model, x, has_attention_dropout(model)),
        "mc_dropout_predict": lambda: mc_dropout_predict(
            model, x, N_SAMPLES, task="classification"
        ),
        "fast_masks": lambda: mc_dropout_predict(
            model, x, N_SAMPLES, task="classification", fast_masks=True
        ),
    }
    by_op: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for case, fn in fns.items():
            fn()  # warm-up
            tables = []
            for _ in range(rounds):
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as p:
                    fn()
                tables.append({e.key: e.self_cpu_time_total / 1e3 for e in p.key_averages()})
            by_op[case] = min(tables, key=lambda t: sum(t.values()))
    totals = {case: sum(t.values()) for case, t in by_op.items()}
    drawn = {op for t in by_op.values() for op in t if op in RANDOM_OPS}
    ops = sorted(
        {op for case, t in by_op.items() for op, ms in t.items() if ms > 0.01 * totals[case]}
        | drawn,
        key=lambda op: -max(t.get(op, 0.0) for t in by_op.values()),
    )
    lines = [f"\n{name}: self CPU ms by op\n", "| op | " + " | ".join(fns) + " |"]
    lines.append("| --- |" + " ---: |" * len(fns))
    for op in ops:
        lines.append(
            f"| `{op}` | " + " | ".join(f"{by_op[c].get(op, 0.0):.2f}" for c in fns) + " |"
        )
    lines.append("| total | " + " | ".join(f"{totals[c]:.2f}" for c in fns) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, float | str]]:
    parser = argparse.ArgumentParser(description="MC dropout against its arithmetic floor.")
    parser.add_argument("--quick", action="store_true", help="2 rounds of batch 8 (smoke run)")
    parser.add_argument("--batch", type=int, default=None, help="rows of x (default 128)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 15)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--sweep", action="store_true", help="the times by rows per pass")
    parser.add_argument("--profile", action="store_true", help="self CPU time by op")
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
        (
            "transformer 16x32, 2 layers, feed-forward 2048",
            TransformerClassifier(feedforward=2048),
            (16, 32),
        ),
    ]
    if args.quick and (args.sweep or args.profile):
        cases = cases[:3]  # a smoke run of the sweep or profile: the three small models
    setting = (
        f"{N_SAMPLES} samples, batch {batch}, {torch.get_num_threads()} threads, median of "
        f"{rounds} interleaved rounds"
    )
    if args.sweep:
        print(f"\nms by input rows per pass, {setting}\n")
        print("| model | case | " + " | ".join(map(str, SWEEP)) + " | default |")
        print("| --- | --- |" + " ---: |" * (len(SWEEP) + 1))
        for name, model, shape in cases:
            print("\n".join(sweep(name, model, torch.randn(batch, *shape), rounds)))
        return []
    if args.profile:
        print(f"\nProfile, {setting.replace('median', 'fastest')}")
        for name, model, shape in cases:
            print(profile_ops(name, model, torch.randn(batch, *shape), rounds))
        return []
    rows = [bench(name, model, torch.randn(batch, *shape), rounds) for name, model, shape in cases]
    print(f"\nMC dropout, {setting}\n")
    print(
        "| model | 1 forward (ms) | floor (ms) | math floor (ms) | mc_dropout_predict (ms) "
        "| / floor | fast_masks=True (ms) | / floor | naive loop (ms) | / floor |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(table_row(r))
    return rows


if __name__ == "__main__":
    main()
