"""Graph features beside the text embedding: scale (params, FLOPs, activations), depth, activation statistics
on a fixed probe batch (`onnx_bench.activations`), the share of each common operator, and hashed
Weisfeiler-Lehman subtree counts of the operator graph (`onnx_bench.graph.wl_counts`, log1p). Every feature is
computable for any ONNX graph (from `onnx_bench.graph` or a bench record); nothing here knows a search space.

The first ``len(CORE_FEATURES)`` features (scale, activations, operator shares) are the predictor's compact
view, of which the first ``len(UNIVERSAL_FEATURES)`` (scale, activations) read alike in every family; the WL counts
follow."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from onnx_bench.activations import ACT_FEATURES, missing
from onnx_bench.graph import WL_DIM

# Operators common across CNN and transformer families; the rest fall into "other".
COMMON_OPS = (
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "Relu",
    "Sigmoid",
    "Tanh",
    "Clip",
    "Gelu",
    "Erf",
    "HardSigmoid",
    "HardSwish",
    "Add",
    "Mul",
    "Concat",
    "AveragePool",
    "MaxPool",
    "GlobalAveragePool",
    "BatchNormalization",
    "LayerNormalization",
    "Softmax",
    "Reshape",
    "Transpose",
)
SCALE_FEATURES = ("log_params", "log_flops", "log_nodes", "log_depth", "log_peak_activation")
UNIVERSAL_FEATURES = (*SCALE_FEATURES, *ACT_FEATURES)  # what any family has: size and activation statistics
CORE_FEATURES = (*UNIVERSAL_FEATURES, *(f"op_{op}" for op in COMMON_OPS), "op_other")
FEATURE_NAMES = (*CORE_FEATURES, *(f"wl_{i}" for i in range(WL_DIM)))


def _log(x: Any) -> float:
    try:
        value = float(x)
    except (TypeError, ValueError):
        return 0.0
    return math.log1p(max(value, 0.0)) if math.isfinite(value) else 0.0


def _finite(x: Any) -> float:
    try:
        value = float(x)
    except (TypeError, ValueError):
        return 0.0
    return value if math.isfinite(value) else 0.0


def feature_vector(summary: Mapping[str, Any]) -> np.ndarray:
    """Features of one graph from its summary (``op_histogram`` may be a dict or its JSON text)."""
    hist = summary.get("op_histogram") or {}
    if isinstance(hist, str):
        hist = json.loads(hist)
    hist = {k: v for k, v in hist.items() if k not in ("Constant", "Identity")}  # exporter artefacts
    total = max(sum(hist.values()), 1)
    values = [
        _log(summary.get("params")),
        _log(summary.get("flops")),
        _log(summary.get("nodes")),
        _log(summary.get("depth")),
        _log(summary.get("peak_activation")),
    ]
    act = summary if summary.get("act_missing") is not None else missing()  # records of older builds: missing
    values += [_finite(act.get(k)) for k in ACT_FEATURES]
    values += [hist.get(op, 0) / total for op in COMMON_OPS]
    values.append(sum(v for k, v in hist.items() if k not in COMMON_OPS) / total)
    wl = np.zeros(WL_DIM, dtype=np.float64)
    counts = summary.get("wl_counts") or {}
    if isinstance(counts, str):
        counts = json.loads(counts)
    for bucket, count in counts.items():
        wl[int(bucket) % WL_DIM] = math.log1p(float(count))
    return np.concatenate([np.asarray(values, dtype=np.float64), wl]).astype(np.float32)


def feature_matrix(rows: list[Mapping[str, Any]]) -> np.ndarray:
    if not rows:
        return np.zeros((0, len(FEATURE_NAMES)), dtype=np.float32)
    return np.stack([feature_vector(r) for r in rows])
