"""Time and disk size of the NB201 ONNX-Bench build (`nas bench build`).

``--limit N`` builds the first N cells only; the figure is then labelled as a partial build with the
extrapolated full time, never as the full build.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from experiments.record import record
from nas.tables import load_nb201_identities, load_nb201_table
from nas_ground.data import resolve_data_dir
from onnx_bench.bench import build, info, nb201_jobs

app = typer.Typer(add_completion=False, rich_markup_mode="markdown")


@app.command(help=__doc__)
def main(
    limit: Annotated[int | None, typer.Option(help="Build the first N cells only (default: all).")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    out: Annotated[str | None, typer.Option(help="Keep the bench here (default: a temp dir, removed).")] = None,
    data_dir: Annotated[str | None, typer.Option(envvar="NAS_DATA_DIR", help="Data directory.")] = None,
) -> None:
    csv_path = str(resolve_data_dir(data_dir) / "nb201" / "nb201.csv")
    table = load_nb201_table(csv_path)
    jobs = nb201_jobs(table, limit, load_nb201_identities(csv_path))
    bench = Path(out or tempfile.mkdtemp(prefix="nb201-bench-"))
    start = time.perf_counter()
    result = build(jobs, bench, workers=workers)
    seconds = time.perf_counter() - start
    summary = info(bench)
    if out is None:
        shutil.rmtree(bench)
    per = seconds / max(result.added, 1)
    full = per * len(table) / 60
    kind = "full build" if len(jobs) == len(table) else f"partial build of the first {len(jobs)} cells"
    body = (
        f"{kind}: {result.added} records in **{seconds / 60:.1f} min** ({result.added / seconds:.2f} records/s, "
        f"{workers} worker processes, 1 torch thread each); Parquet on disk: "
        f"{summary['bytes'] / 2**20:.1f} MiB ({summary['bytes'] / max(summary['records'], 1) / 1024:.1f} KiB per "
        f"record; ONNX files are not kept, only their hashes)."
    )
    if len(jobs) != len(table):
        body += f" Extrapolated to all {len(table)} cells at this rate: {full:.0f} min (not measured)."
    body += " Target: all 15,625 records in under 60 minutes."
    numbers = {
        "cells": len(jobs),
        "table_cells": len(table),
        "records_added": result.added,
        "seconds": seconds,
        "workers": workers,
        "bytes": summary["bytes"],
        "records": summary["records"],
    }
    record("nb201-bench-build", "NB201 ONNX-Bench build time and size", body, numbers)
    print(body)


if __name__ == "__main__":
    app()
