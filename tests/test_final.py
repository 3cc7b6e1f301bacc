"""Own data in, a trained and exported model out: spaces built for any image size and class count, `nas train`
(checkpoints, resume, ONNX parity, int8), and the whole path on a folder of PNG images."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml

from nas.train import TrainConfig, Trainer
from nas_ground.data import ImageData, channel_stats, cutout, load_cifar10
from onnx_bench.export import export_onnx
from search_spaces import get_space
from search_spaces.base import arch_digest, example_input
from tests.test_cli import assert_one_line_error, nas


def _write_png_folder(root: Path, data: ImageData, classes: int, per_class: int, side: int) -> Path:
    """CIFAR-10 training images of the first ``classes`` classes, re-saved as ``side`` x ``side`` PNG files in one
    sub-folder per class (named by the CIFAR class)."""
    from PIL import Image

    for label in range(classes):
        folder = root / data.classes[label]
        folder.mkdir(parents=True)
        rows = np.flatnonzero(data.train_y == label)[:per_class]
        for i, row in enumerate(rows):
            image = Image.fromarray(np.transpose(data.train_x[row], (1, 2, 0)))
            image.resize((side, side), Image.Resampling.BILINEAR).save(folder / f"{i:04d}.png")
    return root


@pytest.mark.parametrize("name", ["nasnet", "darts", "nb201", "nbmacro", "bignas"])
def test_every_image_space_builds_for_64px_images_with_7_classes(name: str, tmp_path: Path) -> None:
    space = get_space(name)
    space.input_shape = (3, 64, 64)  # what the train evaluator sets from the data
    arch = space.sample(random.Random(1))
    small = {"channels": 4, "layers": 1} if name in ("nasnet", "darts") else {}
    small |= {"channels": 4, "cells_per_stage": 1} if name == "nb201" else {}
    model = space.build(arch, num_classes=7, **small).eval()
    x = example_input(space, 2)
    assert x.shape == (2, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (2, 7)
    path = export_onnx(model, tmp_path / "m.onnx", example_input(space), parity=True)
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 64, 64]
    assert proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 7


def test_nasnet_auxiliary_head_trains_on_48px_images() -> None:
    space = get_space("nasnet")
    model = space.build(space.sample(random.Random(0)), channels=4, layers=1, auxiliary=True, num_classes=5).train()
    logits, aux = model(torch.randn(2, 3, 48, 48))
    assert logits.shape == aux.shape == (2, 5)


def test_cutout_zeroes_one_square_per_image() -> None:
    x = torch.ones(6, 3, 32, 32)
    out = cutout(x, 16, torch.Generator().manual_seed(0))
    holes = (out[:, 0] == 0).sum(dim=(1, 2))
    assert (holes > 0).all() and (holes <= 256).all()  # clipped at the border: at most 16 x 16
    assert ((out == 0).all(dim=1) == (out[:, :1] == 0).squeeze(1)).all()  # the same square in every channel
    again = cutout(x, 16, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def _tiny_data(n: int = 96, classes: int = 3, side: int = 16) -> ImageData:
    rng = np.random.default_rng(0)
    y = np.arange(n) % classes
    x = rng.integers(0, 60, (n, 3, side, side), dtype=np.uint8)
    x[np.arange(n), y % 3] += 150  # the class is the bright channel: learnable in a few steps
    test_y = np.arange(30) % classes
    test_x = rng.integers(0, 60, (30, 3, side, side), dtype=np.uint8)
    test_x[np.arange(30), test_y % 3] += 150
    mean, std = channel_stats(x)
    return ImageData(x, y.astype(np.int64), test_x, test_y.astype(np.int64), ("a", "b", "c"), "tiny", mean, std)


def test_trainer_resumed_from_its_state_ends_where_an_uninterrupted_one_does() -> None:
    data = _tiny_data()
    cfg = TrainConfig(epochs=3, train_images=80, val_images=16, batch_size=16, cutout=4, ema=0.9, device="cpu")
    space = get_space("nb201")
    arch = space.sample(random.Random(0))

    def fresh() -> Trainer:
        torch.manual_seed(0)
        return Trainer(space.build(arch, channels=4, cells_per_stage=1, num_classes=3), data, cfg)

    straight = fresh()
    for _ in range(3):
        straight.run_epoch()
    first = fresh()
    first.run_epoch()
    state = first.state_dict()
    resumed = fresh()
    resumed.load_state_dict(state)
    assert resumed.epoch == 1
    for _ in range(2):
        resumed.run_epoch()
    for a, b in zip(
        straight.eval_model().state_dict().values(), resumed.eval_model().state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b)
    assert straight.last_loss == resumed.last_loss


def test_trainer_normalises_with_the_data_sets_own_statistics() -> None:
    data = _tiny_data()
    seen: list[torch.Tensor] = []

    class Probe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.detach())
            return self.fc(x.mean(dim=(2, 3)))

    cfg = TrainConfig(train_images=96, val_images=1, batch_size=96, augment=False, device="cpu")
    trainer = Trainer(Probe(), data, cfg)
    trainer.run_epoch()
    batch = seen[0]
    # Standardised with the data's own mean and std: each channel ~ mean 0, std 1 over the training images.
    np.testing.assert_allclose(batch.mean(dim=(0, 2, 3)).numpy(), 0.0, atol=0.1)
    np.testing.assert_allclose(batch.std(dim=(0, 2, 3)).numpy(), 1.0, atol=0.1)


def test_nas_train_errors_are_one_line(tmp_path: Path) -> None:
    assert_one_line_error(nas("train"), "give RUN_DIR --member K, or --space S --arch A")
    assert_one_line_error(nas("train", str(tmp_path)), "with RUN_DIR give --member K")
    assert_one_line_error(nas("train", str(tmp_path), "--member", "3"), "holds no finished search")
    assert_one_line_error(
        nas("train", "--space", "nbmacro", "--arch", "22212220", "--cells", "2"), "--cells applies to"
    )
    assert_one_line_error(nas("train", "--space", "nb201", "--arch", "nonsense"), "nonsense")


@pytest.fixture(scope="module")
def folder_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The user's path on their own data: a folder of 48x48 PNG images in 5 classes (CIFAR-10 images re-saved),
    a 6-trial NASNet search on it, then `nas train` of its best member for 3 epochs with an int8 export."""
    root = tmp_path_factory.mktemp("own-data")
    folder = _write_png_folder(root / "pets", load_cifar10(data_dir, download=False), classes=5, per_class=32, side=48)
    run = root / "run"
    env = {"NAS_CACHE_DIR": str(root / "cache")}
    args = ["--space", "nasnet", "--dataset", f"folder:{folder}", "--trials", "6", "--run-dir", str(run)]
    proc = nas("search", *args, "--channels", "4", "--train-images", "128", "--val-images", "32", env=env)
    assert proc.returncode == 0, proc.stderr
    members = json.loads((run / "pareto.json").read_text())["members"]
    best = max(members, key=lambda m: m["metrics"]["accuracy"])
    train_args = ["train", str(run), "--member", str(best["trial"]), "--epochs", "3", "--batch-size", "32", "--int8"]
    proc = nas(*train_args, "--val-images", "32", "--device", "cpu", env=env)
    assert proc.returncode == 0, proc.stderr
    return {"folder": folder, "run": run}


