"""Multi-fidelity search: asynchronous successive halving (ASHA) over rungs of training epochs, several objectives
ranked as MO-ASHA does (non-dominated sorting, then crowding distance).

A candidate trains to the first rung; when it finishes rung k it is compared with every candidate of the study that
has finished rung k (any driver, any worker): it is promoted, and trains on from its rung-k checkpoint, when it
ranks in the top ``max(1, floor(n / eta))`` of those ``n``; otherwise it stops there and its trial ends PRUNED
(``stopped``). This is the stopping form of ASHA (Ray Tune's ``ASHAScheduler``, Optuna's
``SuccessiveHalvingPruner``); Optuna's pruners refuse multi-objective studies, so the rule is ours. The cost
objectives (params, FLOPs, latency) are the candidate's own, measured before training; only the accuracy changes
from rung to rung. Only candidates that reach the top rung complete, so only they can be on the Pareto front.

Each trial keeps its figures per rung in the ``rungs`` user attribute (``{"1": {"accuracy": ..., ...}, ...}``, keyed
by the rung's budget) and the rung it is training towards in ``target_rung``; a redo of an interrupted trial keeps
both and continues from the last checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from nas_ground.errors import UserInputError

UNITS = ("epochs",)


@dataclass(frozen=True)
class Fidelity:
    """Rung budgets (increasing; in ``unit``) and the reduction factor ``eta`` (1: every candidate is promoted)."""

    rungs: tuple[int, ...]
    eta: float = 3.0
    unit: str = "epochs"

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise UserInputError(f"fidelity={self.unit!r}: the rungs count {' or '.join(UNITS)}")
        if not self.rungs:
            raise UserInputError("rungs: give at least one budget, e.g. --rungs 1,3,9")
        if any(r < 1 for r in self.rungs) or list(self.rungs) != sorted(set(self.rungs)):
            raise UserInputError(f"rungs={','.join(map(str, self.rungs))}: budgets must be >= 1 and increasing")
        if not self.eta >= 1:
            raise UserInputError(f"eta={self.eta} must be >= 1 (1: no candidate is stopped)")

    @property
    def top(self) -> int:
        return self.rungs[-1]

    def budget(self, index: int) -> int:
        return self.rungs[index]


def parse_rungs(value: Any) -> tuple[int, ...]:
    """``1,3,9`` (or a list) as a tuple of ints; a bad entry is named."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for part in parts:
        try:
            out.append(int(str(part).strip()))
        except ValueError:
            raise UserInputError(f"rungs: {str(part).strip()!r} is not a whole number of epochs") from None
    return tuple(out)


def make_fidelity(fidelity: str | None, rungs: Any, eta: float) -> Fidelity | None:
    """The search's `Fidelity`, or None for single-fidelity search (no ``rungs``)."""
    if rungs is None or rungs == "" or rungs == []:
        if fidelity is not None:
            raise UserInputError(f"fidelity={fidelity!r} needs rungs, e.g. --rungs 1,3,9")
        return None
    return Fidelity(parse_rungs(rungs), float(eta), fidelity or "epochs")


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each row of ``points`` (one front); the extremes of every objective get inf."""
    n, m = points.shape
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(m):
        order = np.argsort(points[:, j], kind="stable")
        span = points[order[-1], j] - points[order[0], j]
        dist[order[0]] = dist[order[-1]] = np.inf
        if span <= 0:
            continue
        dist[order[1:-1]] += (points[order[2:], j] - points[order[:-2], j]) / span
    return dist


def mo_asha_order(values: np.ndarray) -> np.ndarray:
    """Indices of ``values`` (rows: candidates, columns: objectives to minimise) best first: by non-dominated rank
    (moocore), within a rank by decreasing crowding distance, ties by index (earlier first)."""
    import moocore

    if len(values) == 0:
        return np.zeros(0, dtype=int)
    ranks = np.asarray(moocore.pareto_rank(values))
    crowd = np.zeros(len(values))
    for r in np.unique(ranks):
        members = np.flatnonzero(ranks == r)
        crowd[members] = crowding_distance(values[members])
    return np.array(sorted(range(len(values)), key=lambda i: (ranks[i], -crowd[i], i)), dtype=int)


def promotable(values: np.ndarray, me: int, eta: float) -> tuple[bool, int, int]:
    """Whether candidate ``me`` (a row of ``values``, to minimise) is in the top ``max(1, floor(n / eta))`` of its
    rung; returns (promoted, its place counting from 1, how many are promoted)."""
    order = mo_asha_order(values)
    k = max(1, math.floor(len(values) / eta + 1e-9))
    place = int(np.flatnonzero(order == me)[0]) + 1
    return place <= k, place, k


def rung_records(trial: FrozenTrial | optuna.Trial) -> dict[str, dict[str, float]]:
    return dict(trial.user_attrs.get("rungs") or {})


def competitors(study: optuna.Study, budget: int, exclude: int) -> list[dict[str, float]]:
    """The figures at rung ``budget`` of every other trial of the study that finished that rung. An interrupted
    trial (failed without a reason of its own) is left out: its redo carries the same records."""
    out = []
    key = str(budget)
    for t in study.get_trials(deepcopy=False):
        if t.number == exclude or key not in rung_records(t):
            continue
        if t.state == TrialState.FAIL and "fail_reason" not in t.user_attrs:
            continue
        out.append(rung_records(t)[key])
    return out


def decide(
    study: optuna.Study,
    trial_number: int,
    metrics: dict[str, float],
    budget: int,
    objectives: Sequence[tuple[str, str]],
    fidelity: Fidelity,
) -> tuple[bool, str]:
    """Promote (True) or stop the trial that just finished rung ``budget`` with ``metrics``, and why."""
    rows = [*competitors(study, budget, trial_number), metrics]
    values = np.array([[m[n] if d == "min" else -m[n] for n, d in objectives] for m in rows], dtype=float)
    values = np.nan_to_num(values, nan=np.inf)
    promoted, place, k = promotable(values, len(rows) - 1, fidelity.eta)
    verb = "promoted" if promoted else "stopped"
    return promoted, f"{verb} at rung {budget} {fidelity.unit}: place {place} of {len(rows)}, top {k} go on"
