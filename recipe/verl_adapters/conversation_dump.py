"""Readable JSONL files of scored rollouts: each trained response, its forward-sampled conversations and
the metric scores that made its multiturn-aware reward.

verl 0.9.1's own ``trainer.rollout_data_dir`` dump holds only the decoded prompt, the response, the ground
truth and the scalar score; the future conversations and the per-metric breakdown live inside the reward manager. The
``collabllm`` reward manager therefore writes them here, one JSON object per trained response, appended to
``<dir>/step_<NNNNNN>.jsonl`` where ``NNNNNN`` is the trainer's step (``global_steps`` of the batch). The
highest-numbered file holds the last step. Several reward-loop processes may append to one file: each
record is written with one ``write`` call under an exclusive ``flock``.

Configuration (Hydra overrides of ``verl.trainer.main_ppo``)::

    +reward.reward_kwargs.conversation_dump.dir=outputs/rl_cpu/conversations
    +reward.reward_kwargs.conversation_dump.keep_last_steps=5    # optional; default: keep every step

validated with the other reward settings
(:attr:`~collabllm_verl.recipe.core.multiturn_reward.RewardSettings.conversation_dump`, a
:class:`~collabllm_verl.recipe.core.dump_settings.DumpSettings`).

Record fields (all JSON): ``step``, ``uid`` (the prompt's id, shared by its GRPO group), ``session_id``
(0..n-1 within the group), ``data_source``, ``ground_truth``, ``reward``, ``excluded`` (why the response
was kept out of the policy gradient, or null), ``metrics`` (name -> ``weight``, ``mean`` over
conversations, ``weighted`` = clamp(weight * mean, -1, 1), ``failures``, ``scored``, ``values`` per
conversation or null where the metric failed or the conversation was not scored), ``forward_sampling``
(``skipped``, ``skip_reason``, ``num_conversations`` and the agent loop's counters), ``history``
(messages before the trained response), ``response`` (its text) and ``future_conversations`` (per
conversation: the messages after the trained response). Validation rollouts (``trainer.test_freq``) are
scored by the same manager and land in the file of the step they ran at.

The per-step summary (``<dir>/summary.jsonl``, one row per training step) is written by the trainer's
driver (``recipe/verl_adapters/replay_buffer.py``) with :func:`write_summary`; on a resumed run it replaces the rows of
the steps being redone, and :func:`keep_step_records` drops the records an interrupted run left in the
file of the step being redone, so neither file has a duplicated or missing step.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import math
import os
import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collabllm_verl.recipe.core.dump_settings import DumpSettings
from collabllm_verl.recipe.core.plain import to_plain
from collabllm_verl.recipe.dataset.jsonl import read_json_lines

if TYPE_CHECKING:  # only annotations: writing and reading dump files imports no LLM layer or metric
    from collabllm_verl.recipe.core.multiturn_reward import ForwardSamples, SampleScore

__all__ = [
    "ConversationDumpWriter",
    "DumpSettings",
    "build_record",
    "keep_step_records",
    "previous_totals",
    "sample_record",
    "step_file",
    "write_summary",
]

logger = logging.getLogger(__name__)

_FILE_RE = re.compile(r"^step_(\d+)\.jsonl$")
_SAMPLING_STATS = (
    "simulator_failures",
    "early_terminations",
    "future_turns",
    "end_reasons",
    "forward_sampling_seconds",
)
SUMMARY_FILE = "summary.jsonl"


def step_file(directory: str | os.PathLike, step: int | None) -> Path:
    """The file of a step: ``<dir>/step_<NNNNNN>.jsonl`` (``step_unknown.jsonl`` when the step is unknown)."""
    name = f"step_{int(step):06d}.jsonl" if step is not None else "step_unknown.jsonl"
    return Path(directory) / name


def _number(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _message(message: Mapping[str, Any]) -> dict[str, Any]:
    return {"role": str(message.get("role", "")), "content": message.get("content", "")}


def build_record(
    *,
    step: int | None,
    uid: str | None,
    session_id: int | None,
    data_source: str | None,
    ground_truth: Any,
    reward: float | None,
    weights: Mapping[str, float],
    means: Mapping[str, float],
    weighted: Mapping[str, float],
    failures: Mapping[str, int] | None = None,
    scored: Mapping[str, int] | None = None,
    excluded: str | None = None,
    per_conversation: Mapping[str, Sequence[float | None]] | None = None,
    conversations: Sequence[Sequence[Mapping[str, Any]]] = (),
    num_history_messages: int = 0,
    skipped: bool = False,
    skip_reason: str | None = None,
    sampling_stats: Mapping[str, Any] | None = None,
    fallback_history: Sequence[Mapping[str, Any]] | None = None,
    fallback_response: str | None = None,
) -> dict[str, Any]:
    """One JSON-ready record of a scored trained response (fields: see the module docstring).

    Args:
        step: trainer step of the batch (``global_steps``), or None.
        uid, session_id: the prompt's id and the response's index within its GRPO group.
        data_source, ground_truth: from the dataset row.
        reward: the multiturn-aware reward given to the response (None when it was excluded).
        weights, means, weighted, failures, scored: per metric, as computed by the reward manager.
        excluded: why the response was kept out of the policy gradient, or None.
        per_conversation: per metric, one value per conversation (None where it failed), optional.
        conversations: the forward-sampled conversations, each = history + trained response + future turns.
        num_history_messages: messages before the trained response in each conversation.
        skipped, skip_reason: forward sampling was skipped (truncated, empty, malformed reasoning).
        sampling_stats: the agent loop's counters (``simulator_failures``, ``early_terminations``,
            ``future_turns``, ``forward_sampling_seconds``), copied into ``forward_sampling``.
        fallback_history, fallback_response: used when there is no conversation (skipped sampling).
    """
    metrics = {
        name: _metric_entry(
            weights[name],
            means.get(name),
            weighted.get(name),
            (failures or {}).get(name, 0),
            (scored or {}).get(name, 0),
            (per_conversation or {}).get(name, ()),
        )
        for name in weights
    }
    if conversations:
        first = conversations[0]
        history = [_message(m) for m in first[:num_history_messages]]
        trained = first[num_history_messages] if len(first) > num_history_messages else {}
        response = trained.get("content", "") if isinstance(trained, Mapping) else ""
    else:
        history = [_message(m) for m in (fallback_history or ())]
        response = fallback_response or ""
    return {
        "step": int(step) if step is not None else None,
        "uid": None if uid is None else str(uid),
        "session_id": None if session_id is None else int(session_id),
        "data_source": None if data_source is None else str(data_source),
        "ground_truth": to_plain(ground_truth, json_safe=True),
        "reward": _number(reward),
        "excluded": excluded,
        "metrics": metrics,
        "forward_sampling": {
            "skipped": bool(skipped),
            "skip_reason": skip_reason,
            "num_conversations": len(conversations),
            **{
                key: to_plain(value, json_safe=True)
                for key, value in (sampling_stats or {}).items()
                if key in _SAMPLING_STATS
            },
        },
        "history": history,
        "response": response,
        "future_conversations": _future_entries(conversations, num_history_messages, metrics),
    }


def _metric_entry(
    weight: float, mean: Any, weighted: Any, failures: int, scored: int, values: Sequence[float | None]
) -> dict[str, Any]:
    """One metric's part of a record: its numbers, and its values per conversation (None if none)."""
    values = list(values)
    return {
        "weight": _number(weight),
        "mean": _number(mean),
        "weighted": _number(weighted),
        "failures": int(failures),
        "scored": int(scored),
        "values": [_number(v) if v is not None else None for v in values] if values else None,
    }


