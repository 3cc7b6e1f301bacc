"""The `nas` command line: ``nas search`` and friends; user mistakes exit with code 2 and one line."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from nas_ground.errors import UserInputError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Neural architecture search.",
)
err = Console(stderr=True)
out = Console()

# The quick start: `nas search --space nasnet` with nothing else trains every candidate on real CIFAR-10
# images and finishes in a few minutes on 2 CPU cores (measured in BENCHMARKS.md).
QUICK_TRAIN = {"epochs": 1, "train_images": 5000, "val_images": 1000, "batch_size": 64}
QUICK_NETWORK = {"nasnet": {"channels": 8, "layers": 1}, "darts": {"channels": 8, "layers": 1}}


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)


@app.command()
def search(
    space: Annotated[
        str | None, typer.Option(help="Search space: nasnet, darts, nb201, transformer, transformer-small.")
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
    sampler: Annotated[str | None, typer.Option(help="nsga2, tpe or random.")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Run directory; an existing one is resumed.")] = None,
    resume: Annotated[bool, typer.Option(help="Resume --run-dir, or the latest run of the space.")] = False,
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL (default: journal in run dir).")] = None,
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
    predictor: Annotated[Path | None, typer.Option(help="predictor evaluators: predictor file.")] = None,
    supernet: Annotated[Path | None, typer.Option(help="supernet evaluator: RUN_DIR/checkpoint.pt.")] = None,
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
        "evaluator": evaluator,
        "objectives": objectives,
        "trials": trials,
        "seed": seed,
        "sampler": sampler,
        "storage": storage,
        "run_dir": str(run_dir) if run_dir else None,
        "data_dir": str(data_dir) if data_dir else None,
        "timeout": timeout,
        "workers": workers,
        "ray_address": ray_address,
        "cpus_per_trial": cpus_per_trial,
        "gpus_per_trial": gpus_per_trial,
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
    cfg.evaluator_options = {
        **(QUICK_TRAIN if trains else {}),
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
    job = make_evaluator(evaluator, search_space, data_dir=str(data_dir) if data_dir else None, **options)
    try:
        metrics = job.evaluate(decoded)
    except TrialFailed as exc:
        err.print(f"evaluation failed: {exc}", markup=False)
        raise typer.Exit(1) from exc
    out.print_json(json.dumps({"space": space, "arch": search_space.encode(decoded), "metrics": metrics}))


def _parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (values parsed as YAML scalars) into a dict."""
    import yaml

    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserInputError(f"bad option {pair!r}: write KEY=VALUE")
        options[key] = yaml.safe_load(value)
    return options


