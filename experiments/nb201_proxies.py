"""Every training-free proxy on NB201 cells against the table's accuracy, and rank ensembles of them.

``--cells N`` random cells (seeded; 15625 = all) are built with the benchmark skeleton (C=16, N=5), each
initialised with the same seed, and scored by every proxy on one fixed batch of 64 CIFAR-10 training images
(seed 0), one torch thread per worker. Values go to a JSON-lines file as they come (a killed run resumes and
skips the cells already there). The report: Spearman rho and Kendall tau of each proxy against the NATS-Bench
test accuracy on CIFAR-10, CIFAR-100 and ImageNet16-120; mean seconds per cell per proxy; our naswot_v1
against the published ``naswot_score_v1`` (also on the first ``--v1-check`` cells at the reference batch of 256,
with ``--v1-seeds`` seeds, each its own weights and batch); and rank ensembles (mean rank of the members).
``--recompute NAME`` recomputes one proxy for every cell already computed, after its definition changed.

The calibrated ensemble is chosen on the first 500 cells of the sample and judged on the others only.
A proxy that is not finite on a cell (naswot_v1 of a cell whose output does not depend on its input) ranks
below every finite value, so every cell counts in every correlation.
"""

from __future__ import annotations

import itertools
import json
import math
import multiprocessing as mp
import random
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from scipy import stats

from experiments.record import record
from nas_ground.atomic import atomic_write
from nas_ground.jsonl import JsonLines
from predictors.metrics import kendall_tau, spearman_rho

PROXIES = ("params", "flops", "synflow", "naswot", "naswot_v1", "snip", "grad_norm", "vpca", "wpca")
TARGETS = {"CIFAR-10": "nats_cifar10_test", "CIFAR-100": "nats_cifar100_test", "ImageNet16-120": "nats_imagenet16_test"}
PUBLISHED = {"synflow": 0.737, "naswot_v1": 0.731, "snip": 0.596, "grad_norm": 0.594}  # Abdelfattah et al., C-10
ENSEMBLES = {
    "published vote (synflow, naswot_v1, snip)": ("synflow", "naswot_v1", "snip"),
    "ours (synflow, naswot, naswot_v1)": ("synflow", "naswot", "naswot_v1"),
}
_STATE: dict[str, Any] = {}


def _init(batch_size: int, data_dir: str | None, seed: int = 0, proxies: tuple[str, ...] = PROXIES) -> None:
    import torch

    from predictors.proxies import ProxyConfig
    from predictors.proxies.data import image_batch
    from search_spaces import get_space

    torch.set_num_threads(1)
    config = ProxyConfig(batch_size=batch_size, seed=seed)
    _STATE.update(config=config, batch=image_batch(config, data_dir), space=get_space("nb201"), proxies=proxies)