def _future_entries(
    conversations: Sequence[Sequence[Mapping[str, Any]]],
    num_history_messages: int,
    metrics: Mapping[str, Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Per conversation: the messages after the trained response and each metric's value on it."""
    futures = []
    for index, conversation in enumerate(conversations):
        scores = {
            name: entry["values"][index]
            for name, entry in metrics.items()
            if index < len(entry["values"] or ())
        }
        future = [_message(m) for m in conversation[num_history_messages + 1 :]]
        futures.append({"messages": future, "scores": scores})
    return futures


class ConversationDumpWriter:
    """Appends records to per-step JSONL files (safe across processes on one machine).

    Args:
        settings: :class:`DumpSettings`.
    """

    def __init__(self, settings: DumpSettings):
        self.settings = settings
        self._pruned_up_to: int | None = None

    def write(self, record: Mapping[str, Any]) -> Path:
        """Append one record to the file of ``record["step"]``; returns that file.

        Raises:
            OSError: the folder or file cannot be written.
        """
        directory = Path(self.settings.dir)
        directory.mkdir(parents=True, exist_ok=True)
        step = record.get("step")
        path = step_file(directory, step)
        line = json.dumps(to_plain(record, json_safe=True), ensure_ascii=False) + "\n"
        with open(path, "a", encoding="utf-8") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                fh.write(line)
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        if step is not None and self.settings.keep_last_steps is not None:
            self._prune(directory, int(step))
        return path

    async def awrite(self, record: Mapping[str, Any]) -> Path:
        """:meth:`write` in a worker thread, for use inside an event loop."""
        return await asyncio.to_thread(self.write, record)

    def _prune(self, directory: Path, step: int) -> None:
        oldest_kept = step - self.settings.keep_last_steps + 1
        if self._pruned_up_to is not None and self._pruned_up_to >= oldest_kept:
            return
        for path in directory.iterdir():
            match = _FILE_RE.match(path.name)
            if match and int(match.group(1)) < oldest_kept:
                path.unlink(missing_ok=True)  # another process may have pruned it first
        self._pruned_up_to = oldest_kept


def _rewrite_locked(path: Path, keep: Any, extra_lines: Sequence[str] = ()) -> None:
    """Atomically replace ``path`` with its lines for which ``keep(record)`` is true, plus ``extra_lines``,
    holding an exclusive ``flock`` on ``path`` meanwhile (the writers of this module use the same lock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            fh.seek(0)
            lines = [line for line in fh.read().splitlines() if line.strip() and keep(json.loads(line))]
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text("".join(f"{line}\n" for line in [*lines, *extra_lines]), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def write_summary(directory: str | os.PathLike, summary: Mapping[str, Any]) -> Path:
    """Append a step summary to ``<directory>/summary.jsonl``, first removing the rows of this step and
    of later ones (left by an interrupted run that a resumed one redoes). Returns the file.

    Raises:
        OSError: the file cannot be written; ValueError: a line of it is not JSON.
    """
    path = Path(directory) / SUMMARY_FILE
    step = int(summary["step"])
    _rewrite_locked(path, lambda row: int(row.get("step", -1)) < step, [json.dumps(to_plain(summary, json_safe=True))])
    return path


def previous_totals(directory: str | os.PathLike, step: int) -> dict[str, float]:
    """``totals`` of the last summary row before ``step`` in ``<directory>/summary.jsonl`` (running totals
    of a resumed run continue from it), or ``{}``."""
    path = Path(directory) / SUMMARY_FILE
    rows = [r for r in read_json_lines(path) if int(r.get("step", -1)) < step] if path.is_file() else []
    return dict(rows[-1].get("totals") or {}) if rows else {}


def keep_step_records(directory: str | os.PathLike, step: int, uids: Collection[str]) -> int:
    """Drop, from the file of ``step``, the records whose ``uid`` is not in ``uids`` (records an interrupted
    run wrote before a resumed run redid the step). Returns how many were dropped."""
    path = step_file(directory, step)
    if not path.is_file():
        return 0
    before = len(read_json_lines(path))
    _rewrite_locked(path, lambda record: record.get("uid") in uids)
    return before - len(read_json_lines(path))


def decoded_response(item: Any, tokenizer: Any) -> str | None:
    """The trained response of a verl ``DataProtoItem`` (``batch["responses"]``, padding dropped, special
    tokens skipped), or None without a tokenizer or a responses tensor."""
    if tokenizer is None or item.batch is None or "responses" not in item.batch:
        return None
    ids = [int(t) for t in item.batch["responses"].tolist() if int(t) != (tokenizer.pad_token_id or 0)]
    return tokenizer.decode(ids, skip_special_tokens=True)


def sample_record(
    item: Any, samples: ForwardSamples, score: SampleScore, weights: Mapping[str, float], tokenizer: Any = None
) -> dict:
    """Build the record of one scored response from the reward manager's objects.

    Args:
        item: verl ``DataProtoItem`` of the response (``non_tensor_batch`` with ``global_steps``, ``uid``,
            ``session_id``, ``data_source``, ``reward_model``, ``raw_prompt``; ``batch["responses"]``).
        samples: the response's forward-sampling result (conversations and counters).
        score: its reward and per-metric breakdown.
        weights: metric name -> weight.
        tokenizer: decodes the response when no conversation holds it (skipped forward sampling).
    """
    non_tensor = item.non_tensor_batch
    reward_model = non_tensor.get("reward_model")
    ground_truth = reward_model.get("ground_truth") if isinstance(reward_model, Mapping) else None
    fallback_response = None if samples.conversations else decoded_response(item, tokenizer)
    raw_prompt = non_tensor.get("raw_prompt")
    step = non_tensor.get("global_steps")
    session_id = non_tensor.get("session_id")
    return build_record(
        step=int(step) if step is not None else None,
        uid=non_tensor.get("uid"),
        session_id=int(session_id) if session_id is not None else None,
        data_source=non_tensor.get("data_source"),
        ground_truth=ground_truth,
        reward=None if score.excluded else score.reward,
        weights=weights,
        means=score.means,
        weighted=score.weighted,
        failures=score.failures,
        scored=score.scored,
        excluded=score.excluded,
        per_conversation=score.per_conversation,
        conversations=samples.conversations,
        num_history_messages=samples.num_history_messages,
        skipped=samples.skipped,
        skip_reason=samples.skip_reason,
        sampling_stats={
            "simulator_failures": samples.simulator_failures,
            "early_terminations": samples.early_terminations,
            "future_turns": samples.future_turns,
            "end_reasons": samples.end_reasons,
            "forward_sampling_seconds": samples.seconds,
        },
        fallback_history=[m for m in (to_plain(raw_prompt) or []) if isinstance(m, Mapping)],
        fallback_response=fallback_response,
    )
