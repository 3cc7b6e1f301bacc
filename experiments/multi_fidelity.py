"""Multi-fidelity search against full-budget search at the same CPU-seconds: NB201, real CIFAR-10 training.

Three searches, each ``--seeds`` times, each given ``--budget`` CPU-seconds of evaluation:
- ``full-tpe``: TPE (the default sampler), every candidate trained to the top rung (``eta=1``: nobody is stopped;
  the rung figures are recorded on the way, which costs two extra validation passes per candidate);
- ``mf-tpe``: TPE with asynchronous successive halving over ``--rungs`` (``--eta``, MO-ASHA promotion);
- ``mf-random``: random sampling with the same rungs.
Every search is a real `nas.search.Search` (``--evaluator train``, the local loop, a journal in a temporary run
directory), the network the NB201 cell with ``--channels`` and one cell per stage, trained on ``--train-images``
CIFAR-10 training images, validated on ``--val-images`` held-out ones. A search stops once its rungs have used the
budget; two searches run at once (one torch thread each, the machine's 2 cores).

CPU-seconds: the process CPU time of each rung's evaluation (``rung_cpu_seconds``: building, profiling, training,
validating, checkpointing), summed in the order the local loop ran them; the driver's own CPU (sampling, storage)
is reported beside it. The front a search returns after T CPU-seconds: the non-dominated (accuracy up, params down)
completed candidates, i.e. top-rung ones, finished within T. It is judged by the NB201 table: each member's CIFAR-10
test accuracy (200 epochs) x the table network's params, hypervolume as a share of the true front's (every
distinct table network; `experiments.pareto_quality`'s normalisation), and the table test accuracy of the member
with the best search accuracy. Rank correlation per rung: Kendall tau between the accuracy at that rung and the
table's test accuracy, over the ``full-tpe`` candidates (every one of them reaches every rung; TPE-chosen cells, not
a uniform sample).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from experiments.record import record

METHODS = {  # name -> (sampler, eta)
    "full-tpe": ("tpe", 1.0),
    "mf-tpe": ("tpe", None),
    "mf-random": ("random", None),
}


class BudgetSpent(Exception):
    pass


def run_search(method: str, seed: int, settings: dict[str, Any]) -> dict[str, Any]:
    """One search in a subprocess; returns every trial's rung records and the CPU it used."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import logging

    import optuna
    import torch

    from nas.search import Search, SearchConfig, make_storage

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("nas").setLevel(logging.WARNING)
    sampler, eta = METHODS[method]
    run_dir = Path(tempfile.mkdtemp(prefix=f"mf-{method}-{seed}-"))
    cfg = SearchConfig(
        space="nb201",
        evaluator="train",
        trials=100_000,
        sampler=sampler,
        seed=seed,
        run_dir=str(run_dir),
        data_dir=settings["data_dir"],
        rungs=list(settings["rungs"]),
        eta=settings["eta"] if eta is None else eta,
        evaluator_options={
            "channels": settings["channels"],
            "cells_per_stage": 1,
            "train_images": settings["train_images"],
            "val_images": settings["val_images"],
            "batch_size": 64,
        },
    )
    search = Search(cfg)
    start_cpu, start_wall = time.process_time(), time.perf_counter()

    def rung_cpu(study: Any) -> float:
        return sum(
            r["rung_cpu_seconds"]
            for t in study.get_trials(deepcopy=False)
            for r in t.user_attrs.get("rungs", {}).values()
        )

    def on_trial(trial: Any, done: int, total: int) -> None:
        if trial is not None and rung_cpu(search.study) >= settings["budget"]:
            raise BudgetSpent

    with contextlib.suppress(BudgetSpent):  # the budget is spent: the study so far is the result
        search.run(on_trial)
    cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start_wall
    study = optuna.load_study(study_name="nas", storage=make_storage(None, run_dir))
    trials = [
        {
            "number": t.number,
            "state": t.state.name,
            "arch": t.user_attrs["arch"],
            "rungs": {
                k: {n: r[n] for n in ("accuracy", "params", "rung_cpu_seconds")}
                for k, r in t.user_attrs.get("rungs", {}).items()
            },
        }
        for t in study.get_trials(deepcopy=False)
        if "arch" in t.user_attrs
    ]
    return {
        "method": method,
        "seed": seed,
        "trials": trials,
        "process_cpu": cpu,
        "wall": wall,
        "rung_cpu": rung_cpu(study),
    }


