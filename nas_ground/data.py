"""CIFAR-10 for training and search: find or download the batches, load them safely, split and augment."""

from __future__ import annotations

import functools
import hashlib
import http.client
import logging
import os
import pickle
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from nas_ground.errors import UserInputError

logger = logging.getLogger(__name__)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

CIFAR10_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_FILES = (*TRAIN_BATCHES, "test_batch", "batches.meta")
NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)  # (C, H, W); a stored row is 1024 red, 1024 green, 1024 blue values
CROP_PADDING = 4

_DOWNLOAD_TIMEOUT_S = 60
_CHUNK_BYTES = 1 << 20

# What the standard batches reference: numpy's array reconstruction (under its pre- and post-2.0 module
# names) and, in pickles Python 3 writes with protocol 2, ``_codecs.encode`` for the raw bytes.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)
# What a corrupt or hostile byte stream can make the unpickler raise (besides DataError).
_UNPICKLING_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    OverflowError,
)


class DataError(UserInputError):
    """A data problem the user can fix: a missing directory, a corrupt file, a failed download."""


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The data directory: ``data_dir``, else ``$NAS_DATA_DIR`` if non-empty, else ``~/.cache/nas/data``.

    A directory the user named (argument or environment) must exist, so that a typo fails here instead of
    starting a download somewhere unexpected; only the default cache directory is created on demand.
    """
    if data_dir is not None:
        if not str(data_dir).strip():
            raise DataError("the data directory is an empty string; give an existing directory")
        path, source = Path(data_dir).expanduser(), "data directory"
    elif env := os.environ.get("NAS_DATA_DIR"):
        path, source = Path(env).expanduser(), "NAS_DATA_DIR"
    else:
        path = Path.home() / ".cache" / "nas" / "data"
        path.mkdir(parents=True, exist_ok=True)
        return path.resolve()
    if not path.is_dir():
        raise DataError(f"{source} {path} is not an existing directory")
    return path.resolve()


def ensure_cifar10(root: Path, *, url: str = CIFAR10_URL, md5: str | None = CIFAR10_MD5, progress: bool = True) -> Path:
    """Return ``root / "cifar-10-batches-py"``, downloading and extracting the archive only if it is absent.

    A folder that already holds all seven batch files is used as it is, without checksums: copies rebuilt
    elsewhere (such as the offline one) differ from the official archive. A download is written to a temporary
    file in ``root``, checked against ``md5`` (unless None), extracted into a temporary directory and moved
    into place in one rename, so an interrupted run never leaves a folder that looks complete.
    """
    folder = root / CIFAR10_FOLDER
    missing = _missing_files(folder)
    if not missing:
        return folder
    if not root.is_dir():
        raise DataError(f"data directory {root} is not an existing directory")
    if folder.exists():
        raise DataError(f"{folder} exists but lacks {', '.join(missing)}; complete it or remove it")
    logger.info("downloading CIFAR-10 from %s into %s", url, root)
    archive, digest = _download(url, root, progress=progress)
    try:
        if md5 is not None and digest != md5.lower():
            raise DataError(f"checksum mismatch for {url}: expected md5 {md5}, got {digest}")
        _extract(archive, url, root)
    finally:
        archive.unlink(missing_ok=True)
    return folder


def _missing_files(folder: Path) -> list[str]:
    return [name for name in CIFAR10_FILES if not (folder / name).is_file()]


def _download(url: str, root: Path, *, progress: bool) -> tuple[Path, str]:
    """Stream ``url`` into a temporary file in ``root``; return the file and its md5 hex digest."""
    fd, name = tempfile.mkstemp(dir=root, prefix=".cifar-10-", suffix=".tar.gz.part")
    part = Path(name)
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                received, expected = _stream(url, out, digest, progress=progress)
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                raise DataError(f"cannot download {url}: {_describe(exc)}") from exc
        if expected is not None and received != expected:
            raise DataError(f"download of {url} stopped after {received} of {expected} bytes")
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return part, digest.hexdigest()


def _stream(url: str, out: IO[bytes], digest: Any, *, progress: bool) -> tuple[int, int | None]:
    """Copy the body of ``url`` to ``out``, updating ``digest``; return (bytes received, Content-Length)."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with (
        urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response,
        Progress(*columns, console=Console(stderr=True), disable=not progress) as bar,
    ):
        length = response.headers.get("Content-Length")
        expected = int(length) if length else None
        task = bar.add_task("CIFAR-10", total=expected)
        received = 0
        while chunk := response.read(_CHUNK_BYTES):
            out.write(chunk)
            digest.update(chunk)
            received += len(chunk)
            bar.advance(task, len(chunk))
    return received, expected


def _describe(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _extract(archive: Path, url: str, root: Path) -> None:
    """Unpack ``archive`` (fetched from ``url``) next to ``root / CIFAR10_FOLDER``, then rename it there."""
    with tempfile.TemporaryDirectory(dir=root, prefix=".cifar-10-extract-") as tmp:
        try:
            with tarfile.open(archive, "r:*") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"cannot extract the archive from {url}: {exc}") from exc
        extracted = Path(tmp) / CIFAR10_FOLDER
        missing = _missing_files(extracted)
        if missing:
            raise DataError(f"the archive from {url} lacks {CIFAR10_FOLDER}/{{{','.join(missing)}}}")
        try:
            os.replace(extracted, root / CIFAR10_FOLDER)
        except OSError:
            if _missing_files(root / CIFAR10_FOLDER):  # not another process finishing first: a real error
                raise


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals numpy needs to rebuild arrays, and nothing else."""

    def __init__(self, file: IO[bytes], path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DataError(f"{self._path} references the forbidden global {module}.{name}")
        return super().find_class(module, name)


def load_pickle_restricted(path: Path) -> object:
    """Unpickle ``path`` with ``encoding="bytes"``, admitting only numpy's array globals (else DataError)."""
    try:
        with path.open("rb") as f:
            return _RestrictedUnpickler(f, path).load()
    except DataError:
        raise
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except _UNPICKLING_ERRORS as exc:
        raise DataError(f"{path} is not a valid pickle: {exc}") from exc


