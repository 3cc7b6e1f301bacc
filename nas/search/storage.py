"""Where a study lives: a journal file in the run directory by default, any Optuna storage URL otherwise."""

from __future__ import annotations

from pathlib import Path

import optuna
import optuna.storages.journal

STUDY_NAME = "nas"


def make_storage(url: str | None, run_dir: Path) -> optuna.storages.BaseStorage | str:
    if url is None:
        backend = optuna.storages.journal.JournalFileBackend(str(run_dir / "study.journal"))
        return optuna.storages.journal.JournalStorage(backend)
    return url
