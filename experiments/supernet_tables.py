"""Weight sharing judged against full benchmark tables: NAS-Bench-201 (SPOS one-shot supernet) and NAS-Bench-Macro
(BigNAS sandwich supernet).

One supernet is trained on the 40,000-image training split with one learning-rate schedule spanning the largest
budget; after each budget (epochs of ``--train-images`` images) ``--networks`` distinct networks of the table
(seeded sample: one cell per isomorphism class on NB201, canonical strings on Macro) are extracted, their batch-norm
statistics recalibrated on training batches, and scored on ``--eval-images`` held-out images (the first of the
10,000-image validation pool, never trained on). Kendall tau and Spearman rho against the table's accuracy (NB201:
CIFAR-10 validation accuracy after 200 epochs, and test accuracy; Macro: the mean of its three runs), beside
#params, FLOPs, the W-PCA proxy and the shipped predictor (trained on both tables) on the same networks, and
(Macro) the count of non-identity layers. A second evaluation of the first ``--check-networks`` networks on
``--check-images`` images shows whether a larger evaluation subset changes the ranking. Everything is cached under
``--out`` (resumable).
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

from experiments.record import record
from nas.supernet import SupernetConfig, SupernetTrainer, recalibrate_bn
from nas.tables import load_nbmacro_table, nb201_table_path, nbmacro_table_path, nested_sample
from nas.train import evaluate_accuracy
from nas_ground.data import VAL_POOL, load_cifar10, split_train_val
from nas_ground.jsonl import JsonLines
from predictors.metrics import kendall_tau, spearman_rho
from search_spaces import get_space

STRATEGY = {"nb201": "spos", "nbmacro": "sandwich"}


def table_networks(space_name: str, data_dir: str | None) -> dict[str, dict[str, float]]:
    """Every distinct network of the table: encoded architecture -> its table figures."""
    if space_name == "nb201":
        out: dict[str, dict[str, float]] = {}
        seen: set[str] = set()
        with open(nb201_table_path(data_dir), newline="") as f:
            for row in csv.DictReader(f):
                if row["iso_unique_str"] in seen:
                    continue
                seen.add(row["iso_unique_str"])
                out[row["arch_str"]] = {
                    "accuracy": float(row["nb201v11_cifar10valid_valid_acc"]),
                    "test_accuracy": float(row["nb201v11_cifar10_test_acc"]),
                    "params": float(row["params_M"]) * 1e6,
                }
        return out
    space = get_space("nbmacro")
    table = load_nbmacro_table(str(nbmacro_table_path(data_dir)))
    out = {}
    for arch, row in table.items():
        key = space.encode(space.decode(arch))
        out.setdefault(
            key,
            {
                "accuracy": float(row["mean_acc"]),
                "params": float(row["params"]),
                "flops": float(row["flops"]),
                "layers": float(sum(c != "0" for c in key)),
            },
        )
    return out


def eval_images(data: Any, n: int, split_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` images of the held-out validation pool (the trainer's own split)."""
    _, val_idx = split_train_val(len(data.train_x), VAL_POOL, split_seed)
    return data.train_x[val_idx[:n]], data.train_y[val_idx[:n]]


def inherited(trainer: SupernetTrainer, arch: Any, x: np.ndarray, y: np.ndarray) -> float:
    child = trainer.net.extract(arch).to(trainer.device)  # type: ignore[operator]
    recalibrate_bn(child, trainer.recal)
    return evaluate_accuracy(child, x, y, device=trainer.device)


def score_children(
    trainer: SupernetTrainer, archs: list[str], log: JsonLines, x: np.ndarray, y: np.ndarray
) -> dict[str, float]:
    """Inherited-weight accuracy of each network (cached in ``log``) and the mean seconds per child."""
    space, done = trainer.space, {r["arch"]: r for r in log.read()}
    trainer.net.eval()
    with log:
        for i, arch in enumerate(archs):
            if arch in done:
                continue
            start = time.perf_counter()
            acc = inherited(trainer, space.decode(arch), x, y)
            done[arch] = {"arch": arch, "accuracy": acc, "seconds": time.perf_counter() - start}
            log.append(done[arch])
            if (i + 1) % 100 == 0:
                print(f"{log.path.name}: {i + 1}/{len(archs)}", flush=True)
    return {a: done[a]["accuracy"] for a in archs} | {"_seconds": float(np.mean([done[a]["seconds"] for a in archs]))}


