"""Activation statistics of any ONNX graph: the predictor's training-free features.

The network runs once, in onnxruntime, on a fixed probe batch of 8 natural images (CIFAR-10 training images
shipped in the package as ``probe_images.npy``, normalised with the CIFAR-10 statistics and resized bilinearly
to the model's input size), so the features need no data set and are the same on every machine. A token model
(one integer input of token ids, batch x length, read by a Gather of an embedding table) gets 8 sequences of
seeded random ids instead (`probe_tokens`): at initialisation the embedding rows are random, so random ids stand
for text as well as real sentences would, and the FFN pre-activations are the W-PCA paper's sites. At every PCA
site (the distinct inputs of each rectifier-like activation, swish and GELU: `find_sites`) the samples x
features matrix ((batch * pixels or tokens) x channels) gives the eigenvalues of its covariance; per site, k(eta)
is the smallest number of principal components holding eta of the variance. Features:

- ``act_vpca``: log1p of sum_sites k(0.99) (V-PCA at the W-PCA paper's eta, in eval mode: what an ONNX file
  computes), ``act_vpca90`` and ``act_vpca999`` (eta 0.9 and 0.999);
- ``act_rank_share``: mean over sites of k(0.99) / width (how much of each layer's width is used);
- ``act_sites``: log1p of the number of sites;
- ``act_missing``: 1 when the statistics could not be computed (no image or token input: 1-D signals, several
  inputs; no activation site; a runtime error), in which case the others are 0.

The file's own weights are used: a predictor sees what a freshly initialised network computes, so score
untrained files (the bench exports every architecture with seeded initial weights).
"""

from __future__ import annotations

import importlib.resources
import logging
import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import onnx

from onnx_bench.guard import OnnxInputError, check_probe_input, probe_deadline, probe_session, run_bounded

log = logging.getLogger(__name__)

ACT_FEATURES = ("act_vpca", "act_vpca90", "act_vpca999", "act_rank_share", "act_sites", "act_missing")
ETAS = (0.99, 0.9, 0.999)
PROBE_FILE = "probe_images.npy"
DYNAMIC_SIZE = 32
DYNAMIC_TOKENS = 64  # the probe's sequence length where a token model leaves it open
FIRST_TOKEN_ID = 1000  # probe ids start here in a large vocabulary (BERT's WordPiece puts specials and [unusedN] below)
_INT_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}


RECTIFIERS = ("Relu", "LeakyRelu", "HardSwish", "Elu", "Selu", "Celu", "Mish")  # output > 0 exactly where input > 0
GATES = ("Sigmoid", "HardSigmoid")  # x * gate(x): SiLU / swish and the decomposed hard-swish


@dataclass
class OnnxSites:
    """Where a graph's activations are read: the outputs of every rectifier-like activation (positive exactly
    where its input is: Relu, LeakyRelu, ReLU6 as a Clip from 0, HardSwish, ELUs, Mish, and swish written as
    ``x * Sigmoid(x)``), whose signs are the binary codes, and the distinct pre-activations of those, of every
    ``Gelu`` and of the exporter's erf-GELU pattern (PCA sites)."""

    relu_outputs: list[str] = field(default_factory=list)
    pre_activations: list[str] = field(default_factory=list)


