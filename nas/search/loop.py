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
from nas.ray_backend import RESUBMITS, Outcome, RayBackend, RayOptions, RungJob, WorkerLost, evaluate_outcome
from nas.search.config import IDENTITY_KEYS, SearchConfig, load_config_file, ray_options, trial_seed
from nas.search.fidelity import Fidelity, decide, make_fidelity, rung_records
from nas.search.pareto import ParetoMember, pareto_front, plot_pareto, write_pareto_json
from nas.search.recovery import Heartbeats, count_finished, counts, heartbeat_quiet, recover_interrupted
from nas.search.run_dir import default_run_dir, write_env
from nas.search.samplers import make_sampler
from nas.search.storage import GRACE_BEATS, STUDY_NAME, describe_driver, make_storage, open_rdb
from nas.search.trials_csv import write_trials_csv
from nas_ground.atomic import atomic_write
from nas_ground.errors import UserInputError
from search_spaces import SearchSpace, get_space
from search_spaces.base import arch_digest, example_input

log = logging.getLogger(__name__)


# Evaluators that train on an image data set and so take ``dataset``.
TRAINING_EVALUATORS = ("train", "predictor+train", "screened")


def backstop_s(trial_timeout: float) -> float:
    """When the driver cancels a Ray task itself: a task stops its own evaluation after ``trial_timeout`` seconds
    (its worker's start-up not counted); one stuck where that cannot reach it (inside native code) is cancelled
    after twice the limit plus two minutes of start-up allowance."""
    return 2 * trial_timeout + 120


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
        if cfg.dataset != "cifar10":
            if cfg.evaluator not in TRAINING_EVALUATORS:
                raise UserInputError(
                    f"dataset={cfg.dataset!r} needs an evaluator that trains ({', '.join(TRAINING_EVALUATORS)}), "
                    f"not {cfg.evaluator!r}"
                )
            options["dataset"] = cfg.dataset
        if cfg.evaluator == "table" and any(n == "flops" for n, _ in self.objectives):
            options.setdefault("with_flops", True)
        self.fidelity: Fidelity | None = make_fidelity(cfg.fidelity, cfg.rungs, cfg.eta)
        if self.fidelity is not None:
            self._check_fidelity(options, self.fidelity)
        self.ray = ray_options(cfg)
        # A storage URL is opened (and so checked: reachable, writable) before anything is written or trained.
        self.rdb = None if cfg.storage is None else open_rdb(cfg.storage, cfg.heartbeat, cfg.storage_patience)
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

    def _check_fidelity(self, options: dict[str, Any], fidelity: Fidelity) -> None:
        """Rungs need an evaluator that trains image networks by epochs; the top rung is the epoch budget."""
        cfg = self.cfg
        trains = cfg.evaluator in ("train", "predictor+train") or (
            cfg.evaluator == "screened" and options.get("expensive", "train") == "train"
        )
        if not trains:
            raise UserInputError(
                f"rungs need the train evaluator (or screened/predictor+train in front of it), not {cfg.evaluator!r}"
            )
        if getattr(self.space, "modality", "image") == "text":
            raise UserInputError(f"rungs: multi-fidelity training is for image spaces, not the text space {cfg.space}")
        epochs = options.get("epochs")
        if epochs is not None and int(epochs) != fidelity.top:
            raise UserInputError(f"epochs={epochs} and rungs ending at {fidelity.top}: the top rung is the epochs")
        options["epochs"] = fidelity.top

    def _check_resume(self) -> None:
        saved = self.run_dir / "config.yaml"
        if not saved.exists():
            return
        old = load_config_file(saved)
        new = asdict(self.cfg)
        defaults = asdict(SearchConfig())
        for key in IDENTITY_KEYS:
            if old.get(key, defaults[key]) != new.get(key):  # a key a run predates holds its default
                raise UserInputError(
                    f"run dir {self.run_dir} holds a search with {key}={old.get(key)!r}, not {new.get(key)!r}; "
                    "use another --run-dir"
                )

    def run(self, on_trial: Callable[[FrozenTrial | None, int, int], None] | None = None) -> SearchResult:
        """Evaluate trials until ``cfg.trials`` have finished (completed, screened out or failed by their own
        evaluation), counting those of every driver on the study, then write the outputs."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        cfg = self.cfg
        storage = self.rdb or make_storage(None, self.run_dir, cfg.heartbeat)
        write_env(self.run_dir, storage=describe_driver(storage))
        study = optuna.create_study(
            study_name=STUDY_NAME,
            storage=storage,
            sampler=make_sampler(cfg.sampler, cfg.seed, cfg.trials, cfg.sampler_options, parallel=self.parallel),
            directions=["maximize" if d == "max" else "minimize" for _, d in self.objectives],
            load_if_exists=True,
        )
        self.study = study
        if not study.metric_names:  # named objectives for optuna-dashboard and other Optuna tools
            with heartbeat_quiet():
                study.set_metric_names([name for name, _ in self.objectives])
        recover_interrupted(study, self.grace)
        history = self._history(study)
        if history is not None:  # evaluators with memory (predictor+train) pick up what earlier runs saw
            self.evaluator.restore(history)  # type: ignore[attr-defined]
        deadline = None if cfg.timeout is None else time.monotonic() + cfg.timeout
        with Heartbeats(study, cfg.heartbeat) as beats:
            if self.ray is not None:
                self._run_on_ray(study, self.ray, beats, deadline, on_trial)
            else:
                self._run_local(study, beats, deadline, on_trial)
        write_trials_csv(study, self.run_dir / "trials.csv", self.objectives)
        return self._finish(study)

    @property
    def parallel(self) -> bool:
        """More than one trial may be in flight: Ray workers, or a shared storage other drivers may use."""
        return self.ray is not None or self.cfg.storage is not None

    @property
    def grace(self) -> float:
        """Seconds without a heartbeat after which a RUNNING trial of another host counts as orphaned."""
        return GRACE_BEATS * self.cfg.heartbeat

    def _budget_left(self, study: optuna.Study) -> tuple[int, int]:
        """(finished, running) over every driver, after failing and re-enqueuing the trials of dead owners."""
        recover_interrupted(study, self.grace)
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        return count_finished(study), running

    def _run_local(
        self,
        study: optuna.Study,
        beats: Heartbeats,
        deadline: float | None,
        on_trial: Callable[[FrozenTrial | None, int, int], None] | None,
    ) -> None:
        """One trial at a time; other drivers may share the study (their running trials count as in flight)."""
        cfg = self.cfg
        if on_trial is not None:
            on_trial(None, count_finished(study), cfg.trials)
        while deadline is None or time.monotonic() < deadline:
            done, running = self._budget_left(study)
            if done >= cfg.trials:
                break
            if done + running >= cfg.trials:  # other drivers are evaluating the rest: wait for them (or their death)
                time.sleep(min(1.0, cfg.heartbeat))
                continue
            trial, arch = self._ask(study)
            beats.add(trial)
            try:
                if self._surplus(study, trial):
                    continue
                if self.fidelity is not None:
                    frozen = self._climb(study, trial, arch, self.fidelity)
                else:
                    outcome = evaluate_outcome(self.evaluator, arch, trial.user_attrs["seed"], cfg.trial_timeout)
                    frozen = self._tell(study, trial, outcome)
            finally:
                beats.remove(trial)
            write_trials_csv(study, self.run_dir / "trials.csv", self.objectives)
            if on_trial is not None:
                on_trial(frozen, count_finished(study), cfg.trials)

    @property
    def checkpoints(self) -> Path:
        """Where multi-fidelity candidates keep their trainer state between rungs (``models/ckpt``)."""
        return self.run_dir / "models" / "ckpt"

    def _rung_job(self, trial: optuna.Trial, index: int, fidelity: Fidelity) -> RungJob:
        """Rung ``index`` of ``trial``, recorded as its ``target_rung`` (a redo continues towards it). The checkpoint
        is named by architecture and seed, which a redo keeps."""
        trial.set_user_attr("target_rung", index)
        first = not rung_records(trial)
        return RungJob(budget=fidelity.budget(index), top=fidelity.top, first=first, name=self._ckpt_name(trial))

    @staticmethod
    def _ckpt_name(trial: optuna.Trial) -> str:
        return f"{arch_digest(trial.user_attrs['arch'])}-{trial.user_attrs['seed']}.ckpt"

    def _climb(self, study: optuna.Study, trial: optuna.Trial, arch: Any, fidelity: Fidelity) -> FrozenTrial:
        """The local loop's multi-fidelity trial: rung after rung while it is promoted."""
        index = int(trial.user_attrs.get("target_rung", 0))
        while True:
            job = self._rung_job(trial, index, fidelity)
            seed = trial.user_attrs["seed"]
            outcome = evaluate_outcome(self.evaluator, arch, seed, self.cfg.trial_timeout, job, self.checkpoints)
            frozen = self._after_rung(study, trial, index, outcome, fidelity)
            if frozen is not None:
                return frozen
            index += 1

    def _after_rung(
        self, study: optuna.Study, trial: optuna.Trial, index: int, outcome: Outcome, fidelity: Fidelity
    ) -> FrozenTrial | None:
        """Record rung ``index``'s figures and decide: None when the trial is promoted to the next rung, else the
        finished trial (completed at the top rung, pruned when stopped, or failed/screened by its evaluation)."""
        budget = fidelity.budget(index)
        name = self._ckpt_name(trial)
        if outcome.status != "complete":
            (self.checkpoints / name).unlink(missing_ok=True)
            return self._tell(study, trial, outcome)
        records = rung_records(trial)
        previous = records.get(str(fidelity.budget(index - 1)), {}) if index > 0 else {}
        metrics = {**previous, **outcome.metrics, "rung_cpu_seconds": outcome.cpu_seconds}
        records[str(budget)] = metrics
        with heartbeat_quiet():
            trial.set_user_attr("rungs", records)
        if index == len(fidelity.rungs) - 1:
            (self.checkpoints / name).unlink(missing_ok=True)
            return self._tell(study, trial, Outcome("complete", metrics, worker=outcome.worker))
        promoted, why = decide(study, trial.number, metrics, budget, self.objectives, fidelity)
        log.info("trial %d %s", trial.number, why)
        with heartbeat_quiet():
            trial.set_user_attr("promotions", [*trial.user_attrs.get("promotions", []), why])
        if promoted:
            return None
        (self.checkpoints / name).unlink(missing_ok=True)
        return self._tell(study, trial, Outcome("stopped", metrics, reason=why, worker=outcome.worker))

    def _surplus(self, study: optuna.Study, trial: optuna.Trial) -> bool:
        """Whether the budget is already covered by trials asked before ``trial`` (by any driver): finished ones,
        running ones and enqueued redos. A surplus trial is told failed (``surplus``, not counted), never run."""
        ahead = sum(
            1
            for t in study.get_trials(deepcopy=False)
            if t.number < trial.number and (counts(t) or t.state in (TrialState.RUNNING, TrialState.WAITING))
        )
        if ahead < self.cfg.trials:
            return False
        trial.set_user_attr("surplus", f"{ahead} earlier trials cover the budget of {self.cfg.trials}")
        with heartbeat_quiet():
            study.tell(trial, state=TrialState.FAIL)
        return True

    def _run_on_ray(
        self,
        study: optuna.Study,
        options: RayOptions,
        beats: Heartbeats,
        deadline: float | None,
        on_trial: Callable[[FrozenTrial | None, int, int], None] | None,
    ) -> None:
        """The ask/tell loop with at most ``workers`` evaluations in flight as Ray tasks.

        A trial is counted against the budget while in flight, so the search never finishes more than
        ``cfg.trials``. A task whose worker or node died is re-run by Ray (``MAX_RETRIES``), then resubmitted
        here (``RESUBMITS``); after that its trial fails with the reason and the search goes on. An exception the
        evaluation raised is an outcome (a failed trial), never retried. An evaluation longer than ``trial_timeout``
        stops itself and its trial fails with that reason (`backstop_s`: the driver cancels a task that cannot).
        """
        cfg = self.cfg
        job = {
            "space": cfg.space,
            "space_options": cfg.space_options,
            "evaluator": cfg.evaluator,
            "evaluator_options": {
                **self.evaluator_options,
                "data_dir": str(Path(cfg.data_dir).resolve()) if cfg.data_dir else None,
            },
        }
        with RayBackend(options, job) as backend:
            atomic_write(self.run_dir / "ray.json", json.dumps(backend.describe(), indent=2) + "\n")
            if on_trial is not None:
                on_trial(None, count_finished(study), cfg.trials)
            # task -> (trial, submissions, started, rung index: multi-fidelity only)
            in_flight: dict[Any, tuple[optuna.Trial, int, float, int]] = {}
            fidelity = self.fidelity

            def submit(trial: optuna.Trial, submissions: int, index: int = 0) -> None:
                job, checkpoint = None, None
                if fidelity is not None:  # the rung's checkpoint travels with the task: any worker may continue
                    job = self._rung_job(trial, index, fidelity)
                    path = self.checkpoints / job.name
                    checkpoint = path.read_bytes() if path.is_file() else None
                ref = backend.submit(
                    trial.user_attrs["arch"], trial.user_attrs["seed"], self._history(study), cfg.trial_timeout,
                    job, checkpoint,
                )  # fmt: skip
                in_flight[ref] = (trial, submissions + 1, time.monotonic(), index)

            def finish(trial: optuna.Trial, outcome: Outcome, index: int = 0) -> None:
                if fidelity is not None:
                    if outcome.checkpoint is not None:
                        atomic_write(self.checkpoints / self._ckpt_name(trial), outcome.checkpoint)
                        outcome.checkpoint = None
                    done = self._after_rung(study, trial, index, outcome, fidelity)
                    if done is None:  # promoted: its next rung goes to whichever worker is free
                        submit(trial, 0, index + 1)
                        write_trials_csv(study, self.run_dir / "trials.csv", self.objectives)
                        return
                    frozen = done
                else:
                    frozen = self._tell(study, trial, outcome)
                beats.remove(trial)
                write_trials_csv(study, self.run_dir / "trials.csv", self.objectives)
                if on_trial is not None:
                    on_trial(frozen, count_finished(study), cfg.trials)

            while True:
                open_for_more = deadline is None or time.monotonic() < deadline
                done, running = self._budget_left(study)
                while open_for_more and len(in_flight) < backend.workers and done + running < cfg.trials:
                    trial, _ = self._ask(study)
                    beats.add(trial)
                    if self._surplus(study, trial):
                        beats.remove(trial)
                        break
                    submit(trial, 0, int(trial.user_attrs.get("target_rung", 0)))
                    running += 1
                if not in_flight:
                    if done >= cfg.trials or not open_for_more:
                        break
                    time.sleep(min(1.0, cfg.heartbeat))  # other drivers hold the rest of the budget
                    continue
                wait = None
                backstop = None if cfg.trial_timeout is None else backstop_s(cfg.trial_timeout)
                if backstop is not None:
                    first = min(started for _, _, started, _ in in_flight.values())
                    wait = max(0.0, first + backstop - time.monotonic())
                ref = backend.next_ready(list(in_flight), timeout=wait)
                if ref is None:  # a task neither finished nor stopped itself long after its limit: stop it here
                    assert backstop is not None
                    now = time.monotonic()
                    for late in [r for r, (_, _, t0, _) in in_flight.items() if now - t0 >= backstop]:
                        trial, _, _, _ = in_flight.pop(late)
                        backend.cancel(late)
                        reason = (
                            f"timed out after {cfg.trial_timeout:g} s (trial_timeout; cancelled after {backstop:g} s)"
                        )
                        finish(trial, Outcome("failed", reason=reason))
                    continue
                trial, submissions, _, index = in_flight.pop(ref)
                try:
                    outcome = backend.result(ref)
                except WorkerLost as exc:
                    if submissions <= RESUBMITS:
                        log.warning("trial %d: %s; submitting it again", trial.number, exc)
                        trial.set_user_attr("resubmitted", submissions)
                        submit(trial, submissions, index)
                        continue
                    outcome = Outcome("failed", reason=f"worker lost ({submissions} submissions): {exc}")
                self._keep_files(outcome)
                finish(trial, outcome, index)
            atomic_write(self.run_dir / "ray.json", json.dumps(backend.describe(), indent=2) + "\n")

    def _keep_files(self, outcome: Outcome) -> None:
        """Write the artifacts a task returned (trained weights) into this run's ``models/``: tasks never write into
        the run directory, which their node may not share."""
        for name, data in outcome.files.items():
            atomic_write(self.run_dir / "models" / Path(name).name, data)
        outcome.files = {}

    def _history(self, study: optuna.Study) -> list[dict[str, float]] | None:
        """For evaluators with memory (``restore``): the metrics of every trial told so far, else None."""
        if getattr(self.evaluator, "restore", None) is None:
            return None
        return [t.user_attrs["metrics"] for t in study.get_trials(deepcopy=False) if "metrics" in t.user_attrs]

    def _ask(self, study: optuna.Study) -> tuple[optuna.Trial, Any]:
        """A new trial with its architecture (the ``arch`` user attribute) and its training seed (``seed``, from
        the search seed and the trial number). A redo of an interrupted trial keeps both."""
        with heartbeat_quiet():
            trial = study.ask()
        if "arch" in trial.user_attrs:  # an enqueued redo (any sampler, coarse-to-fine included)
            arch = self.space.decode(trial.user_attrs["arch"])
        else:
            arch = self._propose(study, trial)
            trial.set_user_attr("arch", self.space.encode(arch))
        if "seed" not in trial.user_attrs:
            trial.set_user_attr("seed", trial_seed(self.cfg.seed, trial.number))
        return trial, arch

    def _tell(self, study: optuna.Study, trial: optuna.Trial, outcome: Outcome) -> FrozenTrial:
        with heartbeat_quiet():
            return self._tell_quiet(study, trial, outcome)

    def _tell_quiet(self, study: optuna.Study, trial: optuna.Trial, outcome: Outcome) -> FrozenTrial:
        try:
            if outcome.worker:
                trial.set_user_attr("worker", outcome.worker)
            if outcome.status == "failed":
                log.warning("trial %d failed: %s", trial.number, outcome.reason)
                if outcome.traceback:
                    trial.set_user_attr("traceback", outcome.traceback)
                trial.set_user_attr("fail_reason", outcome.reason)
                return study.tell(trial, state=TrialState.FAIL)
            if outcome.status == "stopped":  # multi-fidelity: not promoted past a lower rung
                trial.set_user_attr("stopped", outcome.reason)
                trial.set_user_attr("metrics", outcome.metrics)
                return study.tell(trial, state=TrialState.PRUNED)
            if outcome.status == "screened":
                trial.set_user_attr("screened", outcome.reason)
                trial.set_user_attr("metrics", outcome.metrics)
                return study.tell(trial, state=TrialState.PRUNED)
            trial.set_user_attr("metrics", outcome.metrics)
            return study.tell(trial, [outcome.metrics[name] for name, _ in self.objectives])
        except optuna.exceptions.UpdateFinishedTrialError:
            # Our heartbeat went silent past the grace period (a long pause), another driver failed the trial
            # and enqueued its redo: that redo's result counts, this one is dropped (never counted twice).
            log.warning("trial %d was taken over by another driver; its result here is dropped", trial.number)
            return study._storage.get_trial(trial._trial_id)

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
        images: Any = getattr(self.evaluator, "data", None) or getattr(
            getattr(self.evaluator, "expensive", None), "data", None
        )
        summary = getattr(images, "summary", None)
        if callable(summary):  # the image data set trained on: classes, sizes, normalisation
            data["data"] = summary()
        atomic_write(self.run_dir / "config.yaml", yaml.safe_dump(data, sort_keys=False))

    def _finish(self, study: optuna.Study) -> SearchResult:
        from onnx_bench.export import export_onnx

        members = []
        for t in pareto_front(study):
            arch = self.space.decode(t.user_attrs["arch"])
            artifacts = getattr(self.evaluator, "artifacts", None)
            missing = [p for p in artifacts(arch) if not p.is_file()] if callable(artifacts) else []
            if missing:  # never export untrained weights under a trained network's name
                raise RuntimeError(
                    f"trial {t.number}'s trained weights {missing[0]} are missing: the front cannot be exported"
                )
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
        failed = sum(1 for t in study.trials if t.state == TrialState.FAIL and "fail_reason" in t.user_attrs)
        return SearchResult(self.run_dir, len(complete), failed, members)
