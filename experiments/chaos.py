"""Crash and garbage: a search killed with SIGKILL at random moments and resumed; malformed inputs of each kind.

``kill``: (1) the driver: ``nas search`` (NB201 table behind `nas.testing.SlowTableEvaluator`, journal storage)
killed with SIGKILL at ``--kills`` random moments, the same command run again after each, then to the end;
(2) Ray workers: one ``--workers 2`` search during which ``--kills`` task worker processes are killed with SIGKILL
at random moments. Each reports trials requested, finished (counted), lost (interrupted without a counted redo),
duplicated (counted twice: a trial and its redo, or more counted than requested).

``fuzz``: malformed inputs of each kind given to the command that reads them, in this process; each ends as
``exit 2 + one line`` (the only acceptable answer), ``accepted`` (the mutation happened to be valid: exit 0), or
``other`` (any other exit, a traceback, or an output file left behind by a failed command).

``crafted``: the hostile ONNX files of `nas.hostile_onnx` (external data outside the folder, tensors of 10^12
elements, deep nesting, cycles, custom domains, opset 99, an endless Loop), each given to ``nas describe`` and
``nas predict`` in a child process limited to 2 GiB of address space: the answer, its seconds and the child's
peak RSS.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import optuna
import psutil
import typer

from experiments.record import record
from nas.search import make_storage
from nas.search.recovery import counts

REPO = Path(__file__).resolve().parents[1]
app = typer.Typer(add_completion=False, rich_markup_mode="markdown")


def tally(run: Path, requested: int) -> dict[str, int]:
    trials = optuna.load_study(study_name="nas", storage=make_storage(None, run)).trials
    counted = [t for t in trials if counts(t)]
    number = {t.number: t for t in trials}
    by_original: dict[int, int] = {}  # first attempt -> counted attempts (a redo chain counts once)
    for t in counted:
        root = t.number
        while "redo_of" in number[root].user_attrs:
            root = number[root].user_attrs["redo_of"]
        by_original[root] = by_original.get(root, 0) + 1
    redone = {t.user_attrs["redo_of"] for t in trials if "redo_of" in t.user_attrs}
    interrupted = [t for t in trials if t.state.name == "FAIL" and not counts(t) and "surplus" not in t.user_attrs]
    lost = sum(1 for t in interrupted if t.number not in redone)
    duplicated = sum(n - 1 for n in by_original.values() if n > 1) + max(0, len(counted) - requested)
    return {
        "requested": requested,
        "finished": len(counted),
        "lost": lost,
        "duplicated": duplicated,
        "interrupted": len(interrupted),
        "trials_in_study": len(trials),
    }


def search_args(run: Path, trials: int, config: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "nas", "search", "--space", "nb201", "--evaluator", "nas.testing.SlowTableEvaluator",
        "--trials", str(trials), "--seed", "0", "--sampler", "tpe", "--run-dir", str(run), "--config", str(config),
        "--heartbeat", "2", *extra,
    ]  # fmt: skip


def kill_driver(root: Path, trials: int, kills: int, rng: random.Random) -> dict[str, Any]:
    run, config = root / "driver", root / "slow.yaml"
    config.write_text("evaluator_options:\n  delay_s: 0.3\n")
    moments = []
    for _ in range(kills):
        proc = subprocess.Popen(
            search_args(run, trials, config), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        moment = rng.uniform(3.0, 12.0)  # start-up (imports, table) takes ~4-8 s: some kills land before a trial
        time.sleep(moment)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        moments.append(round(moment, 2))
    done = subprocess.run(search_args(run, trials, config), cwd=REPO, capture_output=True, text=True)
    return {**tally(run, trials), "kill_moments_s": moments, "final_exit": done.returncode}


def kill_workers(root: Path, trials: int, kills: int, rng: random.Random) -> dict[str, Any]:
    run, config = root / "ray", root / "slow.yaml"
    config.write_text("evaluator_options:\n  delay_s: 1.0\n")
    proc = subprocess.Popen(
        search_args(run, trials, config, "--workers", "2"),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    killed: list[int] = []

    def killer() -> None:
        while len(killed) < kills and proc.poll() is None:
            time.sleep(rng.uniform(2.0, 6.0))
            tasks = [
                p
                for p in psutil.process_iter(["cmdline"])
                if any("_evaluate_task" in part or "ray::IDLE" in part for part in (p.info["cmdline"] or []))
            ]
            if tasks:
                victim = rng.choice(tasks)
                with contextlib.suppress(psutil.Error):
                    victim.send_signal(signal.SIGKILL)
                    killed.append(victim.pid)

    thread = threading.Thread(target=killer)
    thread.start()
    code = proc.wait(timeout=1800)
    thread.join()
    return {**tally(run, trials), "workers_killed": len(killed), "final_exit": code}


def run_cli(*args: str) -> tuple[int, str]:
    """``nas ARGS`` in this process: exit code and stderr."""
    from nas.cli import main

    err = io.StringIO()
    saved = sys.argv
    sys.argv = ["nas", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
            except Exception as exc:  # a crash is a finding, not the end of the experiment
                err.write(f"Traceback (uncaught {type(exc).__name__})\n")
                code = 1
    finally:
        sys.argv = saved
    return code, err.getvalue()


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One of: truncation, random bytes, a flipped byte run, deletion, empty."""
    kind = rng.randrange(5)
    if kind == 0 and data:
        return data[: rng.randrange(len(data))]
    if kind == 1:
        return rng.randbytes(rng.randrange(1, 2000))
    if kind == 2 and data:
        i = rng.randrange(len(data))
        return data[:i] + rng.randbytes(min(16, len(data) - i)) + data[i + 16 :]
    if kind == 3 and len(data) > 2:
        i, j = sorted(rng.sample(range(len(data)), 2))
        return data[:i] + data[j:]
    return b""


