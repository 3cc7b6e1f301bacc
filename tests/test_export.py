"""ONNX export: checked files, byte-identical for the same architecture and seed, parity with torch."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from onnx_bench.export import ExportError, export_architecture, export_bytes, export_onnx
from onnx_bench.io import OnnxInputError, load_onnx
from search_spaces import get_space

NB201_BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"


def test_same_arch_and_seed_give_identical_bytes():
    space = get_space("nb201")
    arch = space.decode(NB201_BEST)
    a = export_architecture(space, arch, seed=0, build_options={"cells_per_stage": 1})
    b = export_architecture(space, arch, seed=0, build_options={"cells_per_stage": 1})
    c = export_architecture(space, arch, seed=1, build_options={"cells_per_stage": 1})
    assert a.data == b.data and a.sha256 == b.sha256
    assert c.sha256 != a.sha256
    model = onnx.load_model_from_string(a.data)
    assert model.opset_import[0].version == 17
    assert model.graph.value_info, "shapes are inferred into the file"


def test_saved_file_is_named_by_hash_and_checked(tmp_path: Path):
    space = get_space("nasnet")
    arch = space.sample(random.Random(0))
    exported = export_architecture(space, arch, build_options={"channels": 4, "layers": 1}, parity=True)
    path = exported.save(tmp_path, prefix="nasnet-")
    assert path.name == f"nasnet-{exported.sha256[:16]}.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left


def test_onnxruntime_matches_torch(tmp_path: Path):
    space = get_space("nb201")
    torch.manual_seed(0)
    model = space.build(space.decode(NB201_BEST), cells_per_stage=1).eval()
    path = export_onnx(model, tmp_path / "m.onnx", (3, 32, 32), parity=True)
    x = torch.randn(2, 3, 32, 32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x[:1].numpy()})[0]
    np.testing.assert_allclose(got, model(x[:1]).detach().numpy(), atol=1e-4)


class Unexportable(torch.nn.Module):
    """Different answers in torch and ONNX: a Python-side random draw is baked in as a constant by tracing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + float(np.random.rand())


def test_parity_failure_is_reported():
    with pytest.raises(ExportError, match="differs from torch"):
        export_bytes(Unexportable(), (3, 4, 4), parity=True)


def test_dynamo_exporter_is_selectable():
    space = get_space("nb201")
    torch.manual_seed(0)
    model = space.build(space.decode(NB201_BEST), cells_per_stage=1, channels=4)
    data = export_bytes(model, (3, 32, 32), dynamo=True, parity=True)
    assert load_onnx(data).opset_import[0].version >= 18


@pytest.mark.parametrize(
    ("payload", "needle"),
    [(b"", "empty"), (b"not an onnx model at all \x00\xff" * 10, "not a valid ONNX model")],
)
def test_bad_files_give_one_line_errors(tmp_path: Path, payload: bytes, needle: str):
    path = tmp_path / "bad.onnx"
    path.write_bytes(payload)
    with pytest.raises(OnnxInputError, match=needle) as info:
        load_onnx(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_truncated_file_is_rejected(tmp_path: Path):
    space = get_space("nb201")
    data = export_architecture(space, space.decode(NB201_BEST), build_options={"cells_per_stage": 1}).data
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OnnxInputError):
        load_onnx(path)
    with pytest.raises(OnnxInputError, match="cannot read"):
        load_onnx(tmp_path / "missing.onnx")
