"""Distributed search on a real local Ray runtime: a 2-worker search, a worker node killed mid-search, and a
driver killed with SIGKILL then resumed by the same command."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import ray
from optuna.trial import TrialState

from nas.search import Search, make_storage
from nas_ground.errors import UserInputError
from tests.conftest import REPO
from tests.oracles import dominates
from tests.test_cli import completed_trials, nas
from tests.test_search import read_trials, table_config


@pytest.fixture(autouse=True)
def no_ray_left() -> Iterator[None]:
    yield
    if ray.is_initialized():
        ray.shutdown()


def load_study(run: Path) -> optuna.Study:
    return optuna.load_study(study_name="nas", storage=make_storage(None, run))


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"workers": 0}, "workers=0"),
        ({"workers": 2, "ray_address": "http://head:6379"}, "'http://head:6379'"),
        ({"workers": 2, "cpus_per_trial": 0}, "cpus_per_trial=0"),
        ({"workers": 2, "gpus_per_trial": -1}, "gpus_per_trial=-1"),
        ({"gpus_per_trial": 0.5}, "gpus_per_trial needs Ray"),
    ],
)
def test_bad_ray_settings_name_the_bad_value(tmp_path: Path, data_dir: Path, over, needle):
    with pytest.raises(UserInputError) as info:
        Search(table_config(tmp_path / "run", data_dir, **over))
    assert needle in str(info.value)
    assert not (tmp_path / "run").exists()


def test_unreachable_cluster_is_a_one_line_user_error(tmp_path: Path, data_dir: Path, nb201_csv: Path):
    with pytest.raises(UserInputError, match="'127.0.0.1:1'"):
        Search(table_config(tmp_path / "run", data_dir, ray_address="127.0.0.1:1")).run()


def test_two_workers_give_the_requested_trials_and_a_pareto_front(tmp_path: Path, data_dir: Path, nb201_csv: Path):
    run = tmp_path / "run"
    url = f"sqlite:///{tmp_path / 'study.db'}"  # any Optuna storage: the driver alone writes it
    result = Search(table_config(run, data_dir, trials=20, workers=2, storage=url)).run()
    assert not ray.is_initialized()  # the runtime started by the search is gone
    rows = read_trials(run / "trials.csv")
    assert [r["state"] for r in rows] == ["COMPLETE"] * 20 == ["COMPLETE"] * result.completed
    assert sorted(int(r["number"]) for r in rows) == list(range(20))
    points = {r["arch"]: (float(r["accuracy"]), float(r["params"])) for r in rows}
    front = {m["arch"] for m in json.loads((run / "pareto.json").read_text())["members"]}
    assert front
    for arch, p in points.items():
        assert (arch in front) == (not any(dominates(q, p, ["max", "min"]) for q in points.values())), arch
    info = json.loads((run / "ray.json").read_text())
    assert info["started_here"] and info["workers"] == 2 and info["cluster"]["CPU"] == 2
    assert (info["cpus_per_trial"], info["gpus_per_trial"]) == (1, 0)
    workers = [t.user_attrs["worker"] for t in optuna.load_study(study_name="nas", storage=url).trials]
    assert all(w["pid"] != os.getpid() and w["node"] == info["nodes"][0]["node_id"] for w in workers)


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, ValueError):
                continue
    return out


def kill_node(cluster, node) -> None:
    """A node dies as a machine does: its worker processes (children of its raylet) and the raylet at once."""
    for pid in children(node.all_processes["raylet"][0].process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    cluster.remove_node(node, allow_graceful=False)


@pytest.mark.slow  # a second Ray node started and killed, ~18 s: the default suite stays within its bound
def test_killed_worker_node_loses_no_trial(tmp_path: Path, data_dir: Path, nb201_csv: Path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        worker_node = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        run = tmp_path / "run"
        slow = {"evaluator": "nas.testing.SlowTableEvaluator", "evaluator_options": {"delay_s": 1.0}}
        cfg = table_config(run, data_dir, trials=12, ray_address=cluster.address, workers=2, **slow)
        in_flight_at_kill: list[int] = []

        def kill_worker_node() -> None:  # both slots (one per node) are busy: a task dies with the node
            study = load_study(run)
            in_flight_at_kill.extend(t.number for t in study.get_trials(states=(TrialState.RUNNING,)))
            kill_node(cluster, worker_node)

        killer = threading.Timer(0.4, kill_worker_node)

        def on_trial(trial, done: int, total: int) -> None:
            # Once the worker node has finished a trial (its worker process may start slowly on a busy machine).
            ran_there = trial is not None and trial.user_attrs["worker"]["node"] == worker_node.node_id
            if done >= 4 and ran_there and not killer.is_alive() and not killer.finished.is_set():
                killer.start()

        result = Search(cfg).run(on_trial)
        killer.join()
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    assert result.completed == 12 and result.failed == 0
    trials = load_study(run).trials
    assert [t.number for t in trials] == list(range(12))  # none lost, none duplicated
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert 1 <= len(in_flight_at_kill) <= 2
    dead = worker_node.node_id
    nodes = [t.user_attrs["worker"]["node"] for t in trials]
    assert dead in nodes[: min(in_flight_at_kill)]  # the worker node did run trials before it was killed ...
    assert all(nodes[n] != dead for n in in_flight_at_kill)  # ... and its task was redone on the head
    assert all(node != dead for node in nodes[max(in_flight_at_kill) :])


def session_processes(sid: int) -> list[int]:
    """Processes of the session ``sid`` (the killed driver's Ray runtime, if anything survived it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids


@pytest.mark.slow  # ~34 s; a killed driver resuming is also covered by the PostgreSQL two-driver test and chaos.py
def test_sigkill_of_the_driver_then_same_command_resumes(tmp_path: Path, data_dir: Path, nb201_csv: Path):
    run = tmp_path / "run"
    config = tmp_path / "slow.yaml"
    config.write_text("evaluator_options:\n  delay_s: 0.3\n")
    args = [
        "search", "--space", "nb201", "--evaluator", "nas.testing.SlowTableEvaluator", "--trials", "14", "--seed", "2",
        "--run-dir", str(run), "--config", str(config), "--workers", "2",
    ]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "nas", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the driver and the Ray runtime it starts: one session to clean up
    )
    deadline = time.monotonic() + 120
    try:
        while len(completed_trials(run)) < 4:
            assert proc.poll() is None, "the search ended before it could be killed"
            assert time.monotonic() < deadline, "no 4 completed trials within 120 s"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        end = time.monotonic() + 10
        while session_processes(proc.pid) and time.monotonic() < end:
            time.sleep(0.5)
        for pid in session_processes(proc.pid):  # Ray agents can outlive a SIGKILLed driver
            os.kill(pid, signal.SIGKILL)
    before = {t.number: (t.user_attrs["arch"], t.values) for t in completed_trials(run)}
    assert 4 <= len(before) < 14
    done = nas(*args, timeout=180, isolated=True)
    assert done.returncode == 0, done.stderr
    after = {t.number: (t.user_attrs["arch"], t.values) for t in completed_trials(run)}
    assert len(after) == 14
    assert all(after[n] == before[n] for n in before)  # nothing completed was redone or changed
    rows = read_trials(run / "trials.csv")
    interrupted = [r for r in rows if r["fail_reason"] == "interrupted"]
    assert len(rows) == 14 + len(interrupted) and len(interrupted) <= 2
    assert len({r["number"] for r in rows}) == len(rows)
    redone = {t.user_attrs["redo_of"]: t for t in load_study(run).trials if "redo_of" in t.user_attrs}
    assert sorted(redone) == sorted(int(r["number"]) for r in interrupted)
    assert all(t.state == TrialState.COMPLETE for t in redone.values())
    assert json.loads((run / "pareto.json").read_text())["members"]


