"""The zero-shot predictor's throughput: ONNX file -> score, networks per second on this machine, cold and warm.

Random networks of a space (``--space``: NB201 cells in the benchmark skeleton, C=16, N=5; or NAS-Bench-Macro
networks, MobileNetV2-size) are exported to ONNX files first (not timed). Cold: empty
embedding and description caches, the encoder already loaded (its one-time load is reported apart): every
file is read, described (`compact`), summarised, embedded and scored. Warm: the same call again, everything
cached (the files are only stat-ed).
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path
from typing import Annotated, Literal

import torch
import typer

from experiments.record import record
from onnx_bench.export import export_architecture
from predictors.encoder import Encoder
from predictors.zero_shot import load_predictor, score_files
from search_spaces import get_space

app = typer.Typer(add_completion=False, rich_markup_mode="markdown")


@app.command(help=__doc__)
def main(
    files: Annotated[int, typer.Option(help="Random networks to export and score.")] = 200,
    warm_repeats: Annotated[int, typer.Option(help="Warm passes (the best one counts).")] = 5,
    predictor: Annotated[str | None, typer.Option(help="Predictor file (default: the shipped one).")] = None,
    space: Annotated[Literal["nb201", "nbmacro"], typer.Option(help="Search space of the networks.")] = "nb201",
    key: Annotated[
        str | None,
        typer.Option(help="Result to write, experiments/results/KEY.json (default: predictor-throughput-SPACE)."),
    ] = None,
) -> None:
    work = Path(tempfile.mkdtemp(prefix="nas-throughput-"))
    search_space = get_space(space)
    key = key or f"predictor-throughput-{space}"
    target = 20 if space == "nb201" else 5
    label = {"nb201": "NB201 networks (benchmark skeleton, random cells", "nbmacro": "NAS-Bench-Macro networks (random"}
    rng = random.Random(0)
    paths = []
    for i in range(files):
        exported = export_architecture(search_space, search_space.sample(rng))
        path = work / f"net_{i:04d}.onnx"
        path.write_bytes(exported.data)
        paths.append(path)
    size_kib = sum(f.stat().st_size for f in paths) / len(paths) / 1024
    scorer = load_predictor(predictor)
    t0 = time.perf_counter()
    encoder = Encoder(scorer.encoder_name, cache=work / "cache.sqlite")
    _ = encoder.dim  # loads sentence-transformers and the model
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cold_scores = score_files(paths, scorer, encoder)
    cold_s = time.perf_counter() - t0
    warm = []
    for _ in range(warm_repeats):
        t0 = time.perf_counter()
        warm_scores = score_files(paths, scorer, encoder)
        warm.append(time.perf_counter() - t0)
    assert (warm_scores == cold_scores).all()
    warm_s = min(warm)
    embed = " + embed" if scorer.use_embedding else ""
    body = (
        f"{files} {label[space]}, {size_kib:.0f} KiB ONNX files on average), one process, "
        f"{torch.get_num_threads()} torch threads, predictor `{predictor or 'shipped default'}`.\n\n"
        f"- Cold (empty caches; read + describe `compact` + summarise + activation statistics{embed} + score): "
        f"**{files / cold_s:.1f} "
        f"networks/s** ({1000 * cold_s / files:.0f} ms each). Target >= {target}/s.\n"
        f"- Warm (same files again, all cached): **{files / warm_s:.0f} networks/s** (best of "
        f"{warm_repeats}; median {files / sorted(warm)[len(warm) // 2]:.0f}/s). Target >= 1,000/s.\n"
        f"- One-time encoder load (import sentence-transformers + MiniLM): {load_s:.1f} s, not in the figures."
    )
    kind = "text embedding + graph features" if scorer.use_embedding else "graph features only, no encoder"
    body = body.replace("networks/s** (", f"networks/s** ({kind}; ", 1)
    numbers = {
        "files": files,
        "mean_file_kib": size_kib,
        "torch_threads": torch.get_num_threads(),
        "encoder_load_s": load_s,
        "cold_s": cold_s,
        "warm_s": warm,
    }
    record(key, f"Zero-shot predictor throughput on {space}: ONNX file to score ({kind})", body, numbers)
    print(body)
    for f in paths:
        os.unlink(f)


if __name__ == "__main__":
    app()
