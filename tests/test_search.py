"""The search loop with the NB201 table: Pareto front, outputs, resume, recovery of interrupted trials."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import onnx
import optuna
import pytest
from optuna.trial import TrialState

from nas.search import Search, SearchConfig, make_storage, recover_interrupted
from nas_ground.errors import UserInputError
from search_spaces import get_space
from tests.oracles import dominates


def table_config(run_dir: Path, data_dir: Path, **over) -> SearchConfig:
    base = dict(
        space="nb201",
        evaluator="table",
        objectives=["accuracy:max", "params:min"],
        trials=25,
        seed=1,
        sampler="nsga2",
        run_dir=str(run_dir),
        data_dir=str(data_dir),
    )
    base.update(over)
    return SearchConfig.from_dict(base)


def read_trials(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_pareto_json_is_the_non_dominated_set_of_trials_csv(tmp_path: Path, data_dir: Path, nb201_csv: Path):
    run = tmp_path / "run"
    result = Search(table_config(run, data_dir)).run()
    rows = [r for r in read_trials(run / "trials.csv") if r["state"] == "COMPLETE"]
    assert len(rows) == 25 == result.completed
    pareto = json.loads((run / "pareto.json").read_text())
    assert pareto["objectives"] == ["accuracy:max", "params:min"]
    members = pareto["members"]
    assert members, "a non-empty search has a non-empty front"
    dirs = ["max", "min"]
    points = {r["arch"]: (float(r["accuracy"]), float(r["params"])) for r in rows}
    front_archs = {m["arch"] for m in members}
    for arch, p in points.items():
        dominated = any(dominates(q, p, dirs) for q in points.values())
        assert (arch in front_archs) == (not dominated), arch
    for m in members:
        assert points[m["arch"]] == (m["metrics"]["accuracy"], m["metrics"]["params"])
        assert "test_accuracy" in m["metrics"]
        model = onnx.load(run / m["onnx"])
        onnx.checker.check_model(model)
    assert (run / "pareto.png").stat().st_size > 1000
    assert {"config.yaml", "env.json", "study.journal"} <= {p.name for p in run.iterdir()}


def test_resume_continues_without_redoing(tmp_path: Path, data_dir: Path):
    run = tmp_path / "run"
    Search(table_config(run, data_dir, trials=10)).run()
    first = read_trials(run / "trials.csv")
    Search(table_config(run, data_dir, trials=16)).run()
    second = read_trials(run / "trials.csv")
    assert len(second) == 16
    assert second[:10] == first  # nothing completed was redone or changed
    with pytest.raises(UserInputError, match="objectives"):
        Search(table_config(run, data_dir, objectives=["accuracy:max", "latency_ms:min"]))


def test_interrupted_trials_are_failed_and_redone(tmp_path: Path, data_dir: Path):
    run = tmp_path / "run"
    run.mkdir()
    storage = make_storage(None, run)
    study = optuna.create_study(
        study_name="nas", storage=storage, directions=["maximize", "minimize"], load_if_exists=True
    )
    orphan = study.ask()
    get_space("nb201").suggest(orphan)  # a process killed mid-evaluation leaves this trial RUNNING
    assert recover_interrupted(study) == [orphan.number]
    frozen = study.trials[orphan.number]
    assert frozen.state == TrialState.FAIL and frozen.user_attrs["interrupted"]
    result = Search(table_config(run, data_dir, trials=3)).run()
    rows = read_trials(run / "trials.csv")
    assert rows[0]["state"] == "FAIL" and rows[0]["fail_reason"] == "interrupted"
    assert result.completed == 3  # the interrupted trial does not count towards the budget
    # The first new trial redoes the orphan's parameters.
    assert rows[1]["arch"] == study.trials[1].user_attrs["arch"]
    assert study.trials[1].params == orphan.params


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"space": "resnet"}, "'resnet'"),
        ({"evaluator": "oracle"}, "'oracle'"),
        ({"objectives": ["accuracy:max", "joules:min"]}, "'joules'"),
        ({"objectives": ["accuracy:up"]}, "'accuracy:up'"),
        ({"objectives": ["test_accuracy:max"]}, "'test_accuracy'"),
        ({"sampler": "cmaes"}, "'cmaes'"),
        ({"trials": 0}, "trials=0"),
        ({"space": "nasnet"}, "nb201"),
    ],
)
def test_bad_configuration_names_the_bad_value(tmp_path: Path, data_dir: Path, over, needle):
    with pytest.raises(UserInputError) as info:
        Search(table_config(tmp_path / "run", data_dir, **over))
    assert needle in str(info.value)
    assert not (tmp_path / "run").exists()


def test_rdb_storage_url_and_resume(tmp_path: Path, data_dir: Path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    run = tmp_path / "run"
    Search(table_config(run, data_dir, trials=5, storage=url, sampler="tpe")).run()
    assert not (run / "study.journal").exists()
    result = Search(table_config(run, data_dir, trials=8, storage=url, sampler="tpe")).run()
    assert result.completed == 8
    study = optuna.load_study(study_name="nas", storage=url)
    assert len(study.trials) == 8


def test_timeout_stops_starting_trials_and_a_rerun_tops_up(tmp_path: Path, data_dir: Path):
    run = tmp_path / "run"
    base = {"space": "nb201", "evaluator": "table", "objectives": ["accuracy:max"], "sampler": "random"}
    cfg = SearchConfig(**base, trials=500, run_dir=str(run), data_dir=str(data_dir), timeout=0.5)
    first = Search(cfg).run()
    assert 1 <= first.completed < 500  # stopped by the clock, outputs written
    assert (run / "pareto.json").exists()
    again = Search(SearchConfig(**base, trials=first.completed + 3, run_dir=str(run), data_dir=str(data_dir))).run()
    assert again.completed == first.completed + 3
    with pytest.raises(UserInputError, match="timeout=-1"):
        Search(SearchConfig(**base, trials=5, run_dir=str(tmp_path / "r2"), data_dir=str(data_dir), timeout=-1))
