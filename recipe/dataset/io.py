"""Loading source datasets and writing processed outputs atomically.

Loading always goes through Hugging Face ``datasets`` (``load_dataset`` / ``load_from_disk``), so a hub
name, a local dataset folder and a single data file take the same code path.
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
    """
    import datasets

    path = Path(spec)
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(
                f"{spec}: unsupported file type {path.suffix!r}; use one of {sorted(_FILE_BUILDERS)}"
            )
        return datasets.load_dataset(builder, data_files=str(path), split="train", num_proc=num_proc)
    if path.is_dir():
        if (path / "dataset_info.json").exists() and (path / "state.json").exists():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                return _pick_split(loaded, split, spec)
            return loaded
        return datasets.load_dataset(str(path), split=split, num_proc=num_proc)
    if path.suffix.lower() in _FILE_BUILDERS or spec.startswith((".", "/")) or spec.count("/") > 1:
        raise FileNotFoundError(f"{spec}: no such file or folder")
    # A hub repository id.
    return datasets.load_dataset(spec, split=split, num_proc=num_proc)


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
