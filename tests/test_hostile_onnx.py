"""ONNX files from strangers (`nas.hostile_onnx`): refused with one line and exit 2 or described, never a hang,
a traceback or a huge allocation; the limits are those of `onnx_bench.guard`."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from nas.hostile_onnx import CASES, endless_loop, fifo, model, save
from onnx_bench import guard
from onnx_bench.activations import activation_summary, missing
from onnx_bench.io import OnnxInputError, load_onnx
from tests.conftest import REPO
from tests.test_cli import assert_one_line_error, nas

REFUSED = [c for c in CASES if c.refused]
DESCRIBED = [c for c in CASES if not c.refused and not c.name.startswith("Loop")]
MEMORY_LIMIT = 2 * 2**30


@contextlib.contextmanager
def watched_fifos(root: Path) -> Iterator[list[Path]]:
    """Every FIFO under ``root``, watched: a reader that opens one is let go (a writer opens and closes it, so the
    reader gets end of file instead of hanging) and its path recorded in the yielded list."""
    pipes = [p for p in root.rglob("*") if p.is_fifo() and not p.is_symlink()]
    opened: list[Path] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.02):
            for pipe in pipes:
                try:
                    os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))  # succeeds only while a reader waits
                    opened.append(pipe)
                except OSError as exc:
                    assert exc.errno == errno.ENXIO

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield opened
    finally:
        stop.set()
        thread.join()


def good_model() -> bytes:
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    return model(nodes, [weight], image=[1, 3, 16, 16]).SerializeToString()


@pytest.mark.parametrize("command", ["describe", "graph"])
def test_refused_with_one_line_before_any_read(tmp_path: Path, command: str):
    paths = [case.build(tmp_path / f"case{i}") for i, case in enumerate(REFUSED)]
    with watched_fifos(tmp_path) as opened:
        for case, path in zip(REFUSED, paths, strict=True):
            assert_one_line_error(nas(command, str(path)), case.needle)
    assert opened == []  # no external-data FIFO was opened, not even by the checker


def test_described_with_unknowns_not_refused(tmp_path: Path):
    for i, case in enumerate(DESCRIBED):
        proc = nas("describe", str(case.build(tmp_path / f"case{i}")))
        assert proc.returncode == 0 and case.needle in proc.stdout, (case.name, proc.stderr)
    custom = next(c for c in DESCRIBED if "com.evil" in c.name)
    assert "?" in nas("describe", str(custom.build(tmp_path / "custom"))).stdout


def test_fifo_as_the_model_is_refused(tmp_path: Path):
    pipe = fifo(tmp_path / "model.onnx")
    with watched_fifos(tmp_path) as opened:
        assert_one_line_error(nas("describe", str(pipe)), "not a regular file")
    assert opened == []


def test_external_data_inside_the_folder_is_described_never_run(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    case = next(c for c in CASES if c.name.startswith("external data inside"))
    path = case.build(tmp_path)
    loaded = load_onnx(path, check=True)  # the checker finds weights.bin beside the model, not in the working directory
    with caplog.at_level(logging.WARNING):
        assert activation_summary(loaded) == missing()
    assert "external data" in caplog.text  # onnxruntime would look for weights.bin in the working directory
    with pytest.raises(OnnxInputError, match="no folder for external data"):
        load_onnx(path.read_bytes(), check=False)


def test_operator_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"]) for i in range(5)]
    nodes[0].input[0], nodes[-1].output[0] = "x", "y"
    path = save(model(nodes), tmp_path / "chain.onnx")
    load_onnx(path, check=False)
    monkeypatch.setattr(guard, "MAX_NODES", 4)
    with pytest.raises(OnnxInputError, match="limit of 4 operators"):
        load_onnx(path, check=False)


def _summary(case_name: str, folder: Path, caplog: pytest.LogCaptureFixture) -> dict[str, float]:
    case = next(c for c in CASES if c.name.startswith(case_name))
    with caplog.at_level(logging.WARNING):
        return activation_summary(load_onnx(case.build(folder), check=False))


def test_runtime_allocation_stopped_by_the_bounded_arena(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    # 3x20000x20000 float32 per image is 4.8 GB: the arena of MAX_PROBE_BYTES refuses it before a byte is touched
    assert _summary("ConstantOfShape of a run-time", tmp_path, caplog) == missing()
    assert "is smaller than requested bytes of 4800000000" in caplog.text  # the arena's refusal


def test_probe_input_checked_before_it_is_built(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    assert _summary("image input", tmp_path, caplog) == missing()
    assert "beyond the limit of 2^28" in caplog.text


def test_endless_loop_stopped_at_the_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.setattr(guard, "MAX_PROBE_SECONDS", 1.0)
    loaded = load_onnx(save(endless_loop(), tmp_path / "loop.onnx"), check=False)
    result: list[dict[str, float]] = []
    with caplog.at_level(logging.WARNING):
        worker = threading.Thread(target=lambda: result.append(activation_summary(loaded)), daemon=True)
        start = time.monotonic()
        worker.start()
        worker.join(timeout=30)
    assert result == [missing()] and time.monotonic() - start < 10
    assert "ran past the limit of 1 s" in caplog.text


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _nas_limited(*args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """``nas ARGS`` in a child whose address space is limited to 2 GiB; also its peak RSS in bytes."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "nas", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_limited,
    )
    out, err = proc.communicate(timeout=120)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # the largest child so far: an upper bound
    return subprocess.CompletedProcess(args, proc.returncode, out, err), peak


def test_cli_predict_under_a_2_gib_address_space(tmp_path: Path):
    good = tmp_path / "good" / "good.onnx"
    save(good_model(), good)
    files = [good, *(case.build(tmp_path / f"case{i}") for i, case in enumerate(DESCRIBED))]
    start = time.monotonic()
    proc, peak = _nas_limited("predict", *map(str, files))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(" +- ") == len(files) and "Traceback" not in proc.stderr
    assert "smaller than requested bytes" in proc.stderr and "limit of 2^28" in proc.stderr
    assert time.monotonic() - start < 60 and peak < MEMORY_LIMIT
    huge = next(c for c in REFUSED if c.name.startswith("initializer"))
    refused, peak = _nas_limited("predict", str(good), str(huge.build(tmp_path / "huge")))
    assert_one_line_error(refused, huge.needle)
    assert peak < MEMORY_LIMIT


def test_bytes_and_checker_paths_refuse_too(tmp_path: Path):
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2**20, 2**12])  # 2^32 elements, no data
    data = model([helper.make_node("MatMul", ["x", "w"], ["y"])], [weight]).SerializeToString()
    for check in (True, False):
        with pytest.raises(OnnxInputError, match="limit of 2"):
            load_onnx(data, check=check)
