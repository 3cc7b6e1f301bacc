"""``predictor``: the zero-shot score, no training (``predictor+train``, the predictor screening training, is in
`nas.evaluators.screen`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nas.evaluators import register
from nas.evaluators.base import BUILD_KEYS, profile
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
