"""Paired comparison of two evaluation runs (e.g. a trained checkpoint against its base model).

Both runs must have been evaluated on the same tasks (tasks are paired by ``task_id``, which depends only
on the hidden goal and the reference). For each metric both runs report, the per-task difference
B - A is averaged over the tasks scored in both, with a bootstrap interval over tasks
(:func:`~.statistics.paired_difference`); wins, ties and losses count the tasks where B is higher than,
equal to, lower than A (whether higher is better is the metric's arrow). Pairing removes the variation
between tasks from the comparison, so the interval of the difference is usually much narrower than the
two runs' own intervals suggest.

Outputs in the chosen folder: ``compare.json``, ``compare.md`` and ``compare.png``. No verl import.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from collabllm_verl.recipe.core.run_store import read_records

from .conversations import CONVERSATIONS_FILE
from .report import SUMMARY_JSON, MetricDisplay, atomic_write_text, format_value, metric_display, save_figure
from .statistics import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, paired_difference

__all__ = ["COMPARED_SETTINGS", "ProtocolMismatchError", "compare_runs", "load_run", "run_protocol"]

logger = logging.getLogger(__name__)

# Settings that should be equal for a comparison to be about the model under test only.
COMPARED_SETTINGS = (
    "dataset", "task_ids_sha", "user_model", "judge_model", "max_messages", "metrics", "metric_options",
    "task_desc",
)


def load_run(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(summary, records)`` of an evaluation run folder.

    Raises:
        FileNotFoundError: the folder lacks ``summary.json`` or ``conversations.jsonl`` (the message says
            to run or finish the evaluation first).
    """
    summary_path, records_path = run_dir / SUMMARY_JSON, run_dir / CONVERSATIONS_FILE
    for path in (summary_path, records_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {run_dir} is not a finished evaluate.py run folder")
    records, _ = read_records(records_path)
    return json.loads(summary_path.read_text(encoding="utf-8")), list(records.values())


class ProtocolMismatchError(ValueError):
    """The two runs of a comparison were evaluated under different protocols (``evaluate.py --protocol``):
    their reply caps, interactivity rubrics or default models differ, so B - A would not be the model's
    difference. ``compare --allow_mixed_protocols`` turns it into a warning."""


def run_protocol(summary: Mapping[str, Any]) -> str | None:
    """The protocol name recorded in a run's ``summary.json``; None for a run written before protocols
    were recorded."""
    protocol = summary.get("protocol")
    return protocol.get("name") if isinstance(protocol, Mapping) else None


def _check_protocols(run_a: Path, run_b: Path, protocol_a: str | None, protocol_b: str | None, allow: bool) -> None:
    if protocol_a == protocol_b:
        return
    message = (
        f"{run_a} was evaluated under protocol {protocol_a or '(not recorded)'!r} and {run_b} under "
        f"{protocol_b or '(not recorded)'!r}: reply cap, interactivity rubric or models differ, so the "
        "difference would not be the model's. Re-run one of them with the other's --protocol"
    )
    if not allow:
        raise ProtocolMismatchError(message + " (or pass --allow_mixed_protocols to compare anyway).")
    logger.warning("MIXED PROTOCOLS: %s; comparing anyway (--allow_mixed_protocols).", message)


def _label(summary: Mapping[str, Any], run_dir: Path) -> str:
    return str(summary.get("settings", {}).get("model_label") or run_dir.name)


def compare_runs(
    run_a: Path,
    run_b: Path,
    out_dir: Path,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    allow_mixed_protocols: bool = False,
) -> dict[str, Any]:
    """Compare run B against run A and write ``compare.json``, ``compare.md`` and ``compare.png``.

    Args:
        run_a, run_b: evaluation run folders (``--out`` of ``evaluate.py``); differences are B - A.
        out_dir: output folder (created).
        confidence, n_resamples, seed: bootstrap settings.
        allow_mixed_protocols: compare runs of different protocols anyway (a warning is logged, and
            ``compare.md`` opens with it) instead of raising.

    Returns:
        The ``compare.json`` content: ``run_a``/``run_b`` (path, label), ``metrics`` (per metric shared by
        both runs: :class:`~.statistics.PairedDifference` fields and ``label``), ``differing_settings``
        (settings other than the model under test that differ), ``protocols`` (``a``, ``b``: the names, ``mixed``)
        and ``bootstrap``.

    Raises:
        FileNotFoundError: a folder is not a run folder.
        ProtocolMismatchError: the runs' protocols differ and ``allow_mixed_protocols`` is False.
        ValueError: the runs share no metric, or no task.
    """
    summary_a, records_a = load_run(run_a)
    summary_b, records_b = load_run(run_b)
    protocol_a, protocol_b = run_protocol(summary_a), run_protocol(summary_b)
    _check_protocols(run_a, run_b, protocol_a, protocol_b, allow_mixed_protocols)
    shared = [name for name in summary_a["metrics"] if name in summary_b["metrics"]]
    if not shared:
        raise ValueError(f"{run_a} and {run_b} share no metric")
    metrics: dict[str, Any] = {}
    for name in shared:
        diff = paired_difference(
            records_a, records_b, name, confidence=confidence, n_resamples=n_resamples, seed=seed
        )
        metrics[name] = {**diff.as_dict(), "label": summary_a["metrics"][name].get("label", name)}
    if all(entry["n_tasks"] == 0 for entry in metrics.values()):
        raise ValueError(f"{run_a} and {run_b} have no scored task in common (were they run on the same data?)")
    settings_a, settings_b = summary_a.get("settings", {}), summary_b.get("settings", {})
    differing = {
        key: {"a": settings_a.get(key), "b": settings_b.get(key)}
        for key in COMPARED_SETTINGS
        if settings_a.get(key) != settings_b.get(key)
    }
    result = {
        "run_a": {"path": str(run_a), "label": _label(summary_a, run_a)},
        "run_b": {"path": str(run_b), "label": _label(summary_b, run_b)},
        "metrics": metrics,
        "metric_options": {name: summary_a["metrics"][name].get("options") or {} for name in shared},
        "differing_settings": differing,
        "protocols": {"a": protocol_a, "b": protocol_b, "mixed": protocol_a != protocol_b},
        "bootstrap": {"confidence": confidence, "resamples": n_resamples, "seed": seed, "unit": "task"},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "compare.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out_dir / "compare.md", compare_markdown(result))
    write_compare_figure(result, out_dir / "compare.png")
    return result


def compare_markdown(result: Mapping[str, Any]) -> str:
    """``compare.md``: per metric, A, B, the paired difference B - A with its interval, wins/ties/losses."""
    label_a, label_b = result["run_a"]["label"], result["run_b"]["label"]
    confidence = round(result["bootstrap"]["confidence"] * 100)
    protocols = result.get("protocols") or {}
    if protocols.get("mixed"):
        protocol_text = (
            f"**WARNING: mixed protocols** (A: `{protocols['a']}`, B: `{protocols['b']}`): the runs differ in "
            "reply cap, interactivity rubric or models, so B - A is not the model's difference alone."
        )
    else:
        protocol_text = f"Protocol: `{protocols.get('a') or 'not recorded'}` (both runs)."
    lines = [
        f"# {label_b} vs {label_a}",
        "",
        protocol_text,
        "",
        f"Paired by task: difference = B ({label_b}) - A ({label_a}), mean over the tasks scored in both runs, "
        f"[{confidence} % bootstrap interval over tasks].",
        "",
        "| metric | A | B | B - A | interval | tasks | B higher / equal / lower | only in A / only in B |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in result["metrics"].items():
        display = metric_display(name, result["metric_options"].get(name))
        diff = format_value(entry["mean_diff"], display)
        interval = (
            "—" if entry["ci_low"] is None
            else f"[{format_value(entry['ci_low'], display)}, {format_value(entry['ci_high'], display)}]"
        )
        lines.append(
            f"| {display.label}{display.arrow} | {format_value(entry['mean_a'], display)} | "
            f"{format_value(entry['mean_b'], display)} | {diff} | {interval} | {entry['n_tasks']} | "
            f"{entry['wins']} / {entry['ties']} / {entry['losses']} | {entry['only_a']} / {entry['only_b']} |"
        )
    lines.append("")
    if result["differing_settings"]:
        lines.append(
            "**Caution**: the runs differ in more than the model under test, so the difference is not the "
            "model's alone:"
        )
        for key, values in result["differing_settings"].items():
            lines.append(f"- `{key}`: A = `{values['a']}`, B = `{values['b']}`")
        lines.append("")
    return "\n".join(lines)


def write_compare_figure(result: Mapping[str, Any], path: Path) -> None:
    """``compare.png``: per metric, the paired difference B - A with its interval and a zero line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = result["metrics"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.8 * len(metrics) + 1, 3.2), squeeze=False)
    for ax, (name, entry) in zip(axes[0], metrics.items(), strict=True):
        display: MetricDisplay = metric_display(name, result["metric_options"].get(name))
        ax.axhline(0.0, color="gray", linewidth=0.8)
        if entry["mean_diff"] is not None:
            diff = entry["mean_diff"] * display.scale
            if entry["ci_low"] is not None:
                low, high = entry["ci_low"] * display.scale, entry["ci_high"] * display.scale
                ax.errorbar([0], [diff], yerr=[[diff - low], [high - diff]], fmt="o", color="tab:red", capsize=6)
            else:
                ax.plot([0], [diff], "o", color="tab:red")
        ax.set_xticks([])
        ax.set_xlim(-1, 1)
        ax.set_title(f"{display.label}{display.arrow}", fontsize=9)
        ax.set_xlabel(f"B - A, n = {entry['n_tasks']} tasks", fontsize=8)
    fig.suptitle(f"{result['run_b']['label']} - {result['run_a']['label']}", fontsize=10)
    save_figure(fig, path)
