"""Crafted hostile ONNX files for fault tests and chaos experiments: each case writes one small file that
declares something absurd (a huge tensor, external data outside its folder, deep nesting, a cycle, ...) and says
what `nas describe` / `nas predict` must answer (see `onnx_bench.guard` for the limits)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto, helper

IMAGE = [1, 3, 8, 8]
HUGE_SHAPE = [8, 3, 100_000, 100_000]  # 2.4e11 elements: ~1 TB of float32


@dataclass(frozen=True)
class HostileCase:
    """``build(folder)`` writes the case under ``folder`` and returns the model's path; ``refused``: the CLI must exit
    2 with one line holding ``needle``; otherwise it must describe (and score) the file, ``needle`` in the text."""

    name: str
    build: Callable[[Path], Path]
    refused: bool
    needle: str


def model(
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto] | None = None,
    *,
    image: list[int] = IMAGE,
    opset: int = 17,
    domains: tuple[str, ...] = (),
) -> onnx.ModelProto:
    """A graph from input ``x`` (a float image) to output ``y``."""
    graph = helper.make_graph(
        nodes,
        "hostile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, image)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=initializers or [],
    )
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    return helper.make_model(graph, opset_imports=opsets)


def save(m: onnx.ModelProto | bytes, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(m if isinstance(m, bytes) else m.SerializeToString())
    return path


def external_conv(location: str, length: int = 4 * 27 * 4) -> onnx.ModelProto:
    """Conv + Relu whose weight (4x3x3x3 float) lives in the external file ``location``."""
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 3, 3, 3])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    conv = model([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])], [weight])
    conv.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6]))
    return conv


def fifo(path: Path) -> Path:
    """A named pipe: opening it for reading blocks until a writer comes, so a reader that should never open it
    would hang."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.mkfifo(path)
    return path


def _external_outside(folder: Path) -> Path:
    fifo(folder / "secret.bin")
    return save(external_conv("../secret.bin"), folder / "model" / "model.onnx")


def _external_absolute(folder: Path) -> Path:
    return save(external_conv(str(fifo(folder / "secret.bin").resolve())), folder / "model" / "model.onnx")


def _external_symlink(folder: Path) -> Path:
    link = folder / "model" / "weights.bin"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(fifo(folder / "secret.bin").resolve())
    return save(external_conv("weights.bin"), folder / "model" / "model.onnx")


def _external_fifo_inside(folder: Path) -> Path:
    fifo(folder / "weights.bin")
    return save(external_conv("weights.bin"), folder / "model.onnx")


def _external_too_short(folder: Path) -> Path:
    (folder / "weights.bin").parent.mkdir(parents=True, exist_ok=True)
    (folder / "weights.bin").write_bytes(bytes(16))
    return save(external_conv("weights.bin"), folder / "model.onnx")


def _external_inside(folder: Path) -> Path:
    (folder / "weights.bin").parent.mkdir(parents=True, exist_ok=True)
    (folder / "weights.bin").write_bytes(bytes(4 * 27 * 4))
    return save(external_conv("weights.bin"), folder / "model.onnx")


def _huge_initializer(folder: Path) -> Path:
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[10**6, 10**6])  # dims only, no data
    return save(model([helper.make_node("MatMul", ["x", "w"], ["y"])], [weight]), folder / "model.onnx")


def _huge_matmul(folder: Path) -> Path:
    big = [10**9, 10**9]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"])],
        "hostile",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, big) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, big)],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "model.onnx")


def _shape(values: list[int]) -> onnx.TensorProto:
    return helper.make_tensor("shape", TensorProto.INT64, [len(values)], values)


def _huge_constant_of_shape(folder: Path) -> Path:
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["z"]),
        helper.make_node("Add", ["x", "z"], ["p"]),
        helper.make_node("Relu", ["p"], ["y"]),
    ]
    return save(model(nodes, [_shape(HUGE_SHAPE)], image=[1, 3, 1, 1]), folder / "model.onnx")


def _huge_expand(folder: Path) -> Path:
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Expand", ["r", "shape"], ["y"])]
    return save(model(nodes, [_shape(HUGE_SHAPE)], image=[1, 3, 1, 1]), folder / "model.onnx")


def _absurd_reshape(folder: Path) -> Path:
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Reshape", ["r", "shape"], ["y"])]
    return save(model(nodes, [_shape([10**5] * 4)]), folder / "model.onnx")


