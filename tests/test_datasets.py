"""Tests of nas_ground.datasets: folders of PNG images, .npz files and CIFAR-100 written here, the decoded-image
cache, and a one-line DataError for every kind of bad data."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nas_ground import datasets
from nas_ground.data import DataError, channel_stats, load_cifar10
from nas_ground.datasets import DATASET_FORMS, load_image_data

CLASSES = ("dog", "cat", "emu", "bird", "ant")  # written in this order; loaded sorted


@pytest.fixture(autouse=True)
def _fresh_process_cache() -> None:
    """Each test sees no data set cached in memory by another."""
    for cached in (datasets._load_folder, datasets._load_npz, datasets._load_cifar100):
        cached.cache_clear()


def _write_class_folders(
    root: Path, classes: tuple[str, ...] = CLASSES, per_class: int = 12, side: int = 48, seed: int = 0
) -> dict[bytes, str]:
    """Random RGB PNG images in ``root/<class>/NNN.png``; returns each image's (3, H, W) bytes -> class name."""
    rng = np.random.default_rng(seed)
    images = {}
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
            images[pixels.transpose(2, 0, 1).tobytes()] = name
    return images


def _load(spec: str, tmp_path: Path, **kwargs: object) -> datasets.ImageData:
    return load_image_data(spec, cache_dir=tmp_path / "cache", progress=False, **kwargs)  # type: ignore[arg-type]


def _labelled_rows(x: np.ndarray, y: np.ndarray, classes: tuple[str, ...]) -> list[tuple[bytes, str]]:
    return [(row.tobytes(), classes[label]) for row, label in zip(x, y, strict=True)]


def _error(call: Callable[[], object], *fragments: str) -> str:
    """The DataError message of ``call``, checked to be one line holding every fragment."""
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return message


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


# --- folders -----------------------------------------------------------------------------------------------


def test_a_folder_loads_every_image_with_its_class_and_holds_out_a_tenth(tmp_path: Path) -> None:
    images = _write_class_folders(tmp_path / "pets")
    data = _load(f"folder:{tmp_path / 'pets'}", tmp_path)
    assert data.classes == tuple(sorted(CLASSES)) and data.num_classes == 5
    assert data.name == f"folder:{tmp_path / 'pets'}"
    assert data.train_x.shape == (55, 3, 48, 48) and data.train_x.dtype == np.uint8
    assert data.test_x.shape == (5, 3, 48, 48) and data.test_y.tolist() == [0, 1, 2, 3, 4]
    assert data.train_y.dtype == np.int64 and data.given_val == 0
    rows = _labelled_rows(data.train_x, data.train_y, data.classes) + _labelled_rows(
        data.test_x, data.test_y, data.classes
    )
    assert sorted(rows) == sorted(images.items())  # every image once, under its folder's class
    for array in (data.train_x, data.train_y, data.test_x, data.test_y):
        assert not array.flags.writeable


def test_statistics_cover_the_training_images_only(tmp_path: Path) -> None:
    _write_class_folders(tmp_path / "pets" / "train", CLASSES[:2], per_class=10)
    for name in CLASSES[:2]:
        (tmp_path / "pets" / "val" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (48, 48), (255, 255, 255)).save(tmp_path / "pets" / "val" / name / f"{i}.png")
    data = _load(f"folder:{tmp_path / 'pets'}", tmp_path)
    assert data.given_val == 6 and len(data.train_x) == 18 + 6
    assert (data.train_x[-6:] == 255).all() and data.train_y[-6:].tolist() == [0, 0, 0, 1, 1, 1]
    train_part = data.train_x[:-6].astype(np.float64) / 255
    np.testing.assert_allclose(data.mean, train_part.mean(axis=(0, 2, 3)), atol=1e-9)
    np.testing.assert_allclose(data.std, train_part.std(axis=(0, 2, 3)), atol=1e-6)
    assert data.mean[0] < channel_stats(data.train_x)[0][0]  # the white val images would raise it


