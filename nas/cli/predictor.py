"""``nas predictor train|eval`` and ``nas predict``: the zero-shot predictor."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nas.cli.app import app, err, out, print_mapping
from nas_ground.errors import UserInputError

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
    bench: Annotated[
        list[Path], typer.Option(help="Bench directory (nas bench build / harvest); repeat it to train on several.")
    ],
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
    prior: Annotated[
        bool,
        typer.Option(
            "--prior",
            help="Score = a monotone prior of log-params, log-FLOPs, V-PCA and its width share (fitted to the "
            "worst training family) + a weighted residual of the MLPs.",
        ),
    ] = False,
    residual_weight: Annotated[
        float | None,
        typer.Option(
            help="--prior: weight of the MLPs' residual (default: chosen by an inner leave-one-family-out on "
            "the training families)."
        ),
    ] = None,
    prior_features: Annotated[
        str, typer.Option(help="--prior: its features, comma-separated (scale and activation features).")
    ] = "log_params,log_flops,act_vpca",
    prior_fit: Annotated[
        str,
        typer.Option(
            help="--prior: fit it to the families whose labels reproduce (reproducible: noise ceiling >= 0.5 or "
            "unknown) or to all."
        ),
    ] = "reproducible",
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
        prior=prior,
        residual_weight=residual_weight,
        prior_features=tuple(f.strip() for f in prior_features.split(",") if f.strip()),
        prior_fit=prior_fit,
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
        data,
        train_idx,
        options,
        encoder_name=enc.name,
        text_format=text_format,
        held_out=held_out,
        bench=",".join(str(b) for b in bench),
    )
    predictor.save(out_file)
    figures = predictor.meta.get("evaluation", {}).get("held_out")
    out.print(f"{out_file}: trained on {len(train_idx)} records of {data.target}")
    if figures:
        print_mapping({k: round(v, 4) for k, v in figures.items()}, "held-out records", False)


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
        print_mapping({k: round(v, 4) for k, v in evaluate(predictor, data).items()}, title, json_out)
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
        print_mapping(figures, f"{title}: {label} records", False)


@app.command()
def predict(
    files: Annotated[list[Path], typer.Argument(help="ONNX files (from anywhere).")],
    predictor_file: Annotated[
        Path | None, typer.Option("--predictor", help="Predictor file (default: shipped).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON line per file.")] = False,
    workers: Annotated[
        int | None,
        typer.Option(help="Processes describing new files (default: $NAS_WORKERS, else one per CPU)."),
    ] = None,
) -> None:
    """Score ONNX networks without training them: higher is better. ``uncertainty`` is the spread of the
    predictor's ensemble; a file far outside the networks the predictor was trained on gets a warning."""
    import json

    from predictors.zero_shot import NOVELTY_WARN, load_predictor, predict_files

    if workers is not None and workers < 1:
        raise UserInputError(f"--workers {workers} must be >= 1")
    predictor = load_predictor(predictor_file)
    scores, spreads, novelty = predict_files(files, predictor, workers=workers)
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
