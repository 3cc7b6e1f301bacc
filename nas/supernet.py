"""Weight-sharing supernet training: the BigNAS sandwich recipe and SPOS single-path, with exact resume.

``train_supernet(run_dir, cfg)`` trains for ``cfg.epochs`` epochs and writes ``checkpoint.pt`` (atomically)
after every epoch with everything a resume needs: weights, optimizer and schedule state, the epoch, the
history. Every source of randomness is derived from (seed, epoch): data order, augmentation, the children
sampled, dropout; so a run killed and resumed reaches the same state as one that never stopped.

BigNAS (``strategy="sandwich"``, arXiv 2003.11142): per step the largest, the smallest and ``random_children``
random children; the largest learns the true labels with label smoothing, weight decay (as an L2 term of its
loss) and dropout; the others learn its detached soft predictions (inplace distillation) with neither; the
gradients of all children are summed into one update. The learning rate follows a cosine from ``lr`` down to
``lr_floor`` x ``lr`` (5%). SPOS (``strategy="spos"``): one uniformly sampled path per step, true labels.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nas.train import check_budget, evaluate_accuracy, resolve_device, validation_split
from nas_ground.atomic import atomic_path
from nas_ground.data import ImageData, augment, normalize
from nas_ground.errors import UserInputError
from nas_ground.training import apply_gradients, check_finite, minibatches
from search_spaces import SearchSpace, get_space
from search_spaces.bignas import recalibrate_bn

CHECKPOINT = "checkpoint.pt"
STRATEGIES = ("sandwich", "spos")


@dataclass(frozen=True)
class SupernetConfig:
    space: str = "bignas"
    strategy: str = "sandwich"
    epochs: int = 1
    train_images: int = 5000
    val_images: int = 1000
    batch_size: int = 64
    lr: float = 0.05
    lr_floor: float = 0.05  # the schedule ends at this share of lr (BigNAS: 5%)
    momentum: float = 0.9
    weight_decay: float = 3e-5  # on the largest child only (sandwich); on every path (spos)
    label_smoothing: float = 0.1
    dropout: float = 0.1  # the largest child's dropout (sandwich); 0 for the other children
    random_children: int = 2
    grad_clip: float = 5.0
    augment: bool = True
    recal_batches: int = 8  # training batches that re-estimate BN statistics before a child is evaluated
    seed: int = 0
    split_seed: int = 0
    device: str = "auto"
    amp: bool = True  # mixed precision (bfloat16 autocast) on CUDA only
    distinct: bool = False  # sample one network uniformly (spaces with distinct_archs(): NB201), not one string
    fair: bool = False  # strict fairness (spaces with fair_archs(): NB201): every op of every edge once per cycle
    supernet_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_budget(self)
        if self.recal_batches < 1:
            raise UserInputError(f"recal_batches={self.recal_batches} must be >= 1")
        if self.strategy not in STRATEGIES:
            raise UserInputError(f"unknown supernet strategy {self.strategy!r}; valid: {', '.join(STRATEGIES)}")
        if not self.lr > 0 or not 0 <= self.lr_floor <= 1:
            raise UserInputError(f"lr={self.lr} must be > 0 and lr_floor={self.lr_floor} in [0, 1]")
        if self.distinct and self.fair:
            raise UserInputError("distinct and fair sampling exclude each other; choose one")
        if self.random_children < 0:
            raise UserInputError(f"random_children={self.random_children} must be >= 0")


def make_supernet(space: SearchSpace[Any], options: dict[str, Any]) -> nn.Module:
    """The supernet of a space: its own ``supernet(**options)`` (BigNAS), else the one-shot cell supernet."""
    make = getattr(space, "supernet", None)
    if callable(make):
        return make(**options)  # type: ignore[no-any-return]
    if space.name in ("nasnet", "darts"):
        from search_spaces.oneshot import OneShotSupernet

        return OneShotSupernet(space, **options)  # type: ignore[arg-type]
    raise UserInputError(f"space {space.name!r} has no supernet; use bignas, nasnet or darts")


def _set_dropout(model: nn.Module, p: float) -> None:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p


def _decay_params(model: nn.Module) -> list[nn.Parameter]:
    """Weights that get weight decay: matrices and kernels, not biases or BN/LayerNorm scales."""
    return [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]


def lr_factor(step: int, total: int, floor: float) -> float:
    """Cosine from 1 to ``floor`` over ``total`` steps."""
    progress = min(step / max(total, 1), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class SupernetData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: np.ndarray  # uint8 images, as `nas.train.evaluate_accuracy` takes them
    y_val: np.ndarray


def supernet_data(data: ImageData, cfg: SupernetConfig) -> SupernetData:
    train_idx, val_idx = validation_split(data, cfg)  # type: ignore[arg-type]
    return SupernetData(
        normalize(data.train_x[train_idx]),
        torch.as_tensor(data.train_y[train_idx], dtype=torch.long),
        data.train_x[val_idx],
        data.train_y[val_idx],
    )


def recal_batches(data: SupernetData, cfg: SupernetConfig, device: torch.device) -> list[torch.Tensor]:
    """The same ``recal_batches`` training batches for every child (seeded by the split seed)."""
    gen = torch.Generator().manual_seed(cfg.split_seed + 7)
    order = torch.randperm(len(data.x_train), generator=gen)
    n = cfg.batch_size
    return [data.x_train[order[i * n : (i + 1) * n]].to(device) for i in range(cfg.recal_batches)]


def child_accuracy(
    supernet: nn.Module,
    arch: Any,
    data: SupernetData,
    recal: list[torch.Tensor] | None,
    device: torch.device,
) -> float:
    """Validation accuracy of a child by inherited weights: extracted, BN recalibrated (unless ``recal`` is None)."""
    child = supernet.extract(arch).to(device)  # type: ignore[operator]
    if recal is not None:
        recalibrate_bn(child, recal)
    return evaluate_accuracy(child, data.x_val, data.y_val, device=device)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by `train_supernet` (plain tensors and containers: ``weights_only`` loading)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"supernet checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # type: ignore[no-any-return]
    except Exception as exc:  # truncated or foreign file: several unrelated exception types
        raise UserInputError(f"{path} is not a supernet checkpoint: {str(exc).splitlines()[0]}") from exc


def supernet_from_checkpoint(ckpt: dict[str, Any]) -> tuple[SearchSpace[Any], nn.Module, SupernetConfig]:
    cfg = SupernetConfig(**ckpt["config"])
    space = get_space(cfg.space)
    net = make_supernet(space, dict(cfg.supernet_options))
    net.load_state_dict(ckpt["model"])
    return space, net, cfg


class SupernetTrainer:
    """Owns one run directory: trains, checkpoints every epoch, resumes from the last checkpoint."""

    def __init__(self, run_dir: str | Path, cfg: SupernetConfig, data: ImageData) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.space = get_space(cfg.space)
        for need in ("largest", "smallest") if cfg.strategy == "sandwich" else ():
            if not callable(getattr(self.space, need, None)):
                raise UserInputError(f"strategy sandwich needs a space with {need}(); {cfg.space!r} has none: use spos")
        torch.manual_seed(cfg.seed)
        self.net = make_supernet(self.space, dict(cfg.supernet_options)).to(self.device)
        self.data = supernet_data(data, cfg)
        self.recal = recal_batches(self.data, cfg, self.device)
        self.steps_per_epoch = math.ceil(len(self.data.x_train) / cfg.batch_size)
        total = cfg.epochs * self.steps_per_epoch
        wd = cfg.weight_decay if cfg.strategy == "spos" else 0.0  # sandwich: an L2 term of the largest child
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=wd)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, total, cfg.lr_floor))
        self.distinct: list[Any] | None = None
        if cfg.distinct:
            listing = getattr(self.space, "distinct_archs", None)
            if not callable(listing):
                raise UserInputError(f"distinct sampling needs a space with distinct_archs(); {cfg.space!r} has none")
            self.distinct = listing()
        if cfg.fair and not callable(getattr(self.space, "fair_archs", None)):
            raise UserInputError(f"fair sampling needs a space with fair_archs(); {cfg.space!r} has none")
        self._fair_queue: list[Any] = []
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        path = self.run_dir / CHECKPOINT
        if path.exists():
            self._resume(load_checkpoint(path))

    def _resume(self, ckpt: dict[str, Any]) -> None:
        saved = SupernetConfig(**ckpt["config"])
        differs = [k for k in asdict(saved) if k != "epochs" and getattr(saved, k) != getattr(self.cfg, k)]
        if differs:
            k = differs[0]
            raise UserInputError(
                f"{self.run_dir} was trained with {k}={getattr(saved, k)!r}, not {getattr(self.cfg, k)!r}; "
                "use another --run-dir"
            )
        self.net.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.epoch = int(ckpt["epoch"])
        self.history = list(ckpt["history"])

    def _sample(self, rng: random.Random) -> Any:
        if self.cfg.fair:
            if not self._fair_queue:
                self._fair_queue = list(self.space.fair_archs(rng))  # type: ignore[attr-defined]
            return self._fair_queue.pop(0)
        return self.space.sample(rng) if self.distinct is None else rng.choice(self.distinct)

    def _children(self, rng: random.Random) -> list[tuple[Any, bool]]:
        """(architecture, is_teacher) of one step."""
        if self.cfg.strategy == "spos":
            return [(self._sample(rng), True)]
        space: Any = self.space
        randoms = [(self._sample(rng), False) for _ in range(self.cfg.random_children)]
        return [(space.largest(), True), (space.smallest(), False), *randoms]

    def _step(self, x: torch.Tensor, y: torch.Tensor, rng: random.Random, where: str) -> float:
        cfg, net = self.cfg, self.net
        self.optimizer.zero_grad(set_to_none=True)
        soft: torch.Tensor | None = None
        teacher_loss = math.nan
        use_amp = cfg.amp and self.device.type == "cuda"
        for arch, teacher in self._children(rng):
            net.set_active(arch)  # type: ignore[operator]
            _set_dropout(net, cfg.dropout if teacher and cfg.strategy == "sandwich" else 0.0)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
                out = net(x)
                out = out[0] if isinstance(out, tuple) else out
                if teacher:
                    loss = F.cross_entropy(out.float(), y, label_smoothing=cfg.label_smoothing)
                    if cfg.strategy == "sandwich" and cfg.weight_decay > 0:
                        loss = loss + 0.5 * cfg.weight_decay * sum(p.pow(2).sum() for p in _decay_params(net))
                    soft = F.softmax(out.detach().float(), dim=1)
                    teacher_loss = float(loss.detach())
                else:
                    assert soft is not None
                    loss = -(soft * F.log_softmax(out.float(), dim=1)).sum(dim=1).mean()
            check_finite(loss, f"supernet {where}")
            loss.backward()  # child by child: only one child's graph is held at a time
        apply_gradients(self.optimizer, net.parameters(), scheduler=self.scheduler, grad_clip=cfg.grad_clip)
        return teacher_loss

    def train(
        self, on_epoch: Callable[[dict[str, float]], None] | None = None, *, until: int | None = None
    ) -> list[dict[str, float]]:
        """Train up to ``cfg.epochs`` epochs (or stop after epoch ``until``: the schedule still spans
        ``cfg.epochs``, so a run can be evaluated at several budgets along one schedule)."""
        cfg = self.cfg
        stop = cfg.epochs if until is None else min(until, cfg.epochs)
        while self.epoch < stop:
            epoch = self.epoch
            torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout and any other torch randomness of this epoch
            gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
            rng = random.Random(cfg.seed * 1000 + epoch)
            self._fair_queue = []  # a fairness cycle never spans epochs: resume stays exact
            self.net.train()
            start, losses = time.perf_counter(), []
            for step, idx in enumerate(minibatches(len(self.data.x_train), cfg.batch_size, gen)):
                x = self.data.x_train[idx]
                if cfg.augment:
                    x = augment(x, gen)
                x, y = x.to(self.device), self.data.y_train[idx].to(self.device)
                losses.append(self._step(x, y, rng, f"epoch {epoch + 1}, step {step + 1}"))
            seconds = time.perf_counter() - start
            row = {"epoch": float(epoch + 1), "train_loss": float(np.mean(losses)), "seconds": seconds}
            row["images_per_s"] = len(self.data.x_train) / seconds
            if cfg.strategy == "sandwich":
                space: Any = self.space
                row["largest_accuracy"] = child_accuracy(self.net, space.largest(), self.data, self.recal, self.device)
                row["smallest_accuracy"] = child_accuracy(
                    self.net, space.smallest(), self.data, self.recal, self.device
                )
            else:
                probe = self.space.sample(random.Random(cfg.seed))
                row["probe_accuracy"] = child_accuracy(self.net, probe, self.data, self.recal, self.device)
            self.epoch += 1
            self.history.append(row)
            self.save()
            if on_epoch is not None:
                on_epoch(row)
        return self.history

    def save(self) -> Path:
        path = self.run_dir / CHECKPOINT
        state = {
            "config": asdict(self.cfg),
            "epoch": self.epoch,
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": self.history,
        }
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        return path
