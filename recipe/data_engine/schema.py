"""Output rows of the data engine and the files it writes.

Full conversations use the schema of the published ``collabllm/collabllm-multiturn-*`` datasets, one row
per candidate reply:

=========================  ===================================================================================
``prompt``                 the conversation before the reply (no system messages), ending with a user turn
``completion``             the candidate reply
``conv_id``                the source row's index (one conversation per source row)
``turn_id``                ``len(prompt)``
``score``                  the candidate's MR (by default the original's aggregation, :mod:`.candidates`)
``single_turn_prompt``     the hidden goal
``single_turn_completion`` the reference answer
``single_turn_metadata``   the source row's other columns
``sessions``               the S forward-sampled conversations of the candidate (full message lists)
``rewards``                metric -> one raw value per conversation (null where the metric failed), and
                           ``MR``: per conversation the unclamped weighted sum of the metrics
=========================  ===================================================================================

Openers (``--mode openers``) use the same columns up to ``single_turn_metadata``, with ``prompt`` = the
opener, ``turn_id`` 1 and a null ``completion`` and ``score``: ``process_dataset.py --dataset_type rl``
turns them into RL prompts.

Files in the output folder: ``train.parquet`` (the rows), :data:`MANIFEST` (settings and the run
summary; ``process_dataset.py`` reads the task description from it), :data:`RECORDS` (one finished task
per line, for resuming) and :data:`FAILURES` (tasks that failed in the last run).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from collabllm_verl.recipe.dataset.io import write_outputs_atomically
from collabllm_verl.recipe.dataset.source import BUILD_MANIFEST

from .conversation import ConversationRecord
from .task import EngineTask

__all__ = [
    "DATA_FILE",
    "FAILURES",
    "MANIFEST",
    "MULTITURN_COLUMNS",
    "OPENER_COLUMNS",
    "RECORDS",
    "conversation_rows",
    "opener_row",
    "write_dataset",
    "write_failures",
]

logger = logging.getLogger(__name__)

DATA_FILE = "train.parquet"
MANIFEST = BUILD_MANIFEST
RECORDS = "records.jsonl"
FAILURES = "failures.jsonl"
OPENER_COLUMNS = (
    "prompt",
    "completion",
    "conv_id",
    "turn_id",
    "score",
    "single_turn_prompt",
    "single_turn_completion",
    "single_turn_metadata",
)
MULTITURN_COLUMNS = (*OPENER_COLUMNS, "sessions", "rewards")


def _base_row(task: EngineTask, prompt: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "conv_id": task.conv_id,
        "turn_id": len(prompt),
        "single_turn_prompt": task.goal,
        "single_turn_completion": task.reference,
        "single_turn_metadata": task.metadata,
    }


def opener_row(task: EngineTask, opener: str) -> dict[str, Any]:
    """The row of one opener (columns :data:`OPENER_COLUMNS`; ``completion`` and ``score`` are None)."""
    row = _base_row(task, [{"role": "user", "content": opener}])
    return {column: row.get(column) for column in OPENER_COLUMNS}


def conversation_rows(task: EngineTask, record: ConversationRecord) -> list[dict[str, Any]]:
    """One row per candidate of every turn (columns :data:`MULTITURN_COLUMNS`), turns in order, candidates
    in proposal order."""
    rows = []
    for turn in record.turns:
        for candidate in turn.candidates:
            row = _base_row(task, turn.prompt)
            row.update(
                completion=candidate.completion,
                score=candidate.score,
                sessions=candidate.sessions,
                rewards={**candidate.metric_values, "MR": candidate.session_mr},
            )
            rows.append({column: row[column] for column in MULTITURN_COLUMNS})
    return rows


def _frame(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    """The rows as a DataFrame that pyarrow can write; ``single_turn_metadata`` whose values do not share
    one type across rows is stored as a JSON string instead of a struct (with a warning)."""
    frame = pd.DataFrame(list(rows), columns=list(columns))
    try:
        pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        logger.warning("single_turn_metadata stored as JSON strings: its fields differ in type across rows (%s)", exc)
        metadata = frame["single_turn_metadata"]
        frame["single_turn_metadata"] = [json.dumps(m, ensure_ascii=False, default=str) for m in metadata]
    return frame


def write_dataset(
    local_dir: str | os.PathLike, rows: Sequence[Mapping[str, Any]], *, mode: str, manifest: Mapping[str, Any]
) -> dict[str, Path]:
    """Write ``train.parquet`` and the manifest into ``local_dir``, both or neither.

    Args:
        local_dir: the output folder.
        rows: :func:`opener_row` or :func:`conversation_rows` rows (at least one).
        mode: ``"openers"`` or ``"conversations"`` (selects the columns).
        manifest: JSON-serialisable settings and summary.

    Returns:
        File name -> path.

    Raises:
        ValueError: no rows.
    """
    if not rows:
        raise ValueError("no rows to write")
    columns = OPENER_COLUMNS if mode == "openers" else MULTITURN_COLUMNS
    return write_outputs_atomically(local_dir, {DATA_FILE: _frame(rows, columns)}, {MANIFEST: dict(manifest)})


def write_failures(local_dir: str | os.PathLike, failures: Iterable[Mapping[str, Any]]) -> Path | None:
    """Replace :data:`FAILURES` with ``failures`` (one JSON object per line, written atomically); remove the
    file when there are none. Returns its path, or None."""
    path = Path(local_dir) / FAILURES
    lines = [json.dumps(dict(f), ensure_ascii=False) + "\n" for f in failures]
    if not lines:
        path.unlink(missing_ok=True)
        return None
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, path)
    return path