def classify(code: int, err: str, leftover: Path | None = None) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    if leftover is not None and leftover.exists() and code != 0:
        return "other"
    if code == 0:
        return "accepted"
    if code == 2 and len(lines) == 1 and "Traceback" not in err:
        return "exit 2, one line"
    return "other"


def fuzz(root: Path, per_kind: int, rng: random.Random) -> dict[str, dict[str, Any]]:
    from onnx_bench.export import export_architecture
    from search_spaces import get_space

    space = get_space("nb201")
    cell = space.encode(space.sample(random.Random(0)))
    good_onnx = export_architecture(space, space.decode(cell), build_options={"channels": 4, "cells_per_stage": 1}).data
    (root / "good.onnx").write_bytes(good_onnx)
    predictor = (REPO / "predictors" / "default_predictor.safetensors").read_bytes()
    shard = next((REPO / "runs" / "bench-nasnet").glob("*.parquet"), None)
    if shard is None:  # no bench of earlier runs here: build a small one (20 NB201 cells of the table) to mutate
        code, err = run_cli("bench", "build", "--space", "nb201", "--out", str(root / "bench-src"), "--limit", "20")
        shard = next((root / "bench-src").glob("*.parquet"), None)
        if shard is None:
            raise RuntimeError(f"could not build a bench shard to fuzz (exit {code}): {err.strip()[-300:]}")
    good_config = b"space: nb201\nevaluator: table\ntrials: 1\nsampler: random\nobjectives: accuracy:max,params:min\n"
    results: dict[str, dict[str, Any]] = {}
    examples: dict[str, str] = {}

    def note(kind: str, outcome: str, err: str) -> None:
        row = results.setdefault(kind, {"tried": 0, "exit 2, one line": 0, "accepted": 0, "other": 0})
        row["tried"] += 1
        row[outcome] += 1
        if outcome == "other" and kind not in examples:
            examples[kind] = err.strip()[-300:]

    for i in range(per_kind):
        bad = root / f"bad{i}.onnx"
        bad.write_bytes(mutate(good_onnx, rng))
        code, err = run_cli("graph", str(bad))
        note("ONNX file (nas graph)", classify(code, err), err)
        chars = list(cell)
        for _ in range(rng.randrange(1, 4)):
            j = rng.randrange(len(chars))
            chars[j] = rng.choice("|+~0123456789_abcxyz ")
        out = root / f"arch{i}.onnx"
        code, err = run_cli("export", "--space", "nb201", "--arch", "".join(chars), "-o", str(out))
        note("architecture string (nas export)", classify(code, err, out), err)
        out.unlink(missing_ok=True)
        cfg = root / f"config{i}.yaml"
        cfg.write_bytes(mutate(good_config, rng))
        run = root / f"run{i}"
        # The flags keep an accepted config cheap (one table query); everything else comes from the file.
        code, err = run_cli(
            "search", "--config", str(cfg), "--run-dir", str(run), "--space", "nb201", "--evaluator", "table",
            "--trials", "1",
        )  # fmt: skip
        note("search config (nas search --config)", classify(code, err, run / "pareto.json"), err)
        pred = root / f"pred{i}.safetensors"
        pred.write_bytes(mutate(predictor, rng))
        code, err = run_cli("predict", "--predictor", str(pred), str(root / "good.onnx"))
        note("predictor file (nas predict --predictor)", classify(code, err), err)
        if shard is not None:
            bench = root / f"bench{i}"
            bench.mkdir()
            (bench / shard.name).write_bytes(mutate(shard.read_bytes(), rng))
            code, err = run_cli("bench", "info", str(bench))
            note("bench shard (nas bench info)", classify(code, err), err)
    for kind, text in examples.items():
        results[kind]["first_other"] = text
    return results


