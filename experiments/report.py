"""Write BENCHMARKS.md from the raw results in experiments/results/*.json (``--check``: only say if it is stale)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from nas_ground.atomic import atomic_write  # nothing heavier (no torch): `make lint` runs the check

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "experiments" / "results"
BENCHMARKS = REPO / "BENCHMARKS.md"
FIELDS = ("key", "title", "command", "commit", "machine", "date", "body", "numbers")

# Section order, grouped by topic; a key not listed here follows them, sorted.
ORDER = (
    # search
    "nb201-search-quality",
    "pareto-quality",
    "pareto-quality-tuning-nb201",
    "quickstart-throughput",
    "final-train",
    "multi-fidelity",
    "multi-fidelity-gentle",
    "ray",
    "chaos",
    # the NB201 builder and training loop against the table
    "nb201-fidelity",
    "nb201-fidelity-n1-8ep",
    "nb201-fidelity-full-2ep",
    # ONNX export, descriptions and the bench
    "onnx-throughput",
    "nb201-bench-build",
    # training-free proxies
    "proxies-nb201",
    "proxies-transformer",
    # supernets
    "supernet-ranking-bignas",
    "supernet-ranking-darts",
    "supernet-tables-nb201",
    "supernet-tables-nbmacro",
    "supernet-ablations-nb201",
    "supernet-tables-nb201-distinct",
    "supernet-tables-nb201-fair",
    "supernet-search-nb201",
    "supernet-search-nb201-500",
    "supernet-search-nbmacro",
    # the zero-shot predictor
    "predictor-nb201",
    "label-darts",
    "label-nasnet",
    "label-bignas",
    "label-transformer-small-sst2",
    "predictor-families",
    "predictor-families-8",
    "default-predictor",
    "predictor-nasnet",
    "predictor-throughput-nb201",
    "predictor-throughput-nbmacro",
    "predictor-throughput-darts",
    "predictor-throughput-nb201-text",
)
HEADER = (
    "# Benchmarks\n\n"
    "Every figure here is measured by a script in `experiments/`, which stores its raw result (command, commit, "
    "machine, date, the rendered section and the raw numbers) in `experiments/results/KEY.json`. This file is "
    "generated from those results by `python -m experiments.report`: do not edit it by hand (`make lint` checks "
    "that it is up to date).\n"
)


class ResultError(Exception):
    """A results file that cannot be rendered."""


def save_result(result: dict[str, Any]) -> Path:
    """Write one result to ``experiments/results/KEY.json`` (atomically); numpy values are stored as plain ones."""

    def plain(value: Any) -> Any:
        if hasattr(value, "tolist"):  # numpy scalars and arrays
            return value.tolist()
        raise TypeError(f"{type(value).__name__} is not JSON-able")

    path = RESULTS / f"{result['key']}.json"
    atomic_write(path, json.dumps({k: result[k] for k in FIELDS}, indent=1, ensure_ascii=False, default=plain) + "\n")
    return path


def load_result(key: str) -> dict[str, Any]:
    """The stored result of ``key``."""
    path = RESULTS / f"{key}.json"
    if not path.is_file():
        raise ResultError(f"{path.relative_to(REPO)}: no such result (keys: {', '.join(_keys()) or 'none'})")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ResultError(f"{path.relative_to(REPO)}: not JSON ({exc})") from exc
    missing = [f for f in FIELDS if f not in result]
    if missing:
        raise ResultError(f"{path.relative_to(REPO)}: missing fields {', '.join(missing)}")
    if result["key"] != key:
        raise ResultError(f"{path.relative_to(REPO)}: holds key {result['key']!r}; the file is named after its key")
    return result


def _keys() -> list[str]:
    found = sorted(p.stem for p in RESULTS.glob("*.json"))
    return [k for k in ORDER if k in found] + [k for k in found if k not in ORDER]


def render(results: list[dict[str, Any]]) -> str:
    """BENCHMARKS.md for these results, in this order."""
    sections = [
        f"<!-- bench:{r['key']} -->\n## {r['title']}\n\n"
        f"- Command: `{r['command']}`\n- Machine: {r['machine']}\n- Date: {r['date']}\n- Commit: {r['commit']}\n\n"
        f"{r['body'].strip()}\n<!-- /bench:{r['key']} -->\n"
        for r in results
    ]
    return "\n".join([HEADER, *sections])


def expected() -> str:
    """What BENCHMARKS.md should hold now."""
    return render([load_result(k) for k in _keys()])


def write_benchmarks() -> None:
    """Regenerate BENCHMARKS.md from every stored result."""
    atomic_write(BENCHMARKS, expected())


app = typer.Typer(add_completion=False, rich_markup_mode="markdown")


@app.command(help=__doc__)
def main(
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 when BENCHMARKS.md differs from what would be written.")
    ] = False,
) -> None:
    try:
        text = expected()
    except ResultError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if not check:
        atomic_write(BENCHMARKS, text)
        return
    current = BENCHMARKS.read_text(encoding="utf-8") if BENCHMARKS.is_file() else ""
    if current != text:
        typer.echo(
            "BENCHMARKS.md is out of date with experiments/results: run `python -m experiments.report`", err=True
        )
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
