"""Which reading of the LR range test gives 1cycle its best ``max_lr``? Measured, not assumed.

    python benchmarks/lr_range_rule.py                  # MNIST-5k and digits, offline
    python benchmarks/lr_range_rule.py --quick --no-write

For each dataset and seed the range test of ``OneCycleScheduler(max_lr="auto")`` is recorded
with two sweeps (``LRRangeTest`` from 1e-5 to 10 in 100 steps, and from 1e-4 to 10 in 50
steps). Each candidate rule reads a ``max_lr`` from the curve (the LR of the lowest smoothed
loss divided by 1, 2, 3 or 10; smoothing ``beta=0.9``), and 1cycle is trained with it by hand,
which is the run ``"auto"`` gives with that rule (the sweep is undone exactly; see
``tests/test_lr_range.py``). Beside them, the hand grid ``max_lr`` in {0.01, 0.03, 0.1, 0.3}.
Same model and data as ``convergence.py``; medians over seeds of the final validation accuracy.
The rule kept is the one with the smallest worst gap to the best hand-tuned value over the
datasets and epoch budgets.
"""

from __future__ import annotations

import argparse
import statistics

import lightning.pytorch as pl
import torch
from _common import machine_header, markdown_table, quiet_lightning, write_section
from convergence import DATASETS, make_data, train

from lightning_reg import OneCycleScheduler
from lightning_reg.lr_range import LRRangeTest, RangeTestResult, suggest_max_lr

SWEEPS = {
    "1e-5..10, 100 steps": LRRangeTest(min_lr=1e-5, max_lr=10.0, num_steps=100),
    "1e-4..10, 50 steps": LRRangeTest(min_lr=1e-4, max_lr=10.0, num_steps=50),
}
DIVISORS = (1.0, 2.0, 3.0, 10.0)


def record(
    dm: pl.LightningDataModule, sweep: LRRangeTest, seed: int, hidden: list[int]
) -> tuple[RangeTestResult, float]:
    """The range test of a fresh model with ``seed`` (one fit of one step after it)."""
    cb = OneCycleScheduler(max_lr="auto", range_test=sweep, total_steps=10)
    run = train(dm, lambda total: cb, 0.01, 1, seed, hidden, test=False)
    assert cb.range_test_result is not None
    return cb.range_test_result, run.seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=(*DATASETS, "all"), default="all")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cycle-epochs", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--hidden", type=int, nargs="+", default=[300, 100])
    parser.add_argument("--max-lr-grid", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.dataset, args.seeds, args.cycle_epochs, args.hidden = "digits", 1, [2], [32]
        args.max_lr_grid = [0.1]
    torch.set_num_threads(1)
    quiet_lightning()
    names = DATASETS if args.dataset == "all" else (args.dataset,)
    seeds = range(args.seeds)
    # acc[(dataset, epochs, rule)] = median final val acc; chosen[(dataset, rule)] = median max_lr
    acc: dict[tuple[str, int, str], float] = {}
    chosen: dict[tuple[str, str], float] = {}
    cost: dict[tuple[str, str], tuple[float, float]] = {}
    rules: list[str] = []
    for name in names:
        dm = make_data(name, 64)
        values: dict[str, list[float]] = {}
        for sweep_name, sweep in SWEEPS.items():
            curves = [record(dm, sweep, s, args.hidden)[0] for s in seeds]
            cost[(name, sweep_name)] = (
                statistics.median(r.seconds for r in curves),
                statistics.median(len(r.lrs) for r in curves),
            )
            for d in DIVISORS:
                rule = f"{sweep_name}; lowest smoothed loss / {d:g}"
                values[rule] = [suggest_max_lr(r.lrs, r.losses, 0.9, d) for r in curves]
        for m in args.max_lr_grid:
            values[f"hand max_lr {m:g}"] = [m] * len(seeds)
        for rule, per_seed in values.items():
            if rule not in rules:
                rules.append(rule)
            chosen[(name, rule)] = statistics.median(per_seed)
            for epochs in args.cycle_epochs:
                finals = [
                    train(
                        dm,
                        lambda total, m=m: OneCycleScheduler(max_lr=m),
                        0.01,
                        epochs,
                        s,
                        args.hidden,
                        test=False,
                    ).val_acc[-1]
                    for s, m in zip(seeds, per_seed, strict=True)
                ]
                acc[(name, epochs, rule)] = statistics.median(finals)
            print(f"  {name} {rule}: {[round(m, 4) for m in per_seed]}", flush=True)
        fit10 = (
            statistics.median(
                train(
                    dm,
                    lambda total: OneCycleScheduler(max_lr=0.1),
                    0.01,
                    10,
                    s,
                    args.hidden,
                    test=False,
                ).seconds
                for s in seeds
            )
            if not args.quick
            else float("nan")
        )
        for sweep_name in SWEEPS:
            seconds, steps = cost[(name, sweep_name)]
            cost[(name, sweep_name)] = (seconds, steps, fit10)  # type: ignore[assignment]

    cells = [(n, e) for n in names for e in args.cycle_epochs]
    best_hand = {
        (n, e): max(acc[(n, e, r)] for r in rules if r.startswith("hand")) for n, e in cells
    }
    rows, worst = [], {}
    for rule in rules:
        gaps = [100 * (acc[(n, e, rule)] - best_hand[(n, e)]) for n, e in cells]
        worst[rule] = min(gaps)
        rows.append(
            [
                rule,
                *[f"{chosen[(n, rule)]:.3g}" for n in names],
                *[f"{100 * acc[(n, e, rule)]:.2f}" for n, e in cells],
                f"{worst[rule]:+.2f}",
            ]
        )
    headers = [
        "rule",
        *[f"max_lr on {n}" for n in names],
        *[f"{n}, {e} ep (%)" for n, e in cells],
        "worst gap to best hand (pts)",
    ]
    table = markdown_table(headers, rows, "l" + "r" * (len(headers) - 1))
    kept = max((r for r in rules if not r.startswith("hand")), key=worst.__getitem__)
    cost_rows = [
        [n, s, f"{steps:g}", f"{seconds:.2f}", f"{fit10:.1f}", f"{100 * seconds / fit10:.1f}%"]
        for (n, s), (seconds, steps, fit10) in cost.items()  # type: ignore[misc]
    ]
    cost_table = markdown_table(
        ["dataset", "sweep", "steps taken", "range test (s)", "10-epoch 1cycle fit (s)", "cost"],
        cost_rows,
        "llrrrr",
    )
    body = (
        f"{machine_header(torch.device('cpu'))}\n- Settings: hidden {args.hidden}, seeds "
        f"{list(seeds)}, final validation accuracy after 1cycle, medians over seeds.\n\n"
        f"{table}\n\nBest worst-case rule: **{kept}**.\n\nCost of the range test (median "
        f"over seeds; the range test's wall time including the restore):\n\n{cost_table}"
    )
    print(body)
    if not args.no_write:
        write_section("lr-range-rule", body)


if __name__ == "__main__":
    main()
