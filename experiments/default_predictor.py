"""Train the default predictor shipped in the package on every labelled family, with the recipe that wins the
leave-one-family-out table (`experiments.predictor_families`, whose raw result this script reads).

Targets: NB201 records use CIFAR-10 validation accuracy (200 epochs), NAS-Bench-Macro records the mean test
accuracy of their 3 runs, NASNet records the validation accuracy of the quick-start training budget; ranking
pairs are formed within each (space, target) group only, so the scales are never compared. Writes
``predictors/default_predictor.safetensors`` and records its size, data and leave-one-family-out figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from experiments.predictor_families import RECIPES, RESULTS, TARGETS
from experiments.record import record
from predictors.predictor import Predictor
from predictors.zero_shot import default_predictor_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--benches", nargs="+", default=["runs/bench-nb201", "runs/bench-nbmacro", "runs/bench-nasnet"])
    parser.add_argument("--recipe", default="graph-universal", choices=sorted(RECIPES))
    parser.add_argument("--families", default="predictor-families", help="leave-one-family-out result to cite")
    parser.add_argument("--out", default=str(default_predictor_path()))
    args = parser.parse_args()
    lofo = json.loads((RESULTS / f"{args.families}.json").read_text())  # the same head settings as its table
    combined = Path(tempfile.mkdtemp(prefix="nas-default-bench-"))
    for i, bench in enumerate(args.benches):
        for shard in sorted(Path(bench).glob("records-*.parquet")):
            (combined / f"records-{i}-{shard.name.removeprefix('records-')}").symlink_to(shard.resolve())
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "nas", "predictor", "train", "--bench", str(combined)]
    cmd += ["--target", TARGETS, "--out", args.out, "--ensemble", str(lofo["args"]["ensemble"])]
    cmd += ["--max-steps", str(lofo["args"]["max_steps"])]
    label, variant, needs_text = RECIPES[args.recipe]
    cmd += [] if needs_text else ["--no-embedding"]
    for key, value in variant.items():
        flag = "--" + key.replace("_", "-")
        if key == "use_features":
            cmd += [] if value else ["--no-features"]
        elif isinstance(value, bool):
            cmd += [flag] if value else []
        else:
            cmd += [flag, ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    shutil.rmtree(combined)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    seconds = time.perf_counter() - start
    pred = Predictor.load(args.out)
    data = pred.meta["training_data"]
    size = Path(args.out).stat().st_size / 2**20
    figures = lofo["recipes"][args.recipe]["families"]
    held = "; ".join(
        f"{family} tau {np.mean(v['tau']):.3f} (FLOPs {lofo['baselines'][family]['tau']['FLOPs']:.3f})"
        for family, v in figures.items()
    )
    body = (
        f"`{Path(args.out).name}` ({size:.1f} MiB), recipe `{args.recipe}` ({label}): trained on {data['records']} "
        f"records ({', '.join(f'{k}: {v}' for k, v in data['records_per_space'].items())}) of `{data['target']}` "
        f"(each record: the first of these columns it has), {len(pred.head.core) + len(pred.head.members)} MLPs, "
        f"{pred.meta['train_options']['loss']} loss within each family; {seconds / 60:.1f} min.\n\n"
        f"**Its figures are its recipe's leave-one-family-out figures** (section `{args.families}`: trained without "
        f"the family it is scored on), Kendall tau on each held-out family: {held}. The shipped file itself has seen "
        "every family, so scoring these benches with it is not a zero-shot figure (`nas predictor eval` says so)."
    )
    record("default-predictor", "The shipped default predictor", body)
    print(body)


if __name__ == "__main__":
    main()
