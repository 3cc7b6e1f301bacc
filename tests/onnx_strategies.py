"""Hypothesis strategies for random valid ONNX models (opset 17), and the fixed `tiny_cnn` residual example.

``onnx_models()`` draws checker-clean models: a CNN on a (1, C, H, W) input or a sequence model on a
(1, T, D) input, with branches, residual Add/Mul, Concat, Split (several outputs) and sometimes two
graph outputs. ``onnx_models(custom_ops=True)`` may also insert ``com.example::MyOp`` nodes: still valid
protobuf, but no longer checkable against the operator schemas.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17; onnxruntime reads it
CUSTOM_DOMAIN = "com.example"
CUSTOM_OP = "MyOp"

Shape = tuple[int, ...]


@dataclass
class _Builder:
    """A graph under construction: every tensor's shape is tracked so each drawn node is valid."""

    draw: Callable[[st.SearchStrategy], object]
    custom_ops: bool
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    shapes: dict[str, Shape] = field(default_factory=dict)  # non-initializer tensors
    used_custom: bool = False

    def tensor(self, shape: Shape) -> str:
        name = f"t{len(self.shapes)}"
        self.shapes[name] = shape
        return name

    def param(self, shape: Shape) -> str:
        name = f"w{len(self.inits)}"
        values = (np.arange(int(np.prod(shape))) % 7 - 3).astype(np.float32).reshape(shape) * np.float32(0.1)
        self.inits.append(numpy_helper.from_array(values, name))
        return name

    def const(self, values: list[int]) -> str:
        name = f"w{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs: object) -> None:
        name = self.draw(st.sampled_from(["", f"{op.lower()}_{len(self.nodes)}"]))
        self.nodes.append(helper.make_node(op, inputs, outputs, name=str(name), domain=domain, **attrs))

    def pick(self, rank: int) -> str:
        names = [n for n, s in self.shapes.items() if len(s) == rank]
        return str(self.draw(st.sampled_from(names)))

    def unary(self, op: str, x: str) -> str:
        y = self.tensor(self.shapes[x])
        self.node(op, [x], [y])
        return y

    def binary(self, op: str, x: str) -> str:
        """``op`` of ``x`` and another existing tensor of the same shape (``x`` itself if none): a branch join."""
        same = [n for n, s in self.shapes.items() if s == self.shapes[x]]
        other = str(self.draw(st.sampled_from(same)))
        y = self.tensor(self.shapes[x])
        self.node(op, [x, other] if self.draw(st.booleans()) else [other, x], [y])
        return y

    def split(self, x: str, axis: int) -> str:
        dim = self.shapes[x][axis]
        if dim % 2:
            return self.unary("Relu", x)
        half = list(self.shapes[x])
        half[axis] //= 2
        outs = [self.tensor(tuple(half)), self.tensor(tuple(half))]
        self.node("Split", [x], outs, axis=axis)
        return outs[int(bool(self.draw(st.booleans())))]

    def custom(self, x: str) -> str:
        self.used_custom = True
        y = self.tensor(self.shapes[x])
        self.node(CUSTOM_OP, [x], [y], domain=CUSTOM_DOMAIN, alpha=0.5)
        return y

    # -- CNN ops on (1, C, H, W) -------------------------------------------------------------------------

    def conv(self, x: str) -> str:
        _, c, h, w = self.shapes[x]
        k = int(self.draw(st.sampled_from([1, 3, 5])))
        stride = int(self.draw(st.sampled_from([1, 1, 2])))
        pad = int(self.draw(st.integers(0, k // 2)))
        if h + 2 * pad < k or w + 2 * pad < k:
            k, pad = 1, 0
        kind = self.draw(st.sampled_from(["dense", "dense", "depthwise", "grouped"]))
        if kind == "depthwise":
            group, cout = c, c
        elif kind == "grouped" and c % 2 == 0:
            group, cout = 2, 2 * int(self.draw(st.integers(1, 4)))
        else:
            group, cout = 1, int(self.draw(st.sampled_from([2, 4, 8, 16])))
        weight = self.param((cout, c // group, k, k))
        inputs = [x, weight] + ([self.param((cout,))] if self.draw(st.booleans()) else [])
        oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        y = self.tensor((1, cout, oh, ow))
        self.node("Conv", inputs, [y], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, group=group)
        return y

    def batchnorm(self, x: str) -> str:
        c = self.shapes[x][1]
        inputs = [x, self.param((c,)), self.param((c,)), self.param((c,)), self.positive((c,))]
        y = self.tensor(self.shapes[x])
        self.node("BatchNormalization", inputs, [y], epsilon=1e-5)
        return y

    def positive(self, shape: Shape) -> str:
        name = f"w{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.ones(shape, dtype=np.float32), name))
        return name

    def pool(self, x: str) -> str:
        _, c, h, w = self.shapes[x]
        op = str(self.draw(st.sampled_from(["MaxPool", "AveragePool"])))
        k = int(self.draw(st.sampled_from([2, 3])))
        stride = int(self.draw(st.sampled_from([1, 2])))
        pad = int(self.draw(st.integers(0, k // 2)))
        if h + 2 * pad < k or w + 2 * pad < k:
            return self.unary("Relu", x)
        y = self.tensor((1, c, (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1))
        self.node(op, [x], [y], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
        return y

    def concat(self, x: str) -> str:
        _, _, h, w = self.shapes[x]
        same = [n for n, s in self.shapes.items() if len(s) == 4 and s[2:] == (h, w)]
        other = str(self.draw(st.sampled_from(same)))
        y = self.tensor((1, self.shapes[x][1] + self.shapes[other][1], h, w))
        self.node("Concat", [x, other], [y], axis=1)
        return y

    def head(self, x: str) -> str:
        c = self.shapes[x][1]
        pooled = self.tensor((1, c, 1, 1))
        self.node("GlobalAveragePool", [x], [pooled])
        flat = self.tensor((1, c))
        self.node("Flatten", [pooled], [flat], axis=1)
        classes = int(self.draw(st.sampled_from([2, 10])))
        y = self.tensor((1, classes))
        self.node("Gemm", [flat, self.param((classes, c)), self.param((classes,))], [y], transB=1)
        return y

    # -- sequence ops on (1, T, D) -----------------------------------------------------------------------

    def matmul(self, x: str) -> str:
        _, t, d = self.shapes[x]
        out = int(self.draw(st.sampled_from([4, 8, 16])))
        y = self.tensor((1, t, out))
        self.node("MatMul", [x, self.param((d, out))], [y])
        if self.draw(st.booleans()):
            z = self.tensor((1, t, out))
            self.node("Add", [y, self.param((out,))], [z])
            return z
        return y

    def layernorm(self, x: str) -> str:
        d = self.shapes[x][-1]
        y = self.tensor(self.shapes[x])
        self.node("LayerNormalization", [x, self.positive((d,)), self.param((d,))], [y], axis=-1, epsilon=1e-5)
        return y

    def softmax(self, x: str) -> str:
        y = self.tensor(self.shapes[x])
        self.node("Softmax", [x], [y], axis=-1)
        return y

    def transpose(self, x: str) -> str:
        _, t, d = self.shapes[x]
        y = self.tensor((1, d, t))
        self.node("Transpose", [x], [y], perm=[0, 2, 1])
        return y

    def reshape(self, x: str) -> str:
        _, t, d = self.shapes[x]
        total = t * d
        rows = int(self.draw(st.sampled_from([r for r in (1, 2, 4, 8, t, d) if total % r == 0])))
        y = self.tensor((1, rows, total // rows))
        self.node("Reshape", [x, self.const([1, rows, -1])], [y])
        return y


@st.composite
def _models(draw: st.DrawFn, custom_ops: bool) -> onnx.ModelProto:
    b = _Builder(draw, custom_ops)
    cnn = draw(st.booleans())
    if cnn:
        shape: Shape = (1, draw(st.integers(1, 8)), draw(st.integers(4, 16)), draw(st.integers(4, 16)))
        ops: list[str] = ["conv", "conv", "Relu", "Sigmoid", "batchnorm", "pool", "Add", "Mul", "concat", "split"]
    else:
        shape = (1, draw(st.integers(1, 16)), draw(st.sampled_from([4, 8, 16])))
        ops = ["matmul", "matmul", "Relu", "Sigmoid", "layernorm", "softmax", "transpose", "reshape", "Add", "split"]
    if custom_ops:
        ops.append("custom")
    graph_input = b.tensor(shape)
    x = graph_input
    for op in draw(st.lists(st.sampled_from(ops), min_size=1, max_size=12)):
        if draw(st.integers(0, 3)) == 0:
            x = b.pick(len(shape))  # branch off an earlier tensor
        if op in ("Relu", "Sigmoid"):
            x = b.unary(op, x)
        elif op in ("Add", "Mul"):
            x = b.binary(op, x)
        elif op == "split":
            x = b.split(x, 1 if cnn else 2)
        else:
            x = getattr(b, op)(x)
    if cnn and draw(st.booleans()):
        x = b.head(b.pick(4) if x == graph_input else x)
    if x == graph_input:
        x = b.unary("Relu", x)
    outputs = [x]
    others = [n for n in b.shapes if n not in (x, graph_input)]
    if others and draw(st.booleans()):
        outputs.append(str(draw(st.sampled_from(others))))

    def info(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(b.shapes[name]))

    graph = helper.make_graph(b.nodes, "random", [info(graph_input)], [info(o) for o in outputs], initializer=b.inits)
    opsets = [helper.make_opsetid("", OPSET)]
    if b.used_custom:
        opsets.append(helper.make_opsetid(CUSTOM_DOMAIN, 1))
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION, producer_name="hypothesis")


def onnx_models(custom_ops: bool = False) -> st.SearchStrategy[onnx.ModelProto]:
    """Random valid ONNX models; with ``custom_ops`` some hold ``com.example::MyOp`` nodes (not checkable)."""
    return _models(custom_ops)


def tiny_cnn() -> onnx.ModelProto:
    """Conv-Relu-Conv with a residual Add and a GAP-Flatten-Gemm head on a 1x3x32x32 input (checker-clean)."""
    rng = np.random.default_rng(0)

    def init(name: str, *dims: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(dims).astype(np.float32) * 0.1, name)

    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1], "dilations": [1, 1]}
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["conv1_out"], name="conv1", **conv),
        helper.make_node("Relu", ["conv1_out"], ["relu_out"], name="relu"),
        helper.make_node("Conv", ["relu_out", "conv2.weight", "conv2.bias"], ["conv2_out"], name="conv2", **conv),
        helper.make_node("Add", ["conv2_out", "conv1_out"], ["add_out"], name="add"),
        helper.make_node("GlobalAveragePool", ["add_out"], ["gap_out"], name="gap"),
        helper.make_node("Flatten", ["gap_out"], ["flat_out"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat_out", "fc.weight", "fc.bias"], ["output"], name="fc", transB=1),
    ]
    inits = [
        init("conv1.weight", 16, 3, 3, 3),
        init("conv1.bias", 16),
        init("conv2.weight", 16, 16, 3, 3),
        init("conv2.bias", 16),
        init("fc.weight", 10, 16),
        init("fc.bias", 10),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
