"""Adaptors for the raw sources of the paper's tasks and of Abg-CoQA (``--adaptor NAME``).

Each adaptor reads one published schema, checks every row (a bad row raises
:class:`~.rows.DatasetFormatError` naming file, row and field), chooses the rows of the requested split
the way the authors' code does, and returns them in the single-turn schema the converter reads
(:mod:`.rows`): ``problem`` (the hidden goal, ``single_turn_prompt``), ``solution`` (the reference, the
ground truth), ``answer`` (optional) and the task's metadata columns (kept in ``extra_info.metadata``).

==============  ==========================  ===============================================================
adaptor         hub name (``--dataset``)    what it does
==============  ==========================  ===============================================================
``math_hard``   ``lighteval/MATH-Hard``     rows ``problem, solution, level, type`` (lighteval's format);
                                            the hub's own ``train`` / ``test`` splits; ``answer`` = the
                                            last ``\\boxed{}`` of the solution
``medium``      ``Kamaljp/medium_articles``  rows ``title, text, timestamp`` (+ ``url, authors, tags``);
                                            rows without a timestamp dropped, sorted by date, the most
                                            recent ``train_share + test_share`` (2 % + 0.5 %) taken and
                                            shuffled (``--seed``): the first ``int(n * test_share)`` are
                                            ``test``, the rest ``train``; then articles over
                                            ``max_tokens`` (512) cl100k tokens are dropped
``bigcodebench`` ``bigcode/bigcodebench``   version ``v0.1.2`` (the hub split); rows ``task_id,
                                            instruct_prompt, code_prompt, canonical_solution, test,
                                            entry_point``; shuffled (``--seed``), the first
                                            ``int(n * train_share)`` (80 %) are ``train``, the rest
                                            ``test``; ``code_prompt`` is kept for the code extraction
``abg_coqa``    none (local JSON files)     ``coqa_abg_{train,val,test}.json``, each ``{"data": [story,
                                            ...]}`` with ``id, source, story, history_turns,
                                            target_turn.question, ambiguity`` (``ambiguous`` /
                                            ``non_ambiguous``, the reference); ``history`` adds the
                                            earlier question-answer pairs to the goal
==============  ==========================  ===============================================================

Options go through ``--adaptor_option KEY=VALUE`` (validated by the adaptor's pydantic options model).
The goal texts of Medium and Abg-CoQA are this project's wording of what the originals ask. No verl import.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .rows import DatasetFormatError, text_field

__all__ = ["ADAPTORS", "Adaptor", "AdaptorOptions", "adaptor_options", "load_adapted_rows"]

Row = Mapping[str, Any]


class AdaptorOptions(BaseModel):
    """Options shared by every adaptor (``--adaptor_option KEY=VALUE``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    seed: int = 42
    """seed of the adaptor's own split (Medium, BigCodeBench; the originals use 42)"""


class MediumOptions(AdaptorOptions):
    train_share: float = Field(0.02, gt=0, le=1)
    """share of all dated articles, the most recent, that become training candidates"""
    test_share: float = Field(0.005, ge=0, le=1)
    """share of all dated articles, taken from the same most recent block, that become test candidates"""
    max_tokens: int = Field(512, ge=1)
    """longest article kept, in cl100k_base tokens"""


class BigCodeBenchOptions(AdaptorOptions):
    train_share: float = Field(0.8, gt=0, lt=1)
    """share of the tasks in the training split (the rest: test)"""


class AbgCoQAOptions(AdaptorOptions):
    history: bool = False
    """add the story's earlier question-answer pairs to the goal"""


@dataclass(frozen=True)
class Adaptor:
    """One raw source.

    Attributes:
        name: the ``--adaptor`` value.
        hub: its Hugging Face name (None: local files only).
        hub_split: the hub split to load (None: ``--split``; BigCodeBench's splits are versions).
        task_key: the key of :data:`~.source.TASKS` whose ability and task description the rows get (the
            same as a dataset whose name holds that keyword); None: ``task`` holds them.
        task: ``(ability, task description)`` of an adaptor without a ``task_key``.
        options: the pydantic model of its options.
        splits: the split names it accepts.
        adapt: ``(rows, split, options, source) -> rows`` in the single-turn schema, in output order.
    """

    name: str
    hub: str | None
    hub_split: str | None
    task_key: str | None
    task: tuple[str, str] | None
    options: type[AdaptorOptions]
    splits: tuple[str, ...]
    adapt: Callable[[Sequence[Row], str, Any, str], list[dict[str, Any]]]


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces), or None."""
    start = text.rfind("\\boxed{")
    if start == -1:
        return None
    depth = 0
    for position in range(start + len("\\boxed"), len(text)):
        depth += {"{": 1, "}": -1}.get(text[position], 0)
        if depth == 0:
            return text[start + len("\\boxed{") : position]
    return None


# ------------------------------------------------------------------------------------------- MATH-Hard


def _math_hard(rows: Sequence[Row], split: str, options: Any, source: str) -> list[dict[str, Any]]:
    out = []
    for index, row in enumerate(rows):
        solution = text_field(source, index, row, "solution")
        out.append(
            {
                "problem": text_field(source, index, row, "problem"),
                "solution": solution,
                "answer": _last_boxed(solution),
                "level": text_field(source, index, row, "level"),
                "type": text_field(source, index, row, "type"),
                "source_row": index,
            }
        )
    return out


# ---------------------------------------------------------------------------------------------- Medium


def _timestamp(source: str, index: int, value: Any) -> datetime:
    try:
        stamp = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise DatasetFormatError(
            source, index, "timestamp", f"expected an ISO date and time, got {value!r}"
        ) from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


def cl100k_tokens(text: str) -> int:
    """Tokens of ``text`` in tiktoken's ``cl100k_base`` (litellm's bundled copy: no download)."""
    from collabllm_verl.metrics.token_amount import _tiktoken_encoding  # the one cached encoding loader

    return len(_tiktoken_encoding("cl100k_base").encode(text, disallowed_special=()))


def medium_goal(title: str, text: str) -> str:
    """The hidden goal of a Medium task: the article to write, with its title and the target text."""
    return f"Write an article of fewer than 500 words on this topic:\n\n{title}\n\n{text}"


def _medium(rows: Sequence[Row], split: str, options: MediumOptions, source: str) -> list[dict[str, Any]]:
    dated = []
    for index, row in enumerate(rows):
        if row.get("timestamp") is None:
            continue  # as the original: undated articles are left out
        dated.append((_timestamp(source, index, row["timestamp"]), index, row))
    dated.sort(key=lambda item: item[0])  # stable: equal dates keep the source order
    n_test, n_train = int(len(dated) * options.test_share), int(len(dated) * options.train_share)
    recent = dated[len(dated) - (n_train + n_test) :] if n_train + n_test else []
    random.Random(options.seed).shuffle(recent)
    chosen = recent[:n_test] if split == "test" else recent[n_test:]
    out = []
    for stamp, index, row in chosen:
        title, text = (
            text_field(source, index, row, "title", allow_empty=True),
            text_field(source, index, row, "text"),
        )
        tokens = cl100k_tokens(text)
        if tokens > options.max_tokens:
            continue
        out.append(
            {
                "problem": medium_goal(title, text),
                "solution": text,
                "title": title,
                "url": row.get("url"),
                "authors": row.get("authors"),
                "tags": row.get("tags"),
                "timestamp": stamp.isoformat(),
                "num_tokens": tokens,
                "source_row": index,
            }
        )
    return out


# ---------------------------------------------------------------------------------------- BigCodeBench

_BIGCODEBENCH_FIELDS = (
    "task_id",
    "instruct_prompt",
    "code_prompt",
    "canonical_solution",
    "test",
    "entry_point",
)


def _bigcodebench(
    rows: Sequence[Row], split: str, options: BigCodeBenchOptions, source: str
) -> list[dict[str, Any]]:
    order = list(range(len(rows)))
    random.Random(options.seed).shuffle(order)
    n_train = int(len(rows) * options.train_share)
    wanted = set(order[:n_train] if split == "train" else order[n_train:])
    out = []
    for index, row in enumerate(rows):
        fields = {name: text_field(source, index, row, name) for name in _BIGCODEBENCH_FIELDS}
        if index not in wanted:
            continue
        out.append(
            {
                "problem": fields["instruct_prompt"],
                "solution": fields["code_prompt"] + fields["canonical_solution"],
                "task_id": fields["task_id"],
                "entry_point": fields["entry_point"],
                "test": fields["test"],
                "code_prompt": fields["code_prompt"],
                "libs": row.get("libs"),
                "source_row": index,
            }
        )
    return out


# -------------------------------------------------------------------------------------------- Abg-CoQA

ABG_LABELS = ("ambiguous", "non_ambiguous")


def abg_coqa_goal(story: str, question: str, history: Iterable[tuple[str, str]] = ()) -> str:
    """The hidden goal of an Abg-CoQA task: the story, optionally the earlier exchange, the question."""
    parts = ["I have a question about the story below and would like help answering it.", "", story, ""]
    pairs = list(history)
    if pairs:
        parts.append("Questions asked and answered before:")
        parts += [line for q, a in pairs for line in (f"Q: {q}", f"A: {a}")]
        parts.append("")
    parts.append(f"The question: {question}")
    return "\n".join(parts)


def _history(source: str, index: int, row: Row) -> list[tuple[str, str]]:
    turns = row.get("history_turns") or []
    if not isinstance(turns, list):
        raise DatasetFormatError(
            source, index, "history_turns", "expected a list of {turn_id, question, answer}"
        )
    pairs = []
    for position, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise DatasetFormatError(source, index, f"history_turns[{position}]", "expected an object")
        for key in ("question", "answer"):
            if not isinstance(turn.get(key), str):
                raise DatasetFormatError(
                    source, index, f"history_turns[{position}].{key}", "expected a string"
                )
        pairs.append((turn.get("turn_id", position), turn["question"], turn["answer"]))
    return [(q, a) for _, q, a in sorted(pairs, key=lambda t: t[0] if isinstance(t[0], (int, float)) else 0)]


def _abg_coqa(rows: Sequence[Row], split: str, options: AbgCoQAOptions, source: str) -> list[dict[str, Any]]:
    out = []
    for index, row in enumerate(rows):
        label = row.get("ambiguity")
        if label not in ABG_LABELS:
            raise DatasetFormatError(
                source, index, "ambiguity", f"expected one of {ABG_LABELS}, got {label!r}"
            )
        target = row.get("target_turn")
        if not isinstance(target, Mapping):
            raise DatasetFormatError(
                source, index, "target_turn", "missing (expected an object with 'question')"
            )
        question = text_field(source, index, target, "question", where="target_turn.question")
        history = _history(source, index, row) if options.history else []
        out.append(
            {
                "problem": abg_coqa_goal(text_field(source, index, row, "story"), question, history),
                "solution": label,
                "answer": label,
                "id": row.get("id"),
                "source": row.get("source"),
                "ambiguous": label == "ambiguous",
                "source_row": index,
            }
        )
    return out


def _abg_coqa_rows(path: Path, split: str) -> tuple[list[Row], str]:
    """The stories of one split: ``path`` is a ``coqa_abg_<split>.json`` file or a folder holding it (directly
    or in ``abg-coqa/``).

    Raises:
        FileNotFoundError: no such file, or the folder lacks the split's file.
        DatasetFormatError: the file is not JSON, has no ``data`` list, or holds a story that is not an object.
    """
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    name = f"coqa_abg_{'val' if split == 'validation' else split}.json"
    if path.is_dir():
        candidates = [path / name, path / "abg-coqa" / name]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{path}: no {name} (looked in {', '.join(map(str, candidates))})")
        path = found
    try:
        blob = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(
            str(path), 0, "data", f"not valid JSON (line {exc.lineno}: {exc.msg})"
        ) from None
    stories = blob.get("data") if isinstance(blob, Mapping) else None
    if not isinstance(stories, list):
        raise DatasetFormatError(str(path), 0, "data", "expected a JSON object with a 'data' list of stories")
    for index, story in enumerate(stories):
        if not isinstance(story, Mapping):
            raise DatasetFormatError(str(path), index, "data", "expected an object per story")
    return stories, str(path)


ADAPTORS: dict[str, Adaptor] = {
    "math_hard": Adaptor(
        name="math_hard",
        hub="lighteval/MATH-Hard",
        hub_split=None,
        task_key="math",
        task=None,
        options=AdaptorOptions,
        splits=("train", "test"),
        adapt=_math_hard,
    ),
    "medium": Adaptor(
        name="medium",
        hub="Kamaljp/medium_articles",
        hub_split="train",
        task_key="medium",
        task=None,
        options=MediumOptions,
        splits=("train", "test"),
        adapt=_medium,
    ),
    "bigcodebench": Adaptor(
        name="bigcodebench",
        hub="bigcode/bigcodebench",
        hub_split="v0.1.2",
        task_key="bigcodebench",
        task=None,
        options=BigCodeBenchOptions,
        splits=("train", "test"),
        adapt=_bigcodebench,
    ),
    "abg_coqa": Adaptor(
        name="abg_coqa",
        hub=None,
        hub_split=None,
        task_key=None,
        task=("qa", "answering questions about a story"),  # a task-type label (fidelity.md 1.17)
        options=AbgCoQAOptions,
        splits=("train", "val", "validation", "test"),
        adapt=_abg_coqa,
    ),
}
"""The adaptors, by ``--adaptor`` name."""

_OPTION = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def adaptor_options(adaptor: Adaptor, items: Sequence[str]) -> AdaptorOptions:
    """Parse ``--adaptor_option KEY=VALUE`` items into the adaptor's options model.

    Raises:
        ValueError: a malformed item, an unknown key or a bad value (the message names the option).
    """
    values: dict[str, str] = {}
    for item in items:
        match = _OPTION.match(item)
        if not match:
            raise ValueError(f"--adaptor_option expects KEY=VALUE, got {item!r}")
        values[match.group(1)] = match.group(2)
    try:
        return adaptor.options.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '?'}: {e['msg']}" for e in exc.errors())
        known = ", ".join(adaptor.options.model_fields) or "none"
        raise ValueError(
            f"--adaptor_option for {adaptor.name}: {problems} (known options: {known})"
        ) from None


def load_adapted_rows(
    name: str, dataset: str, split: str, option_items: Sequence[str], num_proc: int | None = None
):
    """Read ``dataset`` through adaptor ``name`` and return ``(adaptor, rows, source label)``.

    Args:
        name: a key of :data:`ADAPTORS`.
        dataset: the adaptor's hub name, another hub name in the same schema, or a local file / folder in it.
        split: which split of the task (``train`` / ``test``; Abg-CoQA also ``val``).
        option_items: ``--adaptor_option`` items.
        num_proc: processes ``datasets`` uses to prepare a hub or file source.

    Returns:
        ``(adaptor, rows, source)``: the rows in the single-turn schema (``problem``, ``solution``, ...).

    Raises:
        DatasetFormatError: a row lacks a field of the published schema or has one of the wrong type (names
            file, row and field).
        ValueError: an unknown adaptor or split, or bad options.
        FileNotFoundError: a local source that does not exist.
    """
    from .io import load_source_dataset

    adaptor = ADAPTORS.get(name)
    if adaptor is None:
        raise ValueError(f"unknown --adaptor {name!r}; known: {sorted(ADAPTORS)}")
    if split not in adaptor.splits:
        raise ValueError(f"--adaptor {name}: --split must be one of {list(adaptor.splits)}, got {split!r}")
    options = adaptor_options(adaptor, option_items)
    path = Path(dataset)
    if name == "abg_coqa":
        raw, source = _abg_coqa_rows(path, split)
    else:
        # A data file holds one split's rows (MATH-Hard) or all rows (the adaptors that split themselves);
        # a hub name or folder is read at the adaptor's hub split (a version for BigCodeBench) or --split.
        raw = list(load_source_dataset(dataset, split=adaptor.hub_split or split, num_proc=num_proc))
        source = dataset
    return adaptor, adaptor.adapt(raw, split, options, source), source
