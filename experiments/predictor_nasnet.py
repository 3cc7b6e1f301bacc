"""The NB201-only predictor on the NASNet space with the quick-start training budget: as a screen, and zero-shot.

1. `predictor+train` against `train` alone with the same wall-clock budget per search (``--minutes``), objectives
   accuracy:max and params:min, one search per seed and arm, run one after another on a quiet machine; the figure
   is the hypervolume of each final Pareto front (validation accuracy in % x params, reference point:
   accuracy 0 and the largest params seen in any arm, so both arms are measured in the same box).
2. Transfer across spaces: every candidate trained by those searches (fixed budget: 1 epoch on 5000 images, 1000
   validation images) is harvested into a NASNet bench; the predictor trained on NB201 only (``--predictor``) is
   scored on them: Kendall tau against their validation accuracy, beside #params and FLOPs on the same networks.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from experiments.record import record
from predictors.metrics import kendall_tau, spearman_rho


def _run(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "nas", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"nas {' '.join(args)} failed:\n{proc.stderr[-2000:]}")


def _trials(run: Path) -> list[dict[str, str]]:
    with open(run / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def hypervolume(points: list[tuple[float, float]], ref_params: float) -> float:
    """Share of the box [0, ref_params] x [0, 100] dominated by (accuracy % max, params min) points."""
    front = sorted((p, a) for a, p in points if p <= ref_params)  # by params ascending
    area, best = 0.0, 0.0
    for i, (p, a) in enumerate(front):
        best = max(best, a)
        nxt = front[i + 1][0] if i + 1 < len(front) else ref_params
        area += best * (nxt - p)
    return area / (100.0 * ref_params)


app = typer.Typer(add_completion=False, rich_markup_mode="markdown")


@app.command(help=__doc__)
def main(
    predictor: Annotated[str, typer.Option(help="Predictor trained on NB201 only.")],
    minutes: Annotated[float, typer.Option(help="Wall-clock minutes per search.")] = 5.0,
    seeds: Annotated[str, typer.Option(help="Comma list of search seeds.")] = "0,1,2",
    root: Annotated[str, typer.Option(help="Run directories of the searches.")] = "runs/predictor-nasnet",
    bench: Annotated[str, typer.Option(help="NASNet bench harvested from the searches.")] = "runs/bench-nasnet",
    skip_search: Annotated[bool, typer.Option("--skip-search", help="Reuse the runs under --root.")] = False,
    search_note: Annotated[str, typer.Option(help="What to say about reused runs (with --skip-search).")] = "",
    extra_predictors: Annotated[
        list[str] | None, typer.Option(help="More NB201-only predictors to score (repeat the option).")
    ] = None,
) -> None:
    extra_predictors = extra_predictors or []
    seed_list = [int(s) for s in seeds.split(",")]
    arms = {"train": [], "predictor+train": ["--predictor", predictor]}
    runs: dict[tuple[str, int], Path] = {}
    for seed in seed_list:
        for arm, extra in arms.items():
            run = Path(root) / f"{arm.replace('+', '-')}-s{seed}"
            runs[arm, seed] = run
            if skip_search:
                continue
            start = time.perf_counter()
            _run(
                ["search", "--space", "nasnet", "--evaluator", arm, "--trials", "100000", "--seed", str(seed),
                 "--timeout", str(minutes * 60), "--run-dir", str(run), *extra]
            )  # fmt: skip
            print(arm, seed, f"{time.perf_counter() - start:.0f}s", flush=True)
    points = {
        key: [(float(r["accuracy"]), float(r["params"])) for r in _trials(run) if r["state"] == "COMPLETE"]
        for key, run in runs.items()
    }
    screened = {key: sum(1 for r in _trials(run) if r["state"] == "PRUNED") for key, run in runs.items()}
    ref = max(p for pts in points.values() for _, p in pts)
    rows: list[str] = []
    hv: dict[str, list[float]] = {arm: [] for arm in arms}
    searches = []
    for (arm, seed), pts in points.items():
        value = hypervolume(pts, ref)
        hv[arm].append(value)
        rows.append(f"| {arm} | {seed} | {len(pts)} | {screened[arm, seed]} | {value:.4f} |")
        searches.append(
            {"arm": arm, "seed": seed, "trained": len(pts), "screened_out": screened[arm, seed], "hypervolume": value}
        )
    # Transfer across spaces: harvest and score with the NB201-only predictor.
    _run(["bench", "harvest", *[str(r) for r in runs.values()], "--out", bench])
    from predictors.predictor import Predictor
    from predictors.training import load_bench_data

    screen = Predictor.load(predictor)
    data = load_bench_data(bench, "accuracy", space="nasnet", text_format=screen.text_format)
    scores = screen.score_embeddings(data.embeddings, data.summaries)
    y = data.y
    transfer = {
        f"predictor (NB201 only, `{Path(predictor).name}`)": scores,
        **{
            f"predictor (NB201 only, `{Path(p).name}`)": Predictor.load(p).score_embeddings(
                data.embeddings, data.summaries
            )
            for p in extra_predictors
        },
        "#params": data.frame["params"].to_numpy(float),
        "FLOPs": data.frame["flops"].to_numpy(float),
    }
    t_rows = [f"| {k} | {kendall_tau(v, y):.3f} | {spearman_rho(v, y):.3f} |" for k, v in transfer.items()]
    body = (
        f"NASNet space, quick-start network and budget (C=8, N=1; 1 epoch on 5000 CIFAR-10 images, 1000 validation "
        f"images), nsga2, objectives accuracy:max + params:min, **{minutes:g} min wall clock per search**, seeds "
        f"{seed_list}, one search at a time on the 2 cores. `predictor+train` screens each candidate with the "
        "NB201-only predictor and trains it only when its (score, params) is not dominated by an earlier screened "
        "candidate (10% of the others trained anyway)."
        + (f" {search_note}" if skip_search and search_note else "")
        + "\n\n"
        "| evaluator | seed | trained | screened out | hypervolume |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n\n"
        + " ".join(f"**{arm}: {np.mean(v):.4f} +- {np.std(v):.4f}**." for arm, v in hv.items())
        + f" Hypervolume of (validation accuracy, params) fronts, reference point (0, {ref:.0f} params), normalised "
        "to the box; higher is better.\n\n"
        f"Transfer across spaces: {len(y)} trained NASNet candidates harvested from these searches "
        f"(`{bench}`, {data.frame['arch'].nunique()} distinct architectures), their validation accuracy after the "
        "fixed budget as ground truth (one training run each, so it carries seed noise):\n\n"
        "| ranker | Kendall tau | Spearman rho |\n|---|---|---|\n" + "\n".join(t_rows)
    )
    numbers = {
        "reference_params": ref,
        "searches": searches,
        "transfer": {
            "candidates": len(y),
            "distinct_architectures": int(data.frame["arch"].nunique()),
            "rankers": {k: {"tau": kendall_tau(v, y), "rho": spearman_rho(v, y)} for k, v in transfer.items()},
        },
    }
    record("predictor-nasnet", "Predictor on NASNet: transfer across spaces and predictor+train", body, numbers)
    print(body)


if __name__ == "__main__":
    app()