@pytest.mark.slow  # ~19 s; worker loss is also covered by the node-kill test and experiments/chaos.py
def test_a_trial_whose_worker_keeps_dying_fails_and_the_search_goes_on(tmp_path: Path, data_dir: Path, nb201_csv: Path):
    first = Search(table_config(tmp_path / "local", data_dir, trials=1)).run()
    crash = first.pareto[0].arch  # trial 0's architecture: the same seed proposes it first on Ray too
    slow = {"evaluator": "nas.testing.SlowTableEvaluator", "evaluator_options": {"delay_s": 0.0, "crash_arch": crash}}
    run = tmp_path / "run"
    result = Search(table_config(run, data_dir, trials=6, workers=2, **slow)).run()
    trials = load_study(run).trials
    assert [t.number for t in trials] == list(range(6))
    assert result.completed + result.failed == 6 and result.failed >= 1
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed[0].number == 0 and all(t.user_attrs["arch"] == crash for t in failed)
    assert all(t.user_attrs["fail_reason"].startswith("worker lost (2 submissions)") for t in failed)
    assert failed[0].user_attrs["resubmitted"] == 1


def test_an_exception_is_not_retried_and_a_late_trial_times_out(tmp_path: Path, data_dir: Path, nb201_csv: Path):
    from tests.test_lifecycle import first_archs

    bad, late = first_archs(tmp_path, data_dir, 2, sampler="random")
    options = {"delay_s": 0.0, "raise_arch": bad, "stall_arch": late, "stall_s": 600}
    run = tmp_path / "run"
    cfg = table_config(
        run, data_dir, trials=5, workers=2, sampler="random", trial_timeout=5,
        evaluator="nas.testing.SlowTableEvaluator", evaluator_options=options,
    )  # fmt: skip
    start = time.monotonic()
    result = Search(cfg).run()
    assert time.monotonic() - start < 150  # the stalled task (600 s) stopped itself
    assert (result.completed, result.failed) == (3, 2)
    trials = load_study(run).trials
    raised, stalled = trials[0], trials[1]
    assert raised.user_attrs["fail_reason"].startswith("ZeroDivisionError") and "resubmitted" not in raised.user_attrs
    assert "raise ZeroDivisionError" in raised.user_attrs["traceback"]  # raised once, in the task, not retried
    assert stalled.user_attrs["fail_reason"] == "timed out after 5 s (trial_timeout)"


