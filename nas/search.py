"""The search loop: an Optuna study over a space, evaluated by an evaluator, kept in a run directory.

A run directory holds ``config.yaml``, ``env.json``, ``study.journal`` (the Optuna storage), ``trials.csv``,
``pareto.json``, ``pareto/*.onnx`` and ``pareto.png`` (and ``ray.json`` when the trials ran as Ray tasks). Running
the same configuration on the same directory resumes: completed trials are kept, trials a killed process left
RUNNING are failed and redone.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import optuna.storages.journal
import yaml
from optuna.trial import FrozenTrial, TrialState

from nas.evaluators import Evaluator, make_evaluator
from nas.ray_backend import RESUBMITS, Outcome, RayBackend, RayOptions, WorkerLost, evaluate_outcome
from nas_ground.errors import UserInputError
from search_spaces import SearchSpace, get_space
from search_spaces.base import example_input

log = logging.getLogger(__name__)

SAMPLERS = ("nsga2", "tpe", "random", "coarse2fine")
STUDY_NAME = "nas"
# Keys whose change makes an existing run directory a different experiment (resume refuses it).
IDENTITY_KEYS = ("space", "space_options", "evaluator", "evaluator_options", "objectives", "sampler", "seed")


@dataclass
class SearchConfig:
    space: str = "nasnet"
    evaluator: str = "train"
    objectives: list[str] | None = None  # default: the evaluator's (see default_objectives)
    trials: int = 10
    seed: int = 0
    sampler: str = "nsga2"
    run_dir: str | None = None
    storage: str | None = None
    data_dir: str | None = None
    timeout: float | None = None  # seconds: no new trial starts after this (wall clock of this invocation)
    space_options: dict[str, Any] = field(default_factory=dict)
    evaluator_options: dict[str, Any] = field(default_factory=dict)
    sampler_options: dict[str, Any] = field(default_factory=dict)
    # Ray (see nas.ray_backend): trials in flight as Ray tasks, on a local runtime or the cluster at ray_address.
    workers: int | None = None
    ray_address: str | None = None
    cpus_per_trial: float | None = None  # default 1
    gpus_per_trial: float | None = None  # default 0; fractions share a GPU

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> SearchConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserInputError(f"unknown key {unknown[0]!r} in {source}; valid: {', '.join(sorted(known))}")
        return cls(**data)

    def __post_init__(self) -> None:
        if self.objectives is None:
            self.objectives = default_objectives(self.evaluator)
        elif isinstance(self.objectives, str):
            self.objectives = [o for o in self.objectives.split(",") if o]

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
    except (OSError, yaml.YAMLError) as exc:
        reason = str(exc).splitlines()[0]
        raise UserInputError(f"cannot read config {path}: {reason}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserInputError(f"config {path} must be a YAML mapping, got {type(data).__name__}")
    return data


@dataclass
class ParetoMember:
    trial: int
    arch: str
    metrics: dict[str, float]
    onnx: str | None = None


@dataclass
class SearchResult:
    run_dir: Path
    completed: int
    failed: int
    pareto: list[ParetoMember]


def make_sampler(name: str, seed: int, trials: int, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    if name == "nsga2":
        # A population of a fifth of the budget (4..50) so that short searches still see several generations.
        opts = {"population_size": max(4, min(50, trials // 5)), **options}
        return optuna.samplers.NSGAIISampler(seed=seed, **opts)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, **{"multivariate": True, **options})
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed, **options)
    if name == "coarse2fine":  # the architectures come from nas.coarse2fine; the study only records them
        unknown = sorted(set(options) - {"levels"})
        if unknown:
            raise UserInputError(f"unknown coarse2fine option {unknown[0]!r}; valid: levels")
        return optuna.samplers.RandomSampler(seed=seed)
    raise UserInputError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")


def make_storage(url: str | None, run_dir: Path) -> optuna.storages.BaseStorage | str:
    if url is None:
        backend = optuna.storages.journal.JournalFileBackend(str(run_dir / "study.journal"))
        return optuna.storages.journal.JournalStorage(backend)
    return url


class Search:
    """One search: resolves and validates the configuration, then runs the ask/tell loop."""

    def __init__(self, cfg: SearchConfig) -> None:
        self.cfg = cfg
        self.objectives = cfg.parsed_objectives()
        if cfg.trials < 1:
            raise UserInputError(f"trials={cfg.trials} must be >= 1")
        if cfg.timeout is not None and cfg.timeout <= 0:
            raise UserInputError(f"timeout={cfg.timeout} must be > 0 seconds")
        self.space: SearchSpace[Any] = get_space(cfg.space, **cfg.space_options)
        make_sampler(cfg.sampler, cfg.seed, cfg.trials, cfg.sampler_options)  # validates name and options
        self.strategy = None
        if cfg.sampler == "coarse2fine":
            from nas.coarse2fine import CoarseToFine

            levels = int(cfg.sampler_options.get("levels", 2))
            self.strategy = CoarseToFine(self.space, maximize=self.objectives[0][1] == "max", levels=levels)
        self.run_dir = Path(cfg.run_dir or default_run_dir(cfg.space))
        self._check_resume()
        options = dict(cfg.evaluator_options)
        if cfg.evaluator == "table" and any(n == "flops" for n, _ in self.objectives):
            options.setdefault("with_flops", True)
        self.ray = ray_options(cfg)
        self.evaluator: Evaluator = make_evaluator(
            cfg.evaluator,
            self.space,
            data_dir=cfg.data_dir,
            artifacts_dir=str(self.run_dir / "models"),
            **options,
        )
        self.evaluator_options = options
        for name, _ in self.objectives:
            if name not in self.evaluator.metrics or name.startswith("test_"):
                valid = ", ".join(m for m in self.evaluator.metrics if not m.startswith("test_"))
                raise UserInputError(f"unknown objective {name!r} for evaluator {cfg.evaluator!r}; valid: {valid}")

    def _check_resume(self) -> None:
        saved = self.run_dir / "config.yaml"
        if not saved.exists():
            return
        old = load_config_file(saved)
        new = asdict(self.cfg)
        for key in IDENTITY_KEYS:
            if old.get(key) != new.get(key):
                raise UserInputError(
                    f"run dir {self.run_dir} holds a search with {key}={old.get(key)!r}, not {new.get(key)!r}; "
                    "use another --run-dir"
                )

    def run(self, on_trial: Callable[[FrozenTrial | None, int, int], None] | None = None) -> SearchResult:
        """Evaluate trials until ``cfg.trials`` have finished (completed or failed), then write the outputs."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        write_env(self.run_dir)
        study = optuna.create_study(
            study_name=STUDY_NAME,
            storage=make_storage(self.cfg.storage, self.run_dir),
            sampler=make_sampler(self.cfg.sampler, self.cfg.seed, self.cfg.trials, self.cfg.sampler_options),
            directions=["maximize" if d == "max" else "minimize" for _, d in self.objectives],
            load_if_exists=True,
        )
        recover_interrupted(study)
        history = self._history(study)
        if history is not None:  # evaluators with memory (predictor+train) pick up what earlier runs saw
            self.evaluator.restore(history)  # type: ignore[attr-defined]
        done = count_finished(study)
        deadline = None if self.cfg.timeout is None else time.monotonic() + self.cfg.timeout
        if self.ray is not None:
            self._run_on_ray(study, self.ray, done, deadline, on_trial)
            return self._finish(study)
        if on_trial is not None:
            on_trial(None, done, self.cfg.trials)
        while done < self.cfg.trials and (deadline is None or time.monotonic() < deadline):
            trial = self._run_one(study)
            done += 1
            write_trials_csv(study, self.run_dir / "trials.csv", self.objectives)
            if on_trial is not None:
                on_trial(trial, done, self.cfg.trials)
        write_trials_csv(study, self.run_dir / "trials.csv", self.objectives)
        return self._finish(study)

    def _run_one(self, study: optuna.Study) -> FrozenTrial:
        trial, arch = self._ask(study)
        return self._tell(study, trial, evaluate_outcome(self.evaluator, arch))

    def _run_on_ray(
        self,
        study: optuna.Study,
        options: RayOptions,
        done: int,
        deadline: float | None,
        on_trial: Callable[[FrozenTrial | None, int, int], None] | None,
    ) -> None:
        """The ask/tell loop with at most ``workers`` evaluations in flight as Ray tasks.

        A trial is counted against the budget while in flight, so the search never finishes more than
        ``cfg.trials``. A task whose worker or node died is re-run by Ray (``MAX_RETRIES``), then resubmitted
        here (``RESUBMITS``); after that its trial fails with the reason and the search goes on.
        """
        cfg = self.cfg
        job = {
            "space": cfg.space,
            "space_options": cfg.space_options,
            "evaluator": cfg.evaluator,
            "evaluator_options": {
                **self.evaluator_options,
                "data_dir": str(Path(cfg.data_dir).resolve()) if cfg.data_dir else None,
                "artifacts_dir": str((self.run_dir / "models").resolve()),
            },
        }
        with RayBackend(options, job, cfg.seed) as backend:
            atomic_write_text(self.run_dir / "ray.json", json.dumps(backend.describe(), indent=2) + "\n")
            if on_trial is not None:
                on_trial(None, done, cfg.trials)
            in_flight: dict[Any, tuple[optuna.Trial, int]] = {}  # task -> (trial, submissions so far)

            def submit(trial: optuna.Trial, submissions: int) -> None:
                ref = backend.submit(trial.number, trial.user_attrs["arch"], self._history(study))
                in_flight[ref] = (trial, submissions + 1)

            while True:
                while (
                    len(in_flight) < backend.workers
                    and done + len(in_flight) < cfg.trials
                    and (deadline is None or time.monotonic() < deadline)
                ):
                    submit(self._ask(study)[0], 0)
                if not in_flight:
                    break
                ref = backend.next_ready(list(in_flight))
                trial, submissions = in_flight.pop(ref)
                try:
                    outcome = backend.result(ref)
                except WorkerLost as exc:
                    if submissions <= RESUBMITS:
                        log.warning("trial %d: %s; submitting it again", trial.number, exc)
                        trial.set_user_attr("resubmitted", submissions)
                        submit(trial, submissions)
                        continue
                    outcome = Outcome("failed", reason=f"worker lost ({submissions} submissions): {exc}")
                frozen = self._tell(study, trial, outcome)
                done += 1
                write_trials_csv(study, self.run_dir / "trials.csv", self.objectives)
                if on_trial is not None:
                    on_trial(frozen, done, cfg.trials)
            write_trials_csv(study, self.run_dir / "trials.csv", self.objectives)
            atomic_write_text(self.run_dir / "ray.json", json.dumps(backend.describe(), indent=2) + "\n")

    def _history(self, study: optuna.Study) -> list[dict[str, float]] | None:
        """For evaluators with memory (``restore``): the metrics of every trial told so far, else None."""
        if getattr(self.evaluator, "restore", None) is None:
            return None
        return [t.user_attrs["metrics"] for t in study.get_trials(deepcopy=False) if "metrics" in t.user_attrs]

    def _ask(self, study: optuna.Study) -> tuple[optuna.Trial, Any]:
        """A new trial with its proposed architecture (recorded as the ``arch`` user attribute)."""
        trial = study.ask()
        arch = self._propose(study, trial)
        trial.set_user_attr("arch", self.space.encode(arch))
        return trial, arch

    def _tell(self, study: optuna.Study, trial: optuna.Trial, outcome: Outcome) -> FrozenTrial:
        if outcome.worker:
            trial.set_user_attr("worker", outcome.worker)
        if outcome.status == "failed":
            log.warning("trial %d failed: %s", trial.number, outcome.reason)
            trial.set_user_attr("fail_reason", outcome.reason)
            return study.tell(trial, state=TrialState.FAIL)
        if outcome.status == "screened":
            trial.set_user_attr("screened", outcome.reason)
            trial.set_user_attr("metrics", outcome.metrics)
            return study.tell(trial, state=TrialState.PRUNED)
        trial.set_user_attr("metrics", outcome.metrics)
        return study.tell(trial, [outcome.metrics[name] for name, _ in self.objectives])

    def _propose(self, study: optuna.Study, trial: optuna.Trial) -> Any:
        """The sampler's architecture (``space.suggest``), or the coarse-to-fine strategy's next child."""
        if self.strategy is None:
            return self.space.suggest(trial)
        history = [
            (t.user_attrs["arch"], t.values[0] if t.state == TrialState.COMPLETE and t.values else None)
            for t in study.get_trials(deepcopy=False)
            if "arch" in t.user_attrs and t.number != trial.number
        ]
        arch = self.strategy.next_arch(history)
        if arch is None:  # grid and every neighbourhood spent: random children from here on
            arch = self.space.sample(random.Random(self.cfg.seed * 100_003 + trial.number))
        return arch

    def _write_config(self) -> None:
        data = asdict(self.cfg)
        data["run_dir"] = str(self.run_dir)
        atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(data, sort_keys=False))

    def _finish(self, study: optuna.Study) -> SearchResult:
        from onnx_bench.export import export_onnx

        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        members = []
        for t in pareto_front(complete, self.objectives):
            arch = self.space.decode(t.user_attrs["arch"])
            metrics = dict(t.user_attrs["metrics"])
            metrics.update(self.evaluator.final_metrics(arch))
            onnx_path = self.run_dir / "pareto" / f"trial_{t.number:04d}.onnx"
            if not onnx_path.exists():
                export_onnx(self.evaluator.model(arch), onnx_path, example_input(self.space))
            members.append(
                ParetoMember(t.number, t.user_attrs["arch"], metrics, str(onnx_path.relative_to(self.run_dir)))
            )
        payload = {
            "objectives": [f"{n}:{d}" for n, d in self.objectives],
            "members": [asdict(m) for m in members],
        }
        atomic_write_text(self.run_dir / "pareto.json", json.dumps(payload, indent=2) + "\n")
        plot_pareto(complete, members, self.objectives, self.run_dir / "pareto.png")
        failed = sum(1 for t in study.trials if t.state == TrialState.FAIL and not t.user_attrs.get("interrupted"))
        return SearchResult(self.run_dir, len(complete), failed, members)


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


