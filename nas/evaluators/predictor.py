"""``predictor`` (zero-shot score, no training) and ``predictor+train`` (the predictor screens, survivors train)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.evaluators import register
from nas.evaluators.base import BUILD_KEYS, Screened, profile
from nas.evaluators.train import TrainEvaluator
from nas_ground.errors import UserInputError
from search_spaces import SearchSpace
from search_spaces.base import example_input


class _PredictorScorer:
    """Build -> ONNX -> compact text + graph summary -> predictor score, plus params/FLOPs/latency."""

    def __init__(self, space: SearchSpace[Any], predictor: str | None, build_options: dict[str, Any]) -> None:
        from predictors.encoder import Encoder
        from predictors.zero_shot import load_predictor

        self.space = space
        self.build_options = build_options
        self.predictor = load_predictor(predictor)
        self.encoder = Encoder(self.predictor.encoder_name)

    def build(self, arch: Any) -> nn.Module:
        torch.manual_seed(0)
        return self.space.build(arch, **self.build_options).eval()

    def score(self, arch: Any) -> dict[str, float]:
        from onnx_bench.export import export_bytes
        from onnx_bench.io import load_onnx
        from predictors.zero_shot import describe_model

        model = self.build(arch)
        example = example_input(self.space)
        proto = load_onnx(export_bytes(model, example=example), check=False)
        text, summary = describe_model(proto, self.predictor.text_format)
        score = float(self.predictor.score([text], [summary], self.encoder)[0])
        return {"score": score, **profile(model, example)}


@register("predictor")
class PredictorEvaluator:
    """Zero-shot: the predictor's score of the candidate's ONNX text (no training), params, FLOPs, latency."""

    metrics: tuple[str, ...] = ("score", "params", "flops", "latency_ms")

    def __init__(
        self,
        space: SearchSpace[Any],
        *,
        predictor: str | None = None,
        data_dir: str | None = None,
        artifacts_dir: str | None = None,
        **options: Any,
    ) -> None:
        unknown = sorted(set(options) - set(BUILD_KEYS))
        if unknown:
            raise UserInputError(f"unknown predictor evaluator option {unknown[0]!r}; valid: predictor, {BUILD_KEYS}")
        self.scorer = _PredictorScorer(space, predictor, options)

    def evaluate(self, arch: Any, *, seed: int | None = None) -> dict[str, float]:
        return self.scorer.score(arch)

    def final_metrics(self, arch: Any) -> dict[str, float]:
        return {}

    def model(self, arch: Any) -> nn.Module:
        return self.scorer.build(arch)


@register("predictor+train")
class PredictorTrainEvaluator:
    """Two stages: the predictor screens every candidate; only those on the predicted Pareto front of the
    candidates screened so far (predictor score up, params down) are trained with the `train` evaluator.

    A candidate is trained when no earlier screened candidate has both a higher-or-equal score and fewer-or-equal
    params (one of them strictly); the others end as pruned trials that carry their predicted score. With
    ``explore`` > 0, that share of screened-out candidates is trained anyway (seeded), so that a predictor that
    transfers badly cannot starve the search.
    """

    metrics: tuple[str, ...] = ("accuracy", "score", *TrainEvaluator.metrics[1:])

    def __init__(
        self,
        space: SearchSpace[Any],
        *,
        predictor: str | None = None,
        explore: float = 0.1,
        data_dir: str | None = None,
        artifacts_dir: str | None = None,
        test_images: int = 10_000,
        **options: Any,
    ) -> None:
        if not 0.0 <= explore <= 1.0:
            raise UserInputError(f"explore={explore} must be in 0..1")
        self.train = TrainEvaluator(
            space, data_dir=data_dir, artifacts_dir=artifacts_dir, test_images=test_images, **options
        )
        self.scorer = _PredictorScorer(space, predictor, self.train.build_options)
        self.explore = explore
        self.rng = random.Random(self.train.config.seed)
        self.screened: list[tuple[float, float]] = []  # (score, params) of every candidate seen

    def restore(self, earlier: list[dict[str, float]]) -> None:
        """Resume: the (score, params) of the candidates screened by earlier runs of the same study."""
        self.screened = [(m["score"], m["params"]) for m in earlier if "score" in m and "params" in m]

    def _dominated(self, score: float, params: float) -> bool:
        return any(s >= score and p <= params and (s > score or p < params) for s, p in self.screened)

    def evaluate(self, arch: Any, *, seed: int | None = None) -> dict[str, float]:
        cheap = self.scorer.score(arch)
        dominated = self._dominated(cheap["score"], cheap["params"])
        self.screened.append((cheap["score"], cheap["params"]))
        if dominated and self.rng.random() >= self.explore:
            raise Screened(f"screened out: predicted score {cheap['score']:.4g} dominated", cheap)
        # The architecture's params/FLOPs/latency were measured by the screen: only the training is left.
        score = cheap.pop("score")
        return {**cheap, **self.train.fit(arch, self.train.build(arch, seed), seed), "score": score}

    def final_metrics(self, arch: Any) -> dict[str, float]:
        return self.train.final_metrics(arch)

    def model(self, arch: Any) -> nn.Module:
        return self.train.model(arch)

    def artifacts(self, arch: Any) -> list[Path]:
        return self.train.artifacts(arch)
