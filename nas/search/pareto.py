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
