"""Storage URLs as users write them (`nas.search.storage`): the plain ``postgresql://`` form on a real PostgreSQL with
password authentication, storages that cannot be used refused in one line before any trial, and a server that goes
away mid-search: retried with back-off, then a loud failure that keeps every finished trial."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

from nas.search import Search, SearchConfig
from nas.search.storage import backoff, redact
from nas_ground.errors import UserInputError
from tests import postgres
from tests.conftest import REPO
from tests.test_cli import assert_one_line_error, nas


@pytest.fixture(scope="module")
def server() -> Iterator[postgres.Server]:
    reason = postgres.missing_reason()
    if reason:
        pytest.skip(f"PostgreSQL tests skipped: {reason}")
    with postgres.postgres_control() as srv:
        yield srv


def table_search(run: Path, data_dir: Path, storage: str, **over: Any) -> Search:
    settings: dict[str, Any] = {
        "space": "nb201", "evaluator": "table", "trials": 2, "sampler": "random", "run_dir": str(run),
        "data_dir": str(data_dir), "storage": storage, **over,
    }  # fmt: skip
    return Search(SearchConfig(**settings))


def test_the_plain_postgresql_url_runs_and_env_json_names_the_driver(tmp_path: Path, data_dir: Path, server):
    url = postgres.create_database(server.url, "plain")
    assert url.startswith("postgresql://")  # no +driver: what Optuna's and Ray's documentation show
    proc = nas("search", "--space", "nb201", "--evaluator", "table", "--trials", "2", "--storage", url,
               "--run-dir", str(tmp_path / "run"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(optuna.load_study(study_name="nas", storage=url).trials) == 2
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["storage"]["dialect"] == "postgresql" and env["storage"]["driver"] == "psycopg"
    assert env["storage"]["driver_version"].split(".")[0] == "3"
    assert postgres.PASSWORD not in (tmp_path / "run" / "env.json").read_text()
    # the older explicit form keeps working
    explicit = url.replace("postgresql://", "postgresql+psycopg2://")
    assert table_search(tmp_path / "run2", data_dir, explicit, trials=3).run().pareto


def bad_urls(server_url: str) -> list[tuple[str, str]]:
    port = server_url.rsplit(":", 1)[1].split("/")[0]
    return [
        (server_url.replace(postgres.PASSWORD, "wrong-pw"), "password authentication failed"),
        (server_url.replace(f":{port}/", f":{int(port) + 1}/"), "Connection refused"),
        (server_url.rsplit("/", 1)[0] + "/no_such_db", 'database "no_such_db" does not exist'),
    ]


def test_unreachable_postgresql_is_one_line_without_the_password(tmp_path: Path, data_dir: Path, server):
    for url, reason in bad_urls(server.url):
        with pytest.raises(UserInputError) as info:
            table_search(tmp_path / "run", data_dir, url)
        message = str(info.value)
        assert reason in message and "\n" not in message
        assert redact(url) in message and "***" in message
        assert postgres.PASSWORD not in message and "wrong-pw" not in message
        assert not (tmp_path / "run").exists()  # refused before anything was written or trained
    # and through the command line: exit 2, one line, no password, no traceback
    proc = nas("search", "--space", "nb201", "--evaluator", "table", "--storage", bad_urls(server.url)[0][0],
               "--run-dir", str(tmp_path / "cli"))  # fmt: skip
    assert_one_line_error(proc, "password authentication failed")
    assert "wrong-pw" not in proc.stderr and not (tmp_path / "cli").exists()


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("mysql://user:pw@127.0.0.1/db", "pip install 'mysqlclient', or write mysql+pymysql://"),
        ("mysql+pymysql://user@127.0.0.1/db", "needs the pymysql driver"),
        ("sqlite://", "in-memory SQLite database keeps nothing"),
        ("sqlite:///no/such/folder/study.db", "does not exist"),
        ("postgres://user@127.0.0.1/db", "write postgresql://"),
        ("postgresql+asyncpg://user@127.0.0.1/db", "asyncpg"),
        ("not a url", "is not a database URL"),
    ],
)
def test_urls_that_cannot_work_say_what_they_need(tmp_path: Path, data_dir: Path, url: str, needle: str):
    with pytest.raises(UserInputError) as info:
        table_search(tmp_path / "run", data_dir, url)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert "pw@" not in str(info.value)
    assert not (tmp_path / "run").exists()


def test_a_read_only_sqlite_file_is_refused_before_any_trial(tmp_path: Path, data_dir: Path):
    db = tmp_path / "study.db"
    table_search(tmp_path / "first", data_dir, f"sqlite:///{db}").run()  # a real study in it
    before = db.read_bytes()
    if os.geteuid() == 0:  # root writes through file modes: open it read-only the way SQLite offers
        url = f"sqlite:///file:{db}?mode=ro&uri=true"
    else:
        db.chmod(0o444)
        url = f"sqlite:///{db}"
    with pytest.raises(UserInputError, match="readonly database"):
        table_search(tmp_path / "run", data_dir, url, trials=4)
    assert db.read_bytes() == before and not (tmp_path / "run").exists()


def test_backoff_doubles_within_the_patience():
    assert list(backoff(10)) == [0.5, 1.0, 2.0, 4.0, 2.5]
    assert sum(backoff(60)) == pytest.approx(60) and max(backoff(1000)) == 16.0
    assert list(backoff(0)) == []


def slow_search(run: Path, url: str, patience: float, trials: int) -> list[str]:
    config = run.parent / "slow.yaml"
    config.write_text("evaluator_options: {delay_s: 0.5}\n")
    return [
        sys.executable, "-m", "nas", "search", "--space", "nb201", "--evaluator", "nas.testing.SlowTableEvaluator",
        "--trials", str(trials), "--sampler", "random", "--run-dir", str(run), "--config", str(config),
        "--storage", url, "--storage-patience", str(patience), "--heartbeat", "2",
    ]  # fmt: skip


def completed(url: str) -> int:
    return sum(t.state.name == "COMPLETE" for t in optuna.load_study(study_name="nas", storage=url).trials)


def start_and_drop(server: postgres.Server, args: list[str], url: str, after: int) -> subprocess.Popen[str]:
    """Start the search; stop the server once ``after`` trials completed."""
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the search did not get going within 120 s"
        try:
            if completed(url) >= after:
                break
        except KeyError:  # study not created yet
            pass
        time.sleep(0.1)
    server.stop()
    return proc


def test_a_server_back_within_the_patience_loses_nothing(tmp_path: Path, data_dir: Path, server, caplog):
    url = postgres.create_database(server.url, "comes_back")
    search = table_search(
        tmp_path / "run", data_dir, url, trials=6, evaluator="nas.testing.SlowTableEvaluator",
        evaluator_options={"delay_s": 0.5}, heartbeat=2.0,
    )  # fmt: skip
    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            search.run()
        except BaseException as exc:  # handed to the test thread
            failure.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not done.is_set() and time.monotonic() < deadline:
        try:
            if completed(url) >= 2:
                break
        except KeyError:  # the study is not created yet
            pass
        time.sleep(0.05)
    assert not done.is_set(), failure
    server.stop()
    time.sleep(3)  # the search retries meanwhile
    server.start()
    thread.join(timeout=120)
    assert not thread.is_alive() and not failure, failure
    assert any("retry 1 in 0.5 s" in r.getMessage() for r in caplog.records)  # it did meet the outage
    trials = optuna.load_study(study_name="nas", storage=url).trials
    assert completed(url) == 6 and all(t.state.name == "COMPLETE" for t in trials)


def test_a_server_that_stays_away_fails_loudly_and_keeps_the_finished_trials(tmp_path: Path, data_dir: Path, server):
    url = postgres.create_database(server.url, "stays_away")
    args = slow_search(tmp_path / "run", url, 3, 6)
    proc = start_and_drop(server, args, url, after=2)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        server.start()
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 2, err
    assert last.startswith("error: storage") and "stopped answering mid-search" in last and "gave up" in last
    assert "Traceback" not in err and postgres.PASSWORD not in err
    kept = completed(url)
    assert kept >= 2  # what finished before the drop is in the study
    # and the same run resumes to the requested trials
    table_search(
        tmp_path / "run", data_dir, url, trials=6, evaluator="nas.testing.SlowTableEvaluator",
        evaluator_options={"delay_s": 0.5}, heartbeat=2.0, storage_patience=3.0,
    ).run()  # fmt: skip
    assert completed(url) == 6
