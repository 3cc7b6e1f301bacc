"""Evaluations as Ray tasks: a local Ray runtime started here, or an existing cluster (``nas search --workers``).

The driver (`nas.search.Search`) owns the Optuna study and proposes every architecture; a task receives only
plain data (the encoded architecture and the names and options of the space and the evaluator), rebuilds the
space and the evaluator once per worker process, and returns an `Outcome`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import signal
import socket
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from nas.evaluators import Evaluator, Screened, TrialFailed, make_evaluator
from nas_ground.errors import UserInputError
from search_spaces import SearchSpace, get_space

log = logging.getLogger(__name__)

MAX_RETRIES = 2  # Ray re-runs a task whose worker process or node died this many times ...
RESUBMITS = 1  # ... then the driver submits the trial this many times more before it fails it
STALL_CHECK_S = 30.0  # how often a driver waiting on its tasks checks that some node can still run one
ADDRESS = re.compile(r"auto|(ray://)?[^\s:/]+:\d+")


@dataclass(frozen=True)
class RayOptions:
    """Where the tasks run and what each one holds (``--workers``, ``--ray-address``, ``--*-per-trial``)."""

    workers: int | None = None  # trials in flight; None: as many as the cluster has slots for
    address: str | None = None  # None: start a local runtime; "auto", "HOST:PORT" or "ray://HOST:PORT"
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise UserInputError(f"workers={self.workers} must be >= 1")
        if self.address is not None and not ADDRESS.fullmatch(self.address):
            raise UserInputError(f"bad Ray address {self.address!r}: write auto, HOST:PORT or ray://HOST:PORT")
        if not self.cpus_per_trial > 0:
            raise UserInputError(f"cpus_per_trial={self.cpus_per_trial} must be > 0")
        if not self.gpus_per_trial >= 0:
            raise UserInputError(f"gpus_per_trial={self.gpus_per_trial} must be >= 0")


@dataclass
class Outcome:
    """One evaluation as plain data: what a task returns and what the study is told."""

    status: str  # "complete"; "failed" (any exception of the evaluation: reason, traceback); "screened"
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    worker: dict[str, Any] = field(default_factory=dict)  # where it ran (tasks only): node id, host, pid
    traceback: str = ""  # a failure other than TrialFailed: where it was raised
    files: dict[str, bytes] = field(default_factory=dict)  # tasks: artifacts (trained weights), by file name
    checkpoint: bytes | None = None  # tasks of a multi-fidelity rung: the trainer state to continue from
    cpu_seconds: float = 0.0  # process CPU time of the evaluation (every thread of the process that ran it)


@dataclass(frozen=True)
class RungJob:
    """One rung of a multi-fidelity candidate (`nas.search.fidelity`): train until ``budget`` epochs of a
    ``top``-epoch schedule, continuing from the checkpoint file ``name`` (in the evaluating process's checkpoint
    folder). ``first``: the candidate's first rung (costs are measured, a screened evaluator screens)."""

    budget: int
    top: int
    first: bool
    name: str


