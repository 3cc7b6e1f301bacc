"""Multi-fidelity search (`nas.search.fidelity`): the MO-ASHA promotion rule, training continued from the lower
rung's checkpoint, the local loop, Ray workers, a driver killed mid-rung, and screening in front of the rungs."""

from __future__ import annotations

import csv
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch

from nas.evaluators import make_evaluator
from nas.search import Search, SearchConfig, make_storage
from nas.search.fidelity import Fidelity, crowding_distance, decide, mo_asha_order, promotable
from nas_ground.errors import UserInputError
from search_spaces import get_space
from tests.conftest import REPO
from tests.test_cli import assert_one_line_error, nas

TINY = {"channels": 4, "cells_per_stage": 1, "train_images": 128, "val_images": 64, "batch_size": 32}


def load(run: Path) -> optuna.Study:
    return optuna.load_study(study_name="nas", storage=make_storage(None, run))


# --- the rule -------------------------------------------------------------------------------------------------------


def test_one_objective_promotes_the_top_third_of_its_rung():
    values = np.array([[5.0], [1.0], [3.0], [2.0], [4.0], [0.0]])  # minimised
    assert list(mo_asha_order(values)) == [5, 1, 3, 2, 4, 0]
    promoted = [i for i in range(6) if promotable(values, i, 3)[0]]
    assert promoted == [1, 5]  # floor(6 / 3) = 2 go on: the two smallest
    assert promotable(values[:2], 1, 3) == (True, 1, 1)  # fewer than eta: the best one still goes on
    assert promotable(values[:2], 0, 3)[0] is False
    assert all(promotable(values, i, 1)[0] for i in range(6))  # eta 1: nobody is stopped


def test_several_objectives_rank_by_front_then_crowding():
    # minimise both: rows 0-3 are non-dominated, 4 is dominated by 1 and 2
    values = np.array([[1.0, 5.0], [2.0, 4.0], [3.0, 3.0], [0.5, 9.0], [4.0, 4.5]])
    order = list(mo_asha_order(values))
    assert order[-1] == 4  # the dominated one comes last, whatever its crowding
    assert set(order[:2]) == {2, 3}  # the front's extremes (infinite crowding distance) come first
    dist = crowding_distance(values[:4])
    assert np.isinf(dist[2]) and np.isinf(dist[3]) and np.isfinite(dist[:2]).all()
    assert dist[0] > 0 and dist[1] > 0
    assert not promotable(values, 4, 1.25)[0] and promotable(values, 3, 1.25)[0]  # top 4 of 5


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"rungs": [3, 1]}, "rungs=3,1"),
        ({"rungs": [0, 2]}, "rungs=0,2"),
        ({"rungs": "1,x"}, "'x'"),
        ({"rungs": [1, 3], "eta": 0.5}, "eta=0.5"),
        ({"rungs": [1, 3], "fidelity": "images"}, "fidelity='images'"),
        ({"fidelity": "epochs"}, "needs rungs"),
        ({"rungs": [1, 3], "evaluator": "table"}, "not 'table'"),
        ({"rungs": [1, 3], "evaluator_options": {**TINY, "epochs": 5}}, "epochs=5"),
        ({"rungs": [1, 3], "space": "transformer-small", "evaluator_options": {}}, "image spaces"),
    ],
)
def test_bad_fidelity_settings_name_the_bad_value(tmp_path: Path, data_dir: Path, over: dict[str, Any], needle: str):
    settings: dict[str, Any] = {
        "space": "nb201", "evaluator": "train", "run_dir": str(tmp_path / "run"), "data_dir": str(data_dir),
        "evaluator_options": TINY, **over,
    }  # fmt: skip
    with pytest.raises(UserInputError) as info:
        Search(SearchConfig(**settings))
    assert needle in str(info.value)
    assert not (tmp_path / "run").exists()


def test_cli_bad_rungs_is_one_line_exit_2(tmp_path: Path, data_dir: Path):
    proc = nas("search", "--space", "nb201", "--rungs", "1,3,2", "--run-dir", str(tmp_path / "run"))
    assert_one_line_error(proc, "rungs=1,3,2")


# --- training continued from a checkpoint ---------------------------------------------------------------------------


