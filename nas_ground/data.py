"""Image data for training and search: the data set type, CIFAR-10 found or downloaded and loaded safely, splits,
normalisation and augmentation."""

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
VAL_POOL = 10_000  # images held out of CIFAR's 50k training set; validation subsets are drawn from these
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
class ImageData:
    """An image classification data set in memory (CIFAR-10, CIFAR-100, a folder, an ``.npz`` file).

    The arrays are read-only because one cached copy serves every caller. When the data set brings its own
    validation images (a folder's ``val/``, an ``.npz`` file's ``x_val``), they are the last ``given_val`` rows of
    ``train_x``; otherwise validation images are a seeded split of the training images (`search_split`).
    ``mean`` and ``std`` are the per-channel statistics of the training images in [0, 1], the normalisation
    every model of a run sees.
    """

    train_x: np.ndarray  # (N, 3, H, W) uint8
    train_y: np.ndarray  # (N,) int64 in 0..num_classes - 1
    test_x: np.ndarray  # (M, 3, H, W) uint8
    test_y: np.ndarray  # (M,) int64
    classes: tuple[str, ...]
    name: str = "cifar10"
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    given_val: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    @property
    def val_pool(self) -> int:
        """How many images validation can draw from: the given ones, else 10,000 of CIFAR's 50,000 (a fifth)."""
        return self.given_val or min(VAL_POOL, len(self.train_x) // 5)

    @property
    def train_pool(self) -> int:
        """How many images training can draw from (the rest)."""
        return len(self.train_x) - self.val_pool

    def search_split(self, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(train indices, validation indices) into ``train_x``, each in a seeded order (a prefix is a seeded
        random subset): the same split for every trial of a search."""
        if not self.given_val:
            return split_train_val(len(self.train_x), self.val_pool, split_seed)
        rng = np.random.default_rng(split_seed)
        n_train = len(self.train_x) - self.given_val
        return rng.permutation(n_train), n_train + rng.permutation(self.given_val)

    def summary(self) -> dict[str, object]:
        """What a run records of its data: name, classes, image shape, split sizes and the normalisation."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "classes": list(self.classes),
            "input_shape": list(self.input_shape),
            "train_images": self.train_pool,
            "val_images": self.val_pool,
            "test_images": len(self.test_x),
            "mean": [round(float(v), 6) for v in self.mean],
            "std": [round(float(v), 6) for v in self.std],
        }


def channel_stats(x_uint8: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] of uint8 images (N, C, H, W), accumulated in float64 chunks."""
    total = np.zeros(x_uint8.shape[1])
    squares = np.zeros(x_uint8.shape[1])
    for i in range(0, len(x_uint8), chunk):
        block = x_uint8[i : i + chunk].astype(np.float64) / 255.0
        total += block.sum(axis=(0, 2, 3))
        squares += (block**2).sum(axis=(0, 2, 3))
    count = len(x_uint8) * x_uint8.shape[2] * x_uint8.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 1e-12))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def load_cifar10(data_dir: str | Path | None = None, *, download: bool = True, progress: bool = True) -> ImageData:
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
def _load_folder(folder: Path) -> ImageData:
    start = time.perf_counter()
    train = [_load_batch(folder / name) for name in TRAIN_BATCHES]
    test_x, test_y = _load_batch(folder / "test_batch")
    train_x = np.concatenate([x for x, _ in train])
    mean, std = channel_stats(train_x)
    data = ImageData(
        train_x=train_x,
        train_y=np.concatenate([y for _, y in train]),
        test_x=test_x,
        test_y=test_y,
        classes=_load_label_names(folder / "batches.meta"),
        name="cifar10",
        mean=mean,
        std=std,
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


def normalize(
    x_uint8: np.ndarray | torch.Tensor,
    mean: tuple[float, ...] = CIFAR10_MEAN,
    std: tuple[float, ...] = CIFAR10_STD,
) -> torch.Tensor:
    """uint8 images (N, C, H, W) to float32 standardised with a channel mean and std (in [0, 1] units; default
    CIFAR-10's; a data set's own are ``ImageData.mean`` / ``.std``)."""
    if x_uint8.dtype not in (np.uint8, torch.uint8):
        raise TypeError(f"normalize expects uint8 pixels, got {x_uint8.dtype}")
    x = torch.from_numpy(np.array(x_uint8, dtype=np.float32)) if isinstance(x_uint8, np.ndarray) else x_uint8
    x = x.to(torch.float32)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x / 255.0 - m) / s


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


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017) of a normalised batch (N, C, H, W): a ``size`` x ``size`` square centred at a
    random pixel of each image (clipped at the borders) set to zero, the mean colour after normalisation."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n,), generator=generator, device=generator.device).to(x.device)
    cx = torch.randint(0, w, (n,), generator=generator, device=generator.device).to(x.device)
    rows = torch.arange(h, device=x.device)[None, :]  # (1, H)
    cols = torch.arange(w, device=x.device)[None, :]
    inside_rows = (rows >= (cy - size // 2)[:, None]) & (rows < (cy - size // 2 + size)[:, None])  # (N, H)
    inside_cols = (cols >= (cx - size // 2)[:, None]) & (cols < (cx - size // 2 + size)[:, None])  # (N, W)
    hole = inside_rows[:, :, None] & inside_cols[:, None, :]  # (N, H, W)
    return x.masked_fill(hole[:, None], 0.0)
