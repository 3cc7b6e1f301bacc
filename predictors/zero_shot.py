"""Score ONNX files (from anywhere) and bench records with a predictor: the glue between `onnx_bench` and
`predictors.predictor`.

An ONNX file's text and graph summary are cached beside the embeddings, keyed by (absolute path, size,
modification time), so a warm call reads no model at all: it stats the file, looks up two cache rows and runs
the head.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nas_ground.errors import UserInputError
from onnx_bench.activations import activation_summary
from onnx_bench.batch import SUMMARY_KEYS, describe_graph, describe_paths
from onnx_bench.graph import WL_SCHEME
from predictors.encoder import Encoder
from predictors.predictor import Predictor

log = logging.getLogger(__name__)

DEFAULT_PREDICTOR = "default_predictor.safetensors"
DOC_VERSION = 3  # bump when a description or summary gains a field: cached documents of older versions are redone


def default_predictor_path() -> Path:
    return Path(str(importlib.resources.files("predictors") / DEFAULT_PREDICTOR))


def load_predictor(path: str | Path | None = None) -> Predictor:
    """The predictor at ``path``; the one shipped in the package when None."""
    if path is None:
        path = default_predictor_path()
        if not path.is_file():
            raise UserInputError(f"no default predictor in this install ({path}); pass --predictor FILE")
    predictor = Predictor.load(path)
    reads_wl = predictor.use_features and len(predictor.head.members) > 0  # the full view reads the WL counts
    scheme = predictor.meta.get("training_data", {}).get("wl_scheme")
    if reads_wl and scheme != WL_SCHEME:
        log.warning(
            "%s was trained on WL counts of another hashing (%s, not %s): its scores of new files are not "
            "trustworthy; retrain it on an upgraded bench (`nas bench upgrade`)",
            path,
            scheme or "an older one",
            WL_SCHEME,
        )
    return predictor


def describe_model(model: Any, text_format: str) -> tuple[str, dict[str, Any]]:
    """(text, summary) of a loaded ONNX model: what a predictor reads."""
    text, summary = describe_graph(model, text_format)
    return text, {**summary, **activation_summary(model)}


def _doc_key(path: Path, text_format: str) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{text_format}|v{DOC_VERSION}"


def describe_files(
    paths: Sequence[str | Path],
    text_format: str,
    encoder: Encoder,
    *,
    embed: bool = True,
    workers: int | None = None,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Texts and summaries of ONNX files, from the cache where the file is unchanged; the others are described in
    ``workers`` processes (`onnx_bench.batch.describe_paths`; default: one per CPU) and, with ``embed``, their
    texts embedded in one batched call (into the cache)."""
    files = [Path(p) for p in paths]
    keys = []
    for f in files:
        if not f.is_file():
            raise UserInputError(f"ONNX file not found: {f}")
        keys.append(_doc_key(f, text_format))
    cached = encoder.cache.get_docs(keys)
    docs: list[dict[str, Any] | None] = [json.loads(cached[k]) if k in cached else None for k in keys]
    todo = [i for i, doc in enumerate(docs) if doc is None]
    new = {}
    for i, (text, summary) in zip(todo, describe_paths([files[i] for i in todo], text_format, workers), strict=True):
        docs[i] = {"text": text, "summary": summary}
        new[keys[i]] = json.dumps(docs[i])
    if todo and embed:
        encoder.encode([docs[i]["text"] for i in todo])  # type: ignore[index]  # cached: the caller's encode finds them
    encoder.cache.put_docs(new)
    return [d["text"] for d in docs], [d["summary"] for d in docs]  # type: ignore[index]


def _file_inputs(
    paths: Sequence[str | Path], predictor: Predictor, encoder: Encoder | None, workers: int | None = None
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(embeddings, summaries) of ONNX files as ``predictor`` reads them."""
    encoder = encoder or Encoder(predictor.encoder_name)
    texts, summaries = describe_files(
        paths, predictor.text_format, encoder, embed=predictor.use_embedding, workers=workers
    )
    return predictor.embed(texts, encoder), summaries


def score_files(
    paths: Sequence[str | Path], predictor: Predictor, encoder: Encoder | None = None, workers: int | None = None
) -> np.ndarray:
    return predictor.score_embeddings(*_file_inputs(paths, predictor, encoder, workers))


NOVELTY_WARN = 3.0  # a feature this many training standard deviations outside the training range


def predict_files(
    paths: Sequence[str | Path], predictor: Predictor, encoder: Encoder | None = None, workers: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, float]]]:
    """(scores, ensemble spreads, novelty) of ONNX files: see `Predictor.spread` and `Predictor.novelty`."""
    embeddings, summaries = _file_inputs(paths, predictor, encoder, workers)
    scores = predictor.score_embeddings(embeddings, summaries)
    return scores, predictor.spread(embeddings, summaries), predictor.novelty(summaries)


def bench_inputs(frame: pd.DataFrame, text_format: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Texts and summaries of bench records, as the predictor reads them."""
    column = f"text_{text_format}"
    if column not in frame.columns:
        raise UserInputError(f"bench has no {column!r} column")
    missing = [k for k in SUMMARY_KEYS if k not in frame.columns]
    if missing:
        raise UserInputError(
            f"bench lacks {missing[0]!r} (built by an older version): run `nas bench upgrade DIR` or rebuild it"
        )
    records: list[dict[str, Any]] = [
        {str(k): v for k, v in r.items()} for r in frame[list(SUMMARY_KEYS)].to_dict("records")
    ]
    return [str(t) for t in frame[column].tolist()], records


def target_column(frame: pd.DataFrame, target: str) -> str:
    """The bench column for ``target`` (``metric_`` prefix optional)."""
    for name in (target, f"metric_{target}"):
        if name in frame.columns:
            return name
    metrics = sorted(c.removeprefix("metric_") for c in frame.columns if c.startswith("metric_"))
    raise UserInputError(f"unknown target {target!r}; bench metrics: {', '.join(metrics) or '(none)'}")
