"""Benchmark 2 of issue 2: fidelity of the NB201 builder and the training loop.

NB201 cells spanning the accuracy range are built with the benchmark's skeleton and trained with the
`train` evaluator on a CIFAR-10 subset on CPU; Kendall tau between their validation accuracy and the
table's 200-epoch CIFAR-10 test accuracy measures whether our short training ranks them as the benchmark does.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from scipy.stats import kendalltau, spearmanr

from experiments.record import record
from nas.data import resolve_data_dir
from nas.evaluators import load_nb201_table, make_evaluator
from search_spaces import get_space


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cells", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--val-images", type=int, default=2000)
    parser.add_argument("--cells-per-stage", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--key", default="nb201-fidelity", help="BENCHMARKS.md section to write")
    parser.add_argument("--data-dir", default=os.environ.get("NAS_DATA_DIR"))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    table = load_nb201_table(str(resolve_data_dir(args.data_dir) / "nb201" / "nb201.csv"))
    key = "nats_cifar10_test"
    # Cells at evenly spaced quantiles of the table's accuracy (above 15%: the disconnected cells all score 10).
    ranked = sorted((row[key], arch) for arch, row in table.items() if row[key] > 15)
    picks = [ranked[int(q * (len(ranked) - 1))] for q in np.linspace(0.0, 1.0, args.cells)]
    space = get_space("nb201")
    evaluator = make_evaluator(
        "train",
        space,
        data_dir=args.data_dir,
        epochs=args.epochs,
        train_images=args.train_images,
        val_images=args.val_images,
        cells_per_stage=args.cells_per_stage,
        batch_size=64,
        lr=args.lr,
    )
    rows = []
    start = time.perf_counter()
    for table_acc, arch in picks:
        metrics = evaluator.evaluate(space.decode(arch))
        rows.append((arch, table_acc, metrics["accuracy"], metrics["train_seconds"]))
        print(f"{table_acc:6.2f} {metrics['accuracy']:6.2f} {metrics['train_seconds']:6.1f}s {arch}", flush=True)
    total = time.perf_counter() - start
    tau = kendalltau([r[1] for r in rows], [r[2] for r in rows]).statistic
    rho = spearmanr([r[1] for r in rows], [r[2] for r in rows]).statistic
    lines = ["| NB201 cell | table acc (200 ep) | our val acc | train s |", "|---|---|---|---|"]
    lines += [f"| `{a}` | {t:.2f} | {v:.2f} | {s:.0f} |" for a, t, v, s in rows]
    body = (
        f"**Kendall tau = {tau:.3f}** (Spearman rho = {rho:.3f}) over {len(rows)} cells; target tau >= 0.6.\n\n"
        f"Each cell: the benchmark skeleton (C = 16, {args.cells_per_stage} cells per stage), trained "
        f"{args.epochs} epochs on {args.train_images} CIFAR-10 training images (batch 64, lr {args.lr}, cosine), "
        f"validated on {args.val_images} held-out training images; cells picked at evenly spaced quantiles of "
        f"the table's `{key}` (disconnected cells at 10% excluded). One seed (0); total {total / 60:.1f} min.\n\n"
        + "\n".join(lines)
    )
    title = f"NB201 builder and training fidelity: {args.cells_per_stage} cells per stage, {args.epochs} epochs"
    record(args.key, title, body)


if __name__ == "__main__":
    main()
