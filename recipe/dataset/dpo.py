"""Preference pairs for DPO from scored multi-turn rows (``process_dataset.py --dataset_type dpo``).

Every (conversation, turn) of a multi-turn dataset (the published ``collabllm-multiturn-*`` data, or the
output of ``build_dataset.py --mode conversations``) holds several candidate replies to the same
conversation prefix, each with its multiturn-aware reward (``score``). As in the original CollabLLM data
engine, the pair of one turn is its highest-scoring candidate (chosen) and its lowest-scoring one
(rejected); turns with fewer than two candidates, or whose score gap is below a minimum (0.02 by default),
give no pair. Ties as in the original: the first of equally high candidates (in source order) is chosen,
the last of equally low ones rejected (docs/fidelity.md 7.1).

The rows use the conversational preference format that TRL's ``DPOTrainer`` reads: ``prompt`` (system
prompt, then the conversation so far), ``chosen`` and ``rejected`` (one assistant message each), plus
``score_chosen`` / ``score_rejected``. No verl import.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .rows import ConvertedRow, DatasetFormatError, SourceSpec, require_completion, with_system

__all__ = ["DEFAULT_MIN_GAP", "DpoStats", "dpo_pairs"]

logger = logging.getLogger(__name__)

DEFAULT_MIN_GAP = 0.02  # the original data engine's minimum score gap between chosen and rejected


@dataclass
class DpoStats:
    """Counts of one conversion (all in turns, i.e. distinct (conversation, turn) pairs).

    Attributes:
        turns: turns seen.
        single_candidate: turns with one candidate only (no pair possible).
        below_gap: turns whose best and worst scores differ by less than the minimum gap.
        pairs: pairs written.
    """

    turns: int = 0
    single_candidate: int = 0
    below_gap: int = 0
    pairs: int = 0


def _turn_key(row: ConvertedRow) -> tuple[str, int]:
    return row.group, int(row.rank[0])


def _score(row: ConvertedRow) -> float:
    return float(row.rl["extra_info"]["score"])


def dpo_pairs(
    spec: SourceSpec, rows: Iterable[ConvertedRow], *, min_gap: float = DEFAULT_MIN_GAP
) -> tuple[list[tuple[str, dict[str, Any]]], DpoStats]:
    """Build one chosen/rejected pair per (conversation, turn) with at least two candidates.

    Args:
        spec: the source (its system prompt is prepended to every prompt).
        rows: converted multi-turn rows with a completion and a score.
        min_gap: smallest ``score_chosen - score_rejected`` kept (>= 0).

    Returns:
        ``(pairs, stats)``: ``(group, row)`` pairs in order of each turn's first row (``group`` keeps a
        conversation in one split), each row holding ``prompt`` (message list), ``chosen``, ``rejected``
        (one-message lists), ``score_chosen``, ``score_rejected``, ``data_source`` and ``extra_info``
        (``conv_id``, ``turn_id``, ``num_candidates``, ``index_chosen``, ``index_rejected``: source rows).

    Raises:
        DatasetFormatError: a row without completion or score, or two rows of one turn with different
            prompts (the message names the row).
        ValueError: ``min_gap`` is negative or not finite.
    """
    if not math.isfinite(min_gap) or min_gap < 0:
        raise ValueError(f"--dpo_min_gap must be a finite number >= 0, got {min_gap}")
    turns: dict[tuple[str, int], list[ConvertedRow]] = {}
    for row in rows:
        require_completion(spec, row, "--dataset_type dpo")
        if spec.schema != "multiturn" or row.rl["extra_info"]["score"] is None:
            raise DatasetFormatError(
                spec.source, row.index, "score", "missing; --dataset_type dpo needs scored multi-turn rows"
            )
        candidates = turns.setdefault(_turn_key(row), [])
        if candidates and candidates[0].history != row.history:
            raise DatasetFormatError(
                spec.source,
                row.index,
                "prompt",
                f"differs from row {candidates[0].index}, which has the same conv_id and turn_id",
            )
        candidates.append(row)

    stats = DpoStats(turns=len(turns))
    pairs = []
    for (group, turn), candidates in turns.items():
        if len(candidates) < 2:
            stats.single_candidate += 1
            continue
        chosen = max(candidates, key=_score)  # max keeps the first of equal scores
        rejected = min(reversed(candidates), key=_score)  # the last of equal scores, as the original
        if _score(chosen) - _score(rejected) < min_gap:
            stats.below_gap += 1
            continue
        info = chosen.rl["extra_info"]
        pairs.append(
            (
                group,
                {
                    "prompt": with_system(spec, chosen.history),
                    "chosen": [{"role": "assistant", "content": chosen.completion}],
                    "rejected": [{"role": "assistant", "content": rejected.completion}],
                    "score_chosen": _score(chosen),
                    "score_rejected": _score(rejected),
                    "data_source": spec.data_source,
                    "extra_info": {
                        "conv_id": info["conv_id"],
                        "turn_id": turn,
                        "num_candidates": len(candidates),
                        "index_chosen": chosen.index,
                        "index_rejected": rejected.index,
                        "single_turn_prompt": info["single_turn_prompt"],
                    },
                },
            )
        )
    stats.pairs = len(pairs)
    logger.info("DPO: %s", json.dumps(stats.__dict__))
    return pairs, stats
