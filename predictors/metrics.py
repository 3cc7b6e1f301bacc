"""Ranking metrics shared by every predictor script: Kendall tau, Spearman rho, precision@k, MAE."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def _arrays(pred: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if p.shape != t.shape or p.ndim != 1:
        raise ValueError(f"predictions {p.shape} and targets {t.shape} must be equal-length vectors")
    keep = np.isfinite(p) & np.isfinite(t)
    return p[keep], t[keep]


def kendall_tau(pred: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray) -> float:
    """Kendall tau-b (ties counted as scipy does); NaN with fewer than two finite pairs."""
    p, t = _arrays(pred, true)
    if len(p) < 2:
        return math.nan
    return float(stats.kendalltau(p, t).statistic)


def spearman_rho(pred: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray) -> float:
    p, t = _arrays(pred, true)
    if len(p) < 2:
        return math.nan
    return float(stats.spearmanr(p, t).statistic)


def precision_at_k(pred: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray, k: int) -> float:
    """Share of the k truly best (highest target) found among the k highest predictions."""
    p, t = _arrays(pred, true)
    k = min(k, len(p))
    if k < 1:
        return math.nan
    top_pred = set(np.argsort(-p, kind="stable")[:k].tolist())
    top_true = set(np.argsort(-t, kind="stable")[:k].tolist())
    return len(top_pred & top_true) / k


def mae(pred: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray) -> float:
    p, t = _arrays(pred, true)
    return float(np.mean(np.abs(p - t))) if len(p) else math.nan


def all_metrics(
    pred: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray, ks: Sequence[int] = (10, 100)
) -> dict[str, float]:
    """tau, rho, precision@k for each k, and MAE (meaningful only when predictions are on the target's scale)."""
    out = {"n": float(len(_arrays(pred, true)[0])), "kendall_tau": kendall_tau(pred, true)}
    out["spearman_rho"] = spearman_rho(pred, true)
    for k in ks:
        out[f"precision_at_{k}"] = precision_at_k(pred, true, k)
    out["mae"] = mae(pred, true)
    return out