def test_val_and_test_beside_the_folder_are_its_validation_and_test_images(tmp_path: Path) -> None:
    train = _write_class_folders(tmp_path / "pets", CLASSES[:3], per_class=6, seed=1)
    val = _write_class_folders(tmp_path / "val", CLASSES[:3], per_class=2, seed=2)
    test = _write_class_folders(tmp_path / "test", CLASSES[:3], per_class=3, seed=3)
    data = _load(f"folder:{tmp_path / 'pets'}", tmp_path)
    assert data.given_val == 6 and len(data.train_x) == 18 + 6
    n = len(data.train_x) - data.given_val
    assert sorted(_labelled_rows(data.train_x[:n], data.train_y[:n], data.classes)) == sorted(train.items())
    assert sorted(_labelled_rows(data.train_x[n:], data.train_y[n:], data.classes)) == sorted(val.items())
    assert sorted(_labelled_rows(data.test_x, data.test_y, data.classes)) == sorted(test.items())


def test_train_val_test_inside_the_folder_are_its_splits(tmp_path: Path) -> None:
    _write_class_folders(tmp_path / "pets" / "train", CLASSES[:2], per_class=7, seed=1)
    _write_class_folders(tmp_path / "pets" / "val", CLASSES[:2], per_class=2, seed=2)
    test = _write_class_folders(tmp_path / "pets" / "test", CLASSES[:2], per_class=4, seed=3)
    _write_class_folders(tmp_path / "val", ("x", "y", "z"), per_class=1, seed=4)  # beside the folder: not used
    data = _load(f"folder:{tmp_path / 'pets'}", tmp_path)
    assert data.classes == ("cat", "dog") and data.name == f"folder:{tmp_path / 'pets'}"
    assert (len(data.train_x), data.given_val, len(data.test_x)) == (14 + 4, 4, 8)
    assert sorted(_labelled_rows(data.test_x, data.test_y, data.classes)) == sorted(test.items())


def test_a_folder_named_val_is_not_its_own_validation_folder(tmp_path: Path) -> None:
    _write_class_folders(tmp_path / "val", CLASSES[:2], per_class=10)
    data = _load(f"folder:{tmp_path / 'val'}", tmp_path)
    assert data.given_val == 0 and (len(data.train_x), len(data.test_x)) == (18, 2)


def test_a_relative_path_is_named_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_class_folders(tmp_path / "pets", CLASSES[:2], per_class=3)
    monkeypatch.chdir(tmp_path)
    assert _load("folder:pets", tmp_path).name == f"folder:{tmp_path / 'pets'}"


def test_jpeg_and_png_in_any_case_count_and_other_files_do_not(tmp_path: Path) -> None:
    _write_class_folders(tmp_path / "pets", CLASSES[:2], per_class=9)
    Image.new("RGB", (48, 48), (10, 200, 30)).save(tmp_path / "pets" / "cat" / "big.JPG")
    (tmp_path / "pets" / "cat" / "deep").mkdir()
    Image.new("RGB", (48, 48), (0, 0, 0)).save(tmp_path / "pets" / "cat" / "deep" / "x.Jpeg", format="JPEG")
    (tmp_path / "pets" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "pets" / "cat" / "._000.png").write_bytes(b"resource fork, not a PNG")
    (tmp_path / "pets" / ".thumbnails").mkdir()  # a hidden folder is no class
    data = _load(f"folder:{tmp_path / 'pets'}", tmp_path)
    assert data.classes == ("cat", "dog")
    counts = np.bincount(np.concatenate([data.train_y, data.test_y])).tolist()
    assert counts == [11, 9]


