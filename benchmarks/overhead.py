"""Per-optimizer-step cost of lightning-reg's features against bare Lightning and peer code.

    python benchmarks/overhead.py                   # CPU, 1 thread; rewrites docs/benchmarks.md
    python benchmarks/overhead.py --device cuda     # on a GPU
    python benchmarks/overhead.py --quick --no-write  # tiny run that only prints (smoke test)

The same model is trained by a real ``Trainer`` in several arms: bare, each feature of ours
alone, all of ours together, and the code a user would write instead (the peer):

=============== ================================= =================================================
feature         ours                              peer
=============== ================================= =================================================
1cycle          ``OneCycleScheduler``             torch ``OneCycleLR``, ``interval="step"``
exponential     ``ScheduledLR(ExponentialDecay)`` torch ``ExponentialLR``, ``interval="step"``
max-norm        ``MaxNorm`` callback              ``p.renorm_(2, 0, c)`` per weight in
                                                  ``optimizer_step``
l1+l2 penalty   ``WeightPenaltyMixin``            ``l1 * sum(p.abs().sum()) + l2 * sum(...)``
                                                  over ``parameters()`` in ``training_step``
plateau         ``PerformanceScheduler``          torch ``ReduceLROnPlateau`` via the monitor dict
all             1cycle + max-norm + penalty       the three peers together
=============== ================================= =================================================

The time of one step is the time between consecutive ``on_train_batch_start`` calls (the whole
training step: batch fetch, forward, backward, optimizer, every hook), on synthetic in-memory
batches, with progress bar, logger, checkpointing and model summary off. Validation is off,
except in the plateau arms, which act once per validation: there all three arms (bare, ours,
peer) validate on one batch every ``--val-every`` steps, and a "step" is the median over blocks
of ``--val-every`` consecutive steps divided by ``--val-every`` (each block holds one validation).
Every round fits each arm once (in an order rotated every round, so no arm always runs first),
skipping ``--warmup`` steps; a fit's step time is the median of its steps. The table gives the
fastest round of each arm (other processes on a shared machine only ever add time, so the fastest
round is the best estimate of the cost itself) and its ratio to the fastest bare round, then the
median round and "x bare, paired": the median over rounds of the arm's step over the bare arm's
step in the same round. With one torch thread on CPU the step runs in the Python thread, so the
clock is that thread's CPU time (``time.thread_time``), which a busy neighbour inflates less than
the wall clock (shown last); on a GPU the clock is the wall clock.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from _common import machine_header, markdown_table, quiet_lightning, write_section
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_reg import (
    ExponentialDecay,
    MaxNorm,
    OneCycleScheduler,
    PerformanceScheduler,
    ScheduledLR,
    WeightPenaltyMixin,
)

L1, L2, MAX_NORM, LR, MAX_LR, DISTINCT_BATCHES = 1e-5, 1e-4, 3.0, 0.01, 0.1, 16


@dataclass(frozen=True)
class Arm:
    """One way of training the model: which of our features or their peers are on."""

    label: str
    penalty: str | None = None  # "ours" or "peer"
    max_norm: str | None = None  # "ours" or "peer"
    schedule: str | None = None  # "1cycle", "exponential" or "plateau"
    side: str | None = None  # "ours" or "peer": who drives `schedule`
    validate: bool = False
    l1: float = L1  # the l1 factor of the penalty arms (0 for "l2" arms)
    accumulate: int = 1


ARMS = (
    Arm("bare"),
    Arm("1cycle: ours", schedule="1cycle", side="ours"),
    Arm("1cycle: peer", schedule="1cycle", side="peer"),
    Arm("exponential: ours", schedule="exponential", side="ours"),
    Arm("exponential: peer", schedule="exponential", side="peer"),
    Arm("max-norm: ours", max_norm="ours"),
    Arm("max-norm: peer", max_norm="peer"),
    Arm("l1+l2 penalty: ours", penalty="ours"),
    Arm("l1+l2 penalty: peer", penalty="peer"),
    Arm("all: ours", penalty="ours", max_norm="ours", schedule="1cycle", side="ours"),
    Arm("all: peer", penalty="peer", max_norm="peer", schedule="1cycle", side="peer"),
    Arm("bare + validation", validate=True),
    Arm("plateau: ours", schedule="plateau", side="ours", validate=True),
    Arm("plateau: peer", schedule="plateau", side="peer", validate=True),
)

# The penalty targets: the penalty's in-step time against its floor (the bare in-place adds into
# `.grad`, timed at the same point of a real step), at accumulation 1 and 4, and the time
# 1cycle + max-norm + l2 add to bare against the time the hand-written floor adds (the same
# unavoidable arithmetic written inside the bare step: the l2 gradient add into `.grad` in
# `on_before_optimizer_step`, the row-norm read of max-norm with no row over the bound after the
# step, and setting the group's lr and momentum).
PENALTY_ARMS = (
    Arm("bare"),
    Arm("floors", penalty="floor"),
    Arm("hand-written floor: l2 add + row-norm read + lr set", penalty="hand", l1=0.0),
    Arm("l1+l2 penalty: ours", penalty="ours"),
    Arm("l2 penalty: ours", penalty="ours", l1=0.0),
    Arm("1cycle + max-norm + l2: ours", "ours", "ours", "1cycle", "ours", l1=0.0),
    Arm("bare, accumulate 4", accumulate=4),
    Arm("l1+l2 penalty, accumulate 4: ours", penalty="ours", accumulate=4),
)


def mlp() -> tuple[nn.Module, tuple[int, ...]]:
    """784-512x3-10 MLP on batches of 128."""
    layers: list[nn.Module] = []
    for width_in in (784, 512, 512):
        layers += [nn.Linear(width_in, 512), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(512, 10)), (784,)


def deep_mlp() -> tuple[nn.Module, tuple[int, ...]]:
    """50 Linear layers of width 128 (weights and biases: 100 tensors)."""
    layers: list[nn.Module] = []
    for _ in range(49):
        layers += [nn.Linear(128, 128), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(128, 10)), (128,)


def cnn() -> tuple[nn.Module, tuple[int, ...]]:
    """Two 3x3 conv blocks (8 and 16 filters, max-pooling) and a Linear head, on 1x28x28."""
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, 10),
    )
    return net, (1, 28, 28)


def tiny() -> tuple[nn.Module, tuple[int, ...]]:
    """A 16-32-10 MLP for ``--quick``."""
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10)), (16,)


MODELS: dict[str, tuple[str, Callable[[], tuple[nn.Module, tuple[int, ...]]]]] = {
    "mlp": ("MLP 784-512x3-10", mlp),
    "deep": ("deep MLP, 100 tensors (50 x Linear 128)", deep_mlp),
    "cnn": ("CNN 1x28x28, conv 8-16, Linear 784-10", cnn),
    "tiny": ("tiny MLP 16-32-10", tiny),
}


class Batches(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``length`` ready-made batches, cycling through a few distinct random ones."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]], length: int) -> None:
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batches[index % len(self.batches)]


class Net(pl.LightningModule):
    """The model, with the peer code of an arm written the way users write it."""

    def __init__(self, net: nn.Module, arm: Arm, decay_steps: int, val_every: int) -> None:
        super().__init__()
        self.net, self.arm, self.decay_steps, self.val_every = net, arm, decay_steps, val_every
        self.probes: dict[str, list[float]] = {}  # floor name -> its time (s) at every step
        # Thread CPU time at the first callback's on_before_optimizer_step and at the first
        # step post-hook (the Mark callback's), where the two windows of the step start in
        # which our features and the hand-written floor work.
        self.mark = self.post_mark = 0.0

    def on_fit_start(self) -> None:
        for optimizer in self.trainer.optimizers:  # after every callback's post-hook
            optimizer.register_step_post_hook(self.post_window)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        # Runs after every callback's hook, the penalty's among them.
        if self.arm.penalty == "hand":  # the l2 gradient add, written by hand
            weights = [p for p in self.parameters() if p.dim() > 1]
            torch._foreach_add_([p.grad for p in weights], weights, alpha=2.0 * L2)
        pre = time.thread_time() - self.mark
        self.probes.setdefault("pre window", []).append(pre)
        if self.arm.penalty == "ours":
            self.probes.setdefault("ours", []).append(pre)

    def post_window(self, optimizer: Any, *_: Any) -> None:
        """The last step post-hook: after max-norm's and the LR schedule's."""
        if self.arm.penalty == "hand":  # the lr set, then max-norm's row-norm read
            group = optimizer.param_groups[0]
            group["lr"], group["momentum"] = group["lr"], group["momentum"]
            with torch.no_grad():
                weights = [p for p in self.parameters() if p.dim() > 1]
                norms = [torch.linalg.vector_norm(w, 2, dim=1, keepdim=True) for w in weights]
                if max(torch.stack(torch._foreach_max(norms)).tolist()) > MAX_NORM:
                    raise RuntimeError("a row over the bound: the floor assumes none")
        post = time.thread_time() - self.post_mark
        self.probes.setdefault("windows", []).append(self.probes["pre window"][-1] + post)

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        super().backward(loss, *args, **kwargs)
        if self.arm.penalty == "floor":  # the cheapest kernels of the penalty's gradient
            weights = [p for p in self.parameters() if p.dim() > 1]
            grads = [p.grad for p in weights]
            t0 = time.thread_time()
            torch._foreach_add_(grads, weights, alpha=2.0 * L2)
            t1 = time.thread_time()
            for g, w in zip(grads, weights, strict=True):  # one warm temporary at a time
                g.add_(torch.sign(w), alpha=L1)
            t2 = time.thread_time()
            self.probes.setdefault("l2 gradient", []).append(t1 - t0)
            self.probes.setdefault("l1+l2 gradient", []).append(t2 - t0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Any:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        if self.arm.penalty == "peer":
            weights = [p for p in self.parameters() if p.dim() > 1]
            loss = loss + L1 * sum(p.abs().sum() for p in weights)
            loss = loss + L2 * sum(p.pow(2).sum() for p in weights)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        if self.arm.penalty == "floor":  # setting one group's lr and momentum
            group = self.trainer.optimizers[0].param_groups[0]
            t0 = time.thread_time()
            group["lr"], group["momentum"] = group["lr"], group["momentum"]
            self.probes.setdefault("1cycle", []).append(time.thread_time() - t0)
        super().optimizer_step(*args, **kwargs)
        if self.arm.penalty == "floor":  # one renorm_ per weight (max-norm's work)
            t0 = time.thread_time()
            with torch.no_grad():
                for p in self.parameters():
                    if p.dim() > 1:
                        p.renorm_(2, 0, MAX_NORM)
            self.probes.setdefault("max-norm", []).append(time.thread_time() - t0)
        if self.arm.max_norm == "peer":
            with torch.no_grad():
                for p in self.parameters():
                    if p.dim() > 1:
                        p.renorm_(2, 0, MAX_NORM)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=LR, momentum=0.9)
        if self.arm.side != "peer":
            return optimizer
        scheduler: Any
        if self.arm.schedule == "1cycle":
            total = int(self.trainer.estimated_stepping_batches)
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, MAX_LR, total_steps=total)
        elif self.arm.schedule == "exponential":
            gamma = 0.1 ** (1.0 / self.decay_steps)
            scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma)
        else:
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, factor=0.5, patience=5
            )
            config = {"monitor": "val_loss", "interval": "step", "frequency": self.val_every}
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, **config}}
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


class PenalizedNet(WeightPenaltyMixin, Net):
    """:class:`Net` with our penalty, applied by the mixin's callback in
    ``on_before_optimizer_step``."""

    def __init__(self, net: nn.Module, arm: Arm, decay_steps: int, val_every: int) -> None:
        super().__init__(net, arm, decay_steps, val_every)
        self.configure_penalty(l1=arm.l1, l2=L2)


class Mark(pl.Callback):
    """The first callback: marks the start of the callbacks' ``on_before_optimizer_step`` and,
    with the first step post-hook, of the post-hooks."""

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        def mark(*_: Any) -> None:
            pl_module.post_mark = time.thread_time()

        for optimizer in trainer.optimizers:
            optimizer.register_step_post_hook(mark)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        pl_module.mark = time.thread_time()


def penalty_ms(model: Net, skip: int, accumulate: int) -> dict[str, list[float]]:
    """In-step times (ms) per optimizer step after ``skip`` batches: our penalty's (the time of
    the callbacks' ``on_before_optimizer_step``, the penalty's) and each floor's."""
    return {
        name: [1e3 * t for t in times[skip // accumulate :]] for name, times in model.probes.items()
    }


class StepTimer(pl.Callback):
    """Records wall and thread CPU time at every training batch start (after a device sync)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def on_train_batch_start(self, *args: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.wall.append(time.perf_counter())
        self.cpu.append(time.thread_time())

    def step_ms(self, clock: list[float], skip: int, block: int) -> list[float]:
        """Lengths (ms) of the steps after the first ``skip``, averaged over ``block`` steps."""
        steps = [1e3 * (b - a) for a, b in itertools.pairwise(clock)][skip:]
        return [sum(steps[i : i + block]) / block for i in range(0, len(steps) - block + 1, block)]


def our_callbacks(arm: Arm, decay_steps: int) -> list[pl.Callback]:
    callbacks: list[pl.Callback] = []
    if arm.max_norm == "ours":
        callbacks.append(MaxNorm(MAX_NORM))
    if arm.side == "ours":
        if arm.schedule == "1cycle":
            callbacks.append(OneCycleScheduler(MAX_LR))
        elif arm.schedule == "exponential":
            callbacks.append(ScheduledLR(ExponentialDecay(lr0=LR, s=decay_steps)))
        else:
            callbacks.append(PerformanceScheduler(monitor="val_loss", factor=0.5, patience=5))
    return callbacks


def fit_once(
    arm: Arm,
    build: Callable[[], tuple[nn.Module, tuple[int, ...]]],
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, list[float]]:
    """Train one arm for ``warmup + steps + 1`` steps; return the timed step lengths in ms, by
    clock: ``"wall"`` (``perf_counter``) and ``"cpu"`` (this thread's CPU time)."""
    torch.manual_seed(0)
    net, shape = build()
    batches = [
        (torch.randn(args.batch, *shape, device=device), torch.randint(0, 10, (args.batch,)))
        for _ in range(DISTINCT_BATCHES)
    ]
    batches = [(x, y.to(device)) for x, y in batches]
    n_steps = (args.warmup + args.steps + 1) * arm.accumulate
    cls = PenalizedNet if arm.penalty == "ours" else Net
    model = cls(net, arm, decay_steps=n_steps, val_every=args.val_every)
    timer = StepTimer(device)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_steps=n_steps // arm.accumulate,
        max_epochs=1,
        accumulate_grad_batches=arm.accumulate,
        limit_val_batches=1 if arm.validate else 0,
        val_check_interval=args.val_every if arm.validate else None,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Mark(), timer, *our_callbacks(arm, n_steps)],
    )
    train = DataLoader(Batches(batches, n_steps), batch_size=None)
    val = DataLoader(Batches(batches[:1], 1), batch_size=None) if arm.validate else None
    gc.collect()
    trainer.fit(model, train_dataloaders=train, val_dataloaders=val)
    block = args.val_every if arm.validate else arm.accumulate
    skip = args.warmup * arm.accumulate
    return {
        "wall": timer.step_ms(timer.wall, skip, block),
        "cpu": timer.step_ms(timer.cpu, skip, block),
        **{f"in-step {k}": v for k, v in penalty_ms(model, skip, arm.accumulate).items()},
    }


def rotated(items: tuple[Arm, ...], shift: int) -> Iterator[Arm]:
    shift %= len(items)
    yield from items[shift:] + items[:shift]


CLOCKS = ("wall", "cpu")


@dataclass
class Result:
    """The median step time (ms) of every fit of every arm of one model, by clock."""

    model: str
    rounds: dict[tuple[str, str], list[float]]  # (arm label, clock) -> one median per round

    def best(self, label: str, clock: str) -> float:
        """The fastest round: other processes on the machine only ever add time."""
        return min(self.rounds[label, clock])

    def typical(self, label: str, clock: str) -> float:
        return statistics.median(self.rounds[label, clock])

    def paired(self, label: str, other: str, clock: str) -> float:
        """Median over rounds of ``label``'s step time over ``other``'s in the same round."""
        pairs = zip(self.rounds[label, clock], self.rounds[other, clock], strict=True)
        return statistics.median(a / b for a, b in pairs)


def bench_model(
    key: str, arms: tuple[Arm, ...], args: argparse.Namespace, device: torch.device
) -> Result:
    """Fit every arm of one model once per round, in a rotated order, ``args.rounds`` times.
    Besides the step (``"wall"``, ``"cpu"``), the in-step times of the penalty arms are kept."""
    name, build = MODELS[key]
    fit_once(arms[0], build, args, device)  # untimed: one-time costs (kernel caches, allocator)
    rounds: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for arm in rotated(arms, r):
            times = fit_once(arm, build, args, device)
            for clock, values in times.items():
                rounds.setdefault((arm.label, clock), []).append(statistics.median(values))
    return Result(name, rounds)


PLATEAU = ("plateau: ours", "plateau: peer")


def baseline(label: str) -> str:
    return "bare + validation" if label in ("bare + validation", *PLATEAU) else "bare"


def table_rows(result: Result, arms: tuple[Arm, ...], clock: str) -> list[list[str]]:
    rows = []
    for arm in arms:
        base = baseline(arm.label)
        best, typical = result.best(arm.label, clock), result.typical(arm.label, clock)
        rows.append(
            [
                result.model,
                arm.label,
                f"{best:.3f}",
                f"{best / result.best(base, clock):.3f}",
                f"{typical:.3f}",
                f"{result.paired(arm.label, base, clock):.3f}",
                f"{result.best(arm.label, 'wall'):.3f}",
            ]
        )
    return rows


def verdicts(result: Result, clock: str) -> list[str]:
    """The targets on the best rounds of ``clock`` (paired medians in brackets): all of ours
    within +3% of bare, and each feature of ours no slower than its peer."""

    def ratio(label: str, other: str) -> str:
        best = result.best(label, clock) / result.best(other, clock)
        return f"{best:.3f} ({result.paired(label, other, clock):.3f})"

    extra = result.best("all: ours", clock) / result.best("bare", clock) - 1.0
    lines = [
        f"- {result.model}: all of ours / bare = {ratio('all: ours', 'bare')}: "
        f"{100 * extra:+.1f}% ({'met' if extra <= 0.03 else 'not met'})."
    ]
    for feature in ("1cycle", "exponential", "max-norm", "l1+l2 penalty", "plateau", "all"):
        ours, peer = f"{feature}: ours", f"{feature}: peer"
        slower = result.best(ours, clock) > result.best(peer, clock)
        lines.append(
            f"  - {feature}: ours / peer = {ratio(ours, peer)} ({'slower' if slower else 'met'})."
        )
    return lines


def penalty_rows(result: Result) -> list[list[str]]:
    """The penalty targets of one model: in-step time of ours against its floor (best round,
    then the median over rounds of the ratio in the same round), accumulation 4 against 1, and
    1cycle + max-norm + l2 against bare with the floors of the three."""

    def pair(label: str, clock: str, other: str, other_clock: str) -> tuple[float, float, float]:
        a, b = result.rounds[label, clock], result.rounds[other, other_clock]
        paired = statistics.median(x / y for x, y in zip(a, b, strict=True))
        return min(a), min(a) / min(b), paired

    ours, floor = "in-step ours", "in-step l1+l2 gradient"
    rows = []
    for label, mine, floor_key in (
        ("l1+l2 penalty: ours", ours, floor),
        ("l2 penalty: ours", ours, "in-step l2 gradient"),
    ):
        best, ratio, paired = pair(label, mine, "floors", floor_key)
        rows.append(
            [
                result.model,
                f"{label}, in step vs its floor",
                f"{best:.3f} ms",
                f"{ratio:.2f}x",
                f"{paired:.2f}x",
                "<= 1.5x",
            ]
        )
    best, ratio, paired = pair(
        "l1+l2 penalty, accumulate 4: ours", ours, "l1+l2 penalty: ours", ours
    )
    rows.append(
        [
            result.model,
            "l1+l2 penalty per optimizer step, accumulate 4 vs 1",
            f"{best:.3f} ms",
            f"{ratio:.2f}x",
            f"{paired:.2f}x",
            "~1x",
        ]
    )
    stack, hand = "1cycle + max-norm + l2: ours", PENALTY_ARMS[2].label
    for label in (stack, hand):
        best, ratio, paired = pair(label, "cpu", "bare", "cpu")
        row = [f"{label}, step vs bare", f"{best:.3f} ms", f"{ratio:.3f}x", f"{paired:.3f}x", ""]
        rows.append([result.model, *row])
    for clock, what in (("cpu", "whole step"), ("in-step windows", "in the step's windows")):
        bare, ours, floor = (result.rounds[label, clock] for label in ("bare", stack, hand))
        # Paired: what each arm adds to bare in the same round, the median over rounds of each,
        # then their ratio (a median of per-round ratios would divide by a small noisy number).
        ours_added = statistics.median(o - b for o, b in zip(ours, bare, strict=True))
        floor_added = statistics.median(f - b for f, b in zip(floor, bare, strict=True))
        best_added = (min(ours) - min(bare)) / (min(floor) - min(bare))
        rows.append(
            [
                result.model,
                f"time 1cycle + max-norm + l2 add / time the hand-written floor adds, {what}",
                f"{ours_added:.3f} ms / {floor_added:.3f} ms (paired medians)",
                f"{best_added:.2f}x",
                f"{ours_added / floor_added:.2f}x",
                "<= 1.25x",
            ]
        )
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    parser.add_argument("--models", default="mlp,deep,cnn", help=f"comma list of {list(MODELS)}")
    parser.add_argument("--rounds", type=int, default=15, help="rounds; each fits every arm once")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per fit")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first, per fit")
    parser.add_argument("--val-every", type=int, default=10, help="validation period (plateau)")
    parser.add_argument("--batch", type=int, default=128, help="batch size")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: default)")
    parser.add_argument(
        "--arms",
        default="all",
        choices=["all", "penalty"],
        help="the feature arms or the "
        "penalty-target arms (in-step penalty vs floor, accumulation, 1cycle + max-norm + l2)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps and rounds")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs alone")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.rounds, args.steps, args.warmup, args.val_every = "tiny", 1, 4, 1, 2
        args.batch = 8
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        parser.error(f"unknown --models {sorted(unknown)}; choose from {list(MODELS)}")
    if args.steps % args.val_every:
        parser.error("--steps must be a multiple of --val-every")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    quiet_lightning()
    arms = PENALTY_ARMS if args.arms == "penalty" else ARMS
    results = [bench_model(key, arms, args, device) for key in args.models.split(",")]
    # One torch thread on CPU: the thread's CPU time is the step's cost, and stays so while
    # other processes share the cores. On a GPU the work is elsewhere: the wall clock measures it.
    clock = "cpu" if device.type == "cpu" and torch.get_num_threads() == 1 else "wall"
    name = "CPU" if clock == "cpu" else "wall"
    rows = [row for result in results for row in table_rows(result, arms, clock)]
    table = markdown_table(
        [
            "model",
            "arm",
            f"{name} ms/step, best round",
            "x bare",
            f"{name} ms/step, median round",
            "x bare, paired",
            "wall ms/step, best round",
        ],
        rows,
        "llrrrrr",
    )
    if args.arms == "penalty":
        summary = "The penalty targets (thread CPU time; best round, then paired median):\n\n"
        summary += markdown_table(
            ["model", "what", "best", "ratio, best rounds", "ratio, paired median", "target"],
            [row for result in results for row in penalty_rows(result)],
            "llrrrl",
        )
    else:
        lines = [line for result in results for line in verdicts(result, clock)]
        summary = (
            f"Against the targets ({name} clock, best rounds; paired medians in brackets):\n\n"
            + "\n".join(lines)
        )
    header = machine_header(device)
    settings = (
        f"{args.rounds} interleaved rounds x {args.steps} timed steps per arm (after "
        f"{args.warmup} warm-up steps), batch {args.batch}; plateau arms validate every "
        f'{args.val_every} steps and are compared with "bare + validation".'
    )
    print(f"{header}\n- Settings: {settings}\n\n{table}\n\n{summary}")
    if not args.no_write:
        section = "overhead" if args.arms == "all" else "overhead-penalty"
        write_section(
            f"{section}-{device.type}", f"{header}\n- Settings: {settings}\n\n{table}\n\n{summary}"
        )


if __name__ == "__main__":
    main()
