"""Reading a source dataset the same way in every CLI (``process_dataset.py``, evaluation, data
generation): the shared flags, the task description, the system prompt, and the filtered, converted rows.

No verl import. Errors name the file, the row and the field (:class:`~.rows.DatasetFormatError`).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .adaptors import ADAPTORS, load_adapted_rows
from .io import load_source_dataset
from .rows import ConvertedRow, SourceSpec, convert_row, detect_schema, row_matches
from .system_prompt import COLLABORATOR_SYSTEM_PROMPT

__all__ = [
    "BUILD_MANIFEST",
    "GENERIC_TASK",
    "TASKS",
    "adaptor_task",
    "add_source_arguments",
    "build_spec",
    "built_dataset_info",
    "load_rows",
    "parse_filters",
    "system_prompt_from_arg",
    "task_for",
]

logger = logging.getLogger(__name__)

# (ability, task description for the user simulator), chosen by a keyword of the dataset name. As in the
# originals the description is a short label of the task type, not a sentence about what the user wants
# (the hidden goal carries that): the verl recipe's default is a math label, the authors' code has one label
# per dataset (question answering, document editing, code generation); these are our words for them
# (docs/fidelity.md 1.17).
TASKS = {
    "math": ("math", "math problem solving"),
    "medium": ("writing", "editing a document"),
    "bigcodebench": ("coding", "generating code"),
    # the ambiguity-controlled family; its rows carry their own task_desc, which is the one used
    "ambiguity": ("general", "writing a short text"),
}
GENERIC_TASK = ("general", "help with a general task")
PROGRESS_MIN_ROWS = 1000
# Written by build_dataset.py into its output folder: the task description, ability and data_source of the
# single-turn source, so that reading the folder back keeps them.
BUILD_MANIFEST = "build_dataset.json"


def add_source_arguments(parser: argparse.ArgumentParser, *, system_prompt_help: str | None = None) -> None:
    """Add the flags that choose and read a source dataset (shared by every CLI).

    Args:
        system_prompt_help: help text of ``--system_prompt`` when the CLI uses it differently from
            ``process_dataset.py`` (whose default is the project's prompt).
    """
    p = parser
    p.add_argument(
        "--dataset", required=True, help="hub name, local dataset folder, or .jsonl/.json/.parquet/.csv file"
    )
    p.add_argument("--split", default="train", help="source split of a hub dataset or folder (default train)")
    p.add_argument(
        "--schema",
        choices=["auto", "multiturn", "single_turn"],
        default="auto",
        help="source schema; auto = multiturn when the CollabLLM columns are present",
    )
    p.add_argument("--prompt_field", default="problem", help="single-turn: column with the request (default problem)")
    p.add_argument(
        "--reference_field",
        default="solution",
        help="single-turn: column with the reference answer used as ground truth (default solution)",
    )
    p.add_argument(
        "--answer_field",
        default="answer",
        help="single-turn: optional column with a short final answer, kept in extra_info (default answer)",
    )
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="keep rows whose FIELD equals VALUE as text (repeatable; e.g. --filter level=5)",
    )
    p.add_argument("--data_source", default=None, help="data_source column value (default: dataset name)")
    p.add_argument(
        "--task_desc", default=None, help="task description for the user simulator (default: by dataset name)"
    )
    p.add_argument(
        "--system_prompt",
        default=None,
        help=system_prompt_help
        or "file holding the assistant's system prompt, or 'none' (default: the project's prompt)",
    )
    p.add_argument("--max_rows", type=int, default=None, help="use only the first N matching source rows")
    p.add_argument("--num_proc", type=int, default=None, help="processes datasets uses to prepare the source")
    p.add_argument(
        "--adaptor",
        choices=sorted(ADAPTORS),
        default=None,
        help="read a raw source of the paper's tasks (or Abg-CoQA) in its published schema, with its split "
        "rules: " + "; ".join(f"{a.name}: {a.hub or 'local JSON files'}" for a in ADAPTORS.values()),
    )
    p.add_argument(
        "--adaptor_option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the adaptor (repeatable; e.g. max_tokens=512, train_share=0.8, history=true, seed=42)",
    )


def parse_filters(items: list[str]) -> dict[str, str]:
    """``["level=5", ...]`` -> ``{"level": "5"}``.

    Raises:
        ValueError: an item without ``=`` or without a field name.
    """
    filters = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise ValueError(f"--filter expects FIELD=VALUE, got {item!r}")
        filters[field] = value
    return filters


def task_for(dataset: str, explicit_desc: str | None) -> tuple[str, str]:
    """(ability, task description) for a dataset name; ``explicit_desc`` overrides the description."""
    name = Path(dataset).name.lower() if Path(dataset).exists() else dataset.lower()
    ability, desc = next((task for keyword, task in TASKS.items() if keyword in name), GENERIC_TASK)
    if explicit_desc:
        return ability, explicit_desc
    if (ability, desc) == GENERIC_TASK:
        logger.warning("no task description known for %s; using a generic one (set --task_desc)", dataset)
    return ability, desc


def adaptor_task(name: str) -> tuple[str, str]:
    """(ability, task description) of the rows of adaptor ``name`` (:data:`~.adaptors.ADAPTORS`): those of
    :data:`TASKS` for the paper's three tasks, the adaptor's own for Abg-CoQA."""
    adaptor = ADAPTORS[name]
    return TASKS[adaptor.task_key] if adaptor.task_key else adaptor.task


def built_dataset_info(dataset: str) -> dict[str, Any]:
    """What ``build_dataset.py`` recorded about a folder it wrote (:data:`BUILD_MANIFEST`): ``task_desc``,
    ``ability``, ``data_source``, ...; an empty dict for any other source.

    Raises:
        ValueError: the manifest exists but is not a JSON object.
    """
    path = Path(dataset) / BUILD_MANIFEST
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(info, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return info


def system_prompt_from_arg(arg: str | None) -> str | None:
    """The assistant's system prompt: the project's (None), no prompt (``"none"``), or a file's text.

    Raises:
        FileNotFoundError: the file does not exist.
    """
    if arg is None or arg == "project":
        return COLLABORATOR_SYSTEM_PROMPT
    if arg.lower() == "none":
        return None
    return Path(arg).read_text(encoding="utf-8").strip()


def build_spec(args: argparse.Namespace, column_names: list[str]) -> SourceSpec:
    """Resolve the source flags and the source's columns into a :class:`SourceSpec`.

    A folder written by ``build_dataset.py`` supplies its own task description, ability and
    ``data_source`` (:func:`built_dataset_info`) unless ``--task_desc`` / ``--data_source`` are given; so
    does an ``--adaptor``, whose rows are always single-turn ``problem`` / ``solution`` / ``answer``.
    """
    adaptor = ADAPTORS.get(getattr(args, "adaptor", None) or "")
    if adaptor is not None:
        ability, task_desc = adaptor_task(adaptor.name)
        return SourceSpec(
            source=args.dataset,
            data_source=args.data_source or adaptor.name,
            schema="single_turn",
            ability=ability,
            task_desc=args.task_desc or task_desc,
            system_prompt=system_prompt_from_arg(args.system_prompt),
            prompt_field="problem",
            reference_field="solution",
            answer_field="answer",
        )
    schema = detect_schema(column_names) if args.schema == "auto" else args.schema
    path = Path(args.dataset)
    default_source = path.stem if path.is_file() else (path.name if path.is_dir() else args.dataset)
    built = built_dataset_info(args.dataset)
    if built.get("task_desc") and not args.task_desc:
        ability, task_desc = str(built.get("ability") or GENERIC_TASK[0]), str(built["task_desc"])
    else:
        ability, task_desc = task_for(args.dataset, args.task_desc)
    return SourceSpec(
        source=args.dataset,
        data_source=args.data_source or built.get("data_source") or default_source,
        schema=schema,
        ability=ability,
        task_desc=task_desc,
        system_prompt=system_prompt_from_arg(args.system_prompt),
        prompt_field=args.prompt_field,
        reference_field=args.reference_field,
        answer_field=args.answer_field or None,
    )


def load_rows(args: argparse.Namespace) -> tuple[SourceSpec, list[ConvertedRow], Mapping[str, Any]]:
    """Load the source named by the flags, filter it and convert every kept row.

    Returns:
        ``(spec, rows, filters)``: rows in source order, at most ``--max_rows``.

    Raises:
        DatasetFormatError: a kept row lacks a required field or has one of the wrong type (names file, row
            and field); :class:`~.rows.JsonLinesError`, a subclass, for a line of a JSON Lines file that is not
            one JSON object (names file, line, row and field).
        ValueError: a malformed ``--filter``, or no row left after the filters.
        FileNotFoundError: a local source that does not exist.
    """
    filters = parse_filters(args.filter)
    if getattr(args, "adaptor", None):
        _, dataset, _ = load_adapted_rows(
            args.adaptor, args.dataset, args.split, args.adaptor_option, num_proc=args.num_proc
        )
        spec = build_spec(args, ["problem", "solution"])
    else:
        dataset = load_source_dataset(args.dataset, split=args.split, num_proc=args.num_proc)
        spec = build_spec(args, list(dataset.column_names))
    logger.info("%s: %d rows, %s schema, data_source=%s", args.dataset, len(dataset), spec.schema, spec.data_source)
    converted = []
    rows = tqdm(dataset, total=len(dataset), desc="converting rows", disable=len(dataset) < PROGRESS_MIN_ROWS)
    for index, row in enumerate(rows):
        if filters and not row_matches(row, filters):
            continue
        converted.append(convert_row(spec, index, row))
        if args.max_rows is not None and len(converted) >= args.max_rows:
            break
    if not converted:
        raise ValueError(f"{args.dataset}: no rows left after filters {filters or '(none)'}")
    return spec, converted, filters
