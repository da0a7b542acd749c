"""One data-engine run end to end: the tasks' records, then the dataset files (``build_dataset.py``'s core).

The output folder holds the finished records (resume state), the manifest and, once the run is over,
``train.parquet`` with the rows of every selected task that finished (in ``conv_id`` order). A task that
failed is listed in ``failures.jsonl`` and left out; running the same command again retries it and keeps
everything already finished.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from collabllm_verl.recipe.core.run_store import RunStore
from collabllm_verl.recipe.core.task_runner import TaskRunnerSettings

from .config import Engine
from .conversation import build_conversation
from .openers import write_opener
from .runner import RunSummary, run_tasks
from .schema import MANIFEST, RECORDS, conversation_rows, opener_row, write_dataset, write_failures
from .task import EngineTask

__all__ = ["MODES", "build"]

logger = logging.getLogger(__name__)

MODES = ("openers", "conversations")
# Manifest keys that describe the run or the selection of tasks, not the settings that shape a conversation
# (ignored when a resumed run is compared: a larger --max_rows extends a dataset).
_RUN_KEYS = ("status", "summary", "max_rows")


def _check_resume(local_dir: Path, manifest: Mapping[str, Any]) -> None:
    """Refuse to mix modes in one folder; warn when a resumed run's settings changed."""
    path = local_dir / MANIFEST
    if not path.is_file():
        return
    previous = json.loads(path.read_text(encoding="utf-8"))
    if previous.get("mode") != manifest["mode"]:
        raise ValueError(
            f"{local_dir} holds a --mode {previous.get('mode')} run; "
            f"use another --local_dir for --mode {manifest['mode']}"
        )
    keys = (set(previous) | set(manifest)) - set(_RUN_KEYS)
    changed = sorted(k for k in keys if previous.get(k) != manifest.get(k))
    if changed:
        logger.warning(
            "%s was started with other settings (%s differ): finished tasks are kept as they are, new ones use "
            "the new settings",
            local_dir,
            ", ".join(changed),
        )


def _write_manifest(local_dir: Path, manifest: Mapping[str, Any]) -> None:
    tmp = local_dir / f".{MANIFEST}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(dict(manifest), indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, local_dir / MANIFEST)


def build(
    *,
    tasks: Sequence[EngineTask],
    mode: str,
    local_dir: str | os.PathLike,
    interaction: Any,
    engine: Engine | None = None,
    manifest: Mapping[str, Any],
    runner: TaskRunnerSettings,
) -> tuple[RunSummary, dict[str, Path]]:
    """Run every task not finished yet (in an event loop of its own), then write the dataset of the
    finished ones. File work happens before and after the loop, never inside it.

    Args:
        tasks: the selected tasks (:func:`.task.tasks_from_rows` with the same ``mode``).
        mode: ``"openers"`` (one simulator call per task) or ``"conversations"`` (the full search).
        local_dir: the output folder (created).
        interaction: the user simulator.
        engine: the search's objects; required for ``"conversations"``.
        manifest: JSON-serialisable settings recorded in the manifest (must hold ``mode``).
        runner: tasks in flight, retries, failure budget, progress bar (:func:`.runner.run_tasks`).

    Returns:
        ``(summary, files)``; ``files`` is empty when no selected task has finished. When the failure
        budget stopped the run, ``summary.stopped`` says so and the manifest's status is ``"stopped"``.

    Raises:
        ValueError: an unknown mode, a missing engine, or a folder that holds a run of the other mode.
    """
    if mode not in MODES:
        raise ValueError(f"--mode must be one of {MODES}, got {mode!r}")
    if mode == "conversations" and engine is None:
        raise ValueError("--mode conversations needs the assistant, judge and metric settings (engine)")
    out = Path(local_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    manifest = {**manifest, "mode": mode}
    _check_resume(out, manifest)
    _write_manifest(out, {**manifest, "status": "running"})

    async def openers(task: EngineTask) -> dict[str, Any]:
        return {"rows": [opener_row(task, await write_opener(interaction, task))]}

    async def conversations(task: EngineTask) -> dict[str, Any]:
        record = await build_conversation(engine, task)
        return {
            "rows": conversation_rows(task, record),
            "end_reason": record.end_reason,
            "turns": len(record.turns),
            "messages": record.messages,
        }

    store = RunStore(out / RECORDS)
    summary = asyncio.run(
        run_tasks(
            tasks,
            openers if mode == "openers" else conversations,
            store=store,
            runner=runner.model_copy(update={"desc": f"build_dataset {mode}", "unit": "task"}),
        )
    )
    write_failures(out, summary.failures)
    selected = {task.key for task in tasks}
    records = sorted((r for r in store.records() if r["key"] in selected), key=lambda r: r["conv_id"])
    rows = [row for record in records for row in record["rows"]]
    final = {
        **manifest,
        "status": "stopped" if summary.stopped else "complete" if not summary.failed else "incomplete",
        "summary": {**summary.as_dict(), "rows": len(rows), "conversations": len(records)},
    }
    if mode == "conversations":
        final["summary"]["end_reasons"] = dict(Counter(str(r.get("end_reason")) for r in records))
    if not rows:
        _write_manifest(out, final)
        return summary, {}
    return summary, write_dataset(out, rows, mode=mode, manifest=final)

