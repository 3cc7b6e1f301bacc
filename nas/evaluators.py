"""Evaluators by name: ``make_evaluator("train" | "table" | "proxy:synflow" | ..., ...)``: architecture -> metrics.

An evaluator is built from plain configuration (names and numbers), so a worker process can rebuild it.
"""

from __future__ import annotations

import csv
import functools
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from nas.data import Cifar10
from nas.text_data import SST2
from nas.text_train import TextTrainConfig, text_accuracy, text_train_config, train_text_model
from nas.train import Diverged, TrainConfig, evaluate_accuracy, resolve_device, train_model
from search_spaces import SearchSpace
from search_spaces.base import UserInputError, arch_digest, example_input


class TrialFailed(RuntimeError):
    """The evaluation of one architecture failed for a reason worth recording (e.g. divergence)."""


class Evaluator(Protocol):
    metrics: tuple[str, ...]  # what evaluate() returns; objectives are chosen among these

    def evaluate(self, arch: Any) -> dict[str, float]: ...

    def final_metrics(self, arch: Any) -> dict[str, float]:
        """Figures reported for Pareto members only (test accuracy): never used for search decisions."""
        ...

    def model(self, arch: Any) -> nn.Module:
        """The network to export for a Pareto member (trained weights where there are any)."""
        ...


_REGISTRY: dict[str, Callable[..., Evaluator]] = {}


def register(name: str) -> Callable[[Callable[..., Evaluator]], Callable[..., Evaluator]]:
    def deco(factory: Callable[..., Evaluator]) -> Callable[..., Evaluator]:
        _REGISTRY[name] = factory
        return factory

    return deco


def evaluator_names() -> list[str]:
    return sorted([*_REGISTRY, "proxy:NAME", "ensemble"])


def make_evaluator(name: str, space: SearchSpace[Any], **options: Any) -> Evaluator:
    if name == "ensemble" or name.startswith("proxy:"):
        from nas.proxy_evaluators import make_proxy_evaluator

        return make_proxy_evaluator(name, space, **options)
    if name not in _REGISTRY:
        raise UserInputError(f"unknown evaluator {name!r}; valid: {', '.join(evaluator_names())}")
    return _REGISTRY[name](space, **options)


def profile(model: nn.Module, inputs: tuple[int, ...] | torch.Tensor) -> dict[str, float]:
    """What every evaluator reports without training: params, FLOPs and measured CPU latency, for one input
    (a shape, or a batch-1 example such as `example_input`)."""
    from nas.profile import count_flops, count_params, measure_latency_ms

    return {
        "params": float(count_params(model)),
        "flops": float(count_flops(model, inputs)),
        "latency_ms": measure_latency_ms(model, inputs),
    }


BUILD_KEYS = ("channels", "layers", "cells_per_stage", "drop_path", "auxiliary", "num_classes")
TEXT_BUILD_KEYS = ("dropout", "num_classes")  # spaces with ``modality = "text"``


