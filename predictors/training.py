"""Train and evaluate predictors on an ONNX-Bench: the code behind `nas predictor train|eval` and the scripts."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nas_ground.errors import UserInputError
from onnx_bench.bench import read_bench
from predictors.encoder import DEFAULT_ENCODER, Encoder
from predictors.metrics import all_metrics
from predictors.predictor import Predictor, TrainOptions, train_predictor
from predictors.zero_shot import bench_inputs, target_column

log = logging.getLogger(__name__)

OLD_WL_SCHEME = "nas-wl-1"  # the WL hashing of records written before they named theirs

EVAL_CAP = 5000  # held-out records scored for the figures stored in a predictor file


TARGET = "_target"  # the column holding each record's target (the first of the requested columns it has)
GROUP = "_group"  # (space, target column) of each record: ranking pairs stay within a group


@dataclass
class BenchData:
    frame: pd.DataFrame
    target: str  # the bench column(s), comma-joined
    embeddings: np.ndarray
    summaries: list[dict[str, Any]]

    @property
    def y(self) -> np.ndarray:
        return self.frame[TARGET].to_numpy(dtype=np.float64)

    @property
    def groups(self) -> np.ndarray:
        return self.frame[GROUP].to_numpy(dtype=np.int64)

    def subset(self, index: np.ndarray) -> BenchData:
        return BenchData(
            self.frame.iloc[index].reset_index(drop=True),
            self.target,
            self.embeddings[index],
            [self.summaries[i] for i in index],
        )


def load_bench_data(
    bench: str | Path | Sequence[str | Path],
    target: str,
    *,
    space: str | None = None,
    text_format: str = "compact",
    encoder: Encoder | None = None,
    show_progress: bool = False,
    embed: bool = True,
) -> BenchData:
    """Records of ``bench`` (of ``space``) with a finite target, embedded (cached). ``target`` may list several
    columns (``cifar10_valid_acc,accuracy``): each record takes the first one it has a value for. ``bench`` may
    be several bench directories; without ``embed`` the embeddings are empty (graph-features-only heads)."""
    benches = [bench] if isinstance(bench, str | Path) else list(bench)
    name = ", ".join(str(b) for b in benches)
    frame = pd.concat([read_bench(b) for b in benches], ignore_index=True)
    if frame.empty:
        raise UserInputError(f"bench {name} holds no records")
    info = family_info(benches)
    frame["noise_tau"] = [info.get(f, {}).get("noise_tau", np.nan) for f in families(frame)]
    if space is not None:
        spaces = sorted(frame["space"].unique())
        frame = frame[frame["space"] == space]
        if frame.empty:
            raise UserInputError(f"bench {name} has no records of space {space!r}; it has {', '.join(spaces)}")
    wanted = [t.strip() for t in target.split(",") if t.strip()]
    if not wanted:
        raise UserInputError(f"no target column in {target!r}")
    # a list may name columns that some benches lack; with none present, the error names the first
    present = [t for t in wanted if t in frame.columns or f"metric_{t}" in frame.columns] or wanted[:1]
    columns = [target_column(frame, t) for t in present]
    frame = frame.copy()
    frame[TARGET] = np.nan
    frame["_target_column"] = ""
    for c in columns:
        values = frame[c].astype(float)
        take = frame[TARGET].isna() & np.isfinite(values)
        frame.loc[take, TARGET] = values[take]
        frame.loc[take, "_target_column"] = c
    frame = frame[frame[TARGET].notna()].reset_index(drop=True)
    labels = frame["space"].astype(str) + "|" + frame["_target_column"]
    frame[GROUP] = pd.factorize(labels, sort=True)[0]
    column = ",".join(columns)
    if len(frame) < 2:
        raise UserInputError(f"bench {bench} has {len(frame)} records with a value for {target!r}; need >= 2")
    frame["wl_scheme"] = frame["wl_scheme"].fillna(OLD_WL_SCHEME) if "wl_scheme" in frame.columns else OLD_WL_SCHEME
    if frame["wl_scheme"].nunique() > 1:
        log.warning(
            "the records hold WL counts of %s hashings, which do not compare: run `nas bench upgrade` on the bench",
            " and ".join(sorted(frame["wl_scheme"].unique())),
        )
    texts, summaries = bench_inputs(frame, text_format)
    if not embed:
        return BenchData(frame, column, np.zeros((len(frame), 0), dtype=np.float32), summaries)
    encoder = encoder or Encoder()
    embeddings = encoder.encode(texts, show_progress=show_progress)
    return BenchData(frame, column, embeddings, summaries)


VETO_CEILING = 0.5  # a family whose run-to-run tau is below this cannot veto a recipe (nor a residual weight)
FAMILY_FILE = "family.json"  # a bench's families: {family: {budget, noise_tau, ...}} (experiments.label_family)


def family_info(benches: Sequence[str | Path]) -> dict[str, dict[str, Any]]:
    """The ``family.json`` of each bench directory, merged: each family's budget and noise ceiling."""
    import json

    out: dict[str, dict[str, Any]] = {}
    for bench in benches:
        path = Path(bench) / FAMILY_FILE
        if path.is_file():
            out.update(json.loads(path.read_text()))
    return out


