"""``trials.csv``: one row per trial (number, state, architecture, every metric, why it failed or was screened)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from nas_ground.atomic import atomic_write


def trials_frame(study: optuna.Study, objectives: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """`optuna.Study.trials_dataframe` with the ``metrics`` user attribute spread into columns (objectives first; a
    multi-fidelity run's last rung after the state) and the reason a trial did not complete (failed, screened out,
    stopped at a rung, surplus, interrupted) in ``fail_reason``."""
    frame = study.trials_dataframe(attrs=("number", "state", "user_attrs"), multi_index=False)
    objective_names = [n for n, _ in objectives]
    if frame.empty:
        return pd.DataFrame(columns=["number", "state", "arch", *objective_names, "fail_reason"])

    def attr(name: str) -> list[Any]:
        column = frame.get(f"user_attrs_{name}")
        return [None] * len(frame) if column is None else [None if _missing(v) else v for v in column]

    # A multi-fidelity trial still climbing (running) shows the figures of the last rung it finished.
    last_rung = [max(r.values(), key=lambda m: m.get("rung", 0)) if r else None for r in attr("rungs")]
    metrics = pd.DataFrame([m or r or {} for m, r in zip(attr("metrics"), last_rung, strict=True)], index=frame.index)
    out = pd.DataFrame({"number": frame["number"], "state": frame["state"], "arch": attr("arch")}, index=frame.index)
    if "rung" in metrics.columns:  # multi-fidelity: the last rung each trial finished (its budget in epochs)
        out.insert(2, "rung", metrics["rung"])
    out["arch"] = out["arch"].fillna("")
    for name in [n for n in dict.fromkeys([*objective_names, *metrics.columns]) if n != "rung"]:
        out[name] = metrics.get(name)
    # A FAIL without a reason of its own lost its owner (killed driver, Optuna's stale heartbeat): interrupted.
    out["fail_reason"] = [
        failed
        or screened
        or stopped
        or (f"surplus: {surplus}" if surplus else "")
        or ("interrupted" if state == "FAIL" else "")
        for failed, screened, stopped, surplus, state in zip(
            attr("fail_reason"), attr("screened"), attr("stopped"), attr("surplus"), frame["state"], strict=True
        )
    ]
    return out


def _missing(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def write_trials_csv(study: optuna.Study, path: Path, objectives: Sequence[tuple[str, str]]) -> None:
    atomic_write(path, trials_frame(study, objectives).to_csv(index=False))
