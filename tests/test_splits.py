"""Predictor evaluation splits by architecture identity, and the embedding cache keys on the encoder's weights."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from predictors.encoder import Encoder
from predictors.training import identities, split


@pytest.fixture(scope="module")
def nb201_ids(nb201_csv: Path) -> np.ndarray:
    with open(nb201_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    frame = pd.DataFrame({"space": "nb201", "arch": [r["arch_str"] for r in rows]})
    frame["identity"] = [r["iso_unique_str"] for r in rows]
    return identities(frame)


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.5])
def test_no_held_out_network_has_a_twin_in_training(nb201_ids: np.ndarray, fraction: float):
    assert len(nb201_ids) == 15625 and len(set(nb201_ids)) == 6466
    samples = round(fraction * len(nb201_ids))
    train, held = split(nb201_ids, samples, seed=3)
    assert samples <= len(train) < samples + 60  # whole identities: at most one class's twins over
    train_ids, held_ids = set(nb201_ids[train]), nb201_ids[held]
    assert not train_ids & set(held_ids)
    assert len(held_ids) == len(set(held_ids))  # each held-out network once
    assert train_ids | set(held_ids) == set(nb201_ids)  # every network is on one side
    # a split by record (the old one) would leave twins across the sides at these fractions
    order = np.random.default_rng(3).permutation(len(nb201_ids))
    assert set(nb201_ids[order[:samples]]) & set(nb201_ids[order[samples:]])


def test_split_is_seeded_and_checks_its_size(nb201_ids: np.ndarray):
    a, b = split(nb201_ids, 500, seed=1), split(nb201_ids, 500, seed=1)
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    assert not np.array_equal(np.sort(split(nb201_ids, 500, seed=2)[0]), np.sort(a[0]))
    with pytest.raises(ValueError, match="--samples 1"):
        split(nb201_ids, 1, seed=0)


def test_identity_falls_back_to_the_architecture_and_keeps_spaces_apart():
    frame = pd.DataFrame({"space": ["nb201", "nb201", "nasnet"], "arch": ["a", "b", "a"]})
    assert list(identities(frame)) == ["nb201|a", "nb201|b", "nasnet|a"]
    frame["identity"] = ["x", None, "a"]
    assert list(identities(frame)) == ["nb201|x", "nb201|b", "nasnet|a"]


def _weights(directory: Path, payload: bytes) -> None:
    directory.mkdir(exist_ok=True)
    (directory / "model.safetensors").write_bytes(payload)
    (directory / "config.json").write_text("{}")


def test_cache_keys_follow_the_encoder_weights_not_its_name(tmp_path: Path):
    model = tmp_path / "encoder"
    _weights(model, b"first weights")
    cache = tmp_path / "cache.sqlite"
    first = Encoder(str(model), cache=cache).fingerprint
    assert first == Encoder(str(model), cache=cache).fingerprint  # unchanged files: the same key, from the cache
    _weights(model, b"fine-tuned again")  # same directory, same name, new weights
    second = Encoder(str(model), cache=cache).fingerprint
    assert second != first
    copy = tmp_path / "copy"
    _weights(copy, b"fine-tuned again")  # another directory with the same weights shares the embeddings
    assert Encoder(str(copy), cache=cache).fingerprint == second
