"""The trial lifecycle: an evaluation that raises fails its trial only; trials are owned, kept alive by heartbeats
and redone only when their owner is gone; several drivers on one study (journal file, real PostgreSQL) reach
exactly the requested count after one is killed; one seeding rule."""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nas.evaluators import make_evaluator
from nas.search import Search, make_storage
from nas.search.config import trial_seed
from nas.search.recovery import BEAT, OWNER, count_finished, counts, process_identity, recover_interrupted
from nas.search.samplers import make_sampler
from nas_ground.atomic import atomic_path
from search_spaces import get_space
from tests import postgres
from tests.conftest import REPO
from tests.test_search import read_trials, table_config


def first_archs(tmp_path: Path, data_dir: Path, n: int, **over) -> list[str]:
    """The architectures a search with these settings proposes first (same seed, same sampler, same order)."""
    result = Search(table_config(tmp_path / "probe", data_dir, trials=n, **over)).run()
    assert result.completed == n
    return [r["arch"] for r in read_trials(tmp_path / "probe" / "trials.csv")]


def test_an_evaluation_that_raises_fails_its_trial_and_the_search_goes_on(tmp_path: Path, data_dir: Path):
    bad = first_archs(tmp_path, data_dir, 2, sampler="random")[1]
    run = tmp_path / "run"
    options = {"delay_s": 0.0, "raise_arch": bad}
    slow = {"evaluator": "nas.testing.SlowTableEvaluator", "evaluator_options": options, "sampler": "random"}
    result = Search(table_config(run, data_dir, trials=4, **slow)).run()
    assert (result.completed, result.failed) == (3, 1)
    study = optuna.load_study(study_name="nas", storage=make_storage(None, run))
    failed = study.trials[1]
    assert failed.state == TrialState.FAIL and failed.user_attrs["arch"] == bad
    assert failed.user_attrs["fail_reason"] == "ZeroDivisionError: an evaluator bug met on purpose"
    assert "raise ZeroDivisionError" in failed.user_attrs["traceback"]
    assert read_trials(run / "trials.csv")[1]["fail_reason"].startswith("ZeroDivisionError")
    # Resume with a larger budget: the failed trial counts, is not redone, and nothing else is either.
    result = Search(table_config(run, data_dir, trials=6, **slow)).run()
    trials = optuna.load_study(study_name="nas", storage=make_storage(None, run)).trials
    assert len(trials) == 6 and count_finished(study) == 6
    assert not any("redo_of" in t.user_attrs for t in trials)


def _dead_identity() -> dict:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    identity = process_identity(proc.pid)
    proc.kill()
    proc.wait()
    return identity


def _running(study: optuna.Study, owner: dict | None, beat: float | None) -> int:
    trial = study.ask()
    get_space("nb201").suggest(trial)
    trial.set_user_attr("arch", f"arch-{trial.number}")
    trial.set_user_attr("seed", 1000 + trial.number)
    if owner is not None:
        study._storage.set_trial_system_attr(trial._trial_id, OWNER, owner)
    if beat is not None:
        study._storage.set_trial_system_attr(trial._trial_id, BEAT, beat)
    return trial.number


def test_only_trials_whose_owner_is_gone_are_failed_and_redone(tmp_path: Path):
    study = optuna.create_study(study_name="nas", storage=make_storage(None, tmp_path), directions=["maximize"])
    now = time.time()
    elsewhere = {"host": "another-host", "pid": 1, "start": 0.0}
    live_here = _running(study, process_identity(), now)  # this process: alive
    dead_here = _running(study, _dead_identity(), now)  # this host, process gone: orphan at once
    fresh_there = _running(study, elsewhere, now - 5)  # another host, beating: alive
    silent_there = _running(study, elsewhere, now - 120)  # another host, silent past the grace: orphan
    assert sorted(recover_interrupted(study, grace=60)) == [dead_here, silent_there]
    by_number = {t.number: t for t in study.trials}
    assert by_number[live_here].state == by_number[fresh_there].state == TrialState.RUNNING
    for n in (dead_here, silent_there):
        assert by_number[n].state == TrialState.FAIL and by_number[n].user_attrs["interrupted"]
    redos = [t for t in study.trials if t.state == TrialState.WAITING]
    assert sorted(t.user_attrs["redo_of"] for t in redos) == [dead_here, silent_there]
    for t in redos:  # the redo keeps the architecture, the parameters and the training seed
        original = by_number[t.user_attrs["redo_of"]]
        assert t.user_attrs["arch"] == original.user_attrs["arch"] and t.params == original.params
        assert t.user_attrs["seed"] == original.user_attrs["seed"] and OWNER not in t.system_attrs
    assert count_finished(study) == 0  # interrupted trials do not count
    assert recover_interrupted(study, grace=60) == []  # nothing more to do


