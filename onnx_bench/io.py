"""Reading ONNX a user brings: clear one-line errors for files that are not (valid) ONNX or exceed the limits of
`onnx_bench.guard`, and shapes inferred."""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from onnx_bench.guard import OnnxInputError, check_file, check_inferred, check_model, uses_external_data

__all__ = ["OnnxInputError", "infer_shapes", "load_onnx"]

log = logging.getLogger(__name__)


def load_onnx(source: str | Path | bytes, *, check: bool = True) -> onnx.ModelProto:
    """Parse an ONNX model from a path or bytes; with ``check``, run `onnx.checker` on it.

    The limits of `onnx_bench.guard` are checked first (file size, operators, subgraph nesting, declared and
    inferred tensor sizes, where external data lives). External-data files are not read (a description only needs
    shapes and initializer dims); a reference to one must name a regular file inside the model's folder.
    """
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    folder = None if isinstance(source, bytes) else Path(source).parent
    if not isinstance(source, bytes):
        check_file(Path(source))
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as exc:
        raise OnnxInputError(f"cannot read ONNX file {name}: {exc.strerror or exc}") from exc
    if not data:
        raise OnnxInputError(f"{name} is empty, not an ONNX model")
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        if "MaxDepth" in str(exc):
            raise OnnxInputError(f"{name} nests messages deeper than the protobuf parser allows") from exc
        raise OnnxInputError(f"{name} is not a valid ONNX model (truncated or corrupt protobuf)") from exc
    if not model.graph.node and not model.graph.input and not model.graph.output:
        raise OnnxInputError(f"{name} is not an ONNX model: it holds no graph")
    check_model(model, name, folder)
    inferred = check_inferred(model, name)
    if inferred is not None and len(data) <= MEMO_BYTES:
        _INFERRED[id(model)] = (model, inferred)  # describe and summarise reuse it (`infer_shapes`)
        while len(_INFERRED) > 2:
            _INFERRED.popitem(last=False)
    if check:
        # The checker stats external data files against the folder of a path it is given (else the working directory)
        checked = str(source) if folder is not None and uses_external_data(model) else model
        try:
            onnx.checker.check_model(checked)
        except onnx.checker.ValidationError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OnnxInputError(f"{name} fails the ONNX checker: {first}") from exc
    return model


# The last models `load_onnx` returned, with the shapes its guard inferred: (model, inferred) by id(model). The
# entry holds the model itself, so its id cannot be reused while the entry lives; callers never mutate a loaded
# model in place (the activation probes run a copy).
MEMO_BYTES = 64 << 20  # larger models are inferred again rather than kept twice in memory
_INFERRED: OrderedDict[int, tuple[onnx.ModelProto, onnx.ModelProto]] = OrderedDict()


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with `value_info` filled by ONNX shape inference; the model unchanged when inference fails
    (custom operators, missing shapes): descriptions then write ``?`` for unknown shapes. A model just loaded by
    `load_onnx` is not inferred again."""
    known = _INFERRED.get(id(model))
    if known is not None and known[0] is model:
        return known[1]
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False)
    except Exception as exc:  # inference raises several unrelated types (InferenceError, RuntimeError, ...)
        log.warning("ONNX shape inference failed, shapes stay unknown: %s", str(exc).splitlines()[0:1])
        return model
