"""Benchmarks 3 and 5 of the predictor issue, on the NASNet space with the quick-start training budget.

5. `predictor+train` against `train` alone with the same wall-clock budget per search (``--minutes``), objectives
   accuracy:max and params:min, one search per seed and arm, run one after another on a quiet machine; the figure
   is the hypervolume of each final Pareto front (validation accuracy in % x params, reference point:
   accuracy 0 and the largest params seen in any arm, so both arms are measured in the same box).
3. Every candidate trained by those searches (fixed budget: 1 epoch on 5000 images, 1000 validation images) is
   harvested into a NASNet bench; the predictor trained on NB201 only (``--predictor``) is scored on them: Kendall
   tau against their validation accuracy, beside #params and FLOPs on the same networks.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--predictor", required=True, help="predictor trained on NB201 only")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--root", default="runs/predictor-nasnet")
    parser.add_argument("--bench", default="runs/bench-nasnet")
    parser.add_argument("--skip-search", action="store_true", help="reuse the runs under --root")
    parser.add_argument("--search-note", default="", help="what to say about reused runs (with --skip-search)")
    parser.add_argument("--extra-predictors", nargs="*", default=[], help="more NB201-only predictors to score")
    args = parser.parse_args()
    root = Path(args.root)
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = {"train": [], "predictor+train": ["--predictor", args.predictor]}
    runs: dict[tuple[str, int], Path] = {}
    for seed in seeds:
        for arm, extra in arms.items():
            run = root / f"{arm.replace('+', '-')}-s{seed}"
            runs[arm, seed] = run
            if args.skip_search:
                continue
            start = time.perf_counter()
            _run(
                ["search", "--space", "nasnet", "--evaluator", arm, "--trials", "100000", "--seed", str(seed),
                 "--timeout", str(args.minutes * 60), "--run-dir", str(run), *extra]
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
    for (arm, seed), pts in points.items():
        value = hypervolume(pts, ref)
        hv[arm].append(value)
        rows.append(f"| {arm} | {seed} | {len(pts)} | {screened[arm, seed]} | {value:.4f} |")
    # Benchmark 3: harvest and score with the NB201-only predictor.
    _run(["bench", "harvest", *[str(r) for r in runs.values()], "--out", args.bench])
    from predictors.predictor import Predictor
    from predictors.training import load_bench_data

    predictor = Predictor.load(args.predictor)
    data = load_bench_data(args.bench, "accuracy", space="nasnet", text_format=predictor.text_format)
    scores = predictor.score_embeddings(data.embeddings, data.summaries)
    y = data.y
    transfer = {
        f"predictor (NB201 only, `{Path(args.predictor).name}`)": scores,
        **{
            f"predictor (NB201 only, `{Path(p).name}`)": Predictor.load(p).score_embeddings(
                data.embeddings, data.summaries
            )
            for p in args.extra_predictors
        },
        "#params": data.frame["params"].to_numpy(float),
        "FLOPs": data.frame["flops"].to_numpy(float),
    }
    t_rows = [f"| {k} | {kendall_tau(v, y):.3f} | {spearman_rho(v, y):.3f} |" for k, v in transfer.items()]
    body = (
        f"NASNet space, quick-start network and budget (C=8, N=1; 1 epoch on 5000 CIFAR-10 images, 1000 validation "
        f"images), nsga2, objectives accuracy:max + params:min, **{args.minutes:g} min wall clock per search**, seeds "
        f"{seeds}, one search at a time on the 2 cores. `predictor+train` screens each candidate with the NB201-only "
        "predictor and trains it only when its (score, params) is not dominated by an earlier screened candidate "
        "(10% of the others trained anyway)."
        + (f" {args.search_note}" if args.skip_search and args.search_note else "")
        + "\n\n"
        "| evaluator | seed | trained | screened out | hypervolume |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n\n"
        + " ".join(f"**{arm}: {np.mean(v):.4f} +- {np.std(v):.4f}**." for arm, v in hv.items())
        + f" Hypervolume of (validation accuracy, params) fronts, reference point (0, {ref:.0f} params), normalised "
        "to the box; higher is better.\n\n"
        f"Transfer across spaces (benchmark 3): {len(y)} trained NASNet candidates harvested from these searches "
        f"(`{args.bench}`, {data.frame['arch'].nunique()} distinct architectures), their validation accuracy after the "
        "fixed budget as ground truth (one training run each, so it carries seed noise):\n\n"
        "| ranker | Kendall tau | Spearman rho |\n|---|---|---|\n" + "\n".join(t_rows)
    )
    record("predictor-nasnet", "Predictor on NASNet: transfer across spaces and predictor+train", body)
    print(body)


if __name__ == "__main__":
    main()
