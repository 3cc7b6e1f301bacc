"""``nas search`` and ``nas evaluate``: run a search (or resume it), evaluate one architecture."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nas.cli.app import app, err, out
from nas_ground.errors import UserInputError

# The quick start: `nas search --space nasnet` with nothing else trains every candidate on real CIFAR-10
# images and finishes in a few minutes on 2 CPU cores (measured in BENCHMARKS.md).
QUICK_TRAIN = {"epochs": 1, "train_images": 5000, "val_images": 1000, "batch_size": 64}

QUICK_NETWORK = {"nasnet": {"channels": 8, "layers": 1}, "darts": {"channels": 8, "layers": 1}}


@app.command()
def search(
    space: Annotated[
        str | None, typer.Option(help="Search space: nasnet, darts, nb201, transformer, transformer-small.")
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(help="What train evaluators train on: cifar10 (default), cifar100, folder:PATH, npz:PATH."),
    ] = None,
    evaluator: Annotated[
        str | None,
        typer.Option(
            help="train (CIFAR-10 / SST-2), table (NB201 ground truth), predictor, predictor+train, "
            "proxy:NAME (a training-free proxy), ensemble (mean percentile of proxies), "
            "supernet (inherited weights, --supernet)."
        ),
    ] = None,
    objectives: Annotated[str | None, typer.Option(help="Comma list of NAME:max|min.")] = None,
    trials: Annotated[int | None, typer.Option(help="Trials to finish (completed or failed).")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampler seed.")] = None,
    sampler: Annotated[str | None, typer.Option(help="tpe (default), nsga2, random or coarse2fine.")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Run directory; an existing one is resumed.")] = None,
    resume: Annotated[bool, typer.Option(help="Resume --run-dir, or the latest run of the space.")] = False,
    storage: Annotated[
        str | None,
        typer.Option(help="Optuna storage URL, e.g. postgresql://user@host/db [default: journal in run dir]."),
    ] = None,
    storage_patience: Annotated[
        float | None,
        typer.Option(help="Seconds to retry a storage that drops mid-search before failing [default: 60]."),
    ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file with any of these settings.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (else $NAS_DATA_DIR, ~/.cache).")] = None,
    epochs: Annotated[int | None, typer.Option(help="train: epochs per candidate.")] = None,
    train_images: Annotated[
        int | None, typer.Option(help="train: training images (sentences for text spaces) per candidate.")
    ] = None,
    val_images: Annotated[
        int | None, typer.Option(help="train: validation images (at most the 872 SST-2 dev sentences).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="train: batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="train: peak learning rate.")] = None,
    channels: Annotated[int | None, typer.Option(help="Initial channels of built networks.")] = None,
    layers: Annotated[int | None, typer.Option(help="nasnet: normal cells per stage (N).")] = None,
    device: Annotated[str | None, typer.Option(help="train: auto, cpu or cuda.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds after which no new trial starts.")] = None,
    trial_timeout: Annotated[
        float | None, typer.Option(help="Seconds of evaluation after which a trial stops and fails with that reason.")
    ] = None,
    heartbeat: Annotated[
        float | None,
        typer.Option(help="Seconds between heartbeats of running trials [default: 10]; silent 6 beats: owner gone."),
    ] = None,
    predictor: Annotated[Path | None, typer.Option(help="predictor evaluators: predictor file.")] = None,
    supernet: Annotated[Path | None, typer.Option(help="supernet evaluator: RUN_DIR/checkpoint.pt.")] = None,
    rungs: Annotated[
        str | None,
        typer.Option(
            help="Multi-fidelity (train): rung budgets in epochs, e.g. 1,3,9; a candidate continues to the next rung "
            "only in the top 1/eta of its rung (MO-ASHA); the last rung is the epochs."
        ),
    ] = None,
    eta: Annotated[float | None, typer.Option(help="Multi-fidelity: reduction factor [default: 3].")] = None,
    fidelity: Annotated[str | None, typer.Option(help="Multi-fidelity: the rungs' unit (epochs).")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Evaluate this many trials at once as Ray tasks (a local Ray runtime).")
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Run the tasks on an existing Ray cluster: auto, HOST:PORT or ray://HOST:PORT."),
    ] = None,
    cpus_per_trial: Annotated[
        float | None, typer.Option(help="Ray: CPUs (and torch threads) per trial [default: 1].")
    ] = None,
    gpus_per_trial: Annotated[
        float | None, typer.Option(help="Ray: GPUs per trial, fractions share a GPU [default: 0].")
    ] = None,
) -> None:
    """Run (or resume) a multi-objective architecture search; writes the Pareto front to the run directory."""
    from nas.search import Search, SearchConfig, latest_run_dir, load_config_file

    data: dict[str, Any] = load_config_file(config) if config else {}
    given = {
        "space": space,
        "dataset": dataset,
        "evaluator": evaluator,
        "objectives": objectives,
        "trials": trials,
        "seed": seed,
        "sampler": sampler,
        "storage": storage,
        "storage_patience": storage_patience,
        "run_dir": str(run_dir) if run_dir else None,
        "data_dir": str(data_dir) if data_dir else None,
        "timeout": timeout,
        "trial_timeout": trial_timeout,
        "heartbeat": heartbeat,
        "workers": workers,
        "ray_address": ray_address,
        "cpus_per_trial": cpus_per_trial,
        "gpus_per_trial": gpus_per_trial,
        "rungs": rungs,
        "eta": eta,
        "fidelity": fidelity,
    }
    data.update({k: v for k, v in given.items() if v is not None})
    cfg = SearchConfig.from_dict(data, source=str(config) if config else "options")
    flags = {
        "epochs": epochs,
        "train_images": train_images,
        "val_images": val_images,
        "batch_size": batch_size,
        "lr": lr,
        "channels": channels,
        "layers": layers,
        "device": device,
        "predictor": str(predictor) if predictor else None,
        "supernet": str(supernet) if supernet else None,
    }
    trains = cfg.evaluator in ("train", "predictor+train")
    quick = {k: v for k, v in QUICK_TRAIN.items() if not (cfg.rungs and k == "epochs")}  # rungs set the epochs
    cfg.evaluator_options = {
        **(quick if trains else {}),
        **(QUICK_NETWORK.get(cfg.space, {}) if cfg.evaluator != "table" else {}),
        **cfg.evaluator_options,
        **{k: v for k, v in flags.items() if v is not None},
    }
    if resume:
        if cfg.run_dir is None:
            latest = latest_run_dir(cfg.space)
            if latest is None:
                raise UserInputError(f"--resume: no earlier run of space {cfg.space!r} under runs/")
            cfg.run_dir = str(latest)
        elif not (Path(cfg.run_dir) / "config.yaml").exists():
            raise UserInputError(f"--resume: {cfg.run_dir} holds no search to resume")
    job = Search(cfg)
    _run_with_progress(job)


@app.command()
def evaluate(
    space: Annotated[str, typer.Option(help="Search space: nasnet, darts, nb201, transformer, transformer-small.")],
    arch: Annotated[str, typer.Option(help="Encoded architecture (the space's canonical string).")],
    evaluator: Annotated[str, typer.Option(help="train or table.")] = "train",
    config: Annotated[Path | None, typer.Option(help="YAML file with evaluator_options.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (else $NAS_DATA_DIR, ~/.cache).")] = None,
    dataset: Annotated[str, typer.Option(help="train: cifar10, cifar100, folder:PATH or npz:PATH.")] = "cifar10",
) -> None:
    """Evaluate one architecture and print its metrics as JSON."""
    import json

    from nas.evaluators import TrialFailed, make_evaluator
    from nas.search import load_config_file
    from search_spaces import get_space

    search_space = get_space(space)
    decoded = search_space.decode(arch)
    options = load_config_file(config).get("evaluator_options", {}) if config else {}
    if evaluator == "train":
        options = {**QUICK_TRAIN, **QUICK_NETWORK.get(space, {}), **options}
        if dataset != "cifar10":
            options["dataset"] = dataset
    job = make_evaluator(evaluator, search_space, data_dir=str(data_dir) if data_dir else None, **options)
    try:
        metrics = job.evaluate(decoded)
    except TrialFailed as exc:
        err.print(f"evaluation failed: {exc}", markup=False)
        raise typer.Exit(1) from exc
    out.print_json(json.dumps({"space": space, "arch": search_space.encode(decoded), "metrics": metrics}))


def _run_with_progress(job: Any) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    err.print(f"run dir: {job.run_dir}")
    with Progress(
        TextColumn("[bold]search"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[last]}"),
        console=err,
    ) as progress:
        task = progress.add_task("search", total=job.cfg.trials, last="")

        def on_trial(trial: Any, done: int, total: int) -> None:
            from nas.search.pareto import front_hypervolume

            last = ""
            if trial is not None:
                values = trial.values or []
                last = f"trial {trial.number} {trial.state.name.lower()} " + " ".join(f"{v:.4g}" for v in values)
                # The current front's hypervolume, objectives scaled to the range seen so far (higher is better).
                last += f"  front hv {front_hypervolume(job.study, job.objectives):.3f}"
            progress.update(task, completed=min(done, total), last=last)

        result = job.run(on_trial)
    _print_pareto(result, job)


def _print_pareto(result: Any, job: Any) -> None:
    from nas.cli.show import pareto_table

    title = f"Pareto front: {len(result.pareto)} of {result.completed} completed ({result.failed} failed)"
    out.print(pareto_table(result.pareto, job.objectives, title, pareto_json=result.run_dir / "pareto.json"))
    out.print(f"outputs in {result.run_dir}: pareto.json, pareto.png, pareto/*.onnx, trials.csv")
    out.print(f"train a member for real: nas train {result.run_dir} --member TRIAL --epochs E --int8", highlight=False)
