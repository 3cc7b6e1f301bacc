"""Train the default predictor shipped in the package: the full NB201 bench plus the harvested NASNet candidates.

Targets: NB201 records use CIFAR-10 validation accuracy (200 epochs), NASNet records the validation accuracy of
the quick-start training budget; ranking pairs are formed within each (space, target) group only, so the two
scales are never compared. Writes ``predictors/default_predictor.safetensors`` and records its size and data.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments.record import record
from predictors.predictor import Predictor
from predictors.zero_shot import default_predictor_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--benches", nargs="+", default=["runs/bench-nb201-v2", "runs/bench-nasnet"])
    parser.add_argument("--out", default=str(default_predictor_path()))
    parser.add_argument("--ensemble", type=int, default=3, help="MLPs per view (the file stays a few MB)")
    parser.add_argument(
        "--embedding",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="read the text embedding too (default off: on NB201 it ranks no better and costs 2.3x cold time)",
    )
    args = parser.parse_args()
    combined = Path(tempfile.mkdtemp(prefix="nas-default-bench-"))
    for i, bench in enumerate(args.benches):
        for shard in sorted(Path(bench).glob("records-*.parquet")):
            (combined / f"records-{i}-{shard.name.removeprefix('records-')}").symlink_to(shard.resolve())
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "nas", "predictor", "train", "--bench", str(combined)]
    cmd += ["--target", "cifar10_valid_acc,accuracy", "--out", args.out, "--ensemble", str(args.ensemble)]
    cmd += [] if args.embedding else ["--no-embedding"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    shutil.rmtree(combined)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    seconds = time.perf_counter() - start
    pred = Predictor.load(args.out)
    data = pred.meta["training_data"]
    size = Path(args.out).stat().st_size / 2**20
    body = (
        f"`{Path(args.out).name}` ({size:.1f} MiB): trained on {data['records']} records "
        f"({', '.join(f'{k}: {v}' for k, v in data['records_per_space'].items())}) of `{data['target']}` "
        f"(each record: the first of these columns it has), two views of {len(pred.head.core)} MLPs each "
        f"(core weight {pred.head.core_weight}), "
        + ("text embedding + graph features, " if pred.use_embedding else "graph features only (no text embedding), ")
        + f"{pred.meta['train_options']['loss']} loss within each space; {seconds / 60:.1f} min. Its held-out "
        "figures are those of the NB201 section above (the graph-features-only ablation rows when it reads no "
        "text) and of the NASNet section."
    )
    record("default-predictor", "The shipped default predictor", body)
    print(body)


if __name__ == "__main__":
    main()
