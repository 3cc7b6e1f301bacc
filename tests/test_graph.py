"""onnx_bench.graph: the operator graph and its summaries, on hand-built, exported and random ONNX models."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import onnx
import pytest
import torch
from hypothesis import given, settings
from onnx import TensorProto, helper
from torch import nn

from nas_ground.cost import count_flops
from onnx_bench.export import export_onnx
from onnx_bench.graph import summarize, to_networkx
from search_spaces import get_space
from tests.onnx_strategies import CUSTOM_DOMAIN, OPSET, onnx_models, tiny_cnn

NB201_ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"


def test_tiny_cnn_summary() -> None:
    s = summarize(tiny_cnn())
    assert s["nodes"] == 7
    assert s["op_histogram"] == {"Conv": 2, "Add": 1, "Flatten": 1, "Gemm": 1, "GlobalAveragePool": 1, "Relu": 1}
    assert list(s["op_histogram"]) == ["Conv", "Add", "Flatten", "Gemm", "GlobalAveragePool", "Relu"]
    assert s["depth"] == 7  # Conv -> Relu -> Conv -> Add -> GAP -> Flatten -> Gemm
    assert s["params"] == (16 * 3 * 3 * 3 + 16) + (16 * 16 * 3 * 3 + 16) + (10 * 16 + 10)
    macs = 32 * 32 * 16 * (3 * 3 * 3) + 32 * 32 * 16 * (16 * 3 * 3) + 10 * 16
    assert (s["flops"], s["unknown_flops"]) == (macs, 0)  # FLOPs are multiply-accumulates
    assert "macs" not in s  # one name for one quantity
    assert s["peak_activation"] == 16 * 32 * 32
    assert s["activation_total"] == 4 * 16 * 32 * 32 + 16 + 16  # conv1, relu, conv2, add; GAP, Flatten
    assert s["inputs"] == {"input": [1, 3, 32, 32]}
    assert s["outputs"] == {"output": [1, 10]}
    assert (s["opset"], s["custom_ops"], s["unknown_shapes"]) == (17, [], 0)
    json.dumps(s)


def test_tiny_cnn_graph() -> None:
    g = to_networkx(tiny_cnn())
    ops = {n: d["op_type"] for n, d in g.nodes(data=True)}
    assert sorted(ops.values()) == sorted(
        ["Input", "Conv", "Relu", "Conv", "Add", "GlobalAveragePool", "Flatten", "Gemm", "Output"]
    )
    # a chain of 8 tensors (input ... output) plus the residual conv1 -> add
    assert g.number_of_edges() == 9
    assert g.has_edge("0:conv1", "3:add") and g.has_edge("2:conv2", "3:add")
    assert g.edges["0:conv1", "3:add"] == {"tensor": "conv1_out", "shape": (1, 16, 32, 32)}
    conv1 = g.nodes["0:conv1"]
    assert conv1["attrs"] == {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1], "dilations": [1, 1]}
    assert conv1["params"] == [("conv1.weight", (16, 3, 3, 3)), ("conv1.bias", (16,))]
    assert conv1["outputs"] == [("conv1_out", (1, 16, 32, 32))]
    assert g.nodes["6:fc"]["attrs"] == {"transB": 1}
    assert g.has_edge("input:input", "0:conv1") and g.has_edge("6:fc", "output:output")


def test_attributes_are_plain_values() -> None:
    node = helper.make_node(
        "LayerNormalization", ["x", "s", "b"], ["y"], epsilon=1e-5, axis=-1, mode="fast", domain=CUSTOM_DOMAIN
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in "xsb"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    g = to_networkx(helper.make_model(graph))
    assert g.nodes["0:LayerNormalization"]["attrs"] == {"epsilon": 1e-5, "axis": -1, "mode": "fast"}
    assert g.nodes["0:LayerNormalization"]["domain"] == CUSTOM_DOMAIN


def test_two_tensors_between_one_pair_make_one_edge() -> None:
    nodes = [
        helper.make_node("Split", ["x"], ["a", "b"], name="split", axis=0),
        helper.make_node("Add", ["b", "a"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "split",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    g = to_networkx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]))
    assert g.nodes["0:split"]["outputs"] == [("a", (2,)), ("b", (2,))]
    assert g.number_of_edges() == 3
    assert g.edges["0:split", "1:add"] == {"tensor": "b", "shape": (2,)}  # the consumer's first input


@pytest.fixture(scope="module")
def nb201(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, onnx.ModelProto]:
    space = get_space("nb201")
    torch.manual_seed(0)
    model = space.build(space.decode(NB201_ARCH))
    path = export_onnx(model, tmp_path_factory.mktemp("nb201") / "cell.onnx", (3, 32, 32))
    return model, onnx.load(path)


def test_nb201_macs_match_torch_profile(nb201: tuple[nn.Module, onnx.ModelProto]) -> None:
    model, proto = nb201
    s = summarize(proto)
    assert s["unknown_flops"] == 0 and s["unknown_shapes"] == 0
    assert s["flops"] == count_flops(model, (3, 32, 32))  # same convention: Conv + Linear(Gemm)
    assert s["op_histogram"]["Conv"] == sum(isinstance(m, nn.Conv2d) for m in model.modules())


def _batchnorm_relation(model: nn.Module) -> tuple[int, int]:
    """(channels of BatchNorms that follow a Conv, channels of the one that does not: ``lastact``)."""
    bns = {name: m.num_features for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    kept = bns.pop("lastact.0")
    return sum(bns.values()), kept


def test_nb201_params_relation(nb201: tuple[nn.Module, onnx.ModelProto], tmp_path: Path) -> None:
    # The legacy exporter folds every Conv -> BatchNorm (eval mode) into the Conv: the BN's weight and bias (2C)
    # become a Conv bias (C). ``lastact`` (BN after an Add) stays a BatchNormalization node whose running mean
    # and variance are initializers too (+2C). Freshly initialised BNs fold to equal zero biases, which the
    # legacy exporter shares through Identity nodes; `export_bytes` turns those back into initializers of
    # their own, so the relation holds for fresh and for trained (distinct) weights alike.
    model, proto = nb201
    folded, kept = _batchnorm_relation(model)
    torch_params = sum(p.numel() for p in model.parameters())
    expected = torch_params - folded + 2 * kept
    s = summarize(proto)
    assert s["op_histogram"]["BatchNormalization"] == 1
    assert "Identity" not in s["op_histogram"]
    assert s["params"] == expected

    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                for t in (m.weight, m.bias, m.running_mean):
                    t.copy_(torch.randn(t.shape, generator=generator))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
    trained = summarize(onnx.load(export_onnx(model, tmp_path / "trained.onnx", (3, 32, 32))))
    assert "Identity" not in trained["op_histogram"]
    assert trained["params"] == expected
    assert trained["flops"] == s["flops"]


def test_transformer_matmuls_are_counted() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(64, 4, dim_feedforward=128, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    buffer = io.BytesIO()
    # Not under no_grad: there the encoder takes its fused fast path, an op the ONNX exporter cannot write.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(encoder, (torch.randn(1, 16, 64),), buffer, dynamo=False, opset_version=17)
    s = summarize(onnx.load_model_from_string(buffer.getvalue()))
    json.dumps(s)
    assert s["op_histogram"]["MatMul"] > 0 and s["unknown_flops"] == 0
    t, d, ff, layers = 16, 64, 128, 2
    # per layer: QKV projection, Q K^T and A V over all heads, output projection, the two FFN layers
    per_layer = t * d * 3 * d + 2 * t * t * d + t * d * d + 2 * t * d * ff
    assert s["flops"] == layers * per_layer
    assert s["params"] == sum(p.numel() for p in encoder.parameters())
    assert s["inputs"] == {next(iter(s["inputs"])): [1, 16, 64]}


def _custom_then_conv(input_dims: list[int | str]) -> onnx.ModelProto:
    nodes = [
        helper.make_node("MyOp", ["x"], ["h"], domain=CUSTOM_DOMAIN),
        helper.make_node("Conv", ["h", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["y"], ["z"]),
    ]
    weight = helper.make_tensor("w", TensorProto.FLOAT, [8, 3, 3, 3], [0.0] * (8 * 27))
    graph = helper.make_graph(
        nodes,
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_dims)],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        initializer=[weight],
    )
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(CUSTOM_DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=opsets)


def test_unknown_shapes_are_counted_not_fatal() -> None:
    s = summarize(_custom_then_conv([1, 3, 8, 8]))
    assert s["custom_ops"] == ["MyOp"]
    assert s["unknown_flops"] == 1 and s["flops"] == 0
    assert s["unknown_shapes"] == 3  # h, y, z
    assert s["depth"] == 3 and s["params"] == 8 * 27
    assert s["outputs"] == {"z": None}
    json.dumps(s)


def test_symbolic_batch_leaves_macs_unknown() -> None:
    model = tiny_cnn()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "N"
    s = summarize(model)
    assert s["inputs"] == {"input": ["N", 3, 32, 32]}
    assert s["unknown_flops"] == 3 and s["flops"] == 0
    assert s["unknown_shapes"] == 0 and s["peak_activation"] == 0


def test_cycle_gives_no_depth() -> None:
    nodes = [helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"])]
    graph = helper.make_graph(
        nodes,
        "cycle",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])],
    )
    s = summarize(helper.make_model(graph))
    assert s["depth"] is None and s["nodes"] == 2


def _check_invariants(model: onnx.ModelProto) -> dict:
    g = to_networkx(model)
    operators = [n for n, op in g.nodes(data="op_type") if op not in ("Input", "Output")]
    assert len(operators) == len(model.graph.node)
    assert sum(op == "Output" for _, op in g.nodes(data="op_type")) == len(model.graph.output)
    s = summarize(model)
    json.dumps(s)
    assert s["nodes"] == len(model.graph.node)
    assert sum(s["op_histogram"].values()) == s["nodes"]
    assert s["depth"] is not None and 1 <= s["depth"] <= s["nodes"]
    return s


@settings(max_examples=60, deadline=None)
@given(onnx_models())
def test_random_models(model: onnx.ModelProto) -> None:
    s = _check_invariants(model)
    assert s["unknown_shapes"] == 0 and s["unknown_flops"] == 0 and s["custom_ops"] == []
    assert (s["flops"] > 0) == any(n.op_type in ("Conv", "Gemm", "MatMul") for n in model.graph.node)


@settings(max_examples=60, deadline=None)
@given(onnx_models(custom_ops=True))
def test_random_models_with_custom_ops(model: onnx.ModelProto) -> None:
    s = _check_invariants(model)
    assert s["custom_ops"] == (["MyOp"] if any(n.domain == CUSTOM_DOMAIN for n in model.graph.node) else [])


def _chain_model(names: list[str], residual: bool) -> onnx.ModelProto:
    """x -> Relu -> Relu -> (Add with x when residual, else Relu): node and tensor names from ``names``."""
    a, b, c = names
    nodes = [helper.make_node("Relu", ["x"], [a]), helper.make_node("Relu", [a], [b])]
    nodes.append(helper.make_node("Add", [b, "x"], [c]) if residual else helper.make_node("Add", [b, a], [c]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info(c, TensorProto.FLOAT, [1, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def test_wl_counts_see_connectivity_not_names() -> None:
    from onnx_bench.graph import wl_counts

    one = wl_counts(_chain_model(["t1", "t2", "t3"], residual=True))
    renamed = wl_counts(_chain_model(["p", "q", "r"], residual=True))
    rewired = wl_counts(_chain_model(["t1", "t2", "t3"], residual=False))
    assert one == renamed
    assert one != rewired  # same ops, other edges
    assert sum(one.values()) == 3 * 3  # 3 operators x (iterations 0, 1, 2)
    cnn = wl_counts(tiny_cnn())
    assert cnn and all(0 <= k < 512 for k in cnn)


def test_a_loaded_model_is_shape_inferred_once(tmp_path: Path):
    import random

    from onnx_bench import io as onnx_io
    from onnx_bench.export import export_architecture
    from search_spaces import get_space

    space = get_space("nb201")
    path = tmp_path / "cell.onnx"
    path.write_bytes(export_architecture(space, space.sample(random.Random(3))).data)
    model = onnx_io.load_onnx(path, check=False)
    first = onnx_io.infer_shapes(model)
    assert onnx_io.infer_shapes(model) is first  # the guard's inference, reused
    fresh = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False)
    assert first.graph.value_info == fresh.graph.value_info
    other = onnx.ModelProto()
    other.CopyFrom(model)  # a model that load_onnx did not return is inferred anew
    assert (
        onnx_io.infer_shapes(other) is not first
        and onnx_io.infer_shapes(other).graph.value_info == fresh.graph.value_info
    )
