"""``nas show`` and its Pareto table: one line per member at 80 and 120 columns, best first, bad run dirs exit 2."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from nas.cli.show import format_metric, pareto_table
from search_spaces.base import arch_digest
from tests.conftest import REPO
from tests.test_cli import assert_one_line_error, nas

OPS = ("sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7", "dil_conv_3x3", "max_pool_3x3", "avg_pool_3x3", "identity")


def nasnet_like(rng: random.Random) -> str:
    """A NASNet-format architecture string of about 300 characters."""
    cells = []
    for cell in ("normal", "reduce"):
        blocks = [
            f"{rng.choice(OPS)}~{rng.randrange(b + 2)}+{rng.choice(OPS)}~{rng.randrange(b + 2)}" for b in range(5)
        ]
        cells.append(f"{cell}=" + "|".join(blocks))
    return ";".join(cells)


def fabricated_members(n: int = 6, tests: bool = True) -> list[dict[str, Any]]:
    rng = random.Random(0)
    members = []
    for trial in range(n):
        metrics = {"accuracy": rng.uniform(60, 95), "params": rng.uniform(5e4, 5e6), "latency_ms": rng.uniform(1, 30)}
        if tests:
            metrics["test_accuracy"] = metrics["accuracy"] - 1
        members.append({"trial": trial * 3, "arch": nasnet_like(rng), "metrics": metrics})
    return members


@dataclass
class Member:
    """Shaped like `nas.search.pareto.ParetoMember` (imported, it would cost seconds of optuna import)."""

    trial: int
    arch: str
    metrics: dict[str, float] = field(default_factory=dict)
    onnx: str | None = None


def rendered(table: Any, width: int) -> list[str]:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text().splitlines()


@pytest.mark.parametrize("width", [80, 120])
def test_long_architectures_take_one_line_per_member(width: int) -> None:
    members = fabricated_members()
    assert all(len(m["arch"]) >= 280 for m in members)
    lines = rendered(pareto_table(members, [("accuracy", "max"), ("params", "min")], "front"), width)
    assert all(len(line) <= width for line in lines)
    for m in members:
        assert sum(arch_digest(m["arch"])[:8] in line for line in lines) == 1
    # Every line showing a piece of an architecture is a member's own line: nothing wrapped onto a second one.
    assert len([line for line in lines if "~" in line]) == len(members)


def test_rows_are_best_first_with_short_ids() -> None:
    members = fabricated_members()
    for objectives in ([("accuracy", "max"), ("params", "min")], [("params", "min"), ("accuracy", "max")]):
        name, direction = objectives[0]
        lines = rendered(pareto_table(members, objectives, "front"), 120)
        rows = [line.split() for line in lines if "~" in line]
        expected = sorted(members, key=lambda m: m["metrics"][name], reverse=direction == "max")
        assert [int(r[0]) for r in rows] == [m["trial"] for m in expected]
        assert [r[1] for r in rows] == [arch_digest(m["arch"])[:8] for m in expected]


def test_objective_and_test_accuracy_columns() -> None:
    objectives = [("accuracy", "max"), ("params", "min")]
    members = [Member(m["trial"], m["arch"], m["metrics"]) for m in fabricated_members(3)]
    table = pareto_table(members, objectives, "front", pareto_json="RUN/pareto.json")
    headers = [str(c.header) for c in table.columns]
    assert headers == ["trial", "id", "accuracy ↑", "params ↓", "test", "architecture"]
    text = "\n".join(rendered(table, 80))
    assert "full architectures: RUN/pareto.json" in text
    assert f"{members[0].metrics['test_accuracy']:.2f}" in text
    without = pareto_table(fabricated_members(3, tests=False), objectives, "front")
    assert "test" not in [str(c.header) for c in without.columns]


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("params", 1_234_567.0, "1.23M"),
        ("params", 45_600.0, "45.6k"),
        ("params", 999_999.0, "1M"),
        ("params", 512.0, "512"),
        ("flops", 2.5e9, "2.5G"),
        ("accuracy", 89.128, "89.13"),
        ("test_accuracy_cifar100", 68.1, "68.10"),
        ("latency_ms", 9.33954, "9.34"),
    ],
)
def test_format_metric(name: str, value: float, shown: str) -> None:
    assert format_metric(name, value) == shown


@pytest.fixture(scope="module")
def run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run directory: 8 trials of NB201 looked up in the table."""
    run_dir = tmp_path_factory.mktemp("show") / "run"
    args = ["search", "--space", "nb201", "--evaluator", "table", "--trials", "8", "--run-dir", str(run_dir)]
    proc = subprocess.run(
        [sys.executable, "-m", "nas", *args], capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ}
    )
    assert proc.returncode == 0, proc.stderr
    return run_dir


def test_show_lists_every_member(run: Path) -> None:
    members = json.loads((run / "pareto.json").read_text())["members"]
    proc = nas("show", str(run))
    assert proc.returncode == 0, proc.stderr
    for m in members:
        assert arch_digest(m["arch"])[:8] in proc.stdout
    assert "nb201" in proc.stdout
    assert "trials: 8 completed, 0 failed" in proc.stdout
    assert "full architectures:" in proc.stdout


def test_show_json_round_trips(run: Path) -> None:
    members = json.loads((run / "pareto.json").read_text())["members"]
    proc = nas("show", str(run), "--json")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert sorted((r["trial"], r["arch"]) for r in records) == sorted((m["trial"], m["arch"]) for m in members)
    assert all(r["id"] == arch_digest(r["arch"])[:8] for r in records)
    accuracies = [r["metrics"]["accuracy"] for r in records]
    assert accuracies == sorted(accuracies, reverse=True)


@pytest.mark.parametrize(
    ("files", "needle"),
    [
        (None, "no such run directory"),
        ({}, "not a run directory"),
        ({"config.yaml": "space: nb201\n"}, "has not finished"),
        ({"pareto.json": "{not json"}, "unreadable"),
        ({"pareto.json": '{"objectives": ["accuracy:max"], "members": 3}'}, "not a pareto.json"),
        ({"pareto.json": '{"objectives": ["accuracy:best"], "members": []}'}, "not a pareto.json"),
    ],
)
def test_bad_run_dirs_exit_2_naming_the_path(tmp_path: Path, files: dict[str, str] | None, needle: str) -> None:
    run_dir = tmp_path / "run"
    if files is not None:
        run_dir.mkdir()
        for name, text in files.items():
            (run_dir / name).write_text(text)
    proc = nas("show", str(run_dir))
    assert_one_line_error(proc, str(run_dir))
    assert needle in proc.stderr
