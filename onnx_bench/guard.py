"""Limits on ONNX files from anywhere: what a file may declare before it is parsed further, and the bounds
onnxruntime runs under, so that a hostile file costs a one-line error, never a hang or a huge allocation.

`check_file` and `check_model` run in `onnx_bench.io.load_onnx` before the ONNX checker and shape inference,
`check_inferred` after one shape inference there; the activation probes build their sessions with `probe_session`
and run them with `run_bounded`.
"""

from __future__ import annotations

import functools
import math
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from nas_ground.errors import UserInputError

MAX_FILE_BYTES = 2**31  # protobuf's own limit on one message
MAX_NODES = 100_000  # operators in all graphs together
MAX_DEPTH = 16  # subgraphs (If, Loop, Scan bodies) nested in one another
MAX_ELEMENTS = 2**31  # any one tensor as the file declares it or shape inference infers it (batch of the file)
MAX_PROBE_ELEMENTS = 2**28  # an input batch the activation probe builds
MAX_PROBE_BYTES = 2**30  # all that onnxruntime allocates for one session (weights and activations)
MAX_PROBE_SECONDS = 15.0  # onnxruntime time of one model's probe, all its runs together


class OnnxInputError(UserInputError):
    """A file that is not ONNX, is truncated or corrupt, fails the ONNX checker or exceeds a limit of this module."""


def check_file(path: Path) -> None:
    """A regular file (a FIFO or device would block or never end) of at most `MAX_FILE_BYTES`."""
    try:
        info = path.stat()
    except OSError as exc:
        raise OnnxInputError(f"cannot read ONNX file {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise OnnxInputError(f"{path} is not a regular file")
    if info.st_size > MAX_FILE_BYTES:
        raise OnnxInputError(f"{path} holds {info.st_size} bytes, beyond the limit of 2^31 bytes of one ONNX file")


def graphs(model: onnx.ModelProto, name: str) -> Iterator[onnx.GraphProto]:
    """The main graph and every subgraph, each once, without recursion; raises beyond `MAX_DEPTH` or `MAX_NODES`."""
    stack = [(model.graph, 0)]
    nodes = 0
    while stack:
        graph, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise OnnxInputError(f"{name} nests subgraphs deeper than the limit of {MAX_DEPTH} levels")
        nodes += len(graph.node)
        if nodes > MAX_NODES:
            raise OnnxInputError(f"{name} holds more than the limit of {MAX_NODES} operators")
        yield graph
        for node in graph.node:
            for attr in node.attribute:
                stack.extend((g, depth + 1) for g in (*([attr.g] if attr.HasField("g") else []), *attr.graphs))


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Initializers and constant attribute values of one graph (sparse ones as their values and indices)."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sparse in (*([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []), *attr.sparse_tensors):
                yield from (sparse.values, sparse.indices)


def _sparse_dims(graph: onnx.GraphProto) -> Iterator[tuple[str, Sequence[int]]]:
    """Dense shapes that sparse tensors declare (onnxruntime densifies them)."""
    for sparse in graph.sparse_initializer:
        yield sparse.values.name, sparse.dims
    for node in graph.node:
        for attr in node.attribute:
            for sparse in (*([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []), *attr.sparse_tensors):
                yield sparse.values.name or node.op_type, sparse.dims


def _check_dims(name: str, tensor: str, dims: Sequence[int]) -> None:
    if any(d < 0 for d in dims):
        raise OnnxInputError(f"{name}: tensor {tensor!r} has a negative dimension {list(dims)}")
    if math.prod(dims) > MAX_ELEMENTS:
        shape = "x".join(str(d) for d in dims)
        raise OnnxInputError(
            f"{name}: tensor {tensor!r} declares {math.prod(dims)} elements ({shape}), beyond the limit of 2^31"
        )


def _check_values(name: str, graph: onnx.GraphProto) -> None:
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            dims = value.type.tensor_type.shape.dim
            known = [d.dim_value for d in dims if d.HasField("dim_value") and d.dim_value >= 0]
            _check_dims(name, value.name, known)  # symbolic dims (a batch "N") and -1 (unknown) do not count


def _check_external(name: str, tensor: onnx.TensorProto, folder: Path | None) -> None:
    """External data must lie in a regular file inside the model's folder (symlinks resolved) and within its size;
    the file is only stat-ed, never opened."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    where = f"{name}: tensor {tensor.name!r} keeps its data in {location!r}"
    if folder is None:
        raise OnnxInputError(f"{where}, but a model given as bytes has no folder for external data")
    if not location or Path(location).is_absolute():
        raise OnnxInputError(f"{where}: external data must be a relative path inside the model's folder")
    try:
        root = folder.resolve()
        target = (root / location).resolve()
    except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a symlink loop
        raise OnnxInputError(f"{where}, which is not a usable path ({exc})") from exc
    if not target.is_relative_to(root):
        raise OnnxInputError(f"{where}, outside the model's folder {root}")
    try:
        info_stat = target.stat()
    except OSError as exc:
        raise OnnxInputError(f"{where}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info_stat.st_mode):
        raise OnnxInputError(f"{where}, which is not a regular file")
    try:
        offset = int(info.get("offset", 0))
        length = int(info.get("length", info_stat.st_size - offset))
    except ValueError as exc:
        raise OnnxInputError(f"{where} with a non-integer offset or length") from exc
    if offset < 0 or length < 0 or offset + length > info_stat.st_size:
        raise OnnxInputError(
            f"{where} at offset {offset}, length {length}: beyond the file's {info_stat.st_size} bytes"
        )


def check_model(model: onnx.ModelProto, name: str, folder: Path | None) -> None:
    """The limits of this module on what ``model`` declares (``name`` for messages, ``folder`` the directory its
    external data may live in; None for a model given as bytes). Reads no tensor data and allocates nothing
    the declared sizes ask for."""
    for graph in graphs(model, name):
        for tensor in _tensors(graph):
            _check_dims(name, tensor.name, tensor.dims)
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                _check_external(name, tensor, folder)
        for tensor_name, dims in _sparse_dims(graph):
            _check_dims(name, tensor_name, dims)
        _check_values(name, graph)


def check_inferred(model: onnx.ModelProto, name: str) -> onnx.ModelProto | None:
    """`MAX_ELEMENTS` on the shapes ONNX shape inference gives (a ConstantOfShape, Expand or Reshape fed by a constant
    shape); inference computes shapes, never the tensors. Returns the inferred model (None where inference cannot
    handle the model: that is left to the caller)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False)
    except Exception:  # inference raises several unrelated types; shapes then stay unknown (``?``)
        return None
    for graph in graphs(inferred, name):
        _check_values(name, graph)
    return inferred


def uses_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for g in graphs(model, "model") for t in _tensors(g))


