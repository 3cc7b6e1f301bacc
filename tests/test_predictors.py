"""The zero-shot predictor: metrics, ranking loss, the predictor file, the encoder and its cache, scoring."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from nas_ground.errors import UserInputError
from predictors.encoder import EmbeddingCache, Encoder
from predictors.features import FEATURE_NAMES, UNIVERSAL_FEATURES, feature_vector
from predictors.metrics import all_metrics, kendall_tau, mae, precision_at_k, spearman_rho
from predictors.predictor import Predictor, TrainOptions, ranking_loss, train_predictor


def test_metrics_on_known_orders():
    true = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert kendall_tau(true, true) == pytest.approx(1.0)
    assert kendall_tau(true[::-1], true) == pytest.approx(-1.0)
    assert spearman_rho([10, 20, 30, 50, 40], true) == pytest.approx(0.9)
    # One discordant pair out of 10: tau = (9 - 1) / 10.
    assert kendall_tau([1, 2, 3, 5, 4], true) == pytest.approx(0.8)
    assert precision_at_k([5, 4, 0, 0, 0], true, 2) == 0.0  # predicted top-2 are the true bottom-2
    assert precision_at_k([0, 0, 0, 9, 8], true, 2) == 1.0
    assert mae([1, 2, 3], [2, 2, 5]) == pytest.approx(1.0)
    assert math.isnan(kendall_tau([1.0], [2.0]))
    figures = all_metrics([1, 2, float("nan"), 4], [1, 2, 3, 4], ks=(2,))
    assert figures["n"] == 3 and figures["kendall_tau"] == pytest.approx(1.0)  # NaN rows dropped


def test_ranking_loss_counts_only_misordered_pairs():
    targets = torch.tensor([0.0, 1.0, 2.0])
    good = torch.tensor([0.0, 1.0, 2.0])  # every gap >= margin
    assert ranking_loss(good, targets, margin=0.1).item() == 0.0
    bad = torch.tensor([2.0, 1.0, 0.0])
    assert ranking_loss(bad, targets, margin=0.1).item() > 1.0
    ties = torch.tensor([1.0, 1.0])
    assert ranking_loss(torch.tensor([0.0, 5.0]), ties, margin=0.1).item() == 0.0  # equal targets: no pair
    # Pairs across groups (different spaces or budgets) are not compared.
    assert ranking_loss(bad, targets, margin=0.1, groups=torch.tensor([0, 1, 2])).item() == 0.0
    assert ranking_loss(bad, targets, margin=0.1, groups=torch.tensor([0, 0, 1])).item() > 0.0


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, list[dict], np.ndarray]:
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, 16)).astype(np.float32)
    summaries = [
        {
            "params": float(p),
            "flops": float(p) * 100,
            "nodes": 50,
            "depth": 20,
            "peak_activation": 1000,
            "op_histogram": {"Conv": int(c), "Relu": 5},
        }
        for p, c in zip(rng.integers(1_000, 1_000_000, n), rng.integers(1, 20, n), strict=True)
    ]
    # The target depends on the embedding and on the params: both inputs must be used.
    y = emb[:, 0] + np.log([s["params"] for s in summaries]) / 4
    return emb, summaries, y


def test_trained_head_ranks_unseen_samples_and_is_seeded(tmp_path: Path):
    emb, summaries, y = _synthetic(400, 0)
    opts = TrainOptions(epochs=60, seed=3)
    p1 = train_predictor(emb[:300], summaries[:300], y[:300], opts)
    p2 = train_predictor(emb[:300], summaries[:300], y[:300], opts)
    held = p1.score_embeddings(emb[300:], summaries[300:])
    assert kendall_tau(held, y[300:]) > 0.6
    np.testing.assert_array_equal(held, p2.score_embeddings(emb[300:], summaries[300:]))
    without = train_predictor(emb[:300], summaries[:300], y[:300], TrainOptions(epochs=60, use_features=False))
    assert without.head.inputs == 16 and p1.head.inputs == 16 + len(FEATURE_NAMES)
    only_graph = train_predictor(emb[:300], summaries[:300], y[:300], TrainOptions(epochs=5, use_embedding=False))
    assert only_graph.head.inputs == len(FEATURE_NAMES)
    mse = train_predictor(emb[:300], summaries[:300], y[:300], TrainOptions(epochs=60, loss="mse"))
    assert mae(mse.score_embeddings(emb[300:], summaries[300:]), y[300:]) < 0.5 * np.abs(y - y.mean()).mean()


def test_universal_view_reads_only_scale_and_activation_features(tmp_path: Path):
    emb, summaries, y = _synthetic(300, 1)
    opts = TrainOptions(epochs=30, use_embedding=False, core_weight=1.0, core_view="universal", hidden=(16,))
    pred = train_predictor(emb, summaries, y, opts)
    assert pred.head.core_inputs == len(UNIVERSAL_FEATURES) and len(pred.head.members) == 0
    assert len(pred.meta["feature_low"]) == len(UNIVERSAL_FEATURES)  # novelty judges only what the head reads
    assert pred.novelty([{**summaries[0], "op_histogram": {"Einsum": 3}}]) == [("", 0.0)]
    other_ops = [{**s, "op_histogram": {"MatMul": 9, "Gelu": 2}, "wl_counts": {"3": 40}} for s in summaries[:20]]
    np.testing.assert_allclose(
        pred.score_embeddings(emb[:20], other_ops), pred.score_embeddings(emb[:20], summaries[:20]), rtol=1e-6
    )
    linear = train_predictor(emb, summaries, y, TrainOptions(epochs=30, use_embedding=False, hidden=()))
    assert isinstance(linear.head.core[0][0], torch.nn.Linear) and len(linear.head.core[0]) == 1
    with pytest.raises(UserInputError, match="'wide'"):
        TrainOptions(core_view="wide")


def test_monotone_head_never_scores_a_larger_network_lower(tmp_path: Path):
    emb, summaries, _ = _synthetic(300, 3)
    y = -np.log([s["params"] for s in summaries])  # a family where smaller is better: the head cannot learn it
    opts = TrainOptions(epochs=30, use_embedding=False, core_weight=1.0, core_view="universal", monotone=True)
    pred = Predictor.load(train_predictor(emb, summaries, y, opts).save(tmp_path / "m.safetensors"))
    assert pred.head.monotone
    grown = [{**s, "params": s["params"] * 10, "flops": s["flops"] * 10} for s in summaries[:50]]
    before, after = pred.score_embeddings(emb[:50], summaries[:50]), pred.score_embeddings(emb[:50], grown)
    assert (after >= before - 1e-9).all()
    free = train_predictor(emb, summaries, y, TrainOptions(epochs=30, use_embedding=False, core_weight=1.0))
    assert (free.score_embeddings(emb[:50], grown) < free.score_embeddings(emb[:50], summaries[:50])).mean() > 0.9


def test_spread_and_novelty_survive_the_file(tmp_path: Path):
    emb, summaries, y = _synthetic(300, 2)
    pred = train_predictor(emb, summaries, y, TrainOptions(epochs=20, ensemble=3))
    loaded = Predictor.load(pred.save(tmp_path / "p.safetensors"))
    spread = loaded.spread(emb[:5], summaries[:5])
    assert spread.shape == (5,) and (spread > 0).all()  # six MLPs never agree exactly
    np.testing.assert_allclose(spread, pred.spread(emb[:5], summaries[:5]), rtol=1e-5)
    inside = loaded.novelty(summaries[:5])
    assert all(distance == 0.0 and name == "" for name, distance in inside)
    huge = [{**summaries[0], "params": 1e12, "flops": 1e14}]
    ((name, distance),) = loaded.novelty(huge)
    assert name in ("log_params", "log_flops") and distance > 3.0


def test_predictor_file_round_trip_and_refusals(tmp_path: Path):
    emb, summaries, y = _synthetic(50, 1)
    opts = TrainOptions(epochs=5, ensemble=3)
    pred = train_predictor(emb, summaries, y, opts, meta={"training_data": {"records": 50}})
    assert len(pred.head.members) == 3
    path = pred.save(tmp_path / "p.safetensors")
    back = Predictor.load(path)
    np.testing.assert_allclose(back.score_embeddings(emb, summaries), pred.score_embeddings(emb, summaries))
    assert back.meta["training_data"] == {"records": 50} and back.text_format == "compact"
    assert len(back.head.members) == 3 and back.meta["train_options"]["ensemble"] == 3
    assert not list(tmp_path.glob(".*")), "no temp file left"
    # A pickle (which could run code when loaded) is refused as not a predictor, and nothing is executed.
    marker = tmp_path / "executed"
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(_Boom(str(marker))))
    with pytest.raises(UserInputError, match="not a predictor file"):
        Predictor.load(evil)
    assert not marker.exists()
    with pytest.raises(UserInputError, match="not found"):
        Predictor.load(tmp_path / "missing.safetensors")
    with pytest.raises(UserInputError, match="unknown loss"):
        TrainOptions(loss="hinge")


class _Boom:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # pragma: no cover - must never run
        return (Path(self.path).touch, ())


def test_feature_vector_is_space_agnostic():
    vec = feature_vector(
        {
            "params": 10,
            "flops": 20,
            "nodes": 3,
            "depth": 2,
            "peak_activation": 5,
            "op_histogram": '{"Conv": 1, "MyCustomOp": 1, "Constant": 7}',
        }
    )
    names = list(FEATURE_NAMES)
    assert vec.shape == (len(names),)
    assert vec[names.index("op_Conv")] == pytest.approx(0.5) and vec[names.index("op_other")] == pytest.approx(0.5)
    assert np.isfinite(feature_vector({})).all()


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Encoder:
    return Encoder(cache=tmp_path_factory.mktemp("cache") / "emb.sqlite")


def test_encoder_pools_long_texts_over_windows_and_caches(encoder: Encoder):
    short = "Conv k3 c16 Relu"
    long = " ".join(f"Conv{i} k3 c{16 * (i % 7 + 1)} Relu Add" for i in range(300))
    pieces = encoder.windows(long)
    assert len(pieces) > 2 and all(n <= encoder.window for _, n in pieces)
    assert sum(n for _, n in pieces) == len(encoder.model.tokenizer.tokenize(long))  # nothing dropped
    vecs = encoder.encode([short, long, short])
    assert vecs.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vecs[0], vecs[2])
    # The pooled vector is the token-weighted mean of the window vectors.
    win = encoder.model.encode([p for p, _ in pieces], convert_to_numpy=True)
    pooled = sum(n * v for (_, n), v in zip(pieces, win, strict=True))
    np.testing.assert_allclose(vecs[1], pooled / np.linalg.norm(pooled), atol=1e-5)
    # The tail of a long text matters (no silent truncation).
    other = encoder.encode([long + " Softmax Sigmoid Gemm" * 50])[0]
    assert np.abs(other - vecs[1]).max() > 1e-3
    before = dict(encoder.stats)
    again = encoder.encode([long, short])
    assert encoder.stats["encoded"] == before["encoded"] and encoder.stats["cached"] == before["cached"] + 2
    np.testing.assert_array_equal(again[0], vecs[1])


def test_embedding_cache_persists_across_instances(tmp_path: Path):
    path = tmp_path / "c.sqlite"
    EmbeddingCache(path).put_many({"k": np.arange(3, dtype=np.float32)})
    got = EmbeddingCache(path).get_many(["k", "missing"])
    assert list(got) == ["k"] and got["k"].tolist() == [0.0, 1.0, 2.0]
    assert EmbeddingCache(None).get_many(["k"]) == {}


def _families(shared: bool, n: int = 120) -> tuple[np.ndarray, list[dict], np.ndarray, np.ndarray]:
    """Four families whose accuracy rises with log-params; beyond that, the same function of the embedding in
    every family (``shared``) or one of its own per family (nothing to transfer)."""
    emb, summaries, y, groups = [], [], [], []
    for k in range(4):
        e, s, _ = _synthetic(n, 10 + k)
        quirk = e[:, 0] if shared else e[:, k + 1] * (1 if k % 2 else -1)
        y.append(np.log([r["params"] for r in s]) / 4 + 0.8 * quirk)
        emb.append(e)
        summaries += s
        groups.append(np.full(n, k))
    return np.concatenate(emb), summaries, np.concatenate(y), np.concatenate(groups)


PRIOR_OPTS = {"epochs": 40, "max_steps": 80, "core_weight": 1.0, "core_view": "universal", "hidden": (16,)}


def test_prior_falls_back_to_the_training_free_ranking_on_an_unfamiliar_family(tmp_path: Path):
    emb, summaries, y, groups = _families(shared=False)
    train, held = groups < 3, groups == 3
    tr = np.flatnonzero(train)
    fit = {"groups": groups[tr], "blocks": groups[tr].astype(str)}
    with_prior = train_predictor(
        emb[tr], [summaries[i] for i in tr], y[tr], TrainOptions(prior=True, **PRIOR_OPTS), **fit
    )
    choice = with_prior.meta["prior"]["residual_choice"]
    assert set(choice["inner_tau"]) == {"0", "1", "2"} and with_prior.head.residual_weight == choice["chosen"]
    assert choice["judges"] == ["0", "1", "2"]
    assert with_prior.head.residual_weight <= 0.25  # the quirks did not transfer between the training families
    assert all(w > 0 for w in with_prior.meta["prior"]["weights"])
    hs = [summaries[i] for i in np.flatnonzero(held)]
    params_tau = kendall_tau([s["params"] for s in hs], y[held])
    tau = kendall_tau(with_prior.score_embeddings(emb[held], hs), y[held])
    plain = train_predictor(emb[tr], [summaries[i] for i in tr], y[tr], TrainOptions(**PRIOR_OPTS), groups=groups[tr])
    assert tau >= params_tau - 0.05 and tau > kendall_tau(plain.score_embeddings(emb[held], hs), y[held]) + 0.05
    loaded = Predictor.load(with_prior.save(tmp_path / "prior.safetensors"))
    np.testing.assert_allclose(loaded.score_embeddings(emb[held], hs), with_prior.score_embeddings(emb[held], hs))
    assert loaded.head.residual_weight == with_prior.head.residual_weight and loaded.head.prior is not None


def test_prior_keeps_a_residual_that_transfers():
    emb, summaries, y, groups = _families(shared=True)
    tr, held = np.flatnonzero(groups < 3), np.flatnonzero(groups == 3)
    opts = TrainOptions(prior=True, **PRIOR_OPTS)
    pred = train_predictor(emb[tr], [summaries[i] for i in tr], y[tr], opts, groups=groups[tr])
    assert pred.head.residual_weight >= 0.5  # the embedding's part ranks every held-out training family
    hs = [summaries[i] for i in held]
    x = pred.inputs(emb[held], hs)
    with torch.no_grad():
        prior_only = pred.head.prior_score(x).numpy()
    assert kendall_tau(pred.score_embeddings(emb[held], hs), y[held]) > kendall_tau(prior_only, y[held]) + 0.1
    noisy = train_predictor(
        emb[tr], [summaries[i] for i in tr], y[tr], opts, groups=groups[tr], vetoes=groups[tr] != 0
    )  # a family whose labels do not reproduce is held out and scored, but does not judge the weight
    assert noisy.meta["prior"]["residual_choice"]["judges"] == ["1", "2"]
    assert noisy.meta["prior"]["fitted_to"] == [1, 2] and pred.meta["prior"]["fitted_to"] == [0, 1, 2]
    fixed = train_predictor(
        emb[tr],
        [summaries[i] for i in tr],
        y[tr],
        TrainOptions(prior=True, residual_weight=0.0, **PRIOR_OPTS),
        groups=groups[tr],
    )
    assert "residual_choice" not in fixed.meta["prior"]  # a given weight is not chosen again
    np.testing.assert_array_less(
        -1e-9,
        np.diff(fixed.score_embeddings(emb[:5], [{**summaries[0], "params": p} for p in (1e3, 1e4, 1e5, 1e6, 1e7)])),
    )
    with pytest.raises(UserInputError, match="use_features"):
        train_predictor(emb[tr], [summaries[i] for i in tr], y[tr], TrainOptions(prior=True, use_features=False))
    with pytest.raises(UserInputError, match="'op_Conv'"):
        TrainOptions(prior=True, prior_features=("log_params", "op_Conv"))
    with pytest.raises(UserInputError, match="'most'"):
        TrainOptions(prior=True, prior_fit="most")
    with pytest.raises(UserInputError, match="residual_weight=-1"):
        TrainOptions(prior=True, residual_weight=-1.0)
