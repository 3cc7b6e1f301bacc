"""Tests of nas_ground.data: the real offline CIFAR-10, the download path against a local server, safe unpickling."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import pickle
import socket
import tarfile
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nas_ground.data import (
    CIFAR10_FOLDER,
    TRAIN_BATCHES,
    DataError,
    augment,
    ensure_cifar10,
    load_cifar10,
    load_pickle_restricted,
    normalize,
    resolve_data_dir,
    split_train_val,
)
from nas_ground.errors import UserInputError

IMAGES_PER_BATCH = 20
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# --- the real offline copy -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_data_dir() -> str:
    data_dir = os.environ.get("NAS_DATA_DIR")
    if not data_dir:
        pytest.skip("NAS_DATA_DIR is not set")
    return data_dir


def test_real_cifar10_loads_with_expected_statistics(real_data_dir: str) -> None:
    data = load_cifar10(real_data_dir, download=False)
    assert data.train_x.shape == (50000, 3, 32, 32) and data.train_x.dtype == np.uint8
    assert data.test_x.shape == (10000, 3, 32, 32) and data.test_x.dtype == np.uint8
    assert data.train_y.shape == (50000,) and data.train_y.dtype == np.int64
    assert data.test_y.shape == (10000,)
    assert data.classes == CLASSES
    assert np.bincount(data.train_y, minlength=10).tolist() == [5000] * 10
    assert np.bincount(data.test_y, minlength=10).tolist() == [1000] * 10
    channel_means = data.train_x.mean(axis=(0, 2, 3)) / 255
    np.testing.assert_allclose(channel_means, (0.491, 0.482, 0.447), atol=0.01)
    assert load_cifar10(real_data_dir, download=False) is data  # cached in-process
    assert not data.train_x.flags.writeable  # the cached copy is shared, so it cannot be changed


def test_normalize_real_images_are_standardised(real_data_dir: str) -> None:
    x = normalize(load_cifar10(real_data_dir, download=False).train_x[:5000])
    assert x.dtype == torch.float32 and x.shape == (5000, 3, 32, 32)
    assert x.mean(dim=(0, 2, 3)).abs().max() < 0.05
    assert (x.std(dim=(0, 2, 3)) - 1).abs().max() < 0.05


# --- download, extraction and loading against a local HTTP server ----------------------------------------


Batch = tuple[np.ndarray, list[int]]  # (n, 3072) uint8 rows and their labels, as written to disk


def _write_tiny_cifar(folder: Path) -> dict[str, Batch]:
    """The CIFAR-10 layout with IMAGES_PER_BATCH random images per batch, pickled like the official files."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches: dict[str, Batch] = {}
    for name in (*TRAIN_BATCHES, "test_batch"):
        x = rng.integers(0, 256, size=(IMAGES_PER_BATCH, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=IMAGES_PER_BATCH).tolist()
        filenames = [f"{i}.png".encode() for i in range(IMAGES_PER_BATCH)]
        content = {b"data": x, b"labels": labels, b"batch_label": name.encode(), b"filenames": filenames}
        with (folder / name).open("wb") as f:
            pickle.dump(content, f)
        batches[name] = (x, labels)
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072}, f)
    return batches


@dataclass
class ArchiveServer:
    url: str
    md5: str
    batches: dict[str, Batch]
    requests: list[str]


@pytest.fixture
def archive_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ArchiveServer]:
    """A tiny CIFAR-10 archive served over HTTP on 127.0.0.1, counting the requests it gets."""
    monkeypatch.setenv("no_proxy", "*")
    served = tmp_path / "served"
    batches = _write_tiny_cifar(tmp_path / "build" / CIFAR10_FOLDER)
    served.mkdir()
    with tarfile.open(served / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "build" / CIFAR10_FOLDER, arcname=CIFAR10_FOLDER)
    md5 = hashlib.md5((served / "cifar-10-python.tar.gz").read_bytes()).hexdigest()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/cifar-10-python.tar.gz"
        yield ArchiveServer(url, md5, batches, requests)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def empty_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    return root


