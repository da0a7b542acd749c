"""Evaluation tasks: the hidden goals and references that simulated conversations are run on.

A task comes from either

* a **source dataset**, read with the same flags and loaders as ``process_dataset.py``
  (:func:`collabllm_verl.recipe.dataset.source.load_rows`): a single-turn source such as MATH gives one task
  per row; a CollabLLM multi-turn source gives one task per distinct hidden goal (``single_turn_prompt``);
* a **processed RL parquet** written by ``process_dataset.py`` (e.g. ``rl_validation.parquet``): one task
  per distinct hidden goal of its rows (``extra_info.interaction_kwargs.single_turn_prompt``), with the
  row's ``reward_model.ground_truth`` as reference. The prompts stored in the file are not used: an
  evaluation conversation starts empty and the simulator writes the first turn (docs/evaluation.md).

A row that carries a fixed ``opener`` (``extra_info.opener``: the ambiguity-controlled family,
:mod:`collabllm_verl.recipe.dataset.ambiguity_family`) is the exception: its conversation starts with that
opener as the first user turn, and the simulator takes over from the second.

No verl import.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collabllm_verl.recipe.core.plain import to_plain
from collabllm_verl.recipe.core.run_store import stable_key
from collabllm_verl.recipe.dataset.rows import DatasetFormatError, row_matches
from collabllm_verl.recipe.dataset.source import load_rows, parse_filters

if TYPE_CHECKING:
    from .settings import SourceSelection

__all__ = ["PROCESSED_COLUMNS", "EvalTask", "TaskSource", "is_processed_parquet", "load_tasks", "tasks_from_rl_rows"]

logger = logging.getLogger(__name__)

# Columns that mark a parquet file written by process_dataset.py --dataset_type rl.
PROCESSED_COLUMNS = ("prompt", "reward_model", "extra_info", "data_source")


@dataclass(frozen=True)
class EvalTask:
    """One evaluation task.

    Attributes:
        task_id: 16 hex digits that depend only on the hidden goal and the reference, so the same task has
            the same id in every run (runs are paired on it by ``compare``).
        row: index of the row it came from in the source split (0-based, before filters), for messages.
        goal: the hidden goal given to the user simulator (``single_turn_prompt``).
        task_desc: the task description given to the user simulator.
        ground_truth: the reference (``reward_model.ground_truth``): a solution text, a document, or a
            task-specific structure.
        data_source: the row's ``data_source``.
        ability: ``math``, ``writing``, ``coding`` or ``general`` (chooses the default metrics).
        extra_info: the row's ``extra_info`` (``interaction_kwargs``, ``metadata``, ...), as metrics read it.
    """

    task_id: str
    row: int
    goal: str
    task_desc: str
    ground_truth: Any
    data_source: str
    ability: str
    extra_info: Mapping[str, Any]

    @property
    def opener(self) -> str | None:
        """The fixed first user turn (``extra_info.opener``), or None: the simulator writes the first turn."""
        value = self.extra_info.get("opener")
        return value if isinstance(value, str) and value.strip() else None

    @property
    def interaction_kwargs(self) -> dict[str, str]:
        """What the user simulator's ``start_interaction`` receives."""
        return {"single_turn_prompt": self.goal, "task_desc": self.task_desc}


@dataclass(frozen=True)
class TaskSource:
    """Where the tasks came from (recorded in ``summary.json``).

    Attributes:
        dataset: the ``--dataset`` argument.
        kind: ``"processed_rl_parquet"`` or the source schema (``"single_turn"``, ``"multiturn"``).
        rows_read: rows that passed the filters (before removing repeated goals).
        filters: the ``--filter`` settings.
    """

    dataset: str
    kind: str
    rows_read: int
    filters: Mapping[str, str]


