"""``nas supernet train``: a weight-sharing supernet, resumable epoch by epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nas.cli.app import app, err, out

SPOS_SPACES = ("nasnet", "darts", "nb201")  # cell spaces: one path per step; the others train by the sandwich rule

supernet_app = typer.Typer(help="Weight-sharing supernets: BigNAS sandwich or SPOS training.", no_args_is_help=True)

app.add_typer(supernet_app, name="supernet")


@supernet_app.command("train")
def supernet_train(
    space: Annotated[
        str, typer.Option(help="bignas, bignas-imagenet, nbmacro (sandwich) or nasnet, darts, nb201 (spos).")
    ] = "bignas",
    run_dir: Annotated[Path, typer.Option(help="Run directory; an existing checkpoint there is resumed.")] = Path(
        "runs/supernet"
    ),
    epochs: Annotated[int, typer.Option(help="Epochs in total (a resume continues up to this).")] = 1,
    strategy: Annotated[str | None, typer.Option(help="sandwich (BigNAS) or spos; default by space.")] = None,
    train_images: Annotated[int, typer.Option(help="CIFAR-10 training images.")] = 5000,
    val_images: Annotated[int, typer.Option(help="Validation images for the per-epoch metrics.")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine down to 5%).")] = 0.05,
    channels: Annotated[int | None, typer.Option(help="nasnet/darts/nb201: initial channels.")] = None,
    layers: Annotated[int | None, typer.Option(help="nasnet/darts/nb201: (normal) cells per stage.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (bfloat16 autocast on CUDA).")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of weights, data order and sampled children.")] = 0,
    distinct: Annotated[
        bool, typer.Option(help="Sample one network per draw, not one string (nb201: isomorphic cells count once).")
    ] = False,
    fair: Annotated[
        bool, typer.Option(help="Strict fairness (nb201): every op of every edge equally often, cycle by cycle.")
    ] = False,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (else $NAS_DATA_DIR, ~/.cache).")] = None,
) -> None:
    """Train a supernet, one checkpoint per epoch; run it again to resume after an interruption."""
    from nas.supernet import SupernetConfig, SupernetTrainer
    from nas_ground.data import load_cifar10

    depth_key = "cells_per_stage" if space == "nb201" else "layers"
    options = {k: v for k, v in {"channels": channels, depth_key: layers}.items() if v is not None}
    cfg = SupernetConfig(
        space=space,
        strategy=strategy or ("spos" if space in SPOS_SPACES else "sandwich"),
        epochs=epochs,
        train_images=train_images,
        val_images=val_images,
        batch_size=batch_size,
        lr=lr,
        device=device,
        seed=seed,
        supernet_options=options,
        distinct=distinct,
        fair=fair,
    )
    trainer = SupernetTrainer(run_dir, cfg, load_cifar10(data_dir))
    if trainer.epoch:
        err.print(f"resuming {run_dir} after epoch {trainer.epoch}", highlight=False)

    def on_epoch(row: dict[str, float]) -> None:
        cells = "  ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch")
        out.print(f"epoch {int(row['epoch'])}/{cfg.epochs}  {cells}", highlight=False)

    trainer.train(on_epoch)
    out.print(f"checkpoint: {run_dir / 'checkpoint.pt'}", highlight=False)