class TrialTimeout(TrialFailed):
    """The evaluation ran past the trial's time limit."""


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise `TrialTimeout` in the block after ``seconds`` (SIGALRM: the main thread of a Unix process, as a Ray
    task and the local loop run; elsewhere no limit is set here and the driver's backstop applies)."""
    usable = seconds is not None and hasattr(signal, "setitimer")
    usable = usable and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return
    assert seconds is not None

    def expire(signum: int, frame: Any) -> None:
        raise TrialTimeout(f"timed out after {seconds:g} s (trial_timeout)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def evaluate_outcome(
    evaluator: Evaluator,
    arch: Any,
    seed: int | None = None,
    timeout: float | None = None,
    rung: RungJob | None = None,
    checkpoints: Path | None = None,
) -> Outcome:
    """Evaluate ``arch`` (training seeded by ``seed``, stopped after ``timeout`` seconds); every way an evaluation
    can end is an outcome: completed, screened out, or failed with its reason; an exception other than
    `TrialFailed` (a bug, CUDA out of memory, a corrupt cached file) fails the trial with its traceback instead of
    stopping the search. With ``rung``, one rung of multi-fidelity training (checkpoint file in ``checkpoints``)."""
    cpu = time.process_time()
    try:
        with time_limit(timeout):
            if rung is None:
                metrics = evaluator.evaluate(arch, seed=seed)
            else:
                assert checkpoints is not None
                checkpoints.mkdir(parents=True, exist_ok=True)
                metrics = evaluator.evaluate_rung(  # type: ignore[attr-defined]
                    arch, seed=seed, budget=rung.budget, top=rung.top, first=rung.first,
                    checkpoint=checkpoints / rung.name,
                )  # fmt: skip
    except TrialFailed as exc:
        return Outcome("failed", reason=str(exc))
    except Screened as exc:
        return Outcome("screened", dict(exc.metrics), str(exc))
    except Exception as exc:  # anything else the evaluation raised belongs to this trial alone
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        reason = f"{type(exc).__name__}: {first}"[:500] if first else type(exc).__name__
        return Outcome("failed", reason=reason, traceback=traceback.format_exc()[-8000:])
    return Outcome("complete", metrics, cpu_seconds=time.process_time() - cpu)


class WorkerLost(RuntimeError):
    """A task's worker process or node died (after Ray's own retries), or its result was lost."""


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a HOST:PORT nothing listens on (Ray itself would retry for minutes)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UserInputError(f"cannot connect to the Ray cluster at {address!r}: {exc.strerror or exc}") from exc


# Worker side: the space and evaluator of the last job this worker process saw, keyed by the job's JSON.
_CACHE: dict[str, tuple[SearchSpace[Any], Evaluator]] = {}
_SCRATCH: dict[str, Path] = {}


def _evaluate_task(
    job: str,
    arch: str,
    seed: int,
    threads: int,
    history: list[dict[str, float]] | None,
    timeout: float | None,
    rung: dict[str, Any] | None = None,
    checkpoint: bytes | None = None,
) -> Outcome:
    """A Ray task: rebuild (once per process) the job's space and evaluator, seed, evaluate ``arch``; the outcome
    carries the files the evaluation wrote (trained weights), for a driver that does not share this filesystem.
    A multi-fidelity rung (``rung``: a `RungJob` as a dict) starts from the ``checkpoint`` bytes the driver sent and
    returns the new checkpoint in the outcome: a promoted candidate may continue on any worker."""
    import numpy as np
    import ray
    import torch

    if job not in _CACHE:
        _CACHE.clear()  # one evaluator per process: a training evaluator holds its data set
        _SCRATCH.clear()
        spec = json.loads(job)
        space = get_space(spec["space"], **spec["space_options"])
        # Artifacts go to this node's scratch space, never straight into the run directory (which this node may not
        # see): the driver writes what the outcome carries into its own run directory.
        scratch = tempfile.mkdtemp(prefix="nas-task-")
        options = {**spec["evaluator_options"], "artifacts_dir": scratch}
        _CACHE[job] = (space, make_evaluator(spec["evaluator"], space, **options))
        _SCRATCH[job] = Path(scratch)
    space, evaluator = _CACHE[job]
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    if history is not None:
        evaluator.restore(history)  # type: ignore[attr-defined]
    start = time.perf_counter()
    decoded = space.decode(arch)
    job_rung, checkpoints = None, _SCRATCH[job] / "ckpt"
    if rung is not None:
        job_rung = RungJob(**rung)
        checkpoints.mkdir(parents=True, exist_ok=True)
        ckpt = checkpoints / job_rung.name
        if checkpoint is not None:
            ckpt.write_bytes(checkpoint)
        else:
            ckpt.unlink(missing_ok=True)
    outcome = evaluate_outcome(evaluator, decoded, seed, timeout, job_rung, checkpoints)  # clock starts after setup
    if job_rung is not None:
        ckpt = checkpoints / job_rung.name
        if ckpt.is_file():
            if outcome.status == "complete":
                outcome.checkpoint = ckpt.read_bytes()
            ckpt.unlink()
    artifacts = getattr(evaluator, "artifacts", None)
    if callable(artifacts):  # written to this node's scratch directory: they travel back with the outcome
        for path in artifacts(decoded):
            if path.is_file():
                if outcome.status == "complete":
                    outcome.files[path.name] = path.read_bytes()
                path.unlink()
    outcome.worker = {
        "node": ray.get_runtime_context().get_node_id(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "seconds": round(time.perf_counter() - start, 6),
    }
    return outcome


def _system_error(exc: BaseException) -> bool:
    """Infrastructure, not the evaluation: a dead worker or node, a lost object, an unschedulable task."""
    import ray.exceptions as rex

    if isinstance(exc, rex.RayTaskError):
        return isinstance(exc.cause, rex.RayError) and not isinstance(exc.cause, rex.RayTaskError)
    return isinstance(exc, rex.RayError)


class RayBackend:
    """A driver's connection to Ray: start or join the runtime, submit evaluations, collect their outcomes.

    Use as a context manager: on exit, tasks still in flight are cancelled and the connection is closed
    (a runtime started here shuts down with it).
    """

    def __init__(self, options: RayOptions, job: dict[str, Any]) -> None:
        self.options = options
        self.job = json.dumps(job, sort_keys=True)
        self.workers = options.workers or 1
        self.threads = max(1, int(options.cpus_per_trial))
        self.init_seconds = 0.0
        self._owns_connection = False
        self._started_here = False
        self._remote: Any = None
        self._pending: set[Any] = set()

    def __enter__(self) -> RayBackend:
        import ray

        opts = self.options
        start = time.perf_counter()
        if not ray.is_initialized():
            if opts.address is None:
                ray.init(
                    address="local",  # a new runtime on this machine, never a cluster found by accident
                    num_cpus=math.ceil(self.workers * opts.cpus_per_trial),
                    num_gpus=None if opts.gpus_per_trial > 0 else 0,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
                self._started_here = True
            else:
                check_reachable(opts.address)
                try:
                    ray.init(address=opts.address, log_to_driver=False, logging_level=logging.WARNING)
                except ConnectionError as exc:
                    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise UserInputError(f"cannot connect to the Ray cluster at {opts.address!r}: {reason}") from exc
            self._owns_connection = True
        self.init_seconds = time.perf_counter() - start
        try:
            self._check_capacity(strict=self._started_here)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        if opts.workers is None:
            self.workers = max(1, self.slots())
        self._remote = ray.remote(_evaluate_task).options(
            num_cpus=opts.cpus_per_trial,
            num_gpus=opts.gpus_per_trial,
            max_retries=MAX_RETRIES,
            retry_exceptions=False,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        for ref in self._pending:  # left RUNNING in the study: a resumed search redoes them
            try:
                ray.cancel(ref, force=True)
            except Exception as err:  # cancelling is best effort; the connection may be gone already
                log.debug("cancel failed: %s", err)
        self._pending.clear()
        if self._owns_connection:
            ray.shutdown()
            self._owns_connection = False

    def submit(
        self,
        arch: str,
        seed: int,
        history: list[dict[str, float]] | None = None,
        timeout: float | None = None,
        rung: RungJob | None = None,
        checkpoint: bytes | None = None,
    ) -> Any:
        """Start evaluating an architecture with training seed ``seed``, stopped by the task itself after
        ``timeout`` seconds of evaluation (a multi-fidelity ``rung``: from ``checkpoint``); returns the task's
        reference."""
        spec = None if rung is None else asdict(rung)
        ref = self._remote.remote(self.job, arch, seed, self.threads, history, timeout, spec, checkpoint)
        self._pending.add(ref)
        return ref

    def next_ready(self, refs: list[Any], timeout: float | None = None) -> Any:
        """Block until one of ``refs`` is done and return it, or None after ``timeout`` seconds. Warns while no
        live node could run a task."""
        import ray

        end = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = STALL_CHECK_S if end is None else max(0.0, min(STALL_CHECK_S, end - time.monotonic()))
            ready, _ = ray.wait(refs, num_returns=1, timeout=wait)
            if ready:
                return ready[0]
            if end is not None and time.monotonic() >= end:
                return None
            self._check_capacity(strict=self._started_here)

    def cancel(self, ref: Any) -> None:
        """Stop a task (its worker process is killed; Ray starts another)."""
        import ray

        self._pending.discard(ref)
        try:
            ray.cancel(ref, force=True)
        except Exception as err:  # best effort: the task may have finished meanwhile
            log.debug("cancel failed: %s", err)

    def result(self, ref: Any) -> Outcome:
        """The outcome of a finished task. Raises `WorkerLost` for infrastructure failures; an exception the
        evaluator raised (other than TrialFailed/Screened, which are outcomes) is raised again here, as the
        local loop would."""
        import ray
        import ray.exceptions as rex

        self._pending.discard(ref)
        try:
            outcome: Outcome = ray.get(ref)
        except rex.RayError as exc:
            if _system_error(exc):
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise WorkerLost(f"{type(exc).__name__}: {first}"[:300]) from exc
            if isinstance(exc, rex.RayTaskError) and isinstance(exc.cause, BaseException):
                raise exc.cause from exc
            raise
        return outcome

    def slots(self) -> int:
        """Tasks the live nodes can run at once with the per-trial resources."""
        opts = self.options
        total = 0
        for node in self._alive_nodes():
            res = node.get("Resources", {})
            n = math.floor(res.get("CPU", 0.0) / opts.cpus_per_trial + 1e-9)
            if opts.gpus_per_trial > 0:
                n = min(n, math.floor(res.get("GPU", 0.0) / opts.gpus_per_trial + 1e-9))
            total += n
        return total

    def _alive_nodes(self) -> list[dict[str, Any]]:
        import ray

        return [n for n in ray.nodes() if n.get("Alive")]

    def _check_capacity(self, strict: bool) -> None:
        if self.slots() > 0:
            return
        opts = self.options
        need = f"CPU {opts.cpus_per_trial:g}" + (f", GPU {opts.gpus_per_trial:g}" if opts.gpus_per_trial else "")
        have = [{k: v for k, v in n.get("Resources", {}).items() if k in ("CPU", "GPU")} for n in self._alive_nodes()]
        message = f"no live Ray node can run a trial (each needs {need}); nodes have {have}"
        if strict:
            raise UserInputError(message)
        log.warning("%s; waiting for the cluster to scale up", message)

    def describe(self) -> dict[str, Any]:
        """The resources in use, for ``ray.json`` in the run directory."""
        import ray

        try:
            address = ray.get_runtime_context().gcs_address
        except Exception:  # Ray Client connections do not expose it
            address = self.options.address
        nodes = [
            {
                "node_id": n.get("NodeID"),
                "address": n.get("NodeManagerAddress"),
                "alive": bool(n.get("Alive")),
                "CPU": n.get("Resources", {}).get("CPU", 0.0),
                "GPU": n.get("Resources", {}).get("GPU", 0.0),
            }
            for n in ray.nodes()
        ]
        alive = [n for n in nodes if n["alive"]]
        return {
            "ray": ray.__version__,
            "address": address,
            "started_here": self._started_here,
            "init_seconds": round(self.init_seconds, 3),
            "workers": self.workers,
            **{k: v for k, v in asdict(self.options).items() if k.endswith("_per_trial")},
            "torch_threads_per_trial": self.threads,
            "max_retries": MAX_RETRIES,
            "resubmits": RESUBMITS,
            "cluster": {
                "nodes": len(alive),
                "CPU": sum(n["CPU"] for n in alive),
                "GPU": sum(n["GPU"] for n in alive),
            },
            "nodes": nodes,
            "written": datetime.now().isoformat(timespec="seconds"),
        }
