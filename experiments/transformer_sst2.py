"""Train N distinct random `transformer-small` candidates on SST-2 with one fixed budget; one CSV row per candidate.

The ground truth for ranking training-free proxies (W-PCA and others) on the transformer space. Candidates are
drawn with ``random.Random(--seed)`` (distinct architectures, in draw order); each is built with torch seed
``--train-seed`` and trained by `nas.text_train.train_text_model` on one CPU thread. Rows are appended and flushed
one at a time to ``runs/transformer-sst2/trained.csv``; a killed run resumes and skips the architectures done.
"""

from __future__ import annotations

import csv
import math
import os
import random
import time
from pathlib import Path
from typing import Annotated

import torch
import typer

from nas.text_train import TextTrainConfig, text_accuracy, train_text_model
from nas_ground.text_data import load_sst2
from nas_ground.training import Diverged
from search_spaces import get_space
from search_spaces.transformer import TransformerSpace

REPO = Path(__file__).resolve().parents[1]
COLUMNS = [
    "index",
    "arch",
    "dev_accuracy",
    "test_accuracy",
    "train_loss",
    "params",
    "train_seconds",
    "seed",
    "budget",
    "failure",
]


def budget_text(cfg: TextTrainConfig, dropout: float, max_len: int) -> str:
    return (
        f"{cfg.train_examples} SST-2 train phrases x {cfg.epochs} epoch(s), batch {cfg.batch_size}, "
        f"AdamW lr {cfg.lr:g} ({cfg.warmup:.0%} linear warmup, linear decay), wd {cfg.weight_decay:g}, "
        f"clip {cfg.grad_clip:g}, dropout {dropout:g}, max_len {max_len}, split_seed {cfg.split_seed}, 1 CPU thread"
    )


def distinct_candidates(space: TransformerSpace, n: int, seed: int) -> list[tuple[str, ...]]:
    rng = random.Random(seed)
    archs: list[tuple[str, ...]] = []
    while len(archs) < n:
        arch = space.sample(rng)
        if arch not in archs:
            archs.append(arch)
    return archs


def done_rows(path: Path, budget: str) -> dict[str, dict[str, str]]:
    """Rows already written (a torn last line from a killed run is dropped); refuses a different budget."""
    if not path.exists():
        return {}
    text = path.read_text()
    if text and not text.endswith("\n"):
        path.write_text(text[: text.rfind("\n") + 1])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    other = {r["budget"] for r in rows} - {budget}
    if other:
        raise SystemExit(f"{path} holds rows of another budget ({other.pop()!r}); use --out for a new file")
    return {r["arch"]: r for r in rows}


app = typer.Typer(add_completion=False, rich_markup_mode="markdown")


@app.command(help=__doc__)
def main(
    candidates: Annotated[int, typer.Option(help="Distinct random candidates to train.")] = 24,
    seed: Annotated[int, typer.Option(help="Architecture sampling seed.")] = 0,
    train_seed: Annotated[int, typer.Option(help="Weights and batch order.")] = 0,
    train_examples: Annotated[int, typer.Option(help="SST-2 training phrases.")] = 40_000,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = 1e-3,
    dropout: Annotated[float, typer.Option(help="Dropout of the built networks.")] = 0.1,
    out: Annotated[Path, typer.Option(help="CSV file, one row per candidate (resumed).")] = (
        REPO / "runs" / "transformer-sst2" / "trained.csv"
    ),
    data_dir: Annotated[str | None, typer.Option(envvar="NAS_DATA_DIR", help="Data directory.")] = None,
) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizer on one thread too
    space = get_space("transformer-small")
    assert isinstance(space, TransformerSpace)
    cfg = TextTrainConfig(
        epochs=epochs,
        train_examples=train_examples,
        batch_size=batch_size,
        lr=lr,
        seed=train_seed,
        device="cpu",
    )
    budget = budget_text(cfg, dropout, space.max_len)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_rows(out, budget)
    data = load_sst2(data_dir, max_len=space.max_len)
    print(f"budget: {budget}; {len(done)} of {candidates} done", flush=True)
    new_file = not out.exists() or out.stat().st_size == 0
    with open(out, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new_file:
            writer.writeheader()
        for index, arch in enumerate(distinct_candidates(space, candidates, seed)):
            encoded = space.encode(arch)
            if encoded in done:
                continue
            torch.manual_seed(train_seed)
            model = space.build(arch, dropout=dropout)
            start = time.perf_counter()
            failure, dev, test, loss = "", math.nan, math.nan, math.nan
            try:
                result = train_text_model(model, data, cfg)
                dev, loss, seconds = result.val_accuracy, result.train_loss, result.seconds
                test = text_accuracy(model, data.test_ids, data.test_mask, data.test_y)
            except Diverged as exc:
                failure, seconds = f"diverged: {exc}", time.perf_counter() - start
            params = sum(p.numel() for p in model.parameters())
            writer.writerow(
                {
                    "index": index,
                    "arch": encoded,
                    "dev_accuracy": f"{dev:.4f}",
                    "test_accuracy": f"{test:.4f}",
                    "train_loss": f"{loss:.5f}",
                    "params": params,
                    "train_seconds": f"{seconds:.1f}",
                    "seed": train_seed,
                    "budget": budget,
                    "failure": failure,
                }
            )
            f.flush()
            os.fsync(f.fileno())
            print(
                f"[{index + 1}/{candidates}] {encoded}: dev {dev:.2f}%, test {test:.2f}%, {params:,} params, "
                f"{seconds:.0f} s {failure}",
                flush=True,
            )


if __name__ == "__main__":
    app()