def test_optuna_heartbeat_on_an_rdb_storage_redoes_a_stale_trial(tmp_path: Path):
    storage = make_storage(f"sqlite:///{tmp_path / 'study.db'}", tmp_path, heartbeat=1)  # grace: 6 s
    study = optuna.create_study(study_name="nas", storage=storage, directions=["maximize"])
    number = _running(study, {"host": "another-host", "pid": 1, "start": 0.0}, None)
    storage.record_heartbeat(study.trials[number]._trial_id)  # type: ignore[union-attr]
    assert recover_interrupted(study, grace=6) == []  # beating: a live driver elsewhere owns it
    time.sleep(7)
    assert recover_interrupted(study, grace=6) == [number]
    trials = study.trials
    assert trials[number].state == TrialState.FAIL
    assert [t.user_attrs["redo_of"] for t in trials if t.state == TrialState.WAITING] == [number]


@pytest.mark.slow  # ~30 s: BigNAS children scored by a proxy
def test_a_redo_of_an_interrupted_coarse_to_fine_child_evaluates_that_child(tmp_path: Path, data_dir: Path):
    from nas.search import SearchConfig

    cfg = SearchConfig(
        space="bignas",
        evaluator="proxy:params",
        sampler="coarse2fine",
        trials=3,
        run_dir=str(tmp_path / "c2f"),
        data_dir=str(data_dir),
        evaluator_options={"batch_size": 4},
    )
    Search(cfg).run()
    study = optuna.load_study(study_name="nas", storage=make_storage(None, tmp_path / "c2f"))
    orphan = study.ask()
    orphan.set_user_attr("arch", study.trials[0].user_attrs["arch"])  # a killed run was evaluating this child
    cfg.trials = 4
    Search(cfg).run()
    trials = optuna.load_study(study_name="nas", storage=make_storage(None, tmp_path / "c2f")).trials
    redo = [t for t in trials if t.user_attrs.get("redo_of") == orphan.number]
    assert len(redo) == 1 and redo[0].state == TrialState.COMPLETE
    assert redo[0].user_attrs["arch"] == study.trials[0].user_attrs["arch"]


@pytest.fixture(scope="module")
def postgres_admin() -> Iterator[str]:
    reason = postgres.missing_reason()
    if reason:
        pytest.skip(f"PostgreSQL tests skipped: {reason}")
    with postgres.postgres_server() as url:
        yield url


def finished_count(url: str) -> int:
    try:
        study = optuna.load_study(study_name="nas", storage=url)
    except KeyError:  # not created yet
        return 0
    return sum(1 for t in study.get_trials(deepcopy=False) if counts(t))


