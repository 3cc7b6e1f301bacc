"""Training-free evaluators: ``proxy:NAME`` (one proxy) and ``ensemble`` (mean percentile of several).

Both build the candidate with a fixed seed, score it on one fixed batch of real data (CIFAR-10 images or SST-2
tokens, by the space) and report params, FLOPs and CPU latency beside the score, so the usual objectives work.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from nas.evaluators.base import BUILD_KEYS, TrialFailed, profile
from nas_ground.errors import UserInputError
from search_spaces import SearchSpace
from search_spaces.base import example_input

PROXY_KEYS = ("seed", "batch_size", "eta", "device", "train_mode")


class _ProxyScorer:
    """One space, one fixed batch, one proxy configuration: arch -> {proxy: value}."""

    def __init__(
        self, space: SearchSpace[Any], names: list[str], data_dir: str | None, options: dict[str, Any]
    ) -> None:
        from predictors.proxies import ProxyConfig, parse_proxy_names
        from predictors.proxies.data import space_batch

        self.space = space
        self.names = parse_proxy_names(names)
        self.build_options = {k: options.pop(k) for k in BUILD_KEYS if k in options}
        config_options = {k: options.pop(k) for k in PROXY_KEYS if k in options}
        self.config = ProxyConfig(**config_options)
        if options:
            bad = sorted(options)[0]
            raise UserInputError(f"unknown proxy evaluator option {bad!r}; valid: {', '.join(PROXY_KEYS + BUILD_KEYS)}")
        self.batch = space_batch(space, self.config, data_dir)

    def build(self, arch: Any) -> nn.Module:
        torch.manual_seed(self.config.seed)
        return self.space.build(arch, **self.build_options)

    def values(self, arch: Any, model: nn.Module | None = None) -> dict[str, float]:
        """Every proxy's value; a proxy that cannot be computed for this network fails the trial with its reason."""
        from predictors.proxies import ProxyError, compute_proxies

        try:
            return compute_proxies(model or self.build(arch), self.names, self.batch, self.config)
        except ProxyError as exc:
            raise TrialFailed(str(exc)) from exc


class ProxyEvaluator:
    """``proxy:NAME``: the proxy's value (higher is better), params, FLOPs and latency."""

    def __init__(self, space: SearchSpace[Any], *, proxy: str, data_dir: str | None = None, **options: Any) -> None:
        options.pop("artifacts_dir", None)
        self.scorer = _ProxyScorer(space, [proxy], data_dir, options)
        self.proxy = self.scorer.names[0]
        self.metrics: tuple[str, ...] = tuple(dict.fromkeys((self.proxy, "params", "flops", "latency_ms")))

    def evaluate(self, arch: Any, *, seed: int | None = None) -> dict[str, float]:

        model = self.scorer.build(arch)
        values = self.scorer.values(arch, model)
        if not math.isfinite(values[self.proxy]):  # e.g. naswot_v1 of a network whose output ignores its input
            raise TrialFailed(f"proxy {self.proxy} is not finite for this network")
        return {**profile(model, example_input(self.scorer.space)), **values}

    def final_metrics(self, arch: Any) -> dict[str, float]:
        return {}

    def model(self, arch: Any) -> nn.Module:
        return self.scorer.build(arch)


# Chosen by experiments/nb201_proxies.py among all sets of 2-4 proxies on 500 NB201 cells (CIFAR-10 rho), judged
# on 2,500 others (that table was stitched from runs of older code and is out of BENCHMARKS.md until re-run).
# Token models have no input gradient (naswot_v1): W-PCA and snip, the best two on the (noisy) transformer
# benchmark.
DEFAULT_MEMBERS = {"image": "synflow,naswot_v1,wpca", "text": "wpca,snip"}


