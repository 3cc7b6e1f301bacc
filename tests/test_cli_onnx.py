"""`nas export`, `nas describe`, `nas graph` and `nas bench` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from tests.test_cli import assert_one_line_error, nas

ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"


def test_export_describe_graph_round(tmp_path: Path):
    path = tmp_path / "cell.onnx"
    proc = nas("export", "--space", "nb201", "--arch", ARCH, "-o", str(path), "--option", "cells_per_stage=1")
    assert proc.returncode == 0, proc.stderr
    onnx.checker.check_model(str(path), full_check=True)
    again = tmp_path / "again.onnx"
    nas("export", "--space", "nb201", "--arch", ARCH, "-o", str(again), "--option", "cells_per_stage=1")
    assert path.read_bytes() == again.read_bytes()
    chain = nas("describe", str(path))
    assert chain.returncode == 0 and chain.stdout.startswith("Conv(1x3x32x32, Param[16,3,3,3]")
    compact = nas("describe", str(path), "--format", "compact")
    assert compact.returncode == 0 and len(compact.stdout) < len(chain.stdout)
    summary = json.loads(nas("graph", str(path), "--json").stdout)
    assert summary["op_histogram"]["Conv"] > 0 and summary["flops"] > 0


def test_custom_operator_is_described_not_crashed(tmp_path: Path):
    node = helper.make_node("MyOp", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "custom.onnx"
    onnx.save(model, str(path))
    proc = nas("describe", str(path))
    assert proc.returncode == 0 and "MyOp" in proc.stdout
    summary = json.loads(nas("graph", str(path), "--json").stdout)
    assert summary["custom_ops"] == ["MyOp"]


def test_bad_onnx_input(tmp_path: Path):
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    assert_one_line_error(nas("describe", str(text)), "not a valid ONNX model")
    assert_one_line_error(nas("graph", str(tmp_path / "missing.onnx")), "missing.onnx")
    assert_one_line_error(nas("describe", str(text), "--format", "yaml"), "'yaml'")
    assert_one_line_error(
        nas("export", "--space", "nb201", "--arch", "|bogus~0|", "-o", str(tmp_path / "x.onnx")), "|bogus~0|"
    )
    assert not (tmp_path / "x.onnx").exists()
    assert_one_line_error(nas("bench", "info", str(tmp_path / "nope")), "nope")
    assert_one_line_error(nas("bench", "build", "--space", "nasnet", "--out", str(tmp_path / "b")), "'nasnet'")


def test_bench_build_and_info(tmp_path: Path, data_dir: Path):
    out = tmp_path / "bench"
    proc = nas("bench", "build", "--space", "nb201", "--out", str(out), "--limit", "2", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(nas("bench", "info", str(out), "--json").stdout)
    assert info["records"] == 2 and info["by_space"] == {"nb201": 2}
