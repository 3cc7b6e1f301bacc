"""Where a study lives: a journal file in the run directory by default, any Optuna storage URL otherwise."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import optuna.storages.journal

from nas.search.recovery import RedoCallback, heartbeat_quiet

STUDY_NAME = "nas"
GRACE_BEATS = 6  # a trial whose heartbeat has been silent this many intervals has lost its owner


def make_storage(url: str | None, run_dir: Path, heartbeat: float = 10.0) -> optuna.storages.BaseStorage:
    """The journal file ``run_dir/study.journal``, or the RDB storage at ``url`` with Optuna's heartbeat (every
    ``heartbeat`` seconds; stale after `GRACE_BEATS` of them) and a redo of each stale trial."""
    if url is None:
        backend = optuna.storages.journal.JournalFileBackend(str(run_dir / "study.journal"))
        return optuna.storages.journal.JournalStorage(backend)
    interval = max(1, math.ceil(heartbeat))  # Optuna counts whole seconds
    with heartbeat_quiet():
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=interval,
            grace_period=GRACE_BEATS * interval,
            heartbeat_stale_trial_callback=RedoCallback(),
        )