@register("train")
class TrainEvaluator:
    """Train each candidate on a CIFAR-10 subset; report validation accuracy, params, FLOPs, CPU latency.

    For a text space (``modality = "text"``) the data set is SST-2 (`nas.text_train`: AdamW, dev accuracy);
    the metrics keep their names, ``accuracy`` in percent on the dev sentences.
    """

    metrics: tuple[str, ...] = ("accuracy", "params", "flops", "latency_ms", "train_seconds", "train_loss")

    def __init__(
        self,
        space: SearchSpace[Any],
        *,
        data_dir: str | None = None,
        artifacts_dir: str | None = None,
        test_images: int = 10_000,
        **options: Any,
    ) -> None:
        from nas.data import load_cifar10

        self.space = space
        self.artifacts_dir = Path(artifacts_dir) if artifacts_dir else None
        if getattr(space, "modality", "image") == "text":
            self._init_text(data_dir, test_images, options)
            return
        self.build_options = {k: options.pop(k) for k in BUILD_KEYS if k in options}
        train_keys = set(TrainConfig.__dataclass_fields__)
        unknown = sorted(set(options) - train_keys)
        if unknown:
            valid = ", ".join(sorted(train_keys | set(BUILD_KEYS)))
            raise UserInputError(f"unknown train evaluator option {unknown[0]!r}; valid: {valid}")
        self.config: TrainConfig | TextTrainConfig = TrainConfig(**options)
        self.data: Cifar10 | SST2 = load_cifar10(data_dir)
        if not 1 <= test_images <= len(self.data.test_x):
            raise UserInputError(f"test_images={test_images} must be in 1..{len(self.data.test_x)}")
        self.test_images = test_images
        self.build(space.sample(random.Random(0)))  # bad build options fail here, not mid-run

    def _init_text(self, data_dir: str | None, test_images: int, options: dict[str, Any]) -> None:
        """SST-2 at the space's sequence length; the CLI's image-named budget options count sentences."""
        from nas.text_data import load_sst2

        self.build_options = {k: options.pop(k) for k in TEXT_BUILD_KEYS if k in options}
        self.config = text_train_config(options)
        self.data = load_sst2(data_dir, max_len=self.space.max_len)  # type: ignore[attr-defined]
        if test_images < 1:
            raise UserInputError(f"test_images={test_images} must be >= 1")
        self.test_images = min(test_images, len(self.data.test_y))  # SST-2 test: 1,821 sentences
        self.build(self.space.sample(random.Random(0)))

    def build(self, arch: Any) -> nn.Module:
        torch.manual_seed(self.config.seed)
        return self.space.build(arch, **self.build_options)

    def evaluate(self, arch: Any) -> dict[str, float]:
        model = self.build(arch)
        return {**profile(model, example_input(self.space)), **self.fit(arch, model)}

    def fit(self, arch: Any, model: nn.Module) -> dict[str, float]:
        """Train ``model`` (built by `build`); save its weights; accuracy, seconds and loss."""
        try:
            if isinstance(self.data, SST2) and isinstance(self.config, TextTrainConfig):
                result: Any = train_text_model(model, self.data, self.config)
            else:
                assert isinstance(self.data, Cifar10) and isinstance(self.config, TrainConfig)
                result = train_model(model, self.data, self.config)
        except Diverged as exc:
            raise TrialFailed(f"diverged: {exc}") from exc
        if self.artifacts_dir is not None:
            self.artifacts_dir.mkdir(parents=True, exist_ok=True)
            path = self.artifacts_dir / f"{arch_digest(self.space.encode(arch))}.pt"
            tmp = path.with_suffix(".pt.tmp")
            torch.save(model.cpu().state_dict(), tmp)
            tmp.replace(path)
        return {"accuracy": result.val_accuracy, "train_seconds": result.seconds, "train_loss": result.train_loss}

    def model(self, arch: Any) -> nn.Module:
        model = self.build(arch)
        if self.artifacts_dir is not None:
            path = self.artifacts_dir / f"{arch_digest(self.space.encode(arch))}.pt"
            if path.exists():
                model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()

    def final_metrics(self, arch: Any) -> dict[str, float]:
        """Test accuracy on the first ``test_images`` CIFAR-10 test images (all 10,000 by default; SST-2: all
        1,821 test sentences), from the weights saved by evaluate()."""
        if self.artifacts_dir is None:
            return {}
        path = self.artifacts_dir / f"{arch_digest(self.space.encode(arch))}.pt"
        if not path.exists():
            return {}
        model = self.model(arch).to(resolve_device(self.config.device))
        n, data = self.test_images, self.data
        if isinstance(data, SST2):
            return {"test_accuracy": text_accuracy(model, data.test_ids[:n], data.test_mask[:n], data.test_y[:n])}
        return {"test_accuracy": evaluate_accuracy(model, data.test_x[:n], data.test_y[:n])}


TABLE_COLUMNS = {
    "accuracy": "nb201v11_cifar10valid_valid_acc",  # CIFAR-10 validation accuracy, 200 epochs
    "test_accuracy": "nb201v11_cifar10_test_acc",  # CIFAR-10 test accuracy (train+valid), 200 epochs
    "test_accuracy_cifar100": "nats_cifar100_test",
    "test_accuracy_imagenet16": "nats_imagenet16_test",
}
DEFAULT_LATENCY = "lat_gold_6240_ms"  # a Xeon Gold 6240 CPU, batch 1