def test_the_hold_out_is_seeded_and_one_tenth_of_each_class(tmp_path: Path) -> None:
    _write_class_folders(tmp_path / "pets", CLASSES[:3], per_class=20)
    first = _load(f"folder:{tmp_path / 'pets'}", tmp_path)
    datasets._load_folder.cache_clear()
    again = load_image_data(f"folder:{tmp_path / 'pets'}", cache_dir=tmp_path / "other-cache", progress=False)
    assert again is not first
    np.testing.assert_array_equal(first.test_x, again.test_x)
    np.testing.assert_array_equal(first.train_x, again.train_x)
    assert first.test_y.tolist() == [0, 0, 1, 1, 2, 2]
    held = {row.tobytes() for row in first.test_x}
    assert not held & {row.tobytes() for row in first.train_x}


def test_images_of_other_sizes_are_resized_to_the_most_common_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    expected = []
    for name in CLASSES[:2]:
        (tmp_path / "pets" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(
                tmp_path / "pets" / name / f"{i}.png"
            )
        big = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
        big.save(tmp_path / "pets" / name / "big.png")
        expected.append(np.asarray(big.resize((40, 30), Image.Resampling.BILINEAR)).transpose(2, 0, 1).tobytes())
    data = _load(f"folder:{tmp_path / 'pets'}", tmp_path)
    assert data.input_shape == (3, 30, 40)
    rows = {row.tobytes() for row in np.concatenate([data.train_x, data.test_x])}
    assert set(expected) <= rows and len(rows) == 8


# --- the decoded-image cache -------------------------------------------------------------------------------


def test_a_second_load_reads_the_cache_and_not_the_images(tmp_path: Path) -> None:
    _write_class_folders(tmp_path / "pets", CLASSES[:3], per_class=10)
    before = _files(tmp_path / "pets")
    first = _load(f"folder:{tmp_path / 'pets'}", tmp_path)
    assert _files(tmp_path / "pets") == before  # nothing written into the data folder
    for path in (tmp_path / "pets").rglob("*.png"):  # unreadable now, with the same size and mtime
        stat = path.stat()
        path.write_bytes(b"\0" * stat.st_size)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    datasets._load_folder.cache_clear()
    second = _load(f"folder:{tmp_path / 'pets'}", tmp_path)
    assert second is not first and isinstance(second.train_x, np.memmap)
    assert not second.train_x.flags.writeable
    for key in ("train_x", "train_y", "test_x", "test_y"):
        np.testing.assert_array_equal(getattr(first, key), getattr(second, key))
    assert (second.classes, second.mean, second.std, second.name) == (first.classes, first.mean, first.std, first.name)


def test_a_changed_or_added_file_makes_a_new_cache_entry(tmp_path: Path) -> None:
    _write_class_folders(tmp_path / "pets", CLASSES[:2], per_class=10)
    spec = f"folder:{tmp_path / 'pets'}"
    first = _load(spec, tmp_path)
    changed = tmp_path / "pets" / "cat" / "000.png"
    Image.new("RGB", (48, 48), (1, 2, 3)).save(changed)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = _load(spec, tmp_path)
    new_row = np.full((3, 48, 48), [[[1]], [[2]], [[3]]], dtype=np.uint8).tobytes()
    assert new_row in {row.tobytes() for row in np.concatenate([second.train_x, second.test_x])}
    assert new_row not in {row.tobytes() for row in np.concatenate([first.train_x, first.test_x])}
    Image.new("RGB", (48, 48), (9, 9, 9)).save(tmp_path / "pets" / "dog" / "new.png")
    third = _load(spec, tmp_path)
    assert len(third.train_x) + len(third.test_x) == 21
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 3


@pytest.mark.parametrize(
    "damage", ["truncate train_x.npy", "garble meta.json", "remove test_y.npy", "remove meta.json"]
)
def test_a_corrupt_cache_entry_is_rebuilt(tmp_path: Path, damage: str) -> None:
    _write_class_folders(tmp_path / "pets", CLASSES[:2], per_class=10)
    spec = f"folder:{tmp_path / 'pets'}"
    first = _load(spec, tmp_path)
    (entry,) = (tmp_path / "cache").iterdir()
    sizes = {p.name: p.stat().st_size for p in entry.iterdir()}
    if damage == "truncate train_x.npy":
        with (entry / "train_x.npy").open("r+b") as f:
            f.truncate(sizes["train_x.npy"] // 2)
    elif damage == "garble meta.json":
        (entry / "meta.json").write_text("{not json")
    else:
        (entry / damage.removeprefix("remove ")).unlink()
    datasets._load_folder.cache_clear()
    second = _load(spec, tmp_path)
    np.testing.assert_array_equal(first.train_x, second.train_x)
    assert not isinstance(second.train_x, np.memmap)  # decoded again, not read from the damaged entry
    assert {p.name: p.stat().st_size for p in entry.iterdir()} == sizes
    datasets._load_folder.cache_clear()
    assert isinstance(_load(spec, tmp_path).train_x, np.memmap)


def test_the_cache_lives_under_nas_cache_dir_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_class_folders(tmp_path / "pets", CLASSES[:2], per_class=3)
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "nas-cache"))
    load_image_data(f"folder:{tmp_path / 'pets'}", progress=False)
    (entry,) = (tmp_path / "nas-cache" / "datasets").iterdir()
    assert entry.name.startswith("folder-") and (entry / "meta.json").is_file()


