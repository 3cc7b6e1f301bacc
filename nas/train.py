"""Training an image classifier: SGD with a cosine schedule, CPU or CUDA (bf16 autocast), seeded, resumable by epoch.

`Trainer` is the one loop: a search's candidates run it for a few epochs (`train_model`), `nas train` runs it for a
full recipe (cutout, scheduled drop path, auxiliary head, label smoothing, EMA) with a checkpoint after every epoch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nas_ground.data import ImageData, augment, cutout, normalize
from nas_ground.errors import UserInputError
from nas_ground.training import backward_step, minibatches

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    train_images: int = 5000  # at most this many: a smaller data set trains on all of its training split
    val_images: int = 1000  # at most this many
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    aux_weight: float = 0.4
    drop_path: float = 0.0  # final drop-path probability, reached linearly over the epochs (ScheduledDropPath)
    augment: bool = True
    cutout: int = 0  # side of the square cut out of every training image (0: off; DARTS uses 16)
    label_smoothing: float = 0.0
    ema: float = 0.0  # decay of an exponential moving average of the weights, evaluated instead (0: off)
    seed: int = 0
    split_seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        check_budget(self)
        if not self.lr > 0:
            raise UserInputError(f"lr={self.lr} must be > 0")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise UserInputError(f"device={self.device!r} must be auto, cpu or cuda[:N]")
        if self.cutout < 0:
            raise UserInputError(f"cutout={self.cutout} must be >= 0 pixels")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserInputError(f"label_smoothing={self.label_smoothing} must be in [0, 1)")
        if not 0.0 <= self.ema < 1.0:
            raise UserInputError(f"ema={self.ema} must be a decay in [0, 1) (0: off)")


def check_budget(cfg: Any) -> None:
    """Epochs, image counts and batch size of a training configuration: each at least 1."""
    for key in ("epochs", "train_images", "val_images", "batch_size"):
        if getattr(cfg, key) < 1:
            raise UserInputError(f"{key}={getattr(cfg, key)} must be >= 1")


@dataclass(frozen=True)
class TrainResult:
    val_accuracy: float  # percent
    train_loss: float  # mean loss of the last epoch
    seconds: float
    images_per_s: float


def memory_format(device: torch.device, *, training: bool = False) -> torch.memory_format:
    """channels_last for inference (3-4x faster NASNet cells on CPU) and for CUDA training (the layout its tensor
    cores want); contiguous for CPU training: torch 2.13's CPU backward on channels_last NASNet cells corrupted the
    heap and killed the process for some batch and image sizes (a 45-image batch, 48x48 images)."""
    if training and device.type == "cpu":
        return torch.contiguous_format
    return torch.channels_last


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"device={name!r}: CUDA is not available on this machine; use auto or cpu")
    return device


def autocast(device: torch.device) -> Any:
    """bf16 autocast on CUDA (no loss scaling needed), a no-op context on CPU."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def validation_split(data: ImageData, cfg: Any) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices into ``data.train_x``: the same split for every trial of a search, at most
    ``cfg.train_images`` / ``cfg.val_images`` of them."""
    train_idx, val_idx = data.search_split(cfg.split_seed)
    return train_idx[: cfg.train_images], val_idx[: cfg.val_images]


def _loss(out: Any, yb: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    if isinstance(out, tuple):
        logits, aux = out
        return F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing) + cfg.aux_weight * F.cross_entropy(
            aux, yb, label_smoothing=cfg.label_smoothing
        )
    return F.cross_entropy(out, yb, label_smoothing=cfg.label_smoothing)


class Trainer:
    """One network, one configuration, one data split: `run_epoch` trains an epoch, `state_dict` captures everything
    needed to continue exactly (weights, optimizer, schedule, EMA, random streams) and `load_state_dict` restores it."""

    def __init__(self, model: nn.Module, data: ImageData, cfg: TrainConfig) -> None:
        self.cfg, self.data = cfg, data
        self.device = resolve_device(cfg.device)
        self.fmt = memory_format(self.device, training=True)
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.train_idx, self.val_idx = validation_split(data, cfg)
        x = torch.from_numpy(np.ascontiguousarray(data.train_x[self.train_idx]))  # (N, C, H, W) uint8
        cuda = self.device.type == "cuda"
        self.x_train = x.pin_memory() if cuda else x
        self.y_train = torch.as_tensor(data.train_y[self.train_idx], dtype=torch.long)
        self.model = model.to(device=self.device, memory_format=self.fmt)  # type: ignore[call-overload]
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True
        )
        steps_per_epoch = max(1, len(self.x_train) // cfg.batch_size)  # full batches only, see run_epoch
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.epochs * steps_per_epoch)
        self.ema: torch.optim.swa_utils.AveragedModel | None = None
        if cfg.ema:
            self.ema = torch.optim.swa_utils.AveragedModel(
                model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema), use_buffers=True
            )
        self.epoch = 0  # epochs completed
        self.seconds = 0.0
        self.seen = 0
        self.last_loss = float("nan")

    def run_epoch(self) -> float:
        """Train one epoch; return its mean training loss."""
        cfg, model, device = self.cfg, self.model, self.device
        if hasattr(model, "drop_path"):
            setattr(model, "drop_path", cfg.drop_path * self.epoch / cfg.epochs)  # noqa: B010
        model.to(memory_format=self.fmt)  # type: ignore[call-overload]  # evaluation may have switched it
        model.train()
        start = time.perf_counter()
        total_loss, seen_now = 0.0, 0
        # Full batches only (drop-last): every step sees batch_size images.
        full = min(cfg.batch_size, len(self.x_train))
        for step, batch in enumerate(minibatches(len(self.x_train), cfg.batch_size, self.gen, min_size=full)):
            xb = self.x_train[batch].to(device, non_blocking=True)
            xb = normalize(xb, self.data.mean, self.data.std)
            if cfg.augment:
                xb = augment(xb, self.gen)
            if cfg.cutout:
                xb = cutout(xb, cfg.cutout, self.gen)
            xb, yb = xb.contiguous(memory_format=self.fmt), self.y_train[batch].to(device, non_blocking=True)
            with autocast(device):
                loss = _loss(model(xb), yb, cfg)
            where = f"epoch {self.epoch + 1}, step {step + 1}"
            backward_step(
                loss, self.optimizer, model.parameters(), scheduler=self.scheduler, grad_clip=cfg.grad_clip, where=where
            )
            if self.ema is not None:
                self.ema.update_parameters(model)
            total_loss += loss.item() * len(batch)
            seen_now += len(batch)
            self.seen += len(batch)
        self.seconds += time.perf_counter() - start
        self.epoch += 1
        self.last_loss = total_loss / max(seen_now, 1)
        return self.last_loss

    def eval_model(self) -> nn.Module:
        """The network to evaluate and export: the EMA of the weights when enabled, else the trained one."""
        return self.model if self.ema is None else self.ema.module

    def accuracy(self, x_uint8: np.ndarray, y: np.ndarray) -> float:
        return evaluate_accuracy(
            self.eval_model(), x_uint8, y, device=self.device, mean=self.data.mean, std=self.data.std
        )

    def val_accuracy(self) -> float:
        return self.accuracy(self.data.train_x[self.val_idx], self.data.train_y[self.val_idx])

    def result(self) -> TrainResult:
        return TrainResult(self.val_accuracy(), self.last_loss, self.seconds, self.seen / max(self.seconds, 1e-9))

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "generator": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "epoch": self.epoch,
            "seconds": self.seconds,
            "seen": self.seen,
            "last_loss": self.last_loss,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch, self.seconds, self.seen = int(state["epoch"]), float(state["seconds"]), int(state["seen"])
        self.last_loss = float(state["last_loss"])


def train_model(model: nn.Module, data: ImageData, cfg: TrainConfig) -> TrainResult:
    """Train ``model`` in place on a seeded subset; return validation accuracy (never test accuracy)."""
    trainer = Trainer(model, data, cfg)
    for _ in range(cfg.epochs):
        trainer.run_epoch()
    return trainer.result()


def evaluate_accuracy(
    model: nn.Module,
    x_uint8: np.ndarray,
    y: np.ndarray,
    *,
    device: torch.device | None = None,
    batch_size: int = 250,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> float:
    """Top-1 accuracy in percent of ``model`` (eval mode) on raw uint8 images, normalised with ``mean`` / ``std``
    (default CIFAR-10's)."""
    device = device or next(model.parameters()).device
    fmt = memory_format(device)
    model.to(device=device, memory_format=fmt)  # type: ignore[call-overload]
    model.eval()
    stats = {} if mean is None or std is None else {"mean": mean, "std": std}
    correct = 0
    with torch.inference_mode(), autocast(device):
        for i in range(0, len(x_uint8), batch_size):
            xb = normalize(torch.from_numpy(np.array(x_uint8[i : i + batch_size])).to(device), **stats)
            pred = model(xb.contiguous(memory_format=fmt)).argmax(dim=1).cpu()
            correct += int((pred == torch.from_numpy(np.array(y[i : i + batch_size]))).sum())
    return 100.0 * correct / len(x_uint8)
