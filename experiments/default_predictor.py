"""Train the default predictor shipped in the package on every labelled family, with the recipe that wins the
leave-one-family-out table (`experiments.predictor_families`, whose raw result this script reads).

Targets: NB201 records use the table's CIFAR-10 validation accuracy (200 epochs; CIFAR-100 and ImageNet16-120
test accuracy for those families), NAS-Bench-Macro records the mean test accuracy of their 3 runs, the families
labelled here (DARTS and NASNet cells, BigNAS children, transformer-small on SST-2) the validation accuracy of their
family's budget; ranking pairs are formed within each (space, target) group only, so the scales are never compared.
Writes ``predictors/default_predictor.safetensors`` and records its size, data and leave-one-family-out figures.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from experiments.predictor_families import RECIPES, TARGETS, verdict
from experiments.record import load_numbers, record
from predictors.predictor import Predictor
from predictors.zero_shot import default_predictor_path

BENCHES = [
    "runs/bench-nb201-cifar10",
    "runs/bench-nb201-cifar100",
    "runs/bench-nb201-imagenet16",
    "runs/bench-nbmacro",
    "runs/bench-darts",
    "runs/bench-nasnet",
    "runs/bench-bignas",
    "runs/bench-transformer",
]

app = typer.Typer(add_completion=False, rich_markup_mode="markdown")


@app.command(help=__doc__)
def main(
    benches: Annotated[
        list[str], typer.Option(default_factory=lambda: list(BENCHES), help="Bench directories, one per --benches.")
    ],
    recipe: Annotated[str, typer.Option(help=f"Recipe: {', '.join(sorted(RECIPES))}.")] = "graph-universal",
    families: Annotated[str, typer.Option(help="Leave-one-family-out result to cite.")] = "predictor-families",
    out: Annotated[str, typer.Option(help="Predictor file to write.")] = str(default_predictor_path()),
    keep_record: Annotated[
        bool, typer.Option("--record/--no-record", help="Record as the shipped predictor (off: a held-out file).")
    ] = True,
) -> None:
    if recipe not in RECIPES:
        raise typer.BadParameter(f"{recipe!r} is not one of {', '.join(sorted(RECIPES))}", param_hint="'--recipe'")
    lofo = load_numbers(families)  # the same head settings as its table
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "nas", "predictor", "train"]
    for bench in benches:
        cmd += ["--bench", bench]
    cmd += ["--target", TARGETS, "--out", out, "--ensemble", str(lofo["args"]["ensemble"])]
    cmd += ["--max-steps", str(lofo["args"]["max_steps"])]
    label, variant, needs_text = RECIPES[recipe]
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
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    seconds = time.perf_counter() - start
    pred = Predictor.load(out)
    data = pred.meta["training_data"]
    size = Path(out).stat().st_size / 2**20
    figures = lofo["recipes"][recipe]["families"]
    judged = verdict(lofo, recipe)
    held = "; ".join(
        f"{family} tau {np.mean(v['tau']):.3f} (best single proxy {judged['families'][family]['best_proxy']} "
        f"{judged['families'][family]['best_proxy_tau']:.3f}"
        + ("" if judged["families"][family]["vetoes"] else "; noise ceiling below 0.5")
        + ")"
        for family, v in figures.items()
    )
    held += (
        f". Mean over the families {judged['mean']:.3f} against the best single proxy's mean "
        f"({judged['best_single_proxy']}, {judged['best_single_proxy_mean']:.3f})"
    )
    body = (
        f"`{Path(out).name}` ({size:.1f} MiB), recipe `{recipe}` ({label}): trained on {data['records']} "
        f"records ({', '.join(f'{k}: {v}' for k, v in data['records_per_space'].items())}) of `{data['target']}` "
        f"(each record: the first of these columns it has), {len(pred.head.core) + len(pred.head.members)} MLPs, "
        f"{pred.meta['train_options']['loss']} loss within each family; {seconds / 60:.1f} min.\n\n"
        f"**Its figures are its recipe's leave-one-family-out figures** (section `{families}`: trained without "
        f"the family it is scored on), Kendall tau on each held-out family: {held}. The shipped file itself has seen "
        "every family, so scoring these benches with it is not a zero-shot figure (`nas predictor eval` says so)."
    )
    numbers = {
        "file_mib": size,
        "training_data": data,
        "mlps": len(pred.head.core) + len(pred.head.members),
        "train_s": seconds,
        "leave_one_family_out": {"result": families, "recipe": recipe, "families": figures, "verdict": judged},
    }
    if keep_record:
        record("default-predictor", "The shipped default predictor", body, numbers)
    print(body)


if __name__ == "__main__":
    app()
