"""The benchmark tables a search can query instead of training: NAS-Bench-201 and NAS-Bench-Macro."""

from __future__ import annotations

import csv
import functools
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from nas_ground.data import DataError, resolve_data_dir
from nas_ground.errors import UserInputError

T = TypeVar("T")

NB201_FILE = "nb201/nb201.csv"
NBMACRO_FILE = "nas-bench-macro_cifar10.json"


def nb201_table_path(data_dir: str | Path | None) -> Path:
    path = resolve_data_dir(data_dir) / NB201_FILE
    if not path.is_file():
        raise DataError(f"NB201 table not found: {path}")
    return path


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


@functools.lru_cache(maxsize=4)
def load_nbmacro_table(path: str) -> dict[str, dict[str, Any]]:
    """The NAS-Bench-Macro table as {arch string: record} (all 6,561 strings; equal networks share a record)."""
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
    path = resolve_data_dir(data_dir) / "nbmacro" / NBMACRO_FILE
    if not path.is_file():
        raise DataError(f"NAS-Bench-Macro table not found: {path}")
    return path


def nested_sample(population: Sequence[T], k: int, seed: int) -> list[T]:
    """``k`` distinct items drawn uniformly, where the sample of ``k`` begins with the sample of any smaller ``k``
    (so a larger experiment extends a smaller one's cached results). Equal to ``random.Random(seed).sample`` whenever
    that one draws by rejection (``k`` well below the population size)."""
    rng, chosen, out = random.Random(seed), set[int](), list[T]()
    n = len(population)
    if not 0 <= k <= n:
        raise ValueError(f"cannot draw {k} distinct items from {n}")
    while len(out) < k:
        j = rng.randrange(n)
        if j not in chosen:
            chosen.add(j)
            out.append(population[j])
    return out
