"""What a search is: its configuration, the objectives it optimises and how a YAML file or the CLI fill it."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from nas.ray_backend import RayOptions
from nas_ground.errors import UserInputError

# Keys whose change makes an existing run directory a different experiment (resume refuses it).
IDENTITY_KEYS = (
    "space",
    "space_options",
    "dataset",
    "evaluator",
    "evaluator_options",
    "objectives",
    "sampler",
    "seed",
    "fidelity",
    "rungs",
    "eta",
)


@dataclass
class SearchConfig:
    space: str = "nasnet"
    dataset: str = "cifar10"  # what training evaluators train on: cifar10, cifar100, folder:PATH, npz:PATH
    evaluator: str = "train"
    objectives: list[str] | None = None  # default: the evaluator's (see default_objectives)
    trials: int = 10
    seed: int = 0
    sampler: str = "tpe"  # multivariate TPE: the best front per evaluation on NB201 (section pareto-quality)
    run_dir: str | None = None
    storage: str | None = None
    data_dir: str | None = None
    timeout: float | None = None  # seconds: no new trial starts after this (wall clock of this invocation)
    storage_patience: float = 60.0  # seconds a search retries a storage that dropped mid-search, then fails
    heartbeat: float = 10.0  # seconds between heartbeats of a running trial; silent for 6 beats: owner gone
    trial_timeout: float | None = None  # seconds of evaluation after which a trial stops and fails with that reason
    space_options: dict[str, Any] = field(default_factory=dict)
    evaluator_options: dict[str, Any] = field(default_factory=dict)
    sampler_options: dict[str, Any] = field(default_factory=dict)
    # Multi-fidelity (see nas.search.fidelity): rung budgets in epochs ("1,3,9"), reduction factor eta.
    fidelity: str | None = None  # the rungs' unit: epochs (the default when rungs are given)
    rungs: list[int] | None = None
    eta: float = 3.0
    # Ray (see nas.ray_backend): trials in flight as Ray tasks, on a local runtime or the cluster at ray_address.
    workers: int | None = None
    ray_address: str | None = None
    cpus_per_trial: float | None = None  # default 1
    gpus_per_trial: float | None = None  # default 0; fractions share a GPU

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> SearchConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in set(data) - known)
        if unknown:
            raise UserInputError(f"unknown key {unknown[0]!r} in {source}; valid: {', '.join(sorted(known))}")
        return cls(**data)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not _has_type(value, str(f.type)):
                raise UserInputError(f"{f.name}={value!r} must be of type {f.type}")
        if self.objectives is None:
            self.objectives = default_objectives(self.evaluator)
        elif isinstance(self.objectives, str):
            self.objectives = [o for o in self.objectives.split(",") if o]
        if self.rungs is not None:
            from nas.search.fidelity import parse_rungs

            self.rungs = list(parse_rungs(self.rungs)) or None
        if not float(self.storage_patience) >= 0:
            raise UserInputError(f"storage_patience={self.storage_patience} must be >= 0 seconds")
        if not float(self.heartbeat) > 0:
            raise UserInputError(f"heartbeat={self.heartbeat} must be > 0 seconds")
        if self.trial_timeout is not None and not float(self.trial_timeout) > 0:
            raise UserInputError(f"trial_timeout={self.trial_timeout} must be > 0 seconds")

    def parsed_objectives(self) -> list[tuple[str, str]]:
        out = []
        assert self.objectives is not None
        for obj in self.objectives:
            name, sep, direction = obj.partition(":")
            if not sep or direction not in ("max", "min") or not name:
                raise UserInputError(f"bad objective {obj!r}: write NAME:max or NAME:min")
            out.append((name, direction))
        if len({n for n, _ in out}) != len(out):
            raise UserInputError(f"objective listed twice in {','.join(self.objectives)!r}")
        return out


def default_objectives(evaluator: str) -> list[str]:
    """Accuracy up and params down; for evaluators without an accuracy, their score up and params down."""
    if evaluator == "predictor":
        return ["score:max", "params:min"]
    if evaluator == "ensemble" or evaluator.startswith("proxy:"):
        from nas.evaluators.proxy import default_objectives as proxy_objectives

        return proxy_objectives(evaluator)
    return ["accuracy:max", "params:min"]


def load_config_file(path: str | Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = str(exc).splitlines()[0]
        raise UserInputError(f"cannot read config {path}: {reason}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserInputError(f"config {path} must be a YAML mapping, got {type(data).__name__}")
    return data


def ray_options(cfg: SearchConfig) -> RayOptions | None:
    """The Ray settings of a configuration: None (the local loop) unless it names workers or a Ray address."""
    if cfg.workers is None and cfg.ray_address is None:
        for key in ("cpus_per_trial", "gpus_per_trial"):
            if getattr(cfg, key) is not None:
                raise UserInputError(f"{key} needs Ray: give workers (--workers) or a Ray address (--ray-address)")
        return None
    return RayOptions(
        workers=cfg.workers,
        address=cfg.ray_address,
        cpus_per_trial=1.0 if cfg.cpus_per_trial is None else float(cfg.cpus_per_trial),
        gpus_per_trial=0.0 if cfg.gpus_per_trial is None else float(cfg.gpus_per_trial),
    )


def trial_seed(seed: int, number: int) -> int:
    """The training seed of trial ``number`` of a search seeded ``seed`` (the same on the local loop and on Ray; a
    redo keeps the seed of the trial it redoes)."""
    return (seed * 1_000_003 + number) % 2**32


_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "None": (type(None),),
    "dict": (dict,),
    "list": (list, str),  # objectives may be written "a:max,b:min"
}


def _has_type(value: Any, annotation: str) -> bool:
    """Whether ``value`` fits a field annotation such as ``int``, ``float | None`` or ``dict[str, Any]``."""
    allowed: tuple[type, ...] = ()
    for part in annotation.split("|"):
        allowed += _TYPES.get(part.strip().split("[")[0], (object,))
    return isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