def test_rungs_continue_from_the_checkpoint_exactly_as_one_training(tmp_path: Path, data_dir: Path):
    space = get_space("nb201")
    arch = space.sample(random.Random(4))
    climbing = make_evaluator("train", space, data_dir=str(data_dir), artifacts_dir=str(tmp_path / "a"), **TINY)
    ckpt = tmp_path / "ckpt" / "x.ckpt"
    ckpt.parent.mkdir()
    low = climbing.evaluate_rung(arch, seed=7, budget=1, top=3, first=True, checkpoint=ckpt)
    assert ckpt.is_file() and low["resumed_from"] == 0 and low["rung"] == 1
    assert {"params", "flops", "latency_ms"} <= set(low)  # the costs are measured on the first rung
    high = climbing.evaluate_rung(arch, seed=7, budget=3, top=3, first=False, checkpoint=ckpt)
    assert high["resumed_from"] == 1 and high["rung"] == 3 and "params" not in high
    direct = make_evaluator(
        "train", space, data_dir=str(data_dir), artifacts_dir=str(tmp_path / "b"), **{**TINY, "epochs": 3}
    ).evaluate(arch, seed=7)
    assert high["accuracy"] == direct["accuracy"]  # 1 epoch + resume + 2 epochs == 3 epochs in one go
    assert high["train_loss"] == pytest.approx(direct["train_loss"], rel=1e-6)
    a = torch.load(next((tmp_path / "a").glob("*.pt")), weights_only=True)
    b = torch.load(next((tmp_path / "b").glob("*.pt")), weights_only=True)
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in b)
    # A checkpoint of another candidate (another seed) is not used: training starts from zero.
    other = climbing.evaluate_rung(arch, seed=8, budget=3, top=3, first=False, checkpoint=ckpt)
    assert other["resumed_from"] == 0


# --- a search -------------------------------------------------------------------------------------------------------


def fidelity_config(run: Path, data_dir: Path, **over: Any) -> SearchConfig:
    settings: dict[str, Any] = {
        "space": "nb201", "evaluator": "train", "trials": 9, "sampler": "random", "seed": 1, "run_dir": str(run),
        "data_dir": str(data_dir), "rungs": [1, 2, 4], "eta": 2.0, "evaluator_options": TINY, **over,
    }  # fmt: skip
    return SearchConfig(**settings)


def check_rungs(run: Path, fidelity: Fidelity, objectives: list[tuple[str, str]]) -> list[optuna.trial.FrozenTrial]:
    """What every multi-fidelity run must hold; returns its finished trials."""
    trials = [t for t in load(run).trials if t.state.name in ("COMPLETE", "PRUNED")]
    budgets = [str(b) for b in fidelity.rungs]
    for t in trials:
        rungs = t.user_attrs.get("rungs", {})
        if "screened" in t.user_attrs:
            assert not rungs  # screened out before the first rung: never trained
            continue
        reached = list(rungs)
        assert reached == budgets[: len(reached)] and reached, t.number  # rungs climbed in order, none skipped
        for i, b in enumerate(reached):
            assert rungs[b]["rung"] == int(b)
            # every rung after the first continued from the one below: the checkpoint travelled with the trial
            assert rungs[b]["resumed_from"] == (0 if i == 0 else int(budgets[i - 1])), (t.number, b)
        if t.state.name == "COMPLETE":
            assert reached == budgets and t.values == [rungs[budgets[-1]][n] for n, _ in objectives]
        else:
            assert "stopped" in t.user_attrs and len(reached) < len(budgets)
            assert t.user_attrs["metrics"]["rung"] == int(reached[-1])
    return trials


def test_local_search_promotes_by_the_rule_and_fronts_only_the_top_rung(tmp_path: Path, data_dir: Path):
    run = tmp_path / "run"
    search = Search(fidelity_config(run, data_dir))
    result = search.run()
    assert search.fidelity is not None
    trials = check_rungs(run, search.fidelity, search.objectives)
    assert len(trials) == 9
    states = {t.state.name for t in trials}
    assert states == {"COMPLETE", "PRUNED"}  # some climbed to the top, some were stopped
    # Replay the rule: the local loop runs one trial's rungs before the next trial, so when trial t finished rung b
    # its competitors were exactly the earlier trials that had finished rung b.
    for t in trials:
        for b in list(t.user_attrs["rungs"])[:-1] if t.state.name == "COMPLETE" else list(t.user_attrs["rungs"]):
            if int(b) == search.fidelity.top:
                continue
            earlier = [u for u in trials if u.number < t.number and b in u.user_attrs["rungs"]]
            rows = [*[u.user_attrs["rungs"][b] for u in earlier], t.user_attrs["rungs"][b]]
            values = np.array([[m["accuracy"] * -1, m["params"]] for m in rows])
            expected = promotable(values, len(rows) - 1, 2.0)[0]
            went_on = str(search.fidelity.rungs[search.fidelity.rungs.index(int(b)) + 1]) in t.user_attrs["rungs"]
            assert went_on == expected, (t.number, b)
    complete = {t.number for t in trials if t.state.name == "COMPLETE"}
    assert result.pareto and {m.trial for m in result.pareto} <= complete  # only top-rung candidates
    with open(run / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:3] == ["number", "state", "rung"]
    by_number = {int(r["number"]): r for r in rows}
    for t in trials:
        assert float(by_number[t.number]["rung"]) == int(list(t.user_attrs["rungs"])[-1])
        if t.state.name == "PRUNED":
            assert by_number[t.number]["fail_reason"].startswith("stopped at rung")
    assert not list((run / "models" / "ckpt").glob("*"))  # finished trials leave no checkpoint behind
    recorded = json.loads(json.dumps(search.cfg.rungs))
    assert recorded == [1, 2, 4]
    # The same directory with other rungs is another experiment.
    with pytest.raises(UserInputError, match="rungs"):
        Search(fidelity_config(run, data_dir, rungs=[1, 4]))


