"""Benchmark 2 of issue 3: time and disk size of the NB201 ONNX-Bench build (`nas bench build`).

``--limit N`` builds the first N cells only; the figure is then labelled as a partial build with the
extrapolated full time, never as the full build.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from experiments.record import record
from nas.data import resolve_data_dir
from nas.evaluators import load_nb201_identities, load_nb201_table
from onnx_bench.bench import build, info, nb201_jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=None, help="keep the bench here (default: a temp dir, removed)")
    parser.add_argument("--data-dir", default=os.environ.get("NAS_DATA_DIR"))
    args = parser.parse_args()
    csv_path = str(resolve_data_dir(args.data_dir) / "nb201" / "nb201.csv")
    table = load_nb201_table(csv_path)
    jobs = nb201_jobs(table, args.limit, load_nb201_identities(csv_path))
    out = Path(args.out or tempfile.mkdtemp(prefix="nb201-bench-"))
    start = time.perf_counter()
    result = build(jobs, out, workers=args.workers)
    seconds = time.perf_counter() - start
    summary = info(out)
    if args.out is None:
        shutil.rmtree(out)
    per = seconds / max(result.added, 1)
    full = per * len(table) / 60
    kind = "full build" if len(jobs) == len(table) else f"partial build of the first {len(jobs)} cells"
    body = (
        f"{kind}: {result.added} records in **{seconds / 60:.1f} min** ({result.added / seconds:.2f} records/s, "
        f"{args.workers} worker processes, 1 torch thread each); Parquet on disk: "
        f"{summary['bytes'] / 2**20:.1f} MiB ({summary['bytes'] / max(summary['records'], 1) / 1024:.1f} KiB per "
        f"record; ONNX files are not kept, only their hashes)."
    )
    if len(jobs) != len(table):
        body += f" Extrapolated to all {len(table)} cells at this rate: {full:.0f} min (not measured)."
    body += " Target: all 15,625 records in under 60 minutes."
    record("nb201-bench-build", "NB201 ONNX-Bench build time and size", body)
    print(body)


if __name__ == "__main__":
    main()