def default_run_dir(space: str) -> Path:
    return Path("runs") / f"{space}-{datetime.now():%Y%m%d-%H%M%S}"


def latest_run_dir(space: str, root: Path = Path("runs")) -> Path | None:
    candidates = sorted(p for p in root.glob(f"{space}-*") if (p / "config.yaml").exists())
    return candidates[-1] if candidates else None


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Fail the trials a killed process left RUNNING and enqueue their parameters so they are redone.

    With a journal file one process owns the study, so every RUNNING trial seen at start-up is orphaned.
    """
    redone = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"redo_of": t.number})
        redone.append(t.number)
    if redone:
        log.info("marked interrupted trials %s as failed; they will be redone", redone)
    return redone


def count_finished(study: optuna.Study) -> int:
    """Trials that count towards the budget: completed, pruned (screened out without training), or failed by
    their evaluation (not interrupted)."""
    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (t.state == TrialState.FAIL and not t.user_attrs.get("interrupted"))
    )


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """True if ``a`` is at least as good as ``b`` in every objective and strictly better in one."""
    better = False
    for x, y, d in zip(a, b, directions, strict=True):
        if d == "min":
            x, y = -x, -y
        if x < y:
            return False
        if x > y:
            better = True
    return better


def pareto_front(trials: Sequence[FrozenTrial], objectives: Sequence[tuple[str, str]]) -> list[FrozenTrial]:
    """Non-dominated completed trials, one per architecture (the earliest trial of a repeated one)."""
    directions = [d for _, d in objectives]
    seen: set[str] = set()
    unique = []
    for t in sorted(trials, key=lambda t: t.number):
        if t.user_attrs["arch"] not in seen:
            seen.add(t.user_attrs["arch"])
            unique.append(t)
    values = [t.values for t in unique]
    return [t for t, v in zip(unique, values, strict=True) if not any(dominates(w, v, directions) for w in values)]


def write_trials_csv(study: optuna.Study, path: Path, objectives: Sequence[tuple[str, str]]) -> None:
    trials = study.get_trials(deepcopy=False)
    metric_names: list[str] = [n for n, _ in objectives]
    for t in trials:
        for k in t.user_attrs.get("metrics", {}):
            if k not in metric_names:
                metric_names.append(k)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["number", "state", "arch", *metric_names, "fail_reason"])
    for t in trials:
        metrics = t.user_attrs.get("metrics", {})
        reason = t.user_attrs.get("fail_reason") or t.user_attrs.get("screened", "")
        reason = reason or ("interrupted" if t.user_attrs.get("interrupted") else "")
        writer.writerow(
            [
                t.number,
                t.state.name,
                t.user_attrs.get("arch", ""),
                *(metrics.get(k, "") for k in metric_names),
                reason,
            ]
        )
    atomic_write_text(path, buf.getvalue())


def plot_pareto(
    trials: Sequence[FrozenTrial],
    members: Sequence[ParetoMember],
    objectives: Sequence[tuple[str, str]],
    path: Path,
) -> None:
    """All completed trials and the front, first two objectives on the axes (one objective: value per trial)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    names = [n for n, _ in objectives]
    front = {m.trial for m in members}
    if len(names) == 1:
        ax.scatter([t.number for t in trials], [t.values[0] for t in trials], s=12, c="0.6", label="trials")
        ax.scatter([m.trial for m in members], [m.metrics[names[0]] for m in members], c="C3", label="best")
        ax.set_xlabel("trial")
        ax.set_ylabel(f"{names[0]} ({objectives[0][1]})")
    else:
        ax.scatter([t.values[0] for t in trials], [t.values[1] for t in trials], s=12, c="0.6", label="trials")
        pts = sorted((m.metrics[names[0]], m.metrics[names[1]]) for m in members)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", c="C3", label=f"Pareto front ({len(front)})")
        ax.set_xlabel(f"{names[0]} ({objectives[0][1]})")
        ax.set_ylabel(f"{names[1]} ({objectives[1][1]})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".pareto.", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_env(run_dir: Path) -> None:
    import onnx
    import torch

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "onnx": onnx.__version__,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "git_commit": commit or None,
        "written": datetime.now().isoformat(timespec="seconds"),
    }
    atomic_write_text(run_dir / "env.json", json.dumps(env, indent=2) + "\n")
