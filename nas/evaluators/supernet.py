"""``supernet``: a child ranked by the weights it inherits from a trained supernet (`nas.supernet`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from nas.evaluators import register
from nas.evaluators.base import profile
from nas.supernet import load_checkpoint, recal_batches, supernet_data, supernet_from_checkpoint
from nas.train import evaluate_accuracy, resolve_device
from nas_ground.data import load_cifar10
from nas_ground.errors import UserInputError
from search_spaces import SearchSpace
from search_spaces.base import example_input
from search_spaces.bignas import recalibrate_bn


@register("supernet")
class SupernetEvaluator:
    """``--evaluator supernet``: a child's validation accuracy by inherited weights (extracted from the trained
    supernet, BN statistics recalibrated on training batches unless ``recalibrate`` is false), params, FLOPs,
    latency. The split and the recalibration batches are the supernet training's own."""

    metrics: tuple[str, ...] = ("accuracy", "params", "flops", "latency_ms")

    def __init__(
        self,
        space: SearchSpace[Any],
        *,
        supernet: str | None = None,
        recalibrate: bool = True,
        data_dir: str | None = None,
        artifacts_dir: str | None = None,
        test_images: int = 10_000,
        **options: Any,
    ) -> None:
        if supernet is None:
            raise UserInputError("--evaluator supernet needs --supernet RUN_DIR/checkpoint.pt")
        ignored = set(options) - {"channels", "layers"}  # build options belong to the checkpoint
        if ignored:
            raise UserInputError(f"unknown supernet evaluator option {sorted(ignored)[0]!r}; valid: recalibrate")
        ckpt = load_checkpoint(supernet)
        _, self.net, self.cfg = supernet_from_checkpoint(ckpt)
        if self.cfg.space != space.name:
            raise UserInputError(f"supernet {supernet} was trained on space {self.cfg.space!r}, not {space.name!r}")
        self.space = space
        self.device = resolve_device(self.cfg.device)
        self.net.to(self.device)
        self.cifar = load_cifar10(data_dir)
        self.data = supernet_data(self.cifar, self.cfg)
        self.recal = recal_batches(self.data, self.cfg, self.device) if recalibrate else None
        self.test_images = test_images

    def model(self, arch: Any) -> nn.Module:
        child = self.net.extract(arch).to(self.device)  # type: ignore[operator]
        if self.recal is not None:
            recalibrate_bn(child, self.recal)
        return child.eval()

    def evaluate(self, arch: Any, *, seed: int | None = None) -> dict[str, float]:
        child = self.model(arch)
        acc = evaluate_accuracy(child, self.data.x_val, self.data.y_val, device=self.device)
        return {"accuracy": acc, **profile(child.cpu(), example_input(self.space))}

    def final_metrics(self, arch: Any) -> dict[str, float]:
        n = min(self.test_images, len(self.cifar.test_x))
        acc = evaluate_accuracy(self.model(arch), self.cifar.test_x[:n], self.cifar.test_y[:n], device=self.device)
        return {"test_accuracy": acc}
