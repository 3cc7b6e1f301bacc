"""Screening that pays: hypervolume share of the true front against table queries, screened and unscreened.

The four problems of `experiments.pareto_quality`. A screened search is ``nas search --evaluator screened``'s
mechanism (`nas.evaluators.screen.ScreenedEvaluator`) with the table as the expensive evaluator: the cheap scorer
ranks each candidate TPE proposes; only those it cannot rule out (not dominated in (cheap score up, cost down) by a
candidate seen before, plus ``explore`` of the others) query the table. The search runs until ``--queries`` table
queries (or ``--max-trials`` proposals). Cheap scorer: the zero-shot predictor trained *without* the table's family
(`experiments.default_predictor --no-record` on the other two benches: a leave-one-family-out file, so the screen
has not seen these networks), its scores precomputed for every network of the table (``runs/screening``).
Unscreened: the default sampler (TPE) spending every proposal on a query. Mean +- std over ``--seeds`` seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import optuna
import typer

from experiments.pareto_quality import PROBLEMS, Problem
from experiments.record import load_numbers, record
from nas.evaluators import Screened
from nas.evaluators.screen import ScreenedEvaluator
from nas.search.samplers import make_sampler
from nas_ground.jsonl import JsonLines
from search_spaces import SearchSpace


def held_out_files(space: str) -> tuple[str, str]:
    """The predictor trained without ``space``'s family (`experiments.default_predictor --no-record`) and the cache
    of its scores of every network of the table."""
    return f"runs/screening/without-{space}.safetensors", f"runs/screening/{space}-without-{space}.jsonl"


COUNTS = (20, 50, 100, 200)


_PROBLEMS: dict[str, Problem] = {}


def problem_named(name: str, data_dir: str | None) -> Problem:
    if name not in _PROBLEMS:
        _PROBLEMS[name] = Problem(name, data_dir)
    return _PROBLEMS[name]


class PrecomputedScore:
    """A cheap evaluator: the held-out predictor's scores (`held_out_files`, cached) with the problem's cost from
    the table (what building a candidate measures without training it)."""

    def __init__(self, space: SearchSpace[Any], *, problem: str, data_dir: str | None = None) -> None:
        self.space, self.problem = space, problem_named(problem, data_dir)
        self.predictor, scores = held_out_files(space.name)
        self.log = JsonLines(scores, "arch")
        self.scores = {r["arch"]: float(r["score"]) for r in self.log.read()}
        self.metrics: tuple[str, ...] = ("score", self.problem.cost)

    def evaluate(self, arch: Any, *, seed: int | None = None) -> dict[str, float]:
        key = self.problem.canonical(self.space.encode(arch))
        if key not in self.scores:  # not precomputed yet: score it now with the held-out predictor (and keep it)
            from experiments.supernet_tables import predictor_scores

            missing = [a for a in self.problem.table if a not in self.scores]  # all at once: one predictor load
            self.scores.update(predictor_scores(self.space.name, missing, self.log, self.predictor))
        return {"score": self.scores[key], self.problem.cost: self.problem.table[key][1]}


def fill_scores_from_bench(problem: Problem, bench: str, target: str) -> int:
    """Score every network of ``bench`` (its ONNX texts and graph features, embeddings cached) with the held-out
    predictor and add the missing ones to the problem's score file (by table key); returns how many were added.
    The same scores `PrecomputedScore` would compute from a fresh export, thousands per second."""
    from predictors.encoder import Encoder
    from predictors.predictor import Predictor
    from predictors.training import load_bench_data

    predictor_file, scores_file = held_out_files(problem.space.name)
    log = JsonLines(scores_file, "arch")
    predictor = Predictor.load(predictor_file)
    data = load_bench_data(bench, target, text_format=predictor.text_format, encoder=Encoder(predictor.encoder_name))
    scores = predictor.score_embeddings(data.embeddings, data.summaries)
    done = {r["arch"] for r in log.read()}
    added = 0
    with log:
        for arch, score in zip(data.frame["arch"], scores, strict=True):
            key = problem.canonical(problem.space.encode(problem.space.decode(arch)))
            if key in problem.table and key not in done:
                log.append({"arch": key, "score": float(score)})
                done.add(key)
                added += 1
    return added


def screened_run(
    problem: Problem, seed: int, queries: int, max_trials: int, explore: float, data_dir: str | None
) -> list[tuple[float, float]]:
    """The points the table returned, in query order, for one screened search (`ScreenedEvaluator` with this
    cheap scorer by import path and the `table` evaluator, as ``nas search --evaluator screened`` builds it)."""
    screen = ScreenedEvaluator(
        problem.space,
        cheap="experiments.screening.PrecomputedScore",
        cheap_options={"problem": problem.name},
        expensive="table",
        cost=problem.cost,
        explore=explore,
        data_dir=data_dir,
        **({"with_flops": True} if problem.space.name == "nbmacro" else {}),
    )
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler("tpe", seed, max_trials, {}))
    points: list[tuple[float, float]] = []
    for _ in range(max_trials):
        trial = study.ask()
        arch = problem.space.suggest(trial)
        try:
            m = screen.evaluate(arch)
        except Screened:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        points.append((m["accuracy"], m[problem.cost]))
        study.tell(trial, [m["accuracy"], m[problem.cost]])
        if len(points) >= queries:
            break
    return points


app = typer.Typer(add_completion=False, rich_markup_mode="markdown")


@app.command(help=__doc__)
def main(
    problems: Annotated[str, typer.Option(help="Comma list of problems.")] = ",".join(PROBLEMS),
    seeds: Annotated[int, typer.Option(help="Seeds.")] = 20,
    queries: Annotated[int, typer.Option(help="Table queries per search.")] = 200,
    max_trials: Annotated[int, typer.Option(help="Proposals at most per screened search.")] = 3000,
    explore: Annotated[float, typer.Option(help="Share of ruled-out candidates queried anyway.")] = 0.1,
    data_dir: Annotated[str | None, typer.Option(help="Data directory.")] = None,
) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for problem_name, bench, target in (
        ("nb201-params", "runs/bench-nb201", "metric_cifar10_valid_acc"),
        ("nbmacro-params", "runs/bench-nbmacro", "mean_acc"),
    ):
        if Path(bench).is_dir():
            print(
                problem_name,
                "scores added from the bench:",
                fill_scores_from_bench(problem_named(problem_name, data_dir), bench, target),
            )
    unscreened = load_numbers("pareto-quality")
    results: dict[str, Any] = {}
    for name in problems.split(","):
        problem = problem_named(name, data_dir)
        shares: dict[int, list[float]] = {n: [] for n in COUNTS}
        reached: list[float] = []
        target = float(np.mean(unscreened[name]["samplers"]["tpe"]["shares"]["200"]))
        for seed in range(seeds):
            points = screened_run(problem, seed, queries, max_trials, explore, data_dir)
            for n in COUNTS:
                shares[n].append(problem.hypervolume(points[:n]) / problem.true_hv)
            hit = next(
                (n for n in range(1, len(points) + 1) if problem.hypervolume(points[:n]) / problem.true_hv >= target),
                None,
            )
            reached.append(float(hit) if hit is not None else float("inf"))
        results[name] = {"shares": shares, "queries_to_unscreened_200": reached, "unscreened_200": target}
        print(
            name, {n: round(float(np.mean(v)), 3) for n, v in shares.items()}, "reach", np.median(reached), flush=True
        )
    lines = [
        f"Screened TPE search (cheap scorer: the zero-shot predictor trained without the table's family, explore "
        f"{explore}) against unscreened TPE (section pareto-quality), {seeds} seeds; hypervolume share of the true "
        "front after N *table queries* (screened-out proposals cost no query). Target: the screened search reaches "
        "the unscreened default's 200-query share within 100 queries.\n",
        "| problem | arm | "
        + " | ".join(f"N={n}" for n in COUNTS)
        + " | queries to reach unscreened N=200 (median; seeds reaching it) |",
        "|---|---|" + "---|" * len(COUNTS) + "---|",
    ]
    for name, res in results.items():
        base = unscreened[name]["samplers"]["tpe"]["shares"]
        cells = " | ".join(f"{np.mean(base[str(n)]):.3f} +- {np.std(base[str(n)]):.3f}" for n in COUNTS)
        lines.append(f"| {name} | unscreened TPE | {cells} | 200 (by definition) |")
        cells = " | ".join(f"{np.mean(res['shares'][n]):.3f} +- {np.std(res['shares'][n]):.3f}" for n in COUNTS)
        hits = [r for r in res["queries_to_unscreened_200"] if np.isfinite(r)]
        med = f"{np.median(res['queries_to_unscreened_200']):.0f}" if len(hits) * 2 > seeds else "not reached"
        lines.append(f"| {name} | screened by the held-out predictor | {cells} | {med} ({len(hits)}/{seeds}) |")
    record("screening", "Screening that pays: table queries saved by a cheap scorer", "\n".join(lines), results)


if __name__ == "__main__":
    app()
