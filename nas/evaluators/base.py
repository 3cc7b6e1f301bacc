"""What every evaluator shares: the protocol, the two outcomes that are not metrics, and the untrained cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from search_spaces.base import arch_digest


class TrialFailed(RuntimeError):
    """The evaluation of one architecture failed for a reason worth recording (e.g. divergence)."""


class Evaluator(Protocol):
    metrics: tuple[str, ...]  # what evaluate() returns; objectives are chosen among these

    def evaluate(self, arch: Any, *, seed: int | None = None) -> dict[str, float]:
        """The metrics of ``arch``. ``seed``: the trial's training seed (the search derives it from its own seed and
        the trial number); evaluators without training randomness ignore it, None means the evaluator's default."""
        ...

    def final_metrics(self, arch: Any) -> dict[str, float]:
        """Figures reported for Pareto members only (test accuracy): never used for search decisions."""
        ...

    def model(self, arch: Any) -> nn.Module:
        """The network to export for a Pareto member (trained weights where there are any)."""
        ...


class Screened(RuntimeError):
    """The candidate was screened out by the predictor without training (the trial is recorded as pruned)."""

    def __init__(self, message: str, metrics: dict[str, float]) -> None:
        super().__init__(message)
        self.metrics = metrics


def profile(model: nn.Module, inputs: tuple[int, ...] | torch.Tensor) -> dict[str, float]:
    """What every evaluator reports without training: params, FLOPs and measured CPU latency, for one input
    (a shape, or a batch-1 example such as `example_input`)."""
    from nas_ground.cost import count_flops, count_params, measure_latency_ms

    return {
        "params": float(count_params(model)),
        "flops": float(count_flops(model, inputs)),
        "latency_ms": measure_latency_ms(model, inputs),
    }


BUILD_KEYS = ("channels", "layers", "cells_per_stage", "drop_path", "auxiliary", "num_classes")
TEXT_BUILD_KEYS = ("dropout", "num_classes")  # spaces with ``modality = "text"``


def weights_path(artifacts_dir: str | Path, encoded_arch: str) -> Path:
    """Where a trained candidate's weights are kept in a run's artifacts directory (``models/``)."""
    return Path(artifacts_dir) / f"{arch_digest(encoded_arch)}.pt"
