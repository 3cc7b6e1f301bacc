"""W-PCA and the baseline proxies against trained transformer-small candidates.

Reads the candidates that ``experiments.transformer_sst2`` trained on SST-2 (their dev accuracy, one budget),
scores each untrained candidate (weights seed 0, the paper's initialisation) with W-PCA, V-PCA, #params,
FLOPs, synflow, snip and grad_norm, and reports Kendall tau and Spearman rho of each against the dev accuracy.
As in the W-PCA reference, every proxy is the mean over 3 batches (seeds 0, 1, 2) of 200 SST-2 training
sentences (padding included, eta = 0.99).
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

from experiments.record import record
from predictors.metrics import kendall_tau, spearman_rho
from predictors.proxies import ProxyConfig, compute_proxies
from predictors.proxies.data import space_batch
from search_spaces import get_space

PROXIES = ("wpca", "vpca", "params", "flops", "synflow", "snip", "grad_norm")


app = typer.Typer(add_completion=False, rich_markup_mode="markdown")


@app.command(help=__doc__)
def main(
    trained: Annotated[
        str, typer.Option(help="Candidates trained by experiments.transformer_sst2.")
    ] = "runs/transformer-sst2/trained.csv",
    space: Annotated[str, typer.Option(help="Search space of the candidates.")] = "transformer-small",
    batch_size: Annotated[int, typer.Option(help="SST-2 sentences per batch.")] = 200,
    batches: Annotated[int, typer.Option(help="Batches (seeds 0..N-1) each proxy is averaged over.")] = 3,
    data_dir: Annotated[str | None, typer.Option(help="Data directory.")] = None,
    repeat: Annotated[
        str, typer.Option(help="The first candidates retrained with another seed.")
    ] = "runs/transformer-sst2/seed1.csv",
    key: Annotated[str, typer.Option(help="Result to write (experiments/results/KEY.json).")] = "proxies-transformer",
) -> None:
    started = time.perf_counter()
    torch.set_num_threads(1)
    with Path(trained).open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["dev_accuracy"]]  # failed candidates have none
    search_space = get_space(space)
    configs = [ProxyConfig(seed=s, batch_size=batch_size) for s in range(batches)]
    inputs = [space_batch(search_space, c, data_dir) for c in configs]
    values: dict[str, list[float]] = {p: [] for p in PROXIES}
    seconds: dict[str, float] = dict.fromkeys(PROXIES, 0.0)
    for row in rows:
        per_batch = []
        for config, batch in zip(configs, inputs, strict=True):
            torch.manual_seed(0)
            model = search_space.build(search_space.decode(row["arch"]))
            timings: dict[str, float] = {}
            per_batch.append(compute_proxies(model, PROXIES, batch, config, timings=timings))
            for p in PROXIES:
                seconds[p] += timings[p]
        for p in PROXIES:
            values[p].append(float(np.mean([v[p] for v in per_batch])))
    acc = np.array([float(row["dev_accuracy"]) for row in rows])
    budget = rows[0].get("budget", "see experiments/transformer_sst2.py")
    n = len(rows)
    lines = [
        f"{n} `{space}` candidates (random, distinct), each trained once on SST-2 with one budget ({budget}); "
        f"truth = SST-2 dev accuracy (872 sentences; here {acc.min():.2f}-{acc.max():.2f} %, mean {acc.mean():.2f} %). "
        f"Proxies on the untrained networks (seed 0), mean over {batches} batches of {batch_size} "
        "SST-2 training sentences, one CPU thread.\n",
        "| proxy | Kendall tau | Spearman rho | s/network |",
        "|---|---|---|---|",
    ]
    for p in PROXIES:
        lines.append(
            f"| {p} | {kendall_tau(values[p], acc):.3f} | {spearman_rho(values[p], acc):.3f} | {seconds[p] / n:.3f} |"
        )
    numbers: dict[str, object] = {
        "candidates": [
            {"arch": row["arch"], "dev_accuracy": a, **{p: values[p][i] for p in PROXIES}}
            for i, (row, a) in enumerate(zip(rows, acc, strict=True))
        ],
        "proxy_seconds": seconds,
    }
    retrained = Path(repeat)
    if retrained.exists():
        with retrained.open(newline="") as f:
            again = {r["arch"]: float(r["dev_accuracy"]) for r in csv.DictReader(f) if r["dev_accuracy"]}
        first = {r["arch"]: float(r["dev_accuracy"]) for r in rows}
        diffs = [abs(first[a] - acc2) for a, acc2 in again.items() if a in first]
        if diffs:
            numbers["retrained_dev_accuracy"] = {a: acc2 for a, acc2 in again.items() if a in first}
            lines.append(
                f"\nTraining noise: {len(diffs)} of these candidates retrained with another training seed moved by "
                f"{np.mean(diffs):.2f} points of dev accuracy on average (max {np.max(diffs):.2f}); the spread across "
                f"all {n} candidates is {acc.max() - acc.min():.2f} points."
            )
    lines.append(
        "\nPublished for comparison (FlexiBERT space, 500 architectures, GLUE score, W-PCA paper): #params tau 0.454, "
        "synaptic saliency 0.188, Jacobian -0.042; W-PCA's own figures are on its 12-layer space, not this one."
    )
    body = "\n".join(lines)
    print(body)
    record(key, "Training-free proxies on the transformer space (SST-2)", body, numbers)
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    app()