def _clip_floor(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> float | None:
    """A ``Clip``'s lower bound where it is a constant (an attribute in old opsets, an input since opset 11)."""
    for attr in node.attribute:
        if attr.name == "min":
            return float(attr.f)
    if len(node.input) > 1 and node.input[1] in constants:
        values = onnx.numpy_helper.to_array(constants[node.input[1]]).reshape(-1)
        return float(values[0]) if values.size == 1 else None
    return None


def _swish_input(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> str | None:
    """x where ``node`` is ``Mul(x, gate(x))`` for a sigmoid gate (SiLU / swish); None for any other Mul (an SE
    block's ``Mul(x, Sigmoid(f(x)))`` gates by another tensor and is not an activation)."""
    if node.op_type != "Mul" or len(node.input) != 2:
        return None
    for ours, other in (node.input, node.input[::-1]):
        gate = producers.get(other)
        if gate is not None and gate.op_type in GATES and gate.input[0] == ours:
            return ours
    return None


def find_sites(model: onnx.ModelProto) -> OnnxSites:
    producers = {out: node for node in model.graph.node for out in node.output}
    constants = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    sites = OnnxSites()
    for node in model.graph.node:
        rectifier = node.op_type in RECTIFIERS or (node.op_type == "Clip" and _clip_floor(node, constants) == 0.0)
        pre = node.input[0] if rectifier else _swish_input(node, producers)
        if pre is not None:
            sites.relu_outputs.append(node.output[0])
        elif node.op_type == "Gelu":
            pre = node.input[0]
        elif node.op_type == "Erf":  # x * 0.5 * (1 + erf(x / sqrt(2))): the pre-activation is x
            src = producers.get(node.input[0])
            pre = src.input[0] if src is not None and src.op_type in ("Div", "Mul") else node.input[0]
        if pre is not None and pre not in sites.pre_activations:
            sites.pre_activations.append(pre)
    return sites


def components_for(eigvals: np.ndarray, etas: tuple[float, ...]) -> list[int]:
    """For each eta, the smallest k whose top-k of the covariance eigenvalues ``eigvals`` (any order) exceed eta
    of their sum; 0 when there is no variance. Raises FloatingPointError for non-finite eigenvalues."""
    eig = np.clip(np.sort(np.asarray(eigvals, dtype=np.float64))[::-1], 0.0, None)
    total = float(eig.sum())
    if not np.isfinite(total):
        raise FloatingPointError("non-finite activations")
    if total <= 0.0:
        return [0 for _ in etas]
    ratio = np.cumsum(eig) / total
    return [min(int(np.searchsorted(ratio, eta, side="right")) + 1, len(ratio)) for eta in etas]


def missing() -> dict[str, float]:
    return {**dict.fromkeys(ACT_FEATURES, 0.0), "act_missing": 1.0}


@lru_cache(maxsize=1)
def probe_images() -> np.ndarray:
    """The shipped probe batch, uint8 (8, 3, 32, 32)."""
    path = importlib.resources.files("onnx_bench") / PROBE_FILE
    with path.open("rb") as f:
        return np.load(f)


def probe_batch(channels: int, height: int, width: int) -> np.ndarray:
    """The probe images as a normalised float32 batch of the given shape (grey = mean of the colour channels)."""
    import torch

    from nas_ground.data import CIFAR10_MEAN, CIFAR10_STD

    mean = np.asarray(CIFAR10_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(CIFAR10_STD, dtype=np.float32)[:, None, None]
    x = (probe_images().astype(np.float32) / 255.0 - mean) / std
    if channels == 1:
        x = x.mean(axis=1, keepdims=True)
    elif channels != 3:
        raise ValueError(f"no probe images with {channels} channels")
    if (height, width) != x.shape[2:]:
        t = torch.nn.functional.interpolate(torch.from_numpy(x), size=(height, width), mode="bilinear")
        x = t.numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def _only_input(model: onnx.ModelProto) -> tuple[str, int, list[int]] | None:
    """(name, element type, dims with 0 for a dynamic one) of the model's only input that is not an initializer."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        return None
    tensor = inputs[0].type.tensor_type
    return inputs[0].name, tensor.elem_type, [d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim]


def _image_input(model: onnx.ModelProto) -> tuple[str, int, int, int, int] | None:
    """(name, element type, C, H, W) of the model's only image-like input, else None."""
    if (only := _only_input(model)) is None:
        return None
    name, elem, dims = only
    if elem not in _FLOAT_TYPES or len(dims) != 4 or dims[1] not in (1, 3):
        return None
    height, width = (d or DYNAMIC_SIZE for d in dims[2:])  # a dynamic height or width gets the probe's own 32
    if min(height, width) < 4:
        return None
    return name, elem, dims[1], height, width


def _token_input(model: onnx.ModelProto) -> tuple[str, int, int, int] | None:
    """(name, element type, sequence length, vocabulary size) of a token model's only input: integer, batch x
    length, indexing an embedding table (an initializer Gather, directly or through a Cast); else None."""
    if (only := _only_input(model)) is None:
        return None
    name, elem, dims = only
    initializers = {t.name: t for t in model.graph.initializer}
    if elem not in _INT_TYPES or len(dims) != 2:
        return None
    names = {name} | {n.output[0] for n in model.graph.node if n.op_type == "Cast" and n.input[0] == name}
    vocab = [
        int(initializers[n.input[0]].dims[0])
        for n in model.graph.node
        if n.op_type == "Gather" and len(n.input) == 2 and n.input[1] in names and n.input[0] in initializers
    ]
    if not vocab or min(vocab) < 2:
        return None
    return name, elem, dims[1] or DYNAMIC_TOKENS, min(vocab)


def probe_tokens(length: int, vocab: int, batch: int = 8) -> np.ndarray:
    """``batch`` sequences of ``length`` seeded random token ids below ``vocab`` (from `FIRST_TOKEN_ID` where the
    vocabulary is large enough), int64; the same on every machine."""
    low = FIRST_TOKEN_ID if vocab > 2 * FIRST_TOKEN_ID else 1
    return np.random.default_rng(0).integers(low, vocab, size=(batch, length), dtype=np.int64)


def ks_from_features(features: np.ndarray, etas: tuple[float, ...] = ETAS) -> list[int]:
    """k(eta) of one site's features x samples matrix for each eta (0 for a site without variance): centred in
    float32, the covariance by one BLAS call, eigenvalues in float64. A wide site (more features than samples:
    a 1,280-channel head on 8 x 4 x 4 samples) is decomposed through the samples x samples Gram matrix, which
    has the same non-zero eigenvalues at a fraction of the cost."""
    h = features.astype(np.float32, copy=False)
    h = h - h.mean(axis=1, keepdims=True)
    gram = h @ h.T if h.shape[0] <= h.shape[1] else h.T @ h
    return components_for(np.linalg.eigvalsh(gram.astype(np.float64)), etas)


def _as_features(a: np.ndarray) -> np.ndarray:
    """(B, C, H, W) -> (C, B*H*W); (B, T, D) -> (D, B*T); (B, D) -> (D, B)."""
    if a.ndim == 4:
        return a.transpose(1, 0, 2, 3).reshape(a.shape[1], -1)
    return a.reshape(-1, a.shape[-1]).T


def _run(model: onnx.ModelProto, wanted: list[str], name: str, x: np.ndarray) -> list[np.ndarray]:
    """Run with the probe batch in one call (batch dimension made dynamic); per image when that fails. Sessions
    are bounded in memory and time (`onnx_bench.guard.probe_session`, `run_bounded`)."""
    deadline = probe_deadline()
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    del exposed.graph.value_info[:]
    del exposed.graph.output[:]
    for out in wanted:
        exposed.graph.output.append(onnx.ValueInfoProto(name=out))
    for value in exposed.graph.input:
        if value.name == name:
            value.type.tensor_type.shape.dim[0].dim_param = "probe_batch"
    try:
        return run_bounded(probe_session(exposed, threads=1), wanted, {name: x}, deadline)
    except OnnxInputError:  # out of time, or external data: per image would not help
        raise
    except Exception:  # a graph that bakes its batch size in (Reshape to [1, ...]): one image at a time
        for value in exposed.graph.input:
            if value.name == name:
                value.type.tensor_type.shape.dim[0].dim_value = 1
        session = probe_session(exposed, threads=1)
        runs = [run_bounded(session, wanted, {name: x[i : i + 1]}, deadline) for i in range(len(x))]
        return [np.concatenate([r[j] for r in runs], axis=0) for j in range(len(wanted))]


def activation_summary(model: onnx.ModelProto) -> dict[str, float]:
    """The ``act_*`` features of ``model`` (see the module docstring); never raises for a valid graph."""
    spec = _image_input(model)
    tokens = _token_input(model) if spec is None else None
    if spec is None and tokens is None:
        return missing()
    sites = find_sites(model).pre_activations
    if not sites:
        return missing()
    try:
        if spec is not None:
            name, elem, channels, height, width = spec
            check_probe_input(name, (len(probe_images()), channels, height, width))
            x = probe_batch(channels, height, width).astype(onnx.helper.tensor_dtype_to_np_dtype(elem))
        else:
            assert tokens is not None
            name, elem, length, vocab = tokens
            check_probe_input(name, (len(probe_images()), length))
            x = probe_tokens(length, vocab, len(probe_images())).astype(onnx.helper.tensor_dtype_to_np_dtype(elem))
        acts = _run(model, sites, name, x)
        ks, shares = [], []
        for a in acts:
            if a.ndim < 2 or a.shape[0] != len(x):
                continue
            feats = _as_features(np.asarray(a))
            if feats.shape[1] < 2 or feats.shape[0] < 1:
                continue
            k = ks_from_features(feats)
            ks.append(k)
            shares.append(k[0] / feats.shape[0])
    except Exception as exc:  # onnxruntime raises its own types; a feature must not stop a whole bench
        log.warning("activation features failed: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return missing()
    if not ks:
        return missing()
    totals = np.asarray(ks, dtype=np.float64).sum(axis=0)
    return {
        "act_vpca": math.log1p(totals[0]),
        "act_vpca90": math.log1p(totals[1]),
        "act_vpca999": math.log1p(totals[2]),
        "act_rank_share": float(np.mean(shares)),
        "act_sites": math.log1p(len(ks)),
        "act_missing": 0.0,
    }