def _load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 3, 32, 32) uint8 and labels (n,) int64 of one CIFAR-10 batch file."""
    batch = load_pickle_restricted(path)
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR-10 batch: it holds a {type(batch).__name__}, not a dict")
    data, labels = batch.get(b"data"), batch.get(b"labels")
    row = int(np.prod(IMAGE_SHAPE))
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape[1:] == (row,)):
        raise DataError(f"{path} is not a CIFAR-10 batch: b'data' must be a uint8 array of shape (n, {row})")
    if not (isinstance(labels, list) and len(labels) == len(data) and all(type(v) is int for v in labels)):
        raise DataError(f"{path} is not a CIFAR-10 batch: b'labels' must be a list of {len(data)} ints")
    y = np.array(labels, dtype=np.int64)
    bad = y[(y < 0) | (y >= NUM_CLASSES)]
    if len(bad):
        raise DataError(f"{path} is not a CIFAR-10 batch: a label is {bad[0]}, outside 0..{NUM_CLASSES - 1}")
    return data.reshape(-1, *IMAGE_SHAPE), y


def _load_label_names(path: Path) -> tuple[str, ...]:
    meta = load_pickle_restricted(path)
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not (isinstance(names, list) and len(names) == NUM_CLASSES and all(isinstance(n, bytes) for n in names)):
        raise DataError(f"{path} is not CIFAR-10 metadata: b'label_names' must be a list of 10 byte strings")
    return tuple(n.decode() for n in names)


@dataclass(frozen=True, eq=False)
class Cifar10:
    """The whole data set in memory; the arrays are read-only because one cached copy serves every caller."""

    train_x: np.ndarray  # (50000, 3, 32, 32) uint8
    train_y: np.ndarray  # (50000,) int64
    test_x: np.ndarray  # (10000, 3, 32, 32) uint8
    test_y: np.ndarray  # (10000,) int64
    classes: tuple[str, ...]


def load_cifar10(data_dir: str | Path | None = None, *, download: bool = True, progress: bool = True) -> Cifar10:
    """Load CIFAR-10 from the resolved data directory (see ``resolve_data_dir``), downloading it if allowed.

    The arrays are cached per directory for the life of the process, so repeated calls are free.
    """
    root = resolve_data_dir(data_dir)
    if download:
        folder = ensure_cifar10(root, progress=progress)
    else:
        folder = root / CIFAR10_FOLDER
        missing = _missing_files(folder)
        if missing:
            raise DataError(f"CIFAR-10 is not in {folder} (missing {', '.join(missing)}) and download is off")
    return _load_folder(folder)


@functools.lru_cache(maxsize=2)
def _load_folder(folder: Path) -> Cifar10:
    start = time.perf_counter()
    train = [_load_batch(folder / name) for name in TRAIN_BATCHES]
    test_x, test_y = _load_batch(folder / "test_batch")
    data = Cifar10(
        train_x=np.concatenate([x for x, _ in train]),
        train_y=np.concatenate([y for _, y in train]),
        test_x=test_x,
        test_y=test_y,
        classes=_load_label_names(folder / "batches.meta"),
    )
    for array in (data.train_x, data.train_y, data.test_x, data.test_y):
        array.flags.writeable = False
    logger.info(
        "loaded CIFAR-10 from %s (%d train, %d test) in %.2f s",
        folder,
        len(data.train_x),
        len(data.test_x),
        time.perf_counter() - start,
    )
    return data


def split_train_val(n: int, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` by a seeded permutation into (train indices, ``n_val`` validation indices).

    Both come in permutation order, so a prefix of either is itself a seeded random subset.
    """
    if not 0 <= n_val < n:
        raise UserInputError(f"validation size {n_val} is out of range for {n} images; use 0 <= n_val < {n}")
    order = np.random.default_rng(seed).permutation(n)
    return order[n_val:], order[:n_val]


def normalize(x_uint8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 3, H, W) to float32 standardised with the CIFAR-10 channel mean and std."""
    if x_uint8.dtype not in (np.uint8, torch.uint8):
        raise TypeError(f"normalize expects uint8 pixels, got {x_uint8.dtype}")
    x = torch.from_numpy(np.array(x_uint8, dtype=np.float32)) if isinstance(x_uint8, np.ndarray) else x_uint8
    x = x.to(torch.float32)
    mean = torch.tensor(CIFAR10_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=x.device).view(1, 3, 1, 1)
    return (x / 255.0 - mean) / std


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard CIFAR augmentation of a normalised batch (N, C, H, W), each sample drawn independently.

    A random H x W crop of the batch zero-padded by 4 pixels (zero is the mean colour after normalisation),
    then a horizontal flip with probability 1/2. The same generator state gives the same batch.
    """
    n, c, h, w = x.shape
    span = 2 * CROP_PADDING + 1
    dy = torch.randint(0, span, (n,), generator=generator, device=generator.device).to(x.device)
    dx = torch.randint(0, span, (n,), generator=generator, device=generator.device).to(x.device)
    flip = (torch.rand(n, generator=generator, device=generator.device) < 0.5).to(x.device)
    padded = F.pad(x, (CROP_PADDING,) * 4)  # (N, C, H + 8, W + 8)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    out = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w + 2 * CROP_PADDING))  # (N, C, H, W + 8)
    return out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))
