"""Conversion of source rows into verl RL and SFT rows.

Two source schemas are understood:

* **multi-turn** (the published CollabLLM datasets, e.g. ``collabllm/collabllm-multiturn-math-hard``, and
  the output of ``build_dataset.py``):
  ``prompt`` (list of ``{role, content}``: the conversation so far, ending with a user turn),
  ``completion`` (the assistant reply that was scored), ``score`` (its multiturn-aware reward),
  ``conv_id``, ``turn_id``, ``single_turn_prompt`` (the hidden goal), ``single_turn_completion`` (the
  reference) and ``single_turn_metadata``. A row without ``single_turn_completion`` (absent, null or blank)
  takes ``completion`` as its ground truth, as the original recipe does; such rows are counted
  (:attr:`ConvertedRow.ground_truth_from_completion`). The ``-large`` variants store ``sessions`` as a dict and
  ``rewards`` as summary statistics; the small ones store ``sessions`` as a list and ``rewards`` as
  metric -> list of floats with an ``MR`` list. Neither column is needed here except as a fallback for a
  missing ``score`` (the mean of ``rewards["MR"]``). Rows written by ``build_dataset.py --mode openers`` have
  a null ``completion`` and ``score`` (a simulated opener, no reply yet): they can only become RL prompts.
* **single-turn** (e.g. MATH: ``problem``, ``solution``, ``answer``): the prompt field becomes both the first
  user message and the hidden goal; the reference field is the ground truth.
* **ambiguity** (the ambiguity-controlled family, :mod:`.ambiguity_family`: ``opener``,
  ``single_turn_prompt``, ``ambiguous``, ``clarification``, ``must_contain``, ``task_desc``, ``id``): the
  opener is the first user message, the complete request the hidden goal, ``must_contain`` the ground
  truth; the row's own ``task_desc`` is given to the simulator. RL prompts and evaluation tasks only.

Output rows follow verl's RL dataset format (``prompt``, ``data_source``, ``agent_name``, ``ability``,
``reward_model``, ``extra_info``) and verl's multi-turn SFT format (``messages``).
"""

from __future__ import annotations

import json
import math
import numbers
import random
from collections.abc import Iterable, Mapping, Sized
from dataclasses import dataclass
from typing import Any

AGENT_NAME = "collabllm_agent"
INTERACTION_NAME = "collabllm"
MULTITURN_REQUIRED = ("prompt", "completion", "single_turn_prompt")
AMBIGUITY_REQUIRED = ("opener", "single_turn_prompt", "ambiguous", "must_contain")
_ROLES = {"system", "user", "assistant"}


class DatasetFormatError(ValueError):
    """A source row lacks a required field or has one of the wrong type.

    The message names the source, the row index (0-based, in the source split before any filter) and the
    field, e.g. ``data/x.jsonl: row 17: field 'single_turn_prompt': missing``.
    """

    def __init__(self, source: str, row: int, field: str, problem: str):
        super().__init__(f"{source}: row {row}: field {field!r}: {problem}")
        self.source, self.row, self.field, self.problem = source, row, field, problem


class JsonLinesError(DatasetFormatError):
    """A line of a JSON Lines source that is not one JSON object (raised before ``datasets`` reads the file).

    Attributes:
        source: the file.
        line: 1-based line number in the file.
        row: 0-based index the row would have in the split (blank lines are not rows), as in
            :class:`DatasetFormatError`; None when unknown (a JSON array that does not parse).
        field: the key being read where the JSON broke (the innermost key before the error), or None when
            the line broke before any key or is valid JSON of the wrong kind.
        problem: what is wrong and what was expected.

    The message reads e.g. ``data/x.jsonl: line 3 (row 2): field 'score': not valid JSON at column 25
    (Expecting value); expected one JSON object per line``.
    """

    def __init__(self, source: str, line: int, row: int | None, field: str | None, problem: str):
        where = f"{source}: line {line}" if row is None else f"{source}: line {line} (row {row})"
        ValueError.__init__(self, f"{where}: field {field!r}: {problem}" if field else f"{where}: {problem}")
        self.source, self.line, self.row, self.field, self.problem = source, line, row, field, problem


