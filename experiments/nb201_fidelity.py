"""Fidelity of the NB201 builder and the training loop.

NB201 cells spanning the accuracy range are built with the benchmark's skeleton and trained with the
`train` evaluator on a CIFAR-10 subset on CPU; Kendall tau between their validation accuracy and the
table's 200-epoch CIFAR-10 test accuracy measures whether our short training ranks them as the benchmark does.
"""

from __future__ import annotations

import os
import time
from typing import Annotated

import numpy as np
import torch
import typer
from scipy.stats import kendalltau, spearmanr

from experiments.record import record
from nas.evaluators import make_evaluator
from nas.tables import load_nb201_table
from nas_ground.data import resolve_data_dir
from search_spaces import get_space

app = typer.Typer(add_completion=False, rich_markup_mode="markdown")


@app.command(help=__doc__)
def main(
    cells: Annotated[int, typer.Option(help="NB201 cells, at evenly spaced accuracy quantiles.")] = 12,
    epochs: Annotated[int, typer.Option(help="Training epochs per cell.")] = 2,
    train_images: Annotated[int, typer.Option(help="CIFAR-10 training images.")] = 5000,
    val_images: Annotated[int, typer.Option(help="Held-out training images for validation.")] = 2000,
    cells_per_stage: Annotated[int, typer.Option(help="Cells per stage of the skeleton.")] = 5,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 0.1,
    key: Annotated[str, typer.Option(help="Result to write (experiments/results/KEY.json).")] = "nb201-fidelity",
    data_dir: Annotated[str | None, typer.Option(envvar="NAS_DATA_DIR", help="Data directory.")] = None,
) -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    table = load_nb201_table(str(resolve_data_dir(data_dir) / "nb201" / "nb201.csv"))
    column = "nats_cifar10_test"
    # Cells at evenly spaced quantiles of the table's accuracy (above 15%: the disconnected cells all score 10).
    ranked = sorted((row[column], arch) for arch, row in table.items() if row[column] > 15)
    picks = [ranked[int(q * (len(ranked) - 1))] for q in np.linspace(0.0, 1.0, cells)]
    space = get_space("nb201")
    evaluator = make_evaluator(
        "train",
        space,
        data_dir=data_dir,
        epochs=epochs,
        train_images=train_images,
        val_images=val_images,
        cells_per_stage=cells_per_stage,
        batch_size=64,
        lr=lr,
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
        f"Each cell: the benchmark skeleton (C = 16, {cells_per_stage} cells per stage), trained "
        f"{epochs} epochs on {train_images} CIFAR-10 training images (batch 64, lr {lr}, cosine), "
        f"validated on {val_images} held-out training images; cells picked at evenly spaced quantiles of "
        f"the table's `{column}` (disconnected cells at 10% excluded). One seed (0); total {total / 60:.1f} min.\n\n"
        + "\n".join(lines)
    )
    title = f"NB201 builder and training fidelity: {cells_per_stage} cells per stage, {epochs} epochs"
    numbers = {
        "kendall_tau": tau,
        "spearman_rho": rho,
        "total_s": total,
        "cells": [{"arch": a, "table_acc": t, "val_acc": v, "train_s": s} for a, t, v, s in rows],
    }
    record(key, title, body, numbers)


if __name__ == "__main__":
    app()
