"""A labelled family made here: the trained candidates of a random `nas search` run become a bench, with its budget
and its noise ceiling measured (a seeded subset trained again with another seed: Kendall tau between the two runs).

The run is a plain user run, e.g. ``nas search --space darts --sampler random --evaluator train --epochs 3
--train-images 1000 --val-images 1000 --channels 8 --layers 1 --trials 300 --run-dir runs/label-darts``; this script
harvests it (`nas bench harvest`), retrains ``--noise`` of its networks with a second seed (cached in the run
directory, so an interrupted measurement resumes), and writes ``family.json`` into the bench beside the shards:
``{family: {budget, networks, noise_tau, noise_networks, noise_how}}``, which `experiments.predictor_families`
reports and uses to decide whether the family may veto a recipe.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from experiments.record import load_numbers, record
from nas.harvest import data_set_of, jobs_from_trials
from nas_ground.atomic import atomic_path

SECOND_SEED = 1_000_033  # added to a trial's training seed for its second training


def budget_text(config: dict[str, Any]) -> str:
    opts = config.get("evaluator_options") or {}
    if data_set_of(config) == "sst2":
        return (
            f"{config['space']} networks: {opts.get('epochs', 1)} epoch(s) on {opts.get('train_images')} SST-2 "
            f"training phrases (batch {opts.get('batch_size', 32)}, AdamW lr {opts.get('lr', 1e-3):g}), dev "
            f"accuracy on {opts.get('val_images') or 872} dev sentences, one training per network (CPU, one thread)"
        )
    shape = f"cells, C={opts.get('channels')}, N={opts.get('layers')}" if "channels" in opts else "networks"
    return (
        f"{config['space']} {shape}: {opts.get('epochs')} epochs on {opts.get('train_images')} CIFAR-10 training "
        f"images (batch {opts.get('batch_size', 64)}, SGD lr {opts.get('lr', 0.05):g}), validation accuracy on "
        f"{opts.get('val_images')} held-out images, one training per network (CPU, one thread)"
    )


def family_of(config: dict[str, Any]) -> str:
    """The family name `predictors.training.families` gives the run's records: the space, with its data set where
    that is not CIFAR-10."""
    import pandas as pd

    from predictors.training import families

    return str(families(pd.DataFrame({"space": [config["space"]], "dataset": [data_set_of(config)]}))[0])


def rebuild(key: str, bench: str, workers: int) -> None:
    """The bench of a family recorded by this script (``experiments/results/KEY.json``: its run's config and every
    label), built again without training: the records' features come from each architecture at its seeded
    initialisation, as a harvest's do; the ONNX files carry those initial weights instead of the trained ones."""
    from onnx_bench.bench import build

    numbers = load_numbers(key)
    config, labels = numbers["config"], numbers["labels"]
    rows = [
        {"number": str(x["trial"]), "state": "COMPLETE", "arch": x["arch"], "accuracy": str(x["accuracy"])}
        for x in labels
    ]
    run_name = Path(numbers["args"]["run"]).name
    start = time.perf_counter()
    result = build(jobs_from_trials(config, rows, run_name), bench, workers=workers)
    print(f"{bench}: {result.added} added, {result.skipped} present ({time.perf_counter() - start:.0f} s)")
    info = {k: numbers[k] for k in ("budget", "networks", "noise_tau", "noise_networks", "noise_how")}
    write_family(Path(bench), family_of(config), info)


def write_family(bench: Path, family: str, info: dict[str, Any]) -> None:
    with atomic_path(bench / "family.json") as tmp:
        tmp.write_text(json.dumps({family: info}, indent=1))


app = typer.Typer(add_completion=False, rich_markup_mode="markdown")


