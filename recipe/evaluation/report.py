"""The outputs of one evaluation run: ``summary.json``, ``summary.md`` (a table shaped like the paper's) and
``summary.png`` (metric means with their intervals, distribution of conversation lengths).

Every number is computed from the run's ``conversations.jsonl`` records (:mod:`.conversations`), so a
resumed run's summary covers all its conversations. Files are written atomically. No verl import.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from collabllm_verl.metrics import MetricSpec
from collabllm_verl.recipe.core.reward_diagnostics import conversation_diagnostics

from .conversations import STATUS_SCORED, USAGE_KEYS
from .statistics import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, summarize_metric

__all__ = [
    "FIGURE_FILE",
    "SUMMARY_JSON",
    "SUMMARY_MD",
    "MetricDisplay",
    "atomic_write_text",
    "build_summary",
    "format_value",
    "metric_display",
    "package_versions",
    "protocol_line",
    "save_figure",
    "write_figure",
    "write_run_outputs",
]

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
FIGURE_FILE = "summary.png"
_PACKAGES = (
    "collabllm-verl", "litellm", "numpy", "scipy", "matplotlib", "tiktoken", "transformers", "torch", "datasets",
    "nltk", "sacrebleu", "math-verify",
)


@dataclass(frozen=True)
class MetricDisplay:
    """How a metric is shown in tables and figures, following the paper's tables.

    Attributes:
        label: column header (e.g. ``"Accuracy (%)"``).
        scale: multiplier applied for display (100 for values in [0, 1] shown as percentages).
        higher_is_better: True, False, or None when the direction is not known.
        unit: the unit of a raw value when the options change it (``token_amount``), else None (the
            metric's registered unit applies).
    """

    label: str
    scale: float = 1.0
    higher_is_better: bool | None = None
    unit: str | None = None

    @property
    def arrow(self) -> str:
        """``↑``, ``↓`` or ``""``."""
        return {True: " ↑", False: " ↓", None: ""}[self.higher_is_better]


_DISPLAYS = {
    "accuracy": MetricDisplay("Accuracy (%)", 100.0, True),
    "math_accuracy": MetricDisplay("Accuracy, rule-based (%)", 100.0, True),
    "bleu_score": MetricDisplay("BLEU (%)", 100.0, True),
    "pass_rate": MetricDisplay("Pass rate (%)", 100.0, True),
    "interactivity": MetricDisplay("ITR (%)", 100.0, True),
}


def metric_display(name: str, options: Mapping[str, Any] | None = None) -> MetricDisplay:
    """The display of a metric; ``token_amount`` is labelled from its options (paper unit: thousands of
    assistant tokens)."""
    if name in _DISPLAYS:
        return _DISPLAYS[name]
    if name == "token_amount":
        options = options or {}
        unit = "tokens" if options.get("unit") == "tokens" else "words"
        scale = options.get("scale", 1)
        counted = f"{options.get('tokenizer', 'policy')} tokens" if unit == "tokens" else "whitespace words"
        roles = "assistant messages" if options.get("roles") == "assistant" else "all messages"
        amount = "thousands of " if scale == 0.001 else ("" if scale == 1 else f"{scale} x ")
        label = f"# {unit.capitalize()}{' (k)' if scale == 0.001 else ''}"
        return MetricDisplay(label, 1.0, False, unit=f"{amount}{counted} of {roles}")
    return MetricDisplay(name)


def format_value(value: float | None, display: MetricDisplay, *, digits: int | None = None) -> str:
    """A value for a table (``"—"`` for None), scaled and rounded (1 decimal for percentages, 3 otherwise)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if digits is None:
        digits = 1 if display.scale == 100.0 else 3
    return f"{value * display.scale:.{digits}f}"


def package_versions() -> dict[str, str]:
    """Versions of Python, the platform and the packages that shape the results (``"not installed"``)."""
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _usage_totals(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    roles: dict[str, dict[str, float]] = {}
    for record in records:
        for role, counters in (record.get("usage") or {}).items():
            bucket = roles.setdefault(role, dict.fromkeys(USAGE_KEYS, 0.0))
            for key in USAGE_KEYS:
                bucket[key] += float(counters.get(key, 0.0))
    total = sum(bucket["cost_usd"] for bucket in roles.values())
    unknown = sum(bucket["cost_unknown"] for bucket in roles.values())
    return {
        "by_role": roles,
        "cost_usd": total,
        "cost_complete": unknown == 0,
        "note": None if unknown == 0 else (
            f"{int(unknown)} requests went to models without a price in litellm's map (local servers, "
            "checkpoints); their cost is not included"
        ),
    }


def build_summary(
    records: Sequence[Mapping[str, Any]],
    *,
    specs: Mapping[str, MetricSpec],
    metric_options: Mapping[str, Mapping[str, Any]],
    samples_per_row: int,
    num_tasks: int,
    settings: Mapping[str, Any],
    data: Mapping[str, Any],
    invocation: Mapping[str, Any],
    protocol: Mapping[str, Any] | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """The ``summary.json`` content of a run.

    Args:
        records: every conversation record of the run (this invocation's and earlier ones).
        specs: metric name -> spec (unit, range) in report order.
        metric_options: metric name -> options used (``token_amount``'s unit and tokenizer).
        samples_per_row: k.
        num_tasks: tasks in the run.
        settings: every setting of the run (no secrets).
        data: where the tasks came from.
        protocol: the evaluation protocol's definition
            (:class:`~.settings.EvaluationProtocol` as a dict: ``name``, ``description``, reply cap, rubric,
            token unit, default models); ``compare`` refuses runs whose protocol names differ.
        invocation: this invocation's ``wall_seconds`` (from the start, loading tasks and models included),
            ``conversations_wall_seconds`` (running and scoring the conversations), ``conversations_run``,
            ``skipped`` and its start time.
        confidence, n_resamples, seed: bootstrap settings.

    Returns:
        A JSON-serialisable dict with ``metrics`` (per metric: :class:`~.statistics.MetricSummary` fields
        plus ``unit``, ``label``, ``options``), ``conversations`` (counts, end reasons, lengths), ``usage``
        (tokens and cost per role), ``diagnostics`` (ask rates split by ``ambiguous``, goal-leak rate:
        :func:`~collabllm_verl.recipe.core.reward_diagnostics.conversation_diagnostics`), ``seconds``,
        ``protocol``, ``data``, ``settings``, ``versions`` and ``invocation``.
    """
    scored = [r for r in records if r.get("status") == STATUS_SCORED]
    metrics = {}
    for name, spec in specs.items():
        summary = summarize_metric(
            records,
            name,
            binary=spec.unit.startswith("0/1"),
            samples_per_task=samples_per_row,
            confidence=confidence,
            n_resamples=n_resamples,
            seed=seed,
        )
        display = metric_display(name, metric_options.get(name))
        metrics[name] = {
            **summary.as_dict(),
            "label": display.label,
            "unit": display.unit or spec.unit,
            "options": dict(metric_options.get(name) or {}),
        }
    lengths = [int(r["num_messages"]) for r in scored]
    conversation_seconds = [float(r["seconds"]["conversation"]) for r in records]
    return {
        "protocol": dict(protocol) if protocol is not None else None,
        "metrics": metrics,
        "conversations": {
            "expected": num_tasks * samples_per_row,
            "recorded": len(records),
            "scored": len(scored),
            "conversation_failures": len(records) - len(scored),
            "end_reasons": dict(Counter(r["end_reason"] for r in records)),
            "messages_mean": sum(lengths) / len(lengths) if lengths else None,
            "user_turns_mean": sum(r["user_turns"] for r in scored) / len(scored) if scored else None,
            "assistant_turns_mean": sum(r["assistant_turns"] for r in scored) / len(scored) if scored else None,
            "messages_histogram": {str(n): c for n, c in sorted(Counter(lengths).items())},
        },
        "usage": _usage_totals(records),
        "diagnostics": conversation_diagnostics(scored),
        "seconds": {
            "conversation_mean": sum(conversation_seconds) / len(conversation_seconds) if records else None,
            "scoring_mean": sum(float(r["seconds"]["scoring"]) for r in scored) / len(scored) if scored else None,
        },
        "bootstrap": {"confidence": confidence, "resamples": n_resamples, "seed": seed, "unit": "task"},
        "data": dict(data),
        "settings": dict(settings),
        "versions": package_versions(),
        "invocation": dict(invocation),
    }


def _interval_text(entry: Mapping[str, Any], display: MetricDisplay) -> str:
    mean = format_value(entry["mean"], display)
    if entry.get("ci_low") is None:
        return mean
    return f"{mean} [{format_value(entry['ci_low'], display)}, {format_value(entry['ci_high'], display)}]"


def protocol_line(protocol: Mapping[str, Any] | None) -> str:
    """The sentence of ``summary.md`` that names the evaluation protocol (and, for any other than ``paper``,
    says the numbers are not the paper's quantities)."""
    if not protocol:
        return "Protocol: not recorded (a run written before protocols were recorded)."
    text = f"Protocol: **{protocol['name']}**, {protocol['description']}."
    if protocol["name"] != "paper":
        text += " These numbers are not the paper's quantities (docs/evaluation.md, protocols)."
    return text


def summary_markdown(summary: Mapping[str, Any], *, model_label: str) -> str:
    """``summary.md``: the paper-shaped table (mean [95 % interval] per metric), details and run facts."""
    metrics = summary["metrics"]
    displays = {name: metric_display(name, entry.get("options")) for name, entry in metrics.items()}
    confidence = round(summary["bootstrap"]["confidence"] * 100)
    conv = summary["conversations"]
    lines = [
        f"# Evaluation: {model_label}",
        "",
        protocol_line(summary.get("protocol")),
        "",
        f"{summary['data'].get('num_tasks')} tasks from `{summary['data'].get('dataset')}`, "
        f"{summary['settings'].get('samples_per_row')} conversation(s) per task, up to "
        f"{summary['settings'].get('max_messages')} messages; user simulator "
        f"`{summary['settings'].get('user_model')}`, judge `{summary['settings'].get('judge_model')}`. "
        f"Mean [{confidence} % bootstrap interval over tasks].",
        "",
        "| Model | " + " | ".join(f"{displays[n].label}{displays[n].arrow}" for n in metrics) + " |",
        "|---|" + "---|" * len(metrics),
        f"| {model_label} | " + " | ".join(_interval_text(metrics[n], displays[n]) for n in metrics) + " |",
        "",
        "| metric | unit | mean (raw) | interval (raw) | tasks | conversations scored | metric failures | pass^k |",
        "|---|---|---|---|---|---|---|---|",
    ]
    raw = MetricDisplay("")
    for name, entry in metrics.items():
        interval = (
            "—" if entry.get("ci_low") is None
            else f"[{format_value(entry['ci_low'], raw, digits=4)}, {format_value(entry['ci_high'], raw, digits=4)}]"
        )
        pass_hat = ", ".join(
            f"{k}: {format_value(v, raw, digits=3)}" for k, v in (entry.get("pass_hat") or {}).items()
        ) or "—"
        lines.append(
            f"| `{name}` | {entry['unit']} | {format_value(entry['mean'], raw, digits=4)} | {interval} | "
            f"{entry['n_tasks']} | {entry['n_scored']} | {entry['failures']} | {pass_hat} |"
        )
    usage = summary["usage"]
    end_reasons = ", ".join(f"{k} {v}" for k, v in sorted(conv["end_reasons"].items())) or "none"
    messages_mean = conv["messages_mean"]
    lines += [
        "",
        f"- Conversations: {conv['scored']} scored of {conv['expected']} expected; "
        f"{conv['conversation_failures']} could not be finished (not scored; run again on resume). "
        f"End reasons: {end_reasons}.",
        f"- Messages per scored conversation: mean {messages_mean:.2f}." if messages_mean is not None
        else "- Messages per scored conversation: —.",
        f"- Cost: ${usage['cost_usd']:.4f}" + (f" ({usage['note']})." if usage["note"] else "."),
        f"- Wall time of the last invocation: {summary['invocation'].get('wall_seconds', 0.0):.1f} s "
        f"({summary['invocation'].get('conversations_run', 0)} conversations run, "
        f"{summary['invocation'].get('skipped', 0)} already done).",
        "- A failed metric is left out of that metric's mean (never counted as 0).",
        "",
    ]
    return "\n".join(lines)


def write_figure(summary: Mapping[str, Any], path: Path, *, title: str) -> None:
    """``summary.png``: one panel per metric (mean and interval, display scale) and the histogram of
    messages per scored conversation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metrics = summary["metrics"]
    panels = len(metrics) + 1
    fig, axes = plt.subplots(1, panels, figsize=(2.6 * panels + 1, 3.2), squeeze=False)
    for ax, (name, entry) in zip(axes[0], metrics.items(), strict=False):
        display = metric_display(name, entry.get("options"))
        if entry["mean"] is not None:
            mean = entry["mean"] * display.scale
            ax.bar([0], [mean], color="tab:blue", width=0.5)
            if entry.get("ci_low") is not None:
                low, high = entry["ci_low"] * display.scale, entry["ci_high"] * display.scale
                ax.errorbar([0], [mean], yerr=[[mean - low], [high - mean]], color="black", capsize=6)
        ax.set_xticks([])
        ax.set_xlim(-1, 1)
        ax.set_title(f"{display.label}{display.arrow}", fontsize=9)
        ax.set_xlabel(f"n = {entry['n_tasks']} tasks", fontsize=8)
    hist_ax = axes[0][-1]
    histogram = summary["conversations"]["messages_histogram"]
    if histogram:
        hist_ax.bar([int(k) for k in histogram], list(histogram.values()), color="tab:gray")
    longest = max([int(summary["settings"].get("max_messages") or 0), *map(int, histogram)], default=1)
    hist_ax.set_xlim(0.5, longest + 0.5)
    hist_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    hist_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    hist_ax.set_title("messages per scored conversation", fontsize=9)
    hist_ax.set_xlabel("messages", fontsize=8)
    hist_ax.set_ylabel("conversations", fontsize=8)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically (temporary file, then rename) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def write_run_outputs(out_dir: Path, summary: Mapping[str, Any], *, model_label: str) -> list[Path]:
    """Write ``summary.json``, ``summary.md`` and ``summary.png`` into ``out_dir``; returns their paths."""
    json_path, md_path, png_path = out_dir / SUMMARY_JSON, out_dir / SUMMARY_MD, out_dir / FIGURE_FILE
    atomic_write_text(json_path, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(md_path, summary_markdown(summary, model_label=model_label))
    write_figure(summary, png_path, title=model_label)
    return [json_path, md_path, png_path]
