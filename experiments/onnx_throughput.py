"""Architectures per second for build + export + describe, and text lengths.

For NB201 and NASNet, random architectures are built, exported (legacy exporter, checked, shapes inferred),
described in both formats and summarised, one process with the machine's torch threads; token counts use
the all-MiniLM-L6-v2 tokenizer. The transformer rows use small BERT-style encoders (random depth, width, FFN
width and heads; ``nn.TransformerEncoder``, sequence length 64), not the package's transformer space: these rows
were first measured before it existed.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
import torch
import typer
from torch import nn

from experiments.record import record
from onnx_bench.export import export_architecture, export_bytes
from onnx_bench.graph import summarize
from onnx_bench.io import load_onnx
from onnx_bench.text import describe, token_count
from search_spaces import get_space

SPACES = {"nb201": {}, "nasnet": {"channels": 16, "layers": 2}}
TRANSFORMER_SEQ = 64


class _BertLike(nn.Module):
    def __init__(self, layers: int, hidden: int, heads: int, ffn: int, vocab: int = 30522) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.position = nn.Parameter(torch.zeros(1, TRANSFORMER_SEQ, hidden))
        layer = nn.TransformerEncoderLayer(hidden, heads, ffn, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.classifier = nn.Linear(hidden, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(self.embed(ids) + self.position)[:, 0])


def _transformer_sample(rng: random.Random) -> tuple[str, Callable[[], bytes]]:
    layers, hidden = rng.choice([2, 4, 6, 12]), rng.choice([64, 128, 256])
    heads, ffn = rng.choice([2, 4]), hidden * rng.choice([1, 2, 3, 4])

    def export() -> bytes:
        torch.manual_seed(0)
        model = _BertLike(layers, hidden, heads, ffn)
        return export_bytes(model, example=torch.zeros(1, TRANSFORMER_SEQ, dtype=torch.long))

    return f"L{layers} H{hidden} A{heads} F{ffn}", export


def _candidates(name: str, samples: int) -> list[Callable[[], bytes]]:
    rng = random.Random(0)
    if name == "transformer":
        return [_transformer_sample(rng)[1] for _ in range(samples)]
    space, options = get_space(name), SPACES[name]
    archs = [space.sample(rng) for _ in range(samples)]

    def exporter(arch: Any) -> Callable[[], bytes]:
        return lambda: export_architecture(space, arch, build_options=options).data

    return [exporter(arch) for arch in archs]


app = typer.Typer(add_completion=False, rich_markup_mode="markdown")


@app.command(help=__doc__)
def main(samples: Annotated[int, typer.Option(help="Random architectures per space.")] = 30) -> None:
    rows, lengths = [], []
    per_space: dict[str, dict[str, object]] = {}
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention path does not export
    labels = {**{k: str(v or "(benchmark skeleton)") for k, v in SPACES.items()}, "transformer": "(BERT-style)"}
    for name, label in labels.items():
        stages = {"build+export": 0.0, "describe": 0.0, "summarize": 0.0}
        tokens: dict[str, list[int]] = {"chain_slim": [], "compact": []}
        for export in _candidates(name, samples):
            t0 = time.perf_counter()
            data = export()
            t1 = time.perf_counter()
            model = load_onnx(data, check=False)
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
            f"| {name} {label} | {samples / total:.2f} | "
            + " | ".join(f"{1000 * v / samples:.0f}" for v in stages.values())
            + " |"
        )
        for fmt, counts in tokens.items():
            arr = np.array(counts)
            lengths.append(
                f"| {name} | {fmt} | {int(np.median(arr))} | {int(arr.min())}-{int(arr.max())} | "
                f"{(arr <= 256).mean():.0%} | {(arr <= 512).mean():.0%} |"
            )
        per_space[name] = {"label": label, "seconds": stages, "tokens": tokens}
        print(name, f"{samples / total:.2f} archs/s", {k: statistics.mean(v) for k, v in tokens.items()})
    body = (
        f"Random architectures (seed 0, {samples} per space), one process; build + legacy export "
        "(checker, shape inference) + both descriptions + graph summary.\n\n"
        "| space | archs/s | build+export ms | describe (both) ms | summarize ms |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n\nToken lengths (all-MiniLM-L6-v2 tokenizer, no special tokens, no truncation):\n\n"
        "| space | format | median | range | <= 256 | <= 512 |\n|---|---|---|---|---|---|\n" + "\n".join(lengths)
    )
    numbers = {"samples": samples, "torch_threads": torch.get_num_threads(), "spaces": per_space}
    record("onnx-throughput", "ONNX export + describe throughput and token lengths", body, numbers)


if __name__ == "__main__":
    app()
