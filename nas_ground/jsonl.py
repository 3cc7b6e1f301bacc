"""Resumable JSON-lines files: one record a line, appended and flushed, so a killed run loses at most the line
it was writing and a rerun skips the records already there."""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import IO, Any


class JsonLines:
    """Records keyed by ``key`` in the file ``path``.

    >>> with JsonLines("values.jsonl", key="arch") as log:  # doctest: +SKIP
    ...     if "a" not in log.done():
    ...         log.append({"arch": "a", "score": 1.0})
    """

    def __init__(self, path: str | Path, key: str) -> None:
        self.path = Path(path)
        self.key = key
        self._sink: IO[str] | None = None

    def read(self) -> list[dict[str, Any]]:
        """The complete records; a line cut by a kill (not valid JSON, or without the key) is skipped."""
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and self.key in record:
                records.append(record)
        return records

    def done(self) -> set[Any]:
        return {r[self.key] for r in self.read()}

    def append(self, record: dict[str, Any]) -> str:
        """Write ``record`` as one line, flushed; returns the line."""
        if self._sink is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            cut = self.path.exists() and self.path.stat().st_size > 0 and not _ends_with_newline(self.path)
            self._sink = self.path.open("a")
            if cut:
                self._sink.write("\n")  # end the line a kill cut, so this record starts clean
        line = json.dumps(record)
        self._sink.write(line + "\n")
        self._sink.flush()
        return line

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    def __enter__(self) -> JsonLines:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, 2)
        return f.read(1) == b"\n"
