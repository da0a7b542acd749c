"""Turn CollabLLM multi-turn datasets, or plain single-turn datasets such as MATH, into verl parquet files
(RL prompts, multi-turn SFT conversations) or DPO preference pairs.

Examples::

    # The published multi-turn data (hub name, local folder or file), RL rows for GRPO:
    python process_dataset.py --dataset collabllm/collabllm-multiturn-math-hard \
        --local_dir ~/data/collabllm-math-hard --dataset_type rl
    # The bundled MATH level-5 problems, SFT rows:
    python process_dataset.py --dataset data/math/math500_level5.jsonl \
        --local_dir ~/data/collabllm-math-hard --dataset_type sft

    # Preference pairs (chosen = best, rejected = worst candidate of each turn) for TRL's DPOTrainer:
    python process_dataset.py --dataset collabllm/collabllm-multiturn-math-hard \
        --local_dir ~/data/collabllm-math-hard --dataset_type dpo

Writes ``{kind}_train.parquet``, ``{kind}_validation.parquet`` and ``{kind}_preview.json`` (kind = rl, sft or
dpo) into ``--local_dir``, all or nothing. Every flag: docs/datasets.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

from collabllm_verl.recipe.dataset.dpo import DEFAULT_MIN_GAP, dpo_pairs
from collabllm_verl.recipe.dataset.io import write_outputs_atomically
from collabllm_verl.recipe.dataset.rows import (
    DatasetFormatError,
    best_sft_rows,
    dedupe_rl_rows,
    sft_rows_reaching,
    split_by_group,
    with_system_prompt_share,
)
from collabllm_verl.recipe.dataset.source import add_source_arguments, load_rows

logger = logging.getLogger("process_dataset")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_source_arguments(p)
    p.add_argument("--local_dir", required=True, help="output folder")
    p.add_argument(
        "--dataset_type",
        required=True,
        choices=["rl", "sft", "dpo"],
        help="verl RL rows, multi-turn SFT rows, or DPO preference pairs (TRL's conversational format)",
    )
    p.add_argument(
        "--dpo_min_gap",
        type=float,
        default=DEFAULT_MIN_GAP,
        help=f"dpo: drop a turn whose best and worst scores differ by less than this (default {DEFAULT_MIN_GAP})",
    )
    p.add_argument("--validation_size", type=float, default=0.1,
                   help="fraction (< 1) or number (>= 1) of conversations held out for validation (default 0.1)")
    p.add_argument("--seed", type=int, default=42, help="seed of the train/validation split (default 42)")
    p.add_argument("--preview_rows", type=int, default=3, help="rows written to the JSON preview (default 3)")
    p.add_argument(
        "--add_system_prompt_ratio",
        type=float,
        default=1.0,
        help="share of the output rows that carry the system prompt, chosen at random with --seed; the others "
        "start with the user (default 1: every row)",
    )
    p.add_argument(
        "--sft_min_score",
        type=float,
        default=None,
        help="sft: keep only conversations whose chosen reply's score is at least this (default: keep all)",
    )
    p.add_argument(
        "--sft_score_field",
        default="score",
        help="sft: what --sft_min_score compares: 'score' (default) or 'rewards.<metric>' (the mean of the row's "
        "rewards[<metric>] values, e.g. rewards.accuracy)",
    )
    return p.parse_args(argv)


def process(args: argparse.Namespace) -> dict[str, Path]:
    """Run the conversion described by ``args``; return the written files.

    Raises:
        DatasetFormatError: a source row lacks a required field or has one of the wrong type, or a line of
            a JSON Lines source is not one JSON object (:class:`~collabllm_verl.recipe.dataset.rows.JsonLinesError`);
            the message names file, row or line, and field. Nothing is written.
        ValueError: no row matched the filters, the split sizes are impossible, ``--sft_min_score`` without
            ``--dataset_type sft`` or on unscored rows (or leaving no conversation), or an
            ``--add_system_prompt_ratio`` outside [0, 1] or without a system prompt.
    """
    if args.sft_min_score is not None and args.dataset_type != "sft":
        raise ValueError("--sft_min_score applies to --dataset_type sft only")
    spec, converted, filters = load_rows(args)
    if spec.schema == "single_turn" and args.dataset_type != "dpo":
        logger.warning(
            "%s is a single-turn source: every prompt holds the whole task, so the policy never meets an "
            "underspecified request. For CollabLLM training, first write simulated openers with "
            "build_dataset.py --mode openers (or full conversations with --mode conversations).",
            args.dataset,
        )

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
    elif args.dataset_type == "sft":
        items = best_sft_rows(spec, converted)
        logger.info("SFT rows: %d conversations from %d source rows", len(items), len(converted))
        if args.sft_min_score is not None:
            items, dropped = sft_rows_reaching(spec, items, converted, args.sft_min_score, args.sft_score_field)
            logger.info(
                "SFT floor %s >= %g: %d kept, %d dropped", args.sft_score_field, args.sft_min_score, len(items), dropped
            )
            if not items:
                raise ValueError(f"{args.dataset}: no conversation reaches --sft_min_score {args.sft_min_score}")
    else:
        items, stats = dpo_pairs(spec, converted, min_gap=args.dpo_min_gap)
        logger.info(
            "DPO pairs: %d from %d turns (%d with one candidate, %d below the minimum gap %g)",
            stats.pairs, stats.turns, stats.single_candidate, stats.below_gap, args.dpo_min_gap,
        )
        if not items:
            raise ValueError(f"{args.dataset}: no DPO pair left (turns: {stats.turns}, see the counts above)")

    with_prompt = len(items)
    if args.add_system_prompt_ratio != 1.0:
        if spec.system_prompt is None:
            raise ValueError("--add_system_prompt_ratio needs a system prompt (not --system_prompt none)")
        items, with_prompt = with_system_prompt_share(items, args.add_system_prompt_ratio, args.seed)
        logger.info("system prompt on %d of %d rows", with_prompt, len(items))
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
        "rows_with_system_prompt": with_prompt if spec.system_prompt is not None else 0,
        "sft_min_score": args.sft_min_score,
        "sft_score_field": args.sft_score_field if args.sft_min_score is not None else None,
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
