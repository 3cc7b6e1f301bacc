"""Shipping a trained NB201 classifier as ONNX (onnx_bench.deploy): int8 file, accuracy, latency, parity, errors."""

from __future__ import annotations

import logging
import math
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from nas_ground.errors import UserInputError
from onnx_bench import deploy
from onnx_bench.deploy import onnx_accuracy, onnx_latency_ms, onnx_parity, quantize_int8
from onnx_bench.export import export_onnx
from search_spaces import get_space

# Class k: the 16x16 patch with top-left corner CORNERS[k] is brighter than the rest of a noise image.
CORNERS = ((0, 0), (0, 16), (16, 0), (16, 16), (8, 8))
CHANCE = 100.0 / len(CORNERS)


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` noise images (N, 3, 32, 32) float32 with labels: the position of the one brighter patch."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CORNERS), n)
    x = rng.normal(0.0, 1.0, (n, 3, 32, 32)).astype(np.float32)
    for image, label in zip(x, y, strict=True):
        r, c = CORNERS[label]
        image[:, r : r + 16, c : c + 16] += 0.5
    return x, y


@dataclass(frozen=True)
class Deployed:
    net: nn.Module
    folder: Path
    float_path: Path  # batch dim fixed at 1 (onnx_bench.export)
    dynamic_path: Path  # batch dim free
    int8_path: Path
    x: np.ndarray  # held-out images
    y: np.ndarray
    calibration: np.ndarray
    torch_accuracy: float


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Deployed:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convs train fastest on one thread
    try:
        torch.manual_seed(0)
        space = get_space("nb201")
        net = space.build(space.sample(random.Random(0)), channels=8, cells_per_stage=1, num_classes=len(CORNERS))
        x_train, y_train = _images(1024, seed=0)
        images, labels = torch.from_numpy(x_train), torch.from_numpy(y_train)
        optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
        net.train()
        for batch in torch.randperm(len(images)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(images[batch]), labels[batch]).backward()
            optimizer.step()
        net.eval()
        x, y = _images(500, seed=1)
        with torch.no_grad():
            torch_accuracy = 100.0 * float(np.mean(net(torch.from_numpy(x)).argmax(1).numpy() == y))
        folder = tmp_path_factory.mktemp("deploy")
        float_path = export_onnx(net, folder / "float.onnx", (3, 32, 32))
        dynamic_path = folder / "dynamic.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
            torch.onnx.export(
                net,
                (torch.from_numpy(x[:1]),),
                str(dynamic_path),
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        calibration = x_train[:64]
        int8_path = quantize_int8(float_path, folder / "int8.onnx", calibration)
        return Deployed(net, folder, float_path, dynamic_path, int8_path, x, y, calibration, torch_accuracy)
    finally:
        torch.set_num_threads(threads)


def test_int8_file_is_a_checked_qdq_model_smaller_than_the_float_one(deployed: Deployed) -> None:
    model = onnx.load_model(str(deployed.int8_path))
    onnx.checker.check_model(model)
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert deployed.int8_path.stat().st_size < deployed.float_path.stat().st_size


def test_int8_accuracy_is_within_a_few_points_of_float_and_far_above_chance(deployed: Deployed) -> None:
    float_accuracy = onnx_accuracy(deployed.float_path, deployed.x, deployed.y)
    int8_accuracy = onnx_accuracy(deployed.int8_path, deployed.x, deployed.y)
    assert float_accuracy > CHANCE + 50
    assert abs(int8_accuracy - float_accuracy) <= 3.0


def test_float_onnx_accuracy_equals_torch_for_fixed_and_dynamic_batch(deployed: Deployed) -> None:
    fixed = onnx_accuracy(deployed.float_path, deployed.x, deployed.y)  # run one image at a time
    dynamic = onnx_accuracy(deployed.dynamic_path, deployed.x, deployed.y, batch_size=7)  # last batch is partial
    assert fixed == dynamic == deployed.torch_accuracy
    assert onnx_accuracy(deployed.float_path, deployed.x, (deployed.y + 1) % len(CORNERS)) < CHANCE


def test_accuracy_pads_the_last_batch_of_a_model_with_a_fixed_batch_size(deployed: Deployed, tmp_path: Path) -> None:
    path = export_onnx(deployed.net, tmp_path / "batch3.onnx", torch.from_numpy(deployed.x[:3]))
    assert len(deployed.x) % 3 != 0
    assert onnx_accuracy(path, deployed.x, deployed.y) == deployed.torch_accuracy


def test_parity_is_tiny_for_faithful_exports_and_not_for_int8(deployed: Deployed) -> None:
    example = torch.from_numpy(deployed.x[:1])
    assert onnx_parity(deployed.float_path, deployed.net, example) < 1e-4
    assert onnx_parity(deployed.dynamic_path, deployed.net, torch.from_numpy(deployed.x[:4])) < 1e-4
    assert onnx_parity(deployed.int8_path, deployed.net, example) > 1e-4


def test_parity_uses_eval_mode_and_the_first_of_a_tuple_output(deployed: Deployed) -> None:
    class WithFeatures(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.net(x), x.mean()

    wrapped = WithFeatures(deployed.net).train()
    examples = torch.from_numpy(deployed.x[:4])  # batch statistics differ from running ones in train mode
    assert onnx_parity(deployed.dynamic_path, wrapped, examples) < 1e-4
    assert wrapped.training and deployed.net.training
    deployed.net.eval()


def test_latency_is_a_positive_finite_number_of_milliseconds(deployed: Deployed, tmp_path: Path) -> None:
    for path in (deployed.float_path, deployed.int8_path):
        latency = onnx_latency_ms(path, deployed.x[:1], warmup=2, repeats=5)
        assert 0.0 < latency < 1000.0 and math.isfinite(latency)
    batch3 = export_onnx(deployed.net, tmp_path / "batch3.onnx", torch.from_numpy(deployed.x[:3]))
    assert math.isfinite(onnx_latency_ms(batch3, deployed.x[:1], warmup=0, repeats=2))  # one image padded to 3
    with pytest.raises(UserInputError, match="repeats=0"):
        onnx_latency_ms(deployed.float_path, deployed.x[:1], repeats=0)


def test_latency_is_the_median_of_the_timed_runs(deployed: Deployed, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 0.001, 1.0, 1.002, 2.0, 2.1])  # runs of 1, 2 and 100 ms
    monkeypatch.setattr(deploy.time, "perf_counter", lambda: next(clock))
    assert onnx_latency_ms(deployed.float_path, deployed.x[:1], warmup=0, repeats=3) == pytest.approx(2.0)


def test_quantize_leaves_only_finished_files_in_the_output_folder(deployed: Deployed) -> None:
    assert sorted(p.name for p in deployed.folder.iterdir()) == ["dynamic.onnx", "float.onnx", "int8.onnx"]


def test_quantize_falls_back_to_the_raw_model_when_preprocessing_fails(
    deployed: Deployed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("symbolic shape inference failed")

    monkeypatch.setattr(deploy, "quant_pre_process", broken)
    with caplog.at_level(logging.WARNING, logger="onnx_bench.deploy"):
        # 40 images: one full dynamic calibration batch and one partial one.
        out = quantize_int8(deployed.dynamic_path, tmp_path / "int8.onnx", deployed.calibration[:40], per_channel=False)
    assert "quantising the raw model" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx"]
    float_accuracy = onnx_accuracy(deployed.dynamic_path, deployed.x, deployed.y)
    assert abs(onnx_accuracy(out, deployed.x, deployed.y) - float_accuracy) <= 3.0


def test_inputs_of_the_wrong_shape_or_length_raise_user_input_error(deployed: Deployed, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match=r"\(N, 3, 32, 32\)"):
        quantize_int8(deployed.float_path, tmp_path / "int8.onnx", deployed.calibration[:, :, :16, :16])
    assert not any(tmp_path.iterdir())
    with pytest.raises(UserInputError, match="500 images but 499 labels"):
        onnx_accuracy(deployed.float_path, deployed.x, deployed.y[:-1])
    with pytest.raises(UserInputError, match="holds 4 images; the model takes batches of 1"):
        onnx_parity(deployed.float_path, deployed.net, torch.from_numpy(deployed.x[:4]))


CALLS: dict[str, Callable[[Path, Deployed], object]] = {
    "quantize_int8": lambda path, d: quantize_int8(path, path.with_name("out.onnx"), d.calibration),
    "onnx_accuracy": lambda path, d: onnx_accuracy(path, d.x, d.y),
    "onnx_latency_ms": lambda path, d: onnx_latency_ms(path, d.x[:1]),
    "onnx_parity": lambda path, d: onnx_parity(path, d.net, torch.from_numpy(d.x[:1])),
}


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("content", [None, b"not a protobuf \xff\xfe", b""])
def test_missing_or_garbage_file_raises_user_input_error_naming_it(
    deployed: Deployed, tmp_path: Path, call: str, content: bytes | None
) -> None:
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserInputError) as caught:
        CALLS[call](path, deployed)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    assert not path.with_name("out.onnx").exists()
