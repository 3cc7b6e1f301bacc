"""``nas show RUN_DIR``: a finished run's Pareto front as a table of one line per member (or as JSON lines)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich import box
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from nas.cli.app import app, out
from nas_ground.errors import UserInputError
from search_spaces.base import arch_digest

ARCH_CHARS = 40  # characters of an architecture shown before "…"; the full string is in pareto.json
COUNTS = ("params", "flops", "macs")  # metrics shown as 372k, 1.05M
ARROWS = {"max": "↑", "min": "↓"}

T = TypeVar("T")


def short_id(arch: str) -> str:
    """The 8 hex digits that name an architecture in tables (the start of `arch_digest`)."""
    return arch_digest(arch)[:8]


def format_metric(name: str, value: Any) -> str:
    """A metric value in a few characters: counts as 372k / 1.05M, accuracies (percent) with 2 decimals, else .4g."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return str(value)
    if name in COUNTS:
        rounded = float(f"{value:.3g}")  # 999_999 becomes 1M, not 1e+03k
        for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(rounded) >= scale:
                return f"{rounded / scale:.3g}{suffix}"
    if "accuracy" in name:
        return f"{value:.2f}"
    return f"{value:.4g}"


def pareto_table(
    members: Sequence[Any],
    objectives: Sequence[tuple[str, str]],
    title: str,
    *,
    pareto_json: str | Path | None = None,
) -> Table:
    """One row per member (a `ParetoMember` or a mapping with ``trial``, ``arch``, ``metrics``), best first by the
    objectives in order: trial, short id, every objective, the ``test_accuracy*`` metrics present and the start of
    the architecture, each row one line at any console width (the architecture column gives way first).
    ``pareto_json``, where the full architectures are, becomes the caption."""
    names = [n for n, _ in objectives]
    rows = sorted(members, key=lambda m: _rank(_field(m, "metrics"), objectives))
    tests = sorted({k for m in rows for k in _field(m, "metrics") if k.startswith("test_accuracy")} - set(names))
    table = Table(
        title=escape(title),
        caption=escape(f"full architectures: {pareto_json}") if pareto_json is not None else None,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        collapse_padding=True,
        pad_edge=False,
    )
    table.add_column("trial", justify="right", no_wrap=True)
    table.add_column("id", no_wrap=True)
    for name, direction in objectives:
        table.add_column(f"{name} {ARROWS.get(direction, direction)}", justify="right", no_wrap=True)
    for name in tests:
        table.add_column(_test_header(name), justify="right", no_wrap=True)
    # Wrappable for rich (so it alone shrinks on a narrow console) but every cell is a no-wrap Text: one line.
    table.add_column("architecture", overflow="ellipsis", min_width=1)
    for m in rows:
        arch, metrics = str(_field(m, "arch")), _field(m, "metrics")
        cells = [format_metric(k, metrics[k]) if k in metrics else "" for k in [*names, *tests]]
        shown = arch if len(arch) <= ARCH_CHARS else arch[:ARCH_CHARS] + "…"
        table.add_row(str(_field(m, "trial")), short_id(arch), *cells, Text(shown, no_wrap=True, overflow="ellipsis"))
    return table


@app.command()
def show(
    run_dir: Annotated[Path, typer.Argument(help="Run directory of `nas search`.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the members as JSON lines.")] = False,
) -> None:
    """Print a finished run's Pareto front, one line per member (full architectures with --json)."""
    if not run_dir.is_dir():
        raise UserInputError(f"{run_dir}: no such run directory")
    path = run_dir / "pareto.json"
    if not path.is_file():
        if (run_dir / "config.yaml").is_file():
            raise UserInputError(f"{path} missing: the search has not finished (pareto.json is written at its end)")
        raise UserInputError(f"{run_dir} is not a run directory of `nas search` (no pareto.json)")
    objectives, members = _load_pareto(path)
    if json_out:
        for m in sorted(members, key=lambda m: _rank(m["metrics"], objectives)):
            record = {"trial": m["trial"], "id": short_id(m["arch"]), "arch": m["arch"], "metrics": m["metrics"]}
            sys.stdout.write(json.dumps(record) + "\n")
        return
    config = _load_config(run_dir / "config.yaml")
    about = ", ".join(f"{k} {config[k]}" for k in ("space", "evaluator") if config.get(k))
    title = f"Pareto front of {run_dir}: {len(members)} members" + (f" ({about})" if about else "")
    out.print(pareto_table(members, objectives, title, pareto_json=path))
    states = _trial_states(run_dir / "trials.csv")
    if states is not None:
        others = "".join(f", {n} {s.lower()}" for s, n in sorted(states.items()) if s not in ("COMPLETE", "FAIL"))
        out.print(f"trials: {states['COMPLETE']} completed, {states['FAIL']} failed{others}")


def _field(member: Any, name: str) -> Any:
    return member[name] if isinstance(member, Mapping) else getattr(member, name)


def _rank(metrics: Mapping[str, Any], objectives: Sequence[tuple[str, str]]) -> tuple[tuple[bool, float], ...]:
    """Sort key, best first: each objective in turn (a maximised one negated), a missing value last."""
    key: list[tuple[bool, float]] = []
    for name, direction in objectives:
        value = metrics.get(name)
        if isinstance(value, int | float):
            key.append((False, -float(value) if direction == "max" else float(value)))
        else:
            key.append((True, 0.0))
    return tuple(key)


def _test_header(name: str) -> str:
    """``test_accuracy`` is headed "test", ``test_accuracy_cifar100`` "test" over "cifar100": narrow columns; the
    full names are in pareto.json and in --json."""
    return "\n".join(["test", *(part for part in name.removeprefix("test_accuracy").split("_") if part)][:2])


def _read(path: Path, parse: Callable[[str], T]) -> T:
    try:
        return parse(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserInputError(f"{path} is unreadable: {exc}") from exc


def _load_pareto(path: Path) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """The objectives and members of a pareto.json, checked: a bad file raises `UserInputError` naming it."""
    data = _read(path, json.loads)
    bad = UserInputError(f"{path} is not a pareto.json of `nas search` (objectives NAME:max|min and members)")
    if not isinstance(data, dict) or not isinstance(data.get("objectives"), list):
        raise bad
    objectives = [(name, direction) for name, _, direction in (str(o).rpartition(":") for o in data["objectives"])]
    if not objectives or any(not n or d not in ARROWS for n, d in objectives):
        raise bad
    members = data.get("members")
    if not isinstance(members, list) or not all(
        isinstance(m, dict)
        and isinstance(m.get("trial"), int)
        and isinstance(m.get("arch"), str)
        and isinstance(m.get("metrics"), dict)
        for m in members
    ):
        raise bad
    return objectives, members


def _load_config(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        return {}
    try:
        data = _read(path, yaml.safe_load)
    except yaml.YAMLError as exc:
        raise UserInputError(f"{path} is unreadable: {str(exc).splitlines()[0]}") from exc
    return data if isinstance(data, dict) else {}


def _trial_states(path: Path) -> Counter[str] | None:
    """How many trials of ``trials.csv`` are in each state (COMPLETE, FAIL, ...); None without the file."""
    import csv
    import io

    def states(text: str) -> Counter[str]:
        reader = csv.DictReader(io.StringIO(text))
        if "state" not in (reader.fieldnames or []):
            raise ValueError("no state column")
        try:
            return Counter(row["state"] for row in reader)
        except csv.Error as exc:
            raise ValueError(str(exc)) from exc

    return _read(path, states) if path.is_file() else None
