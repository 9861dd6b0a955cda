"""Does ``max_lr="auto"`` hold on tasks its rule was not chosen on? Measured, not assumed.

    python benchmarks/lr_range_rule.py                      # every task, offline
    python benchmarks/lr_range_rule.py --quick --no-write   # tiny run that only prints

Tasks. The rule that reads ``max_lr`` from the range test's curve is *chosen* on two tasks
(``tune``): the digits MLP and the MNIST-5k MLP (SGD with momentum 0.9, batch 64, data split 0).
It is then *scored* on four tasks it never saw (``held-out``), all on data split 1: the MNIST-5k
MLP, a small CNN on MNIST-5k, the digits MLP trained with Adam, and the MNIST-5k MLP with batch
128. Each candidate rule (:data:`RULES`) reads a value from the curve of each seed; 1cycle is
trained with it by hand, which is the run ``"auto"`` gives with that rule (the sweep is undone
exactly; see ``tests/test_lr_range.py``). The rule kept is the one with the smallest worst gap
to the best of the hand grid ``max_lr`` in {0.01, 0.03, 0.1, 0.3} over the tuning tasks and
epoch budgets; on the held-out tasks only the kept rule (``OneCycleScheduler(max_lr="auto")``
with the default ``LRRangeTest``) and the hand grid are trained. Medians over seeds of the final
validation accuracy; a run "diverges" when its final validation loss is not finite or its
accuracy is below 20%.

``--cache FILE`` keeps every finished run in a JSON-lines file, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from _common import machine_header, markdown_table, quiet_lightning, write_section
from convergence import QUIET_CPU, Recorder, Run
from torch import nn

from lightning_reg import OneCycleScheduler
from lightning_reg.demos import DigitsDataModule, MNIST5kDataModule, RegularizedMLP
from lightning_reg.lr_range import LRRangeTest, suggest_max_lr


@dataclass(frozen=True)
class Task:
    """One training task: data, split, batch size, model and optimizer."""

    role: str  # "tune" or "held-out"
    data: str  # "digits" or "mnist5k"
    split: int
    batch: int
    model: str  # "mlp" or "cnn"
    optimizer: str  # "sgd" or "adam"


TASKS = {
    "digits MLP, SGD, b64, split 0": Task("tune", "digits", 0, 64, "mlp", "sgd"),
    "MNIST-5k MLP, SGD, b64, split 0": Task("tune", "mnist5k", 0, 64, "mlp", "sgd"),
    "MNIST-5k MLP, Adam, b64, split 0": Task("tune", "mnist5k", 0, 64, "mlp", "adam"),
    "digits CNN, SGD, b64, split 0": Task("tune", "digits", 0, 64, "cnn", "sgd"),
    "MNIST-5k MLP, SGD, b64, split 1": Task("held-out", "mnist5k", 1, 64, "mlp", "sgd"),
    "MNIST-5k CNN, SGD, b64, split 1": Task("held-out", "mnist5k", 1, 64, "cnn", "sgd"),
    "digits MLP, Adam, b64, split 1": Task("held-out", "digits", 1, 64, "mlp", "adam"),
    "MNIST-5k MLP, SGD, b128, split 1": Task("held-out", "mnist5k", 1, 128, "mlp", "sgd"),
}

# Candidate readings of a curve: name -> (lrs, losses) -> max_lr. The default of LRRangeTest is
# the one named by DEFAULT_RULE; the others are what it was chosen against.
RULES: dict[str, Callable[[Sequence[float], Sequence[float]], float]] = {
    f"lowest smoothed loss / {d:g}": lambda lrs, losses, d=d: suggest_max_lr(lrs, losses, 0.9, d)
    for d in (2.0, 3.0, 4.0, 6.0)
}
DEFAULT_RULE = f"lowest smoothed loss / {LRRangeTest().divisor:g}"


class SmallCNN(RegularizedMLP):
    """A 2-conv CNN on RegularizedMLP's training, validation and optimizer code: for 28x28
    images 8 and 16 channels with max-pooling after each; for 8x8 images 16 and 32 channels
    without pooling."""

    def __init__(self, side: int, **kwargs: Any) -> None:
        super().__init__(in_features=side * side, hidden=(), **kwargs)
        if side == 28:
            convs: list[nn.Module] = [nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2)]
            convs += [nn.Conv2d(8, 16, 3), nn.ReLU(), nn.MaxPool2d(2)]
            features = 16 * 5 * 5
        else:
            convs = [nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.ReLU()]
            features = 32 * (side - 4) ** 2
        self.net = nn.Sequential(
            nn.Unflatten(1, (1, side, side)), *convs, nn.Flatten(), nn.Linear(features, 10)
        )


def make_data(task: Task) -> pl.LightningDataModule:
    if task.data == "digits":
        return DigitsDataModule(batch_size=task.batch, seed=task.split)
    return MNIST5kDataModule(batch_size=task.batch, seed=task.split)


def make_model(task: Task, dm: pl.LightningDataModule, hidden: list[int]) -> RegularizedMLP:
    if task.model == "cnn":
        return SmallCNN(28 if task.data == "mnist5k" else 8, optimizer=task.optimizer)
    features = dm.num_features  # type: ignore[attr-defined]
    return RegularizedMLP(in_features=features, hidden=tuple(hidden), optimizer=task.optimizer)


def fit(
    task: Task,
    dm: pl.LightningDataModule,
    callback: pl.Callback,
    seed: int,
    hidden: list[int],
    **trainer_kwargs: Any,
) -> tuple[Run, float]:
    """Fit a fresh model of ``task`` with ``callback``; the run and its wall time."""
    pl.seed_everything(seed, verbose=False)
    model = make_model(task, dm, hidden)
    run = Run()
    trainer = pl.Trainer(callbacks=[Recorder(run), callback], **QUIET_CPU, **trainer_kwargs)
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    return run, time.perf_counter() - start


class Cache:
    """Finished runs by key, kept in a JSON-lines file (``None``: in memory only)."""

    def __init__(self, path: Path | None) -> None:
        self.path, self.rows = path, {}
        if path is not None and path.exists():
            for line in path.read_text().splitlines():
                row = json.loads(line)
                self.rows[row["key"]] = row["value"]

    def get(self, key: list[Any], compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        text = json.dumps(key)
        if text not in self.rows:
            self.rows[text] = compute()
            if self.path is not None:
                with self.path.open("a") as f:
                    f.write(json.dumps({"key": text, "value": self.rows[text]}) + "\n")
        return self.rows[text]  # type: ignore[no-any-return]


def train_1cycle(
    cache: Cache, name: str, dm: pl.LightningDataModule, max_lr: Any, epochs: int, seed: int, args
) -> dict[str, Any]:
    """Final validation accuracy/loss of 1cycle at ``max_lr`` (a number or ``"auto"``)."""

    def compute() -> dict[str, Any]:
        cb = OneCycleScheduler(max_lr=max_lr)
        run, seconds = fit(TASKS[name], dm, cb, seed, args.hidden, max_epochs=epochs)
        result = cb.range_test_result
        return {
            "acc": run.val_acc[-1],
            "loss": run.val_loss[-1],
            "seconds": seconds,
            "max_lr": max_lr if result is None else result.max_lr,
            "sweep_seconds": 0.0 if result is None else result.seconds,
        }

    rule = repr(LRRangeTest()) if max_lr == "auto" else None
    return cache.get([name, max_lr, epochs, seed, args.hidden, *([rule] if rule else [])], compute)


def record_curve(
    cache: Cache, name: str, dm: pl.LightningDataModule, seed: int, args
) -> dict[str, Any]:
    """The default range test's curve for a fresh model of ``name`` with ``seed``."""

    def compute() -> dict[str, Any]:
        cb = OneCycleScheduler(max_lr="auto", total_steps=10)
        fit(TASKS[name], dm, cb, seed, args.hidden, max_steps=1, limit_val_batches=0)
        result = cb.range_test_result
        assert result is not None
        return {"lrs": result.lrs, "losses": result.losses, "seconds": result.seconds}

    return cache.get([name, "curve", repr(LRRangeTest()), seed, args.hidden], compute)


