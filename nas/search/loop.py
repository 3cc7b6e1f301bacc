"""The search loop: an Optuna study over a space, evaluated by an evaluator, locally or as Ray tasks.

Each trial asks the sampler for an architecture, evaluates it and tells the study its objectives; the loop
stops when ``trials`` have finished (completed, screened out or failed) or ``timeout`` has passed, then writes
the front. Running the same configuration on the same run directory resumes (see `nas.search.recovery`).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from nas.evaluators import Evaluator, make_evaluator
from nas.ray_backend import RESUBMITS, Outcome, RayBackend, RayOptions, WorkerLost, evaluate_outcome
from nas.search.config import IDENTITY_KEYS, SearchConfig, load_config_file, ray_options
from nas.search.pareto import ParetoMember, pareto_front, plot_pareto, write_pareto_json
from nas.search.recovery import count_finished, recover_interrupted
from nas.search.run_dir import default_run_dir, write_env
from nas.search.samplers import make_sampler
from nas.search.storage import STUDY_NAME, make_storage
from nas.search.trials_csv import write_trials_csv
from nas_ground.atomic import atomic_write
from nas_ground.errors import UserInputError
from search_spaces import SearchSpace, get_space
from search_spaces.base import example_input

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    run_dir: Path
    completed: int
    failed: int
    pareto: list[ParetoMember]


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
            atomic_write(self.run_dir / "ray.json", json.dumps(backend.describe(), indent=2) + "\n")
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
            atomic_write(self.run_dir / "ray.json", json.dumps(backend.describe(), indent=2) + "\n")

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
        atomic_write(self.run_dir / "config.yaml", yaml.safe_dump(data, sort_keys=False))

    def _finish(self, study: optuna.Study) -> SearchResult:
        from onnx_bench.export import export_onnx

        members = []
        for t in pareto_front(study):
            arch = self.space.decode(t.user_attrs["arch"])
            metrics = dict(t.user_attrs["metrics"])
            metrics.update(self.evaluator.final_metrics(arch))
            onnx_path = self.run_dir / "pareto" / f"trial_{t.number:04d}.onnx"
            if not onnx_path.exists():
                export_onnx(self.evaluator.model(arch), onnx_path, example_input(self.space))
            members.append(
                ParetoMember(t.number, t.user_attrs["arch"], metrics, str(onnx_path.relative_to(self.run_dir)))
            )
        write_pareto_json(self.run_dir / "pareto.json", self.objectives, members)
        plot_pareto(study, self.objectives, self.run_dir / "pareto.png")
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        failed = sum(1 for t in study.trials if t.state == TrialState.FAIL and not t.user_attrs.get("interrupted"))
        return SearchResult(self.run_dir, len(complete), failed, members)
