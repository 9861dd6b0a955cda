"""Out-of-sample check of ``max_lr="auto"``: seeds the rule study did not see.

    python benchmarks/auto_heldout.py                 # MNIST-5k, seeds 3, 4, 5 (about 5 min)
    python benchmarks/auto_heldout.py --seeds 6 7 8

The rule of ``LRRangeTest`` (lowest smoothed loss / 4) was chosen by ``lr_range_rule.py`` on
its tuning tasks with seeds 0-2 (which also scores it on held-out tasks). This trains 1cycle on
MNIST-5k or digits with other seeds, with the hand grid's two best values and with ``"auto"``,
for 5 and 10 epochs, and prints the final validation accuracy of each seed, the median, and the
values ``"auto"`` chose.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _common import quiet_lightning
from convergence import make_data, train

from lightning_reg import OneCycleScheduler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("mnist5k", "digits"), default="mnist5k")
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 4, 5])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    quiet_lightning()
    dm = make_data(args.dataset, 64)
    print("| epochs | max_lr | final val acc per seed | median | chosen by auto |")
    print("| ---: | --- | --- | ---: | --- |")
    for epochs in (5, 10):
        for max_lr in (0.03, 0.1, "auto"):
            runs = [
                train(
                    dm,
                    lambda total, m=max_lr: OneCycleScheduler(max_lr=m),
                    0.03,
                    epochs,
                    seed,
                    [300, 100],
                    test=False,
                )
                for seed in args.seeds
            ]
            finals = [100 * r.val_acc[-1] for r in runs]
            chosen = ", ".join(f"{r.auto_max_lr:.3g}" for r in runs) if max_lr == "auto" else ""
            print(
                f"| {epochs} | {max_lr} | {', '.join(f'{a:.2f}' for a in finals)} | "
                f"{statistics.median(finals):.2f} | {chosen} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
