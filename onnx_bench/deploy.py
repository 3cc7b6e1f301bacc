"""Shipping an image classifier as ONNX: int8 static quantisation; a file's accuracy, CPU latency, torch parity."""

from __future__ import annotations

import logging
import math
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)
from torch import nn

from nas_ground.atomic import atomic_write
from nas_ground.errors import UserInputError
from onnx_bench.io import OnnxInputError, load_onnx

log = logging.getLogger(__name__)

CALIBRATION_BATCH = 32  # images per calibration run when the model's batch dimension is dynamic
Shape = tuple[int | None, ...]  # a model input's dims; None where the model leaves a dim free


def quantize_int8(
    float_path: Path,
    out_path: Path,
    calibration: np.ndarray,
    *,
    per_channel: bool = True,
) -> Path:
    """Statically quantise the float model at ``float_path`` to int8 (QDQ, MinMax ranges over ``calibration``).

    ``calibration`` holds float32 normalised images ``(N, C, H, W)`` as the model sees them. The model is first
    shape-inferred and optimised by onnxruntime's pre-processing (the raw model is used when that fails). The
    result appears at ``out_path`` only once it passed `onnx.checker`; returns ``out_path``.
    """
    float_path, out_path = Path(float_path), Path(out_path)
    model = load_onnx(float_path)
    name, shape = _model_input(model, float_path)
    images = _as_input(calibration, shape, f"calibration images for {float_path}")
    batch = shape[0] if isinstance(shape[0], int) else CALIBRATION_BATCH
    with tempfile.TemporaryDirectory(prefix="nas-quantize-") as tmp:
        source = Path(tmp) / "preprocessed.onnx"
        try:
            quant_pre_process(str(float_path), str(source))
        except Exception as exc:  # shape inference and the optimiser raise many unrelated types
            log.warning("onnxruntime pre-processing of %s failed, quantising the raw model: %s", float_path, exc)
            source = float_path
        quantized = Path(tmp) / "int8.onnx"
        quantize_static(
            str(source),
            str(quantized),
            _ImageReader(name, images, batch),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            # A BatchNormalization left unfused (no conv before it) has rank-1 scales: channels are axis 0.
            extra_options={"QDQOpTypePerChannelSupportToAxis": {"BatchNormalization": 0}},
        )
        result = onnx.load_model(str(quantized))
        onnx.checker.check_model(result)
        return atomic_write(out_path, result.SerializeToString())


def onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray, *, batch_size: int = 250) -> float:
    """Top-1 accuracy in percent of the ONNX classifier at ``path`` on images ``x`` (float32, normalised,
    ``(N, C, H, W)``) with labels ``y`` ``(N,)``, run by onnxruntime on the CPU in batches of ``batch_size``
    (or of the model's fixed batch size)."""
    if batch_size < 1:
        raise UserInputError(f"batch_size={batch_size} must be >= 1")
    session = _session(path)
    name, shape = session.get_inputs()[0].name, _session_shape(session)
    images = _as_input(x, shape, f"images for {path}")
    labels = np.asarray(y).reshape(-1)
    if len(labels) != len(images):
        raise UserInputError(f"{len(images)} images but {len(labels)} labels for {path}")
    size = shape[0] if isinstance(shape[0], int) else batch_size
    predictions = [
        np.argmax(session.run(None, {name: chunk})[0][:real], axis=1) for chunk, real in _chunks(images, size)
    ]
    return 100.0 * float(np.mean(np.concatenate(predictions) == labels))


def onnx_latency_ms(
    path: Path,
    example: np.ndarray,
    *,
    warmup: int = 10,
    repeats: int = 50,
    threads: int = 1,
) -> float:
    """Median wall time in ms of one batch-1 run (a batch of the model's fixed size if it has another) of the
    model at ``path`` on the CPU on the first image(s) of ``example``, with ``threads`` intra-op threads, one
    inter-op thread and all graph optimisations."""
    for key, value, low in (("warmup", warmup, 0), ("repeats", repeats, 1), ("threads", threads, 1)):
        if value < low:
            raise UserInputError(f"{key}={value} must be >= {low}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = _session(path, options)
    name, shape = session.get_inputs()[0].name, _session_shape(session)
    batch = shape[0] if isinstance(shape[0], int) else 1
    feed = {name: next(_chunks(_as_input(example, shape, f"example for {path}"), batch))[0]}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def onnx_parity(path: Path, model: nn.Module, example: torch.Tensor) -> float:
    """Max absolute difference between the logits of the ONNX model at ``path`` (onnxruntime, CPU) and of
    ``model`` in eval mode (its first output when it returns a tuple) on ``example``; inf when shapes differ."""
    session = _session(path)
    shape = _session_shape(session)
    feed = _as_input(example.detach().cpu().numpy(), shape, f"example for {path}")
    if isinstance(shape[0], int) and len(feed) != shape[0]:
        raise UserInputError(f"example for {path} holds {len(feed)} images; the model takes batches of {shape[0]}")
    got = session.run(None, {session.get_inputs()[0].name: feed})[0]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(example)
    finally:
        model.train(was_training)
    want = (out[0] if isinstance(out, tuple) else out).detach().cpu().numpy()
    return float(np.max(np.abs(got - want))) if got.shape == want.shape else math.inf


class _ImageReader(CalibrationDataReader):
    """Feeds calibration images to onnxruntime's calibrator in chunks of the size the model accepts."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int) -> None:
        self._input_name = input_name
        self._chunks = _chunks(images, batch)

    def get_next(self) -> dict[str, np.ndarray] | None:
        chunk = next(self._chunks, None)
        return None if chunk is None else {self._input_name: chunk[0]}


def _chunks(images: np.ndarray, size: int) -> Iterator[tuple[np.ndarray, int]]:
    """Consecutive chunks of exactly ``size`` images, the last one padded by repeating its own images, each
    with the number of real images at its start."""
    for start in range(0, len(images), size):
        chunk = images[start : start + size]
        real = len(chunk)
        if real < size:
            chunk = np.take(chunk, np.arange(size) % real, axis=0)
        yield np.ascontiguousarray(chunk), real


def _session(path: Path, options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """A CPU session for the ONNX file at ``path``; `OnnxInputError` naming it when it cannot be run."""
    load_onnx(path)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's errors (Fail, InvalidGraph, ...) derive from Exception only
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxInputError(f"onnxruntime cannot run {path}: {first}") from exc


def _session_shape(session: ort.InferenceSession) -> Shape:
    return tuple(d if isinstance(d, int) and d > 0 else None for d in session.get_inputs()[0].shape)


def _model_input(model: onnx.ModelProto, path: Path) -> tuple[str, Shape]:
    """Name and dims of the graph's first real input (not an initializer listed as an input)."""
    initializers = {t.name for t in model.graph.initializer}
    first = next((i for i in model.graph.input if i.name not in initializers), None)
    if first is None:
        raise OnnxInputError(f"{path} has no input to feed images to")
    dims = first.type.tensor_type.shape.dim
    return first.name, tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims)


def _as_input(x: np.ndarray, shape: Shape, what: str) -> np.ndarray:
    """``x`` as float32 after checking it against the model's input dims (any batch size, at least one image)."""
    array = np.asarray(x, dtype=np.float32)
    fits = array.ndim == len(shape) and all(
        d is None or d == n for d, n in zip(shape[1:], array.shape[1:], strict=True)
    )
    if not fits or len(array) == 0:
        expected = "(N, " + ", ".join("?" if d is None else str(d) for d in shape[1:]) + ")"
        raise UserInputError(f"{what} have shape {array.shape}; the model takes {expected} with N >= 1")
    return array