def test_a_cache_that_cannot_be_written_is_skipped(tmp_path: Path) -> None:
    _write_class_folders(tmp_path / "pets", CLASSES[:2], per_class=5)
    blocker = tmp_path / "cache-file"
    blocker.write_text("a file where the cache folder would go")
    data = load_image_data(f"folder:{tmp_path / 'pets'}", cache_dir=blocker, progress=False)
    assert len(data.train_x) + len(data.test_x) == 10 and blocker.read_text().startswith("a file")


# --- bad folders -------------------------------------------------------------------------------------------


def _empty_class(root: Path) -> tuple[Path, str]:
    _write_class_folders(root / "pets", CLASSES[:2], per_class=2)
    (root / "pets" / "cow").mkdir()
    (root / "pets" / "cow" / "readme.txt").write_text("no images")
    return root / "pets", f"class folder {root / 'pets' / 'cow'} holds no JPEG/PNG images"


def _one_class(root: Path) -> tuple[Path, str]:
    _write_class_folders(root / "pets", ("cat",), per_class=3)
    return root / "pets", f"{root / 'pets'} has 1 class folder (cat); a classifier needs at least 2"


def _missing(root: Path) -> tuple[Path, str]:
    return root / "nowhere", f"image folder {root / 'nowhere'} does not exist"


def _a_file(root: Path) -> tuple[Path, str]:
    (root / "pets.png").write_bytes(b"x")
    return root / "pets.png", f"image folder {root / 'pets.png'} is not a directory"


def _no_classes(root: Path) -> tuple[Path, str]:
    (root / "pets").mkdir()
    Image.new("RGB", (8, 8)).save(root / "pets" / "loose.png")
    return root / "pets", f"image folder {root / 'pets'} has no class sub-folders"


def _random_bytes(root: Path) -> tuple[Path, str]:
    _write_class_folders(root / "pets", CLASSES[:2], per_class=3)
    bad = root / "pets" / "cat" / "003.png"
    bad.write_bytes(np.random.default_rng(0).bytes(300))
    return root / "pets", f"cannot read image {bad}: "


def _truncated(root: Path) -> tuple[Path, str]:
    _write_class_folders(root / "pets", CLASSES[:2], per_class=3)
    bad = root / "pets" / "dog" / "001.png"
    bad.write_bytes(bad.read_bytes()[:200])
    return root / "pets", f"cannot read image {bad}: "


