"""The CLI as a user runs it: bad input exits 2 with one line; SIGKILL of a real process then resume loses nothing."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import REPO


def nas(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300, isolated: bool = False
) -> subprocess.CompletedProcess[str]:
    """``nas ARGS`` as a user's shell runs it: exit code, stdout and stderr. By default the CLI's own ``main()``
    runs in this process with its output captured (a subprocess would spend seconds starting an interpreter and
    importing torch for every call); ``isolated`` runs a real subprocess, for what needs a process of its own
    (a Ray runtime, a kill)."""
    if isolated:
        return subprocess.run(
            [sys.executable, "-m", "nas", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            env={**os.environ, **(env or {})},
        )
    from nas.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    saved_env, saved_argv = dict(os.environ), sys.argv
    os.environ.update(env or {})
    sys.argv = ["nas", *args]
    try:
        with contextlib.chdir(REPO), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            root = logging.getLogger()
            handler = logging.StreamHandler(err)  # what the CLI logs reaches stderr, as in a process of its own
            handler.setLevel(logging.WARNING)
            root.addHandler(handler)
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
            except Exception:
                traceback.print_exc(file=err)
                code = 1
            finally:
                root.removeHandler(handler)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
    return subprocess.CompletedProcess(["nas", *args], code, out.getvalue(), err.getvalue())


def assert_one_line_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["search", "--space", "resnet"], "'resnet'"),
        (["search", "--space", "nb201", "--evaluator", "oracle"], "'oracle'"),
        (
            ["search", "--space", "nb201", "--evaluator", "table", "--objectives", "accuracy:max,joules:min"],
            "'joules'",
        ),
        (["search", "--space", "nb201", "--evaluator", "table", "--sampler", "grid"], "'grid'"),
        (
            ["search", "--space", "nb201", "--evaluator", "table", "--data-dir", "/nonexistent/data"],
            "/nonexistent/data",
        ),
        (["evaluate", "--space", "nb201", "--evaluator", "table", "--arch", "|nor_conv_9x9~0|+|"], "+|"),
        (
            [
                "evaluate",
                "--space",
                "nb201",
                "--evaluator",
                "table",
                "--arch",
                "|nor_conv_9x9~0|+|none~0|none~1|+|none~0|none~1|none~2|",
            ],
            "nor_conv_9x9",
        ),
        (["search", "--config", "/nonexistent/config.yaml"], "/nonexistent/config.yaml"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, data_dir: Path, args: list[str], needle: str):
    proc = nas(*args, "--run-dir", str(tmp_path / "run")) if args[0] == "search" else nas(*args)
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "run").exists()


def test_unreadable_config(tmp_path: Path, data_dir: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trials: [1, 2\nspace: :\n")
    assert_one_line_error(nas("search", "--config", str(bad)), str(bad))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("space: nb201\ntrails: 3\n")
    assert_one_line_error(nas("search", "--config", str(unknown)), "'trails'")
    binary = tmp_path / "binary.yaml"  # found by experiments/chaos.py: random bytes raised UnicodeDecodeError
    binary.write_bytes(bytes(range(128, 256)))
    assert_one_line_error(nas("search", "--config", str(binary)), str(binary))
    for text, needle in (
        ("trials: abc\n", "trials='abc'"),
        ("seed: [1]\n", "seed=[1]"),
        ("trials: true\n", "trials=True"),
    ):
        typed = tmp_path / "typed.yaml"
        typed.write_text(text)
        assert_one_line_error(nas("search", "--config", str(typed)), needle)


def test_evaluate_prints_table_metrics(data_dir: Path):
    arch = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"
    proc = nas("evaluate", "--space", "nb201", "--evaluator", "table", "--arch", arch)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["metrics"]["nb201_index"] == 6111
    assert result["metrics"]["accuracy"] == pytest.approx(91.6067)


def completed_trials(run: Path) -> list[optuna.trial.FrozenTrial]:
    if not (run / "study.journal").exists():
        return []
    storage = optuna.storages.journal.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run / "study.journal"))
    )
    try:
        study = optuna.load_study(study_name="nas", storage=storage)
    except KeyError:
        return []
    return study.get_trials(states=(TrialState.COMPLETE,))


@pytest.mark.slow  # ~15 s; the driver kill is also covered by the Ray and PostgreSQL kill tests and chaos.py
def test_sigkill_then_same_command_resumes(tmp_path: Path, data_dir: Path):
    run = tmp_path / "run"
    config = tmp_path / "small.yaml"
    config.write_text("evaluator_options:\n  test_images: 500\n")
    args = [
        "search", "--space", "nasnet", "--trials", "6", "--seed", "3", "--run-dir", str(run), "--config", str(config),
        "--channels", "4", "--layers", "1", "--epochs", "1", "--train-images", "256", "--val-images", "128",
    ]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "nas", *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 240
    try:
        while len(completed_trials(run)) < 2:
            assert proc.poll() is None, "the search ended before it could be killed"
            assert time.monotonic() < deadline, "no completed trial within 240 s"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = {t.number: (t.user_attrs["arch"], t.values) for t in completed_trials(run)}
    assert len(before) >= 2
    done = nas(*args)
    assert done.returncode == 0, done.stderr
    after = {t.number: (t.user_attrs["arch"], t.values) for t in completed_trials(run)}
    assert len(after) == 6
    assert all(after[n] == before[n] for n in before)  # nothing completed was redone or changed
    with open(run / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    interrupted = [r for r in rows if r["fail_reason"] == "interrupted"]
    assert len(rows) == 6 + len(interrupted)
    assert len({r["number"] for r in rows}) == len(rows)
    pareto = json.loads((run / "pareto.json").read_text())
    assert pareto["members"] and all((run / m["onnx"]).is_file() for m in pareto["members"])
    assert all("test_accuracy" in m["metrics"] for m in pareto["members"])