@app.command(help=__doc__)
def main(
    bench: Annotated[str, typer.Option(help="Bench directory to harvest the run into.")],
    run: Annotated[str | None, typer.Option(help="Run directory of a `nas search --evaluator train` run.")] = None,
    noise: Annotated[int, typer.Option(help="Networks trained a second time for the noise ceiling.")] = 40,
    workers: Annotated[int, typer.Option(help="Worker processes of the harvest.")] = 1,
    data_dir: Annotated[str | None, typer.Option(help="Data directory.")] = None,
    harvest: Annotated[
        bool, typer.Option(help="Harvest the run into the bench and record (off: only the second trainings).")
    ] = True,
    from_result: Annotated[
        str | None,
        typer.Option(help="Rebuild the bench of a recorded family (experiments/results/KEY.json) without training."),
    ] = None,
) -> None:
    if from_result:
        rebuild(from_result, bench, workers)
        return
    if run is None:
        raise typer.BadParameter("required (unless --from-result)", param_hint="'--run'")
    import torch

    from nas.evaluators.train import TrainEvaluator
    from nas.harvest import harvest_jobs
    from nas.search.config import trial_seed
    from onnx_bench.bench import build
    from predictors.metrics import kendall_tau
    from search_spaces import get_space

    torch.set_num_threads(1)
    run_dir = Path(run)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    family = family_of(config)
    start = time.perf_counter()
    if harvest:
        result = build(harvest_jobs(run_dir), bench, workers=workers)
        print(f"{bench}: {result.added} added, {result.skipped} present ({time.perf_counter() - start:.0f} s)")
    with open(run_dir / "trials.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["state"] == "COMPLETE"]
    # the first networks of a random-sampler run are a random sample of the space: the same subset however far
    # the run has gone, so the second trainings can start while the run goes on
    pick = sorted(rows, key=lambda r: int(r["number"]))[:noise]
    cache_path = run_dir / "noise.json"
    cache: dict[str, float] = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    space = get_space(str(config["space"]), **(config.get("space_options") or {}))
    evaluator = TrainEvaluator(space, data_dir=data_dir, **dict(config.get("evaluator_options") or {}))
    start = time.perf_counter()
    for i, row in enumerate(pick):
        if row["number"] in cache:
            continue
        arch = space.decode(row["arch"])
        seed = trial_seed(int(config["seed"]), int(row["number"])) + SECOND_SEED
        cache[row["number"]] = float(evaluator.fit(arch, evaluator.build(arch, seed), seed)["accuracy"])
        cache_path.write_text(json.dumps(cache))
        print(f"{i + 1}/{len(pick)} trial {row['number']}: {row['accuracy']} then {cache[row['number']]}")
    print(f"second trainings: {time.perf_counter() - start:.0f} s")
    if not harvest:
        return
    first = [float(r["accuracy"]) for r in pick]
    second = [cache[r["number"]] for r in pick]
    tau = kendall_tau(first, second)
    info = {
        "budget": budget_text(config),
        "networks": len(rows),
        "noise_tau": tau,
        "noise_networks": len(pick),
        "noise_how": (
            f"Kendall tau between two trainings (two seeds) of the first {len(pick)} networks of the random run"
        ),
    }
    write_family(Path(bench), family, info)
    accs = [float(r["accuracy"]) for r in rows]
    body = (
        f"{len(rows)} {family} networks drawn at random (`nas search --sampler random`, seed {config['seed']}) and "
        f"trained once each: {info['budget']}. Validation accuracy {min(accs):.1f} to {max(accs):.1f} % (mean "
        f"{sum(accs) / len(accs):.1f}). **Noise ceiling: Kendall tau {tau:.3f}** between two trainings (seeds) of "
        f"the first {len(pick)} of them (the second trainings are kept in the run directory, `noise.json`)."
        + (" Below 0.5: the family is reported but cannot veto a predictor recipe." if tau < 0.5 else "")
    )
    # every label, so the family can be rebuilt without training again (a record's features come from the
    # architecture at its seeded initialisation: `nas bench build` jobs of these strings and accuracies)
    labels = [
        {"trial": int(r["number"]), "arch": r["arch"], "accuracy": float(r["accuracy"])}
        | ({"accuracy_second_seed": cache[r["number"]]} if r["number"] in cache else {})
        for r in sorted(rows, key=lambda r: int(r["number"]))
    ]
    numbers = {"args": {"run": run}, **info, "config": config, "labels": labels}
    record(f"label-{family}", f"Labelled family: {family} cells trained here", body, numbers)
    print(body)


if __name__ == "__main__":
    app()
