"""`nas predictor train|eval`, `nas predict` and the predictor evaluators as a user runs them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from nas.tables import load_nb201_table
from onnx_bench.bench import build, nb201_jobs, read_bench
from predictors.predictor import Predictor
from predictors.training import load_bench_data
from tests.test_cli import assert_one_line_error, nas


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory, nb201_csv: Path) -> Path:
    out = tmp_path_factory.mktemp("bench")
    build(nb201_jobs(load_nb201_table(str(nb201_csv)), limit=40), out, workers=2)
    return out


@pytest.fixture(scope="module")
def predictor_file(bench: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pred") / "p.safetensors"
    proc = nas(
        "predictor", "train", "--bench", str(bench), "--target", "cifar10_valid_acc",
        "--samples", "30", "--epochs", "40", "--out", str(path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "kendall_tau" in proc.stdout
    return path


def test_train_stores_metadata_and_held_out_figures(predictor_file: Path, bench: Path):
    pred = Predictor.load(predictor_file)
    assert pred.encoder_name == "all-MiniLM-L6-v2" and pred.text_format == "compact"
    assert pred.meta["training_data"]["records"] == 30
    assert pred.meta["training_data"]["target"] == "metric_cifar10_valid_acc"
    assert pred.meta["evaluation"]["held_out"]["n"] == 10.0
    proc = nas("predictor", "eval", str(predictor_file), "--bench", str(bench), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # the bench holds its own training records: reported apart, with a warning
    assert "30 of 40 records are networks the predictor was trained on" in proc.stderr
    assert (report["unseen"]["n"], report["trained_on"]["n"], report["all"]["n"]) == (10, 30, 40)
    assert -1 <= report["unseen"]["kendall_tau"] <= 1 and "precision_at_10" in report["all"]


def test_predict_scores_an_exported_file_like_its_bench_record(predictor_file: Path, bench: Path, tmp_path: Path):
    frame = read_bench(bench)
    row = frame.iloc[7]
    path = tmp_path / "cell.onnx"
    assert nas("export", "--space", "nb201", "--arch", row["arch"], "-o", str(path)).returncode == 0
    other = tmp_path / "other.onnx"
    assert nas("export", "--space", "nb201", "--arch", frame.iloc[3]["arch"], "-o", str(other)).returncode == 0
    proc = nas("predict", str(path), str(other), "--predictor", str(predictor_file), "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [d["file"] for d in lines] == [str(path), str(other)]
    assert all(d["uncertainty"] > 0 for d in lines)  # five MLPs per view never agree exactly
    assert "far outside" not in proc.stderr and lines[0]["outside_by"] <= 3.0
    # The same network reaches the predictor as the same text: the score equals the bench record's score.
    pred = Predictor.load(predictor_file)
    data = load_bench_data(bench, "cifar10_valid_acc")
    expected = pred.score_embeddings(data.embeddings, data.summaries)
    index = {a: i for i, a in enumerate(data.frame["arch"])}
    assert lines[0]["score"] == pytest.approx(expected[index[row["arch"]]], abs=1e-4)
    assert lines[1]["score"] == pytest.approx(expected[index[frame.iloc[3]["arch"]]], abs=1e-4)


def test_predict_warns_on_a_network_unlike_its_training_networks(predictor_file: Path, tmp_path: Path):
    macro = tmp_path / "macro.onnx"
    assert nas("export", "--space", "nbmacro", "--arch", "22222222", "-o", str(macro)).returncode == 0
    proc = nas("predict", str(macro), "--predictor", str(predictor_file), "--json")
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)
    assert row["outside_by"] > 3.0 and row["outside_training"]
    assert f"warning: {macro} lies far outside the networks the predictor was trained on" in proc.stderr


def test_predict_bad_inputs(predictor_file: Path, tmp_path: Path):
    assert_one_line_error(
        nas("predict", str(tmp_path / "missing.onnx"), "--predictor", str(predictor_file)), "missing.onnx"
    )
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage" * 10)
    assert_one_line_error(nas("predict", str(junk), "--predictor", str(predictor_file)), "junk.onnx")
    fake = tmp_path / "fake.safetensors"
    fake.write_text("not a predictor")
    assert_one_line_error(nas("predict", str(junk), "--predictor", str(fake)), "not a predictor file")


def test_train_bad_inputs(bench: Path, tmp_path: Path):
    out = tmp_path / "p.safetensors"
    common = ["predictor", "train", "--bench", str(bench), "--out", str(out)]
    assert_one_line_error(nas(*common, "--target", "beauty"), "'beauty'")
    assert_one_line_error(nas(*common, "--target", "cifar10_valid_acc", "--samples", "999"), "--samples 999")
    assert_one_line_error(nas(*common, "--target", "cifar10_valid_acc", "--space", "nasnet"), "'nasnet'")
    assert_one_line_error(nas(*common, "--target", "cifar10_valid_acc", "--loss", "hinge"), "'hinge'")
    assert_one_line_error(nas(*common, "--target", "cifar10_valid_acc", "--hidden", "16,x"), "'16,x'")
    assert_one_line_error(nas(*common, "--target", "cifar10_valid_acc", "--core-view", "wide"), "'wide'")
    assert_one_line_error(
        nas(*common, "--target", "cifar10_valid_acc", "--prior", "--residual-weight", "-1"), "residual_weight=-1"
    )
    assert_one_line_error(nas(*common, "--target", "cifar10_valid_acc", "--prior", "--no-features"), "use_features")
    assert not out.exists()


def test_train_with_the_prior_from_the_command_line(bench: Path, tmp_path: Path):
    import shutil

    out, again = tmp_path / "prior.safetensors", shutil.copytree(bench, tmp_path / "again")
    proc = nas(
        "predictor", "train", "--bench", str(bench), "--bench", str(again), "--target", "cifar10_valid_acc",
        "--out", str(out), "--prior", "--no-embedding", "--core-view", "universal", "--core-weight", "1",
        "--hidden", "16", "--ensemble", "1", "--epochs", "20",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    pred = Predictor.load(out)
    # --bench repeats: the records of both directories, and the file names both
    assert pred.meta["training_data"]["records"] == 80 and pred.meta["training_data"]["bench"] == f"{bench},{again}"
    assert pred.head.prior is not None and len(pred.meta["prior"]["weights"]) == 3
    # one family (NB201 only): no out-of-family evidence, the residual keeps its full weight
    assert pred.meta["prior"]["residual_choice"]["chosen"] == 1.0 == pred.head.residual_weight


def test_search_with_the_predictor_evaluator(predictor_file: Path, tmp_path: Path):
    run = tmp_path / "run"
    proc = nas(
        "search", "--space", "nb201", "--evaluator", "predictor", "--predictor", str(predictor_file),
        "--trials", "4", "--sampler", "random", "--run-dir", str(run), "--channels", "8",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    pareto = json.loads((run / "pareto.json").read_text())
    assert pareto["objectives"] == ["score:max", "params:min"]
    assert all(np.isfinite(m["metrics"]["score"]) for m in pareto["members"])
    assert yaml.safe_load((run / "config.yaml").read_text())["evaluator"] == "predictor"


def test_predictor_train_evaluator_screens_and_trains(predictor_file: Path, tmp_path: Path, data_dir: Path):
    from nas.search import Search, SearchConfig

    cfg = SearchConfig(
        space="nb201",
        evaluator="predictor+train",
        objectives=["accuracy:max", "params:min"],
        trials=8,
        sampler="random",
        run_dir=str(tmp_path / "run"),
        data_dir=str(data_dir),
        evaluator_options={
            "predictor": str(predictor_file), "explore": 0.0, "epochs": 1, "train_images": 128,
            "val_images": 64, "batch_size": 32, "cells_per_stage": 1, "channels": 8, "test_images": 64,
        },
    )  # fmt: skip
    result = Search(cfg).run()
    cfg.trials = 9
    resumed = Search(cfg)
    resumed.run()
    assert len(resumed.evaluator.screened) == 9  # type: ignore[attr-defined]  # 8 restored + 1 new
    cfg.trials = 8
    with open(tmp_path / "run" / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9
    rows = rows[:8]
    states = [r["state"] for r in rows]
    assert "COMPLETE" in states and "PRUNED" in states  # some trained, some screened out without training
    assert result.completed == states.count("COMPLETE")
    for r in rows:  # every candidate was scored; only trained ones have an accuracy
        assert r["score"] != ""
        assert (r["accuracy"] != "") == (r["state"] == "COMPLETE")


def test_shipped_default_predictor_scores_foreign_networks(tmp_path: Path):
    """`nas predict` works on a fresh install (the default predictor ships in the package) and reads networks
    that are not from our spaces: here a small transformer, whose text is longer than the encoder window."""
    import torch
    from torch import nn

    from onnx_bench.export import export_bytes
    from predictors.zero_shot import default_predictor_path

    assert default_predictor_path().is_file()
    torch.backends.mha.set_fastpath_enabled(False)
    layer = nn.TransformerEncoderLayer(32, 2, 64, dropout=0.0, batch_first=True)
    model = nn.Sequential(
        nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Flatten(), nn.Linear(8 * 32, 2)
    )
    path = tmp_path / "tiny_transformer.onnx"
    path.write_bytes(export_bytes(model, (8, 32)))
    proc = nas("predict", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    assert np.isfinite(json.loads(proc.stdout)["score"])


def test_finetuned_encoder_is_saved_named_and_used(bench: Path, tmp_path: Path):
    """--finetune-encoder (CPU here) changes the encoder, saves it beside the predictor, and the predictor scores
    new files with the fine-tuned encoder, not the stock one."""
    from predictors.encoder import Encoder

    path = tmp_path / "ft.safetensors"
    proc = nas(
        "predictor", "train", "--bench", str(bench), "--target", "cifar10_valid_acc", "--samples", "12",
        "--epochs", "5", "--ensemble", "1", "--finetune-encoder", "--finetune-epochs", "2", "--out", str(path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    encoder_dir = tmp_path / "ft.safetensors.encoder"
    assert (encoder_dir / "modules.json").is_file() and not list(tmp_path.glob(".*"))
    pred = Predictor.load(path)
    assert pred.encoder_name == str(encoder_dir)
    text = read_bench(bench)["text_compact"].iloc[0]
    stock, tuned = Encoder(cache=False).encode([text]), Encoder(str(encoder_dir), cache=False).encode([text])
    assert stock.shape == tuned.shape and not np.allclose(stock, tuned, atol=1e-6)
    onnx_file = tmp_path / "cell.onnx"
    assert (
        nas("export", "--space", "nb201", "--arch", read_bench(bench)["arch"].iloc[0], "-o", str(onnx_file)).returncode
        == 0
    )
    scored = nas("predict", str(onnx_file), "--predictor", str(path), "--json")
    assert scored.returncode == 0, scored.stderr
    assert np.isfinite(json.loads(scored.stdout)["score"])
    refused = nas(
        "predictor", "train", "--bench", str(bench), "--target", "cifar10_valid_acc", "--finetune-encoder",
        "--no-embedding", "--out", str(tmp_path / "x.safetensors"),
    )  # fmt: skip
    assert refused.returncode == 2 and "--finetune-encoder needs the text embedding" in refused.stderr


def test_one_screening_mechanism_for_any_cheap_scorer_and_expensive_evaluator(tmp_path: Path, data_dir: Path):
    import optuna

    from nas.search import Search, SearchConfig, make_storage
    from nas_ground.errors import UserInputError

    options = {"cheap": "proxy:synflow", "expensive": "table", "cost": "params", "explore": 0.0}
    cheap_options = {"batch_size": 8}
    cfg = SearchConfig(
        space="nb201", evaluator="screened", objectives=["accuracy:max", "params:min"], trials=14, sampler="random",
        run_dir=str(tmp_path / "run"), data_dir=str(data_dir),
        evaluator_options={**options, "cheap_options": cheap_options},
    )  # fmt: skip
    result = Search(cfg).run()
    trials = optuna.load_study(study_name="nas", storage=make_storage(None, tmp_path / "run")).trials
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert pruned and complete and result.completed == len(complete)  # only survivors queried the table
    seen: list[tuple[float, float]] = []
    for t in trials:  # the rule: pruned exactly when an earlier candidate dominates its (cheap score, params)
        m = t.user_attrs["metrics"]
        score, params = m["score"], m["params"]
        dominated = any(s >= score and p <= params and (s > score or p < params) for s, p in seen)
        assert dominated == (t.state.name == "PRUNED"), t.number
        seen.append((score, params))
    assert all("accuracy" in t.user_attrs["metrics"] for t in complete)  # the expensive evaluator's figures
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["evaluator_options"]
    assert (recorded["cheap"], recorded["expensive"], recorded["cost"]) == ("proxy:synflow", "table", "params")
    with pytest.raises(UserInputError, match="cost 'accuracy'"):
        Search(SearchConfig(
            space="nb201", evaluator="screened", run_dir=str(tmp_path / "bad"), data_dir=str(data_dir),
            evaluator_options={**options, "cost": "accuracy", "cheap_options": cheap_options},
        ))  # fmt: skip


def test_many_files_are_described_in_worker_processes_with_the_same_scores(
    predictor_file: Path, bench: Path, tmp_path: Path
):
    from onnx_bench.batch import POOL_MIN_FILES, describe_paths

    frame = read_bench(bench)
    paths = []
    for i in range(POOL_MIN_FILES + 2):
        path = tmp_path / f"net{i}.onnx"
        assert nas("export", "--space", "nb201", "--arch", frame.iloc[i]["arch"], "-o", str(path)).returncode == 0
        paths.append(path)
    pooled = list(describe_paths(paths, "compact", workers=2))
    alone = list(describe_paths(paths, "compact", workers=1))
    assert [t for t, _ in pooled] == [t for t, _ in alone] and [s for _, s in pooled] == [s for _, s in alone]
    assert all(s["act_missing"] == 0.0 for _, s in pooled)
    proc = nas("predict", *map(str, paths), "--predictor", str(predictor_file), "--json", "--workers", "2",
               env={"NAS_CACHE_DIR": str(tmp_path / "cold")})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    pred = Predictor.load(predictor_file)
    expected = pred.score_embeddings(pred.embed([t for t, _ in alone]), [s for _, s in alone])
    scores = [json.loads(line)["score"] for line in proc.stdout.splitlines()]
    assert scores == pytest.approx(expected, abs=1e-4)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage" * 10)
    bad = [str(junk), *map(str, paths[:-1])]
    proc = nas(
        "predict",
        *bad,
        "--predictor",
        str(predictor_file),
        "--workers",
        "2",
        env={"NAS_CACHE_DIR": str(tmp_path / "c3")},
    )
    assert_one_line_error(proc, "junk.onnx")
    assert_one_line_error(nas("predict", str(paths[0]), "--workers", "0"), "--workers 0")
    assert_one_line_error(nas("predict", *map(str, paths), env={"NAS_WORKERS": "two"}), "NAS_WORKERS='two'")
