"""``nas bench``: build, harvest, upgrade and summarise an ONNX-Bench."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nas.cli.app import app, err, out, print_mapping
from nas_ground.errors import UserInputError

bench_app = typer.Typer(help="The ONNX-Bench data set: build, harvest, upgrade, info.", no_args_is_help=True)

app.add_typer(bench_app, name="bench")


def _bench_progress(title: str) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn(f"[bold]{title}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err)


@bench_app.command("build")
def bench_build(
    space: Annotated[str, typer.Option(help="nb201 (every cell of the table) or nbmacro (every distinct network).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Bench directory (created; existing records kept).")],
    limit: Annotated[int | None, typer.Option(help="Only the first N architectures (table order).")] = None,
    sample: Annotated[
        int | None, typer.Option(help="Only N architectures drawn at random (seeded by --seed) from the table.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of --sample.")] = 0,
    dataset: Annotated[
        str, typer.Option(help="nb201: the data set of the networks and their metric (cifar10, cifar100, imagenet16).")
    ] = "cifar10",
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (else $NAS_DATA_DIR, ~/.cache).")] = None,
) -> None:
    """Build the records of a benchmark table's networks (incremental: records already present are skipped)."""
    from nas.tables import load_nb201_identities, load_nb201_table, load_nbmacro_table, nbmacro_table_path
    from nas_ground.data import resolve_data_dir
    from onnx_bench.bench import nb201_jobs, nbmacro_jobs

    if space not in ("nb201", "nbmacro"):
        raise UserInputError(f"bench build covers --space nb201 or nbmacro, not {space!r}; use `nas bench harvest`")
    if limit is not None and limit < 1:
        raise UserInputError(f"--limit {limit} must be >= 1")
    if sample is not None and sample < 1:
        raise UserInputError(f"--sample {sample} must be >= 1")
    if space == "nbmacro":
        if dataset != "cifar10":
            raise UserInputError(f"--dataset {dataset!r}: NAS-Bench-Macro has CIFAR-10 only")
        jobs = nbmacro_jobs(load_nbmacro_table(str(nbmacro_table_path(data_dir))), limit)
    else:
        csv_path = str(resolve_data_dir(data_dir) / "nb201" / "nb201.csv")
        jobs = nb201_jobs(load_nb201_table(csv_path), limit, load_nb201_identities(csv_path), dataset)
    if sample is not None and sample < len(jobs):
        import random

        jobs = sorted(random.Random(seed).sample(jobs, sample), key=jobs.index)
    _run_bench(jobs, out_dir, workers, f"bench {space}")


@bench_app.command("harvest")
def bench_harvest(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories of `nas search` with --evaluator train.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Bench directory.")],
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
) -> None:
    """Add every trained candidate of earlier search runs (with their trained weights)."""
    from nas.harvest import harvest_jobs

    jobs = [job for run in run_dirs for job in harvest_jobs(run)]
    _run_bench(jobs, out_dir, workers, "harvest")


def _run_bench(jobs: list[Any], out_dir: Path, workers: int, title: str) -> None:
    from onnx_bench.bench import build

    with _bench_progress(title) as progress:
        task = progress.add_task(title, total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        result = build(jobs, out_dir, workers=workers, on_progress=on_progress)
    out.print(f"{out_dir}: {result.added} records added, {result.skipped} already present")


@bench_app.command("upgrade")
def bench_upgrade(
    directory: Annotated[Path, typer.Argument(help="Bench directory built by an older version.")],
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
) -> None:
    """Add the columns newer predictors read (activation features) to an existing bench, shard by shard."""
    from onnx_bench.bench import upgrade

    with _bench_progress("upgrade") as progress:
        task = progress.add_task("upgrade", total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        updated = upgrade(directory, workers=workers, on_progress=on_progress)
    out.print(f"{directory}: {updated} records upgraded")


@bench_app.command("info")
def bench_info(
    directory: Annotated[Path, typer.Argument(help="Bench directory.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Summarise a bench: records per space, metric columns, token lengths, size on disk."""
    from onnx_bench.bench import info

    print_mapping(info(directory), str(directory), json_out)