def diverged(row: dict[str, Any]) -> bool:
    return not math.isfinite(row["loss"]) or row["acc"] < 0.2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1"
    )
    parser.add_argument(
        "--seed-sets",
        type=int,
        default=1,
        help="run that many disjoint sets of --seeds seeds and report how the held-out "
        "verdicts move between them (seed noise), next to the pooled medians",
    )
    parser.add_argument("--cycle-epochs", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--hidden", type=int, nargs="+", default=[300, 100])
    parser.add_argument("--max-lr-grid", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3])
    parser.add_argument("--grid-only", action="store_true", help="the hand grid and curves only")
    parser.add_argument("--cache", type=Path, default=None, help="JSON-lines file of runs")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks = ["digits MLP, SGD, b64, split 0", "digits MLP, Adam, b64, split 1"]
        args.seeds, args.cycle_epochs, args.hidden, args.max_lr_grid = 1, [1], [32], [0.1]
    torch.set_num_threads(1)
    quiet_lightning()
    cache = Cache(args.cache)
    seeds = range(args.first_seed, args.first_seed + args.seeds * args.seed_sets)
    # runs[(task, arm, epochs)] = one row per seed; chosen[(task, arm)] = the values per seed
    runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    chosen: dict[tuple[str, str], list[float]] = {}
    for name in args.tasks:
        dm = make_data(TASKS[name])
        curves = [record_curve(cache, name, dm, s, args) for s in seeds]
        arms: dict[str, list[Any]] = {f"hand {m:g}": [m] * len(seeds) for m in args.max_lr_grid}
        if not args.grid_only and TASKS[name].role == "tune":
            for rule, read in RULES.items():
                arms[rule] = [read(c["lrs"], c["losses"]) for c in curves]
        elif not args.grid_only:
            arms['"auto" (' + DEFAULT_RULE + ")"] = ["auto"] * len(seeds)
        for arm, values in arms.items():
            for epochs in args.cycle_epochs:
                runs[(name, arm, epochs)] = [
                    train_1cycle(cache, name, dm, m, epochs, s, args)
                    for s, m in zip(seeds, values, strict=True)
                ]
                accs = [round(100 * r["acc"], 2) for r in runs[(name, arm, epochs)]]
                print(f"  {name} | {arm} | {epochs} ep: {accs}", flush=True)
            chosen[(name, arm)] = [r["max_lr"] for r in runs[(name, arm, args.cycle_epochs[0])]]
    if args.grid_only:
        return
    body = report(runs, chosen, args)
    if args.seed_sets > 1:
        body += "\n\n" + noise_report(runs, args)
    print(body)
    if not args.no_write:
        other = args.first_seed != 0 or len(seeds) != 3  # the study's own seeds are 0-2
        suffix = f"-seeds-{seeds[0]}-{seeds[-1]}" if other else ""
        write_section("lr-range-rule" + suffix, body)