def test_decide_counts_every_driver_but_not_interrupted_copies(tmp_path: Path):
    study = optuna.create_study(directions=["maximize", "minimize"])
    fid = Fidelity((1, 3), eta=2.0)
    for acc, interrupted in [(50.0, False), (60.0, False), (70.0, True)]:
        t = study.ask()
        t.set_user_attr("rungs", {"1": {"accuracy": acc, "params": 10.0}})
        if interrupted:  # failed without a reason of its own: its redo carries the same record
            study.tell(t, state=optuna.trial.TrialState.FAIL)
    objectives = [("accuracy", "max"), ("params", "min")]
    me = {"accuracy": 55.0, "params": 10.0}
    promoted, why = decide(study, 99, me, 1, objectives, fid)  # 3 counted (50, 60, me): 1 goes on, 60 beats me
    assert not promoted and "place 2 of 3" in why
    promoted, why = decide(study, 99, {"accuracy": 65.0, "params": 10.0}, 1, objectives, fid)
    assert promoted and "place 1 of 3" in why


def test_ray_workers_continue_promoted_candidates_from_the_travelling_checkpoint(tmp_path: Path, data_dir: Path):
    import ray

    run = tmp_path / "run"
    try:
        search = Search(fidelity_config(run, data_dir, workers=2, trials=8))
        result = search.run()
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert search.fidelity is not None
    trials = check_rungs(run, search.fidelity, search.objectives)  # resumed_from: each rung began where the last ended
    assert len(trials) == 8 and any(len(t.user_attrs["rungs"]) > 1 for t in trials)
    assert result.pareto and all(
        len(t.user_attrs["rungs"]) == 3 for t in trials if t.number in {m.trial for m in result.pareto}
    )
    assert all("worker" in t.user_attrs for t in trials)  # evaluated as Ray tasks


def test_a_driver_killed_mid_rung_continues_from_its_last_epoch(tmp_path: Path, data_dir: Path):
    run = tmp_path / "run"
    args = [
        "search", "--space", "nb201", "--trials", "1", "--seed", "2", "--run-dir", str(run), "--rungs", "1,8",
        "--eta", "1", "--channels", "4", "--train-images", "256", "--val-images", "64", "--batch-size", "32",
    ]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "nas", *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpts = run / "models" / "ckpt"
    deadline = time.monotonic() + 240
    try:  # wait until the trial is past its first rung and has saved an epoch of the second: then kill it
        while True:
            assert proc.poll() is None, "the search ended before it could be killed"
            assert time.monotonic() < deadline, "no second-rung checkpoint within 240 s"
            files = list(ckpts.glob("*.ckpt")) if ckpts.is_dir() else []
            if files and torch.load(files[0], weights_only=True)["trainer"]["epoch"] >= 3:
                break
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = nas(*args)
    assert done.returncode == 0, done.stderr
    trials = load(run).trials
    interrupted = [t for t in trials if t.state.name == "FAIL"]
    redo = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(interrupted) == 1 and len(redo) == 1 and redo[0].user_attrs["redo_of"] == interrupted[0].number
    last = redo[0].user_attrs["rungs"]["8"]
    assert 3 <= last["resumed_from"] < 8  # continued from the checkpoint of an epoch inside the rung, not from 0
    assert redo[0].user_attrs["rungs"]["1"] == interrupted[0].user_attrs["rungs"]["1"]  # rung 1 was not redone
    # and the result is the one an uninterrupted 8-epoch training gives
    space = get_space("nb201")
    options = {"channels": 4, "train_images": 256, "val_images": 64, "batch_size": 32}  # the CLI's nb201: N=5
    direct = make_evaluator("train", space, data_dir=str(data_dir), epochs=8, **options)
    expected = direct.evaluate(space.decode(redo[0].user_attrs["arch"]), seed=redo[0].user_attrs["seed"])
    assert last["accuracy"] == expected["accuracy"]


def test_screening_decides_who_starts_the_rungs_who_continue(tmp_path: Path, data_dir: Path):
    run = tmp_path / "run"
    options = {"cheap": "proxy:synflow", "expensive": "train", "cost": "params", "explore": 0.0}
    search = Search(
        fidelity_config(
            run, data_dir, evaluator="screened", trials=10,
            evaluator_options={**options, **TINY, "cheap_options": {"batch_size": 8}},
        )
    )  # fmt: skip
    search.run()
    assert search.fidelity is not None
    trials = check_rungs(run, search.fidelity, search.objectives)
    screened = [t for t in trials if "screened" in t.user_attrs]
    stopped = [t for t in trials if "stopped" in t.user_attrs]
    trained = [t for t in trials if t.user_attrs.get("rungs")]
    assert screened and stopped and trained
    assert all("score" in t.user_attrs["rungs"]["1"] for t in trained)  # the cheap score rides along the rungs
