"""Per-step accounting of the multiturn-aware reward: breakdown, failures, usage and the failure budget.

Nothing here imports verl or Ray. The reward manager turns every scored (or excluded, or failed) response
into a :class:`ResponseReport`; the trainer's driver collects the reports of one step
(``recipe/verl_adapters/replay_buffer.py``) and calls:

* :func:`check_reports`: stops training on a non-transient error (:class:`FatalRewardError`) or when a
  metric's or the user simulator's failure share exceeds ``max_failure_rate``
  (:class:`FailureBudgetExceeded`);
* :func:`summarize_step`: the step's summary (one ``summary.jsonl`` row), whose :func:`format_summary` is the
  ``[collabllm reward] step N: ...`` console line and whose :func:`training_metrics` are the
  ``collabllm/...`` training metrics verl logs (console, file logger, wandb).

Terms: a response is *trained* when it reached the batch (neither excluded nor failed); *excluded* when its
reward could not be computed because of a failure (docs/metrics_and_reward.md, "Failures"); *skipped* when
its forward sampling was skipped (it is trained, with ``skip_penalty``). Per metric, *scored* counts the
conversations that got a value and *failures* those on which the metric failed; a metric's mean is over
trained responses with at least one scored conversation and is None (``n/a``) when there is none.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "FailureBudgetExceeded",
    "FatalRewardError",
    "ResponseReport",
    "check_reports",
    "format_summary",
    "summarize_step",
    "training_metrics",
]

METRICS_PREFIX = "collabllm/"
USAGE_KEYS = ("calls", "failed_calls", "prompt_tokens", "completion_tokens", "cost_usd")
TOTAL_KEYS = ("judge_tokens", "judge_cost_usd", "simulator_tokens", "simulator_cost_usd")


class FatalRewardError(RuntimeError):
    """A reward computation failed for a reason that retrying will not fix (bad data or configuration)."""


class FailureBudgetExceeded(RuntimeError):
    """The share of failed judge calls or simulator conversations in a step exceeded ``max_failure_rate``."""


@dataclass
class ResponseReport:
    """What the driver learns about one response of a step (sent as a plain dict, :meth:`as_dict`).

    Attributes:
        step: trainer step (``global_steps``), or None.
        uid, session_id: the prompt's id and the response's index in its group.
        data_source: the row's ``data_source``.
        reward: the reward given, or None when the response is excluded or failed.
        skipped, skip_reason: forward sampling was skipped, and why.
        excluded: why the response is kept out of the policy gradient (an outage), or None.
        fatal: the non-transient error that stopped its reward computation, or None.
        columns: its ``reward_extra_info`` (``mr/*`` and ``fs/*`` floats; empty when ``fatal``).
        metric_errors: metric -> last failure description.
        simulator_error: the last user-simulator failure, or None.
        context: settings the driver needs: ``metric_weights``, ``max_failure_rate``, ``judge`` and
            ``simulator`` (model and endpoint, no key), ``dump_dir`` (or None).
    """

    step: int | None = None
    uid: str | None = None
    session_id: int | None = None
    data_source: str | None = None
    reward: float | None = None
    skipped: bool = False
    skip_reason: str | None = None
    excluded: str | None = None
    fatal: str | None = None
    columns: dict[str, float] = field(default_factory=dict)
    metric_errors: dict[str, str] = field(default_factory=dict)
    simulator_error: str | None = None
    context: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict form (what crosses process boundaries)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> ResponseReport:
        """Inverse of :meth:`as_dict`; unknown keys are ignored."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in value.items() if k in names})

    @property
    def trained(self) -> bool:
        """The response reached the batch (not excluded, no failure)."""
        return self.excluded is None and self.fatal is None


def _context(reports: Sequence[ResponseReport]) -> dict[str, Any]:
    """The settings of the step (the last report that carries them)."""
    for report in reversed(reports):
        if report.context:
            return report.context
    return {}


def _mean(values: Iterable[float]) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def _weighted_turns(reports: Sequence[ResponseReport]) -> float | None:
    """Mean future turns per conversation (each response's mean weighted by its conversations)."""
    count = _column_sum(reports, "mr/num_conversations")
    if not count:
        return None
    total = sum(
        r.columns.get("fs/future_turns_mean", 0.0) * r.columns.get("mr/num_conversations", 0.0)
        for r in reports
    )
    return total / count


def _metric_names(reports: Sequence[ResponseReport]) -> list[str]:
    names = list(_context(reports).get("metric_weights") or {})
    for report in reports:
        for key in report.columns:
            if key.startswith("mr/") and key.endswith("_scored") and key[3:-7] not in names:
                names.append(key[3:-7])
    return names


def _column_sum(reports: Iterable[ResponseReport], key: str) -> float:
    return float(sum(r.columns.get(key, 0.0) for r in reports))


def _failure_rates(reports: Sequence[ResponseReport]) -> dict[str, tuple[int, int]]:
    """``{"metric:<name>" | "simulator": (failures, attempts)}`` over every report of the step."""
    rates = {}
    for name in _metric_names(reports):
        failures = int(_column_sum(reports, f"mr/{name}_failures"))
        scored = int(_column_sum(reports, f"mr/{name}_scored"))
        rates[f"metric:{name}"] = (failures, failures + scored)
    sampled = [r for r in reports if not r.skipped]
    rates["simulator"] = (
        int(_column_sum(sampled, "fs/simulator_failures")),
        int(_column_sum(sampled, "mr/num_conversations")),
    )
    return rates


def check_reports(step: int | None, reports: Sequence[ResponseReport]) -> None:
    """Stop training when a step's reports show a non-transient error or a spent failure budget.

    Raises:
        FatalRewardError: some response's reward computation failed for a non-transient reason (the
            first such error, with how many responses it hit).
        FailureBudgetExceeded: for a metric, failed conversations / (failed + scored) exceeds
            ``max_failure_rate``, or for the user simulator, conversations it ended by failing / future
            conversations does. The message names the metric (and the judge's model and endpoint) or the
            simulator, the rate, the budget and the last underlying error; never an API key.
    """
    fatal = [r for r in reports if r.fatal]
    if fatal:
        raise FatalRewardError(
            f"collabllm reward: step {step}: {len(fatal)} response(s) could not be scored because of an error "
            f"that retrying will not fix; first: {fatal[0].fatal}"
        )
    context = _context(reports)
    budget = float(context.get("max_failure_rate", 0.2))
    for key, (failures, attempts) in _failure_rates(reports).items():
        if not attempts or failures / attempts <= budget:
            continue
        if key == "simulator":
            endpoint = next((r.context["simulator"] for r in reports if r.context.get("simulator")), None)
            who = f"the user simulator ({endpoint or 'unknown endpoint'})"
            last = next((r.simulator_error for r in reversed(reports) if r.simulator_error), None)
        else:
            name = key.split(":", 1)[1]
            who = f"metric {name!r} (judge: {context.get('judge') or 'none'})"
            last = next((r.metric_errors[name] for r in reversed(reports) if name in r.metric_errors), None)
        raise FailureBudgetExceeded(
            f"collabllm reward: step {step}: {who} failed on {failures} of {attempts} future conversations "
            f"({failures / attempts:.0%}), above reward_kwargs.max_failure_rate={budget:g}; "
            f"last error: {(last or 'unknown').rstrip('.')}. Fix the endpoint, or raise "
            "+reward.reward_kwargs.max_failure_rate to train through it (failed responses are then left "
            "out of the policy gradient)."
        )


def _usage(reports: Sequence[ResponseReport], prefix: str) -> dict[str, float]:
    return {key: _column_sum(reports, f"{prefix}{key}") for key in USAGE_KEYS}


def summarize_step(
    step: int | None, reports: Sequence[ResponseReport], previous_totals: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """The step's summary (one ``summary.jsonl`` row).

    Args:
        step: the trainer step.
        reports: every response report of the step.
        previous_totals: ``totals`` of the previous step's summary (running totals continue from it).

    Returns:
        ``{"step", "responses", "trained", "excluded", "skipped", "skip_reasons", "excluded_reasons",
        "reward": {mean, min, max}, "metrics": {name: {mean, weighted, scored, failures}},
        "forward_sampling": {conversations, future_turns_mean, end_reasons, simulator_failures,
        seconds: {mean, max}}, "judge": {calls, failed_calls, prompt_tokens, completion_tokens, cost_usd},
        "simulator": {...same...}, "totals": {judge_tokens, judge_cost_usd, simulator_tokens,
        simulator_cost_usd}, "data_sources": {name: {responses, reward_mean, metrics: {name: mean}}}}``.
        The reward is over trained responses (the skip penalty included), metric means and weighted values
        over trained responses whose forward sampling ran; counts of failures, usage and forward sampling
        over all responses. A mean with nothing to average is None.
    """
    trained = [r for r in reports if r.trained]
    sampled = [r for r in reports if not r.skipped and not r.fatal]
    rewards = [r.reward for r in trained if r.reward is not None]
    names = _metric_names(reports)

    def metric_block(group: Sequence[ResponseReport]) -> dict[str, dict[str, Any]]:
        out = {}
        for name in names:
            with_values = [r for r in group if r.trained and r.columns.get(f"mr/{name}_scored", 0) > 0]
            out[name] = {
                "mean": _mean(r.columns[f"mr/{name}"] for r in with_values),
                "weighted": _mean(
                    r.columns.get(f"mr/{name}_weighted") for r in group if r.trained and not r.skipped
                ),
                "scored": int(_column_sum(group, f"mr/{name}_scored")),
                "failures": int(_column_sum(group, f"mr/{name}_failures")),
            }
        return out

    end_reasons = {
        key[len("fs/end_") :]: int(_column_sum(sampled, key))
        for key in sorted({k for r in sampled for k in r.columns if k.startswith("fs/end_")})
    }
    seconds = [r.columns.get("fs/seconds") for r in sampled]
    judge = _usage(reports, "mr/judge_")
    simulator = _usage(sampled, "fs/simulator_")
    totals = dict.fromkeys(TOTAL_KEYS, 0.0)
    totals.update({k: float(v) for k, v in (previous_totals or {}).items() if k in totals})
    totals["judge_tokens"] += judge["prompt_tokens"] + judge["completion_tokens"]
    totals["judge_cost_usd"] += judge["cost_usd"]
    totals["simulator_tokens"] += simulator["prompt_tokens"] + simulator["completion_tokens"]
    totals["simulator_cost_usd"] += simulator["cost_usd"]
    by_source: dict[str, list[ResponseReport]] = defaultdict(list)
    for report in reports:
        by_source[str(report.data_source)].append(report)
    return {
        "step": step,
        "responses": len(reports),
        "trained": len(trained),
        "excluded": sum(r.excluded is not None for r in reports),
        "skipped": sum(r.skipped for r in reports),
        "skip_reasons": dict(Counter(r.skip_reason or "unknown" for r in reports if r.skipped)),
        "excluded_reasons": [r.excluded for r in reports if r.excluded][:5],
        "reward": {
            "mean": _mean(rewards),
            "min": min(rewards) if rewards else None,
            "max": max(rewards) if rewards else None,
        },
        "metrics": metric_block(reports),
        "forward_sampling": {
            "conversations": int(_column_sum(sampled, "mr/num_conversations")),
            "future_turns_mean": _weighted_turns(sampled),
            "end_reasons": end_reasons,
            "simulator_failures": int(_column_sum(sampled, "fs/simulator_failures")),
            "seconds": {
                "mean": _mean(seconds),
                "max": max((s for s in seconds if s is not None), default=None),
            },
        },
        "judge": judge,
        "simulator": simulator,
        "totals": totals,
        "data_sources": {
            source: {
                "responses": len(group),
                "reward_mean": _mean(r.reward for r in group if r.trained),
                "metrics": {name: block["mean"] for name, block in metric_block(group).items()},
            }
            for source, group in by_source.items()
        }
        if len(by_source) > 1
        else {},
    }


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def format_summary(summary: Mapping[str, Any]) -> str:
    """One console line for :func:`summarize_step`'s result."""
    reward = summary["reward"]
    parts = [
        f"[collabllm reward] step {summary['step']}: {summary['responses']} responses "
        f"({summary['trained']} trained, {summary['excluded']} excluded, {summary['skipped']} skipped),",
        f"reward mean {_num(reward['mean'])} (min {_num(reward['min'])}, max {_num(reward['max'])})",
    ]
    for name, block in summary["metrics"].items():
        parts.append(
            f"| {name}: mean {_num(block['mean'])}, weighted {_num(block['weighted'])}, "
            f"{block['scored']} scored, {block['failures']} failed"
        )
    sampling = summary["forward_sampling"]
    ends = ", ".join(f"{k} {v}" for k, v in sampling["end_reasons"].items() if v)
    parts.append(
        f"| forward sampling: {sampling['conversations']} conversations, future turns mean "
        f"{_num(sampling['future_turns_mean'])}, ended: {ends or 'none'}; simulator failures "
        f"{sampling['simulator_failures']}; {_num(sampling['seconds']['mean'])} s per response "
        f"(max {_num(sampling['seconds']['max'])})"
    )
    for who in ("judge", "simulator"):
        usage = summary[who]
        parts.append(
            f"| {who}: {int(usage['calls'])} calls, {int(usage['failed_calls'])} failed, "
            f"{int(usage['prompt_tokens'] + usage['completion_tokens'])} tokens, ${usage['cost_usd']:.4g}"
        )
    return " ".join(parts)


def training_metrics(summary: Mapping[str, Any], reports: Sequence[ResponseReport]) -> dict[str, float]:
    """The step's ``collabllm/...`` training metrics (floats; a mean with nothing to average is left out).

    * ``collabllm/<column>`` for every ``mr/*`` and ``fs/*`` column of ``reward_extra_info``: its mean over
      the trained responses whose forward sampling ran (skipped ones are counted in ``step/skipped``; a
      metric's raw mean ``mr/<name>`` only over those with a scored conversation);
    * ``collabllm/<data_source>/<column>`` the same per data source, when the step has several;
    * ``collabllm/step/<count>``: responses, trained, excluded, skipped, judge and simulator calls,
      failures, tokens and cost (sums over the step), per-metric ``<name>_failures`` and ``<name>_scored``;
    * ``collabllm/total/<key>``: running totals of judge and simulator tokens and cost.
    """
    metrics: dict[str, float] = {}

    def column_means(group: Sequence[ResponseReport], prefix: str) -> None:
        trained = [r for r in group if r.trained and not r.skipped]
        keys = sorted({k for r in trained for k in r.columns})
        for key in keys:
            rows = trained
            if any(f"{key}_scored" in r.columns for r in trained):  # a metric's raw mean
                rows = [r for r in trained if r.columns.get(f"{key}_scored", 0) > 0]
            value = _mean(r.columns.get(key) for r in rows)
            if value is not None:
                metrics[f"{prefix}{key}"] = value

    column_means(reports, METRICS_PREFIX)
    if summary.get("data_sources"):
        for source in summary["data_sources"]:
            column_means([r for r in reports if str(r.data_source) == source], f"{METRICS_PREFIX}{source}/")
    step = f"{METRICS_PREFIX}step/"
    for key in ("responses", "trained", "excluded", "skipped"):
        metrics[step + key] = float(summary[key])
    for name, block in summary["metrics"].items():
        metrics[f"{step}{name}_scored"] = float(block["scored"])
        metrics[f"{step}{name}_failures"] = float(block["failures"])
    for who in ("judge", "simulator"):
        for key, value in summary[who].items():
            metrics[f"{step}{who}_{key}"] = float(value)
    metrics[f"{step}simulator_failed_conversations"] = float(
        summary["forward_sampling"]["simulator_failures"]
    )
    for key, value in summary["totals"].items():
        metrics[f"{METRICS_PREFIX}total/{key}"] = float(value)
    return metrics
