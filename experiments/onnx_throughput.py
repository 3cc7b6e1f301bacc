"""Benchmarks 1 and 3 of issue 3: architectures per second for build + export + describe, and text lengths.

For NB201 and NASNet, random architectures are built, exported (legacy exporter, checked, shapes inferred),
described in both formats and summarised, one process with the machine's torch threads; token counts use
the all-MiniLM-L6-v2 tokenizer.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np

from experiments.record import record
from onnx_bench.export import export_architecture
from onnx_bench.graph import summarize
from onnx_bench.io import load_onnx
from onnx_bench.text import describe, token_count
from search_spaces import get_space

SPACES = {"nb201": {}, "nasnet": {"channels": 16, "layers": 2}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()
    rows, lengths = [], []
    for name, options in SPACES.items():
        space = get_space(name)
        rng = random.Random(0)
        archs = [space.sample(rng) for _ in range(args.samples)]
        stages = {"build+export": 0.0, "describe": 0.0, "summarize": 0.0}
        tokens: dict[str, list[int]] = {"chain_slim": [], "compact": []}
        for arch in archs:
            t0 = time.perf_counter()
            exported = export_architecture(space, arch, build_options=options)
            t1 = time.perf_counter()
            model = load_onnx(exported.data, check=False)
            texts = {fmt: describe(model, fmt) for fmt in tokens}
            t2 = time.perf_counter()
            summarize(model)
            t3 = time.perf_counter()
            stages["build+export"] += t1 - t0
            stages["describe"] += t2 - t1
            stages["summarize"] += t3 - t2
            for fmt, text in texts.items():
                tokens[fmt].append(token_count(text))
        total = sum(stages.values())
        rows.append(
            f"| {name} {options or '(benchmark skeleton)'} | {args.samples / total:.2f} | "
            + " | ".join(f"{1000 * v / args.samples:.0f}" for v in stages.values())
            + " |"
        )
        for fmt, counts in tokens.items():
            arr = np.array(counts)
            lengths.append(
                f"| {name} | {fmt} | {int(np.median(arr))} | {int(arr.min())}-{int(arr.max())} | "
                f"{(arr <= 256).mean():.0%} | {(arr <= 512).mean():.0%} |"
            )
        print(name, f"{args.samples / total:.2f} archs/s", {k: statistics.mean(v) for k, v in tokens.items()})
    body = (
        f"Random architectures (seed 0, {args.samples} per space), one process; build + legacy export "
        "(checker, shape inference) + both descriptions + graph summary.\n\n"
        "| space | archs/s | build+export ms | describe (both) ms | summarize ms |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n\nToken lengths (all-MiniLM-L6-v2 tokenizer, no special tokens, no truncation):\n\n"
        "| space | format | median | range | <= 256 | <= 512 |\n|---|---|---|---|---|---|\n" + "\n".join(lengths)
    )
    record("onnx-throughput", "ONNX export + describe throughput and token lengths", body)


if __name__ == "__main__":
    main()