@dataclass(frozen=True)
class SourceSpec:
    """How to read one source dataset.

    Attributes:
        source: label used in error messages (the ``--dataset`` argument).
        data_source: value written to the ``data_source`` column (selects per-source reward logic in verl).
        schema: ``"multiturn"``, ``"single_turn"`` or ``"ambiguity"``.
        ability: task family written to the ``ability`` column (``math``, ``writing``, ``coding``, ``general``).
        task_desc: one-line description of the task, given to the user simulator.
        system_prompt: system message prepended to every prompt; ``None`` for none.
        prompt_field / reference_field / answer_field: single-turn column names (answer is optional).
    """

    source: str
    data_source: str
    schema: str
    ability: str
    task_desc: str
    system_prompt: str | None
    prompt_field: str = "problem"
    reference_field: str = "solution"
    answer_field: str | None = "answer"


def detect_schema(column_names: Iterable[str]) -> str:
    """Return ``"ambiguity"`` when the columns of :data:`AMBIGUITY_REQUIRED` are present, ``"multiturn"``
    when the CollabLLM multi-turn columns ``prompt``, ``completion`` and ``single_turn_prompt`` are
    (``single_turn_completion`` is optional), else ``"single_turn"``."""
    columns = set(column_names)
    if all(c in columns for c in AMBIGUITY_REQUIRED):
        return "ambiguity"
    return "multiturn" if all(c in columns for c in MULTITURN_REQUIRED) else "single_turn"


def row_matches(row: Mapping[str, Any], filters: Mapping[str, str]) -> bool:
    """True when ``str(row[field]) == value`` for every filter (e.g. ``{"level": "5"}``)."""
    return all(field in row and str(row[field]) == value for field, value in filters.items())


