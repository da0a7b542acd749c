"""Reading JSON Lines files line by line, with errors that name the file, line, row and field (no verl import).

The one reader of the project's own JSONL files (rows files of a task family, conversation dumps, step
summaries); :func:`~collabllm_verl.recipe.dataset.io.check_json_lines` uses it to check a source file before
``datasets`` reads it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

from .rows import JsonLinesError

__all__ = ["iter_json_lines", "key_before", "read_json_lines"]

_KEY_BEFORE = re.compile(r'"((?:[^"\\]|\\.)*)"\s*:')


def key_before(text: str, position: int) -> str | None:
    """The last object key that starts before ``position`` in ``text`` (the field being read there)."""
    keys = _KEY_BEFORE.findall(text[:position])
    if not keys:
        return None
    try:
        return json.loads(f'"{keys[-1]}"')
    except json.JSONDecodeError:
        return keys[-1]


def iter_json_lines(path: str | os.PathLike) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """The JSON objects of a JSON Lines file, read line by line: ``(line, row, object)`` per non-blank line.

    Args:
        path: the file (UTF-8, an optional byte-order mark at its start).

    Yields:
        The 1-based line number, the 0-based row index (blank lines not counted) and the object.

    Raises:
        JsonLinesError: the first line that is not UTF-8, not valid JSON, or valid JSON but not an object
            (``null``, a list, a number, ...). The message names the file, the 1-based line, the 0-based
            row, the field being read where the JSON broke (when there is one) and what was expected.
    """
    rows = 0
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise JsonLinesError(
                    str(path), number, rows, None, f"not UTF-8 text at byte {exc.start + 1}; expected UTF-8 JSON"
                ) from None
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise JsonLinesError(
                    str(path),
                    number,
                    rows,
                    key_before(line, exc.pos),
                    f"not valid JSON at column {exc.colno} ({exc.msg}); expected one JSON object per line",
                ) from None
            if not isinstance(value, dict):
                kind = "null" if value is None else type(value).__name__
                raise JsonLinesError(str(path), number, rows, None, f"expected a JSON object, got {kind}")
            yield number, rows, value
            rows += 1


def read_json_lines(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every object of a JSON Lines file, in file order (errors: see :func:`iter_json_lines`)."""
    return [value for _, _, value in iter_json_lines(path)]