def _score(arch_str: str) -> dict[str, Any]:
    import torch

    from predictors.proxies import compute_proxies

    space, config = _STATE["space"], _STATE["config"]
    torch.manual_seed(config.seed)
    model = space.build(space.decode(arch_str))
    timings: dict[str, float] = {}
    values = compute_proxies(model, _STATE["proxies"], _STATE["batch"], config, timings=timings)
    return {"arch": arch_str, "values": values, "seconds": timings}


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a (possibly killed) run; a last line cut mid-write is ignored."""
    return JsonLines(path, key="arch").read()


def compute(
    out: Path,
    cells: list[str],
    workers: int,
    batch_size: int,
    data_dir: str | None,
    seed: int = 0,
    proxies: tuple[str, ...] = PROXIES,
) -> None:
    log = JsonLines(out, key="arch")
    done = log.done()
    todo = [c for c in cells if c not in done]
    print(f"{out}: {len(done)} cells done, {len(todo)} to go", flush=True)
    start = time.perf_counter()
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init, initargs=(batch_size, data_dir, seed, proxies)) as pool, log:
        for i, rec in enumerate(pool.imap_unordered(_score, todo, chunksize=4), 1):
            log.append(rec)
            if i % 100 == 0:
                rate = i / (time.perf_counter() - start)
                print(
                    f"{i}/{len(todo)} cells, {rate:.2f} cells/s, eta {(len(todo) - i) / rate / 60:.1f} min", flush=True
                )


def recompute(out: Path, proxy: str, workers: int, batch_size: int, data_dir: str | None) -> None:
    """Recompute one proxy for every cell of ``out`` (after its definition changed) and merge it in.

    The new values go to a side file first (resumable like `compute`); ``out`` is then rewritten through a
    temporary file and a rename, so a kill never leaves it half old, half new.
    """
    records = read_records(out)
    side = out.with_name(f"{out.stem}-recompute-{proxy}.jsonl")
    compute(side, [r["arch"] for r in records], workers, batch_size, data_dir, proxies=(proxy,))
    new = {r["arch"]: r for r in read_records(side)}
    for r in records:
        r["values"][proxy] = new[r["arch"]]["values"][proxy]
        r["seconds"][proxy] = new[r["arch"]]["seconds"][proxy]
    atomic_write(out, "".join(json.dumps(r) + "\n" for r in records))
    side.unlink()
    print(f"{out}: {proxy} recomputed for {len(records)} cells", flush=True)


def _ranked(values: np.ndarray) -> np.ndarray:
    """Non-finite values below every finite one, then ranks (ties averaged)."""
    v = values.astype(np.float64).copy()
    finite = np.isfinite(v)
    v[~finite] = (v[finite].min() - 1.0) if finite.any() else 0.0
    return np.asarray(stats.rankdata(v), dtype=np.float64)


def calibrated_ensemble(
    records: list[dict[str, Any]], truth: np.ndarray, calibration: int, max_members: int = 4
) -> tuple[list[str], dict[str, Any]]:
    """Pick the ensemble (2..max_members proxies, mean rank) with the best CIFAR-10 rho on the first
    ``calibration`` cells of the sample, then compare it with every single proxy on the other cells only.
    Returns the report lines and the figures."""
    calib, held = records[:calibration], records[calibration:]

    def ranks(rs: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        return {p: _ranked(np.array([r["values"][p] for r in rs])) for p in PROXIES}

    rc, rh = ranks(calib), ranks(held)
    subsets = [c for k in range(2, max_members + 1) for c in itertools.combinations(PROXIES, k)]
    best = max(subsets, key=lambda c: spearman_rho(np.mean([rc[m] for m in c], axis=0), truth[:calibration]))
    held_truth = truth[calibration:]
    singles = {p: spearman_rho(rh[p], held_truth) for p in PROXIES}
    rho = spearman_rho(np.mean([rh[m] for m in best], axis=0), held_truth)
    tau = kendall_tau(np.mean([rh[m] for m in best], axis=0), held_truth)
    top = max(singles, key=lambda p: singles[p])
    verdict = "beats" if rho > singles[top] else "does NOT beat"
    lines = [
        f"\nCalibrated ensemble: among all {len(subsets)} sets of 2-{max_members} proxies (mean rank), the best "
        f"CIFAR-10 rho on the first {len(calib)} cells of the sample is ({', '.join(best)}); "
        f"on the other {len(held)} cells it reaches rho {rho:.3f} (tau {tau:.3f}) and {verdict} every single proxy "
        f"on the same cells (best: {top}, rho {singles[top]:.3f})."
    ]
    figures = {
        "calibration_cells": len(calib),
        "held_out_cells": len(held),
        "candidate_sets": len(subsets),
        "members": list(best),
        "held_out_rho": rho,
        "held_out_tau": tau,
        "held_out_single_rho": singles,
    }
    return lines, figures


def report(
    out: Path, v1_outs: list[Path], v1_batch: int, table_path: Path, key: str, cells: list[str], calibration: int
) -> None:
    from nas.tables import load_nb201_table

    order = {c: i for i, c in enumerate(cells)}
    records = sorted((r for r in read_records(out) if r["arch"] in order), key=lambda r: order[r["arch"]])
    cells_requested = len(cells)
    table = load_nb201_table(str(table_path))
    n = len(records)
    ranks = {p: _ranked(np.array([r["values"][p] for r in records])) for p in PROXIES}
    nonfinite = {p: sum(not math.isfinite(r["values"][p]) for r in records) for p in PROXIES}
    truth = {name: np.array([table[r["arch"]][col] for r in records]) for name, col in TARGETS.items()}
    for label, members in ENSEMBLES.items():
        ranks[label] = np.mean([ranks[m] for m in members], axis=0)
    rankers: dict[str, dict[str, Any]] = {}
    lines = [
        f"{n} NB201 cells (random, seed 0; {cells_requested} requested), benchmark skeleton C=16 N=5, one weight "
        "seed, one fixed batch of 64 CIFAR-10 training images; truth = NATS-Bench test accuracy (200 epochs). "
        "Rank correlations, so params and flops are the baselines; non-finite proxy values rank last.\n",
        "| proxy | rho C-10 | tau C-10 | rho C-100 | tau C-100 | rho IN16 | tau IN16 | published rho C-10 "
        "| s/cell | non-finite |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    best_single = -1.0
    for name, rank in ranks.items():
        cols = []
        rankers[name] = {"rho": {}, "tau": {}}
        for target, t in truth.items():
            cols += [f"{spearman_rho(rank, t):.3f}", f"{kendall_tau(rank, t):.3f}"]
            rankers[name]["rho"][target] = spearman_rho(rank, t)
            rankers[name]["tau"][target] = kendall_tau(rank, t)
        if name in PROXIES:
            best_single = max(best_single, spearman_rho(rank, truth["CIFAR-10"]))
            secs = np.mean([r["seconds"][name] for r in records])
            extra = [f"{PUBLISHED[name]:.3f}" if name in PUBLISHED else "", f"{secs:.3f}", str(nonfinite[name])]
            rankers[name].update(seconds_per_cell=secs, non_finite=nonfinite[name])
        else:
            extra = ["0.82" if name.startswith("published") else "", "(sum)", ""]
        lines.append(f"| {name} | " + " | ".join(cols + extra) + " |")
    total = np.mean([sum(r["seconds"].values()) for r in records])
    lines.append(f"\nAll proxies together: {total:.2f} s per cell (one thread, incl. nothing else; build not timed).")
    ours = np.array([r["values"]["naswot_v1"] for r in records])
    published = np.array([table[r["arch"]]["naswot_score_v1"] for r in records])
    lines.append(
        f"Our naswot_v1 (batch 64, every cell: {n}, {int(np.isfinite(published).sum())} with a published value) "
        f"against the published `naswot_score_v1`: Spearman {spearman_rho(ours, published):.3f}, "
        f"Kendall {kendall_tau(ours, published):.3f}."
    )
    check_lines, check = v1_check(v1_outs, v1_batch, table)
    lines += check_lines
    for label in ENSEMBLES:
        rho = spearman_rho(ranks[label], truth["CIFAR-10"])
        verdict = "beats" if rho > best_single else "does NOT beat"
        lines.append(f"Ensemble {label}: CIFAR-10 rho {rho:.3f}, {verdict} the best single proxy ({best_single:.3f}).")
    calibrated_lines, calibrated = calibrated_ensemble(records, truth["CIFAR-10"], calibration)
    lines += calibrated_lines
    body = "\n".join(lines)
    print(body)
    numbers = {
        "values_file": str(out),
        "cells": n,
        "cells_requested": cells_requested,
        "targets": TARGETS,
        "rankers": rankers,
        "all_proxies_s_per_cell": total,
        "naswot_v1_vs_published": {
            "cells_with_published": int(np.isfinite(published).sum()),
            "spearman": spearman_rho(ours, published),
            "kendall": kendall_tau(ours, published),
        },
        "naswot_v1_reference_batch": check,
        "calibrated_ensemble": calibrated,
    }
    record(key, "Training-free proxies on NAS-Bench-201", body, numbers)


def v1_check(paths: list[Path], batch: int, table: dict[str, dict[str, float]]) -> tuple[list[str], dict[str, Any]]:
    """naswot_v1 at the reference batch size, one file per seed, against the published column.

    The published column is one draw per cell (one initialisation, one batch), so even an identical
    implementation's single seed is expected to agree with it only about as well as two of our seeds agree with
    each other; the mean rank over seeds estimates our score's expectation and is compared as well.
    Returns the report lines and the figures.
    """
    runs = [{r["arch"]: r["values"]["naswot_v1"] for r in read_records(p)} for p in paths]
    runs = [run for run in runs if run]
    if not runs:
        return [], {}
    archs = [a for a in runs[0] if all(a in run for run in runs)]
    values = np.array([[run[a] for a in archs] for run in runs])  # seeds x cells
    published = np.array([table[a]["naswot_score_v1"] for a in archs])
    ok = np.isfinite(values).all(axis=0) & np.isfinite(published)
    ranks = np.array([stats.rankdata(v[ok]) for v in values])
    singles = [spearman_rho(v[ok], published[ok]) for v in values]
    pairs = [spearman_rho(a, b) for a, b in itertools.combinations(values[:, ok], 2)]
    mean_rank = ranks.mean(axis=0)
    figures: dict[str, Any] = {
        "batch": batch,
        "cells": len(archs),
        "finite_in_both": int(ok.sum()),
        "single_seed_spearman": singles,
        "seed_pair_spearman": pairs,
    }
    line = (
        f"Our naswot_v1 at batch {batch} (the reference code's default is 256, which the published scores fit: "
        f"the score is at most -batch, their maximum is -273.5), {len(archs)} cells, {int(ok.sum())} finite in "
        "both: single seeds "
        f"against the published column Spearman {', '.join(f'{r:.3f}' for r in singles)} (mean {np.mean(singles):.3f})"
    )
    if len(runs) > 1:
        line += (
            f"; our seeds against each other {np.mean(pairs):.3f} (min {min(pairs):.3f}, max {max(pairs):.3f}); "
            f"mean rank over the {len(runs)} seeds against the published column: Spearman "
            f"{spearman_rho(mean_rank, published[ok]):.3f}, Kendall {kendall_tau(mean_rank, published[ok]):.3f}"
        )
        figures["mean_rank_vs_published"] = {
            "spearman": spearman_rho(mean_rank, published[ok]),
            "kendall": kendall_tau(mean_rank, published[ok]),
        }
    return [line + " (target Spearman >= 0.95)."], figures


app = typer.Typer(add_completion=False, rich_markup_mode="markdown")


@app.command(help=__doc__)
def main(
    cells: Annotated[int, typer.Option(help="Random NB201 cells (seeded; 15625 = all).")] = 3000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    batch_size: Annotated[int, typer.Option(help="Images in the fixed batch.")] = 64,
    data_dir: Annotated[str | None, typer.Option(help="Data directory.")] = None,
    out: Annotated[str, typer.Option(help="JSON-lines file of the proxy values.")] = "runs/proxies-nb201/values.jsonl",
    v1_check: Annotated[int, typer.Option(help="Cells for naswot_v1 at the reference batch.")] = 500,
    v1_batch: Annotated[int, typer.Option(help="The reference code's batch size.")] = 256,
    v1_seeds: Annotated[int, typer.Option(help="Seeds (weights and batch) of the naswot_v1 check.")] = 4,
    recompute_proxy: Annotated[
        str | None,
        typer.Option("--recompute", help="Recompute this proxy for every cell already in --out (definition changed)."),
    ] = None,
    calibration: Annotated[int, typer.Option(help="Cells that choose the calibrated ensemble.")] = 500,
    report_only: Annotated[
        bool, typer.Option("--report-only", help="Report from the values already computed.")
    ] = False,
    key: Annotated[str, typer.Option(help="Result to write (experiments/results/KEY.json).")] = "proxies-nb201",
) -> None:
    from nas_ground.data import resolve_data_dir

    table_path = resolve_data_dir(data_dir) / "nb201" / "nb201.csv"
    from nas.tables import load_nb201_table

    every = sorted(load_nb201_table(str(table_path)))
    sample = random.Random(0).sample(every, min(cells, len(every)))
    values = Path(out)
    values.parent.mkdir(parents=True, exist_ok=True)
    v1_outs = [values.with_name(f"{values.stem}-naswot_v1-b{v1_batch}-seed{k}.jsonl") for k in range(v1_seeds)]
    if not report_only:
        if recompute_proxy:
            from predictors.proxies import parse_proxy_names

            recompute(values, parse_proxy_names(recompute_proxy)[0], workers, batch_size, data_dir)
        compute(values, sample, workers, batch_size, data_dir)
        for k, path in enumerate(v1_outs):
            compute(path, sample[:v1_check], workers, v1_batch, data_dir, k, ("naswot_v1",))
    report(values, v1_outs, v1_batch, table_path, key, sample, calibration)


if __name__ == "__main__":
    app()
