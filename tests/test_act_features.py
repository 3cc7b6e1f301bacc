"""Activation features of ONNX graphs (`onnx_bench.activations`), their bench columns and the two-view head."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from onnx_bench.activations import ACT_FEATURES, activation_summary, ks_from_features, probe_batch
from onnx_bench.bench import build, nb201_jobs, read_bench, shards
from onnx_bench.export import export_bytes
from onnx_bench.io import load_onnx
from predictors.features import CORE_FEATURES, FEATURE_NAMES, feature_vector
from predictors.predictor import Predictor, TrainOptions, train_predictor
from predictors.proxies import ProxyBatch, ProxyConfig, compute_proxies
from tests.test_cli import nas


def _cnn(batch_one_reshape: bool = False) -> nn.Module:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.fc = nn.Linear(16 * 16 * 16, 10)
            self.r1, self.r2 = nn.ReLU(), nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.r2(self.c2(self.r1(self.c1(x))))
            # reshape(1, -1) bakes the batch size into the graph (the per-image fallback must handle it)
            return self.fc(h.reshape(1, -1) if batch_one_reshape else h.flatten(1))

    torch.manual_seed(0)
    return Net().eval()


def test_ks_from_features_counts_principal_components():
    rng = np.random.default_rng(0)
    rank2 = rng.normal(size=(500, 2)) @ rng.normal(size=(2, 6))  # 6 features, 2 independent directions
    assert ks_from_features(rank2.T, (0.99,)) == [2]
    iso = rng.normal(size=(5000, 4))
    assert ks_from_features(iso.T, (0.5, 0.99)) == [2, 4]  # isotropic: eta of the variance needs eta of the components
    assert ks_from_features(np.ones((3, 10)), (0.99,)) == [0]  # no variance


def test_vpca_feature_matches_the_torch_proxy_on_the_probe_batch():
    """Two implementations agree: V-PCA of the exported file in onnxruntime (numpy eigenvalues) and the torch
    proxy (hooks, torch eigenvalues) on the same probe images in eval mode."""
    model = _cnn()
    feats = activation_summary(load_onnx(export_bytes(model, (3, 32, 32)), check=False))
    batch = ProxyBatch(torch.from_numpy(probe_batch(3, 32, 32)), torch.zeros(8, dtype=torch.long), 10)
    vpca = compute_proxies(model, ["vpca"], batch, ProxyConfig(batch_size=8, train_mode=False))["vpca"]
    assert feats["act_missing"] == 0.0 and set(feats) == set(ACT_FEATURES)
    assert feats["act_vpca"] == pytest.approx(math.log1p(vpca))
    assert feats["act_sites"] == pytest.approx(math.log1p(2))  # the inputs of the two ReLUs
    assert feats["act_vpca90"] <= feats["act_vpca"] <= feats["act_vpca999"]
    assert 0.0 < feats["act_rank_share"] <= 1.0
    # A graph that bakes batch size 1 in runs image by image and gives the same statistics.
    fixed = activation_summary(load_onnx(export_bytes(_cnn(batch_one_reshape=True), (3, 32, 32)), check=False))
    assert fixed == pytest.approx(feats)
    # Dynamic height and width get the probe's own 32 x 32.
    dynamic = load_onnx(export_bytes(model, (3, 32, 32)), check=False)
    for axis in (2, 3):
        dynamic.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = f"size{axis}"
    assert activation_summary(dynamic) == pytest.approx(feats)


def test_swish_relu6_and_hardswish_networks_get_the_same_sites_in_onnx_and_torch():
    """Mobile-style activations (SiLU, ReLU6, Hardswish, LeakyReLU) are PCA sites and naswot codes alike in the
    exported file and in the torch proxies, and a squeeze-excite gate (x * sigmoid(f(x))) is not an activation."""
    from predictors.proxies.onnx_act import onnx_proxies

    class Mobile(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.convs = nn.ModuleList(nn.Conv2d(c, 8, 3, padding=1) for c in (3, 8, 8, 8))
            self.acts = nn.ModuleList([nn.SiLU(), nn.ReLU6(), nn.Hardswish(), nn.LeakyReLU(0.1)])
            self.squeeze, self.fc = nn.Conv2d(8, 8, 1), nn.Linear(8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for conv, act in zip(self.convs, self.acts, strict=True):
                x = act(conv(x))
            x = x * torch.sigmoid(self.squeeze(x.mean((2, 3), keepdim=True)))  # SE gate
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    model = Mobile().eval()
    proto = load_onnx(export_bytes(model, (3, 16, 16)), check=False)
    feats = activation_summary(proto)
    batch = ProxyBatch(torch.from_numpy(probe_batch(3, 16, 16)), torch.zeros(8, dtype=torch.long), 10)
    config = ProxyConfig(batch_size=8, train_mode=False)
    ours = compute_proxies(model, ["vpca", "naswot"], batch, config)
    assert feats["act_missing"] == 0.0 and feats["act_sites"] == pytest.approx(math.log1p(4))
    assert feats["act_vpca"] == pytest.approx(math.log1p(ours["vpca"]))
    onnx_values, _ = onnx_proxies(proto, ["vpca", "naswot"], config)
    assert onnx_values["vpca"] == ours["vpca"] and onnx_values["naswot"] == pytest.approx(ours["naswot"], rel=1e-6)


def test_features_differ_between_architectures_and_are_missing_without_images():
    from onnx_bench.export import export_architecture
    from search_spaces import get_space

    space = get_space("nb201")
    cells = ["|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"]
    cells.append("|avg_pool_3x3~0|+|none~0|skip_connect~1|+|none~0|none~1|avg_pool_3x3~2|")
    a, b = (activation_summary(load_onnx(export_architecture(space, space.decode(c)).data)) for c in cells)
    assert a["act_vpca"] > b["act_vpca"] > 0.0
    # Token ids without a Relu/Gelu and an image graph without them get the "missing" marker and zeros.
    emb = nn.Sequential(nn.Embedding(100, 8), nn.Flatten(), nn.Linear(8 * 6, 2))
    tokens = torch.zeros(1, 6, dtype=torch.long)
    text = activation_summary(load_onnx(export_bytes(emb, example=tokens), check=False))
    linear = activation_summary(load_onnx(export_bytes(nn.Sequential(nn.Flatten(), nn.Linear(48, 2)), (3, 4, 4))))
    for feats in (text, linear):
        assert feats["act_missing"] == 1.0 and all(feats[k] == 0.0 for k in ACT_FEATURES if k != "act_missing")


def test_token_models_get_vpca_from_seeded_random_ids():
    """A token model's FFN pre-activations are its PCA sites (the W-PCA paper's), on `probe_tokens` ids: the same
    count as the torch network's own pre-activations on those ids, and a real transformer-small file has one site
    per GELU."""
    from onnx_bench.activations import probe_tokens
    from onnx_bench.export import export_architecture
    from search_spaces import get_space

    class Ffn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.up, self.down = nn.Embedding(3000, 16), nn.Linear(16, 24), nn.Linear(24, 2)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.down(nn.functional.gelu(self.up(self.emb(ids)))).mean(dim=1)

    torch.manual_seed(0)
    model = Ffn().eval()
    feats = activation_summary(load_onnx(export_bytes(model, example=torch.zeros(1, 10, dtype=torch.long))))
    ids = probe_tokens(10, 3000)
    assert ids.shape == (8, 10) and ids.min() >= 1000 and ids.max() < 3000
    with torch.no_grad():
        pre = model.up(model.emb(torch.from_numpy(ids))).reshape(-1, 24).numpy()
    assert feats["act_missing"] == 0.0 and feats["act_sites"] == pytest.approx(math.log1p(1))
    assert feats["act_vpca"] == pytest.approx(math.log1p(ks_from_features(pre.T)[0]))
    space = get_space("transformer-small")
    arch = space.decode("bert4-bert3-bert2-bert1")
    real = activation_summary(load_onnx(export_architecture(space, arch).data))
    assert real["act_missing"] == 0.0 and real["act_sites"] == pytest.approx(math.log1p(4)) and real["act_vpca"] > 0


def test_feature_vector_marks_summaries_without_activation_features():
    names = list(FEATURE_NAMES)
    assert names[: len(CORE_FEATURES)] == list(CORE_FEATURES) and "act_vpca" in CORE_FEATURES
    old = feature_vector({"params": 10, "op_histogram": {"Conv": 1}})
    assert old[names.index("act_missing")] == 1.0
    new = feature_vector({"params": 10, **dict.fromkeys(ACT_FEATURES, 0.0), "act_vpca": 5.0})
    assert new[names.index("act_missing")] == 0.0 and new[names.index("act_vpca")] == 5.0


def test_bench_upgrade_adds_the_columns_of_a_fresh_build(tmp_path: Path, nb201_csv: Path):
    from nas.tables import load_nb201_table

    fresh = tmp_path / "fresh"
    build(nb201_jobs(load_nb201_table(str(nb201_csv)), limit=6), fresh, workers=1, shard_size=4)
    columns = [*ACT_FEATURES, "wl_counts", "wl_scheme", "flops"]
    expected = read_bench(fresh).set_index("arch")[columns]
    assert (expected["act_missing"] == 0.0).all() and expected["act_vpca"].nunique() > 1
    for shard in shards(fresh):  # what an older version wrote: no act_* columns, older WL hashes, flops = 2 MACs
        old = pd.read_parquet(shard).drop(columns=[*ACT_FEATURES, "wl_scheme"])
        old["wl_counts"] = "{}"
        old["macs"], old["flops"] = old["flops"], 2 * old["flops"]
        old.to_parquet(shard, index=False)
    assert "act_vpca" not in read_bench(fresh).columns
    assert read_bench(fresh)["flops"].tolist() == expected["flops"].tolist()  # an old shard reads flops = MACs
    proc = nas("bench", "upgrade", str(fresh), "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert "6 records upgraded" in " ".join(proc.stdout.split())  # rich wraps long lines
    upgraded = read_bench(fresh).set_index("arch")[columns]
    assert "macs" not in read_bench(fresh).columns
    pd.testing.assert_frame_equal(upgraded.sort_index(), expected.sort_index())
    assert len(shards(fresh)) == 2 and not list(fresh.glob(".*"))
    again = nas("bench", "upgrade", str(fresh))
    assert again.returncode == 0 and "0 records upgraded" in " ".join(again.stdout.split())
    missing = nas("bench", "upgrade", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "bench directory not found" in missing.stderr


def _synthetic(n: int) -> tuple[np.ndarray, list[dict], np.ndarray]:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    vpca = rng.uniform(3, 7, n)
    summaries = [
        {"params": 1000, "op_histogram": {"Conv": 2}, **dict.fromkeys(ACT_FEATURES, 0.0), "act_vpca": float(v)}
        for v in vpca
    ]
    return emb, summaries, vpca + 0.1 * emb[:, 0]


def test_two_view_head_weights_and_core_inputs(tmp_path: Path):
    emb, summaries, y = _synthetic(200)
    both = train_predictor(emb[:150], summaries[:150], y[:150], TrainOptions(epochs=30, ensemble=2, core_weight=0.5))
    assert len(both.head.members) == 2 and len(both.head.core) == 2
    assert both.head.core_inputs == 8 + len(CORE_FEATURES)
    from predictors.metrics import kendall_tau

    assert kendall_tau(both.score_embeddings(emb[150:], summaries[150:]), y[150:]) > 0.6
    back = Predictor.load(both.save(tmp_path / "p.safetensors"))
    np.testing.assert_allclose(back.score_embeddings(emb, summaries), both.score_embeddings(emb, summaries))
    assert back.head.core_weight == 0.5 and len(back.head.core) == 2
    # A core-only head never reads the WL columns; a full-only head does.
    core = train_predictor(emb[:150], summaries[:150], y[:150], TrainOptions(epochs=5, core_weight=1.0))
    full = train_predictor(emb[:150], summaries[:150], y[:150], TrainOptions(epochs=5, core_weight=0.0))
    assert len(core.head.members) == 0 and len(full.head.core) == 0
    wl = [{**s, "wl_counts": {"3": 50, "7": 9}} for s in summaries[150:]]
    np.testing.assert_allclose(core.score_embeddings(emb[150:], wl), core.score_embeddings(emb[150:], summaries[150:]))
    assert not np.allclose(full.score_embeddings(emb[150:], wl), full.score_embeddings(emb[150:], summaries[150:]))
    with pytest.raises(Exception, match="core_weight"):
        TrainOptions(core_weight=1.5)
