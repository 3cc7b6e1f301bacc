"""The zero-shot predictor's throughput: ONNX file -> score, networks per second on this machine, cold and warm.

Random networks of a space are exported to ONNX files first (not timed): ``--space nb201`` (NB201 cells in the
benchmark skeleton, C=16, N=5), ``nbmacro`` (NAS-Bench-Macro networks) or, with ``--channels`` and ``--layers``,
real-size cell networks (``--space darts --channels 32 --layers 2``: the NAS-Bench-301 skeleton, 8 cells, C=32).
Cold: empty embedding and description caches, the encoder already loaded (its one-time load is reported apart):
every file is read, guarded, described (`compact`), summarised, run on the probe batch and scored, the new files
spread over ``--workers`` processes and their texts embedded in one batch. Warm: the same call again, everything
cached (the files are only stat-ed). Peak memory: the largest resident set of this process and of any worker.
"""

from __future__ import annotations

import os
import random
import resource
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
    space: Annotated[
        Literal["nb201", "nbmacro", "darts", "nasnet"], typer.Option(help="Search space of the networks.")
    ] = "nb201",
    channels: Annotated[int | None, typer.Option(help="Initial channels (darts, nasnet).")] = None,
    layers: Annotated[int | None, typer.Option(help="Cells per stage (darts, nasnet).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: one per CPU).")] = None,
    key: Annotated[
        str | None,
        typer.Option(help="Result to write, experiments/results/KEY.json (default: predictor-throughput-SPACE)."),
    ] = None,
) -> None:
    work = Path(tempfile.mkdtemp(prefix="nas-throughput-"))
    search_space = get_space(space)
    key = key or f"predictor-throughput-{space}"
    build = {k: v for k, v in (("channels", channels), ("layers", layers)) if v is not None}
    target = 30 if space == "nb201" else 10
    label = {
        "nb201": "NB201 networks (benchmark skeleton, random cells",
        "nbmacro": "NAS-Bench-Macro networks (random",
        "darts": f"DARTS-cell networks ({build or 'default size'}, random cells",
        "nasnet": f"NASNet-cell networks ({build or 'default size'}, random cells",
    }
    rng = random.Random(0)
    paths = []
    for i in range(files):
        exported = export_architecture(search_space, search_space.sample(rng), build_options=build)
        path = work / f"net_{i:04d}.onnx"
        path.write_bytes(exported.data)
        paths.append(path)
    size_kib = sum(f.stat().st_size for f in paths) / len(paths) / 1024
    scorer = load_predictor(predictor)
    t0 = time.perf_counter()
    encoder = Encoder(scorer.encoder_name, cache=work / "cache.sqlite")
    if scorer.use_embedding:
        _ = encoder.dim  # loads sentence-transformers and the model
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cold_scores = score_files(paths, scorer, encoder, workers)
    cold_s = time.perf_counter() - t0
    warm = []
    for _ in range(warm_repeats):
        t0 = time.perf_counter()
        warm_scores = score_files(paths, scorer, encoder, workers)
        warm.append(time.perf_counter() - t0)
    assert (warm_scores == cold_scores).all()
    warm_s = min(warm)
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    peak_worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    from onnx_bench.batch import default_workers

    used = default_workers() if workers is None else workers
    embed = " + embed" if scorer.use_embedding else ""
    body = (
        f"{files} {label[space]}, {size_kib:.0f} KiB ONNX files on average), {used} worker processes describing "
        f"the files, {torch.get_num_threads()} torch threads, predictor "
        f"`{predictor or 'shipped default'}`.\n\n"
        f"- Cold (empty caches; read + describe `compact` + summarise + activation statistics{embed} + score): "
        f"**{files / cold_s:.1f} "
        f"networks/s** ({1000 * cold_s / files:.0f} ms each). Target >= {target}/s.\n"
        f"- Warm (same files again, all cached): **{files / warm_s:.0f} networks/s** (best of "
        f"{warm_repeats}; median {files / sorted(warm)[len(warm) // 2]:.0f}/s). Target >= 1,000/s.\n"
        + (
            f"- One-time encoder load (import sentence-transformers + MiniLM): {load_s:.1f} s, not in the figures.\n"
            if scorer.use_embedding
            else "- No encoder is loaded (the predictor reads no text).\n"
        )
        + f"- Peak resident memory: {peak_self:.0f} MiB this process, {peak_worker:.0f} MiB the largest worker."
    )
    kind = "text embedding + graph features" if scorer.use_embedding else "graph features only, no encoder"
    body = body.replace("networks/s** (", f"networks/s** ({kind}; ", 1)
    numbers = {
        "files": files,
        "mean_file_kib": size_kib,
        "torch_threads": torch.get_num_threads(),
        "encoder_load_s": load_s,
        "cold_s": cold_s,
        "workers": used,
        "build_options": build,
        "peak_rss_mib": peak_self,
        "peak_worker_rss_mib": peak_worker,
        "warm_s": warm,
    }
    record(key, f"Zero-shot predictor throughput on {space}: ONNX file to score ({kind})", body, numbers)
    print(body)
    for f in paths:
        os.unlink(f)


if __name__ == "__main__":
    app()
