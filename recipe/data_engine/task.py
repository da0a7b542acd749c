"""One single-turn source row as a data-engine task: the hidden goal, the reference and the resume key."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from collabllm_verl.recipe.core.plain import to_plain
from collabllm_verl.recipe.core.run_store import stable_key
from collabllm_verl.recipe.dataset.rows import ConvertedRow, SourceSpec

__all__ = ["EngineTask", "TaskFailure", "tasks_from_rows"]


class TaskFailure(RuntimeError):
    """A task can not produce trustworthy rows (a simulator failure, a metric that failed on every
    forward-sampled conversation of a candidate, ...). The runner retries the task, then reports it; no row
    of it is written."""


@dataclass(frozen=True)
class EngineTask:
    """A single-turn task to turn into a multi-turn conversation.

    Attributes:
        key: resume key, a hash of the mode, the hidden goal and the reference (:func:`stable_key`).
        conv_id: the source row's 0-based index in its split (before filters): the ``conv_id`` of its rows.
        goal: the hidden goal given to the user simulator (``single_turn_prompt``).
        reference: the reference answer (``single_turn_completion``; the metrics' ground truth).
        metadata: the source row's other columns (``single_turn_metadata``).
        task_desc: the task description given to the user simulator.
        data_source: the source's ``data_source`` (passed to the metrics).
        extra_info: what the metrics read (the RL row's ``extra_info`` plus ``single_turn_metadata``).
    """

    key: str
    conv_id: int
    goal: str
    reference: str
    metadata: dict[str, Any]
    task_desc: str
    data_source: str
    extra_info: dict[str, Any] = field(default_factory=dict)

    @property
    def interaction_kwargs(self) -> dict[str, str]:
        """The user simulator's ``interaction_kwargs`` (hidden goal and task description)."""
        return {"single_turn_prompt": self.goal, "task_desc": self.task_desc}


def tasks_from_rows(spec: SourceSpec, rows: Iterable[ConvertedRow], *, mode: str) -> list[EngineTask]:
    """Turn converted single-turn rows into tasks.

    Args:
        spec: the source (must be single-turn).
        rows: rows from :func:`collabllm_verl.recipe.dataset.source.load_rows`.
        mode: ``"openers"`` or ``"conversations"`` (part of the resume key).

    Raises:
        ValueError: the source is not single-turn, or two rows hold the same task (same goal and
            reference), which would share one resume key.
    """
    if spec.schema != "single_turn":
        raise ValueError(
            f"{spec.source}: build_dataset.py needs a single-turn source (a request and its reference per row); "
            "this one is multi-turn (use process_dataset.py on it directly)"
        )
    tasks: list[EngineTask] = []
    seen: dict[str, int] = {}
    for row in rows:
        info = row.rl["extra_info"]
        goal = str(info["single_turn_prompt"])
        reference = str(row.rl["reward_model"]["ground_truth"])
        key = stable_key(mode, goal, reference)
        if key in seen:
            raise ValueError(
                f"{spec.source}: rows {seen[key]} and {row.index} hold the same task (same request and reference); "
                "remove the duplicate or narrow the selection with --filter"
            )
        seen[key] = row.index
        metadata = json.loads(info["metadata"]) if isinstance(info.get("metadata"), str) else {}
        tasks.append(
            EngineTask(
                key=key,
                conv_id=row.index,
                goal=goal,
                reference=reference,
                metadata=metadata,
                task_desc=str(info["interaction_kwargs"]["task_desc"]),
                data_source=str(row.rl["data_source"]),
                extra_info={**to_plain(info), "single_turn_metadata": metadata},
            )
        )
    return tasks