CRAFTED_MEMORY = 2 * 2**30


def _limited_child() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CRAFTED_MEMORY, CRAFTED_MEMORY))


# `python -m nas ARGS` that writes its own peak RSS (VmHWM, kB) to $NAS_CHAOS_HWM at exit. VmHWM starts afresh at
# exec; `os.wait4`'s ru_maxrss would also count the pages the child shared with this process before exec.
HWM_WRAPPER = (
    "import atexit, os, runpy, sys\n"
    "def _hwm():\n"
    "    with open('/proc/self/status') as f:\n"
    "        kb = next(line.split()[1] for line in f if line.startswith('VmHWM'))\n"
    "    with open(os.environ['NAS_CHAOS_HWM'], 'w') as f:\n"
    "        f.write(kb)\n"
    "atexit.register(_hwm)\n"
    "sys.argv = ['nas', *sys.argv[1:]]\n"
    "runpy.run_module('nas', run_name='__main__', alter_sys=True)\n"
)


def run_limited(args: list[str], timeout: float = 120) -> tuple[int | None, str, str, float, float | None]:
    """``nas ARGS`` in a child limited to `CRAFTED_MEMORY` of address space: exit code (None: killed at
    ``timeout``), stdout, stderr, seconds, the child's own peak RSS in MiB (its VmHWM at exit; None if it was
    killed before it could say)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, tempfile.TemporaryDirectory() as d:
        hwm = Path(d) / "hwm"
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-c", HWM_WRAPPER, *args], cwd=REPO, stdout=out, stderr=err,
            preexec_fn=_limited_child, env={**os.environ, "NAS_CHAOS_HWM": str(hwm)},
        )  # fmt: skip
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        code = proc.wait()
        timer.cancel()
        seconds = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        peak = int(hwm.read_text()) / 1024 if hwm.is_file() and hwm.read_text().strip() else None
        return (None if code == -signal.SIGKILL else code), out.read(), err.read(), seconds, peak


def crafted(root: Path) -> list[dict[str, Any]]:
    """One row per crafted hostile file (`nas.hostile_onnx`) and command (describe, predict)."""
    from nas.hostile_onnx import CASES

    rows = []
    for i, case in enumerate(CASES):
        path = case.build(root / f"crafted{i}")
        for command in ("describe", "predict"):
            code, out, err, seconds, peak = run_limited([command, str(path)])
            lines = [line for line in err.strip().splitlines() if line.strip()]
            if code is None:
                outcome = "other (killed after 120 s)"
            elif code == 2 and len(lines) == 1 and "Traceback" not in err:
                outcome = "exit 2, one line"
            elif code == 0 and command == "describe":
                outcome = "description" + (" with ?" if "?" in out else "")
            elif code == 0:
                outcome = "scored" + (" (activation features missing)" if "activation features failed" in err else "")
            else:
                outcome = f"other (exit {code})"
            designed = outcome == "exit 2, one line" if case.refused else outcome.startswith(("description", "scored"))
            rows.append(
                {
                    "case": case.name,
                    "command": f"nas {command}",
                    "outcome": outcome,
                    "as_designed": designed,
                    "seconds": round(seconds, 1),
                    "peak_rss_mib": None if peak is None else round(peak),
                    "message": lines[-1][:200] if lines and code != 0 else "",
                }
            )
    return rows


def crafted_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "Crafted hostile ONNX files (`nas.hostile_onnx`), each command in a child process limited to 2 GiB of address "
        "space (RLIMIT_AS); peak RSS: the child's own high-water mark (VmHWM) at exit:\n",
        "| case | command | outcome | as designed | seconds | peak RSS (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        designed = "yes" if r["as_designed"] else "**no**"
        peak = "?" if r["peak_rss_mib"] is None else r["peak_rss_mib"]
        lines.append(f"| {r['case']} | `{r['command']}` | {r['outcome']} | {designed} | {r['seconds']} | {peak} |")
    return lines


@app.command(help=__doc__)
def main(
    kills: Annotated[int, typer.Option(help="SIGKILLs per scenario.")] = 10,
    trials: Annotated[int, typer.Option(help="Trials requested per search.")] = 40,
    per_kind: Annotated[int, typer.Option(help="Malformed inputs per kind.")] = 40,
    seed: Annotated[int, typer.Option(help="Seed of the kill moments and the mutations.")] = 0,
) -> None:
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="nas-chaos-"))
    try:
        driver = kill_driver(root, trials, kills, rng)
        print("driver", driver, flush=True)
        workers = kill_workers(root, trials, kills, rng)
        print("workers", workers, flush=True)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        fuzzed = fuzz(root, per_kind, rng)
        print("fuzz", fuzzed, flush=True)
        hostile = crafted(root)
        print("crafted", hostile, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    lines = [
        f"NB201 table behind a slow evaluator (`nas.testing.SlowTableEvaluator`), TPE, {trials} trials requested, "
        f"journal storage, seed {seed}. Target: 0 lost, 0 duplicated, exactly {trials} finished.\n",
        "| scenario | SIGKILLs | finished / requested | lost | duplicated | interrupted (redone) |",
        "|---|---|---|---|---|---|",
        f"| driver killed, same command resumes | {kills} | {driver['finished']} / {trials} | **{driver['lost']}** | "
        f"**{driver['duplicated']}** | {driver['interrupted']} |",
        f"| Ray task worker processes killed (`--workers 2`) | {workers['workers_killed']} | {workers['finished']} / "
        f"{trials} | **{workers['lost']}** | **{workers['duplicated']}** | {workers['interrupted']} |",
        "",
        f"Malformed inputs ({per_kind} per kind, seeded mutations of a valid file or string: truncation, random "
        "bytes, overwritten runs, deletions, empty):\n",
        "| input | tried | exit 2, one line | accepted (valid after mutation) | other |",
        "|---|---|---|---|---|",
    ]
    for kind, row in fuzzed.items():
        lines.append(
            f"| {kind} | {row['tried']} | {row['exit 2, one line']} | {row['accepted']} | **{row['other']}** |"
        )
    others = {k: v["first_other"] for k, v in fuzzed.items() if "first_other" in v}
    if others:
        lines += ["", "First unacceptable answer of each kind:"] + [
            f"- {k}: `{v.splitlines()[-1][:200]}`" for k, v in others.items()
        ]
    lines += ["", *crafted_table(hostile)]
    record(
        "chaos",
        "Crashes and malformed inputs",
        "\n".join(lines),
        {"driver": driver, "workers": workers, "fuzz": fuzzed, "crafted": hostile},
    )


if __name__ == "__main__":
    app()
