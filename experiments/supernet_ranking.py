"""Benchmarks of the supernet issue: training throughput, and ranking by inherited weights against training
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

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from experiments.record import record
from nas.data import load_cifar10
from nas.supernet import SupernetConfig, SupernetTrainer, recalibrate_bn
from nas.train import TrainConfig, evaluate_accuracy, train_model
from predictors.metrics import kendall_tau, spearman_rho

SPACES = {"bignas": ("sandwich", {}), "darts": ("spos", {"channels": 16, "layers": 1})}


def run_space(space_name: str, args: argparse.Namespace, data: object) -> list[str]:
    strategy, options = SPACES[space_name]
    out = Path(args.out) / space_name
    cfg = SupernetConfig(
        space=space_name,
        strategy=strategy,
        epochs=args.epochs,
        train_images=args.train_images,
        val_images=args.val_images,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
        supernet_options=options,
    )
    trainer = SupernetTrainer(out / "supernet", cfg, data)  # type: ignore[arg-type]
    history = trainer.train(lambda row: print(space_name, row, flush=True))
    ips = float(np.mean([h["images_per_s"] for h in history]))
    space, net = trainer.space, trainer.net.eval()
    rng = random.Random(1)
    children: list[object] = []
    while len(children) < args.children:
        arch = space.sample(rng)
        if arch not in children:
            children.append(arch)
    results_path = out / "children.json"
    results: dict[str, dict[str, float]] = json.loads(results_path.read_text()) if results_path.exists() else {}
    device = trainer.device
    train_cfg = TrainConfig(
        epochs=args.epochs,
        train_images=args.train_images,
        val_images=args.val_images,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
    )  # the supernet's budget, for every child trained from scratch
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
        scratch_acc = train_model(scratch, data, train_cfg).val_accuracy  # type: ignore[arg-type]
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
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spaces", default="bignas,darts")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--val-images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--children", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="runs/supernet-ranking")
    parser.add_argument("--key", default="supernet-ranking")
    args = parser.parse_args()
    data = load_cifar10(args.data_dir)
    lines = [
        f"CIFAR-10, {args.train_images} training images x {args.epochs} epochs, batch {args.batch_size}, lr {args.lr} "
        f"(cosine; supernet to 5%), validation {args.val_images} held-out training images, device {args.device}, "
        f"{torch.get_num_threads()} torch threads. Each child trained from scratch gets the same images, epochs and "
        "batch size as the supernet (`nas.train.train_model`, SGD + cosine). Throughput = training images per second "
        "of the supernet (a sandwich step runs 4 children on each image, SPOS one).\n",
        "| supernet | train images/s | children | tau (BN recal) | tau (no recal) | rho (BN recal) "
        "| mean acc % inherited / no recal / scratch | s per scratch child |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for space_name in args.spaces.split(","):
        lines += run_space(space_name, args, data)
    if args.device == "cpu" and not torch.cuda.is_available():
        lines.append(
            f"| {args.spaces} on a CUDA GPU (`--device cuda`, bfloat16) | not measured: no GPU here | | | | | | |"
        )
    body = "\n".join(lines)
    print(body)
    record(args.key if args.device == "cpu" else f"{args.key}-{args.device}", "Supernets: throughput and ranking", body)


if __name__ == "__main__":
    main()
