"""Text descriptions of ONNX: the ONNX-Net chain_slim golden, compact repeats, real networks, random graphs."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from onnx import TensorProto, helper, numpy_helper

from nas_ground.errors import UserInputError
from onnx_bench import text
from onnx_bench.export import export_onnx
from onnx_bench.io import load_onnx
from onnx_bench.text import FORMATS, describe, token_count
from search_spaces import get_space
from tests.onnx_strategies import onnx_models, tiny_cnn

# The ONNX-Net paper's (arXiv 2510.04938) chain_slim example of a residual block, character for character.
CHAIN_SLIM_GOLDEN = (
    "Conv(1x3x32x32, Param[16,3,3,3], Param[16])(dilations=1,kernel_shape=3,pads=1,strides=1)"
    " --> Value1:1x16x32x32\n"
    "Relu(Value1) --> Conv(prev, Param[16,16,3,3], Param[16])(dilations=1,kernel_shape=3,pads=1,strides=1)"
    " --> Value2:1x16x32x32\n"
    "Add(Value2, Value1) --> Value3:1x16x32x32\n"
    "GlobalAveragePool(Value3) --> Flatten(prev) --> Gemm(prev, Param[10,16], Param[10]) --> Out"
)

COMPACT_GOLDEN = """\
input 1x3x16x16
Conv in k3 c8
B1 x3
GlobalAveragePool Flatten Gemm transB=1 c10 : 1x10
B1:
  Conv a1 k3 Relu Conv k3
  Add 1 a1