def front_at(trials: list[dict[str, Any]], top: str, budget: float) -> tuple[list[str], float]:
    """The architectures of the search's front after ``budget`` CPU-seconds, and the CPU they took."""
    spent, done = 0.0, []
    for t in sorted(trials, key=lambda t: t["number"]):  # the local loop: one trial's rungs, then the next trial
        for key in sorted(t["rungs"], key=int):
            spent += t["rungs"][key]["rung_cpu_seconds"]
            if spent > budget:
                break
            if key == top and t["state"] == "COMPLETE":
                done.append((t["rungs"][key]["accuracy"], t["rungs"][key]["params"], t["arch"]))
        if spent > budget:
            break
    front = [a for acc, p, a in done if not any(b >= acc and q <= p and (b > acc or q < p) for b, q, _ in done)]
    best = max(done, key=lambda d: d[0])[2] if done else None
    return front, best  # type: ignore[return-value]


app = typer.Typer(add_completion=False)


@app.command(help=__doc__)
def main(
    seeds: Annotated[int, typer.Option()] = 5,
    budget: Annotated[float, typer.Option(help="CPU-seconds of evaluation per search.")] = 300.0,
    rungs: Annotated[str, typer.Option()] = "1,3,9",
    eta: Annotated[float, typer.Option()] = 3.0,
    channels: Annotated[int, typer.Option()] = 8,
    train_images: Annotated[int, typer.Option()] = 2000,
    val_images: Annotated[int, typer.Option()] = 1000,
    methods: Annotated[str, typer.Option()] = ",".join(METHODS),
    processes: Annotated[int, typer.Option()] = 2,
    data_dir: Annotated[str | None, typer.Option()] = None,
    key: Annotated[str, typer.Option()] = "multi-fidelity",
) -> None:
    from scipy.stats import kendalltau

    from experiments.pareto_quality import Problem

    data_dir = data_dir or os.environ.get("NAS_DATA_DIR")
    settings = {
        "budget": budget, "rungs": [int(r) for r in rungs.split(",")], "eta": eta, "channels": channels,
        "train_images": train_images, "val_images": val_images, "data_dir": data_dir,
    }  # fmt: skip
    top = str(settings["rungs"][-1])
    names = methods.split(",")
    start = time.perf_counter()
    jobs = [(m, s) for s in range(seeds) for m in names]
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
        runs = list(pool.map(run_search, *zip(*jobs, strict=True), [settings] * len(jobs)))
    minutes = (time.perf_counter() - start) / 60

    problem = Problem("nb201-params", data_dir)  # the table as an oracle, test accuracy instead of validation
    test_acc: dict[str, tuple[float, float]] = {}
    for arch in problem.table:
        m = problem.evaluator.evaluate(problem.space.decode(arch))
        test_acc[arch] = (problem.evaluator.final_metrics(problem.space.decode(arch))["test_accuracy"], m["params"])
    problem.table = test_acc
    problem.max_cost = max(c for _, c in test_acc.values())
    true_hv = problem.hypervolume(list(test_acc.values()))

    fractions = (0.25, 0.5, 0.75, 1.0)
    summary: dict[str, Any] = {}
    for name in names:
        mine = [r for r in runs if r["method"] == name]
        cell: dict[str, Any] = {
            "shares": {},
            "best": {},
            "completed": [],
            "evaluated": [],
            "process_cpu": [],
            "rung_cpu": [],
        }
        for f in fractions:
            shares, best = [], []
            for r in mine:
                front, top_arch = front_at(r["trials"], top, f * budget)
                points = [test_acc[problem.canonical(a)] for a in front]
                shares.append(problem.hypervolume(points) / true_hv if points else 0.0)
                best.append(test_acc[problem.canonical(top_arch)][0] if top_arch else float("nan"))
            cell["shares"][str(f)] = shares
            cell["best"][str(f)] = best
        for r in mine:
            cell["completed"].append(sum(1 for t in r["trials"] if t["state"] == "COMPLETE"))
            cell["evaluated"].append(sum(1 for t in r["trials"] if t["rungs"]))
            cell["process_cpu"].append(r["process_cpu"])
            cell["rung_cpu"].append(r["rung_cpu"])
        summary[name] = cell
    taus: dict[str, Any] = {}
    if "full-tpe" in names:
        seen: dict[str, dict[str, float]] = {}
        for r in runs:
            if r["method"] == "full-tpe":
                for t in r["trials"]:
                    if top in t["rungs"]:
                        seen.setdefault(problem.canonical(t["arch"]), {k: v["accuracy"] for k, v in t["rungs"].items()})
        archs = sorted(seen)
        for k in map(str, settings["rungs"]):
            ours = [seen[a][k] for a in archs]
            table = [test_acc[a][0] for a in archs]
            taus[k] = {"tau": float(kendalltau(ours, table).statistic), "cells": len(archs)}
        top_acc = [seen[a][top] for a in archs]
        for k in map(str, settings["rungs"]):
            taus[k]["tau_vs_top"] = float(kendalltau([seen[a][k] for a in archs], top_acc).statistic)

    def ms(values: list[float]) -> str:
        v = np.array(values, dtype=float)
        return f"{np.nanmean(v):.3f} +- {np.nanstd(v):.3f}"

    lines = [
        f"NB201 cells (C={channels}, 1 cell per stage) trained on {train_images} CIFAR-10 images, validated on "
        f"{val_images}; rungs {rungs} epochs (cosine schedule over {top}), eta {eta:g}; each search gets {budget:g} "
        f"CPU-seconds of evaluation (1 torch thread), {seeds} seeds (0..{seeds - 1}). Front quality: hypervolume share "
        "of the true front by the NB201 table (CIFAR-10 test accuracy x params); best: table test accuracy of the "
        f"member with the best search accuracy. Mean +- std over seeds; {minutes:.0f} min wall for all "
        f"{len(runs)} searches, two at a time.\n",
        "| search | "
        + " | ".join(f"HV share @ {f:g} budget" for f in fractions)
        + " | best @ 1 | completed | evaluated |",
        "|---|" + "---|" * (len(fractions) + 3),
    ]
    for name, cell in summary.items():
        shares = " | ".join(ms(cell["shares"][str(f)]) for f in fractions)
        lines.append(
            f"| {name} | {shares} | {ms(cell['best']['1.0'])} | {np.mean(cell['completed']):.1f} | "
            f"{np.mean(cell['evaluated']):.1f} |"
        )
    if "full-tpe" in summary:
        full = np.array(summary["full-tpe"]["shares"]["1.0"])
        for name in summary:
            if name == "full-tpe":
                continue
            half = np.array(summary[name]["shares"]["0.5"])
            diff = half - full
            se = float(np.std(diff, ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else float("nan")
            verdict = "reaches" if diff.mean() >= 0 else "does not reach"
            lines.append(
                f"\n{name} at half the budget minus full-tpe at the full budget (paired by seed): "
                f"**{diff.mean():+.3f} +- {se:.3f}** (mean +- standard error): {verdict} the full-budget front quality "
                "with half the CPU-seconds on this measurement."
            )
    if taus:
        lines.append(
            "\nKendall tau of each rung's accuracy against the table's test accuracy (and against the top rung's), "
            f"over the {next(iter(taus.values()))['cells']} distinct cells the full-tpe searches trained to the top: "
            + ", ".join(f"{k} ep: {v['tau']:.3f} ({v['tau_vs_top']:.3f})" for k, v in taus.items())
            + "."
        )
    overhead = [
        (p - c) / max(p, 1e-9)
        for n in summary
        for p, c in zip(summary[n]["process_cpu"], summary[n]["rung_cpu"], strict=True)
    ]
    lines.append(
        f"\nDriver CPU beside the rungs' (sampling, journal, decisions): {100 * np.mean(overhead):.1f} % of each "
        "search's process CPU on average (not counted in the budget)."
    )
    record(key, "Multi-fidelity search (MO-ASHA) against full-budget search, same CPU-seconds", "\n".join(lines),
           {"settings": settings, "summary": summary, "taus": taus, "runs": runs, "minutes": minutes})  # fmt: skip
    print("\n".join(lines))


if __name__ == "__main__":
    app()