def report(
    runs: dict[tuple[str, str, int], list[dict[str, Any]]],
    chosen: dict[tuple[str, str], list[float]],
    args: argparse.Namespace,
) -> str:
    """The Markdown tables: every arm per task, then the kept rule's verdict per held-out task."""
    acc = {key: statistics.median(r["acc"] for r in rows) for key, rows in runs.items()}
    best_hand = {
        (n, e): max(acc[(n, a, e)] for (n2, a, e2) in runs if n2 == n and e2 == e and "hand" in a)
        for (n, _, e) in runs
    }
    gap = {key: 100 * (acc[key] - best_hand[(key[0], key[2])]) for key in runs}
    worst: dict[str, float] = {}
    for (name, arm, _), value in gap.items():
        if TASKS[name].role == "tune" and arm in RULES:
            worst[arm] = min(worst.get(arm, math.inf), value)
    kept = max(worst, key=worst.__getitem__) if worst else DEFAULT_RULE
    rows = []
    for (name, arm), values in chosen.items():
        cells = []
        for e in args.cycle_epochs:
            key = (name, arm, e)
            bad = sum(diverged(r) for r in runs[key])
            cells += [f"{100 * acc[key]:.2f}", f"{gap[key]:+.2f}" + (f" ({bad} div.)" * bool(bad))]
        median_lr = statistics.median(values)
        rows.append([name, TASKS[name].role, arm, f"{median_lr:.3g}", *cells])
    headers = ["task", "role", "max_lr from", "max_lr (median)"]
    for e in args.cycle_epochs:
        headers += [f"{e} ep val acc (%)", f"{e} ep gap to best hand (pts)"]
    table = markdown_table(headers, rows, "lll" + "r" * (len(headers) - 3))
    verdicts = []
    for name in args.tasks:
        if TASKS[name].role != "held-out":
            continue
        arm = '"auto" (' + DEFAULT_RULE + ")"
        gaps = [gap[(name, arm, e)] for e in args.cycle_epochs]
        bad = sum(diverged(r) for e in args.cycle_epochs for r in runs[(name, arm, e)])
        ok = min(gaps) >= -0.5 and not bad
        verdicts.append(
            f"- {name}: gaps {', '.join(f'{g:+.2f}' for g in gaps)} pts at "
            f"{', '.join(map(str, args.cycle_epochs))} epochs, {bad} diverged runs: "
            f"{'within' if ok else 'NOT within'} the target."
        )
    return (
        f"{machine_header(torch.device('cpu'))}\n- Settings: MLP hidden {args.hidden} (ELU, He "
        f"init), seeds {args.first_seed}-{args.first_seed + args.seeds * args.seed_sets - 1}, "
        "final "
        "validation accuracy after 1cycle, medians over seeds; gaps are to the best hand "
        "max_lr of the same task and budget.\n\n"
        f"{table}\n\nRule kept on the tuning tasks (largest worst gap): **{kept}** "
        f"(the default: {DEFAULT_RULE}).\n\nHeld-out tasks, target within 0.5 point of the best "
        "hand value, no diverged run:\n\n" + "\n".join(verdicts)
    )


