"""Write one benchmark's result into BENCHMARKS.md, between markers, with command, machine and date."""

from __future__ import annotations

import os
import platform
import re
import sys
import tempfile
from datetime import date
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


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


def record(key: str, title: str, body: str) -> None:
    """Replace (or append) the section ``key`` of BENCHMARKS.md; the file is rewritten atomically."""
    module = Path(sys.argv[0]).resolve().relative_to(BENCHMARKS.parent).with_suffix("").as_posix().replace("/", ".")
    command = " ".join(["NAS_DATA_DIR=../shared/data .venv/bin/python -m", module, *sys.argv[1:]])
    section = (
        f"<!-- bench:{key} -->\n## {title}\n\n"
        f"- Command: `{command}`\n- Machine: {machine()}\n- Date: {date.today().isoformat()}\n\n"
        f"{body.strip()}\n<!-- /bench:{key} -->"
    )
    text = (
        BENCHMARKS.read_text()
        if BENCHMARKS.exists()
        else "# Benchmarks\n\nEvery figure here is written by a script in `experiments/`.\n"
    )
    pattern = re.compile(rf"<!-- bench:{re.escape(key)} -->.*?<!-- /bench:{re.escape(key)} -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    fd, tmp = tempfile.mkstemp(dir=BENCHMARKS.parent, prefix=".BENCHMARKS.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, BENCHMARKS)