def _val_lacks_a_class(root: Path) -> tuple[Path, str]:
    _write_class_folders(root / "pets" / "train", ("cat", "dog", "emu"), per_class=2)
    _write_class_folders(root / "pets" / "val", ("cat", "emu"), per_class=1)
    return root / "pets", f"{root / 'pets' / 'val'} lacks the class folder 'dog'"


def _test_has_another_class(root: Path) -> tuple[Path, str]:
    _write_class_folders(root / "pets", ("cat", "dog"), per_class=2)
    _write_class_folders(root / "test", ("cat", "dog", "yak"), per_class=1)
    return root / "pets", f"{root / 'test'} has the class folder 'yak'"


@pytest.mark.parametrize(
    "make",
    [
        _empty_class,
        _one_class,
        _missing,
        _a_file,
        _no_classes,
        _random_bytes,
        _truncated,
        _val_lacks_a_class,
        _test_has_another_class,
    ],
)
def test_a_bad_folder_raises_one_line_naming_the_problem(
    tmp_path: Path, make: Callable[[Path], tuple[Path, str]]
) -> None:
    (tmp_path / "data").mkdir()
    path, fragment = make(tmp_path / "data")
    _error(lambda: _load(f"folder:{path}", tmp_path), fragment)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing half cached


# --- .npz files --------------------------------------------------------------------------------------------


def _nchw(n: int, side: int = 6, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, channels, side, side), dtype=np.uint8)


@pytest.mark.parametrize(
    ("layout", "to_file"),
    [
        ("NCHW", lambda x: x),
        ("NHWC", lambda x: x.transpose(0, 2, 3, 1)),
        ("NHW gray", lambda x: x[:, 0]),
        ("NHWC gray", lambda x: x[:, :1].transpose(0, 2, 3, 1)),
        ("NCHW gray", lambda x: x[:, :1]),
    ],
)
def test_npz_layouts_become_rgb_nchw(tmp_path: Path, layout: str, to_file: Callable[[np.ndarray], np.ndarray]) -> None:
    x, x_test = _nchw(20), _nchw(4, seed=1)
    if "gray" in layout:
        x, x_test = np.repeat(x[:, :1], 3, axis=1), np.repeat(x_test[:, :1], 3, axis=1)
    y, y_test = np.arange(20) % 4, np.array([3, 2, 1, 0], dtype=np.int32)
    np.savez(tmp_path / "d.npz", x=to_file(x), y=y, x_test=to_file(x_test), y_test=y_test)
    data = _load(f"npz:{tmp_path / 'd.npz'}", tmp_path)
    np.testing.assert_array_equal(data.train_x, x)
    np.testing.assert_array_equal(data.test_x, x_test)
    assert data.test_y.dtype == np.int64 and data.test_y.tolist() == [3, 2, 1, 0]
    assert data.classes == ("0", "1", "2", "3") and data.name == f"npz:{tmp_path / 'd.npz'}"
    assert not data.train_x.flags.writeable


def test_npz_images_of_3x3_pixels_are_read_as_nchw(tmp_path: Path) -> None:
    x = _nchw(10, side=3)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(10) % 2, x_test=x[:2], y_test=[0, 1])
    np.testing.assert_array_equal(_load(f"npz:{tmp_path / 'd.npz'}", tmp_path).train_x, x)


def test_npz_validation_images_classes_and_the_seeded_hold_out(tmp_path: Path) -> None:
    x, y = _nchw(30), np.repeat([0, 1, 2], 10)
    x_val = np.zeros((4, 6, 6, 3), dtype=np.uint8)  # NHWC like x below
    names = np.array(["red", "green", "blue"])
    path = tmp_path / "d.npz"
    np.savez(path, x=x.transpose(0, 2, 3, 1), y=y, x_val=x_val, y_val=[2, 2, 1, 0], classes=names)
    data = _load(f"npz:{path}", tmp_path)
    assert data.classes == ("red", "green", "blue")
    assert data.given_val == 4 and len(data.train_x) == 27 + 4 and (data.train_x[-4:] == 0).all()
    assert data.train_y[-4:].tolist() == [2, 2, 1, 0] and data.test_y.tolist() == [0, 1, 2]
    n = len(data.train_x) - 4
    np.testing.assert_allclose(data.mean, (data.train_x[:n] / 255).mean(axis=(0, 2, 3)), atol=1e-9)
    all_rows = sorted(row.tobytes() for row in np.concatenate([data.train_x[:n], data.test_x]))
    assert all_rows == sorted(row.tobytes() for row in x)
    datasets._load_npz.cache_clear()
    np.testing.assert_array_equal(_load(f"npz:{path}", tmp_path).test_x, data.test_x)


