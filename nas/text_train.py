"""The text training loop: AdamW with linear warmup and decay on an SST-2 subset, CPU or CUDA, seeded."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nas.train import resolve_device
from nas_ground.errors import UserInputError
from nas_ground.text_data import SST2
from nas_ground.training import backward_step, minibatches

SST2_TRAIN = 67_349  # phrases in the GLUE SST-2 training split
# The CLI's budget options are named for images (--train-images, --val-images); for text they count sentences.
IMAGE_NAMES = {"train_images": "train_examples", "val_images": "val_examples"}


@dataclass(frozen=True)
class TextTrainConfig:
    """Budget: ``epochs`` passes over ``train_examples`` training phrases (a seeded subset, the same for every
    candidate) in batches of ``batch_size``. Validation: the first ``val_examples`` of the 872 dev sentences
    (all of them when None or larger)."""

    epochs: int = 1
    train_examples: int = 5000
    val_examples: int | None = None
    batch_size: int = 32
    lr: float = 1e-3
    warmup: float = 0.1  # fraction of the steps with a linearly rising learning rate; then linear decay to 0
    weight_decay: float = 0.01  # on matrices and embeddings, not on biases and LayerNorms
    grad_clip: float = 1.0
    seed: int = 0
    split_seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for key in ("epochs", "train_examples", "batch_size"):
            if getattr(self, key) < 1:
                raise UserInputError(f"{key}={getattr(self, key)} must be >= 1")
        if self.train_examples > SST2_TRAIN:
            raise UserInputError(f"train_examples={self.train_examples} must be <= {SST2_TRAIN} (SST-2 train)")
        if self.val_examples is not None and self.val_examples < 1:
            raise UserInputError(f"val_examples={self.val_examples} must be >= 1")
        if not self.lr > 0:
            raise UserInputError(f"lr={self.lr} must be > 0")
        if not 0.0 <= self.warmup < 1.0:
            raise UserInputError(f"warmup={self.warmup} must be in [0, 1)")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise UserInputError(f"device={self.device!r} must be auto, cpu or cuda[:N]")


def text_train_config(options: dict[str, Any]) -> TextTrainConfig:
    """`TextTrainConfig` from evaluator options, accepting ``train_images`` / ``val_images`` as their text names."""
    renamed = {IMAGE_NAMES.get(k, k): v for k, v in options.items()}
    valid = set(TextTrainConfig.__dataclass_fields__)
    unknown = sorted(set(renamed) - valid)
    if unknown:
        raise UserInputError(
            f"unknown train evaluator option {unknown[0]!r} for a text space; valid: {', '.join(sorted(valid))}"
        )
    return TextTrainConfig(**renamed)


@dataclass(frozen=True)
class TextTrainResult:
    val_accuracy: float  # percent, on the dev sentences
    train_loss: float  # mean loss of the last epoch
    seconds: float
    examples_per_s: float


def train_subset(data: SST2, cfg: TextTrainConfig) -> np.ndarray:
    """Indices of the training phrases: a prefix of a permutation seeded by ``split_seed``."""
    return np.random.default_rng(cfg.split_seed).permutation(len(data.train_y))[: cfg.train_examples]


def _batch(ids: np.ndarray, mask: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and mask as int64 tensors, cut to the longest sequence of the batch (padding is masked anyway)."""
    length = max(int(mask.sum(axis=1).max()), 1)
    return (
        torch.from_numpy(ids[:, :length].astype(np.int64)).to(device),
        torch.from_numpy(mask[:, :length].astype(np.int64)).to(device),
    )


def _schedule(total: int, warmup: float) -> Callable[[int], float]:
    warm = max(1, round(warmup * total)) if warmup > 0 else 0

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return factor


def train_text_model(model: nn.Module, data: SST2, cfg: TextTrainConfig) -> TextTrainResult:
    """Train ``model`` (token ids, mask -> logits) in place; return dev accuracy (never test accuracy)."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    idx = train_subset(data, cfg)
    y_train = torch.from_numpy(data.train_y[idx])  # fancy indexing copies: writable
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    steps_per_epoch = math.ceil(len(idx) / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg.epochs * steps_per_epoch, cfg.warmup))
    start = time.perf_counter()
    seen = 0
    epoch_loss = float("nan")
    for epoch in range(cfg.epochs):
        model.train()
        total_loss = 0.0
        for step, batch in enumerate(minibatches(len(idx), cfg.batch_size, gen)):
            rows = idx[batch.numpy()]
            ids, mask = _batch(data.train_ids[rows], data.train_mask[rows], device)
            loss = F.cross_entropy(model(ids, mask), y_train[batch].to(device))
            where = f"epoch {epoch + 1}, step {step + 1}"
            backward_step(
                loss, optimizer, model.parameters(), scheduler=scheduler, grad_clip=cfg.grad_clip, where=where
            )
            total_loss += loss.item() * len(batch)
            seen += len(batch)
        epoch_loss = total_loss / len(idx)
    seconds = time.perf_counter() - start
    n_val = len(data.dev_y) if cfg.val_examples is None else min(cfg.val_examples, len(data.dev_y))
    val_acc = text_accuracy(model, data.dev_ids[:n_val], data.dev_mask[:n_val], data.dev_y[:n_val], device=device)
    return TextTrainResult(val_acc, epoch_loss, seconds, seen / seconds)


def text_accuracy(
    model: nn.Module,
    ids: np.ndarray,
    mask: np.ndarray,
    y: np.ndarray,
    *,
    device: torch.device | None = None,
    batch_size: int = 256,
) -> float:
    """Accuracy in percent of ``model`` (eval mode) on tokenised sentences."""
    device = device or next(model.parameters()).device
    model.to(device)
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(ids), batch_size):
            xb, mb = _batch(ids[i : i + batch_size], mask[i : i + batch_size], device)
            pred = model(xb, mb).argmax(dim=1).cpu()
            correct += int((pred == torch.from_numpy(y[i : i + batch_size].copy())).sum())
    return 100.0 * correct / len(ids)
