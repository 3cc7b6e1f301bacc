"""``nas train``: train a chosen network for real (a Pareto member or any architecture), export float and int8 ONNX."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nas.cli.app import app, err, out
from nas_ground.errors import UserInputError


@app.command("train")
def train(
    run_dir: Annotated[
        Path | None, typer.Argument(help="A finished search's run directory (with --member); output in RUN_DIR/final.")
    ] = None,
    member: Annotated[str | None, typer.Option(help="Pareto member: its trial number or short id (nas show).")] = None,
    space: Annotated[str | None, typer.Option(help="Without RUN_DIR: the space of --arch.")] = None,
    arch: Annotated[str | None, typer.Option(help="Without RUN_DIR: the encoded architecture.")] = None,
    dataset: Annotated[
        str | None, typer.Option(help="cifar10, cifar100, folder:PATH, npz:PATH [default: the search's, else cifar10].")
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder [default: RUN_DIR/final].")] = None,
    cells: Annotated[int | None, typer.Option(help="nasnet/darts/nb201: normal cells per stage (N).")] = None,
    channels: Annotated[int | None, typer.Option(help="nasnet/darts/nb201: initial channels (C).")] = None,
    epochs: Annotated[int, typer.Option(help="Epochs (a resume continues up to this).")] = 10,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 96,
    lr: Annotated[float, typer.Option(help="Peak learning rate (SGD nesterov, cosine to 0).")] = 0.05,
    weight_decay: Annotated[float, typer.Option(help="Weight decay.")] = 3e-4,
    train_images: Annotated[int | None, typer.Option(help="At most this many training images [default: all].")] = None,
    val_images: Annotated[int, typer.Option(help="At most this many validation images.")] = 5000,
    cutout: Annotated[
        int | None, typer.Option(help="Cutout square side [default: half the image side; 0: off].")
    ] = None,
    drop_path: Annotated[
        float | None, typer.Option(help="nasnet/darts: final ScheduledDropPath probability [default: 0.2].")
    ] = None,
    auxiliary: Annotated[bool, typer.Option(help="nasnet/darts: auxiliary head (weight 0.4).")] = True,
    label_smoothing: Annotated[float, typer.Option(help="Label smoothing.")] = 0.0,
    ema: Annotated[float, typer.Option(help="EMA decay of the weights, evaluated and exported (0: off).")] = 0.0,
    int8: Annotated[
        bool, typer.Option(help="Also write a statically quantised int8 ONNX file and measure it.")
    ] = False,
    device: Annotated[
        str, typer.Option(help="auto, cpu or cuda (bf16 autocast, channels_last, pinned memory).")
    ] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of weights, data order and augmentation.")] = 0,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (else $NAS_DATA_DIR, ~/.cache).")] = None,
) -> None:
    """Train one network with the full recipe, one checkpoint per epoch (the same command resumes), then write
    model.onnx (and model.int8.onnx) and metrics.json."""
    from nas.final import CELL_SPACES, FinalSpec, FinalTraining, build_options, default_out_dir, member_spec

    if run_dir is not None:
        if member is None or space is not None or arch is not None:
            raise UserInputError("with RUN_DIR give --member K (and neither --space nor --arch)")
        spec, search_build = member_spec(run_dir, member)
        target = out_dir or run_dir / "final"
    else:
        if space is None or arch is None or member is not None:
            raise UserInputError("give RUN_DIR --member K, or --space S --arch A")
        spec, search_build = FinalSpec(space=space, arch=arch), {}
        target = out_dir or default_out_dir(spec)
    if dataset is not None:
        spec.dataset = dataset
    spec.build = {**search_build, **build_options(spec.space, cells=cells, channels=channels, auxiliary=auxiliary)}
    if spec.space in CELL_SPACES and not auxiliary:
        spec.build.pop("auxiliary", None)
    recipe = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "train_images": train_images or 10**9,
        "val_images": val_images,
        "label_smoothing": label_smoothing,
        "ema": ema,
        "seed": seed,
        "device": device,
    }
    if spec.space in CELL_SPACES:
        recipe["drop_path"] = 0.2 if drop_path is None else drop_path
    elif drop_path:
        raise UserInputError(f"--drop-path applies to {', '.join(CELL_SPACES)}, not to space {spec.space!r}")
    job_data_dir = str(data_dir) if data_dir else None
    spec.train = recipe
    if cutout is None:  # half the image side: DARTS's 16 on 32x32 CIFAR
        from nas_ground.datasets import load_image_data

        cutout = load_image_data(spec.dataset, job_data_dir).input_shape[1] // 2
    spec.train["cutout"] = cutout
    job = FinalTraining(spec, target, data_dir=job_data_dir)
    from nas.final import describe_device

    err.print(f"training {spec.space} {spec.arch[:60]} on {spec.dataset} -> {target}", highlight=False, markup=False)
    err.print(f"device: {describe_device(device)}", highlight=False)
    if job.trainer.epoch:
        err.print(f"resuming after epoch {job.trainer.epoch}", highlight=False)

    def on_epoch(row: dict[str, float]) -> None:
        out.print(
            f"epoch {int(row['epoch'])}/{epochs}  loss {row['train_loss']:.4f}  val {row['val_accuracy']:.2f}%  "
            f"{row['seconds']:.0f} s",
            highlight=False,
        )

    metrics = job.run(on_epoch, int8=int8)
    out.print(
        f"val {metrics['val_accuracy']:.2f}%  test {metrics['test_accuracy']:.2f}%  "
        f"{metrics['images_per_s']:.0f} images/s  params {metrics['params']:,}",
        highlight=False,
    )
    if "int8" in metrics:
        q = metrics["int8"]
        out.print(
            f"int8: test {q['int8_test_accuracy']:.2f}% (float ONNX {q['float_onnx_test_accuracy']:.2f}%, "
            f"drop {q['accuracy_drop']:.2f})  latency {q['int8_latency_ms']:.2f} ms vs {q['float_latency_ms']:.2f} ms "
            f"(x{q['speedup']:.2f})",
            highlight=False,
        )
    out.print(f"outputs in {target}: model.onnx, metrics.json, checkpoint.pt", highlight=False)