def proxy_values(space_name: str, archs: list[str], log: JsonLines, data_dir: str | None) -> dict[str, float]:
    """W-PCA (the proxy package's defaults: seeded weights, one batch of 64 training images) of each network."""
    from predictors.proxies import ProxyConfig, compute_proxies
    from predictors.proxies.data import space_batch

    space = get_space(space_name)
    done = {r["arch"]: r["wpca"] for r in log.read()}
    config = ProxyConfig()
    batch = space_batch(space, config, data_dir)
    with log:
        for arch in archs:
            if arch not in done:
                torch.manual_seed(0)
                value = compute_proxies(space.build(space.decode(arch)), ["wpca"], batch, config)["wpca"]
                done[arch] = value
                log.append({"arch": arch, "wpca": value})
    return {a: done[a] for a in archs}


def predictor_scores(
    space_name: str, archs: list[str], log: JsonLines, predictor_file: str | None = None
) -> dict[str, float]:
    """A zero-shot predictor's score (default: the shipped one) of each network's ONNX export (seeded weights)."""
    from onnx_bench.export import export_architecture
    from onnx_bench.io import load_onnx
    from predictors.encoder import Encoder
    from predictors.zero_shot import describe_model, load_predictor

    space = get_space(space_name)
    done = {r["arch"]: r["score"] for r in log.read()}
    todo = [a for a in archs if a not in done]
    if todo:
        predictor = load_predictor(predictor_file)
        encoder = Encoder(predictor.encoder_name)
        with log:
            for start in range(0, len(todo), 64):
                chunk = todo[start : start + 64]
                described = [
                    describe_model(
                        load_onnx(export_architecture(space, space.decode(a)).data, check=False),
                        predictor.text_format,
                    )
                    for a in chunk
                ]
                scores = predictor.score([t for t, _ in described], [s for _, s in described], encoder)
                for a, s in zip(chunk, scores, strict=True):
                    done[a] = float(s)
                    log.append({"arch": a, "score": float(s)})
    return {a: done[a] for a in archs}


def _taus(values: dict[str, float], truth: dict[str, float], archs: list[str]) -> tuple[float, float]:
    v, t = [values[a] for a in archs], [truth[a] for a in archs]
    return kendall_tau(v, t), spearman_rho(v, t)


app = typer.Typer(add_completion=False, rich_markup_mode="markdown")


