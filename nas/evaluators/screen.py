"""``screened``: one screening mechanism for any cheap scorer in front of any expensive evaluator.

``--evaluator screened`` with options ``cheap`` (``predictor``, ``proxy:NAME``, ``ensemble``, any evaluator name),
``expensive`` (``train``, ``table``, ...), ``cost`` (the cost objective the cheap evaluator measures: ``params``,
``flops``, ``latency_ms``) and ``explore``; ``predictor+train`` is this with ``cheap=predictor, expensive=train``.
The choice is part of the evaluator options, so the run's ``config.yaml`` records it.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from torch import nn

from nas.evaluators import make_evaluator, register
from nas.evaluators.base import BUILD_KEYS, Screened
from nas_ground.errors import UserInputError
from search_spaces import SearchSpace


@register("screened")
class ScreenedEvaluator:
    """The cheap evaluator scores every candidate; the expensive one evaluates only those the cheap figures cannot
    rule out. A candidate is ruled out when an earlier candidate (screened or not) has a higher-or-equal cheap score
    and a lower-or-equal cost, one of them strictly: the predicted Pareto front of (score up, cost down) decides.
    Ruled-out candidates end as pruned trials carrying their cheap figures; with ``explore`` > 0 that share of them
    is evaluated anyway (seeded), so that a misleading scorer cannot starve the search.
    """

    def __init__(
        self,
        space: SearchSpace[Any],
        *,
        cheap: str = "predictor",
        expensive: str = "train",
        cost: str = "params",
        explore: float = 0.1,
        cheap_options: dict[str, Any] | None = None,
        data_dir: str | None = None,
        artifacts_dir: str | None = None,
        **expensive_options: Any,
    ) -> None:
        if not 0.0 <= float(explore) <= 1.0:
            raise UserInputError(f"explore={explore} must be in 0..1")
        if cheap == "screened" or expensive == "screened":
            raise UserInputError("screened cannot screen itself: name a cheap and an expensive evaluator")
        self.cheap = make_evaluator(cheap, space, data_dir=data_dir, **(cheap_options or {}))
        self.expensive = make_evaluator(
            expensive, space, data_dir=data_dir, artifacts_dir=artifacts_dir, **expensive_options
        )
        self.score_name = self.cheap.metrics[0]  # predictor/ensemble: score; proxy:NAME: NAME
        if cost not in self.cheap.metrics:
            valid = ", ".join(self.cheap.metrics[1:])
            raise UserInputError(f"cost {cost!r} is not measured by the cheap evaluator {cheap!r}; valid: {valid}")
        self.cost = cost
        self.explore = float(explore)
        self.metrics: tuple[str, ...] = tuple(dict.fromkeys((*self.expensive.metrics, "score")))
        self.rng = random.Random(0)
        self.screened: list[tuple[float, float]] = []  # (cheap score, cost) of every candidate seen

    def restore(self, earlier: list[dict[str, float]]) -> None:
        """Resume: the (score, cost) of the candidates seen by earlier runs of the same study."""
        self.screened = [(m["score"], m[self.cost]) for m in earlier if "score" in m and self.cost in m]

    def _dominated(self, score: float, cost: float) -> bool:
        return any(s >= score and c <= cost and (s > score or c < cost) for s, c in self.screened)

    def _screen(self, arch: Any) -> float:
        """The cheap score of ``arch``; raises `Screened` when its (score, cost) is ruled out."""
        cheap = self.cheap.evaluate(arch)
        score, cost = float(cheap[self.score_name]), float(cheap[self.cost])
        dominated = self._dominated(score, cost)
        self.screened.append((score, cost))
        if dominated and self.rng.random() >= self.explore:
            figures = {**cheap, "score": score}
            raise Screened(f"screened out: {self.score_name} {score:.4g} at {self.cost} {cost:.4g} dominated", figures)
        return score

    def evaluate(self, arch: Any, *, seed: int | None = None) -> dict[str, float]:
        score = self._screen(arch)
        return {**self.expensive.evaluate(arch, seed=seed), "score": score}

    def evaluate_rung(self, arch: Any, *, first: bool, **rung: Any) -> dict[str, float]:
        """Multi-fidelity: the cheap scorer decides who starts (the first rung), the rungs who continue."""
        if not first:
            return self.expensive.evaluate_rung(arch, first=False, **rung)  # type: ignore[attr-defined]
        score = self._screen(arch)
        return {**self.expensive.evaluate_rung(arch, first=True, **rung), "score": score}  # type: ignore[attr-defined]

    def final_metrics(self, arch: Any) -> dict[str, float]:
        return self.expensive.final_metrics(arch)

    def model(self, arch: Any) -> nn.Module:
        return self.expensive.model(arch)

    def artifacts(self, arch: Any) -> list[Path]:
        files = getattr(self.expensive, "artifacts", None)
        return files(arch) if callable(files) else []


@register("predictor+train")
def predictor_train(
    space: SearchSpace[Any], *, predictor: str | None = None, explore: float = 0.1, **options: Any
) -> ScreenedEvaluator:
    """``screened`` with the zero-shot predictor in front of training (params as the cost): the predictor scores
    the network the training builds (the same build options)."""
    cheap_options: dict[str, Any] = {"predictor": predictor, **{k: options[k] for k in BUILD_KEYS if k in options}}
    return ScreenedEvaluator(
        space,
        cheap="predictor",
        expensive="train",
        cost="params",
        explore=explore,
        cheap_options=cheap_options,
        **options,
    )
