"""Resumable JSONL results for long CLI runs (evaluation, data generation): one finished record per line.

Each record is written whole, with one ``write`` call of one line followed by ``flush`` and ``fsync``, only
once it is complete; a run killed mid-way leaves at most one partial last line, which :class:`RunStore`
ignores (and drops) when the run is started again. Records are keyed (e.g. by a hash of the task and the
sample index) so a re-run skips what is already done. No verl import.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["RunStore", "read_records", "stable_key"]

logger = logging.getLogger(__name__)


def stable_key(*parts: Any) -> str:
    """A 16-hex-digit key that depends only on ``parts`` (JSON-serialised, sorted keys): the same task gives
    the same key in every run and on every machine."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def read_records(path: str | os.PathLike, *, key_field: str = "key") -> tuple[dict[str, dict[str, Any]], int]:
    """Read the complete records of a JSONL record file without changing it.

    Returns:
        ``(records, complete_end)``: key -> record in first-written order (the last record of a key wins),
        and the length in bytes of the complete lines (a partial last line, left by a killed run, is not
        read).

    Raises:
        ValueError: a complete line is not a JSON object with a string key field (names file and line).
    """
    data = Path(path).read_bytes()
    complete_end = data.rfind(b"\n") + 1
    records: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(data[:complete_end].decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {number}: not valid JSON ({exc})") from None
        if not isinstance(record, dict) or not isinstance(record.get(key_field), str):
            raise ValueError(f"{path}: line {number}: expected a JSON object with a string {key_field!r}")
        records[record[key_field]] = record
    return records, complete_end


class RunStore:
    """An append-only JSONL file of finished records, each with a ``key`` field.

    Args:
        path: the JSONL file; its folder is created. An existing file is read: complete lines are kept,
            a partial last line (a killed run) is cut off.
        key_field: the field holding each record's key (default ``"key"``).

    Raises:
        ValueError: a complete line of an existing file is not a JSON object with the key field (the
            message names the file and the line number).
    """

    def __init__(self, path: str | os.PathLike, *, key_field: str = "key") -> None:
        self.path = Path(path)
        self.key_field = key_field
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._records: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        records, complete_end = read_records(self.path, key_field=self.key_field)
        if complete_end < self.path.stat().st_size:
            logger.warning("%s: dropping a partial last line left by an interrupted run", self.path)
            with open(self.path, "r+b") as fh:
                fh.truncate(complete_end)
        self._records = records

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def records(self) -> Iterator[dict[str, Any]]:
        """The finished records, in the order they were first written (a re-written key keeps its place)."""
        return iter(list(self._records.values()))

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one finished record (must hold the key field) durably, as one line.

        Raises:
            ValueError: the record lacks a string key field.
            TypeError: the record is not JSON-serialisable.
        """
        key = record.get(self.key_field)
        if not isinstance(key, str):
            raise ValueError(f"record needs a string {self.key_field!r} field, got {key!r}")
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
            self._records[key] = dict(record)
