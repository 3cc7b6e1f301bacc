"""``nas export``, ``nas describe``, ``nas graph``: architectures to ONNX files, ONNX files to text and figures."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from nas.cli.app import app, out, parse_options, print_mapping
from nas_ground.errors import UserInputError


@app.command("export")
def export_cmd(
    space: Annotated[str, typer.Option(help="Search space: nasnet, darts, nb201, transformer, transformer-small.")],
    arch: Annotated[str, typer.Option(help="Encoded architecture.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="ONNX file to write.")],
    seed: Annotated[int, typer.Option(help="Weight initialisation seed (same seed, same bytes).")] = 0,
    option: Annotated[list[str] | None, typer.Option(help="Build option KEY=VALUE, e.g. channels=16.")] = None,
    dynamo: Annotated[bool, typer.Option(help="Use the dynamo exporter (slower) instead of the legacy one.")] = False,
    parity: Annotated[bool, typer.Option(help="Check onnxruntime against torch on the same input.")] = False,
) -> None:
    """Build an architecture and export it to a checked ONNX file (opset 17, shapes inferred)."""
    from nas_ground.atomic import atomic_write
    from onnx_bench.export import export_architecture
    from search_spaces import get_space

    search_space = get_space(space)
    exported = export_architecture(
        search_space,
        search_space.decode(arch),
        seed=seed,
        build_options=parse_options(option),
        dynamo=dynamo,
        parity=parity,
    )
    atomic_write(output, exported.data)
    out.print(f"{output} sha256={exported.sha256} bytes={len(exported.data)}", highlight=False)


@app.command()
def describe(
    file: Annotated[Path, typer.Argument(help="An ONNX file, from anywhere.")],
    format: Annotated[str, typer.Option("--format", help="chain_slim (ONNX-Net) or compact.")] = "chain_slim",
) -> None:
    """Print the text description of an ONNX model."""
    from onnx_bench.io import load_onnx
    from onnx_bench.text import FORMATS
    from onnx_bench.text import describe as describe_model

    if format not in FORMATS:
        raise UserInputError(f"unknown text format {format!r}; valid: {', '.join(FORMATS)}")
    text = describe_model(load_onnx(file, check=False), format)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


@app.command()
def graph(
    file: Annotated[Path, typer.Argument(help="An ONNX file, from anywhere.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the graph summaries of an ONNX model: ops, depth, params, FLOPs (multiply-accumulates), peak activation."""
    from onnx_bench.graph import summarize
    from onnx_bench.io import load_onnx

    print_mapping(summarize(load_onnx(file, check=False)), str(file), json_out)
