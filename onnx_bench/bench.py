"""The ONNX-Bench data set: one record per architecture (ONNX hash, both texts, graph summaries, metrics).

A bench is a directory of Parquet shards ``records-*.parquet``. Builds are incremental and resumable: the
keys already present are skipped, and finished records are written in shards renamed into place, so a killed
build loses at most one unfinished shard. Work is spread over worker processes (one torch thread each).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from nas_ground.atomic import atomic_path
from nas_ground.errors import UserInputError
from onnx_bench.graph import WL_SCHEME

KEY_COLUMNS = ("space", "arch", "source")
SHARD_GLOB = "records-*.parquet"


@dataclass(frozen=True)
class Job:
    """One architecture to turn into a record: plain values only, so it crosses process boundaries cheaply."""

    space: str
    arch: str
    source: str  # where the metrics come from: "nb201-table", or "<run dir>#<trial>"
    metrics: dict[str, float] = field(default_factory=dict)
    build_options: dict[str, Any] = field(default_factory=dict)
    space_options: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None  # a state_dict file with trained weights
    seed: int = 0
    identity: str = ""  # the architecture's identity (equal networks share it); default: the encoded architecture
    dataset: str = "cifar10"  # the data set its metrics were measured on (a family is a space on a data set)
    input_side: int = 0  # square input images of this side (0: the space's own input shape)


def make_record(job: Job) -> dict[str, Any]:
    """Build, export, describe and summarise one architecture (runs in a worker process)."""
    import torch

    from onnx_bench.activations import activation_summary
    from onnx_bench.export import export_architecture
    from onnx_bench.graph import summarize, wl_counts
    from onnx_bench.io import load_onnx
    from onnx_bench.text import describe, token_count

    torch.set_num_threads(1)
    space = _space(job.space, job.space_options, job.input_side)
    arch = space.decode(job.arch)
    state = torch.load(job.weights, weights_only=True) if job.weights else None
    exported = export_architecture(space, arch, seed=job.seed, build_options=job.build_options, state_dict=state)
    model = load_onnx(exported.data, check=False)
    chain, compact = describe(model, "chain_slim"), describe(model, "compact")
    summary = summarize(model)
    if job.weights:  # activation features describe the architecture at its seeded initialisation
        init = export_architecture(space, arch, seed=job.seed, build_options=job.build_options)
        act = activation_summary(load_onnx(init.data, check=False))
    else:
        act = activation_summary(model)
    record: dict[str, Any] = {
        "space": job.space,
        "arch": space.encode(arch),
        "source": job.source,
        "identity": job.identity or space.encode(arch),
        "onnx_sha256": exported.sha256,
        "onnx_bytes": len(exported.data),
        "text_chain_slim": chain,
        "text_compact": compact,
        "tokens_chain_slim": token_count(chain),
        "tokens_compact": token_count(compact),
        "nodes": summary["nodes"],
        "depth": summary["depth"],
        "params": summary["params"],
        "flops": summary["flops"],
        "peak_activation": summary["peak_activation"],
        "op_histogram": json.dumps(summary["op_histogram"], sort_keys=True),
        "wl_counts": json.dumps(wl_counts(model)),
        "wl_scheme": WL_SCHEME,
        "build_options": json.dumps(job.build_options, sort_keys=True),
        "space_options": json.dumps(job.space_options, sort_keys=True),
        "seed": job.seed,
        "dataset": job.dataset,
        "input_side": job.input_side,
        **act,
    }
    record.update({f"metric_{k}": float(v) for k, v in job.metrics.items()})
    return record


def _space(name: str, options: dict[str, Any], input_side: int = 0) -> Any:
    """The space ``name`` with ``options``; with ``input_side``, taking square images of that side (as the
    train evaluator does for a data set of another image size)."""
    from search_spaces import get_space

    space = get_space(name, **options)
    if input_side:
        space.input_shape = (space.input_shape[0], int(input_side), int(input_side))  # type: ignore[misc]
    return space


def shards(directory: Path) -> list[Path]:
    return sorted(directory.glob(SHARD_GLOB))


def read_bench(directory: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    directory = Path(directory)
    if not directory.is_dir():
        raise UserInputError(f"bench directory not found: {directory}")
    files = shards(directory)
    if not files:
        return pd.DataFrame(columns=list(columns or KEY_COLUMNS))
    frames = []
    for f in files:
        try:
            frames.append(_read_shard(f, columns))
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise UserInputError(f"cannot read bench shard {f}: {str(exc).splitlines()[0]}") from exc
    return pd.concat(frames, ignore_index=True)


def _read_shard(path: Path, columns: list[str] | None) -> pd.DataFrame:
    """One shard; a shard written when ``flops`` meant twice the multiply-accumulates (it also has a ``macs``
    column) is read with ``flops`` = its ``macs``, the one meaning used now."""
    old_flops = "macs" in pq.read_schema(path).names
    wanted = None if columns is None else columns + (["macs"] if old_flops and "flops" in columns else [])
    frame = pd.read_parquet(path, columns=wanted)
    if old_flops:
        if "macs" in frame:
            frame["flops"] = frame["macs"]
        frame = frame.drop(columns=["macs"], errors="ignore")
    return frame


def existing_keys(directory: Path) -> set[tuple[str, str, str]]:
    if not directory.exists() or not shards(directory):
        return set()
    frame = read_bench(directory, columns=list(KEY_COLUMNS))
    return set(zip(frame["space"], frame["arch"], frame["source"], strict=True))


def _write_shard(directory: Path, records: list[dict[str, Any]], final: Path | None = None) -> Path:
    frame = pd.DataFrame.from_records(records)
    final = final or directory / f"records-{pd.Timestamp.now():%Y%m%d%H%M%S}-{uuid.uuid4().hex[:8]}.parquet"
    with atomic_path(final) as tmp:
        frame.to_parquet(tmp, index=False)
    return final


@dataclass
class BuildResult:
    added: int
    skipped: int
    shards_written: int


def build(
    jobs: Iterable[Job],
    out: str | Path,
    *,
    workers: int = 2,
    shard_size: int = 250,
    on_progress: Callable[[int, int], None] | None = None,
) -> BuildResult:
    """Add a record for every job whose key is not in the bench yet; ``on_progress(done, total)``."""
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    have = existing_keys(directory)
    todo = [j for j in jobs if (j.space, j.arch, j.source) not in have]
    skipped_count = len(have)
    total = len(todo)
    if on_progress:
        on_progress(0, total)
    pending: list[dict[str, Any]] = []
    written = done = 0
    for record in _map(make_record, todo, workers):
        pending.append(record)
        done += 1
        if len(pending) >= shard_size:
            _write_shard(directory, pending)
            written += 1
            pending = []
        if on_progress:
            on_progress(done, total)
    if pending:
        _write_shard(directory, pending)
        written += 1
    return BuildResult(added=done, skipped=skipped_count, shards_written=written)


def upgraded_columns(row: dict[str, Any]) -> dict[str, Any]:
    """The columns newer versions compute (``act_*`` activation features, WL counts of the current `WL_SCHEME`) of
    an existing record: its architecture re-exported with its seeded initial weights (the record's hash is checked
    where the record holds initial weights too)."""
    import torch

    from onnx_bench.activations import activation_summary
    from onnx_bench.export import export_architecture
    from onnx_bench.graph import wl_counts
    from onnx_bench.io import load_onnx

    torch.set_num_threads(1)

    def options(column: str) -> dict[str, Any]:  # older records lack space_options: defaults
        value = row.get(column)
        return json.loads(value) if isinstance(value, str) and value else {}

    side = row.get("input_side")
    space = _space(row["space"], options("space_options"), int(side) if side is not None and side == side else 0)
    exported = export_architecture(
        space, space.decode(row["arch"]), seed=int(row["seed"]), build_options=options("build_options")
    )
    if row["source"] in ("nb201-table", "nbmacro-table") and exported.sha256 != row["onnx_sha256"]:
        raise UserInputError(f"bench record {row['arch']} no longer exports to the same ONNX; rebuild the bench")
    model = load_onnx(exported.data, check=False)
    return {**activation_summary(model), "wl_counts": json.dumps(wl_counts(model)), "wl_scheme": WL_SCHEME}


def upgrade(directory: str | Path, *, workers: int = 2, on_progress: Callable[[int, int], None] | None = None) -> int:
    """Bring every shard written by an older version up to date (the ``act_*`` activation features, WL counts of
    the current hashing, ``flops`` as multiply-accumulates); each shard is rewritten atomically, so an interrupted
    upgrade resumes where it stopped. Returns records updated."""
    from onnx_bench.activations import ACT_FEATURES

    directory = Path(directory)
    if not directory.is_dir():
        raise UserInputError(f"bench directory not found: {directory}")
    todo = []
    for shard in shards(directory):
        columns = pq.read_schema(shard).names
        stale_wl = "wl_scheme" not in columns or set(pd.read_parquet(shard, columns=["wl_scheme"])["wl_scheme"]) != {
            WL_SCHEME
        }
        if stale_wl or "macs" in columns or not all(c in columns for c in ACT_FEATURES):
            todo.append(shard)
    frames = [_read_shard(shard, None) for shard in todo]
    rows: list[dict[str, Any]] = [r for f in frames for r in f.to_dict("records")]  # type: ignore[misc]
    total, done = len(rows), 0
    if on_progress:
        on_progress(0, total)
    results = _map(upgraded_columns, rows, workers)  # in order: each shard is written once its rows are done
    for shard, frame in zip(todo, frames, strict=True):
        part = rows[done : done + len(frame)]
        feats = []
        for _ in part:
            feats.append(next(results))
            done += 1
            if on_progress:
                on_progress(done, total)
        _write_shard(directory, [{**r, **a} for r, a in zip(part, feats, strict=True)], final=shard)
    return done


def _map(fn: Callable[[Any], dict[str, Any]], jobs: list[Any], workers: int) -> Iterator[dict[str, Any]]:
    if workers <= 1 or len(jobs) <= 1:
        yield from map(fn, jobs)
        return
    chunk = max(1, min(16, math.ceil(len(jobs) / (workers * 8))))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(fn, jobs, chunksize=chunk)


# the NB201 table's data sets other than CIFAR-10: (metric, table column, classes, input side)
NB201_DATASETS = {
    "cifar100": ("cifar100_test_acc", "nats_cifar100_test", 100, 32),
    "imagenet16": ("imagenet16_test_acc", "nats_imagenet16_test", 120, 16),
}
NB201_METRICS = {
    "cifar10_valid_acc": "nb201v11_cifar10valid_valid_acc",
    "cifar10_test_acc": "nb201v11_cifar10_test_acc",
    "cifar10_acc_nats": "nats_cifar10_test",
    "cifar100_test_acc": "nats_cifar100_test",
    "imagenet16_test_acc": "nats_imagenet16_test",
    "params_m": "params_M",
    "naswot_v1": "naswot_score_v1",
}


def nb201_jobs(
    table: dict[str, dict[str, float]],
    limit: int | None = None,
    identities: dict[str, str] | None = None,
    dataset: str = "cifar10",
) -> list[Job]:
    """One job per NB201 cell (table order by index), with the table's accuracies and device latencies;
    ``identities`` (arch -> the table's ``iso_unique_str``) marks isomorphic cells as one network. With another
    ``dataset`` (`NB201_DATASETS`), the network of that data set (its classes and input size) with its one
    accuracy column: another family of the same cells."""
    items = sorted(table.items(), key=lambda kv: kv[1]["nb201_index"])[:limit]
    if dataset != "cifar10":
        if dataset not in NB201_DATASETS:
            valid = ", ".join(["cifar10", *NB201_DATASETS])
            raise UserInputError(f"unknown NB201 data set {dataset!r}; valid: {valid}")
        metric, column, classes, side = NB201_DATASETS[dataset]
        return [
            Job(
                "nb201",
                arch,
                f"nb201-table:{dataset}",
                {metric: row[column], "nb201_index": row["nb201_index"]},
                {"num_classes": classes},
                identity=(identities or {}).get(arch, ""),
                dataset=dataset,
                input_side=side,
            )
            for arch, row in items
        ]
    jobs = []
    for arch, row in items:
        metrics = {name: row[col] for name, col in NB201_METRICS.items()}
        metrics.update({k: v for k, v in row.items() if k.startswith("lat_")})
        metrics["nb201_index"] = row["nb201_index"]
        jobs.append(Job("nb201", arch, "nb201-table", metrics, identity=(identities or {}).get(arch, "")))
    return jobs


def nbmacro_jobs(table: dict[str, dict[str, Any]], limit: int | None = None) -> list[Job]:
    """One job per distinct NAS-Bench-Macro network (canonical string order), with the three runs' accuracies,
    their mean (``mean_acc``) and the table's params and FLOPs (``table_params``, ``table_flops``: multiply-
    accumulates of its convolutions). The record's own ``params`` column counts the exported ONNX graph, where
    batch norm is folded into the convolutions, so it is the table's figure less the BN parameters."""
    from search_spaces import get_space

    space = get_space("nbmacro")
    canonical = sorted({space.encode(space.decode(arch)) for arch in table})[:limit]
    jobs = []
    for arch in canonical:
        row = table[arch]
        metrics = {f"acc_run{i + 1}": float(v) for i, v in enumerate(row["test_acc"])}
        metrics.update(mean_acc=float(row["mean_acc"]), table_params=float(row["params"]))
        metrics["table_flops"] = float(row["flops"])
        jobs.append(Job("nbmacro", arch, "nbmacro-table", metrics))
    return jobs


def info(directory: str | Path) -> dict[str, Any]:
    """What a bench holds: records per space and source kind, metric columns, text lengths, disk size."""
    directory = Path(directory)
    frame = read_bench(directory)
    size = sum(f.stat().st_size for f in shards(directory))
    out: dict[str, Any] = {"records": len(frame), "shards": len(shards(directory)), "bytes": size}
    if len(frame):
        out["by_space"] = frame.groupby("space").size().to_dict()
        out["metrics"] = sorted(c for c in frame.columns if c.startswith("metric_"))
        for fmt in ("chain_slim", "compact"):
            tokens = frame[f"tokens_{fmt}"]
            out[f"tokens_{fmt}"] = {
                "median": float(tokens.median()),
                "max": int(tokens.max()),
                "share_le_256": float((tokens <= 256).mean()),
                "share_le_512": float((tokens <= 512).mean()),
            }
    return out
