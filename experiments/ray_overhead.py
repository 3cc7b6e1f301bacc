"""What running trials as Ray tasks costs and gains, and what it would give on a GPU cluster.

(1) Overhead: completed trials per second with the NB201 `table` evaluator (an evaluation takes
microseconds, so the loop itself is measured), local loop vs Ray with 1 and 2 workers; ray.init is
timed apart. (2) Speed-up with real training (NB201 `train`, tiny budget), 1 vs 2 Ray workers of one
torch thread each on this machine's 2 cores. (3) An estimate for a 100-GPU cluster running the NASNet
quick-start search with ``--gpus-per-trial 0.25``, from (1) and a measured NASNet trial on one CPU core.
"""

from __future__ import annotations

import json
import logging
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import optuna
import ray
import torch
import typer

from experiments.record import record
from nas.cli.search import QUICK_NETWORK, QUICK_TRAIN
from nas.evaluators import make_evaluator
from nas.search import Search, SearchConfig
from search_spaces import get_space

TINY_TRAIN = {
    "channels": 8,
    "cells_per_stage": 1,
    "train_images": 1000,
    "val_images": 500,
    "epochs": 1,
    "batch_size": 64,
    "test_images": 500,
}
GPU_SPEEDUP = 10.0  # ASSUMED: a quarter of a data-centre GPU vs one CPU core, for 8-channel NASNet networks


def timed_search(cfg: SearchConfig) -> dict[str, Any]:
    """Run one search; the loop's wall time (first trial asked to last told, ray.init excluded), trial times."""
    marks: list[float] = []

    def on_trial(trial: Any, done: int, total: int) -> None:
        marks.append(time.perf_counter())

    search = Search(cfg)
    start = time.perf_counter()
    result = search.run(on_trial)
    total = time.perf_counter() - start
    loop = marks[-1] - marks[0]
    n = len(marks) - 1
    steady = marks[len(marks) // 10 :]  # the first tenth holds worker start-up (evaluator built per process)
    info = json.loads((search.run_dir / "ray.json").read_text()) if (search.run_dir / "ray.json").exists() else {}
    study = optuna.load_study(
        study_name="nas",
        storage=optuna.storages.journal.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(search.run_dir / "study.journal"))
        ),
    )
    evals = [t.user_attrs["worker"]["seconds"] for t in study.trials if "worker" in t.user_attrs]
    return {
        "completed": result.completed,
        "trials": n,
        "loop_s": loop,
        "rate": n / loop,
        "steady_rate": (len(steady) - 1) / (steady[-1] - steady[0]),
        "total_s": total,
        "init_s": info.get("init_seconds"),
        "eval_s": statistics.mean(evals) if evals else None,
    }


def base_config(run_dir: Path, data_dir: str | None, **over: Any) -> SearchConfig:
    cfg = {
        "space": "nb201",
        "evaluator": "table",
        "objectives": ["accuracy:max", "params:min"],
        "sampler": "random",
        "seed": 0,
        "run_dir": str(run_dir),
        "data_dir": data_dir,
        **over,
    }
    return SearchConfig.from_dict(cfg)


def nasnet_trial_seconds(data_dir: str | None) -> tuple[float, float]:
    """One quick-start NASNet trial (`nas search --space nasnet` defaults) on one torch thread: evaluate() wall
    seconds and its training seconds."""
    torch.set_num_threads(1)
    space = get_space("nasnet")
    evaluator = make_evaluator("train", space, data_dir=data_dir, **QUICK_TRAIN, **QUICK_NETWORK["nasnet"])
    arch = space.sample(random.Random(0))
    start = time.perf_counter()
    metrics = evaluator.evaluate(arch)
    return time.perf_counter() - start, metrics["train_seconds"]


app = typer.Typer(add_completion=False, rich_markup_mode="markdown")


