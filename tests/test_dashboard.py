"""``nas dashboard``: a finished run's study in optuna-dashboard, opened in a real headless Chromium; the live
progress line of ``nas search`` with the front's hypervolume."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from nas.search import Search
from nas.search.pareto import normalized_hypervolume
from tests.conftest import REPO
from tests.test_cli import assert_one_line_error, nas
from tests.test_search import table_config


def test_normalized_hypervolume_of_known_fronts():
    assert normalized_hypervolume([], ["max", "min"]) == 0.0
    assert normalized_hypervolume([(90.0, 1.0)], ["max", "min"]) == 1.0  # one point: best in every objective
    # (max acc, min cost): the extremes of the range sit on the reference lines; the middle point adds 0.5 x 0.5.
    assert normalized_hypervolume([(1.0, 1.0), (0.0, 0.0), (0.5, 0.5)], ["max", "min"]) == pytest.approx(0.25)
    assert normalized_hypervolume([(1.0, 1.0), (0.0, 0.0)], ["max", "min"]) == pytest.approx(0.0)
    assert normalized_hypervolume([(1.0, 0.0), (0.0, 1.0)], ["max", "min"]) == pytest.approx(1.0)  # one dominates


def test_search_progress_line_shows_the_count_and_the_front_hypervolume(tmp_path: Path, data_dir: Path):
    done = nas("search", "--space", "nb201", "--evaluator", "table", "--trials", "4", "--run-dir", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    assert "4/4" in done.stderr and "front hv 0." in done.stderr


def test_dashboard_serves_a_finished_run_to_a_real_browser(tmp_path: Path, data_dir: Path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium): the dashboard browser test is skipped")
    run = tmp_path / "run"
    Search(table_config(run, data_dir, trials=5)).run()
    server = subprocess.Popen(
        [sys.executable, "-m", "nas", "dashboard", str(run), "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("dashboard: http://127.0.0.1:"), line
        url = line.split()[-1]
        with urllib.request.urlopen(url.replace("/dashboard/", "/api/studies"), timeout=30) as response:
            studies = json.load(response)["study_summaries"]
        assert [s["study_name"] for s in studies] == ["nas"]
        page = f"{url}studies/{studies[0]['study_id']}/trials"
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900", "--virtual-time-budget=15000"]
        dom = subprocess.run([browser, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
        for text in ("nas (id=0)", "Trial 0", "Trial 4", "edge_0_1"):  # the study, its trials, their parameters
            assert text in dom, text
        shot = tmp_path / "dashboard.png"
        subprocess.run([browser, *flags, f"--screenshot={shot}", page], capture_output=True, timeout=120)
        assert shot.stat().st_size > 10_000
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_dashboard_of_a_directory_without_a_search_is_a_one_line_error(tmp_path: Path):
    assert_one_line_error(nas("dashboard", str(tmp_path)), "holds no search")
