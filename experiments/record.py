"""Store one experiment's raw result in experiments/results/KEY.json and regenerate BENCHMARKS.md from all results."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

from experiments.report import REPO, load_result, save_result, write_benchmarks


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} CPU cores ({cpu}){mem}, {gpu}; Python {platform.python_version()}, torch {torch.__version__}"
    )


def commit() -> str:
    """``git rev-parse HEAD`` of the repository, plus "-dirty" when tracked files differ from it (the results and
    BENCHMARKS.md aside: they are outputs, not code); "unknown" without git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        status = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":!BENCHMARKS.md",
                ":!experiments/results",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


# Taken when the experiment starts (every script imports this module first thing): a run takes minutes to hours,
# and the code it ran is the code of its start.
STARTED_AT = commit()


def command() -> str:
    """The command line of this run, as one would type it from the repository root."""
    module = Path(sys.argv[0]).resolve().relative_to(REPO).with_suffix("").as_posix().replace("/", ".")
    return " ".join(["NAS_DATA_DIR=../shared/data .venv/bin/python -m", module, *sys.argv[1:]])


def record(key: str, title: str, body: str, numbers: dict[str, Any]) -> None:
    """Store the result ``key`` (the rendered section ``body`` and its raw ``numbers``, JSON-able) with its command,
    commit, machine and date, then regenerate BENCHMARKS.md."""
    save_result(
        {
            "key": key,
            "title": title,
            "command": command(),
            "commit": STARTED_AT,
            "machine": machine(),
            "date": date.today().isoformat(),
            "body": body.strip(),
            "numbers": numbers,
        }
    )
    write_benchmarks()


def rerender(key: str, body: str) -> None:
    """Replace the rendered section of the stored result ``key`` (its wording changed, not its numbers), keeping the
    command, commit, machine and date it was measured with, then regenerate BENCHMARKS.md."""
    save_result({**load_result(key), "body": body.strip()})
    write_benchmarks()


def load_numbers(key: str) -> dict[str, Any]:
    """The raw numbers stored by the last run of ``key``."""
    return load_result(key)["numbers"]
