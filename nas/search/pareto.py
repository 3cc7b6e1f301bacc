"""A run's product: its Pareto front (``pareto.json``, ``pareto/*.onnx``) and the picture of it (``pareto.png``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from nas_ground.atomic import atomic_path, atomic_write


@dataclass
class ParetoMember:
    trial: int
    arch: str
    metrics: dict[str, float]
    onnx: str | None = None


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """The study's non-dominated completed trials (`optuna.Study.best_trials`), one per architecture: the earliest
    trial of an architecture met more than once."""
    seen: set[str] = set()
    front = []
    for t in sorted(study.best_trials, key=lambda t: t.number):
        if t.user_attrs["arch"] not in seen:
            seen.add(t.user_attrs["arch"])
            front.append(t)
    return front


def write_pareto_json(path: Path, objectives: Sequence[tuple[str, str]], members: Sequence[ParetoMember]) -> None:
    payload = {"objectives": [f"{n}:{d}" for n, d in objectives], "members": [asdict(m) for m in members]}
    atomic_write(path, json.dumps(payload, indent=2) + "\n")


def plot_pareto(study: optuna.Study, objectives: Sequence[tuple[str, str]], path: Path) -> None:
    """Optuna's own matplotlib figure: the front over all trials for two or three objectives, the optimisation
    history for one."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    from optuna.visualization import matplotlib as optuna_plots

    names = [f"{n} ({d})" for n, d in objectives]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if len(objectives) == 1:
            ax = optuna_plots.plot_optimization_history(study, target_name=names[0])
        else:
            ax = optuna_plots.plot_pareto_front(study, target_names=names[:3] if len(names) <= 3 else None)
    fig = ax.get_figure(root=True)
    assert isinstance(fig, Figure)
    fig.set_size_inches(6, 4.5)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def normalized_hypervolume(points: Sequence[Sequence[float]], directions: Sequence[str]) -> float:
    """Hypervolume (moocore) of ``points`` after mapping every objective to [0, 1] by the range seen among them,
    1 the worst (a maximised objective is flipped), reference point (1, ..., 1): 0 for no points, 1 when one point
    is best in every objective. Comparable within a run as it grows; across runs use a fixed normalisation."""
    import moocore
    import numpy as np

    if not points:
        return 0.0
    values = np.asarray(points, dtype=float)
    values = np.where(np.asarray(directions) == "max", -values, values)  # everything minimised
    low, high = values.min(axis=0), values.max(axis=0)
    scaled = (values - low) / np.where(high > low, high - low, 1.0)
    return float(moocore.hypervolume(scaled, ref=np.ones(values.shape[1])))


def front_hypervolume(study: optuna.Study, objectives: Sequence[tuple[str, str]]) -> float:
    """`normalized_hypervolume` of the completed trials' objective values (the front decides it)."""
    points = [t.values for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    return normalized_hypervolume([p for p in points if p], [d for _, d in objectives])