@app.command("export")
def export_cmd(
    space: Annotated[str, typer.Option(help="Search space: nasnet, darts, nb201, transformer, transformer-small.")],
    arch: Annotated[str, typer.Option(help="Encoded architecture.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="ONNX file to write.")],
    seed: Annotated[int, typer.Option(help="Weight initialisation seed (same seed, same bytes).")] = 0,
    option: Annotated[list[str] | None, typer.Option(help="Build option KEY=VALUE, e.g. channels=16.")] = None,
    dynamo: Annotated[bool, typer.Option(help="Use the dynamo exporter (slower) instead of the legacy one.")] = False,
    parity: Annotated[bool, typer.Option(help="Check onnxruntime against torch on the same input.")] = False,
) -> None:
    """Build an architecture and export it to a checked ONNX file (opset 17, shapes inferred)."""
    from onnx_bench.export import export_architecture, write_atomic
    from search_spaces import get_space

    search_space = get_space(space)
    exported = export_architecture(
        search_space,
        search_space.decode(arch),
        seed=seed,
        build_options=_parse_options(option),
        dynamo=dynamo,
        parity=parity,
    )
    write_atomic(exported.data, output)
    out.print(f"{output} sha256={exported.sha256} bytes={len(exported.data)}", highlight=False)


@app.command()
def describe(
    file: Annotated[Path, typer.Argument(help="An ONNX file, from anywhere.")],
    format: Annotated[str, typer.Option("--format", help="chain_slim (ONNX-Net) or compact.")] = "chain_slim",
) -> None:
    """Print the text description of an ONNX model."""
    from onnx_bench.io import load_onnx
    from onnx_bench.text import FORMATS
    from onnx_bench.text import describe as describe_model

    if format not in FORMATS:
        raise UserInputError(f"unknown text format {format!r}; valid: {', '.join(FORMATS)}")
    text = describe_model(load_onnx(file, check=False), format)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


@app.command()
def graph(
    file: Annotated[Path, typer.Argument(help="An ONNX file, from anywhere.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the graph summaries of an ONNX model: ops, depth, params, MACs/FLOPs, peak activation."""
    from onnx_bench.graph import summarize
    from onnx_bench.io import load_onnx

    _print_mapping(summarize(load_onnx(file, check=False)), str(file), json_out)


def _print_mapping(summary: dict[str, Any], title: str, json_out: bool) -> None:
    """A flat summary as one JSON line or as a two-column table."""
    import json

    if json_out:
        sys.stdout.write(json.dumps(summary) + "\n")
        return
    table = Table(title=title, show_header=False)
    for key, value in summary.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict | list) else str(value))
    out.print(table)


bench_app = typer.Typer(help="The ONNX-Bench data set: build, harvest, upgrade, info.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


def _bench_progress(title: str) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn(f"[bold]{title}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err)


@bench_app.command("build")
def bench_build(
    space: Annotated[str, typer.Option(help="nb201 (every cell of the table) or nbmacro (every distinct network).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Bench directory (created; existing records kept).")],
    limit: Annotated[int | None, typer.Option(help="Only the first N architectures (table order).")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (else $NAS_DATA_DIR, ~/.cache).")] = None,
) -> None:
    """Build the records of a benchmark table's networks (incremental: records already present are skipped)."""
    from nas.tables import load_nb201_identities, load_nb201_table, load_nbmacro_table, nbmacro_table_path
    from nas_ground.data import resolve_data_dir
    from onnx_bench.bench import nb201_jobs, nbmacro_jobs

    if space not in ("nb201", "nbmacro"):
        raise UserInputError(f"bench build covers --space nb201 or nbmacro, not {space!r}; use `nas bench harvest`")
    if limit is not None and limit < 1:
        raise UserInputError(f"--limit {limit} must be >= 1")
    if space == "nbmacro":
        jobs = nbmacro_jobs(load_nbmacro_table(str(nbmacro_table_path(data_dir))), limit)
    else:
        csv_path = str(resolve_data_dir(data_dir) / "nb201" / "nb201.csv")
        jobs = nb201_jobs(load_nb201_table(csv_path), limit, load_nb201_identities(csv_path))
    _run_bench(jobs, out_dir, workers, f"bench {space}")


@bench_app.command("harvest")
def bench_harvest(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories of `nas search` with --evaluator train.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Bench directory.")],
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
) -> None:
    """Add every trained candidate of earlier search runs (with their trained weights)."""
    from nas.harvest import harvest_jobs

    jobs = [job for run in run_dirs for job in harvest_jobs(run)]
    _run_bench(jobs, out_dir, workers, "harvest")


def _run_bench(jobs: list[Any], out_dir: Path, workers: int, title: str) -> None:
    from onnx_bench.bench import build

    with _bench_progress(title) as progress:
        task = progress.add_task(title, total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        result = build(jobs, out_dir, workers=workers, on_progress=on_progress)
    out.print(f"{out_dir}: {result.added} records added, {result.skipped} already present")


@bench_app.command("upgrade")
def bench_upgrade(
    directory: Annotated[Path, typer.Argument(help="Bench directory built by an older version.")],
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
) -> None:
    """Add the columns newer predictors read (activation features) to an existing bench, shard by shard."""
    from onnx_bench.bench import upgrade

    with _bench_progress("upgrade") as progress:
        task = progress.add_task("upgrade", total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        updated = upgrade(directory, workers=workers, on_progress=on_progress)
    out.print(f"{directory}: {updated} records upgraded")


@bench_app.command("info")
def bench_info(
    directory: Annotated[Path, typer.Argument(help="Bench directory.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Summarise a bench: records per space, metric columns, token lengths, size on disk."""
    from onnx_bench.bench import info

    _print_mapping(info(directory), str(directory), json_out)


predictor_app = typer.Typer(help="The zero-shot predictor: train and evaluate on an ONNX-Bench.", no_args_is_help=True)
app.add_typer(predictor_app, name="predictor")


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError as exc:
        raise UserInputError(f"--hidden {text!r} must be comma-separated positive integers") from exc
    if any(w < 1 for w in widths):
        raise UserInputError(f"--hidden {text!r} must be comma-separated positive integers")
    return widths


@predictor_app.command("train")
def predictor_train(
    bench: Annotated[Path, typer.Option(help="Bench directory (nas bench build / harvest).")],
    target: Annotated[str, typer.Option(help="Metric column to predict, e.g. cifar10_valid_acc.")],
    out_file: Annotated[Path, typer.Option("--out", help="Predictor file to write (.safetensors).")],
    space: Annotated[str | None, typer.Option(help="Only records of this space.")] = None,
    samples: Annotated[
        int | None,
        typer.Option(help="Train on about N records of randomly drawn networks; the other networks are held out."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split and of the head.")] = 0,
    loss: Annotated[str, typer.Option(help="ranking (pairwise margin) or mse.")] = "ranking",
    text_format: Annotated[str, typer.Option("--format", help="Text format: compact or chain_slim.")] = "compact",
    encoder: Annotated[str, typer.Option(help="sentence-transformers model (name or directory).")] = "",
    epochs: Annotated[int, typer.Option(help="Training epochs of the head.")] = 300,
    features: Annotated[bool, typer.Option(help="Feed graph features (summaries, WL counts) to the head.")] = True,
    embedding: Annotated[bool, typer.Option(help="Feed the text embedding to the head.")] = True,
    ensemble: Annotated[int, typer.Option(help="MLPs per view, trained with successive seeds, averaged.")] = 5,
    core_weight: Annotated[
        float, typer.Option(help="Weight of the core view (embedding + compact features) against the full view.")
    ] = 0.5,
    core_view: Annotated[
        str,
        typer.Option(
            help="Graph features of the core view: compact (scale, activation, operator shares) or universal "
            "(scale and activation statistics only, which read alike in every family)."
        ),
    ] = "compact",
    hidden: Annotated[str, typer.Option(help="Hidden widths of each MLP, comma-separated (empty: linear).")] = "256,64",
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay of the head.")] = 1e-3,
    max_steps: Annotated[int, typer.Option(help="Optimizer steps per MLP at most.")] = 2000,
    monotone: Annotated[
        bool, typer.Option("--monotone", help="Positive weights: the score never falls when a feature rises.")
    ] = False,
    finetune_encoder: Annotated[
        bool,
        typer.Option(
            "--finetune-encoder",
            help="Fine-tune the encoder on the training texts first (GPU when present); it is saved as "
            "OUT.encoder/ and the predictor names it.",
        ),
    ] = False,
    finetune_epochs: Annotated[int, typer.Option(help="Epochs of encoder fine-tuning.")] = 1,
) -> None:
    """Train a predictor on a bench; its held-out figures are stored in the file."""
    from onnx_bench.text import FORMATS
    from predictors.encoder import DEFAULT_ENCODER, Encoder
    from predictors.predictor import TrainOptions
    from predictors.training import fit, identities, load_bench_data, split

    if text_format not in FORMATS:
        raise UserInputError(f"unknown --format {text_format!r}; valid: {', '.join(FORMATS)}")
    options = TrainOptions(
        loss=loss,
        epochs=epochs,
        seed=seed,
        use_features=features,
        use_embedding=embedding,
        ensemble=ensemble,
        core_weight=core_weight,
        core_view=core_view,
        hidden=_widths(hidden),
        weight_decay=weight_decay,
        max_steps=max_steps,
        monotone=monotone,
    )
    if finetune_encoder and not embedding:
        raise UserInputError("--finetune-encoder needs the text embedding (drop --no-embedding)")
    enc = Encoder(encoder or DEFAULT_ENCODER)
    data = load_bench_data(bench, target, space=space, text_format=text_format, encoder=enc, show_progress=True)
    train_idx, held_out = split(identities(data.frame), samples, seed)
    if finetune_encoder:
        import torch

        from predictors.finetune import FinetuneOptions
        from predictors.finetune import finetune_encoder as finetune

        if not torch.cuda.is_available():
            err.print("no GPU: fine-tuning the encoder on the CPU (slow for more than a few hundred texts)")
        texts = data.frame[f"text_{text_format}"].astype(str).tolist()
        encoder_dir = finetune(
            enc,
            [texts[i] for i in train_idx],
            data.y[train_idx],
            out_file.with_name(out_file.name + ".encoder").resolve(),
            FinetuneOptions(epochs=finetune_epochs, seed=seed),
            groups=data.groups[train_idx],
        )
        enc = Encoder(str(encoder_dir))
        data = load_bench_data(bench, target, space=space, text_format=text_format, encoder=enc, show_progress=True)
    predictor = fit(
        data, train_idx, options, encoder_name=enc.name, text_format=text_format, held_out=held_out, bench=str(bench)
    )
    predictor.save(out_file)
    figures = predictor.meta.get("evaluation", {}).get("held_out")
    out.print(f"{out_file}: trained on {len(train_idx)} records of {data.target}")
    if figures:
        _print_mapping({k: round(v, 4) for k, v in figures.items()}, "held-out records", False)


@predictor_app.command("eval")
def predictor_eval(
    predictor_file: Annotated[Path, typer.Argument(help="Predictor file.")],
    bench: Annotated[Path, typer.Option(help="Bench directory.")],
    space: Annotated[str | None, typer.Option(help="Only records of this space.")] = None,
    target: Annotated[str | None, typer.Option(help="Metric column (default: the predictor's own).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Kendall tau, Spearman rho, precision@k and MAE of a predictor on a bench. Records whose network (or a
    twin) the predictor was trained on are reported separately, with a warning."""
    import json

    import numpy as np

    from predictors.encoder import Encoder
    from predictors.predictor import Predictor
    from predictors.training import evaluate, load_bench_data, trained_on

    predictor = Predictor.load(predictor_file)
    goal = target or predictor.meta.get("training_data", {}).get("target")
    if not goal:
        raise UserInputError("the predictor names no target; pass --target")
    data = load_bench_data(
        bench, goal, space=space, text_format=predictor.text_format, encoder=Encoder(predictor.encoder_name)
    )
    seen = trained_on(predictor, data.frame)
    title = f"{predictor_file} on {bench} ({data.target})"
    if not seen.any():
        _print_mapping({k: round(v, 4) for k, v in evaluate(predictor, data).items()}, title, json_out)
        return
    err.print(
        f"warning: {int(seen.sum())} of {len(seen)} records are networks the predictor was trained on (or twins); "
        "their figures are reported separately and are not zero-shot figures",
        soft_wrap=True,
    )
    report: dict[str, Any] = {}
    for label, mask in (("unseen", ~seen), ("trained_on", seen), ("all", np.ones_like(seen))):
        idx = np.flatnonzero(mask)
        figures = evaluate(predictor, data.subset(idx)) if len(idx) >= 2 else {"n": float(len(idx))}
        report[label] = {k: round(v, 4) for k, v in figures.items()}
    if json_out:
        print(json.dumps(report))
        return
    for label, figures in report.items():
        _print_mapping(figures, f"{title}: {label} records", False)


@app.command()
def predict(
    files: Annotated[list[Path], typer.Argument(help="ONNX files (from anywhere).")],
    predictor_file: Annotated[
        Path | None, typer.Option("--predictor", help="Predictor file (default: shipped).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON line per file.")] = False,
) -> None:
    """Score ONNX networks without training them: higher is better. ``uncertainty`` is the spread of the
    predictor's ensemble; a file far outside the networks the predictor was trained on gets a warning."""
    import json

    from predictors.zero_shot import NOVELTY_WARN, load_predictor, predict_files

    predictor = load_predictor(predictor_file)
    scores, spreads, novelty = predict_files(files, predictor)
    for f, score, spread, (feature, distance) in zip(files, scores, spreads, novelty, strict=True):
        if distance > NOVELTY_WARN:
            err.print(
                f"warning: {f} lies far outside the networks the predictor was trained on ({feature} is "
                f"{distance:.1f} standard deviations beyond their range); its score is an extrapolation",
                soft_wrap=True,
            )
        if json_out:
            row = {"file": str(f), "score": round(float(score), 6), "uncertainty": round(float(spread), 6)}
            print(json.dumps({**row, "outside_training": feature or None, "outside_by": round(distance, 3)}))
        else:
            out.print(f"{score:10.4f} +- {spread:.4f}  {f}", highlight=False)


@app.command()
def proxy(
    files: Annotated[list[Path] | None, typer.Argument(help="ONNX files (activation proxies only).")] = None,
    proxy_list: Annotated[str, typer.Option("--proxy", help="Comma list of proxies (see --list).")] = "naswot,wpca",
    space: Annotated[str | None, typer.Option(help="Search space of --arch / --arch-file.")] = None,
    arch: Annotated[list[str] | None, typer.Option(help="Encoded architecture (repeatable).")] = None,
    arch_file: Annotated[Path | None, typer.Option(help="File with one encoded architecture a line.")] = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Append JSON lines here; architectures already in it are skipped.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images / sentences in the fixed batch.")] = 64,
    eta: Annotated[float, typer.Option(help="vpca/wpca: share of variance the components must exceed.")] = 0.99,
    seed: Annotated[int, typer.Option(help="Seed of the weights and of the batch.")] = 0,
    channels: Annotated[int | None, typer.Option(help="Initial channels of built networks.")] = None,
    layers: Annotated[int | None, typer.Option(help="nasnet: normal cells per stage (N).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (else $NAS_DATA_DIR, ~/.cache).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON line per architecture.")] = False,
    list_proxies: Annotated[bool, typer.Option("--list", help="List the proxies and exit.")] = False,
) -> None:
    """Training-free proxies of architectures (``--space S --arch A``) or of ONNX files, no training."""
    import json

    from predictors.proxies import ACTIVATION_PROXIES, ProxyConfig, ProxyError, parse_proxy_names, proxy_names

    if list_proxies:
        for name in proxy_names():
            kind = "activation (ONNX too)" if name in ACTIVATION_PROXIES else "torch module"
            out.print(f"{name:10s} {kind}", highlight=False)
        return
    names = parse_proxy_names(proxy_list)
    config = ProxyConfig(seed=seed, batch_size=batch_size, eta=eta)
    data = str(data_dir) if data_dir else None
    if files and (arch or arch_file or space):
        raise UserInputError("give ONNX files or --space with --arch/--arch-file, not both")

    def emit(key: str, value: str, values: dict[str, float], sink: Any) -> None:
        row = {key: value, **{k: (None if v != v else v) for k, v in values.items()}}
        line = json.dumps(row)
        if sink is not None:
            sink.write(line + "\n")
            sink.flush()
        if json_out:
            print(line, flush=True)
        else:
            cells = "  ".join(f"{k}={v:.6g}" for k, v in values.items())
            out.print(f"{cells}  {value}", highlight=False, soft_wrap=True)

    try:
        if files:
            from predictors.proxies.onnx_act import onnx_proxies

            for f in files:
                values, notes = onnx_proxies(f, names, config, data)
                for note in notes:
                    err.print(f"{f}: {note}", markup=False, highlight=False)
                emit("file", str(f), values, None)
            return
        if space is None or not (arch or arch_file):
            raise UserInputError("give ONNX files, or --space with --arch or --arch-file")
        from nas.evaluators.proxy import _ProxyScorer
        from search_spaces import get_space

        search_space = get_space(space)
        encoded = list(arch or [])
        if arch_file is not None:
            try:
                lines = arch_file.read_text().splitlines()
            except OSError as exc:
                raise UserInputError(f"cannot read --arch-file {arch_file}: {exc.strerror or exc}") from exc
            encoded += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        decoded = [search_space.decode(a) for a in encoded]  # every line checked before any work
        done: set[str] = set()
        if out_file is not None and out_file.exists():
            for line in out_file.read_text().splitlines():
                try:
                    done.add(json.loads(line)["arch"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a kill: its architecture is scored again
        build = {k: v for k, v in {"channels": channels, "layers": layers}.items() if v is not None}
        options: dict[str, Any] = {"seed": seed, "batch_size": batch_size, "eta": eta, **build}
        scorer = _ProxyScorer(search_space, names, data, options)
        sink = out_file.open("a") if out_file is not None else None
        if sink is not None and out_file is not None and out_file.stat().st_size:
            with out_file.open("rb") as tail:
                tail.seek(-1, 2)
                if tail.read(1) != b"\n":
                    sink.write("\n")  # end a line cut by a kill, so the next record starts clean
        try:
            for a in decoded:
                key = search_space.encode(a)
                if key in done:
                    continue
                emit("arch", key, scorer.values(a), sink)
                done.add(key)
        finally:
            if sink is not None:
                sink.close()
    except ProxyError as exc:
        raise UserInputError(str(exc)) from exc


supernet_app = typer.Typer(help="Weight-sharing supernets: BigNAS sandwich or SPOS training.", no_args_is_help=True)
app.add_typer(supernet_app, name="supernet")


@supernet_app.command("train")
def supernet_train(
    space: Annotated[str, typer.Option(help="bignas, bignas-imagenet (sandwich) or nasnet, darts (spos).")] = "bignas",
    run_dir: Annotated[Path, typer.Option(help="Run directory; an existing checkpoint there is resumed.")] = Path(
        "runs/supernet"
    ),
    epochs: Annotated[int, typer.Option(help="Epochs in total (a resume continues up to this).")] = 1,
    strategy: Annotated[str | None, typer.Option(help="sandwich (BigNAS) or spos; default by space.")] = None,
    train_images: Annotated[int, typer.Option(help="CIFAR-10 training images.")] = 5000,
    val_images: Annotated[int, typer.Option(help="Validation images for the per-epoch metrics.")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine down to 5%).")] = 0.05,
    channels: Annotated[int | None, typer.Option(help="nasnet/darts: initial channels.")] = None,
    layers: Annotated[int | None, typer.Option(help="nasnet/darts: normal cells per stage.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (bfloat16 autocast on CUDA).")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of weights, data order and sampled children.")] = 0,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (else $NAS_DATA_DIR, ~/.cache).")] = None,
) -> None:
    """Train a supernet, one checkpoint per epoch; run it again to resume after an interruption."""
    from nas.supernet import SupernetConfig, SupernetTrainer
    from nas_ground.data import load_cifar10

    options = {k: v for k, v in {"channels": channels, "layers": layers}.items() if v is not None}
    cfg = SupernetConfig(
        space=space,
        strategy=strategy or ("spos" if space in ("nasnet", "darts") else "sandwich"),
        epochs=epochs,
        train_images=train_images,
        val_images=val_images,
        batch_size=batch_size,
        lr=lr,
        device=device,
        seed=seed,
        supernet_options=options,
    )
    trainer = SupernetTrainer(run_dir, cfg, load_cifar10(data_dir))
    if trainer.epoch:
        err.print(f"resuming {run_dir} after epoch {trainer.epoch}", highlight=False)

    def on_epoch(row: dict[str, float]) -> None:
        cells = "  ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch")
        out.print(f"epoch {int(row['epoch'])}/{cfg.epochs}  {cells}", highlight=False)

    trainer.train(on_epoch)
    out.print(f"checkpoint: {run_dir / 'checkpoint.pt'}", highlight=False)


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
            last = ""
            if trial is not None:
                values = trial.values or []
                last = f"trial {trial.number} {trial.state.name.lower()} " + " ".join(f"{v:.4g}" for v in values)
            progress.update(task, completed=min(done, total), last=last)

        result = job.run(on_trial)
    _print_pareto(result, job)


def _print_pareto(result: Any, job: Any) -> None:
    names = [n for n, _ in job.objectives]
    extra = sorted({k for m in result.pareto for k in m.metrics if k.startswith("test_accuracy")})
    table = Table(title=f"Pareto front: {len(result.pareto)} of {result.completed} completed ({result.failed} failed)")
    for col in ["trial", *names, *extra]:
        table.add_column(col, justify="right")
    table.add_column("architecture", overflow="fold", ratio=1)
    for m in sorted(result.pareto, key=lambda m: m.metrics[names[0]]):
        cells = [f"{m.metrics[k]:.4g}" if k in m.metrics else "" for k in [*names, *extra]]
        table.add_row(str(m.trial), *cells, m.arch)
    out.print(table)
    out.print(f"outputs in {result.run_dir}: pareto.json, pareto.png, pareto/*.onnx, trials.csv")


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        app()
    except UserInputError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted: completed trials are kept; run the same command to resume")
        sys.exit(130)
