"""``table``: benchmark ground truth instead of training (NAS-Bench-201 or NAS-Bench-Macro, by the space)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.evaluators import register
from nas.evaluators.base import Evaluator
from nas.tables import load_nb201_table, load_nbmacro_table, nb201_table_path, nbmacro_table_path
from nas_ground.errors import UserInputError
from search_spaces import SearchSpace

TABLE_COLUMNS = {
    "accuracy": "nb201v11_cifar10valid_valid_acc",  # CIFAR-10 validation accuracy, 200 epochs
    "test_accuracy": "nb201v11_cifar10_test_acc",  # CIFAR-10 test accuracy (train+valid), 200 epochs
    "test_accuracy_cifar100": "nats_cifar100_test",
    "test_accuracy_imagenet16": "nats_imagenet16_test",
}
DEFAULT_LATENCY = "lat_gold_6240_ms"  # a Xeon Gold 6240 CPU, batch 1


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
        if unknown:
            raise UserInputError(
                f"unknown table evaluator option {sorted(unknown)[0]!r}; valid: table, latency, with_flops"
            )
        if space.name != "nb201":
            raise UserInputError(f"evaluator 'table' needs --space nb201 or nbmacro, not {space.name!r}")
        path = Path(table) if table else nb201_table_path(data_dir)
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

    def evaluate(self, arch: Any, *, seed: int | None = None) -> dict[str, float]:
        row = self.row(arch)
        metrics = {
            "accuracy": row[TABLE_COLUMNS["accuracy"]],
            "params": row["params_M"] * 1e6,
            "latency_ms": row[self.latency],
            "nb201_index": row["nb201_index"],
        }
        metrics.update({k: v for k, v in row.items() if k.startswith("lat_")})
        if self.with_flops:
            from nas_ground.cost import count_flops

            metrics["flops"] = float(count_flops(self.model(arch), self.space.input_shape))
        return metrics

    def final_metrics(self, arch: Any) -> dict[str, float]:
        row = self.row(arch)
        return {k: row[col] for k, col in TABLE_COLUMNS.items() if k != "accuracy"}

    def model(self, arch: Any) -> nn.Module:
        torch.manual_seed(0)
        return self.space.build(arch).eval()


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

    def evaluate(self, arch: Any, *, seed: int | None = None) -> dict[str, float]:
        row = self.row(arch)
        return {"accuracy": float(row["test_acc"][0]), "params": float(row["params"]), "flops": float(row["flops"])}

    def final_metrics(self, arch: Any) -> dict[str, float]:
        runs = self.row(arch)["test_acc"]
        return {"test_accuracy": (float(runs[1]) + float(runs[2])) / 2.0}

    def model(self, arch: Any) -> nn.Module:
        torch.manual_seed(0)
        return self.space.build(arch).eval()
