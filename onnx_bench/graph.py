"""ONNX model -> `networkx.DiGraph` of operators joined by tensors, and the summaries people ask for
(op histogram, depth, parameters, MACs/FLOPs, activation sizes); never raises on custom ops or unknown shapes."""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import onnx

from onnx_bench.io import infer_shapes

Dim = int | str | None
Shape = tuple[Dim, ...]

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
_FLOAT_TYPES = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
        onnx.TensorProto.DOUBLE,
    }
)


@dataclass
class _Index:
    """What one pass over the model learns: tensor shapes, initializers, producers, graph inputs/outputs."""

    shapes: dict[str, Shape | None] = field(default_factory=dict)
    params: dict[str, onnx.TensorProto] = field(default_factory=dict)
    producer: dict[str, str] = field(default_factory=dict)  # tensor name -> graph node id
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def shape(self, name: str) -> Shape | None:
        if name in self.params:
            return tuple(int(d) for d in self.params[name].dims)
        return self.shapes.get(name)


def _shape_of(value: onnx.ValueInfoProto) -> Shape | None:
    """The tensor shape of a value info: ints, symbolic names (str) or None per dim; None if no shape."""
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type" or not value.type.tensor_type.HasField("shape"):
        return None
    return tuple(
        int(d.dim_value) if d.HasField("dim_value") else (d.dim_param if d.HasField("dim_param") else None)
        for d in value.type.tensor_type.shape.dim
    )


def _numel(shape: Shape | None) -> int | None:
    """Element count of a fully known shape, else None."""
    dims = [d for d in shape if isinstance(d, int)] if shape is not None else []
    return math.prod(dims) if shape is not None and len(dims) == len(shape) else None


def _known_shapes(graph: onnx.GraphProto) -> dict[str, Shape | None]:
    shapes: dict[str, Shape | None] = {}
    for value in (*graph.value_info, *graph.input, *graph.output):
        shape = _shape_of(value)
        if shape is not None or value.name not in shapes:
            shapes[value.name] = shape
    return shapes


def _index(model: onnx.ModelProto) -> _Index:
    shapes = _known_shapes(model.graph)
    # An exported model already carries value_info for every tensor: inference would only cost time.
    if any(name and shapes.get(name) is None for node in model.graph.node for name in node.output):
        shapes = _known_shapes(infer_shapes(model).graph)
    params = {t.name: t for t in model.graph.initializer}
    return _Index(
        shapes=shapes,
        params=params,
        inputs=[v.name for v in model.graph.input if v.name not in params],
        outputs=[v.name for v in model.graph.output],
    )