def _runtime_constant_of_shape(folder: Path) -> Path:
    """A shape computed at run time (Shape(x) * 2500 per spatial dim: 8x3x20000x20000 at the probe batch), so
    neither the file nor shape inference tells its size: only onnxruntime's bounded arena stops it."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Mul", ["s", "shape"], ["s2"]),
        helper.make_node("ConstantOfShape", ["s2"], ["z"]),
        helper.make_node("Relu", ["z"], ["y"]),
    ]
    return save(model(nodes, [_shape([1, 1, 2500, 2500])]), folder / "model.onnx")


def _huge_probe_input(folder: Path) -> Path:
    """1x3x20000x20000 (1.2e9 elements) is within the file limit; the probe batch of 8 is not."""
    return save(model([helper.make_node("Relu", ["x"], ["y"])], image=[1, 3, 20_000, 20_000]), folder / "model.onnx")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field: appending it to a serialized message adds the field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def nested_if(depth: int) -> bytes:
    """A model whose ``If`` nodes nest ``depth`` deep, serialized by hand (protobuf refuses to build messages this
    deep in memory)."""
    leaf = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["o0"])],
        "leaf",
        [],
        [helper.make_tensor_value_info("o0", TensorProto.FLOAT, None)],
    )
    graph = leaf.SerializeToString()
    for i in range(depth):
        then = onnx.AttributeProto(name="then_branch", type=onnx.AttributeProto.GRAPH).SerializeToString()
        node = helper.make_node("If", ["c"], [f"o{i + 1}"]).SerializeToString()
        node += _field(5, then + _field(6, graph)) + _field(
            5, helper.make_attribute("else_branch", leaf).SerializeToString()
        )
        outputs = [helper.make_tensor_value_info(f"o{i + 1}", TensorProto.FLOAT, None)]
        graph = helper.make_graph([], f"level{i}", [], outputs).SerializeToString() + _field(1, node)
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, IMAGE),
        helper.make_tensor_value_info("c", TensorProto.BOOL, []),
    ]
    top = helper.make_model(helper.make_graph([], "top", inputs, []), opset_imports=[helper.make_opsetid("", 17)])
    return top.SerializeToString() + _field(7, graph)


def _cycle(folder: Path) -> Path:
    nodes = [
        helper.make_node("Add", ["x", "b"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Relu", ["b"], ["y"]),
    ]
    return save(model(nodes), folder / "model.onnx")


def _custom_domain(folder: Path) -> Path:
    nodes = [helper.make_node("Evil", ["x"], ["e"], domain="com.evil"), helper.make_node("Relu", ["e"], ["y"])]
    return save(model(nodes, domains=("com.evil",)), folder / "model.onnx")


def _opset_99(folder: Path) -> Path:
    return save(model([helper.make_node("Relu", ["x"], ["y"])], opset=99), folder / "model.onnx")


def endless_loop() -> onnx.ModelProto:
    """A Loop of 10^15 iterations before a Relu (so the activation probe runs it)."""
    scalar = [helper.make_tensor_value_info("i", TensorProto.INT64, [])]
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Relu", ["v_in"], ["v_out"])],
        "body",
        [
            *scalar,
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None),
        ],
    )
    trips = helper.make_tensor("trips", TensorProto.INT64, [], [10**15])
    keep = helper.make_tensor("keep", TensorProto.BOOL, [], [True])
    nodes = [helper.make_node("Loop", ["trips", "keep", "x"], ["l"], body=body), helper.make_node("Relu", ["l"], ["y"])]
    return model(nodes, [trips, keep])


CASES: tuple[HostileCase, ...] = (
    HostileCase("external data ../ outside the folder (a FIFO)", _external_outside, True, "outside the model's folder"),
    HostileCase("external data at an absolute path (a FIFO)", _external_absolute, True, "relative path"),
    HostileCase(
        "external data: symlink in the folder to a FIFO outside", _external_symlink, True, "outside the model's folder"
    ),
    HostileCase("external data: a FIFO inside the folder", _external_fifo_inside, True, "not a regular file"),
    HostileCase(
        "external data shorter than its declared length", _external_too_short, True, "beyond the file's 16 bytes"
    ),
    HostileCase("external data inside the folder (valid)", _external_inside, False, "Param[4,3,3,3]"),
    HostileCase("initializer of 10^12 elements, header only", _huge_initializer, True, "limit of 2^31"),
    HostileCase("MatMul of declared 10^9 x 10^9 inputs", _huge_matmul, True, "limit of 2^31"),
    HostileCase("ConstantOfShape to 8x3x10^5x10^5 (constant shape)", _huge_constant_of_shape, True, "limit of 2^31"),
    HostileCase("Expand to 8x3x10^5x10^5 (constant shape)", _huge_expand, True, "limit of 2^31"),
    HostileCase("Reshape to 10^5 x 10^5 x 10^5 x 10^5 (constant shape)", _absurd_reshape, False, "Reshape("),
    HostileCase(
        "ConstantOfShape of a run-time shape (8x3x20000x20000)", _runtime_constant_of_shape, False, "ConstantOfShape("
    ),
    HostileCase("image input 1x3x20000x20000 (probe batch 8: 9.6e9)", _huge_probe_input, False, "1x3x20000x20000"),
    HostileCase("If nested 20 deep", lambda f: save(nested_if(20), f / "model.onnx"), True, "limit of 16 levels"),
    HostileCase("If nested 200 deep", lambda f: save(nested_if(200), f / "model.onnx"), True, "protobuf parser"),
    HostileCase("cycle (a node's output feeds an earlier node)", _cycle, False, "Relu("),
    HostileCase("operator in custom domain com.evil", _custom_domain, False, "Evil(1x3x8x8) --> Value1:?"),
    HostileCase("opset 99", _opset_99, False, "Relu("),
    HostileCase("Loop of 10^15 iterations", lambda f: save(endless_loop(), f / "model.onnx"), False, "Loop("),
)