def noise_report(runs: dict[tuple[str, str, int], list[dict[str, Any]]], args) -> str:
    """Per held-out task and disjoint seed set: the gaps of ``"auto"`` and of the hand value that
    was best on the other sets (what a rule that knew those seeds' results would pick)."""
    n, sets = args.seeds, range(args.seed_sets)

    def med(key: tuple[str, str, int], chunks: list[int]) -> float:
        return statistics.median(r["acc"] for j in chunks for r in runs[key][j * n : (j + 1) * n])

    hands = [f"hand {m:g}" for m in args.max_lr_grid]
    auto = '"auto" (' + DEFAULT_RULE + ")"
    rows, passes = [], {}
    for name in args.tasks:
        if TASKS[name].role != "held-out":
            continue
        for j in sets:
            others = [k for k in sets if k != j]
            cells: dict[str, list[float]] = {"auto": [], "other": []}
            for e in args.cycle_epochs:
                best = max(med((name, h, e), [j]) for h in hands)
                picked = max(hands, key=lambda h: med((name, h, e), others))
                cells["auto"].append(100 * (med((name, auto, e), [j]) - best))
                cells["other"].append(100 * (med((name, picked, e), [j]) - best))
            row = [name, f"{j * n + args.first_seed}-{(j + 1) * n + args.first_seed - 1}"]
            for arm, gaps in cells.items():
                ok = min(gaps) >= -0.5
                passes[(name, arm)] = passes.get((name, arm), 0) + ok
                row += [", ".join(f"{g:+.2f}" for g in gaps), "yes" if ok else "no"]
            rows.append(row)
    budgets = "/".join(map(str, args.cycle_epochs))
    headers = ["task", "seeds", f'"auto" gaps ({budgets} ep)', "within 0.5"]
    headers += [f"best hand value of the other seeds, gaps ({budgets} ep)", "within 0.5"]
    lines = [
        f'- {name}: "auto" within the target on {passes[(name, "auto")]} of '
        f"{args.seed_sets} seed sets, the other seeds' best hand value on "
        f"{passes[(name, 'other')]} of {args.seed_sets}."
        for name in args.tasks
        if TASKS[name].role == "held-out"
    ]
    return (
        "Seed noise: each set of seeds scored on its own (medians of its seeds, gaps to the best "
        "hand value of the same seeds):\n\n"
        + markdown_table(headers, rows, "llllll")
        + "\n\n"
        + "\n".join(lines)
    )


if __name__ == "__main__":
    main()
