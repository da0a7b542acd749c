"""``results.json`` of the ask-when-needed ablation (``benchmarks/bench_ask_when_needed.sh``).

Reads finished ``evaluate.py`` runs of the same held-out rows of the ambiguity-controlled family (base model,
the w = 0 and the w = 2 GRPO checkpoints) and writes::

    {"arms": {"base": M, "w0": M, "w2": M}, "vs_base": {"w0": D, "w2": D}, "settings": {...}}

where ``M`` maps each measure of :data:`MEASURES` to ``{"mean", "low", "high", "n"}`` (mean over tasks of the
per-task means, 95 % bootstrap interval over tasks, number of tasks) and ``D`` gives the paired difference
(arm - base, paired by task id) of each in the same form. Per conversation (``conversations.jsonl``):

* ``ask_rate_ambiguous`` / ``ask_rate_clear``: 1 when the first reply requests information
  (:func:`collabllm_verl.metrics.asks_question.asks_a_question`), over the ambiguous / clear rows;
* ``success_ambiguous`` / ``success_clear``: the ``must_contain`` metric, over the same rows;
* ``assistant_tokens``: the ``token_amount`` metric in cl100k tokens of the assistant messages (evaluate.py
  reports it in thousands; multiplied by 1000 here), over all rows;
* ``messages``: messages in the conversation, over all rows.

Statistics: :func:`~.statistics.bootstrap_interval` and :func:`~.statistics.paired_difference` (the
``compare`` code path). CLI::

    python -m collabllm_verl.recipe.evaluation.ask_ablation --run base=DIR --run w0=DIR --run w2=DIR \\
        --settings settings.json --out results.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from collabllm_verl.metrics.asks_question import first_reply_asks

from .compare import load_run
from .statistics import DEFAULT_RESAMPLES, bootstrap_interval, paired_difference, task_values

__all__ = ["MEASURES", "ablation_results", "arm_measures", "main", "measure_records"]

MEASURES = (
    "ask_rate_ambiguous",
    "ask_rate_clear",
    "success_ambiguous",
    "success_clear",
    "assistant_tokens",
    "messages",
)
BASE = "base"


def _measures(record: Mapping[str, Any]) -> dict[str, float | None]:
    metrics = record.get("metrics") or {}
    ambiguous = record.get("ambiguous")
    if not isinstance(ambiguous, bool):
        raise ValueError(
            f"record {record.get('key')!r} (row {record.get('row')}) has no 'ambiguous' flag: the evaluation was "
            "not run on rows of the ambiguity-controlled family"
        )
    asks = float(bool(first_reply_asks(record.get("messages") or [])))
    success = metrics.get("must_contain")
    tokens = metrics.get("token_amount")
    return {
        "ask_rate_ambiguous": asks if ambiguous else None,
        "ask_rate_clear": None if ambiguous else asks,
        "success_ambiguous": success if ambiguous else None,
        "success_clear": None if ambiguous else success,
        "assistant_tokens": None if tokens is None else float(tokens) * 1000.0,
        "messages": float(record["num_messages"]),
    }


def measure_records(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The scored records with :data:`MEASURES` as their ``metrics`` (None where a measure does not apply).

    Raises:
        ValueError: a record without the ``ambiguous`` flag (not a run on the family's rows).
    """
    return [
        {"task_id": r["task_id"], "status": "scored", "metrics": _measures(r)}
        for r in records
        if r.get("status") == "scored"
    ]


def _entry(mean: float | None, interval: tuple[float, float] | None, n: int) -> dict[str, Any]:
    return {
        "mean": mean,
        "low": interval[0] if interval else None,
        "high": interval[1] if interval else None,
        "n": n,
    }


def arm_measures(measured: Sequence[Mapping[str, Any]], *, n_resamples: int, seed: int) -> dict[str, dict]:
    """``M`` of one arm: per measure ``{"mean", "low", "high", "n"}`` over tasks."""
    out = {}
    for name in MEASURES:
        per_task = [float(np.mean(v)) for v in task_values(measured, name).values()]
        interval = bootstrap_interval(per_task, n_resamples=n_resamples, seed=seed) if per_task else None
        out[name] = _entry(float(np.mean(per_task)) if per_task else None, interval, len(per_task))
    return out


def ablation_results(
    runs: Mapping[str, Path],
    settings: Mapping[str, Any],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """The ``results.json`` content (module docstring) of the runs ``{"base": dir, "w0": dir, "w2": dir}``.

    Raises:
        ValueError: no ``base`` run, or a run that was not made on the family's rows.
        FileNotFoundError: a run folder that is not a finished evaluation.
    """
    if BASE not in runs:
        raise ValueError(f"the ablation needs a {BASE!r} run, got {sorted(runs)}")
    measured = {label: measure_records(load_run(Path(path))[1]) for label, path in runs.items()}
    arms = {label: arm_measures(m, n_resamples=n_resamples, seed=seed) for label, m in measured.items()}
    vs_base = {}
    for label, records in measured.items():
        if label == BASE:
            continue
        diffs = {}
        for name in MEASURES:
            d = paired_difference(measured[BASE], records, name, n_resamples=n_resamples, seed=seed)
            interval = None if d.ci_low is None else (d.ci_low, d.ci_high)
            diffs[name] = _entry(d.mean_diff, interval, d.n_tasks)
        vs_base[label] = diffs
    return {"arms": arms, "vs_base": vs_base, "settings": dict(settings)}


def main(argv: list[str] | None = None) -> int:
    """CLI: write ``results.json`` atomically; prints the ambiguous-row rates of each arm."""
    p = argparse.ArgumentParser(description="results.json of the ask-when-needed ablation")
    p.add_argument(
        "--run", action="append", required=True, metavar="LABEL=DIR", help="an evaluate.py run folder"
    )
    p.add_argument(
        "--settings", default=None, help="JSON file of the run's settings, copied into the results"
    )
    p.add_argument("--out", required=True, help="results.json to write")
    p.add_argument("--bootstrap_resamples", type=int, default=DEFAULT_RESAMPLES)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    runs = {}
    for item in args.run:
        label, sep, path = item.partition("=")
        if not sep or not label:
            print(f"error: --run expects LABEL=DIR, got {item!r}", file=sys.stderr)
            return 2
        runs[label] = Path(path)
    settings = json.loads(Path(args.settings).read_text(encoding="utf-8")) if args.settings else {}
    try:
        results = ablation_results(runs, settings, n_resamples=args.bootstrap_resamples, seed=args.seed)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out)
    for label, arm in results["arms"].items():
        asks, success = arm["ask_rate_ambiguous"], arm["success_ambiguous"]
        print(f"{label}: ask rate (ambiguous) {asks['mean']}, success (ambiguous) {success['mean']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
