"""The trial lifecycle across processes: who owns a RUNNING trial, which trials count, redoing orphans.

Every driver marks the trials it evaluates with its identity (``nas:owner``: host, pid, process start time) and
keeps them alive with a heartbeat while they run: Optuna's own (``RDBStorage(heartbeat_interval=...)``) on an RDB
storage, and the same idea on a journal file (a ``nas:heartbeat`` system attribute, the wall-clock time of the last
beat). A RUNNING trial is *orphaned* when its heartbeat is older than the grace period, or at once when its owner
ran on this host and that process is gone. An orphan is failed (``interrupted``; it does not count towards the
budget) and a copy of it is enqueued (Optuna's `RetryHeartbeatStaleTrialCallback`, with ``redo_of``), so the next
``ask`` of any driver redoes its architecture. Trials of live drivers are never touched.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import optuna
import psutil
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)

OWNER = "nas:owner"
BEAT = "nas:heartbeat"
MAX_REDO = 3  # an architecture whose evaluation kills its process is redone this many times, then left failed


@contextmanager
def heartbeat_quiet() -> Iterator[None]:
    """Silence Optuna's warnings that its heartbeat is meant for ``Study.optimize`` (we drive it with ask/tell)
    and that ``fail_stale_trials`` is experimental."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        yield


def process_identity(pid: int | None = None) -> dict[str, Any]:
    """This (or ``pid``'s) process: host name, pid and start time (a reused pid has another start time)."""
    proc = psutil.Process(pid or os.getpid())
    return {"host": socket.gethostname(), "pid": proc.pid, "start": round(proc.create_time(), 2)}


def owner_gone(owner: dict[str, Any] | None) -> bool:
    """True when ``owner`` ran on this host and that process no longer exists (unknowable for other hosts)."""
    if not owner or owner.get("host") != socket.gethostname():
        return False
    try:
        return process_identity(int(owner["pid"]))["start"] != owner.get("start")
    except (psutil.Error, KeyError, ValueError):
        return True


class RedoCallback(RetryHeartbeatStaleTrialCallback):
    """`RetryHeartbeatStaleTrialCallback` that also records ``redo_of`` (the failed trial's number) on the copy."""

    def __init__(self) -> None:
        with heartbeat_quiet():
            super().__init__(max_retry=MAX_REDO)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trial = copy.deepcopy(trial)
        trial.user_attrs = {
            k: v for k, v in trial.user_attrs.items() if k not in ("interrupted", "worker", "resubmitted")
        }
        trial.user_attrs["redo_of"] = trial.number
        trial.system_attrs = {k: v for k, v in trial.system_attrs.items() if k not in (OWNER, BEAT)}
        super().__call__(study, trial)


def native_heartbeat(study: optuna.Study) -> bool:
    """Whether the study's storage keeps Optuna's own heartbeat (an RDB storage opened with one)."""
    storage = study._storage
    return isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage)


def beat(study: optuna.Study, trial_id: int) -> None:
    """One heartbeat of a RUNNING trial (ignored once the trial has finished)."""
    storage = study._storage
    try:
        if native_heartbeat(study):
            storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
        else:
            storage.set_trial_system_attr(trial_id, BEAT, time.time())
    except optuna.exceptions.UpdateFinishedTrialError:
        pass


def claim(study: optuna.Study, trial: optuna.Trial) -> None:
    """Mark ``trial`` as this process's and record its first heartbeat."""
    study._storage.set_trial_system_attr(trial._trial_id, OWNER, process_identity())
    beat(study, trial._trial_id)


def _orphaned(t: FrozenTrial, grace: float, now: float) -> bool:
    if owner_gone(t.system_attrs.get(OWNER)):
        return True
    last = t.system_attrs.get(BEAT)
    if last is None:  # a trial of a version without heartbeats, or one killed between ask and claim
        last = t.datetime_start.timestamp() if t.datetime_start else 0.0
    return now - float(last) > grace


def recover_interrupted(study: optuna.Study, grace: float = 0.0) -> list[int]:
    """Fail the RUNNING trials whose owner is gone and enqueue a redo of each; return their numbers.

    ``grace``: seconds without a heartbeat after which a trial of another host counts as orphaned (on an RDB
    storage with Optuna's heartbeat, the storage's own grace period applies). ``grace=0`` fails every RUNNING
    trial: right only when no other driver can be running (the single-process default of older versions).
    """
    storage = study._storage
    redo = RedoCallback()
    native = native_heartbeat(study)
    stale: set[int] = set()  # failed by Optuna's heartbeat check (its callback, RedoCallback, re-enqueues them)
    if native:
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        with heartbeat_quiet():
            optuna.storages.fail_stale_trials(study)
        failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        stale = {t.number for t in failed if t.number in before and "fail_reason" not in t.user_attrs}
    redone: list[int] = []
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if native and not owner_gone(t.system_attrs.get(OWNER)):
            continue  # Optuna's heartbeat decides for trials of other hosts
        if grace > 0 and not _orphaned(t, grace, now):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another driver failed it (or its owner finished it) first
        redo(study, storage.get_trial(t._trial_id))
        redone.append(t.number)
    redone = sorted(set(redone) | stale)
    if redone:
        log.info("failed the interrupted trials %s (owner gone); they will be redone", redone)
    return redone


def count_finished(study: optuna.Study) -> int:
    """Trials that count towards the budget: completed, pruned (screened out without training), or failed by
    their own evaluation (a ``fail_reason``; an interrupted trial has none: its redo counts instead)."""
    return sum(1 for t in study.get_trials(deepcopy=False) if counts(t))


def counts(t: FrozenTrial) -> bool:
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        t.state == TrialState.FAIL and "fail_reason" in t.user_attrs
    )


class Heartbeats:
    """A daemon thread beating every ``interval`` seconds for the trials this driver has in flight."""

    def __init__(self, study: optuna.Study, interval: float) -> None:
        self.study, self.interval = study, interval
        self._ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nas-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeats:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def add(self, trial: optuna.Trial) -> None:
        claim(self.study, trial)
        with self._lock:
            self._ids.add(trial._trial_id)

    def remove(self, trial: optuna.Trial) -> None:
        with self._lock:
            self._ids.discard(trial._trial_id)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = sorted(self._ids)
            for trial_id in ids:
                try:
                    beat(self.study, trial_id)
                except Exception as exc:  # a storage hiccup must not kill the beat; the next one retries
                    log.warning("heartbeat of trial id %d failed: %s", trial_id, exc)
