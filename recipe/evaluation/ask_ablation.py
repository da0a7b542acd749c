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

The results also hold ``conversations`` (each evaluation's counts, failures included) and, given the GRPO
conversation dumps, ``heldin_signal`` (:func:`heldin_signal`: what the training reward paid on held-in rows
for asking vs answering, by ambiguity).

Statistics: :func:`~.statistics.bootstrap_interval` and :func:`~.statistics.paired_difference` (the
``compare`` code path). CLI::

    python -m collabllm_verl.recipe.evaluation.ask_ablation --run base=DIR --run w0=DIR --run w2=DIR \\
        [--dump w0=DUMP --dump w2=DUMP --rows heldin.jsonl] --settings settings.json --out results.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from collabllm_verl.metrics.asks_question import asks_a_question, first_reply_asks
from collabllm_verl.recipe.dataset.ambiguity_family import validate_row
from collabllm_verl.recipe.dataset.jsonl import iter_json_lines, read_json_lines

from .compare import load_run
from .statistics import DEFAULT_RESAMPLES, bootstrap_interval, paired_difference, task_values

__all__ = ["MEASURES", "ablation_results", "arm_measures", "heldin_signal", "main", "measure_records"]

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


def _rows_by_opener(rows_file: Path) -> dict[str, bool]:
    """``{opener: ambiguous}`` of a rows file of the family, each row checked against its schema."""
    flags = {}
    for _, index, row in iter_json_lines(rows_file):
        validate_row(row, source=str(rows_file), index=index)
        flags[row["opener"].strip()] = row["ambiguous"]
    return flags


def _cell(entries: Sequence[tuple[float, float | None, bool]]) -> dict[str, Any]:
    successes = [s for _, s, skipped in entries if not skipped and s is not None]
    return {
        "n": len(entries),
        "skipped": sum(skipped for _, _, skipped in entries),
        "reward_mean": float(np.mean([r for r, _, _ in entries])) if entries else None,
        "success_mean": float(np.mean(successes)) if successes else None,
    }


def heldin_signal(dump_dir: Path, rows_file: Path) -> dict[str, Any]:
    """What the training reward paid on the held-in rows for a first reply that asks vs one that answers.

    Reads every ``step_*.jsonl`` of a GRPO run's conversation dump (one record per trained response: its
    reward, its ``must_contain`` mean over the S futures, whether forward sampling was skipped) and takes
    each response's ``ambiguous`` flag from ``rows_file`` (the family's JSONL), matched by the opener (the
    first user message of the record's history). Asking is :func:`asks_a_question` of the response.

    Returns:
        ``{"ambiguous": {"asks": C, "answers": C, "advantage": A}, "clear": {...}}`` where ``C`` is
        ``{"n", "skipped", "reward_mean", "success_mean"}`` (responses; mean reward of all of them, in reward
        units; mean ``must_contain`` in [0, 1] of those not skipped) and ``A`` = reward_mean(asks) -
        reward_mean(answers) (None when either is empty): the learning signal for asking on such rows.

    Raises:
        FileNotFoundError: no step file in ``dump_dir``.
        ValueError: a record whose opener is not in ``rows_file``; a rows file line that is not JSON or breaks
            the family's schema (``JsonLinesError`` / ``DatasetFormatError``, naming the file, row and field).
    """
    flags = _rows_by_opener(rows_file)
    step_files = sorted(Path(dump_dir).glob("step_*.jsonl"))
    if not step_files:
        raise FileNotFoundError(f"no step_*.jsonl in {dump_dir}: not a conversation dump folder")
    cells: dict[tuple[bool, bool], list[tuple[float, float | None, bool]]] = {}
    for path in step_files:
        for record in read_json_lines(path):
            opener = next((m["content"] for m in record["history"] if m.get("role") == "user"), "").strip()
            if opener not in flags:
                raise ValueError(f"{path}: opener {opener[:60]!r} is not a row of {rows_file}")
            success = (record.get("metrics") or {}).get("must_contain", {}).get("mean")
            skipped = bool((record.get("forward_sampling") or {}).get("skip_reason"))
            key = (flags[opener], asks_a_question(record.get("response") or ""))
            cells.setdefault(key, []).append((float(record["reward"]), success, skipped))
    out = {}
    for ambiguous, name in ((True, "ambiguous"), (False, "clear")):
        asks, answers = _cell(cells.get((ambiguous, True), [])), _cell(cells.get((ambiguous, False), []))
        both = asks["n"] and answers["n"]
        advantage = asks["reward_mean"] - answers["reward_mean"] if both else None
        out[name] = {"asks": asks, "answers": answers, "advantage": advantage}
    return out


def ablation_results(
    runs: Mapping[str, Path],
    settings: Mapping[str, Any],
    *,
    dumps: Mapping[str, Path] | None = None,
    rows_file: Path | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """The ``results.json`` content (module docstring) of the runs ``{"base": dir, "w0": dir, "w2": dir}``.

    Besides ``arms``, ``vs_base`` and ``settings``: ``conversations`` (per arm, the evaluation's counts:
    expected, scored, conversation failures kept out of every measure, end reasons) and, when ``dumps``
    (``{"w0": dump dir, ...}``) and ``rows_file`` (the held-in rows) are given, ``heldin_signal``: per trained
    arm, :func:`heldin_signal` of its conversation dump.

    Raises:
        ValueError: no ``base`` run, a run that was not made on the family's rows, or ``dumps`` without
            ``rows_file``.
        FileNotFoundError: a run folder that is not a finished evaluation, or a dump without step files.
    """
    if BASE not in runs:
        raise ValueError(f"the ablation needs a {BASE!r} run, got {sorted(runs)}")
    if dumps and rows_file is None:
        raise ValueError("the held-in signal of the dumps needs the held-in rows file")
    loaded = {label: load_run(Path(path)) for label, path in runs.items()}
    measured = {label: measure_records(records) for label, (_, records) in loaded.items()}
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
    keys = ("expected", "scored", "conversation_failures", "end_reasons")
    conversations = {label: {k: s["conversations"].get(k) for k in keys} for label, (s, _) in loaded.items()}
    results = {"arms": arms, "vs_base": vs_base, "settings": dict(settings), "conversations": conversations}
    if dumps:
        results["heldin_signal"] = {
            label: heldin_signal(Path(d), Path(rows_file)) for label, d in dumps.items()
        }
    return results


def main(argv: list[str] | None = None) -> int:
    """CLI: write ``results.json`` atomically; prints the ambiguous-row rates of each arm."""
    p = argparse.ArgumentParser(description="results.json of the ask-when-needed ablation")
    p.add_argument(
        "--run", action="append", required=True, metavar="LABEL=DIR", help="an evaluate.py run folder"
    )
    p.add_argument(
        "--settings", default=None, help="JSON file of the run's settings, copied into the results"
    )
    p.add_argument(
        "--dump", action="append", default=[], metavar="LABEL=DIR",
        help="a trained arm's conversation dump folder (RUN/checkpoints/conversations), for heldin_signal",
    )  # fmt: skip
    p.add_argument("--rows", default=None, help="the held-in rows file (JSONL of the family), with --dump")
    p.add_argument("--out", required=True, help="results.json to write")
    p.add_argument("--bootstrap_resamples", type=int, default=DEFAULT_RESAMPLES)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    labelled = {"--run": {}, "--dump": {}}
    for flag, items in (("--run", args.run), ("--dump", args.dump)):
        for item in items:
            label, sep, path = item.partition("=")
            if not sep or not label:
                print(f"error: {flag} expects LABEL=DIR, got {item!r}", file=sys.stderr)
                return 2
            labelled[flag][label] = Path(path)
    settings = json.loads(Path(args.settings).read_text(encoding="utf-8")) if args.settings else {}
    try:
        results = ablation_results(
            labelled["--run"], settings, dumps=labelled["--dump"], rows_file=args.rows and Path(args.rows),
            n_resamples=args.bootstrap_resamples, seed=args.seed,
        )  # fmt: skip
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
    for label, signal in results.get("heldin_signal", {}).items():
        print(f"{label}, held-in training: reward(asks) - reward(answers) on ambiguous rows "
              f"{signal['ambiguous']['advantage']}, on clear rows {signal['clear']['advantage']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
