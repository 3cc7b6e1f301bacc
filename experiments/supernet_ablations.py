"""What makes weight sharing rank on NAS-Bench-201: each variant of the SPOS supernet scored on the same networks.

Rows, all on the first ``--networks`` networks of the nested sample of `experiments.supernet_tables` (the same
networks for every row), C=16, N=1 variant, 4 epochs of 40,000 images, 500 held-out evaluation images:
the baseline (uniform single path, 4 recalibration batches), BN recalibration with other batch counts (the baseline
checkpoint), distinct sampling (one network per isomorphism class per draw) and strict fairness (every op of every
edge once per 5 steps), the latter two each their own training run (``supernet_tables --distinct`` / ``--fair``).
Kendall tau against the table's CIFAR-10 validation accuracy with a 95% bootstrap interval over networks.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

from experiments.record import load_numbers, record
from experiments.supernet_tables import eval_images, score_children, table_networks
from nas.supernet import load_checkpoint, recal_batches, supernet_data, supernet_from_checkpoint
from nas.tables import nested_sample
from nas_ground.data import load_cifar10
from nas_ground.jsonl import JsonLines
from predictors.metrics import kendall_tau


def bootstrap_tau(values: list[float], truth: list[float], draws: int = 1000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    v, t = np.asarray(values), np.asarray(truth)
    taus = []
    for _ in range(draws):
        idx = rng.integers(0, len(v), len(v))
        taus.append(kendall_tau(v[idx].tolist(), t[idx].tolist()))
    lo, hi = np.percentile(taus, [2.5, 97.5])
    return float(lo), float(hi)


class _Scorer:
    """`score_children` needs a trainer-like object: the net, its space, device and recalibration batches."""

    def __init__(self, checkpoint: Path, recal: int, data: Any) -> None:
        space, net, cfg = supernet_from_checkpoint(load_checkpoint(checkpoint))
        self.space, self.net, self.device = space, net, torch.device("cpu")
        cfg = dataclasses.replace(cfg, recal_batches=recal)
        self.recal = recal_batches(supernet_data(data, cfg), cfg, self.device)


app = typer.Typer(add_completion=False, rich_markup_mode="markdown")


@app.command(help=__doc__)
def main(
    networks: Annotated[int, typer.Option(help="Networks of the nested sample scored in every row.")] = 300,
    recals: Annotated[str, typer.Option(help="Comma list of BN recalibration batch counts (baseline: 4).")] = "1,16",
    out: Annotated[str, typer.Option(help="The supernet_tables output directory.")] = "runs/supernet-tables",
    data_dir: Annotated[str | None, typer.Option(help="Data directory.")] = None,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 1,
) -> None:
    torch.set_num_threads(threads)
    rows_all = table_networks("nb201", data_dir)
    archs = nested_sample(sorted(rows_all), networks, 0)
    truth = [rows_all[a]["accuracy"] for a in archs]
    root = Path(out)
    rows: list[dict[str, Any]] = []

    def add(name: str, scores: dict[str, float], note: str) -> None:
        values = [scores[a] for a in archs]
        tau = kendall_tau(values, truth)
        rows.append({"variant": name, "tau": tau, "ci95": bootstrap_tau(values, truth), "note": note})
        print(rows[-1], flush=True)

    def cached(path: Path) -> dict[str, float]:
        found = {r["arch"]: r["accuracy"] for r in JsonLines(path, "arch").read()}
        missing = [a for a in archs if a not in found]
        if missing:
            raise SystemExit(f"{path} lacks {len(missing)} of the {networks} networks: run supernet_tables first")
        return found

    add("baseline: uniform single path, 4 recalibration batches", cached(root / "nb201" / "children-e4.jsonl"), "")
    data = load_cifar10(data_dir)
    x, y = eval_images(data, 500)
    for r in [int(v) for v in recals.split(",") if v]:
        scorer = _Scorer(root / "nb201" / "supernet" / "checkpoint.pt", r, data)
        scores = score_children(scorer, archs, JsonLines(root / "nb201" / f"recal{r}-e4.jsonl", "arch"), x, y)  # type: ignore[arg-type]
        scores.pop("_seconds")
        add(f"BN recalibration on {r} batch{'es' if r > 1 else ''} (baseline weights)", scores, "")
    add(
        "distinct sampling (one network per isomorphism class)",
        cached(root / "nb201-distinct" / "children-e4.jsonl"),
        "own training run",
    )
    add(
        "strict fairness (every op of every edge once per 5 steps)",
        cached(root / "nb201-fair" / "children-e4.jsonl"),
        "own training run",
    )
    tables = {k: load_numbers(f"supernet-tables-{k}") for k in ("nb201",)}
    curve = {b: v["tau"] for b, v in tables["nb201"]["budgets"].items()}
    lines = [
        f"NAS-Bench-201, SPOS supernet (C=16, N=1), 4 epochs of 40,000 images, CPU, seed 0; the same {networks} "
        "distinct networks in every row (the first of the nested sample of section supernet-tables-nb201), 500 "
        "held-out images each; Kendall tau against the table's CIFAR-10 validation accuracy, 95% bootstrap interval "
        "over networks (1,000 draws). One training run per row: the seed-to-seed spread of a supernet is not "
        "measured, so differences inside the intervals are not claims.\n",
        "| variant | Kendall tau | 95% interval |",
        "|---|---|---|",
    ]
    for row in rows:
        lo, hi = row["ci95"]
        lines.append(f"| {row['variant']} | **{row['tau']:.3f}** | [{lo:.3f}, {hi:.3f}] |")
    lines += [
        "",
        "Longer training (the budget curve of section supernet-tables-nb201, 1,000 networks): "
        + ", ".join(f"{b} epochs {t:.3f}" for b, t in curve.items())
        + ". Not run here: few-shot splitting, the sandwich rule for the cell supernet, other seeds.",
    ]
    record(
        "supernet-ablations-nb201",
        "What makes weight sharing rank (NAS-Bench-201)",
        "\n".join(lines),
        {"rows": rows, "networks": networks, "curve": curve},
    )


if __name__ == "__main__":
    app()