def test_a_folder_data_set_searches_with_its_classes_size_and_statistics(folder_run: dict[str, Path]) -> None:
    cfg = yaml.safe_load((folder_run["run"] / "config.yaml").read_text())
    assert cfg["dataset"] == f"folder:{folder_run['folder']}"
    data = cfg["data"]
    assert data["num_classes"] == 5 and data["input_shape"] == [3, 48, 48]
    assert data["classes"] == ["airplane", "automobile", "bird", "cat", "deer"]
    assert all(0.2 < m < 0.8 for m in data["mean"]) and all(0.1 < s < 0.5 for s in data["std"])
    members = json.loads((folder_run["run"] / "pareto.json").read_text())["members"]
    for m in members:
        proto = onnx.load(folder_run["run"] / m["onnx"])
        onnx.checker.check_model(proto)
        assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 48, 48]
        assert proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 5
        assert 0.0 <= m["metrics"]["test_accuracy"] <= 100.0


def test_nas_train_writes_a_checked_float_and_int8_model_with_metrics(folder_run: dict[str, Path]) -> None:
    final = folder_run["run"] / "final"
    metrics = json.loads((final / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and len(metrics["history"]) == 3
    assert metrics["data"]["num_classes"] == 5
    assert metrics["onnx_parity_max_abs"] < 1e-4
    assert 0.0 <= metrics["test_accuracy"] <= 100.0 and metrics["images_per_s"] > 0
    for name in ("model.onnx", "model.int8.onnx"):
        onnx.checker.check_model(onnx.load(final / name))
    q = metrics["int8"]
    ops = {n.op_type for n in onnx.load(final / "model.int8.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert q["int8_bytes"] > 0 and q["float_bytes"] > 0  # at C=4 the QDQ graph outweighs its smaller weights
    assert q["accuracy_drop"] == pytest.approx(q["float_onnx_test_accuracy"] - q["int8_test_accuracy"])
    assert q["float_latency_ms"] > 0 and q["int8_latency_ms"] > 0
    # The float ONNX file classifies the test set as the torch model does.
    assert abs(q["float_onnx_test_accuracy"] - metrics["test_accuracy"]) <= 100.0 / metrics["test_images"] + 1e-9
    assert not list(final.glob(".*.tmp"))


def test_nas_train_resumes_and_refuses_another_recipe(folder_run: dict[str, Path]) -> None:
    run = folder_run["run"]
    members = json.loads((run / "pareto.json").read_text())["members"]
    best = max(members, key=lambda m: m["metrics"]["accuracy"])
    metrics_before = (run / "final" / "metrics.json").read_text()
    common = ["train", str(run), "--member", arch_digest(best["arch"])[:8], "--batch-size", "32", "--val-images", "32"]
    env = {"NAS_CACHE_DIR": str(run.parent / "cache")}
    again = nas(*common, "--epochs", "3", "--int8", "--device", "cpu", env=env)
    assert again.returncode == 0, again.stderr
    assert "resuming after epoch 3" in again.stderr
    assert (run / "final" / "metrics.json").read_text() == metrics_before  # nothing redone
    other = nas(*common, "--epochs", "3", "--lr", "0.2", "--device", "cpu", env=env)
    assert_one_line_error(other, "holds the training of another network or recipe")


def test_nas_show_prints_one_line_per_member_of_the_folder_run(folder_run: dict[str, Path]) -> None:
    proc = nas("show", str(folder_run["run"]))
    assert proc.returncode == 0, proc.stderr
    members = json.loads((folder_run["run"] / "pareto.json").read_text())["members"]
    for m in members:
        assert arch_digest(m["arch"])[:8] in proc.stdout