class EnsembleEvaluator:
    """``ensemble``: mean over members of the candidate's percentile among a fixed reference sample.

    The reference is ``reference`` architectures sampled from the space with the evaluator's seed and scored
    once at start; a candidate's percentile for a member is the share of reference values below it (ties
    count half; a non-finite value is 0). The score is order-independent, so every trial is judged alike.
    Members are proxy names, and ``predictor`` for the zero-shot predictor (option ``predictor`` = its file);
    the default is `DEFAULT_MEMBERS` of the space's modality.
    """

    def __init__(
        self,
        space: SearchSpace[Any],
        *,
        members: str | None = None,
        reference: int = 32,
        predictor: str | None = None,
        data_dir: str | None = None,
        **options: Any,
    ) -> None:
        options.pop("artifacts_dir", None)
        members = members or DEFAULT_MEMBERS[getattr(space, "modality", "image")]
        names = [m.strip() for m in members.split(",") if m.strip()]
        if len(names) < 2:
            raise UserInputError(f"ensemble members={members!r}: give at least two (comma-separated)")
        if reference < 2:
            raise UserInputError(f"ensemble reference={reference} must be >= 2")
        self.use_predictor = "predictor" in names
        proxies = [n for n in names if n != "predictor"]
        build_options = {k: options[k] for k in BUILD_KEYS if k in options}
        self.scorer = _ProxyScorer(space, proxies, data_dir, options)
        self.predictor = None
        if self.use_predictor:
            from nas.evaluators.predictor import _PredictorScorer

            self.predictor = _PredictorScorer(space, predictor, build_options)
        self.members = [*self.scorer.names, *(["predictor"] if self.use_predictor else [])]
        self.metrics = tuple(dict.fromkeys(("score", *self.members, "params", "flops", "latency_ms")))
        rng = random.Random(self.scorer.config.seed)
        archs = [space.sample(rng) for _ in range(reference)]
        rows = [self._members(a, self.scorer.build(a)) for a in archs]
        self.reference = {m: np.array([r[m] for r in rows], dtype=np.float64) for m in self.members}

    def _members(self, arch: Any, model: nn.Module) -> dict[str, float]:
        values = self.scorer.values(arch, model)
        if self.predictor is not None:
            values["predictor"] = self.predictor.score(arch)["score"]
        return values

    def percentile(self, member: str, value: float) -> float:
        if not math.isfinite(value):
            return 0.0
        ref = self.reference[member]
        ref = np.where(np.isfinite(ref), ref, -np.inf)
        return float(((ref < value).sum() + 0.5 * (ref == value).sum()) / len(ref))

    def evaluate(self, arch: Any, *, seed: int | None = None) -> dict[str, float]:
        model = self.scorer.build(arch)
        values = self._members(arch, model)
        score = float(np.mean([self.percentile(m, values[m]) for m in self.members]))
        return {"score": score, **values, **profile(model, example_input(self.scorer.space))}

    def final_metrics(self, arch: Any) -> dict[str, float]:
        return {}

    def model(self, arch: Any) -> nn.Module:
        return self.scorer.build(arch)


def make_proxy_evaluator(name: str, space: SearchSpace[Any], **options: Any) -> ProxyEvaluator | EnsembleEvaluator:
    """``proxy:NAME`` or ``ensemble``."""
    if name == "ensemble":
        return EnsembleEvaluator(space, **options)
    prefix, _, proxy = name.partition(":")
    if prefix != "proxy" or not proxy:
        raise UserInputError(f"evaluator {name!r}: write proxy:NAME, e.g. proxy:synflow")
    return ProxyEvaluator(space, proxy=proxy, **options)


def default_objectives(name: str) -> list[str]:
    """``proxy:NAME`` or ``ensemble`` without objectives given: the score up, params down."""
    if name == "ensemble":
        return ["score:max", "params:min"]
    from predictors.proxies import parse_proxy_names

    proxy = parse_proxy_names(name.split(":", 1)[1])[0]
    return [f"{proxy}:max"] if proxy in ("params", "flops") else [f"{proxy}:max", "params:min"]
