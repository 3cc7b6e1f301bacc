"""Every image data set a search can train on, found by one name: CIFAR-10, CIFAR-100, a folder of JPEG/PNG images
or an ``.npz`` file; a decoded folder is cached on disk so that the next run on it starts in seconds."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from nas_ground.data import (
    DataError,
    ImageData,
    _download,
    channel_stats,
    load_cifar10,
    load_pickle_restricted,
    resolve_data_dir,
)

logger = logging.getLogger(__name__)

DATASET_FORMS = "cifar10, cifar100, folder:PATH, npz:PATH"

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_FILES = ("train", "test", "meta")
CIFAR100_CLASSES = 100
CIFAR_ROW = 3 * 32 * 32  # a stored row is 1024 red, 1024 green, 1024 blue values

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
HOLDOUT_SEED = 0  # the seeded tenth of the training images that is the test set when none is given
CACHE_FORMAT = 1  # part of every cache key: bump when decoding, resizing, the hold-out or the entry layout change
CACHE_ARRAYS = ("train_x", "train_y", "test_x", "test_y")

# What Pillow raises for a file it cannot decode (UnidentifiedImageError is an OSError; some plugins raise
# SyntaxError or ValueError for broken streams).
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, zlib.error, Image.DecompressionBombError)
_NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK"
_NPZ_KEYS = ("x", "y", "x_val", "y_val", "x_test", "y_test", "classes")


def load_image_data(
    dataset: str,
    data_dir: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    download: bool = True,
    progress: bool = True,
) -> ImageData:
    """The image data set named by ``dataset``: ``cifar10``, ``cifar100``, ``folder:PATH`` or ``npz:PATH``.

    ``data_dir`` is where CIFAR-10 and CIFAR-100 are found or downloaded (see `resolve_data_dir`); a relative
    ``PATH`` is taken from the working directory. A folder holds one sub-folder of JPEG/PNG images per class, or
    ``train/`` (and optionally ``val/`` and ``test/``) with such sub-folders; without ``train/``, the folders
    ``val`` and ``test`` beside ``PATH`` are its validation and test images when they exist. An ``.npz`` file holds
    ``x`` (uint8, NHWC, NCHW or grayscale NHW) and integer ``y``, optionally ``x_val``/``y_val``,
    ``x_test``/``y_test`` and a string array ``classes``. Without test images a seeded tenth of the training
    images is held out as the test set. A folder's decoded images are cached under ``cache_dir`` (default
    ``$NAS_CACHE_DIR/datasets``, else ``~/.cache/nas/datasets``); every data set is cached for the process.

    >>> data = load_image_data("folder:~/pets")  # doctest: +SKIP
    """
    kind, sep, rest = dataset.partition(":")
    if not sep and dataset == "cifar10":
        return load_cifar10(data_dir, download=download, progress=progress)
    if not sep and dataset == "cifar100":
        return _cifar100(data_dir, download=download, progress=progress)
    if sep and kind in ("folder", "npz"):
        if not rest.strip():
            raise DataError(f"data set {dataset!r} names no path; give {kind}:PATH")
        path = Path(os.path.abspath(Path(rest).expanduser()))
        if kind == "folder":
            root = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
            return _load_folder(f"folder:{path}", _list_folder(path), root.absolute(), progress)
        return _npz(path)
    raise DataError(f"unknown data set {dataset!r}; valid: {DATASET_FORMS}")


def _default_cache_dir() -> Path:
    return Path(os.environ.get("NAS_CACHE_DIR") or Path.home() / ".cache" / "nas") / "datasets"


def _image_data(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    classes: tuple[str, ...],
    name: str,
    given_val: int = 0,
) -> ImageData:
    """A read-only `ImageData` normalised with the statistics of its training rows (the given validation ones
    excluded)."""
    mean, std = channel_stats(train_x[: len(train_x) - given_val])
    data = ImageData(train_x, train_y, test_x, test_y, classes, name=name, mean=mean, std=std, given_val=given_val)
    for array in (data.train_x, data.train_y, data.test_x, data.test_y):
        array.flags.writeable = False
    return data


def _hold_out(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) sorted indices: a seeded tenth of each class (rounded), at least one image in all."""
    rng = np.random.default_rng(HOLDOUT_SEED)
    order = np.argsort(labels, kind="stable")
    _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    held = [rng.permutation(order[s : s + n])[: (n + 5) // 10] for s, n in zip(starts, counts, strict=True)]
    picked = np.concatenate(held)
    if not len(picked):
        largest = int(np.argmax(counts))
        picked = rng.permutation(order[starts[largest] : starts[largest] + counts[largest]])[:1]
    picked = np.sort(picked)
    return np.setdiff1d(np.arange(len(labels)), picked), picked


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# --- CIFAR-100 ---------------------------------------------------------------------------------------------


def _cifar100(data_dir: str | Path | None, *, download: bool, progress: bool) -> ImageData:
    root = resolve_data_dir(data_dir)
    folder = root / CIFAR100_FOLDER
    missing = _missing_cifar100(folder)
    if missing and not download:
        raise DataError(f"CIFAR-100 is not in {folder} (missing {', '.join(missing)}) and download is off")
    if missing:
        _fetch_cifar100(root, missing, progress=progress)
    return _load_cifar100(folder)


def _missing_cifar100(folder: Path) -> list[str]:
    return [name for name in CIFAR100_FILES if not (folder / name).is_file()]


def _fetch_cifar100(root: Path, missing: list[str], *, progress: bool) -> None:
    """Download, check and extract the official archive into ``root``, the folder appearing in one rename."""
    folder = root / CIFAR100_FOLDER
    if folder.exists():
        raise DataError(f"{folder} exists but lacks {', '.join(missing)}; complete it or remove it")
    logger.info("downloading CIFAR-100 from %s into %s", CIFAR100_URL, root)
    archive, digest = _download(CIFAR100_URL, root, progress=progress)
    try:
        if digest != CIFAR100_MD5:
            raise DataError(f"checksum mismatch for {CIFAR100_URL}: expected md5 {CIFAR100_MD5}, got {digest}")
        with tempfile.TemporaryDirectory(dir=root, prefix=".cifar-100-extract-") as tmp:
            try:
                with tarfile.open(archive, "r:*") as tar:
                    tar.extractall(tmp, filter="data")
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise DataError(f"cannot extract the archive from {CIFAR100_URL}: {_one_line(exc)}") from exc
            extracted = Path(tmp) / CIFAR100_FOLDER
            lacking = _missing_cifar100(extracted)
            if lacking:
                raise DataError(f"the archive from {CIFAR100_URL} lacks {CIFAR100_FOLDER}/{{{','.join(lacking)}}}")
            try:
                os.replace(extracted, folder)
            except OSError as exc:
                if _missing_cifar100(folder):  # not another process finishing first: a real error
                    raise DataError(f"cannot move the extracted CIFAR-100 to {folder}: {_one_line(exc)}") from exc
    finally:
        archive.unlink(missing_ok=True)


@functools.lru_cache(maxsize=2)
def _load_cifar100(folder: Path) -> ImageData:
    start = time.perf_counter()
    classes = _cifar100_names(folder / "meta")
    train_x, train_y = _cifar100_split(folder / "train")
    test_x, test_y = _cifar100_split(folder / "test")
    data = _image_data(train_x, train_y, test_x, test_y, classes, "cifar100")
    logger.info("loaded CIFAR-100 from %s in %.2f s", folder, time.perf_counter() - start)
    return data


def _cifar100_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 3, 32, 32) uint8 and fine labels (n,) int64 of the ``train`` or ``test`` file."""
    batch = load_pickle_restricted(path)
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(b"fine_labels") if isinstance(batch, dict) else None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape[1:] == (CIFAR_ROW,)):
        raise DataError(f"{path} is not a CIFAR-100 file: b'data' must be a uint8 array of shape (n, {CIFAR_ROW})")
    if not (isinstance(labels, list) and len(labels) == len(data) and all(type(v) is int for v in labels)):
        raise DataError(f"{path} is not a CIFAR-100 file: b'fine_labels' must be a list of {len(data)} ints")
    y = np.array(labels, dtype=np.int64)
    bad = y[(y < 0) | (y >= CIFAR100_CLASSES)]
    if len(bad):
        raise DataError(f"{path} is not a CIFAR-100 file: a fine label is {bad[0]}, outside 0..{CIFAR100_CLASSES - 1}")
    return data.reshape(-1, 3, 32, 32), y


def _cifar100_names(path: Path) -> tuple[str, ...]:
    meta = load_pickle_restricted(path)
    names = meta.get(b"fine_label_names") if isinstance(meta, dict) else None
    if not (
        isinstance(names, list) and len(names) == CIFAR100_CLASSES and all(isinstance(n, bytes | str) for n in names)
    ):
        raise DataError(f"{path} is not CIFAR-100 metadata: b'fine_label_names' must be a list of 100 strings")
    return tuple(n.decode() if isinstance(n, bytes) else n for n in names)


# --- a folder of images ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Listing:
    """The images of a folder data set, (path, label) per split in file order; equal listings have equal keys."""

    key: str  # SHA-1 of every split's relative file paths, sizes and mtimes, and CACHE_FORMAT
    classes: tuple[str, ...] = field(compare=False)
    train: tuple[tuple[Path, int], ...] = field(compare=False)
    val: tuple[tuple[Path, int], ...] = field(compare=False)  # empty: no val folder
    test: tuple[tuple[Path, int], ...] = field(compare=False)  # empty: no test folder, hold out from train


def _list_folder(path: Path) -> _Listing:
    """Find the split folders of ``path``, check their class folders and list their images."""
    if not path.is_dir():
        raise DataError(f"image folder {path} {'is not a directory' if path.exists() else 'does not exist'}")
    base, train = (path, path / "train") if (path / "train").is_dir() else (path.parent, path)
    folders = {"train": train}
    for role in ("val", "test"):
        if base / role != train and (base / role).is_dir():
            folders[role] = base / role
    classes = _class_names(train)
    if not classes:
        raise DataError(f"image folder {train} has no class sub-folders; put each class's JPEG/PNG images in one")
    if len(classes) < 2:
        raise DataError(f"image folder {train} has 1 class folder ({classes[0]}); a classifier needs at least 2")
    for role in ("val", "test"):
        if role in folders:
            _check_classes(folders[role], classes, train)
    digest = hashlib.sha1(f"nas image folder, cache format {CACHE_FORMAT}\n".encode(), usedforsecurity=False)
    splits: dict[str, tuple[tuple[Path, int], ...]] = {}
    for role, folder in folders.items():
        entries = []
        for label, name in enumerate(classes):
            for file, stat in _class_images(folder / name):
                relative = file.relative_to(folder).as_posix()
                digest.update(f"{role}/{relative}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode(errors="replace"))
                entries.append((file, label))
        splits[role] = tuple(entries)
    return _Listing(digest.hexdigest(), classes, splits["train"], splits.get("val", ()), splits.get("test", ()))


def _class_names(folder: Path) -> tuple[str, ...]:
    try:
        return tuple(sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")))
    except OSError as exc:
        raise DataError(f"cannot list {folder}: {exc.strerror or _one_line(exc)}") from exc


def _check_classes(folder: Path, classes: tuple[str, ...], train: Path) -> None:
    names = _class_names(folder)
    missing, extra = sorted(set(classes) - set(names)), sorted(set(names) - set(classes))
    if missing:
        raise DataError(f"{folder} lacks the class folder {missing[0]!r} that the training folder {train} has")
    if extra:
        raise DataError(f"{folder} has the class folder {extra[0]!r} that the training folder {train} lacks")


def _class_images(class_dir: Path) -> list[tuple[Path, os.stat_result]]:
    """The JPEG/PNG files under ``class_dir`` (sub-folders included, hidden ones not) in path order, with stats."""
    try:
        files = sorted(
            p
            for p in class_dir.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(class_dir).parts)
            and p.is_file()
        )
        images = [(p, p.stat()) for p in files]
    except OSError as exc:
        raise DataError(f"cannot list {class_dir}: {exc.strerror or _one_line(exc)}") from exc
    if not images:
        raise DataError(f"class folder {class_dir} holds no JPEG/PNG images")
    return images


@functools.lru_cache(maxsize=4)
def _load_folder(name: str, listing: _Listing, cache_root: Path, progress: bool) -> ImageData:
    """The data set of ``listing``, from its cache entry when one is valid, else decoded and cached."""
    entry = cache_root / f"folder-{listing.key}"
    cached = _read_entry(entry, name)
    if cached is not None:
        logger.info("loaded %s from the cache %s", name, entry)
        return cached
    start = time.perf_counter()
    data = _decode_folder(name, listing, progress)
    logger.info(
        "decoded %s (%d images) in %.2f s", name, len(data.train_x) + len(data.test_x), time.perf_counter() - start
    )
    _write_entry(entry, data)
    return data


def _decode_folder(name: str, listing: _Listing, progress: bool) -> ImageData:
    """Decode every image at the most common size of the training images, in the order train, val, test."""
    width, height = Counter(_image_size(path) for path, _ in listing.train).most_common(1)[0][0]
    train, test = list(listing.train), list(listing.test)
    if not test:
        keep, held = _hold_out(np.array([label for _, label in train]))
        train, test = [train[i] for i in keep], [train[i] for i in held]
    ordered = train + list(listing.val) + test
    x = np.empty((len(ordered), 3, height, width), dtype=np.uint8)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        for i, (path, _) in enumerate(bar.track(ordered, description="decoding images")):
            x[i] = _read_image(path, (width, height)).transpose(2, 0, 1)
    y = np.array([label for _, label in ordered], dtype=np.int64)
    n = len(train) + len(listing.val)
    return _image_data(x[:n], y[:n], x[n:], y[n:], listing.classes, name, given_val=len(listing.val))


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header of the image at ``path``."""
    try:
        with Image.open(path) as image:
            return image.size
    except _IMAGE_ERRORS as exc:
        raise DataError(f"cannot read image {path}: {_one_line(exc)}") from exc


def _read_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The image at ``path`` as RGB (H, W, 3) uint8, resized bilinearly to ``size`` (width, height) if need be."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
            if rgb.size != size:
                rgb = rgb.resize(size, Image.Resampling.BILINEAR)
            return np.asarray(rgb)
    except _IMAGE_ERRORS as exc:
        raise DataError(f"cannot read image {path}: {_one_line(exc)}") from exc


def _read_entry(entry: Path, name: str) -> ImageData | None:
    """The data set in the cache entry, memory-mapped; None if there is none or it is corrupt (then removed)."""
    if not entry.exists():
        return None
    try:
        meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
        arrays = [np.load(entry / f"{key}.npy", mmap_mode="r", allow_pickle=False) for key in CACHE_ARRAYS]
        train_x, train_y, test_x, test_y = arrays
        classes, given_val = tuple(meta["classes"]), int(meta["given_val"])
        labels = np.concatenate([train_y, test_y])
        if not (
            train_x.dtype == test_x.dtype == np.uint8
            and train_x.ndim == 4
            and test_x.shape[1:] == train_x.shape[1:]
            and train_y.dtype == test_y.dtype == np.int64
            and train_y.shape == (len(train_x),)
            and test_y.shape == (len(test_x),)
            and 0 <= given_val < len(train_x)
            and labels.min() >= 0
            and labels.max() < len(classes)
        ):
            raise ValueError("its arrays disagree with each other or with meta.json")
        data = ImageData(
            train_x,
            train_y,
            test_x,
            test_y,
            classes,
            name=name,
            mean=tuple(float(v) for v in meta["mean"]),
            std=tuple(float(v) for v in meta["std"]),
            given_val=given_val,
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("ignoring the corrupt data set cache %s (%s); decoding the images again", entry, _one_line(exc))
        shutil.rmtree(entry, ignore_errors=True)
        return None
    return data


def _write_entry(entry: Path, data: ImageData) -> None:
    """Write the decoded arrays and meta.json into a temporary folder, then rename it to ``entry``; a cache that
    cannot be written is skipped with a warning."""
    tmp: Path | None = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}-"))
        for key in CACHE_ARRAYS:
            np.save(tmp / f"{key}.npy", getattr(data, key), allow_pickle=False)
        meta = {"classes": list(data.classes), "given_val": data.given_val, "mean": data.mean, "std": data.std}
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        os.replace(tmp, entry)
    except OSError as exc:
        if not (entry / "meta.json").is_file():  # not another process caching the same images first
            logger.warning("cannot cache the decoded images in %s: %s", entry, _one_line(exc))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


# --- an .npz file ------------------------------------------------------------------------------------------


def _npz(path: Path) -> ImageData:
    if not path.is_file():
        raise DataError(f"npz file {path} {'is not a file' if path.exists() else 'does not exist'}")
    stat = path.stat()
    return _load_npz(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _load_npz(path: Path, size: int, mtime_ns: int) -> ImageData:
    """The data set in ``path`` (``size`` and ``mtime_ns`` make a changed file a new cache entry)."""
    start = time.perf_counter()
    arrays = _read_npz(path)
    for a, b in (("x_val", "y_val"), ("x_test", "y_test")):
        if (a in arrays) != (b in arrays):
            present, absent = (a, b) if a in arrays else (b, a)
            raise DataError(f"{path} has {present} but no {absent}; give both or neither")
    layout = _layout(arrays["x"], path)
    train_x, train_y = _npz_split(arrays, "", path, layout)
    classes = _npz_classes(arrays, train_y, path)
    parts = {}
    for suffix in ("_val", "_test"):
        if "x" + suffix in arrays:
            x, y = _npz_split(arrays, suffix, path, layout)
            if x.shape[1:] != train_x.shape[1:]:
                raise DataError(f"x{suffix} in {path} has images of shape {x.shape[1:]}, x has {train_x.shape[1:]}")
            if y.max() >= len(classes):
                top = len(classes) - 1
                raise DataError(
                    f"y{suffix} in {path} has the label {y.max()}, outside the 0..{top} of the training labels"
                )
            parts[suffix] = (x, y)
    if "_test" in parts:
        test_x, test_y = parts["_test"]
    elif len(train_x) < 2:
        raise DataError(f"x in {path} has 1 image; without x_test at least 2 are needed (a tenth becomes the test set)")
    else:
        keep, held = _hold_out(train_y)
        train_x, train_y, test_x, test_y = train_x[keep], train_y[keep], train_x[held], train_y[held]
    given_val = 0
    if "_val" in parts:
        val_x, val_y = parts["_val"]
        train_x, train_y, given_val = np.concatenate([train_x, val_x]), np.concatenate([train_y, val_y]), len(val_x)
    data = _image_data(train_x, train_y, test_x, test_y, classes, f"npz:{path}", given_val)
    logger.info("loaded %s (%d images) in %.2f s", path, len(train_x) + len(test_x), time.perf_counter() - start)
    return data


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of ``path`` that a data set uses; ``x`` and ``y`` must be among them."""
    try:
        with path.open("rb") as f:
            magic = f.read(len(_NPY_MAGIC))
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or _one_line(exc)}") from exc
    if magic == _NPY_MAGIC:
        raise DataError(f"{path} holds a single array (np.save), not an .npz archive of x and y (np.savez)")
    if not magic.startswith(_ZIP_MAGIC):
        raise DataError(f"{path} is not a valid .npz file: it is not a zip archive (write it with np.savez)")
    try:
        loaded = np.load(path, allow_pickle=False)
    except _NPZ_ERRORS as exc:
        raise DataError(f"{path} is not a valid .npz file: {_one_line(exc)}") from exc
    with loaded:
        for key in ("x", "y"):
            if key not in loaded.files:
                held = ", ".join(loaded.files) or "no arrays"
                raise DataError(f"{path} lacks the array {key!r} (x: uint8 images, y: integer labels); it holds {held}")
        try:
            return {key: loaded[key] for key in _NPZ_KEYS if key in loaded.files}
        except _NPZ_ERRORS as exc:
            raise DataError(f"{path} is not a valid .npz file: {_one_line(exc)}") from exc


def _layout(x: np.ndarray, path: Path) -> str:
    """How ``x`` stores its images: NHW (grayscale), NCHW (also when both axes 1 and 3 could be channels) or
    NHWC, channels being 1 or 3."""
    if x.ndim == 3:
        return "NHW"
    if x.ndim == 4 and x.shape[1] in (1, 3):
        return "NCHW"
    if x.ndim == 4 and x.shape[3] in (1, 3):
        return "NHWC"
    raise DataError(
        f"x in {path} has shape {x.shape}; expected (N, H, W) grayscale, or (N, H, W, C) or (N, C, H, W) with C 1 or 3"
    )


def _npz_split(arrays: dict[str, np.ndarray], suffix: str, path: Path, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, H, W) uint8 and labels (N,) int64 of ``x<suffix>`` and ``y<suffix>``, checked."""
    xk, yk = "x" + suffix, "y" + suffix
    x, y = arrays[xk], arrays[yk]
    if x.dtype != np.uint8:
        raise DataError(f"{xk} in {path} has dtype {x.dtype}; images must be uint8 (0..255)")
    if x.ndim != len(layout) or x.size == 0:
        raise DataError(f"{xk} in {path} has shape {x.shape}; expected {len(layout)} non-empty axes ({layout}) as x")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{yk} in {path} has dtype {y.dtype}; labels must be integers")
    if y.ndim != 1:
        raise DataError(f"{yk} in {path} has shape {y.shape}; labels must be 1-D, one per image")
    if len(x) != len(y):
        raise DataError(f"{xk} has {len(x)} images but {yk} has {len(y)} labels in {path}")
    if y.min() < 0:
        raise DataError(f"{yk} in {path} has the label {y.min()}; labels must be >= 0")
    if layout == "NHW":
        x = x[:, None]
    elif layout == "NHWC":
        x = x.transpose(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)  # every search space takes RGB
    return np.ascontiguousarray(x), y.astype(np.int64)


def _npz_classes(arrays: dict[str, np.ndarray], y: np.ndarray, path: Path) -> tuple[str, ...]:
    """The class names: the file's ``classes`` array, else "0".."K-1" for K = max(y) + 1."""
    top = int(y.max())
    if "classes" in arrays:
        names = arrays["classes"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise DataError(f"classes in {path} has dtype {names.dtype} and shape {names.shape}; expected 1-D strings")
        classes = tuple(n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in names.tolist())
        if top >= len(classes):
            raise DataError(f"y in {path} has the label {top}, but classes names only {len(classes)} classes")
    elif top >= len(y):
        raise DataError(f"y in {path} has the label {top} for {len(y)} images; labels must be 0..K-1 for K classes")
    else:
        classes = tuple(str(i) for i in range(top + 1))
    if len(classes) < 2:
        raise DataError(f"{path} has {len(classes)} class; a classifier needs at least 2")
    return classes