def check_probe_input(name: str, shape: Sequence[int]) -> None:
    """`MAX_PROBE_ELEMENTS` on an input batch, before it is built."""
    if math.prod(shape) > MAX_PROBE_ELEMENTS:
        dims = "x".join(str(d) for d in shape)
        raise OnnxInputError(f"input {name!r} would need {dims} elements at the probe batch, beyond the limit of 2^28")


@functools.cache
def _register_bounded_allocator() -> None:
    """One onnxruntime arena of at most `MAX_PROBE_BYTES` that sessions of `probe_session` share."""
    import onnxruntime as ort

    memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(memory, ort.OrtArenaCfg(MAX_PROBE_BYTES, -1, -1, -1))


def probe_session(model: onnx.ModelProto, threads: int) -> Any:
    """An onnxruntime CPU session of ``model``, graph optimizations off (tensors exposed as outputs stay), whose
    allocations come from the bounded arena: one beyond `MAX_PROBE_BYTES` fails with an error instead of exhausting
    memory. Refuses external data (onnxruntime would resolve it against the working directory)."""
    import onnxruntime as ort

    if uses_external_data(model):
        raise OnnxInputError("the model keeps tensors in external data files, which onnxruntime is not given")
    _register_bounded_allocator()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3  # errors reach the caller as exceptions
    options.add_session_config_entry("session.use_env_allocators", "1")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def probe_deadline() -> float:
    """The `time.monotonic` moment a probe starting now must end by (`MAX_PROBE_SECONDS` on)."""
    return time.monotonic() + MAX_PROBE_SECONDS


def run_bounded(session: Any, wanted: list[str], feed: dict[str, np.ndarray], deadline: float) -> list[np.ndarray]:
    """``session.run``, stopped at ``deadline`` (`time.monotonic`; a Loop of 10^15 iterations, a slow giant):
    onnxruntime checks the flag at every node and loop iteration."""
    import onnxruntime as ort

    left = deadline - time.monotonic()
    if left <= 0:
        raise OnnxInputError(f"the model ran past the limit of {MAX_PROBE_SECONDS:g} s of onnxruntime time")
    options = ort.RunOptions()
    options.log_severity_level = 4  # a failed node's error comes back as the exception; nothing on stderr
    timer = threading.Timer(left, lambda: setattr(options, "terminate", True))
    timer.start()
    try:
        return list(session.run(wanted, feed, options))
    except Exception as exc:
        if options.terminate:
            raise OnnxInputError(
                f"the model ran past the limit of {MAX_PROBE_SECONDS:g} s of onnxruntime time"
            ) from exc
        raise
    finally:
        timer.cancel()