@app.command(help=__doc__)
def main(
    space: Annotated[str, typer.Option(help="nb201 or nbmacro.")] = "nbmacro",
    budgets: Annotated[
        str, typer.Option(help="Comma list of epoch budgets (one schedule up to the largest).")
    ] = "1,2,4",
    train_images: Annotated[int, typer.Option(help="Training images per epoch (of the 40,000-image split).")] = 40000,
    networks: Annotated[int, typer.Option(help="Distinct networks of the table scored per budget.")] = 1000,
    early_networks: Annotated[
        int | None, typer.Option(help="Networks scored at the budgets before the last (default: --networks).")
    ] = None,
    eval_count: Annotated[int, typer.Option("--eval-images", help="Held-out images per child.")] = 1000,
    check_networks: Annotated[int, typer.Option(help="Networks scored again on --check-images.")] = 200,
    check_images: Annotated[int, typer.Option(help="The larger held-out subset of the check.")] = 5000,
    channels: Annotated[int | None, typer.Option(help="nb201: initial channels (benchmark: 16).")] = None,
    cells: Annotated[int | None, typer.Option(help="nb201: cells per stage (benchmark: 5).")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine to 5%).")] = 0.05,
    recal: Annotated[int, typer.Option(help="Training batches that recalibrate BN before a child is scored.")] = 8,
    distinct: Annotated[bool, typer.Option(help="Train on one network per isomorphism class (NB201).")] = False,
    fair: Annotated[bool, typer.Option(help="Strict fairness: every op of every edge once per cycle (NB201).")] = False,
    heldout_predictor: Annotated[
        str | None,
        typer.Option(help="A predictor file trained without this table's family: a zero-shot baseline row."),
    ] = None,
    threads: Annotated[int, typer.Option(help="torch threads (1 is fastest on a shared 2-core machine).")] = 1,
    device: Annotated[str, typer.Option(help="cpu or cuda (bfloat16 autocast).")] = "cpu",
    seed: Annotated[int, typer.Option(help="Seed of the supernet and of the network sample.")] = 0,
    data_dir: Annotated[str | None, typer.Option(help="Data directory.")] = None,
    out: Annotated[str, typer.Option(help="Checkpoint and caches (resumable).")] = "runs/supernet-tables",
    key: Annotated[str | None, typer.Option(help="Result key (default: supernet-tables-SPACE[-DEVICE]).")] = None,
) -> None:
    torch.set_num_threads(threads)
    epochs = sorted(int(b) for b in budgets.split(","))
    options = {k: v for k, v in {"channels": channels, "cells_per_stage": cells}.items() if v is not None}
    suffix = ("-distinct" if distinct else "") + ("-fair" if fair else "") + (f"-{device}" if device != "cpu" else "")
    root = Path(out) / f"{space}{suffix}"
    data = load_cifar10(data_dir)
    truth_rows = table_networks(space, data_dir)
    archs = nested_sample(sorted(truth_rows), min(networks, len(truth_rows)), seed)
    cfg = SupernetConfig(
        space=space,
        strategy=STRATEGY[space],
        epochs=epochs[-1],
        train_images=train_images,
        val_images=min(eval_count, VAL_POOL),
        batch_size=batch_size,
        lr=lr,
        recal_batches=recal,
        device=device,
        seed=seed,
        supernet_options=options,
        distinct=distinct,
        fair=fair,
    )
    trainer = SupernetTrainer(root / "supernet", cfg, data)
    x_eval, y_eval = eval_images(data, eval_count)
    x_check, y_check = eval_images(data, check_images)
    truth = {a: truth_rows[a]["accuracy"] for a in archs}
    results: dict[str, Any] = {"budgets": {}, "networks": len(archs), "distinct_in_table": len(truth_rows)}
    for budget in epochs:
        trainer.train(lambda row: print(space, row, flush=True), until=budget)
        # The sample is nested: a budget scored on fewer networks scores the first ones of the larger sample.
        scored = archs if budget == epochs[-1] or early_networks is None else archs[:early_networks]
        scores = score_children(trainer, scored, JsonLines(root / f"children-e{budget}.jsonl", "arch"), x_eval, y_eval)
        seconds = scores.pop("_seconds")
        tau, rho = _taus(scores, truth, scored)
        row: dict[str, Any] = {
            "networks": len(scored),
            "tau": tau,
            "rho": rho,
            "eval_seconds_per_child": seconds,
            "images_per_s": float(np.mean([h["images_per_s"] for h in trainer.history[:budget]])),
            "mean_accuracy": float(np.mean(list(scores.values()))),
        }
        if space == "nb201":
            row["tau_test"] = _taus(scores, {a: truth_rows[a]["test_accuracy"] for a in scored}, scored)[0]
        if budget == epochs[-1]:  # the larger evaluation subset, at the longest budget
            check = archs[:check_networks]
            big = score_children(trainer, check, JsonLines(root / f"check-e{budget}.jsonl", "arch"), x_check, y_check)
            big.pop("_seconds")
            results["check"] = {
                "budget": budget,
                "networks": len(check),
                "tau_small_vs_large_subset": kendall_tau([scores[a] for a in check], [big[a] for a in check]),
                "tau_small_subset": _taus(scores, truth, check)[0],
                "tau_large_subset": _taus(big, truth, check)[0],
            }
        results["budgets"][str(budget)] = {**row, "accuracies": {a: scores[a] for a in scored}}
        print(space, budget, row, flush=True)
    baselines = {"#params": {a: truth_rows[a]["params"] for a in archs}}
    if space == "nbmacro":
        baselines["FLOPs"] = {a: truth_rows[a]["flops"] for a in archs}
        baselines["non-identity layers"] = {a: truth_rows[a]["layers"] for a in archs}
    baselines["wpca (proxy)"] = proxy_values(space, archs, JsonLines(root / "wpca.jsonl", "arch"), data_dir)
    # The shipped predictor was trained on records of both tables: on these networks it is not a zero-shot figure
    # (its leave-one-family-out figures are in section predictor-families).
    label = "shipped predictor (trained on this table too: not zero-shot)"
    baselines[label] = predictor_scores(space, archs, JsonLines(root / "predictor.jsonl", "arch"))
    if heldout_predictor is not None:
        cache = JsonLines(root / f"{Path(heldout_predictor).stem}.jsonl", "arch")
        baselines["zero-shot predictor (trained without this family)"] = predictor_scores(
            space, archs, cache, heldout_predictor
        )
    results["baselines"] = {
        name: dict(zip(("tau", "rho"), _taus(v, truth, archs), strict=True)) for name, v in baselines.items()
    }
    results["config"] = {**cfg.__dict__, "eval_images": eval_count, "check_images": check_images}
    variant = "benchmark skeleton" if not options else f"variant {options}"
    sampling = ", one network per isomorphism class per draw" if distinct else ""
    sampling += ", strict fairness (every op of every edge once per 5 steps)" if fair else ""
    truth_name = "CIFAR-10 validation accuracy after 200 epochs" if space == "nb201" else "mean accuracy of its 3 runs"
    kind = "NAS-Bench-201, SPOS one-shot supernet" if space == "nb201" else "NAS-Bench-Macro, BigNAS sandwich supernet"
    lines = [
        f"{kind} ({variant}{sampling}); trained on {train_images} training images per epoch, batch {batch_size}, "
        f"lr {lr} (one cosine schedule to 5% over {epochs[-1]} epochs, scored after each budget), device {device}, "
        f"seed {seed}. "
        f"{len(archs)} distinct networks of the table's {len(truth_rows)} (seeded sample; budgets before the last "
        f"score the first of them, column 'networks'), each extracted, its BN "
        f"statistics recalibrated on {recal} training batches and scored on the first {eval_count} images of the "
        f"held-out validation pool; truth: the table's {truth_name}.\n",
        "| budget (epochs) | networks | Kendall tau | Spearman rho | "
        + ("tau vs test acc | " if space == "nb201" else "")
        + "supernet images/s | s per child |",
        "|---|---|---|---|" + ("---|" if space == "nb201" else "") + "---|---|",
    ]
    for budget in epochs:
        r = results["budgets"][str(budget)]
        lines.append(
            f"| {budget} | {r.get('networks', len(archs))} | **{r['tau']:.3f}** | {r['rho']:.3f} | "
            + (f"{r['tau_test']:.3f} | " if space == "nb201" else "")
            + f"{r['images_per_s']:.0f} | {r['eval_seconds_per_child']:.2f} |"
        )
    c = results["check"]
    lines += [
        "",
        f"Evaluation subset (budget {c['budget']}, the first {c['networks']} networks): tau against the table "
        f"{c['tau_small_subset']:.3f} on {eval_count} images, {c['tau_large_subset']:.3f} on {check_images}; the two "
        f"inherited-accuracy rankings agree at tau {c['tau_small_vs_large_subset']:.3f}.",
    ]
    lines += ["", "Same networks, no training:", "", "| ranker | Kendall tau | Spearman rho |", "|---|---|---|"]
    for name, figs in results["baselines"].items():
        lines.append(f"| {name} | {figs['tau']:.3f} | {figs['rho']:.3f} |")
    title = f"Supernets against the {'NAS-Bench-201' if space == 'nb201' else 'NAS-Bench-Macro'} table"
    title += " (distinct sampling)" if distinct else " (strict fairness)" if fair else ""
    record(key or f"supernet-tables-{space}{suffix}", title, "\n".join(lines), results)


if __name__ == "__main__":
    app()
