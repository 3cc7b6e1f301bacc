"""End to end: a search driven by a trained supernet against random search over the benchmark table.

Supernet arm: ``nas search --space SPACE --evaluator supernet --supernet CKPT --objectives accuracy:max`` (the
`nas.search.Search` loop, ``--sampler``), ``--trials`` supernet evaluations per seed; after the first T of them
(each T in ``--at``) the child with the highest inherited-weight accuracy is looked up in the table. Random arm:
T distinct networks drawn uniformly from the table, the best by the accuracy a search may see (NB201: CIFAR-10
validation accuracy; Macro: its first run) taken. Both report the table's test accuracy of the chosen network
(NB201: CIFAR-10 test accuracy; Macro: the mean of its other two runs), mean and std over ``--seeds``.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import optuna
import typer

from experiments.record import record
from nas.search import STUDY_NAME, Search, SearchConfig, make_storage
from nas.tables import load_nbmacro_table, nb201_table_path, nbmacro_table_path
from search_spaces import get_space


def table(space_name: str, data_dir: str | None) -> dict[str, tuple[float, float]]:
    """Encoded network -> (accuracy a search sees, test accuracy it is judged on); one entry per network."""
    out: dict[str, tuple[float, float]] = {}
    if space_name == "nb201":
        seen: set[str] = set()
        with open(nb201_table_path(data_dir), newline="") as f:
            for row in csv.DictReader(f):
                if row["iso_unique_str"] not in seen:
                    seen.add(row["iso_unique_str"])
                    out[row["arch_str"]] = (
                        float(row["nb201v11_cifar10valid_valid_acc"]),
                        float(row["nb201v11_cifar10_test_acc"]),
                    )
        return out
    space = get_space("nbmacro")
    for arch, row in load_nbmacro_table(str(nbmacro_table_path(data_dir))).items():
        runs = [float(r) for r in row["test_acc"]]
        out.setdefault(space.encode(space.decode(arch)), (runs[0], (runs[1] + runs[2]) / 2))
    return out


def test_accuracy(space_name: str, encoded: str, rows: dict[str, tuple[float, float]], data_dir: str | None) -> float:
    """The judged figure of any encoded network (an NB201 cell is looked up by its isomorphism class)."""
    if encoded in rows:
        return rows[encoded][1]
    from nas.tables import load_nb201_identities

    path = str(nb201_table_path(data_dir))
    ident = load_nb201_identities(path)
    twin = next(a for a in rows if ident[a] == ident[encoded])
    return rows[twin][1]


app = typer.Typer(add_completion=False, rich_markup_mode="markdown")


@app.command(help=__doc__)
def main(
    space: Annotated[str, typer.Option(help="nb201 or nbmacro.")],
    supernet: Annotated[str, typer.Option(help="The trained supernet's checkpoint.pt.")],
    trials: Annotated[int, typer.Option(help="Supernet evaluations per seed.")] = 500,
    at: Annotated[str, typer.Option(help="Comma list of evaluation counts to report.")] = "100,500",
    seeds: Annotated[str, typer.Option(help="Comma list of seeds.")] = "0,1,2,3,4,5,6,7,8,9",
    sampler: Annotated[str, typer.Option(help="Sampler of the supernet arm.")] = "tpe",
    data_dir: Annotated[str | None, typer.Option(help="Data directory.")] = None,
    out: Annotated[str, typer.Option(help="Run directories (resumable).")] = "runs/supernet-search",
    key: Annotated[str | None, typer.Option(help="Result key (default: supernet-search-SPACE).")] = None,
) -> None:
    counts = sorted(int(a) for a in at.split(","))
    seed_list = [int(s) for s in seeds.split(",")]
    rows = table(space, data_dir)
    universe = sorted(rows)
    arms: dict[str, dict[int, list[float]]] = {"supernet": {}, "random": {}}
    for seed in seed_list:
        cfg = SearchConfig(
            space=space,
            evaluator="supernet",
            evaluator_options={"supernet": supernet, "test_images": 500},  # the front's test figure is not used
            objectives=["accuracy:max"],
            trials=trials,
            seed=seed,
            sampler=sampler,
            run_dir=str(Path(out) / f"{space}-{sampler}-seed{seed}"),
            data_dir=data_dir,
        )
        job = Search(cfg)
        job.run()
        study = optuna.load_study(study_name=STUDY_NAME, storage=make_storage(None, job.run_dir))
        done = sorted((t for t in study.trials if t.values), key=lambda t: t.number)
        for n in counts:
            best = max(done[:n], key=lambda t: t.values[0])
            arms["supernet"].setdefault(n, []).append(test_accuracy(space, best.user_attrs["arch"], rows, data_dir))
            picks = random.Random(seed).sample(universe, n)
            chosen = max(picks, key=lambda a: rows[a][0])
            arms["random"].setdefault(n, []).append(rows[chosen][1])
        print(seed, {arm: {n: v[-1] for n, v in by.items()} for arm, by in arms.items()}, flush=True)
    optimum = max(r[1] for r in rows.values())
    lines = [
        f"{'NAS-Bench-201' if space == 'nb201' else 'NAS-Bench-Macro'}: the table's test accuracy of the network each "
        f"search returns, mean +- std over seeds {seed_list}; supernet `{supernet}`, sampler {sampler}; the best "
        f"network of the table reaches {optimum:.2f}.\n",
        "| evaluations / table queries | supernet search | random search (table) |",
        "|---|---|---|",
    ]
    for n in counts:
        s, r = arms["supernet"][n], arms["random"][n]
        lines.append(f"| {n} | {np.mean(s):.2f} +- {np.std(s):.2f} | {np.mean(r):.2f} +- {np.std(r):.2f} |")
    numbers: dict[str, Any] = {"arms": arms, "optimum": optimum, "supernet": supernet, "sampler": sampler}
    title = f"Supernet-driven search on {'NAS-Bench-201' if space == 'nb201' else 'NAS-Bench-Macro'} against random"
    record(key or f"supernet-search-{space}", title, "\n".join(lines), numbers)


if __name__ == "__main__":
    app()
