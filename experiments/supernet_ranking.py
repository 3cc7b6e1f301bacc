"""Supernets: training throughput, and ranking by inherited weights against training
from scratch, for the BigNAS supernet (sandwich) and the one-shot NASNet-family supernet (SPOS).

For each supernet: train it with `nas.supernet.SupernetTrainer` (``--epochs`` over ``--train-images`` CIFAR-10
images, checkpoint per epoch, resumable); measure its training throughput (images/s, all children of a step
counted once per image); draw ``--children`` distinct random children (seeded); score each by inherited weights
on the validation split, with and without BN recalibration; train each child from scratch with the same budget
(same images, epochs, batch size; `nas.train.train_model`); report Kendall tau and Spearman rho between the
inherited and the from-scratch accuracies. Results go to ``runs/supernet-ranking/<space>/`` as they come (resumable).
Run it on a CUDA machine with ``--device cuda`` for the GPU throughput row (bfloat16 autocast).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

from experiments.record import record
from nas.supernet import SupernetConfig, SupernetTrainer, recalibrate_bn
from nas.train import TrainConfig, evaluate_accuracy, train_model
from nas_ground.data import load_cifar10
from predictors.metrics import kendall_tau, spearman_rho

SPACES = {"bignas": ("sandwich", {}), "darts": ("spos", {"channels": 16, "layers": 1})}


def run_space(
    space_name: str, budget: TrainConfig, children_count: int, root: Path, data: object
) -> tuple[list[str], dict[str, Any]]:
    """Train the supernet of ``space_name`` and ``children_count`` children from scratch, all with ``budget``;
    the table row and the figures."""
    strategy, options = SPACES[space_name]
    out = root / space_name
    cfg = SupernetConfig(
        space=space_name,
        strategy=strategy,
        epochs=budget.epochs,
        train_images=budget.train_images,
        val_images=budget.val_images,
        batch_size=budget.batch_size,
        lr=budget.lr,
        device=budget.device,
        supernet_options=options,
    )
    trainer = SupernetTrainer(out / "supernet", cfg, data)  # type: ignore[arg-type]
    history = trainer.train(lambda row: print(space_name, row, flush=True))
    ips = float(np.mean([h["images_per_s"] for h in history]))
    space, net = trainer.space, trainer.net.eval()
    rng = random.Random(1)
    children: list[object] = []
    while len(children) < children_count:
        arch = space.sample(rng)
        if arch not in children:
            children.append(arch)
    results_path = out / "children.json"
    results: dict[str, dict[str, float]] = json.loads(results_path.read_text()) if results_path.exists() else {}
    device = trainer.device
    for i, arch in enumerate(children):
        key = space.encode(arch)
        if key in results:
            continue
        child = net.extract(arch).to(device)  # type: ignore[operator]
        without = evaluate_accuracy(child, trainer.data.x_val, trainer.data.y_val, device=device)
        recalibrate_bn(child, trainer.recal)
        with_recal = evaluate_accuracy(child, trainer.data.x_val, trainer.data.y_val, device=device)
        torch.manual_seed(0)
        scratch = space.build(arch, **options)
        start = time.perf_counter()
        scratch_acc = train_model(scratch, data, budget).val_accuracy  # type: ignore[arg-type]
        results[key] = {
            "inherited": with_recal,
            "inherited_no_recal": without,
            "scratch": scratch_acc,
            "scratch_seconds": time.perf_counter() - start,
        }
        results_path.write_text(json.dumps(results, indent=1))
        print(space_name, i, results[key], flush=True)
    rows = [results[space.encode(a)] for a in children]
    scratch = [r["scratch"] for r in rows]
    lines = [
        f"| {space_name} ({strategy}{', ' + str(options) if options else ''}) | {ips:.1f} | {len(rows)} | "
        f"{kendall_tau([r['inherited'] for r in rows], scratch):.3f} | "
        f"{kendall_tau([r['inherited_no_recal'] for r in rows], scratch):.3f} | "
        f"{spearman_rho([r['inherited'] for r in rows], scratch):.3f} | "
        f"{np.mean([r['inherited'] for r in rows]):.1f} / {np.mean([r['inherited_no_recal'] for r in rows]):.1f} / "
        f"{np.mean(scratch):.1f} | {np.mean([r['scratch_seconds'] for r in rows]):.0f} |"
    ]
    figures = {
        "strategy": strategy,
        "options": options,
        "images_per_s_per_epoch": [h["images_per_s"] for h in history],
        "children": {space.encode(a): r for a, r in zip(children, rows, strict=True)},
    }
    return lines, figures


app = typer.Typer(add_completion=False, rich_markup_mode="markdown")


@app.command(help=__doc__)
def main(
    spaces: Annotated[str, typer.Option(help="Comma list of supernets: bignas, darts.")] = "bignas,darts",
    epochs: Annotated[int, typer.Option(help="Epochs of the supernet and of each child from scratch.")] = 3,
    train_images: Annotated[int, typer.Option(help="CIFAR-10 training images.")] = 5000,
    val_images: Annotated[int, typer.Option(help="Held-out training images for validation.")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 0.05,
    children: Annotated[int, typer.Option(help="Random children per supernet.")] = 10,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    data_dir: Annotated[str | None, typer.Option(help="Data directory.")] = None,
    out: Annotated[str, typer.Option(help="Checkpoints and per-child results (resumable).")] = "runs/supernet-ranking",
    key: Annotated[
        str, typer.Option(help="Result to write, experiments/results/KEY.json (-DEVICE appended off the CPU).")
    ] = "supernet-ranking",
) -> None:
    data = load_cifar10(data_dir)
    budget = TrainConfig(
        epochs=epochs,
        train_images=train_images,
        val_images=val_images,
        batch_size=batch_size,
        lr=lr,
        device=device,
    )  # the supernet's budget, for every child trained from scratch too
    lines = [
        f"CIFAR-10, {train_images} training images x {epochs} epochs, batch {batch_size}, lr {lr} "
        f"(cosine; supernet to 5%), validation {val_images} held-out training images, device {device}, "
        f"{torch.get_num_threads()} torch threads. Each child trained from scratch gets the same images, epochs and "
        "batch size as the supernet (`nas.train.train_model`, SGD + cosine). Throughput = training images per second "
        "of the supernet (a sandwich step runs 4 children on each image, SPOS one).\n",
        "| supernet | train images/s | children | tau (BN recal) | tau (no recal) | rho (BN recal) "
        "| mean acc % inherited / no recal / scratch | s per scratch child |",
        "|---|---|---|---|---|---|---|---|",
    ]
    numbers: dict[str, Any] = {"torch_threads": torch.get_num_threads(), "supernets": {}}
    for space_name in spaces.split(","):
        row, numbers["supernets"][space_name] = run_space(space_name, budget, children, Path(out), data)
        lines += row
    if device == "cpu" and not torch.cuda.is_available():
        lines.append(f"| {spaces} on a CUDA GPU (`--device cuda`, bfloat16) | not measured: no GPU here | | | | | | |")
    body = "\n".join(lines)
    print(body)
    record(key if device == "cpu" else f"{key}-{device}", "Supernets: throughput and ranking", body, numbers)


if __name__ == "__main__":
    app()
