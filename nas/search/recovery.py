"""The trial lifecycle across runs: which trials count towards the budget, and redoing those a killed run left."""

from __future__ import annotations

import logging

import optuna
from optuna.trial import TrialState

log = logging.getLogger(__name__)


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