@pytest.mark.parametrize(
    "storage", [pytest.param("journal", marks=pytest.mark.slow), "postgresql"]
)  # the default suite keeps the PostgreSQL case (CI installs PostgreSQL); -m slow runs the journal file too
def test_two_drivers_one_killed_reach_exactly_the_requested_trials(
    tmp_path: Path, data_dir: Path, storage: str, request: pytest.FixtureRequest
):
    n = 16
    if storage == "postgresql":
        url = postgres.create_database(request.getfixturevalue("postgres_admin"), f"two_{random.randrange(10**9)}")
        runs = [tmp_path / "a", tmp_path / "b"]
        extra = ["--storage", url]
    else:  # both drivers on one journal file: one run directory (on a shared filesystem), one configuration
        url = f"sqlite:///{tmp_path / 'unused.db'}"
        runs = [tmp_path / "run", tmp_path / "run"]
        extra = []
    config = tmp_path / "slow.yaml"
    config.write_text("evaluator_options:\n  delay_s: 0.4\n")
    drivers = []
    for i, run in enumerate(runs):
        args = [
            "search", "--space", "nb201", "--evaluator", "nas.testing.SlowTableEvaluator", "--trials", str(n),
            "--seed", str(i if storage == "postgresql" else 0), "--sampler", "random", "--run-dir", str(run),
            "--config", str(config), "--heartbeat", "1", *extra,
        ]  # fmt: skip
        log = (tmp_path / f"driver{i}.log").open("w")  # a file, not a pipe nobody reads while it runs
        drivers.append(
            subprocess.Popen([sys.executable, "-m", "nas", *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        )

    def finished() -> int:
        if storage == "postgresql":
            return finished_count(url)
        if not (runs[0] / "study.journal").exists():
            return 0
        try:
            journal = optuna.load_study(study_name="nas", storage=make_storage(None, runs[0]))
        except KeyError:
            return 0
        return count_finished(journal)

    deadline = time.monotonic() + 180
    try:
        while finished() < 4:
            assert drivers[0].poll() is None, "driver A ended before it could be killed"
            assert time.monotonic() < deadline, "no 4 finished trials within 180 s"
            time.sleep(0.2)
    finally:
        drivers[0].send_signal(signal.SIGKILL)
        drivers[0].wait()
    drivers[1].wait(timeout=240)
    assert drivers[1].returncode == 0, (tmp_path / "driver1.log").read_text()[-2000:]
    study = optuna.load_study(study_name="nas", storage=url if storage == "postgresql" else make_storage(None, runs[0]))
    trials = study.trials
    counted = [t for t in trials if counts(t)]
    assert len(counted) == n  # exact: not one more, not one less
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    owners = {t.system_attrs[OWNER]["pid"] for t in counted}
    assert len(owners) == 2  # both drivers evaluated trials
    lost = [t for t in trials if t.state == TrialState.FAIL and not counts(t) and "surplus" not in t.user_attrs]
    redone = {t.user_attrs.get("redo_of"): t for t in trials if "redo_of" in t.user_attrs}
    assert len(lost) <= 1  # driver A had at most one trial in flight when it was killed ...
    for t in lost:  # ... and it was redone, once, and that redo counts: none lost, none duplicated
        assert counts(redone[t.number]) and redone[t.number].user_attrs["arch"] == t.user_attrs["arch"]
    assert socket.gethostname() == counted[0].system_attrs[OWNER]["host"]


def test_parallel_tpe_uses_the_constant_liar():
    assert make_sampler("tpe", 0, 10, {}, parallel=True)._constant_liar  # type: ignore[attr-defined]
    assert not make_sampler("tpe", 0, 10, {}, parallel=False)._constant_liar  # type: ignore[attr-defined]


def test_concurrent_atomic_writers_use_distinct_temp_files(tmp_path: Path):
    target = tmp_path / "w.pt"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second and first.parent == second.parent == tmp_path
        first.write_bytes(b"a" * 1000)
        second.write_bytes(b"b" * 10)
    assert target.read_bytes() in (b"a" * 1000, b"b" * 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pt"]


def test_one_seeding_rule_for_every_trial(tmp_path: Path, data_dir: Path):
    result = Search(table_config(tmp_path / "s0", data_dir, trials=3, seed=0)).run()
    assert result.completed == 3
    trials = optuna.load_study(study_name="nas", storage=make_storage(None, tmp_path / "s0")).trials
    assert [t.user_attrs["seed"] for t in trials] == [trial_seed(0, n) for n in range(3)]
    assert trial_seed(0, 1) != trial_seed(1, 1) and trial_seed(0, 1) != trial_seed(0, 2)
    # The seed reaches the training: another seed, another initialisation and data order; the same seed, the same.
    space = get_space("nasnet")
    tiny = dict(epochs=1, train_images=64, val_images=32, batch_size=32, channels=4, layers=1)
    evaluator = make_evaluator("train", space, data_dir=str(data_dir), **tiny)
    arch = space.sample(random.Random(3))
    a, b, a2 = (
        evaluator.evaluate(arch, seed=s)["train_loss"] for s in (trial_seed(0, 1), trial_seed(1, 1), trial_seed(0, 1))
    )
    assert a == a2 and a != b


def test_a_trial_past_its_time_limit_fails_with_that_reason(tmp_path: Path, data_dir: Path):
    late = first_archs(tmp_path, data_dir, 1, sampler="random")[0]
    options = {"delay_s": 0.0, "stall_arch": late, "stall_s": 600}
    slow = {"evaluator": "nas.testing.SlowTableEvaluator", "evaluator_options": options, "sampler": "random"}
    start = time.monotonic()
    result = Search(table_config(tmp_path / "run", data_dir, trials=3, trial_timeout=1.5, **slow)).run()
    assert time.monotonic() - start < 60 and (result.completed, result.failed) == (2, 1)
    assert read_trials(tmp_path / "run" / "trials.csv")[0]["fail_reason"] == "timed out after 1.5 s (trial_timeout)"
