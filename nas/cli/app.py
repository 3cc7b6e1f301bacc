"""The `nas` Typer application, its consoles and what several command groups share."""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from nas_ground.errors import UserInputError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Neural architecture search.",
)

err = Console(stderr=True)

out = Console()


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (values parsed as YAML scalars) into a dict."""
    import yaml

    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserInputError(f"bad option {pair!r}: write KEY=VALUE")
        options[key] = yaml.safe_load(value)
    return options


def print_mapping(summary: dict[str, Any], title: str, json_out: bool) -> None:
    """A flat summary as one JSON line or as a two-column table."""
    import json

    if json_out:
        sys.stdout.write(json.dumps(summary) + "\n")
        return
    table = Table(title=title, show_header=False)
    for key, value in summary.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict | list) else str(value))
    out.print(table)