def test_trained_weights_come_back_to_the_driver_and_seeds_match_the_local_loop(tmp_path: Path, data_dir: Path):
    from nas.search import SearchConfig

    tiny = {"epochs": 1, "train_images": 64, "val_images": 32, "batch_size": 32, "channels": 4, "layers": 1}

    def config(run: Path, **over) -> SearchConfig:
        return SearchConfig(
            space="nasnet", evaluator="train", trials=2, sampler="random", seed=4, run_dir=str(run),
            data_dir=str(data_dir), evaluator_options={**tiny, "test_images": 64}, **over,
        )  # fmt: skip

    local = Search(config(tmp_path / "local")).run()
    remote = Search(config(tmp_path / "ray", workers=1)).run()
    rows = {name: read_trials(tmp_path / name / "trials.csv") for name in ("local", "ray")}
    # One seeding rule: the same trial number of the same search trains identically on Ray and locally.
    # (Up to float rounding: a task runs torch on 1 thread, this process on several; another seed moves the
    # loss far more, see test_lifecycle; threads move it by ~1e-4.)
    for here, there in zip(rows["local"], rows["ray"], strict=True):
        assert (here["arch"], here["accuracy"]) == (there["arch"], there["accuracy"])
        assert float(here["train_loss"]) == pytest.approx(float(there["train_loss"]), abs=2e-3)
    # The tasks wrote their weights to their own scratch directories; the driver wrote what they returned.
    for result in (local, remote):
        models = sorted(p.name for p in (result.run_dir / "models").iterdir())
        assert len(models) == 2 and all(m.endswith(".pt") for m in models)
        assert all("test_accuracy" in m.metrics for m in result.pareto)
    names = [sorted(p.name for p in (tmp_path / run / "models").iterdir()) for run in ("local", "ray")]
    assert names[0] == names[1]
    assert [m.arch for m in local.pareto] == [m.arch for m in remote.pareto]