def text_field(
    source: str,
    index: int,
    row: Mapping[str, Any],
    field: str,
    *,
    where: str | None = None,
    allow_empty=False,
) -> str:
    """``row[field]`` as a string, non-empty unless ``allow_empty``; ``where`` names the field in errors
    (default ``field``).

    Raises:
        DatasetFormatError: the field is missing, null, not a string, or empty (naming ``source``, row, field).
    """
    value, name = row.get(field), where or field
    if value is None:
        raise DatasetFormatError(source, index, name, "missing")
    if not isinstance(value, str):
        raise DatasetFormatError(source, index, name, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DatasetFormatError(source, index, name, "empty")
    return value


def _text(spec: SourceSpec, index: int, row: Mapping[str, Any], field: str, *, allow_empty=False) -> str:
    return text_field(spec.source, index, row, field, allow_empty=allow_empty)


def _messages(spec: SourceSpec, index: int, row: Mapping[str, Any], field: str) -> list[dict[str, str]]:
    value = row.get(field)
    if value is None:
        raise DatasetFormatError(spec.source, index, field, "missing")
    if isinstance(value, str):
        raise DatasetFormatError(spec.source, index, field, "expected a list of {role, content} messages")
    messages = list(value)
    if not messages:
        raise DatasetFormatError(spec.source, index, field, "empty conversation")
    cleaned = []
    for turn, message in enumerate(messages):
        if not isinstance(message, Mapping) or message.get("role") not in _ROLES:
            raise DatasetFormatError(spec.source, index, f"{field}[{turn}].role", "expected system/user/assistant")
        if not isinstance(message.get("content"), str):
            raise DatasetFormatError(spec.source, index, f"{field}[{turn}].content", "expected a string")
        if message["role"] != "system":
            cleaned.append({"role": message["role"], "content": message["content"]})
    if not cleaned or cleaned[-1]["role"] != "user":
        raise DatasetFormatError(spec.source, index, field, "the conversation must end with a user message")
    return cleaned


def with_system(spec: SourceSpec, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """``messages`` with the source's system prompt prepended (unchanged when it has none)."""
    if spec.system_prompt is None:
        return messages
    return [{"role": "system", "content": spec.system_prompt}, *messages]


def _is_number(value: Any) -> bool:
    """A real number other than a bool (Python or numpy scalars)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _score(spec: SourceSpec, index: int, row: Mapping[str, Any]) -> float:
    """The row's ``score``; when it is absent, null or NaN, the mean of ``rewards['MR']``.

    Raises:
        DatasetFormatError: ``score`` is not a number (a string such as ``"high"``, a bool, ...), or it is
            missing and ``rewards['MR']`` is absent, empty, not a list, or holds a value that is not a number.
    """
    score = row.get("score")
    if score is not None and not _is_number(score):
        raise DatasetFormatError(
            spec.source, index, "score", f"expected a number (the reply's reward), got {type(score).__name__} {score!r}"
        )
    if score is not None and not math.isnan(score):
        return float(score)
    rewards = row.get("rewards")
    mr = rewards.get("MR") if isinstance(rewards, Mapping) else None
    if mr is None or (isinstance(mr, Sized) and len(mr) == 0):
        raise DatasetFormatError(spec.source, index, "score", "missing (and no rewards['MR'] to fall back on)")
    if isinstance(mr, (str, bytes, Mapping)) or not isinstance(mr, Iterable):
        raise DatasetFormatError(
            spec.source, index, "rewards['MR']", f"expected a list of numbers (score is missing), got {mr!r}"
        )
    mr = list(mr)
    for position, value in enumerate(mr):
        if not _is_number(value) or math.isnan(value):
            raise DatasetFormatError(
                spec.source,
                index,
                f"rewards['MR'][{position}]",
                f"expected a number (score is missing, so its mean is the score), got {type(value).__name__} {value!r}",
            )
    return float(sum(mr) / len(mr))


def _int(spec: SourceSpec, index: int, row: Mapping[str, Any], field: str) -> int:
    value = row.get(field)
    if value is None or isinstance(value, bool):
        raise DatasetFormatError(spec.source, index, field, "missing")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DatasetFormatError(spec.source, index, field, f"expected an integer, got {value!r}") from None


def _jsonable_metadata(row: Mapping[str, Any], exclude: Iterable[str]) -> str:
    """Other source columns as a JSON string (a string keeps the parquet schema fixed across rows)."""
    skipped = set(exclude)
    return json.dumps({k: v for k, v in row.items() if k not in skipped}, ensure_ascii=False, default=str)


@dataclass(frozen=True)
class ConvertedRow:
    """One converted source row, before deduplication and splitting.

    ``group`` keeps the rows of one conversation in the same split; ``rank`` orders candidate SFT rows
    of a conversation (latest turn first, then highest score); ``ground_truth_from_completion`` is True
    when a multi-turn row had no ``single_turn_completion`` and its ``completion`` became the ground truth.
    """

    rl: dict[str, Any]
    history: list[dict[str, str]]
    completion: str | None  # None: an opener row without an assistant reply (RL only)
    group: str
    rank: tuple[int, float]
    ground_truth_from_completion: bool = False
    rewards: Mapping[str, Any] | None = None  # a multi-turn row's ``rewards`` column (metric -> values), if any

    @property
    def index(self) -> int:
        """0-based index of the source row in its split (before any filter)."""
        return int(self.rl["extra_info"]["index"])


def convert_row(spec: SourceSpec, index: int, row: Mapping[str, Any]) -> ConvertedRow:
    """Validate one source row and build its RL row and SFT material.

    Returns:
        ConvertedRow whose ``rl`` dict has ``prompt`` (system prompt + conversation so far),
        ``data_source``, ``agent_name`` (``collabllm_agent``), ``ability``, ``reward_model``
        (``{"style": "rule", "ground_truth": str}``) and ``extra_info`` (``interaction_kwargs`` with
        ``name``/``single_turn_prompt``/``task_desc``, plus the row's metadata).

    Raises:
        DatasetFormatError: a required field is missing or malformed.
    """
    fallback = False
    task_desc = spec.task_desc
    if spec.schema == "ambiguity":
        history, goal, reference, extra, task_desc = _ambiguity_fields(spec, index, row)
        completion, group, rank = None, f"row:{index}", (1, -math.inf)
        consumed = set(AMBIGUITY_REQUIRED) | {"task_desc", "id", "clarification"}
    elif spec.schema == "multiturn":
        history = _messages(spec, index, row, "prompt")
        # A null completion marks an opener row (build_dataset.py --mode openers): RL prompts only.
        completion = None if row.get("completion") is None else _text(spec, index, row, "completion")
        goal = _text(spec, index, row, "single_turn_prompt")
        fallback = row.get("single_turn_completion") is None or (
            isinstance(row["single_turn_completion"], str) and not row["single_turn_completion"].strip()
        )
        # as the original recipe: without a reference, the scored completion is the ground truth
        reference = completion if fallback else _text(spec, index, row, "single_turn_completion", allow_empty=True)
        conv_id = row.get("conv_id")
        group = f"conv:{conv_id}" if conv_id is not None else f"row:{index}"
        turn = _int(spec, index, row, "turn_id") if "turn_id" in row else len(history)
        score = None if completion is None and row.get("score") is None else _score(spec, index, row)
        rank = (turn, -math.inf if score is None else score)
        source_meta = row.get("single_turn_metadata")
        answer = source_meta.get(spec.answer_field) if spec.answer_field and isinstance(source_meta, Mapping) else None
        extra = {
            "conv_id": None if conv_id is None else str(conv_id),
            "turn_id": turn,
            "score": score,
            "answer": None if answer is None else str(answer),
        }
        consumed = {"prompt", "completion", "single_turn_prompt", "single_turn_completion", "sessions", "rewards"}
    else:
        goal = _text(spec, index, row, spec.prompt_field)
        reference = _text(spec, index, row, spec.reference_field)
        history = [{"role": "user", "content": goal}]
        completion = reference
        group = f"row:{index}"
        rank = (1, 0.0)
        answer = None
        if spec.answer_field and row.get(spec.answer_field) is not None:
            answer = str(row[spec.answer_field])
        extra = {"conv_id": None, "turn_id": 1, "score": None, "answer": answer}
        consumed = {spec.prompt_field, spec.reference_field}

    rl = {
        "prompt": with_system(spec, history),
        "data_source": spec.data_source,
        "agent_name": AGENT_NAME,
        "ability": spec.ability,
        "reward_model": {"style": "rule", "ground_truth": reference},
        "extra_info": {
            "index": index,
            **extra,
            "single_turn_prompt": goal,
            "metadata": _jsonable_metadata(row, consumed),
            "interaction_kwargs": {
                "name": INTERACTION_NAME,
                "single_turn_prompt": goal,
                "task_desc": task_desc,
            },
        },
    }
    rewards = row.get("rewards") if spec.schema == "multiturn" and isinstance(row.get("rewards"), Mapping) else None
    return ConvertedRow(
        rl=rl, history=history, completion=completion, group=group, rank=rank, ground_truth_from_completion=fallback,
        rewards=rewards,
    )


def _ambiguity_fields(
    spec: SourceSpec, index: int, row: Mapping[str, Any]
) -> tuple[list[dict[str, str]], str, list[str], dict[str, Any], str]:
    """``(history, goal, must_contain, extra_info fields, task_desc)`` of an ambiguity-family row.

    Raises:
        DatasetFormatError: a field is missing or malformed (the family's rules,
            :func:`~.ambiguity_family.validate_row`).
    """
    from .ambiguity_family import validate_row

    plain = {key: row.get(key) for key in row}
    plain.setdefault("id", str(index))
    plain.setdefault("task_desc", spec.task_desc)
    plain.setdefault("clarification", None)
    if not isinstance(plain["must_contain"], (str, bytes)) and plain["must_contain"] is not None:
        plain["must_contain"] = list(plain["must_contain"])  # numpy arrays of a parquet source
    validate_row(plain, source=spec.source, index=index)
    must_contain = [str(s) for s in plain["must_contain"]]
    extra = {
        "conv_id": None,
        "turn_id": 1,
        "score": None,
        "answer": None,
        "id": str(plain["id"]),
        "opener": plain["opener"],
        "ambiguous": bool(plain["ambiguous"]),
        "clarification": plain["clarification"],
        "must_contain": must_contain,
    }
    history = [{"role": "user", "content": plain["opener"]}]
    return history, plain["single_turn_prompt"], must_contain, extra, str(plain["task_desc"])


def dedupe_rl_rows(rows: Iterable[ConvertedRow]) -> list[ConvertedRow]:
    """Keep the first row of each distinct (prompt, hidden goal) (the same conversation prefix appears once
    per sampled completion in the multi-turn datasets; two tasks whose simulated openers happen to read the
    same stay apart)."""
    seen: set[str] = set()
    kept = []
    for row in rows:
        goal = row.rl["extra_info"]["single_turn_prompt"]
        key = json.dumps([row.rl["prompt"], goal], sort_keys=True, ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept


def best_sft_rows(spec: SourceSpec, rows: Iterable[ConvertedRow]) -> list[tuple[str, dict[str, Any]]]:
    """One SFT example per conversation: its latest turn, and among that turn's candidates the one with the
    highest score, with the completion appended as the final assistant message.

    Returns:
        ``(group, row)`` pairs; ``row`` has ``messages`` (system, user/assistant turns, final assistant)
        and ``extra_info``.

    Raises:
        DatasetFormatError: a row has no completion (an opener row of ``build_dataset.py --mode openers``).
    """
    best: dict[str, ConvertedRow] = {}
    for row in rows:
        require_completion(spec, row, "--dataset_type sft")
        current = best.get(row.group)
        if current is None or row.rank > current.rank:
            best[row.group] = row
    out = []
    for group, row in best.items():
        messages = [*with_system(spec, row.history), {"role": "assistant", "content": row.completion}]
        info = row.rl["extra_info"]
        out.append(
            (
                group,
                {
                    "messages": messages,
                    "data_source": spec.data_source,
                    "extra_info": {k: info[k] for k in ("index", "conv_id", "turn_id", "score")},
                },
            )
        )
    return out


def sft_score(spec: SourceSpec, row: ConvertedRow, field: str = "score") -> float:
    """The value the SFT score floor compares: the row's ``score``, or ``rewards.<metric>``: the mean of the
    source row's ``rewards[<metric>]`` values (the forward-sampled conversations' raw values; nulls, i.e.
    failed metrics, left out), as the original filter averages a reward list.

    Raises:
        ValueError: ``field`` is neither ``score`` nor ``rewards.<metric>``, or the row has no score (a
            single-turn source).
        DatasetFormatError: the row lacks ``rewards[<metric>]`` or it holds no number (names row and field).
    """
    if field == "score":
        score = row.rl["extra_info"].get("score")
        if score is None:
            raise ValueError(
                f"--sft_min_score needs scored rows, but row {row.index} has no score (a single-turn source): "
                "use a multi-turn source with scored replies"
            )
        return float(score)
    prefix, _, metric = field.partition(".")
    if prefix != "rewards" or not metric:
        raise ValueError(f"--sft_score_field must be 'score' or 'rewards.<metric>', got {field!r}")
    values = (row.rewards or {}).get(metric)
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        values = None if values is None else [values]
    numbers = [float(v) for v in values or [] if _is_number(v) and not math.isnan(v)]
    if not numbers:
        raise DatasetFormatError(spec.source, row.index, f"rewards['{metric}']", "missing or without a number")
    return sum(numbers) / len(numbers)


def sft_rows_reaching(
    spec: SourceSpec,
    items: list[tuple[str, dict[str, Any]]],
    rows: Iterable[ConvertedRow],
    min_score: float,
    field: str = "score",
) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """The SFT conversations whose chosen reply reaches ``min_score`` (``value >= min_score``, the value from
    :func:`sft_score`), as the original SFT filter keeps those at or above its lower bound.

    Args:
        spec: the source (for error messages).
        items: :func:`best_sft_rows` output.
        rows: the converted rows it was built from (looked up by source row index).
        min_score: the floor.
        field: ``score`` or ``rewards.<metric>``.

    Returns:
        ``(kept, dropped)``: kept ``(group, row)`` pairs in input order and how many were dropped.

    Raises:
        ValueError, DatasetFormatError: see :func:`sft_score`.
    """
    by_index = {row.index: row for row in rows}
    kept = [
        (group, item)
        for group, item in items
        if sft_score(spec, by_index[int(item["extra_info"]["index"])], field) >= min_score
    ]
    return kept, len(items) - len(kept)


def with_system_prompt_share(
    items: list[tuple[str, dict[str, Any]]], ratio: float, seed: int
) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """Keep the leading system message on ``int(len(items) * ratio)`` rows chosen at random (seeded) and remove
    it from the others; the prompt lives in ``prompt`` (RL and DPO rows) or ``messages`` (SFT rows).

    Args:
        items: ``(group, row)`` pairs whose rows start with the system prompt.
        ratio: share of rows that keep it, in [0, 1] (1: every row, the default of ``process_dataset.py``).
        seed: the selection's seed.

    Returns:
        ``(items, kept)``: the rows (same order; rows without the prompt are copies) and how many kept it.

    Raises:
        ValueError: ``ratio`` outside [0, 1].
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"--add_system_prompt_ratio must be in [0, 1], got {ratio}")
    chosen = set(random.Random(seed).sample(range(len(items)), int(len(items) * ratio)))
    out = []
    for position, (group, row) in enumerate(items):
        if position not in chosen:
            key = "messages" if "messages" in row else "prompt"
            messages = list(row[key])
            if messages and messages[0].get("role") == "system":
                row = {**row, key: messages[1:]}
        out.append((group, row))
    return out, len(chosen)


def require_completion(spec: SourceSpec, row: ConvertedRow, purpose: str) -> None:
    """Raise :class:`DatasetFormatError` (naming the row) when ``row`` has no assistant reply.

    Args:
        purpose: what needs the reply, for the message (e.g. ``"--dataset_type sft"``).
    """
    if row.completion is None:
        raise DatasetFormatError(
            spec.source,
            row.index,
            "completion",
            f"missing; {purpose} needs an assistant reply (rows of build_dataset.py --mode openers have none: "
            "use them with --dataset_type rl)",
        )


def split_by_group(
    items: list[tuple[str, dict[str, Any]]], validation_size: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split rows into train and validation so that no conversation spans both.

    Args:
        items: ``(group, row)`` pairs; rows of one group always land in the same split.
        validation_size: a fraction of the groups in ``[0, 1)``, or a number of groups (an integer >= 1).
        seed: shuffling seed; the same seed and input give the same split.

    Returns:
        ``(train_rows, validation_rows)``, each in input order.

    Raises:
        ValueError: a negative size, a size that leaves no training group, or a non-integer size >= 1.
    """
    groups = list(dict.fromkeys(group for group, _ in items))
    if validation_size < 0:
        raise ValueError(f"--validation_size must be >= 0, got {validation_size}")
    if validation_size < 1:
        n_val = round(len(groups) * validation_size)
        if validation_size > 0 and len(groups) > 1:
            n_val = max(n_val, 1)
    elif float(validation_size).is_integer():
        n_val = int(validation_size)
    else:
        raise ValueError(f"--validation_size must be a fraction below 1 or a whole count, got {validation_size}")
    if n_val >= len(groups):
        raise ValueError(f"--validation_size {validation_size} leaves no training data ({len(groups)} conversations)")
    shuffled = groups[:]
    random.Random(seed).shuffle(shuffled)
    val_groups = set(shuffled[:n_val])
    train = [row for group, row in items if group not in val_groups]
    val = [row for group, row in items if group in val_groups]
    return train, val