def _x(n: int = 10) -> np.ndarray:
    return _nchw(n)


def _y(n: int = 10) -> np.ndarray:
    return np.arange(n) % 2


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"y": _y()}, "lacks the array 'x'"),
        ({"x": _x()}, "lacks the array 'y'"),
        ({"x": _x().astype(np.float32), "y": _y()}, "x in {file} has dtype float32; images must be uint8"),
        ({"x": _x(), "y": _y().astype(np.float64)}, "y in {file} has dtype float64; labels must be integers"),
        ({"x": _x(100), "y": _y(99)}, "x has 100 images but y has 99 labels in {file}"),
        ({"x": _x(), "y": np.array([0, 1] * 4 + [-1, 1])}, "y in {file} has the label -1"),
        ({"x": _x(), "y": np.zeros(10, dtype=np.int64)}, "{file} has 1 class; a classifier needs at least 2"),
        ({"x": _x(), "y": np.array([0] * 9 + [1000])}, "y in {file} has the label 1000 for 10 images"),
        ({"x": _x()[:, :, 0, 0], "y": _y()}, "x in {file} has shape (10, 3)"),
        ({"x": np.zeros((10, 5, 6, 7), np.uint8), "y": _y()}, "x in {file} has shape (10, 5, 6, 7)"),
        ({"x": _x(), "y": _y().reshape(5, 2)}, "y in {file} has shape (5, 2)"),
        ({"x": _x(), "y": _y(), "x_val": _x(2)}, "{file} has x_val but no y_val"),
        (
            {"x": _x(), "y": _y(), "x_test": _x(2), "y_test": [0, 7]},
            "y_test in {file} has the label 7, outside the 0..1",
        ),
        ({"x": _x(), "y": _y(), "x_test": _x(2), "y_test": [0, -3]}, "y_test in {file} has the label -3"),
        ({"x": _x(), "y": _y(), "x_test": _x(2)[:, :, :4], "y_test": [0, 1]}, "x_test in {file} has images of shape"),
        ({"x": _x(), "y": _y(), "x_val": _x(2)[:, 0], "y_val": [0, 1]}, "x_val in {file} has shape (2, 6, 6)"),
        ({"x": _x(), "y": _y(), "classes": np.array(["a"])}, "y in {file} has the label 1, but classes names only 1"),
        ({"x": _x(), "y": _y(), "classes": np.arange(2)}, "classes in {file} has dtype int64"),
        ({"x": _x(1), "y": [1], "classes": np.array(["a", "b"])}, "x in {file} has 1 image; without x_test"),
    ],
)
def test_a_bad_npz_array_raises_one_line_naming_the_file(
    tmp_path: Path, arrays: dict[str, np.ndarray], fragment: str
) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    _error(lambda: _load(f"npz:{path}", tmp_path), fragment.format(file=path), str(path))


