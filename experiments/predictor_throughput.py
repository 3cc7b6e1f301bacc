"""Benchmark 4 of the predictor issue: ONNX file -> score, networks per second on this machine, cold and warm.

Random networks of a space (``--space``: NB201 cells in the benchmark skeleton, C=16, N=5; or NAS-Bench-Macro
networks, MobileNetV2-size) are exported to ONNX files first (not timed). Cold: empty
embedding and description caches, the encoder already loaded (its one-time load is reported apart): every
file is read, described (`compact`), summarised, embedded and scored. Warm: the same call again, everything
cached (the files are only stat-ed).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import torch

from experiments.record import record
from onnx_bench.export import export_architecture
from predictors.encoder import Encoder
from predictors.zero_shot import load_predictor, score_files
from search_spaces import get_space


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--warm-repeats", type=int, default=5)
    parser.add_argument("--predictor", default=None, help="predictor file (default: the shipped one)")
    parser.add_argument("--space", default="nb201", choices=("nb201", "nbmacro"))
    parser.add_argument("--key", default=None, help="BENCHMARKS.md section (default: predictor-throughput-SPACE)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nas-throughput-"))
    space = get_space(args.space)
    key = args.key or f"predictor-throughput-{args.space}"
    target = 20 if args.space == "nb201" else 5
    label = {"nb201": "NB201 networks (benchmark skeleton, random cells", "nbmacro": "NAS-Bench-Macro networks (random"}
    rng = random.Random(0)
    files = []
    for i in range(args.files):
        exported = export_architecture(space, space.sample(rng))
        path = work / f"net_{i:04d}.onnx"
        path.write_bytes(exported.data)
        files.append(path)
    size_kib = sum(f.stat().st_size for f in files) / len(files) / 1024
    predictor = load_predictor(args.predictor)
    t0 = time.perf_counter()
    encoder = Encoder(predictor.encoder_name, cache=work / "cache.sqlite")
    _ = encoder.dim  # loads sentence-transformers and the model
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cold_scores = score_files(files, predictor, encoder)
    cold_s = time.perf_counter() - t0
    warm = []
    for _ in range(args.warm_repeats):
        t0 = time.perf_counter()
        warm_scores = score_files(files, predictor, encoder)
        warm.append(time.perf_counter() - t0)
    assert (warm_scores == cold_scores).all()
    warm_s = min(warm)
    embed = " + embed" if predictor.use_embedding else ""
    body = (
        f"{args.files} {label[args.space]}, {size_kib:.0f} KiB ONNX files on average), one process, "
        f"{torch.get_num_threads()} torch threads, predictor `{args.predictor or 'shipped default'}`.\n\n"
        f"- Cold (empty caches; read + describe `compact` + summarise + activation statistics{embed} + score): "
        f"**{args.files / cold_s:.1f} "
        f"networks/s** ({1000 * cold_s / args.files:.0f} ms each). Target >= {target}/s.\n"
        f"- Warm (same files again, all cached): **{args.files / warm_s:.0f} networks/s** (best of "
        f"{args.warm_repeats}; median {args.files / sorted(warm)[len(warm) // 2]:.0f}/s). Target >= 1,000/s.\n"
        f"- One-time encoder load (import sentence-transformers + MiniLM): {load_s:.1f} s, not in the figures."
    )
    kind = "text embedding + graph features" if predictor.use_embedding else "graph features only, no encoder"
    body = body.replace("networks/s** (", f"networks/s** ({kind}; ", 1)
    record(key, f"Zero-shot predictor throughput on {args.space}: ONNX file to score ({kind})", body)
    print(body)
    for f in files:
        os.unlink(f)


if __name__ == "__main__":
    main()