def tasks_from_rl_rows(
    rows: Iterable[tuple[int, Mapping[str, Any]]], *, source: str, task_desc: str | None = None
) -> list[EvalTask]:
    """Build tasks from verl RL rows (``process_dataset.py``'s format), one per distinct hidden goal and
    reference, in row order.

    Args:
        rows: ``(row index, row)`` pairs; a row has ``data_source``, ``reward_model.ground_truth`` and
            ``extra_info`` with ``interaction_kwargs.single_turn_prompt`` (or ``extra_info.single_turn_prompt``).
        source: file or dataset name used in error messages.
        task_desc: replaces the rows' task description when given.

    Raises:
        DatasetFormatError: a row lacks the hidden goal or the ``reward_model`` mapping (names source, row
            and field).
    """
    tasks: list[EvalTask] = []
    seen: set[str] = set()
    for index, raw in rows:
        row = to_plain(dict(raw), json_safe=True)  # numpy values of a parquet row -> JSON-able Python
        extra = row.get("extra_info")
        if not isinstance(extra, Mapping):
            raise DatasetFormatError(source, index, "extra_info", "missing (expected a mapping)")
        kwargs = extra.get("interaction_kwargs") if isinstance(extra.get("interaction_kwargs"), Mapping) else {}
        goal = kwargs.get("single_turn_prompt") or extra.get("single_turn_prompt")
        if not isinstance(goal, str) or not goal.strip():
            raise DatasetFormatError(source, index, "extra_info.interaction_kwargs.single_turn_prompt", "missing")
        reward_model = row.get("reward_model")
        if not isinstance(reward_model, Mapping) or "ground_truth" not in reward_model:
            raise DatasetFormatError(source, index, "reward_model.ground_truth", "missing")
        ground_truth = reward_model["ground_truth"]
        opener = extra.get("opener")  # a fixed opener is part of the task (a clear and an ambiguous row differ)
        task_id = stable_key("eval-task", goal, ground_truth, *([opener] if opener else []))
        if task_id in seen:
            continue
        seen.add(task_id)
        desc = task_desc or str(kwargs.get("task_desc") or "")
        extra["interaction_kwargs"] = {**kwargs, "single_turn_prompt": goal, "task_desc": desc}
        tasks.append(
            EvalTask(
                task_id=task_id,
                row=index,
                goal=goal,
                task_desc=desc,
                ground_truth=ground_truth,
                data_source=str(row.get("data_source") or source),
                ability=str(row.get("ability") or "general"),
                extra_info=extra,
            )
        )
    return tasks


def is_processed_parquet(dataset: str) -> bool:
    """True when ``dataset`` is a parquet file with the columns of ``process_dataset.py``'s RL output."""
    path = Path(dataset)
    if path.suffix != ".parquet" or not path.is_file():
        return False
    import pyarrow.parquet as pq

    names = set(pq.read_schema(path).names)
    return all(column in names for column in PROCESSED_COLUMNS)


def load_tasks(source: SourceSelection, *, num_rows: int | None = None) -> tuple[list[EvalTask], TaskSource]:
    """The tasks named by the source flags, at most ``num_rows`` of them.

    Returns:
        ``(tasks, source)``: tasks in source order, repeated goals removed.

    Raises:
        DatasetFormatError: a row lacks a required field (names file, row and field).
        ValueError: a malformed ``--filter``, or no task left.
        FileNotFoundError: a local source that does not exist.
    """
    if is_processed_parquet(source.dataset):
        from collabllm_verl.recipe.dataset.io import load_source_dataset

        filters = parse_filters(source.filter)
        dataset = load_source_dataset(source.dataset, split=source.split, num_proc=source.num_proc)
        kept = [(i, row) for i, row in enumerate(dataset) if not filters or row_matches(row, filters)]
        if source.max_rows is not None:
            kept = kept[: source.max_rows]
        tasks = tasks_from_rl_rows(kept, source=source.dataset, task_desc=source.task_desc)
        origin = TaskSource(source.dataset, "processed_rl_parquet", len(kept), filters)
    else:
        spec, rows, filters = load_rows(source.as_namespace())
        tasks = tasks_from_rl_rows(((r.rl["extra_info"]["index"], r.rl) for r in rows), source=source.dataset)
        origin = TaskSource(source.dataset, spec.schema, len(rows), dict(filters))
    if num_rows is not None:
        tasks = tasks[:num_rows]
    if not tasks:
        raise ValueError(f"{source.dataset}: no evaluation task left (filters {dict(origin.filters) or 'none'})")
    logger.info("%s: %d tasks from %d rows (%s)", source.dataset, len(tasks), origin.rows_read, origin.kind)
    return tasks, origin
