"""Shared fixtures: the offline data directory (``$NAS_DATA_DIR``, as CI sets it)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Embedding and ONNX-description caches of the tests live in a fresh directory, never in ~/.cache.
os.environ["NAS_CACHE_DIR"] = tempfile.mkdtemp(prefix="nas-test-cache-")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    value = os.environ.get("NAS_DATA_DIR")
    if not value:
        pytest.skip("NAS_DATA_DIR is not set (make test and CI point it at ../shared/data)")
    return Path(value)


@pytest.fixture(scope="session")
def nb201_csv(data_dir: Path) -> Path:
    path = data_dir / "nb201" / "nb201.csv"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return path