constants: Identity"""

NB201_ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"
NB201_OTHER = "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|avg_pool_3x3~2|"


def residual_stack() -> onnx.ModelProto:
    """A stem conv, three identical Conv-Relu-Conv blocks with a skip Add, and a head whose bias is an
    Identity of a weight (as the torch exporter writes shared initializers)."""
    inits: list[onnx.TensorProto] = []

    def weight(name: str, *dims: int) -> str:
        inits.append(numpy_helper.from_array(np.full(dims, 0.1, np.float32), name))
        return name

    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [helper.make_node("Conv", ["x", weight("stem", 8, 3, 3, 3)], ["h0"], **conv)]
    for b in range(3):
        nodes += [
            helper.make_node("Conv", [f"h{b}", weight(f"w{b}a", 8, 8, 3, 3)], [f"a{b}"], **conv),
            helper.make_node("Relu", [f"a{b}"], [f"r{b}"]),
            helper.make_node("Conv", [f"r{b}", weight(f"w{b}b", 8, 8, 3, 3)], [f"b{b}"], **conv),
            helper.make_node("Add", [f"b{b}", f"h{b}"], [f"h{b + 1}"]),
        ]
    nodes += [
        helper.make_node("Identity", [weight("fc.bias", 10)], ["bias"]),
        helper.make_node("GlobalAveragePool", ["h3"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", weight("fc.weight", 10, 8), "bias"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "residual_stack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_chain_slim_golden_matches_onnx_net():
    assert describe(tiny_cnn(), "chain_slim") == CHAIN_SLIM_GOLDEN
    assert describe(tiny_cnn()) == CHAIN_SLIM_GOLDEN  # the default format


def test_compact_golden_defines_the_repeated_block_once():
    assert describe(residual_stack(), "compact") == COMPACT_GOLDEN


def test_module_docstring_examples_are_current():
    for format in FORMATS:
        for line in describe(tiny_cnn(), format).splitlines():
            assert f"    {line}\n" in str(text.__doc__), (format, line)


def test_unknown_shapes_are_question_marks():
    """A symbolic batch, and a custom op whose output shape cannot be inferred."""
    nodes = [
        helper.make_node("MyOp", ["x"], ["y"], domain="com.example"),
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Add", ["y", "r"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    assert describe(model, "chain_slim") == (
        "MyOp(?x3x4x4) --> Value1:?\nRelu(?x3x4x4) --> Value2:?x3x4x4\nAdd(Value1, Value2) --> Out:?\n"
    )
    assert describe(model, "compact") == "input ?x3x4x4\nMyOp in :?\nRelu in\nAdd 2 1"


def test_empty_graph_gives_empty_text():
    model = helper.make_model(helper.make_graph([], "empty", [], []))
    assert [describe(model, format) for format in FORMATS] == ["", ""]


def test_unknown_format_is_a_user_error():
    with pytest.raises(UserInputError, match=r"'yaml'.*valid: chain_slim, compact"):
        describe(tiny_cnn(), "yaml")


def test_token_count_uses_minilm_wordpieces_without_specials_or_truncation():
    assert token_count("Conv Relu") == 4  # con ##v re ##lu
    assert token_count("Conv " * 300) == 600  # past the model's 512 positions


# -- real networks -------------------------------------------------------------------------------------------


def export(tmp_path: Path, space: str, arch: object, **options: int) -> onnx.ModelProto:
    torch.manual_seed(0)
    model = get_space(space).build(arch, **options)
    return load_onnx(export_onnx(model, tmp_path / f"{space}.onnx", (3, 32, 32)))


def nb201(tmp_path: Path, arch: str = NB201_ARCH) -> onnx.ModelProto:
    return export(tmp_path, "nb201", get_space("nb201").decode(arch))


def nasnet(tmp_path: Path, seed: int = 0) -> onnx.ModelProto:
    return export(tmp_path, "nasnet", get_space("nasnet").sample(random.Random(seed)), channels=8, layers=1)


@pytest.fixture(scope="module")
def networks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, onnx.ModelProto]:
    tmp = tmp_path_factory.mktemp("text")
    return {"nb201": nb201(tmp), "nasnet": nasnet(tmp)}


@pytest.mark.parametrize("name", ["nb201", "nasnet"])
def test_real_networks_compact_is_shorter_and_names_every_op(networks: dict[str, onnx.ModelProto], name: str):
    model = networks[name]
    chain, compact = describe(model, "chain_slim"), describe(model, "compact")
    assert token_count(compact) < token_count(chain)
    assert len(compact) < len(chain)
    for node in model.graph.node:
        assert re.search(rf"\b{node.op_type}\b", compact), node.op_type
    assert chain.endswith("Out")


def test_nb201_compact_repeats_the_cell(networks: dict[str, onnx.ModelProto]):
    compact = describe(networks["nb201"], "compact")
    assert re.findall(r"^B1 x5$", compact, re.MULTILINE) == ["B1 x5"] * 3  # one cell, five times per stage
    assert token_count(compact) <= 512


@pytest.mark.parametrize("name", ["nb201", "nasnet"])
def test_same_arch_and_seed_give_the_same_text(networks: dict[str, onnx.ModelProto], name: str, tmp_path: Path):
    again = nb201(tmp_path) if name == "nb201" else nasnet(tmp_path)
    for format in FORMATS:
        assert describe(again, format) == describe(networks[name], format)


@pytest.mark.parametrize("name", ["nb201", "nasnet"])
def test_different_cells_give_different_texts(networks: dict[str, onnx.ModelProto], name: str, tmp_path: Path):
    other = nb201(tmp_path, NB201_OTHER) if name == "nb201" else nasnet(tmp_path, seed=1)
    for format in FORMATS:
        assert describe(other, format) != describe(networks[name], format)


# -- random graphs -------------------------------------------------------------------------------------------


def check_describes(model: onnx.ModelProto) -> None:
    for format in FORMATS:
        description = describe(model, format)
        for node in model.graph.node:
            assert re.search(rf"\b{node.op_type}\b", description), (format, node.op_type, description)


@settings(max_examples=60, deadline=None)
@given(model=onnx_models())
def test_random_graphs_are_described_naming_every_op(model: onnx.ModelProto):
    check_describes(model)


@settings(max_examples=60, deadline=None)
@given(model=onnx_models(custom_ops=True))
def test_random_graphs_with_custom_ops_are_described_naming_every_op(model: onnx.ModelProto):
    check_describes(model)
