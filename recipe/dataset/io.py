"""Loading source datasets and writing processed outputs atomically.

Loading always goes through Hugging Face ``datasets`` (``load_dataset`` / ``load_from_disk``), so a hub
name, a local dataset folder and a single data file take the same code path. JSON and JSON Lines files are
checked here first (:func:`check_json_file`), so that a malformed line is reported with its file, line and
field instead of the JSON reader's bare message.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from .jsonl import iter_json_lines, key_before
from .rows import JsonLinesError

_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def load_source_dataset(spec: str, split: str = "train", num_proc: int | None = None):
    """Load one split of a dataset given a hub name, a local folder or a data file.

    Args:
        spec: ``owner/name`` on the Hugging Face hub (e.g. ``collabllm/collabllm-multiturn-math-hard``),
            a local folder (either written by ``Dataset.save_to_disk`` or holding data files in a hub
            layout), or one ``.jsonl``/``.json``/``.parquet``/``.csv`` file.
        split: which split to load from a hub dataset or folder (data files always give ``train``).
        num_proc: processes ``datasets`` uses to prepare the source (``None``: one).

    Returns:
        A ``datasets.Dataset``.

    Raises:
        FileNotFoundError: ``spec`` looks like a path and does not exist: it has a data-file suffix,
            starts with ``.`` or ``/``, or has more than one ``/`` (a hub id is ``owner/name``).
        ValueError: an unsupported file suffix, or a missing split.
        JsonLinesError: a ``.jsonl``/``.json`` file (given, or in a folder that ``datasets`` failed to read)
            has a line that is not one JSON object; the message names file, line, row and field.
    """
    import datasets

    path = Path(spec)
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(
                f"{spec}: unsupported file type {path.suffix!r}; use one of {sorted(_FILE_BUILDERS)}"
            )
        if builder == "json":
            check_json_file(path)
        return datasets.load_dataset(builder, data_files=str(path), split="train", num_proc=num_proc)
    if path.is_dir():
        if (path / "dataset_info.json").exists() and (path / "state.json").exists():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                return _pick_split(loaded, split, spec)
            return loaded
        try:
            return datasets.load_dataset(str(path), split=split, num_proc=num_proc)
        except Exception:
            # Name the bad line when a JSON file of the folder is the cause; otherwise datasets' error stands.
            for data_file in sorted(path.rglob("*.json*")):
                hidden = any(part.startswith(".") for part in data_file.relative_to(path).parts)
                if data_file.suffix.lower() in (".json", ".jsonl") and not hidden:
                    check_json_file(data_file)
            raise
    if path.suffix.lower() in _FILE_BUILDERS or spec.startswith((".", "/")) or spec.count("/") > 1:
        raise FileNotFoundError(f"{spec}: no such file or folder")
    # A hub repository id.
    return datasets.load_dataset(spec, split=split, num_proc=num_proc)


def check_json_lines(path: str | os.PathLike) -> int:
    """Check that every non-blank line of a JSON Lines file is one JSON object, reading line by line.

    Returns:
        The number of rows (non-blank lines).

    Raises:
        JsonLinesError: see :func:`~collabllm_verl.recipe.dataset.jsonl.iter_json_lines`.
    """
    return sum(1 for _ in iter_json_lines(path))


def check_json_file(path: str | os.PathLike) -> None:
    """Check a ``.json``/``.jsonl`` file before ``datasets`` reads it.

    A ``.json`` file that holds one JSON document (an array of rows, or an object of columns) passes; one
    that starts with ``[`` but does not parse is reported at the line and column where it breaks; any
    other file must be JSON Lines (:func:`check_json_lines`).

    Raises:
        JsonLinesError: see :func:`check_json_lines`.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        text = path.read_text(encoding="utf-8-sig", errors="replace")
        try:
            json.loads(text)
            return
        except json.JSONDecodeError as exc:
            if text.lstrip().startswith("["):
                line_text = text.splitlines()[exc.lineno - 1] if text.splitlines() else ""
                raise JsonLinesError(
                    str(path),
                    exc.lineno,
                    None,
                    key_before(line_text, exc.colno - 1),
                    f"not valid JSON at column {exc.colno} ({exc.msg}); expected a JSON array of objects",
                ) from None
    check_json_lines(path)


def _pick_split(dataset_dict, split: str, spec: str):
    if split not in dataset_dict:
        raise ValueError(f"{spec}: split {split!r} not found; available: {sorted(dataset_dict)}")
    return dataset_dict[split]


def write_outputs_atomically(
    local_dir: str | os.PathLike,
    tables: Mapping[str, pd.DataFrame],
    previews: Mapping[str, Any],
) -> dict[str, Path]:
    """Write parquet tables and JSON previews into ``local_dir`` all-or-nothing.

    Everything is first written into a temporary folder inside ``local_dir``; only when every file has
    been written are they moved into place with ``os.replace`` (atomic per file on POSIX). If anything
    fails, the temporary folder is removed and no new file is left in ``local_dir``.

    Args:
        local_dir: output folder; created if missing.
        tables: file name (e.g. ``rl_train.parquet``) -> DataFrame written with pyarrow.
        previews: file name (e.g. ``rl_preview.json``) -> JSON-serialisable object.

    Returns:
        File name -> final path.
    """
    out_dir = Path(local_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    try:
        for name, table in tables.items():
            table.to_parquet(staging / name, index=False, engine="pyarrow")
        for name, obj in previews.items():
            with open(staging / name, "w", encoding="utf-8") as f:
                json.dump(obj, f, ensure_ascii=False, indent=2, default=str)
        final = {}
        for name in [*tables, *previews]:
            os.replace(staging / name, out_dir / name)
            final[name] = out_dir / name
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)