def reproducible(frame: pd.DataFrame) -> np.ndarray:
    """Per record: its family's labels are reproducible (run-to-run tau >= `VETO_CEILING`, or not measured)."""
    if "noise_tau" not in frame.columns:
        return np.ones(len(frame), dtype=bool)
    noise = frame["noise_tau"].astype(float).to_numpy()
    return ~(noise < VETO_CEILING)


def families(frame: pd.DataFrame) -> np.ndarray:
    """Each record's family: its space, and the data set where it is not CIFAR-10 (``nb201-cifar100``: the NB201
    cells as networks of CIFAR-100, with their CIFAR-100 accuracies)."""
    space = frame["space"].astype(str)
    if "dataset" not in frame.columns:
        return space.to_numpy()
    dataset = frame["dataset"].fillna("cifar10").astype(str)
    other = ~dataset.isin(["cifar10", ""])
    return space.where(~other, space + "-" + dataset).to_numpy()


def identities(frame: pd.DataFrame) -> np.ndarray:
    """Each record's architecture identity: equal networks (isomorphic NB201 cells, NAS-Bench-Macro strings of
    one network) share it; the record's space and its ``identity`` column (its encoded architecture in benches
    built before that column existed)."""
    ident = frame["identity"] if "identity" in frame.columns else frame["arch"]
    ident = ident.where(ident.notna() & (ident.astype(str) != ""), frame["arch"])
    return (frame["space"].astype(str) + "|" + ident.astype(str)).to_numpy()


def identity_digests(ids: np.ndarray) -> list[str]:
    """Short digests of identities (what a predictor file keeps of its training networks)."""
    import hashlib

    return [hashlib.sha1(str(i).encode()).hexdigest()[:12] for i in ids]


def trained_on(predictor: Predictor, frame: pd.DataFrame) -> np.ndarray:
    """Mask of the records whose network (or a twin of it) was among the predictor's training records."""
    known = set(predictor.meta.get("training_data", {}).get("identities", []))
    return np.asarray([d in known for d in identity_digests(identities(frame))], dtype=bool)


def split(ids: np.ndarray, samples: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) record indices split by architecture identity: identities are drawn at random and all
    their records go to training until it holds ``samples`` records; held out is one record (the first) of
    every other identity, so no held-out network has a twin among the training records and none is counted
    twice."""
    n = len(ids)
    if samples is None:
        return np.random.default_rng(seed).permutation(n), np.array([], dtype=int)
    if not 2 <= samples <= n:
        raise UserInputError(f"--samples {samples} must be in 2..{n} (records with a target value)")
    codes = pd.factorize(pd.Series(np.asarray(ids)))[0]
    members: list[list[int]] = [[] for _ in range(codes.max() + 1)]
    for i, code in enumerate(codes):
        members[code].append(i)
    order = np.random.default_rng(seed).permutation(len(members))
    train: list[int] = []
    taken = 0
    while len(train) < samples and taken < len(order):
        train.extend(members[order[taken]])
        taken += 1
    held = [members[code][0] for code in order[taken:]]
    return np.asarray(train, dtype=int), np.asarray(held, dtype=int)


def fit(
    data: BenchData,
    train_idx: np.ndarray,
    options: TrainOptions,
    *,
    encoder_name: str = DEFAULT_ENCODER,
    text_format: str = "compact",
    held_out: np.ndarray | None = None,
    bench: str = "",
) -> Predictor:
    """Train on ``train_idx``; when ``held_out`` is given, store its figures (at most EVAL_CAP records)."""
    part = data.subset(train_idx)
    meta: dict[str, Any] = {
        "training_data": {
            "bench": bench,
            "spaces": sorted(part.frame["space"].unique().tolist()),
            "target": data.target,
            "records": len(train_idx),
            "records_per_space": {str(k): int(v) for k, v in part.frame["space"].value_counts().items()},
            "identities": sorted(set(identity_digests(identities(part.frame)))),
            "wl_scheme": "+".join(sorted(part.frame["wl_scheme"].unique())),  # what its WL features were hashed by
        }
    }
    predictor = train_predictor(
        part.embeddings,
        part.summaries,
        part.y,
        options,
        encoder_name=encoder_name,
        text_format=text_format,
        meta=meta,
        groups=part.groups,
        blocks=part.frame["space"].astype(str).to_numpy(),  # groups of one space share networks
        vetoes=reproducible(part.frame),
    )
    if held_out is not None and len(held_out) >= 2:
        ev = held_out[:EVAL_CAP]
        predictor.meta["evaluation"] = {"held_out": evaluate(predictor, data.subset(ev))}
    return predictor


def evaluate(predictor: Predictor, data: BenchData) -> dict[str, float]:
    scores = predictor.score_embeddings(data.embeddings, data.summaries)
    return all_metrics(scores, data.y)