@app.command(help=__doc__)
def main(
    trials: Annotated[int, typer.Option(help="Trials per overhead run.")] = 200,
    train_trials: Annotated[int, typer.Option(help="Trials per training run.")] = 8,
    data_dir: Annotated[str | None, typer.Option(envvar="NAS_DATA_DIR", help="Data directory.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the section instead of recording it.")] = False,
) -> None:
    optuna.logging.set_verbosity(logging.WARNING)
    load_start = os.getloadavg()
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, over in [("local loop", {}), ("Ray, 1 worker", {"workers": 1}), ("Ray, 2 workers", {"workers": 2})]:
            cfg = base_config(Path(tmp) / f"table-{len(runs)}", data_dir, trials=trials, **over)
            runs[name] = timed_search(cfg)
            print(name, runs[name], flush=True)
        train: dict[str, dict[str, Any]] = {}
        for name, over in [("Ray, 1 worker", {"workers": 1}), ("Ray, 2 workers", {"workers": 2})]:
            cfg = base_config(
                Path(tmp) / f"train-{len(train)}",
                data_dir,
                evaluator="train",
                trials=train_trials,
                evaluator_options=TINY_TRAIN,
                **over,
            )
            train[name] = timed_search(cfg)
            print(name, train[name], flush=True)
    nasnet_s, nasnet_train_s = nasnet_trial_seconds(data_dir)
    print("nasnet trial", nasnet_s, nasnet_train_s, flush=True)
    load_end = os.getloadavg()

    local, ray1, ray2 = runs["local loop"], runs["Ray, 1 worker"], runs["Ray, 2 workers"]
    overhead_ms = (1 / ray1["steady_rate"] - 1 / local["steady_rate"]) * 1000
    driver_ms = 1000 / ray2["steady_rate"]
    rows = "\n".join(
        f"| {name} | {r['trials']} | {r['rate']:.1f} | {r['steady_rate']:.1f} | "
        f"{1000 / r['steady_rate']:.1f} | {r['init_s'] if r['init_s'] is not None else '-'} |"
        for name, r in runs.items()
    )
    t1, t2 = train["Ray, 1 worker"], train["Ray, 2 workers"]
    speedup = t1["loop_s"] / t2["loop_s"]
    train_rows = "\n".join(
        f"| {name} | {r['trials']} | {r['loop_s']:.1f} | {r['eval_s']:.1f} | {r['init_s']} |"
        for name, r in train.items()
    )
    slots = int(100 / 0.25)
    gpu_trial_s = nasnet_s / GPU_SPEEDUP
    per_slot = gpu_trial_s + overhead_ms / 1000
    cluster_rate = slots * 3600 / per_slot
    driver_rate = 3600 / (driver_ms / 1000)
    estimate = min(cluster_rate, driver_rate)
    body = f"""
Load average at start {load_start[0]:.2f} / {load_start[1]:.2f} / {load_start[2]:.2f} (1/5/15 min), at the end
{load_end[0]:.2f} / {load_end[1]:.2f} / {load_end[2]:.2f}: other jobs (background benchmarks, test runs) shared the
2 cores during these runs, so every figure here is pessimistic and one run each. Ray {ray.__version__}, a local runtime
started by the search (`ray.init(address="local", num_cpus=workers, include_dashboard=False)`), journal storage,
random sampler (seed 0), objectives accuracy:max, params:min.

**(1) Overhead, NB201 `table` evaluator** ({trials} trials per run; an evaluation takes
{ray1["eval_s"] * 1e3:.2f} ms in the worker). Rates are completed trials per second of the loop (first trial asked
to last told); ray.init is not in them, it is its own column; "steady" leaves out the first tenth of the trials, in
which each worker process builds its evaluator (reads the 15,625-row table).

| loop | trials | trials/s | trials/s, steady | ms per trial, steady | ray.init s |
|---|---|---|---|---|---|
{rows}

Ray's cost per trial, from the steady 1-worker run minus the local loop: **{overhead_ms:.1f} ms** (submit, schedule,
run in a worker process, fetch the result; the driver's ask, tell and trials.csv rewrite are in both). With 2
workers the driver is the limit: **{driver_ms:.1f} ms** of driver time per trial (ask, submit, wait, tell, rewrite
trials.csv).

**(2) Speed-up with real training**: NB201 `train` evaluator, {TINY_TRAIN["channels"]} channels,
{TINY_TRAIN["cells_per_stage"]} cell per stage, {TINY_TRAIN["train_images"]} training images x
{TINY_TRAIN["epochs"]} epoch, {TINY_TRAIN["val_images"]} validation images, {train_trials} trials (the same
architectures in both runs: same sampler seed), one torch thread per worker (`--cpus-per-trial 1`).

| Ray | trials | loop s | mean evaluation s (in the worker) | ray.init s |
|---|---|---|---|---|
{train_rows}

Speed-up 2 workers vs 1: **{speedup:.2f}x** (ideal 2x on 2 cores; the other jobs on the machine take their share of
the cores, and each worker loads CIFAR-10 once, inside the loop).

**(3) Estimate for a 100-GPU cluster** running the NASNet quick-start search (`nas search --space nasnet`: 1 epoch on
5,000 images, 8 channels, N = 1) with `--gpus-per-trial 0.25`:
- Slots: 100 GPUs / 0.25 = **{slots}** trials in flight.
- Per-trial time on a slot: one NASNet quick-start trial measured here on one CPU core took {nasnet_s:.1f} s
  ({nasnet_train_s:.1f} s of training, the rest validation, params/FLOPs/latency). **Assumption** (not measured: this
  machine has no GPU): a quarter of a data-centre GPU runs it {GPU_SPEEDUP:.0f}x faster than one CPU core, so
  {nasnet_s:.1f} / {GPU_SPEEDUP:.0f} = **{gpu_trial_s:.2f} s**; plus the measured Ray overhead
  {overhead_ms:.1f} ms = {per_slot:.2f} s per trial and slot.
- Cluster bound: {slots} x 3600 / {per_slot:.2f} = **{cluster_rate:,.0f} trials/hour**.
- Driver bound: one driver does the ask/tell of every trial serially, {driver_ms:.1f} ms each (measured above with
  2 workers, {trials} trials): 3600 / {driver_ms / 1000:.4f} = **{driver_rate:,.0f} trials/hour**.
- Estimate: min of the two = **{estimate:,.0f} trials/hour**{" (driver-bound)" if driver_rate < cluster_rate else ""}.
  The driver time per trial grows with the study (trials.csv is rewritten after each trial, the sampler reads all
  trials), so for searches of many thousands of trials the driver bound falls further; with a budget like the NASNet
  paper's child training (20 epochs on 45,000 images: 180x the images of this budget, on larger networks) the
  cluster bound is the limit instead.
"""
    numbers = {
        "load_average_start": load_start,
        "load_average_end": load_end,
        "overhead_runs": runs,
        "training_runs": train,
        "nasnet_trial_s": nasnet_s,
        "nasnet_train_s": nasnet_train_s,
        "assumed_gpu_speedup": GPU_SPEEDUP,
    }
    if dry_run:
        print(body)
    else:
        record("ray", "Distributed search on Ray", body, numbers)


if __name__ == "__main__":
    app()
