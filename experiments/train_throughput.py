"""CPU training throughput of quick-start NASNet networks, and `make search` wall time.

Throughput: images/s of the training loop (forward, backward, SGD step, augmentation) for networks built
exactly as the quick start builds them, over several sampled genotypes. The wall time of `make search` is
measured by running it (with the environment already set up, as a second `make search` finds it).
"""

from __future__ import annotations

import random
import statistics
import subprocess
import time
from pathlib import Path
from typing import Annotated

import torch
import typer

from experiments.record import record
from nas.cli.search import QUICK_NETWORK, QUICK_TRAIN
from nas.search import SearchConfig
from nas.train import TrainConfig, train_model
from nas_ground.data import load_cifar10
from search_spaces import get_space

REPO = Path(__file__).resolve().parents[1]


app = typer.Typer(add_completion=False, rich_markup_mode="markdown")


@app.command(help=__doc__)
def main(
    networks: Annotated[int, typer.Option(help="Sampled genotypes to train (seeds 0..N-1).")] = 5,
    make_search: Annotated[bool, typer.Option("--make-search", help="Also time `make search`.")] = False,
    data_dir: Annotated[str | None, typer.Option(envvar="NAS_DATA_DIR", help="Data directory.")] = None,
) -> None:
    space = get_space("nasnet")
    data = load_cifar10(data_dir)
    cfg = TrainConfig(**QUICK_TRAIN, device="cpu")
    rates = []
    for seed in range(networks):
        torch.manual_seed(0)
        model = space.build(space.sample(random.Random(seed)), **QUICK_NETWORK["nasnet"])
        result = train_model(model, data, cfg)
        rates.append(result.images_per_s)
        print(f"network {seed}: {result.images_per_s:.0f} images/s, val acc {result.val_accuracy:.1f}%", flush=True)
    body = (
        f"Training throughput of quick-start NASNet networks ({QUICK_NETWORK['nasnet']}, batch "
        f"{cfg.batch_size}, augmentation on, channels_last, {torch.get_num_threads()} torch threads): "
        f"**{statistics.mean(rates):.0f} +- {statistics.stdev(rates):.0f} images/s** "
        f"(mean +- std over {len(rates)} sampled genotypes, seeds 0..{len(rates) - 1}; "
        f"min {min(rates):.0f}, max {max(rates):.0f})."
    )
    numbers: dict[str, object] = {
        "seeds": list(range(networks)),
        "images_per_s": rates,
        "torch_threads": torch.get_num_threads(),
    }
    if make_search:
        start = time.perf_counter()
        proc = subprocess.run(["make", "search"], cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"make search failed:\n{proc.stderr[-2000:]}")
        body += (
            f"\n\nWall time of `make search` (environment already set up, so this is the search itself: "
            f"{QUICK_TRAIN['train_images']} training images x {QUICK_TRAIN['epochs']} epoch per candidate, "
            f"{SearchConfig().trials} trials, test accuracy of the Pareto members on the 10,000 test images, "
            "ONNX export): "
            f"**{wall / 60:.1f} min** (one run)."
        )
        numbers["make_search_s"] = wall
    record("quickstart-throughput", "Quick-start training throughput and `make search` wall time", body, numbers)


if __name__ == "__main__":
    app()