@functools.lru_cache(maxsize=4)
def load_nb201_table(path: str) -> dict[str, dict[str, float]]:
    """The NAS-Bench-201 table as {arch_str: {column: value}} (NaN where the source has no value)."""
    table: dict[str, dict[str, float]] = {}
    try:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                arch = row.pop("arch_str")
                row.pop("iso_unique_str", None)
                table[arch] = {k: float(v) if v != "" else math.nan for k, v in row.items()}
    except (OSError, ValueError, KeyError) as exc:
        raise UserInputError(f"cannot read the NB201 table {path}: {exc}") from exc
    if len(table) != 15625:
        raise UserInputError(f"NB201 table {path} has {len(table)} cells, expected 15625")
    return table


def load_nb201_identities(path: str) -> dict[str, str]:
    """arch_str -> ``iso_unique_str`` of the NB201 table: isomorphic cells (one network) share a value."""
    try:
        with open(path, newline="") as f:
            return {row["arch_str"]: row["iso_unique_str"] for row in csv.DictReader(f)}
    except (OSError, ValueError, KeyError) as exc:
        raise UserInputError(f"cannot read the NB201 table {path}: {exc}") from exc


@register("table")
def table_evaluator(space: SearchSpace[Any], **options: Any) -> Evaluator:
    """The benchmark table of the space: NAS-Bench-201 (`TableEvaluator`) or NAS-Bench-Macro
    (`MacroTableEvaluator`)."""
    if space.name == "nbmacro":
        return MacroTableEvaluator(space, **options)
    return TableEvaluator(space, **options)


class TableEvaluator:
    """NAS-Bench-201 ground truth from ``nb201/nb201.csv`` in the data directory: a full search in seconds."""

    def __init__(
        self,
        space: SearchSpace[Any],
        *,
        data_dir: str | None = None,
        table: str | None = None,
        latency: str = DEFAULT_LATENCY,
        with_flops: bool = False,
        artifacts_dir: str | None = None,
        **unknown: Any,
    ) -> None:
        from nas.data import DataError, resolve_data_dir

        if unknown:
            raise UserInputError(
                f"unknown table evaluator option {sorted(unknown)[0]!r}; valid: table, latency, with_flops"
            )
        if space.name != "nb201":
            raise UserInputError(f"evaluator 'table' needs --space nb201 or nbmacro, not {space.name!r}")
        path = Path(table) if table else resolve_data_dir(data_dir) / "nb201" / "nb201.csv"
        if not path.is_file():
            raise DataError(f"NB201 table not found: {path}")
        self.space = space
        self.table = load_nb201_table(str(path))
        some_row = next(iter(self.table.values()))
        if latency not in some_row:
            lats = ", ".join(k for k in some_row if k.startswith("lat_"))
            raise UserInputError(f"unknown NB201 latency column {latency!r}; valid: {lats}")
        self.latency = latency
        self.with_flops = with_flops
        lat_cols = tuple(k for k in some_row if k.startswith("lat_"))
        self.metrics = ("accuracy", "params", "latency_ms", *(("flops",) if with_flops else ()), *lat_cols)

    def row(self, arch: Any) -> dict[str, float]:
        return self.table[self.space.encode(arch)]

    def evaluate(self, arch: Any) -> dict[str, float]:
        row = self.row(arch)
        metrics = {
            "accuracy": row[TABLE_COLUMNS["accuracy"]],
            "params": row["params_M"] * 1e6,
            "latency_ms": row[self.latency],
            "nb201_index": row["nb201_index"],
        }
        metrics.update({k: v for k, v in row.items() if k.startswith("lat_")})
        if self.with_flops:
            from nas.profile import count_flops

            metrics["flops"] = float(count_flops(self.model(arch), self.space.input_shape))
        return metrics

    def final_metrics(self, arch: Any) -> dict[str, float]:
        row = self.row(arch)
        return {k: row[col] for k, col in TABLE_COLUMNS.items() if k != "accuracy"}

    def model(self, arch: Any) -> nn.Module:
        torch.manual_seed(0)
        return self.space.build(arch).eval()


NBMACRO_FILE = "nas-bench-macro_cifar10.json"


