"""Many ONNX files at once: what the predictor reads of each (text, graph summary, activation statistics), spread
over worker processes.

One file is read, checked by the guard, described, summarised and run on the probe batch (`describe_path`), all
in one process; `describe_paths` hands the files to ``workers`` processes (forkserver: nothing of the caller's
threads or loaded models is inherited), each with one BLAS and one onnxruntime thread, so every core is busy with
one file and the GIL-bound description of a file overlaps the runtime work of another. A few files are
described in the calling process, where a pool would cost more to start than it saves.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from nas_ground.errors import UserInputError
from onnx_bench.activations import ACT_FEATURES

SUMMARY_KEYS = (
    "params",
    "flops",
    "nodes",
    "depth",
    "peak_activation",
    "op_histogram",
    "wl_counts",
    *ACT_FEATURES,
)
POOL_MIN_FILES = 8  # fewer files than this are described in the calling process


def describe_graph(model: Any, text_format: str) -> tuple[str, dict[str, Any]]:
    """The text and the summary of a loaded model without the activation features (pure Python: holds the GIL)."""
    from onnx_bench.graph import summarize, wl_counts
    from onnx_bench.text import describe

    text = describe(model, text_format)
    full = {**summarize(model), "wl_counts": wl_counts(model)}
    return text, {k: full[k] for k in SUMMARY_KEYS if k in full}


def describe_path(path: str | Path, text_format: str) -> tuple[str, dict[str, Any]]:
    """(text, summary with the activation features) of one ONNX file."""
    from onnx_bench.activations import activation_summary
    from onnx_bench.io import load_onnx

    model = load_onnx(Path(path), check=False)
    text, summary = describe_graph(model, text_format)
    return text, {**summary, **activation_summary(model)}


def _describe_job(job: tuple[str, str]) -> tuple[str, dict[str, Any]]:
    return describe_path(*job)


def _one_thread() -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # one BLAS thread per worker: the workers are the parallelism


def default_workers() -> int:
    """Worker processes: ``NAS_WORKERS`` when set, else the CPUs this process may use."""
    value = os.environ.get("NAS_WORKERS")
    if value:
        if not value.strip().isdigit() or int(value) < 1:
            raise UserInputError(f"NAS_WORKERS={value!r} must be a positive whole number")
        return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def describe_paths(
    paths: Sequence[str | Path], text_format: str, workers: int | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(text, summary) of each file, in order; a file the guard refuses raises its `UserInputError` here."""
    workers = default_workers() if workers is None else workers
    if workers <= 1 or len(paths) < POOL_MIN_FILES:
        for path in paths:
            yield describe_path(path, text_format)
        return
    jobs = [(str(p), text_format) for p in paths]
    chunk = max(1, min(8, len(jobs) // (4 * workers)))
    context = multiprocessing.get_context("forkserver")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_one_thread)
    try:
        yield from pool.map(_describe_job, jobs, chunksize=chunk)
    finally:  # a refused file (or an interrupt) drops the files not started yet
        pool.shutdown(wait=True, cancel_futures=True)
