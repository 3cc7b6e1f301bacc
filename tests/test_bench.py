"""ONNX-Bench: records from the NB201 table and from search runs, Parquet shards, incremental builds."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from nas.harvest import harvest_jobs, jobs_from_trials
from nas.search import Search, SearchConfig
from nas.tables import load_nb201_table
from onnx_bench.bench import build, info, nb201_jobs, read_bench
from onnx_bench.io import load_onnx
from onnx_bench.text import describe


def test_nb201_build_is_incremental(tmp_path: Path, nb201_csv: Path):
    table = load_nb201_table(str(nb201_csv))
    out = tmp_path / "bench"
    first = build(nb201_jobs(table, limit=3), out, workers=2, shard_size=2)
    assert (first.added, first.skipped, first.shards_written) == (3, 0, 2)
    second = build(nb201_jobs(table, limit=5), out, workers=1)
    assert (second.added, second.skipped) == (2, 3)  # only the two new cells were built
    frame = read_bench(out)
    assert len(frame) == 5 and frame["arch"].is_unique
    assert sorted(frame["metric_nb201_index"].astype(int)) == [0, 1, 2, 3, 4]
    row = frame[frame["metric_nb201_index"] == 1].iloc[0]
    assert row["metric_cifar10_test_acc"] == table[row["arch"]]["nb201v11_cifar10_test_acc"]
    assert (
        row["params"] / 1e6 == round(table[row["arch"]]["params_M"], 6)
        or abs(row["params"] / 1e6 - table[row["arch"]]["params_M"]) < 0.01
    )
    assert len(row["onnx_sha256"]) == 64 and row["tokens_compact"] < row["tokens_chain_slim"]
    assert "Conv" in row["text_chain_slim"] and json.loads(row["op_histogram"])["Conv"] > 0
    assert sum(json.loads(row["wl_counts"]).values()) == 3 * row["nodes"]  # every operator, 3 WL iterations
    assert not list(out.glob(".*")), "no temp files left"
    summary = info(out)
    assert summary["records"] == 5 and summary["by_space"] == {"nb201": 5}
    assert "metric_cifar10_test_acc" in summary["metrics"]


def test_bench_text_is_the_text_of_the_exported_onnx(tmp_path: Path, nb201_csv: Path):
    from onnx_bench.export import export_architecture
    from search_spaces import get_space

    table = load_nb201_table(str(nb201_csv))
    build(nb201_jobs(table, limit=1), tmp_path, workers=1)
    row = read_bench(tmp_path).iloc[0]
    space = get_space("nb201")
    exported = export_architecture(space, space.decode(row["arch"]))
    assert exported.sha256 == row["onnx_sha256"]
    assert describe(load_onnx(exported.data), "chain_slim") == row["text_chain_slim"]


def test_harvest_adds_trained_candidates_with_their_metrics(tmp_path: Path, data_dir: Path):
    run = tmp_path / "run"
    cfg = SearchConfig(
        space="nasnet",
        evaluator="train",
        trials=2,
        sampler="random",
        run_dir=str(run),
        data_dir=str(data_dir),
        evaluator_options=dict(
            epochs=1, train_images=64, val_images=64, batch_size=32, channels=4, layers=1, test_images=200
        ),
    )
    Search(cfg).run()
    jobs = harvest_jobs(run)
    assert len(jobs) == 2 and all(j.weights for j in jobs)
    build(jobs, tmp_path / "bench", workers=1)
    frame = read_bench(tmp_path / "bench")
    trials = pd.read_csv(run / "trials.csv")
    assert sorted(frame["metric_accuracy"]) == sorted(trials["accuracy"])
    assert set(frame["source"]) == {"run#0", "run#1"}
    assert (frame["metric_budget_train_images"] == 64).all()
    again = build(harvest_jobs(run), tmp_path / "bench", workers=1)
    assert again.added == 0
    # The same trials from their labels alone (what experiments.label_family keeps): the same records but for the
    # ONNX file's weights (the activation features describe the seeded initialisation either way).
    config = yaml.safe_load((run / "config.yaml").read_text())
    rows = [
        {"number": str(r.number), "state": "COMPLETE", "arch": r.arch, "accuracy": str(r.accuracy)}
        for r in trials.itertuples()
    ]
    relabelled = jobs_from_trials(config, rows, "run")
    assert [j.weights for j in relabelled] == [None, None]
    build(relabelled, tmp_path / "labels", workers=1)
    other = read_bench(tmp_path / "labels").set_index("source").loc[frame["source"]]
    for column in ("arch", "metric_accuracy", "params", "flops", "act_vpca", "text_compact"):
        assert list(other[column]) == list(frame[column])
    assert list(other["onnx_sha256"]) != list(frame["onnx_sha256"])  # trained weights against initial ones
    assert {j.dataset for j in jobs_from_trials({**config, "space": "transformer-small"}, rows, "run")} == {"sst2"}


def test_nb201_cells_of_another_data_set_are_a_family_of_their_own(tmp_path: Path, data_dir: Path):
    from onnx_bench.bench import _space
    from onnx_bench.export import export_architecture
    from predictors.training import families
    from tests.test_cli import assert_one_line_error, nas

    args = ["bench", "build", "--space", "nb201", "--sample", "3", "--seed", "4", "--workers", "1"]
    assert nas(*args, "--out", str(tmp_path / "c10")).returncode == 0
    proc = nas(*args, "--dataset", "imagenet16", "--out", str(tmp_path / "in16"))
    assert proc.returncode == 0, proc.stderr
    c10, in16 = read_bench(tmp_path / "c10"), read_bench(tmp_path / "in16")
    assert list(in16["arch"]) == list(c10["arch"])  # the same seeded sample of cells
    assert sorted(c10["metric_nb201_index"]) != [0, 1, 2]  # drawn at random, not the table's first rows
    table = load_nb201_table(str(data_dir / "nb201" / "nb201.csv"))
    row = in16.iloc[0]
    assert row["metric_imagenet16_test_acc"] == table[row["arch"]]["nats_imagenet16_test"]
    assert "metric_cifar10_valid_acc" not in in16.columns  # only its own data set's accuracy
    assert list(families(in16)) == ["nb201-imagenet16"] * 3 and list(families(c10)) == ["nb201"] * 3
    model = load_onnx(
        export_architecture(
            _space("nb201", {}, 16), _space("nb201", {}).decode(row["arch"]), build_options={"num_classes": 120}
        ).data
    )
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:] == [3, 16, 16]
    assert row["onnx_sha256"] != c10.iloc[0]["onnx_sha256"] and row["params"] > c10.iloc[0]["params"]  # 120 classes
    assert row["input_side"] == 16 and row["act_missing"] == 0
    assert_one_line_error(nas(*args, "--dataset", "mnist", "--out", str(tmp_path / "x")), "'mnist'")
    assert_one_line_error(
        nas("bench", "build", "--space", "nbmacro", "--dataset", "cifar100", "--out", str(tmp_path / "y")), "'cifar100'"
    )