def test_download_extract_and_load_round_trip(archive_server: ArchiveServer, empty_root: Path) -> None:
    folder = ensure_cifar10(empty_root, url=archive_server.url, md5=archive_server.md5)
    assert folder == empty_root / CIFAR10_FOLDER
    assert sorted(p.name for p in empty_root.iterdir()) == [CIFAR10_FOLDER]  # archive and temp dirs gone
    assert len(archive_server.requests) == 1

    data = load_cifar10(empty_root)
    train = [archive_server.batches[name] for name in TRAIN_BATCHES]
    np.testing.assert_array_equal(data.train_x, np.concatenate([x for x, _ in train]).reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(data.train_y, [label for _, labels in train for label in labels])
    test_x, test_y = archive_server.batches["test_batch"]
    np.testing.assert_array_equal(data.test_x, test_x.reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(data.test_y, test_y)
    assert data.train_x.shape == (5 * IMAGES_PER_BATCH, 3, 32, 32)
    assert data.classes == CLASSES

    assert ensure_cifar10(empty_root, url=archive_server.url, md5=archive_server.md5) == folder
    assert ensure_cifar10(empty_root, url=archive_server.url, md5="0" * 32) == folder  # existing: no checksum
    load_cifar10(empty_root, progress=False)
    assert len(archive_server.requests) == 1


def test_download_with_wrong_md5_leaves_nothing_behind(archive_server: ArchiveServer, empty_root: Path) -> None:
    with pytest.raises(DataError, match="checksum mismatch") as excinfo:
        ensure_cifar10(empty_root, url=archive_server.url, md5="0" * 32, progress=False)
    message = str(excinfo.value)
    assert archive_server.url in message and "0" * 32 in message and archive_server.md5 in message
    assert list(empty_root.iterdir()) == []


def test_download_of_missing_url_raises_data_error(archive_server: ArchiveServer, empty_root: Path) -> None:
    url = archive_server.url.replace("cifar-10-python", "nothing-here")
    with pytest.raises(DataError, match="404") as excinfo:
        ensure_cifar10(empty_root, url=url, md5=None, progress=False)
    assert url in str(excinfo.value)
    assert archive_server.requests == ["/nothing-here.tar.gz"]
    assert list(empty_root.iterdir()) == []


def test_unreachable_server_raises_data_error(empty_root: Path) -> None:
    with socket.socket() as bound_not_listening:
        bound_not_listening.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{bound_not_listening.getsockname()[1]}/cifar.tar.gz"
        with pytest.raises(DataError, match=f"cannot download {url}: .*refused"):
            ensure_cifar10(empty_root, url=url, progress=False)
    assert list(empty_root.iterdir()) == []


def test_archive_without_the_batch_folder_is_rejected(tmp_path: Path, empty_root: Path) -> None:
    archive = tmp_path / "other.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("something-else/readme.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(DataError, match="lacks cifar-10-batches-py"):
        ensure_cifar10(empty_root, url=archive.as_uri(), md5=None, progress=False)
    assert list(empty_root.iterdir()) == []


def test_incomplete_folder_is_not_downloaded_over(archive_server: ArchiveServer, empty_root: Path) -> None:
    (empty_root / CIFAR10_FOLDER).mkdir()
    (empty_root / CIFAR10_FOLDER / "batches.meta").write_bytes(b"")
    with pytest.raises(DataError, match="lacks data_batch_1"):
        ensure_cifar10(empty_root, url=archive_server.url, md5=archive_server.md5)
    assert archive_server.requests == []


def test_missing_data_without_download_raises(empty_root: Path) -> None:
    with pytest.raises(DataError, match="download is off"):
        load_cifar10(empty_root, download=False)


# --- restricted unpickling and content validation --------------------------------------------------------


class _Payload:
    def __init__(self, function: Callable[[str], object], argument: str) -> None:
        self.function, self.argument = function, argument

    def __reduce__(self) -> tuple[Callable[[str], object], tuple[str]]:
        return self.function, (self.argument,)


@pytest.mark.parametrize(
    ("function", "make_argument", "global_name"),
    [
        (os.system, lambda marker: f"touch {marker}", f"{os.system.__module__}.system"),
        (eval, lambda marker: f"__import__('pathlib').Path({str(marker)!r}).touch()", "builtins.eval"),
    ],
)
def test_restricted_unpickler_refuses_code_execution(
    tmp_path: Path, function: Callable[[str], object], make_argument: Callable[[Path], str], global_name: str
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    payload = _Payload(function, make_argument(marker))
    path.write_bytes(pickle.dumps({b"data": payload, b"labels": []}))
    with pytest.raises(DataError, match=f"forbidden global {global_name}") as excinfo:
        load_pickle_restricted(path)
    assert str(path) in str(excinfo.value)
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # the same file, unpickled without restrictions, does run the payload
    assert marker.exists()


def test_legacy_numpy_module_names_load_without_warnings(tmp_path: Path) -> None:
    """The official batches name ``numpy.core.multiarray._reconstruct`` (protocol 2, as from Python 2)."""
    batch = {b"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072), b"labels": [3, 7]}
    raw = pickle.dumps(batch, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in raw and b"_codecs\nencode" in raw
    path = tmp_path / "legacy"
    path.write_bytes(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_pickle_restricted(path)
    assert isinstance(loaded, dict)
    np.testing.assert_array_equal(loaded[b"data"], batch[b"data"])
    assert loaded[b"labels"] == [3, 7]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ([1, 2, 3], "not a dict"),
        ({b"data": np.zeros((2, 3072), dtype=np.float32), b"labels": [0, 1]}, "uint8 array"),
        ({b"data": np.zeros((2, 1024), dtype=np.uint8), b"labels": [0, 1]}, "uint8 array"),
        ({b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0]}, "list of 2 ints"),
        ({b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 10]}, "a label is 10"),
        ({b"data": np.zeros((2, 3072), dtype=np.uint8)}, "list of 2 ints"),
    ],
)
def test_malformed_batches_are_rejected(empty_root: Path, content: object, problem: str) -> None:
    _write_tiny_cifar(empty_root / CIFAR10_FOLDER)
    bad = empty_root / CIFAR10_FOLDER / "data_batch_3"
    bad.write_bytes(pickle.dumps(content))
    with pytest.raises(DataError, match=problem) as excinfo:
        load_cifar10(empty_root, download=False)
    assert str(bad) in str(excinfo.value)


def test_corrupt_pickle_and_bad_meta_are_rejected(empty_root: Path) -> None:
    folder = empty_root / CIFAR10_FOLDER
    _write_tiny_cifar(folder)
    (folder / "test_batch").write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(DataError, match="test_batch is not a valid pickle"):
        load_cifar10(empty_root, download=False)
    _write_tiny_cifar(empty_root / "second" / CIFAR10_FOLDER)
    (empty_root / "second" / CIFAR10_FOLDER / "batches.meta").write_bytes(pickle.dumps({b"label_names": []}))
    with pytest.raises(DataError, match="batches.meta is not CIFAR-10 metadata"):
        load_cifar10(empty_root / "second", download=False)


# --- where the data lives --------------------------------------------------------------------------------


def test_resolve_data_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, from_env, explicit = tmp_path / "home", tmp_path / "env", tmp_path / "explicit"
    for d in (home, from_env, explicit):
        d.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("NAS_DATA_DIR", raising=False)
    assert resolve_data_dir() == home / ".cache" / "nas" / "data"
    assert (home / ".cache" / "nas" / "data").is_dir()
    monkeypatch.setenv("NAS_DATA_DIR", "")
    assert resolve_data_dir() == home / ".cache" / "nas" / "data"
    monkeypatch.setenv("NAS_DATA_DIR", str(from_env))
    assert resolve_data_dir() == from_env
    assert resolve_data_dir(explicit) == explicit
    assert resolve_data_dir(str(explicit)) == explicit


def test_resolve_data_dir_refuses_missing_directories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    typo = tmp_path / "dtaa"
    with pytest.raises(DataError, match=f"data directory {typo} is not an existing directory"):
        resolve_data_dir(typo)
    monkeypatch.setenv("NAS_DATA_DIR", str(typo))
    with pytest.raises(DataError, match=f"NAS_DATA_DIR {typo} is not"):
        resolve_data_dir()
    with pytest.raises(DataError, match="empty string"):
        resolve_data_dir("")
    assert list(tmp_path.iterdir()) == []  # nothing created, least of all the default cache


# --- splits and augmentation -----------------------------------------------------------------------------


def test_split_train_val_is_a_seeded_disjoint_partition() -> None:
    train, val = split_train_val(1000, 100, seed=3)
    assert len(train) == 900 and len(val) == 100
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(1000))
    again_train, again_val = split_train_val(1000, 100, seed=3)
    np.testing.assert_array_equal(train, again_train)
    np.testing.assert_array_equal(val, again_val)
    assert set(split_train_val(1000, 100, seed=4)[1].tolist()) != set(val.tolist())
    assert list(train[:50]) != sorted(train[:50])  # a prefix is a random subset, not the first images


@pytest.mark.parametrize(("n", "n_val"), [(10, -1), (10, 10), (10, 11), (0, 0)])
def test_split_train_val_rejects_out_of_range_sizes(n: int, n_val: int) -> None:
    with pytest.raises(UserInputError, match=f"validation size {n_val}"):
        split_train_val(n, n_val, seed=0)


def test_normalize_accepts_numpy_and_torch_uint8_only() -> None:
    pixels = np.full((2, 3, 32, 32), 255, dtype=np.uint8)
    from_numpy = normalize(pixels)
    torch.testing.assert_close(from_numpy, normalize(torch.from_numpy(pixels)))
    expected = (1 - torch.tensor((0.4914, 0.4822, 0.4465))) / torch.tensor((0.2470, 0.2435, 0.2616))
    torch.testing.assert_close(from_numpy[0, :, 0, 0], expected)
    with pytest.raises(TypeError, match="uint8"):
        normalize(pixels.astype(np.float32))


def _crop_candidates(image: torch.Tensor) -> dict[tuple[int, int, bool], torch.Tensor]:
    padded = F.pad(image, (4, 4, 4, 4))
    return {
        (dy, dx, flip): crop.flip(-1) if flip else crop
        for dy in range(9)
        for dx in range(9)
        for flip in (False, True)
        for crop in [padded[:, dy : dy + 32, dx : dx + 32]]
    }


def test_augment_is_a_seeded_random_crop_and_flip() -> None:
    n = 64
    x = torch.arange(1, n * 3 * 32 * 32 + 1, dtype=torch.float32).view(n, 3, 32, 32)  # all distinct, nonzero
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, augment(x, torch.Generator().manual_seed(0)), rtol=0, atol=0)
    assert not torch.equal(out, augment(x, torch.Generator().manual_seed(1)))

    found = []
    for image, augmented in zip(x, out, strict=True):
        matches = [key for key, crop in _crop_candidates(image).items() if torch.equal(crop, augmented)]
        assert len(matches) == 1, "each output is exactly one padded crop of its input, maybe flipped"
        found.append(matches[0])
    offsets = {(dy, dx) for dy, dx, _ in found}
    flips = [flip for _, _, flip in found]
    assert len(offsets) > 20 and 10 < sum(flips) < n - 10
    assert any(dy != 4 for dy, _ in offsets) and any(dx != 4 for _, dx in offsets)