@pytest.mark.parametrize("kind", ["random bytes", "truncated", "one .npy array", "missing", "a folder"])
def test_a_file_that_is_not_an_npz_raises_one_line_naming_it(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "bad.npz"
    if kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(1000))
    elif kind == "truncated":
        np.savez_compressed(path, x=_x(200), y=_y(200))
        path.write_bytes(path.read_bytes()[:3000])
    elif kind == "one .npy array":
        with path.open("wb") as f:
            np.save(f, _x())
    elif kind == "a folder":
        path.mkdir()
    fragment = {
        "missing": "does not exist",
        "a folder": "is not a file",
        "one .npy array": "holds a single array (np.save)",
    }
    _error(lambda: _load(f"npz:{path}", tmp_path), str(path), fragment.get(kind, "is not a valid .npz file"))


# --- CIFAR-100, CIFAR-10 and the names -------------------------------------------------------------------


def _write_cifar100(root: Path, n_train: int = 300, n_test: int = 100) -> dict[str, tuple[np.ndarray, list[int]]]:
    """The official python layout with a few random images, pickled (protocol 2, byte-string keys) as the real
    files are."""
    folder = root / datasets.CIFAR100_FOLDER
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 100, n)]
        batch = {b"data": data, b"fine_labels": labels, b"coarse_labels": [v // 5 for v in labels]}
        (folder / split).write_bytes(pickle.dumps(batch, protocol=2))
        written[split] = (data, labels)
    meta = {b"fine_label_names": [f"class{i:02d}".encode() for i in range(100)], b"coarse_label_names": []}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return written


def test_cifar100_loads_from_the_official_layout(tmp_path: Path) -> None:
    written = _write_cifar100(tmp_path)
    data = load_image_data("cifar100", tmp_path, download=False)
    assert data.name == "cifar100" and data.classes[:2] == ("class00", "class01") and data.num_classes == 100
    assert data.train_x.shape == (300, 3, 32, 32) and data.test_x.shape == (100, 3, 32, 32)
    row = written["train"][0][7]
    np.testing.assert_array_equal(data.train_x[7, 1], row[1024:2048].reshape(32, 32))  # the green plane
    assert data.train_y.tolist() == written["train"][1] and data.test_y.tolist() == written["test"][1]
    assert data.mean == channel_stats(data.train_x)[0] and not data.test_x.flags.writeable
    assert load_image_data("cifar100", tmp_path, download=False) is data


def test_cifar100_without_files_and_download_off_names_the_folder(tmp_path: Path) -> None:
    _error(
        lambda: load_image_data("cifar100", tmp_path, download=False),
        f"CIFAR-100 is not in {tmp_path / datasets.CIFAR100_FOLDER} (missing train, test, meta)",
    )


def test_an_incomplete_cifar100_folder_is_refused_before_any_download(tmp_path: Path) -> None:
    _write_cifar100(tmp_path)
    (tmp_path / datasets.CIFAR100_FOLDER / "meta").unlink()
    _error(lambda: load_image_data("cifar100", tmp_path, progress=False), "exists but lacks meta")


def test_a_cifar100_label_out_of_range_is_named(tmp_path: Path) -> None:
    _write_cifar100(tmp_path)
    path = tmp_path / datasets.CIFAR100_FOLDER / "test"
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [3, 100]}
    path.write_bytes(pickle.dumps(batch, protocol=2))
    _error(lambda: load_image_data("cifar100", tmp_path, download=False), str(path), "a fine label is 100")


def test_cifar10_is_load_cifar10(data_dir: Path) -> None:
    assert load_image_data("cifar10", data_dir, download=False) is load_cifar10(data_dir, download=False)


@pytest.mark.parametrize("spec", ["imagenet", "CIFAR10", "cifar10:x", "zip:/data/a.zip", ""])
def test_an_unknown_data_set_lists_the_valid_forms(spec: str, tmp_path: Path) -> None:
    _error(lambda: _load(spec, tmp_path), repr(spec), DATASET_FORMS)


@pytest.mark.parametrize("spec", ["folder:", "npz:  "])
def test_a_form_without_a_path_is_refused(spec: str, tmp_path: Path) -> None:
    _error(lambda: _load(spec, tmp_path), repr(spec), "names no path")
