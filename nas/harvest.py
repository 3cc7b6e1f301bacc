"""Harvesting a finished `nas search` run: its trained candidates become ONNX-Bench jobs."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import yaml

from nas_ground.errors import UserInputError
from onnx_bench.bench import Job
from search_spaces.base import arch_digest


def harvest_jobs(run_dir: str | Path) -> list[Job]:
    """Jobs for every completed trial of a `nas search` run that trained its candidates."""
    run = Path(run_dir)
    config_path, trials_path = run / "config.yaml", run / "trials.csv"
    if not config_path.is_file() or not trials_path.is_file():
        raise UserInputError(f"{run} is not a search run directory (config.yaml and trials.csv expected)")
    config = yaml.safe_load(config_path.read_text()) or {}
    with open(trials_path, newline="") as f:
        rows = list(csv.DictReader(f))
    return jobs_from_trials(config, rows, run.resolve().name, run)


def jobs_from_trials(
    config: dict[str, Any], rows: list[dict[str, str]], run_name: str, run: Path | None = None
) -> list[Job]:
    """Jobs for the completed ``rows`` (trials.csv rows: number, state, arch and metric columns) of a run with
    ``config`` (its config.yaml), sourced ``RUN_NAME#TRIAL``; with the ``run`` directory, a trial's trained weights
    go with it where they were kept (without: the records are the same but for the ONNX file's weights)."""
    if config.get("evaluator") not in ("train", "predictor+train"):  # only these train their candidates
        return []
    options = dict(config.get("evaluator_options") or {})
    build_keys = ("channels", "layers", "cells_per_stage", "drop_path", "auxiliary", "num_classes")
    build_options = {k: options[k] for k in build_keys if k in options}
    budget = {k: float(options[k]) for k in ("epochs", "train_images", "val_images") if k in options}
    dataset = data_set_of(config)
    jobs = []
    for row in rows:
        if row["state"] != "COMPLETE":
            continue
        metrics = {k: float(v) for k, v in row.items() if k not in ("number", "state", "arch", "fail_reason") and v}
        metrics.update({f"budget_{k}": v for k, v in budget.items()})
        weights = _weights_path(run, row["arch"]) if run is not None else None
        jobs.append(
            Job(
                config["space"],
                row["arch"],
                f"{run_name}#{row['number']}",
                metrics,
                build_options,
                dict(config.get("space_options") or {}),
                str(weights) if weights is not None and weights.exists() else None,
                int(options.get("seed", 0)),
                dataset=dataset,
            )
        )
    return jobs


def data_set_of(config: dict[str, Any]) -> str:
    """The data set a run's candidates were trained on: SST-2 for a text space (whatever its ``dataset`` says),
    else its ``dataset``."""
    from search_spaces import get_space

    space = get_space(str(config["space"]), **dict(config.get("space_options") or {}))
    if getattr(space, "modality", "image") == "text":
        return "sst2"
    return str(config.get("dataset") or "cifar10")


def _weights_path(run: Path, arch: str) -> Path:
    return run / "models" / f"{arch_digest(arch)}.pt"
