"""Run directories: where a new search writes by default, the latest one of a space, the environment it ran in."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna

from nas_ground.atomic import atomic_write


def default_run_dir(space: str) -> Path:
    return Path("runs") / f"{space}-{datetime.now():%Y%m%d-%H%M%S}"


def latest_run_dir(space: str, root: Path = Path("runs")) -> Path | None:
    candidates = sorted(p for p in root.glob(f"{space}-*") if (p / "config.yaml").exists())
    return candidates[-1] if candidates else None


def write_env(run_dir: Path, storage: dict[str, Any] | None = None) -> None:
    """``env.json``: versions, device, commit, and the storage's dialect and driver when it is a database."""
    import onnx
    import torch

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "onnx": onnx.__version__,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "git_commit": commit or None,
        "storage": storage or {"url": None, "dialect": "journal", "driver": None, "driver_version": None},
        "written": datetime.now().isoformat(timespec="seconds"),
    }
    atomic_write(run_dir / "env.json", json.dumps(env, indent=2) + "\n")
