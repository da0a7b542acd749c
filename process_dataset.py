"""Turn CollabLLM multi-turn datasets, or plain single-turn datasets such as MATH, into verl parquet files.

Examples::

    # The published multi-turn data (hub name, local folder or file), RL rows for GRPO:
    python process_dataset.py --dataset collabllm/collabllm-multiturn-math-hard \
        --local_dir ~/data/collabllm-math-hard --dataset_type rl
    # The bundled MATH level-5 problems, SFT rows:
    python process_dataset.py --dataset data/math/math500_level5.jsonl \
        --local_dir ~/data/collabllm-math-hard --dataset_type sft

Writes ``{rl|sft}_train.parquet``, ``{rl|sft}_validation.parquet`` and ``{rl|sft}_preview.json`` into
``--local_dir``, all or nothing. See README.md ("Processing datasets") for every flag.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from collabllm_verl.recipe.dataset.io import load_source_dataset, write_outputs_atomically
from collabllm_verl.recipe.dataset.rows import (
    DatasetFormatError,
    SourceSpec,
    best_sft_rows,
    convert_row,
    dedupe_rl_rows,
    detect_schema,
    row_matches,
    split_by_group,
)
from collabllm_verl.recipe.dataset.system_prompt import COLLABORATOR_SYSTEM_PROMPT

logger = logging.getLogger("process_dataset")

# (ability, task description for the user simulator), chosen by a keyword of the dataset name.
TASKS = {
    "math": ("math", "The user needs help solving a math problem and wants a correct final answer."),
    "medium": ("writing",
               "The user needs help writing a document (an article or a blog post) that meets their requirements."),
    "bigcodebench": ("coding", "The user needs a working Python function for a programming task."),
}
GENERIC_TASK = ("general", "The user needs help with a task and wants a useful, correct result.")
PROGRESS_MIN_ROWS = 1000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True,
                   help="hub name, local dataset folder, or .jsonl/.json/.parquet/.csv file")
    p.add_argument("--local_dir", required=True, help="output folder")
    p.add_argument("--dataset_type", required=True, choices=["rl", "sft"], help="verl RL rows or multi-turn SFT rows")
    p.add_argument("--task_desc", default=None,
                   help="task description for the user simulator (default: by dataset name)")
    p.add_argument("--validation_size", type=float, default=0.1,
                   help="fraction (< 1) or number (>= 1) of conversations held out for validation (default 0.1)")
    p.add_argument("--seed", type=int, default=42, help="seed of the train/validation split (default 42)")
    p.add_argument("--num_proc", type=int, default=None, help="processes datasets uses to prepare the source")
    p.add_argument("--split", default="train", help="source split of a hub dataset or folder (default train)")
    p.add_argument("--schema", choices=["auto", "multiturn", "single_turn"], default="auto",
                   help="source schema; auto = multiturn when the CollabLLM columns are present")
    p.add_argument("--prompt_field", default="problem", help="single-turn: column with the request (default problem)")
    p.add_argument("--reference_field", default="solution",
                   help="single-turn: column with the reference answer used as ground truth (default solution)")
    p.add_argument("--answer_field", default="answer",
                   help="single-turn: optional column with a short final answer, kept in extra_info (default answer)")
    p.add_argument("--filter", action="append", default=[], metavar="FIELD=VALUE",
                   help="keep rows whose FIELD equals VALUE as text (repeatable; e.g. --filter level=5)")
    p.add_argument("--data_source", default=None, help="data_source column value (default: dataset name)")
    p.add_argument("--system_prompt", default=None,
                   help="file holding the assistant's system prompt, or 'none' (default: the project's prompt)")
    p.add_argument("--max_rows", type=int, default=None, help="use only the first N matching source rows")
    p.add_argument("--preview_rows", type=int, default=3, help="rows written to the JSON preview (default 3)")
    return p.parse_args(argv)


def _parse_filters(items: list[str]) -> dict[str, str]:
    filters = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise SystemExit(f"--filter expects FIELD=VALUE, got {item!r}")
        filters[field] = value
    return filters


def _task(dataset: str, explicit_desc: str | None) -> tuple[str, str]:
    """(ability, task description) for a dataset name; ``--task_desc`` overrides the description."""
    name = Path(dataset).name.lower() if Path(dataset).exists() else dataset.lower()
    ability, desc = next((task for keyword, task in TASKS.items() if keyword in name), GENERIC_TASK)
    if explicit_desc:
        return ability, explicit_desc
    if (ability, desc) == GENERIC_TASK:
        logger.warning("no task description known for %s; using a generic one (set --task_desc)", dataset)
    return ability, desc


def _system_prompt(arg: str | None) -> str | None:
    if arg is None:
        return COLLABORATOR_SYSTEM_PROMPT
    if arg.lower() == "none":
        return None
    return Path(arg).read_text(encoding="utf-8").strip()


def build_spec(args: argparse.Namespace, column_names: list[str]) -> SourceSpec:
    """Resolve the CLI arguments and the source columns into a :class:`SourceSpec`."""
    schema = detect_schema(column_names) if args.schema == "auto" else args.schema
    path = Path(args.dataset)
    default_source = path.stem if path.is_file() else (path.name if path.is_dir() else args.dataset)
    ability, task_desc = _task(args.dataset, args.task_desc)
    return SourceSpec(
        source=args.dataset,
        data_source=args.data_source or default_source,
        schema=schema,
        ability=ability,
        task_desc=task_desc,
        system_prompt=_system_prompt(args.system_prompt),
        prompt_field=args.prompt_field,
        reference_field=args.reference_field,
        answer_field=args.answer_field or None,
    )


def process(args: argparse.Namespace) -> dict[str, Path]:
    """Run the conversion described by ``args``; return the written files.

    Raises:
        DatasetFormatError: a source row lacks a required field (nothing is written).
        ValueError: no row matched the filters, or the split sizes are impossible.
    """
    filters = _parse_filters(args.filter)
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

    fallbacks = sum(row.ground_truth_from_completion for row in converted)
    if fallbacks:
        logger.warning(
            "%d of %d rows have no single_turn_completion: their ground truth is their completion", fallbacks,
            len(converted),
        )
    if args.dataset_type == "rl":
        unique = dedupe_rl_rows(converted)
        items = [(row.group, row.rl) for row in unique]
        logger.info("RL rows: %d converted, %d after removing duplicate prompts", len(converted), len(unique))
    else:
        items = best_sft_rows(spec, converted)
        logger.info("SFT rows: %d conversations from %d source rows", len(items), len(converted))

    train, validation = split_by_group(items, args.validation_size, args.seed)
    kind = args.dataset_type
    preview = {
        "source": args.dataset,
        "schema": spec.schema,
        "filters": filters,
        "num_train": len(train),
        "num_validation": len(validation),
        # source rows (after filters) without single_turn_completion, whose completion is the ground truth
        "ground_truth_from_completion": fallbacks,
        "rows": train[: args.preview_rows],
    }
    written = write_outputs_atomically(
        args.local_dir,
        {f"{kind}_train.parquet": pd.DataFrame(train), f"{kind}_validation.parquet": pd.DataFrame(validation)},
        {f"{kind}_preview.json": preview},
    )
    logger.info("wrote %d train and %d validation rows to %s", len(train), len(validation), args.local_dir)
    return written


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        process(args)
    except (DatasetFormatError, ValueError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
