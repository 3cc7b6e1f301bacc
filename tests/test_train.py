"""Training loop and `train` evaluator: deterministic on CPU, divergence fails the trial, not the search."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nas.evaluators import TrialFailed, make_evaluator
from nas.search import Search, SearchConfig
from nas.train import TrainConfig, train_model, validation_split
from nas_ground.cost import count_flops, count_params
from nas_ground.data import load_cifar10, normalize
from search_spaces import get_space

TINY = dict(epochs=1, train_images=128, val_images=64, batch_size=32, channels=4, layers=1)


def test_training_is_deterministic_on_cpu(data_dir: Path):
    space = get_space("nasnet")
    arch = space.sample(random.Random(5))
    data = load_cifar10(data_dir)
    cfg = TrainConfig(epochs=1, train_images=96, val_images=64, batch_size=32, seed=7, device="cpu")
    results, weights = [], []
    for _ in range(2):
        torch.manual_seed(0)
        model = space.build(arch, channels=4, layers=1)
        results.append(train_model(model, data, cfg))
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert results[0].val_accuracy == results[1].val_accuracy
    assert results[0].train_loss == results[1].train_loss
    assert torch.equal(weights[0], weights[1])
    torch.manual_seed(0)
    other = train_model(space.build(arch, channels=4, layers=1), data, TrainConfig(**{**cfg.__dict__, "seed": 8}))
    assert other.train_loss != results[0].train_loss


def test_validation_split_is_disjoint_from_training(data_dir: Path):
    data = load_cifar10(data_dir)
    train_idx, val_idx = validation_split(data, TrainConfig(train_images=40000, val_images=10000))
    assert len(set(train_idx) | set(val_idx)) == 50000


def test_train_evaluator_reports_metrics(data_dir: Path):
    space = get_space("nb201")
    evaluator = make_evaluator(
        "train", space, data_dir=str(data_dir), cells_per_stage=1, **{k: v for k, v in TINY.items() if k != "layers"}
    )
    arch = space.decode(
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"
    )
    metrics = evaluator.evaluate(arch)
    model = space.build(arch, channels=4, cells_per_stage=1)
    assert metrics["params"] == count_params(model)
    assert metrics["flops"] == count_flops(model, (3, 32, 32)) > metrics["params"]
    assert 0.0 <= metrics["accuracy"] <= 100.0
    assert metrics["latency_ms"] > 0


def test_diverging_trial_fails_with_reason_and_search_goes_on(tmp_path: Path, data_dir: Path):
    space = get_space("nasnet")
    evaluator = make_evaluator("train", space, data_dir=str(data_dir), lr=1e12, grad_clip=1e12, **TINY)
    with pytest.raises(TrialFailed, match="diverged"):
        evaluator.evaluate(space.sample(random.Random(0)))
    cfg = SearchConfig(
        space="nasnet",
        evaluator="train",
        trials=2,
        sampler="random",
        run_dir=str(tmp_path / "run"),
        data_dir=str(data_dir),
        evaluator_options={**TINY, "lr": 1e12, "grad_clip": 1e12},
    )
    result = Search(cfg).run()
    assert result.failed == 2 and result.completed == 0 and result.pareto == []
    with open(tmp_path / "run" / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["state"] for r in rows] == ["FAIL", "FAIL"]
    assert all(r["fail_reason"].startswith("diverged") for r in rows)


def test_auxiliary_head_and_drop_path_train(data_dir: Path):
    space = get_space("nasnet")
    evaluator = make_evaluator(
        "train", space, data_dir=str(data_dir), auxiliary=True, drop_path=0.2, **{**TINY, "epochs": 2}
    )
    metrics = evaluator.evaluate(space.sample(random.Random(2)))
    plain = make_evaluator("train", space, data_dir=str(data_dir), **TINY).evaluate(space.sample(random.Random(2)))
    # The auxiliary head trains but is not part of the inference network the objectives measure.
    assert metrics["params"] == plain["params"]
    assert metrics["flops"] == plain["flops"]
    model = space.build(space.sample(random.Random(2)), auxiliary=True, channels=4, layers=1)
    assert sum(p.numel() for p in model.parameters()) > metrics["params"]
    assert metrics["train_loss"] > 0


def test_a_short_training_run_learns(data_dir: Path):
    """Two epochs on 2,000 images: the loss on the training images falls well below its starting value and the
    accuracy on held-out validation images is far above chance (10%)."""
    space = get_space("nb201")
    arch = space.decode(
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    )
    data = load_cifar10(data_dir)
    cfg = TrainConfig(epochs=2, train_images=2000, val_images=1000, batch_size=64, lr=0.1, seed=0, device="cpu")
    torch.manual_seed(0)
    model = space.build(arch, channels=8, cells_per_stage=1)
    train_idx, _ = validation_split(data, cfg)
    x, y = normalize(data.train_x[train_idx[:500]]), torch.as_tensor(data.train_y[train_idx[:500]]).long()

    def loss_on_training_images() -> float:
        model.eval()
        with torch.inference_mode():
            return float(F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y))

    before = loss_on_training_images()
    result = train_model(model, data, cfg)
    after = loss_on_training_images()
    assert before > 2.2  # an untrained 10-way classifier: about ln(10)
    assert after < before - 0.5, (before, after)
    assert result.val_accuracy > 20.0, result  # held-out images; chance is 10% +- 1% on 1,000 of them