def _plain(value: Any) -> Any:
    """An attribute value as plain JSON-friendly Python: bytes decoded, tensors and graphs summarised."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, float):
        return float(f"{value:.7g}")  # float32 attributes: 1e-05, not 9.999999747378752e-06
    if isinstance(value, onnx.TensorProto):
        return {"tensor": onnx.TensorProto.DataType.Name(value.data_type), "dims": [int(d) for d in value.dims]}
    if isinstance(value, onnx.GraphProto):
        return {"graph": value.name, "nodes": len(value.node)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, int | str | bool) or value is None:
        return value
    return type(value).__name__  # SparseTensorProto, TypeProto: named only


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for attr in node.attribute:
        try:
            attrs[attr.name] = _plain(onnx.helper.get_attribute_value(attr))
        except Exception:  # a malformed attribute (undefined type): recorded, not fatal
            attrs[attr.name] = None
    return attrs


def _node_id(i: int, node: onnx.NodeProto) -> str:
    return f"{i}:{node.name or node.op_type}"


def _build(model: onnx.ModelProto) -> tuple[nx.DiGraph, _Index]:
    index = _index(model)
    g = nx.DiGraph()
    for name in index.inputs:
        nid = f"input:{name}"
        g.add_node(nid, op_type="Input", domain="", attrs={}, outputs=[(name, index.shape(name))], params=[])
        index.producer[name] = nid
    ops = list(enumerate(model.graph.node))
    for i, node in ops:
        nid = _node_id(i, node)
        g.add_node(
            nid,
            op_type=node.op_type,
            domain=node.domain,
            attrs=_attrs(node),
            outputs=[(name, index.shape(name)) for name in node.output if name],
            params=[(name, index.shape(name)) for name in node.input if name in index.params],
        )
        for name in node.output:
            if name:
                index.producer[name] = nid
    for i, node in ops:
        _connect(g, index, node.input, _node_id(i, node))
    for name in index.outputs:
        nid = f"output:{name}"
        g.add_node(nid, op_type="Output", domain="", attrs={}, outputs=[], params=[])
        _connect(g, index, [name], nid)
    return g, index


def _connect(g: nx.DiGraph, index: _Index, tensors: Iterable[str], consumer: str) -> None:
    for name in tensors:
        source = index.producer.get(name) if name and name not in index.params else None
        if source is not None and not g.has_edge(source, consumer):  # Add(x, x): one edge
            g.add_edge(source, consumer, tensor=name, shape=index.shape(name))


def to_networkx(model: onnx.ModelProto) -> nx.DiGraph:
    """One node per operator (id ``"{index}:{name or op_type}"``), plus ``input:NAME`` / ``output:NAME`` nodes.

    Node attributes: ``op_type``, ``domain``, ``attrs`` (plain values), ``outputs`` and ``params``
    (lists of (tensor name, shape or None)); an edge is a tensor from producer to consumer with ``tensor`` and
    ``shape``. Two tensors between the same pair of nodes make one edge (the first). Initializers are not nodes.
    """
    return _build(model)[0]


def _macs(node: onnx.NodeProto, index: _Index, attrs: dict[str, Any]) -> int | None:
    """Multiply-accumulates of a Conv, Gemm or MatMul node; None when a shape it needs is unknown."""
    ins = list(node.input)
    out = _numel(index.shape(node.output[0])) if node.output else None
    if out is None or not ins:
        return None
    if node.op_type == "Conv":
        weight = index.shape(ins[1]) if len(ins) > 1 else None
        per_out = _numel(weight[1:]) if weight is not None and len(weight) >= 3 else None  # Cin/group * kH * kW
        return None if per_out is None else out * per_out
    a = index.shape(ins[0])
    if a is None or not a or not isinstance(a[-1], int):
        return None
    if node.op_type == "Gemm":
        k = a[0] if attrs.get("transA") else a[-1]
        return out * k if isinstance(k, int) else None
    return out * a[-1]  # MatMul: batch * M * N outputs, K each


def summarize(model: onnx.ModelProto) -> dict[str, Any]:
    """JSON-serialisable counts of ``model``: operators, op histogram, depth, parameters, FLOPs, activations.

    ``flops`` means multiply-accumulates, as everywhere in this project (the NAS-Bench-201 and NAS-Bench-Macro
    convention): those of Conv, Gemm and MatMul (Conv + Linear) for one input; nodes whose shapes are unknown are
    counted in ``unknown_flops`` instead. ``peak_activation`` / ``activation_total`` are the largest
    and summed element counts of the tensors operators produce, graph outputs and Constant values excluded.
    ``depth`` is the number of operators on the longest path, None for a cyclic graph. ``params`` counts float
    initializers (see `_params`); ``unknown_shapes`` the graph inputs and operator outputs without a shape (a
    symbolic dim such as ``"N"`` is a shape, but leaves the FLOPs of the nodes it reaches unknown). Shapes are lists
    of ints, dim names or None; None when even the rank is unknown.
    """
    g, index = _build(model)
    nodes = list(model.graph.node)
    histogram = Counter(node.op_type for node in nodes)
    op_ids = [_node_id(i, node) for i, node in enumerate(nodes)]
    depth = _depth(g)

    macs = unknown_macs = 0
    for nid, node in zip(op_ids, nodes, strict=True):
        if node.op_type in ("Conv", "Gemm", "MatMul") and node.domain in STANDARD_DOMAINS:
            count = _macs(node, index, g.nodes[nid]["attrs"])
            if count is None:
                unknown_macs += 1
            else:
                macs += count

    graph_outputs = set(index.outputs)
    activations: list[int] = []
    unknown_shapes = 0
    for name in index.inputs:
        unknown_shapes += index.shape(name) is None
    for node in nodes:
        for name in node.output:
            if not name:
                continue
            shape = index.shape(name)
            unknown_shapes += shape is None
            size = _numel(shape)
            if size is not None and node.op_type != "Constant" and name not in graph_outputs:
                activations.append(size)

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "nodes": len(nodes),
        "op_histogram": dict(sorted(histogram.items(), key=lambda kv: (-kv[1], kv[0]))),
        "depth": depth,
        "params": _params(nodes, index),
        "flops": macs,
        "unknown_flops": unknown_macs,
        "peak_activation": max(activations, default=0),
        "activation_total": sum(activations),
        "inputs": {name: _json_shape(index.shape(name)) for name in index.inputs},
        "outputs": {name: _json_shape(index.shape(name)) for name in index.outputs},
        "opset": opset,
        "custom_ops": sorted({node.op_type for node in nodes if node.domain not in STANDARD_DOMAINS}),
        "unknown_shapes": unknown_shapes,
    }


def _params(nodes: list[onnx.NodeProto], index: _Index) -> int:
    """Elements of the float initializers, each Identity of one counted again: the legacy exporter replaces
    equal constants (the zero biases of freshly folded BatchNorms) by Identity nodes of a single initializer,
    so without this the count would depend on the weight values."""
    floats = {name: math.prod(t.dims) for name, t in index.params.items() if t.data_type in _FLOAT_TYPES}
    aliases = sum(floats.get(node.input[0], 0) for node in nodes if node.op_type == "Identity" and node.input)
    return sum(floats.values()) + aliases


def _depth(g: nx.DiGraph) -> int | None:
    """Operators on the longest path into any node; nodes fed by no other node (inputs, Constant, Identity of
    an initializer) and Output nodes do not count. None when the graph has a cycle."""
    level: dict[str, int] = {}
    try:
        for nid in nx.topological_sort(g):
            preds = g.pred[nid]
            if preds:
                level[nid] = max(level[p] for p in preds) + (g.nodes[nid]["op_type"] != "Output")
            else:
                level[nid] = 0
    except nx.NetworkXUnfeasible:
        return None
    return max(level.values(), default=0)


def _json_shape(shape: Shape | None) -> list[Dim] | None:
    return None if shape is None else list(shape)


WL_DIM = 512
WL_ITERATIONS = 2
WL_SCHEME = "networkx-wl-2"  # bench records and predictors name the hashing their WL counts come from
_WL_ATTRS = ("kernel_shape", "strides", "dilations")


def _wl_label(node: onnx.NodeProto) -> str:
    parts = [node.op_type if node.domain in STANDARD_DOMAINS else f"{node.domain}.{node.op_type}"]
    for attr in node.attribute:
        if attr.name in _WL_ATTRS and attr.ints:
            values = list(attr.ints)
            parts.append(f"{attr.name}={values[0] if len(set(values)) == 1 else values}")
        elif attr.name == "group" and attr.i > 1:
            parts.append("grouped")
    return ",".join(parts)


def wl_counts(model: onnx.ModelProto, dim: int = WL_DIM, iterations: int = WL_ITERATIONS) -> dict[int, int]:
    """Weisfeiler-Lehman subtree features of the operator graph (the NAS-BOWL idea, arXiv 2006.07556), hashed.

    Each operator starts with its type and kernel/stride/dilation attributes (``grouped`` for group > 1);
    `networkx.weisfeiler_lehman_subgraph_hashes` refines the labels ``iterations`` times over the operators feeding
    each one. Every label of every iteration (the initial one included) is counted into one of ``dim`` buckets:
    {bucket: count}, only non-zero buckets. Connectivity, not names, decides the result, so it works for any ONNX
    graph. The hashes are those of `WL_SCHEME`: counts from another scheme are not comparable.
    """
    nodes = list(model.graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    g = nx.DiGraph()
    for i, node in enumerate(nodes):
        g.add_node(i, label=_wl_label(node))
    for i, node in enumerate(nodes):  # edges point from an operator to those feeding it: they are its neighbours
        g.add_edges_from((i, producer[x]) for x in node.input if x in producer)
    with warnings.catch_warnings():  # networkx notes that its directed hashes changed in 3.5 (we require >= 3.5)
        warnings.filterwarnings("ignore", "The hashes produced for directed graphs", UserWarning)
        hashes = nx.weisfeiler_lehman_subgraph_hashes(
            g, node_attr="label", iterations=iterations, digest_size=8, include_initial_labels=True
        )
    counts: Counter[int] = Counter(int(h, 16) % dim for per_node in hashes.values() for h in per_node)
    return dict(sorted(counts.items()))