@functools.lru_cache(maxsize=4)
def load_nbmacro_table(path: str) -> dict[str, dict[str, Any]]:
    """The NAS-Bench-Macro table as {arch string: record} (all 6,561 strings; equal networks share a record)."""
    import json

    try:
        with open(path) as f:
            table: dict[str, dict[str, Any]] = json.load(f)
        for key, row in table.items():
            if len(row["test_acc"]) != 3 or not {"params", "flops", "mean_acc"} <= set(row):
                raise KeyError(f"{key}: test_acc (3 runs), mean_acc, params and flops expected")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserInputError(f"cannot read the NAS-Bench-Macro table {path}: {exc}") from exc
    if len(table) != 3**8:
        raise UserInputError(f"NAS-Bench-Macro table {path} has {len(table)} strings, expected {3**8}")
    return table


def nbmacro_table_path(data_dir: str | Path | None) -> Path:
    from nas.data import DataError, resolve_data_dir

    path = resolve_data_dir(data_dir) / "nbmacro" / NBMACRO_FILE
    if not path.is_file():
        raise DataError(f"NAS-Bench-Macro table not found: {path}")
    return path


class MacroTableEvaluator:
    """NAS-Bench-Macro ground truth (``nbmacro/nas-bench-macro_cifar10.json`` in the data directory). Each network
    was trained three times: a search sees the first run as ``accuracy``; ``test_accuracy``, the mean of the other
    two, is reported for Pareto members only, so a search is never judged on the figure it selected by."""

    metrics: tuple[str, ...] = ("accuracy", "params", "flops")

    def __init__(
        self,
        space: SearchSpace[Any],
        *,
        data_dir: str | None = None,
        table: str | None = None,
        with_flops: bool = True,  # accepted like the NB201 table's option: FLOPs always come from the table
        artifacts_dir: str | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise UserInputError(
                f"unknown NAS-Bench-Macro table option {sorted(unknown)[0]!r}; valid: table, with_flops"
            )
        path = Path(table) if table else nbmacro_table_path(data_dir)
        self.space = space
        self.table = load_nbmacro_table(str(path))

    def row(self, arch: Any) -> dict[str, Any]:
        return self.table[self.space.encode(arch)]

    def evaluate(self, arch: Any) -> dict[str, float]:
        row = self.row(arch)
        return {"accuracy": float(row["test_acc"][0]), "params": float(row["params"]), "flops": float(row["flops"])}

    def final_metrics(self, arch: Any) -> dict[str, float]:
        runs = self.row(arch)["test_acc"]
        return {"test_accuracy": (float(runs[1]) + float(runs[2])) / 2.0}

    def model(self, arch: Any) -> nn.Module:
        torch.manual_seed(0)
        return self.space.build(arch).eval()


class Screened(RuntimeError):
    """The candidate was screened out by the predictor without training (the trial is recorded as pruned)."""

    def __init__(self, message: str, metrics: dict[str, float]) -> None:
        super().__init__(message)
        self.metrics = metrics


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


@register("supernet")
def _supernet_evaluator(space: SearchSpace[Any], **options: Any) -> Evaluator:
    """Children ranked by weights inherited from a trained supernet (see `nas.supernet.SupernetEvaluator`)."""
    from nas.supernet import SupernetEvaluator

    return SupernetEvaluator(space, **options)


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

    def evaluate(self, arch: Any) -> dict[str, float]:
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

    def evaluate(self, arch: Any) -> dict[str, float]:
        cheap = self.scorer.score(arch)
        dominated = self._dominated(cheap["score"], cheap["params"])
        self.screened.append((cheap["score"], cheap["params"]))
        if dominated and self.rng.random() >= self.explore:
            raise Screened(f"screened out: predicted score {cheap['score']:.4g} dominated", cheap)
        # The architecture's params/FLOPs/latency were measured by the screen: only the training is left.
        score = cheap.pop("score")
        return {**cheap, **self.train.fit(arch, self.train.build(arch)), "score": score}

    def final_metrics(self, arch: Any) -> dict[str, float]:
        return self.train.final_metrics(arch)

    def model(self, arch: Any) -> nn.Module:
        return self.train.model(arch)
