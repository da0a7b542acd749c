"""Per-step accounting of the multiturn-aware reward: breakdown, failures, usage and the failure budget.

Nothing here imports verl or Ray. The reward manager turns every scored (or excluded, or failed) response
into a :class:`ResponseReport` holding the typed records of the reward core (its
:class:`~collabllm_verl.recipe.core.multiturn_reward.SampleScore` and
:class:`~collabllm_verl.recipe.core.multiturn_reward.ForwardSamplingStats`); the trainer's driver collects
the reports of one step (``recipe/verl_adapters/replay_buffer.py``) and calls:

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
from dataclasses import dataclass, field
from typing import Any

from collabllm_verl.recipe.core.llm_client import Usage
from collabllm_verl.recipe.core.multiturn_reward import ForwardSamplingStats, SampleScore
from collabllm_verl.recipe.core.reward_diagnostics import ResponseDiagnostics, ask_rates, equal_reward_share

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
TOTAL_KEYS = ("judge_tokens", "judge_cost_usd", "simulator_tokens", "simulator_cost_usd")


class FatalRewardError(RuntimeError):
    """A reward computation failed for a reason that retrying will not fix (bad data or configuration)."""


class FailureBudgetExceeded(RuntimeError):
    """The share of failed judge calls or simulator conversations in a step exceeded ``max_failure_rate``."""


@dataclass
class ResponseReport:
    """What the driver learns about one response of a step (picklable: sent as is through the step ledger).

    Attributes:
        step: trainer step (``global_steps``), or None.
        uid, session_id: the prompt's id and the response's index in its group.
        data_source: the row's ``data_source``.
        fatal: the non-transient error that stopped its reward computation, or None.
        score: the reward and its per-metric breakdown, or None when ``fatal``.
        sampling: the forward-sampling counters, or None when ``fatal``.
        context: settings the driver needs: ``metric_weights``, ``max_failure_rate``, ``judge`` (model and
            endpoint, no key), ``dump_dir`` (or None).
        diagnostics: the response's reward-quality diagnostics
            (:class:`~collabllm_verl.recipe.core.reward_diagnostics.ResponseDiagnostics`), or None.
        agent_error: the exception raised inside the agent loop (``"<type>: <message>"``; the response never
            reached the reward manager and verl drops it from its group), or None. Sent by the agent loop.
    """

    step: int | None = None
    uid: str | None = None
    session_id: int | None = None
    data_source: str | None = None
    fatal: str | None = None
    score: SampleScore | None = None
    sampling: ForwardSamplingStats | None = None
    context: dict[str, Any] = field(default_factory=dict)
    diagnostics: ResponseDiagnostics | None = None
    agent_error: str | None = None

    @property
    def excluded(self) -> str | None:
        """Why the response is kept out of the policy gradient (an outage), or None."""
        return self.score.excluded if self.score is not None else None

    @property
    def reward(self) -> float | None:
        """The reward given, or None when the response is excluded or failed."""
        return None if self.score is None or self.excluded else float(self.score.reward)

    @property
    def skipped(self) -> bool:
        """Forward sampling was skipped (the response is trained with the skip penalty)."""
        return self.sampling is not None and self.sampling.skipped

    @property
    def skip_reason(self) -> str | None:
        """Why forward sampling was skipped, or None."""
        return self.sampling.skip_reason if self.sampling is not None else None

    @property
    def metric_errors(self) -> dict[str, str]:
        """Metric -> the last failure's description."""
        return dict(self.score.errors) if self.score is not None else {}

    @property
    def simulator_error(self) -> str | None:
        """The last user-simulator failure, or None."""
        return self.sampling.simulator_error if self.sampling is not None else None

    @property
    def simulator(self) -> str | None:
        """The user simulator's model and endpoint (no key), or None."""
        return self.sampling.simulator if self.sampling is not None else None

    @property
    def conversations(self) -> int:
        """Forward-sampled conversations of the response (0 when ``fatal``)."""
        return self.score.num_conversations if self.score is not None else 0

    @property
    def columns(self) -> dict[str, float]:
        """Its ``reward_extra_info``: the ``mr/*`` and ``fs/*`` floats (empty when ``fatal``)."""
        info = self.score.extra_info() if self.score is not None else {}
        return {**info, **(self.sampling.extra_info() if self.sampling is not None else {})}

    @property
    def trained(self) -> bool:
        """The response reached the batch (scored, not excluded, no failure)."""
        return self.score is not None and self.excluded is None and self.fatal is None


def _context(reports: Sequence[ResponseReport]) -> dict[str, Any]:
    """The settings of the step (the last report that carries them)."""
    for report in reversed(reports):
        if report.context:
            return report.context
    return {}


def _mean(values: Iterable[float | None]) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def _metric_names(reports: Sequence[ResponseReport]) -> list[str]:
    """The weighted metrics of the step, then any other metric a report was scored on."""
    names = list(_context(reports).get("metric_weights") or {})
    for report in reports:
        if report.score is not None:
            names.extend(name for name in report.score.means if name not in names)
    return names


def _scores(reports: Iterable[ResponseReport]) -> list[SampleScore]:
    return [r.score for r in reports if r.score is not None]


def _sampled(reports: Iterable[ResponseReport]) -> list[ResponseReport]:
    """The reports whose forward sampling ran (not skipped, not failed)."""
    return [r for r in reports if r.sampling is not None and not r.sampling.skipped]


def _metric_totals(reports: Iterable[ResponseReport], name: str) -> tuple[int, int]:
    """``(scored, failures)`` of metric ``name``: conversations over ``reports``."""
    scores = _scores(reports)
    return sum(s.scored.get(name, 0) for s in scores), sum(s.failures.get(name, 0) for s in scores)


def _failure_rates(reports: Sequence[ResponseReport]) -> dict[str, tuple[int, int]]:
    """``{"metric:<name>" | "simulator": (failures, attempts)}`` over every report of the step."""
    rates = {}
    for name in _metric_names(reports):
        scored, failures = _metric_totals(reports, name)
        rates[f"metric:{name}"] = (failures, failures + scored)
    sampled = _sampled(reports)
    rates["simulator"] = (
        sum(r.sampling.simulator_failures for r in sampled),
        sum(r.conversations for r in sampled),
    )
    return rates


def check_reports(step: int | None, reports: Sequence[ResponseReport]) -> None:
    """Stop training when a step's reports show a non-transient error or a spent failure budget.

    Raises:
        FatalRewardError: some response's reward computation failed for a non-transient reason (the
            first such error, with how many responses it hit).
        FailureBudgetExceeded: for a metric, failed conversations / (failed + scored) exceeds
            ``max_failure_rate``, or for the user simulator, conversations it ended by failing / future
            conversations does, or responses whose agent loop raised / all responses does. The message names
            the metric (and the judge's model and endpoint), the simulator or the agent loop, the rate, the
            budget and the last underlying error; never an API key.
    """
    fatal = [r for r in reports if r.fatal]
    if fatal:
        raise FatalRewardError(
            f"collabllm reward: step {step}: {len(fatal)} response(s) could not be scored because of an error "
            f"that retrying will not fix; first: {fatal[0].fatal}"
        )
    context = _context(reports)
    budget = float(context.get("max_failure_rate", 0.2))
    failed = [r for r in reports if r.agent_error]
    if failed and len(failed) / len(reports) > budget:
        raise FailureBudgetExceeded(
            f"collabllm agent loop: step {step}: {len(failed)} of {len(reports)} responses failed inside the "
            f"agent loop ({len(failed) / len(reports):.0%}), above reward_kwargs.max_failure_rate={budget:g}; "
            f"last error: {failed[-1].agent_error}"
        )
    for key, (failures, attempts) in _failure_rates(reports).items():
        if not attempts or failures / attempts <= budget:
            continue
        if key == "simulator":
            endpoint = next((r.simulator for r in reports if r.simulator), None)
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


# ------------------------------------------------------------------------------------------------
# the step's summary, one block at a time
# ------------------------------------------------------------------------------------------------
def _reward_block(trained: Sequence[ResponseReport]) -> dict[str, float | None]:
    """``{mean, min, max}`` of the rewards given (the skip penalty included)."""
    rewards = [r.reward for r in trained if r.reward is not None]
    return {
        "mean": _mean(rewards),
        "min": min(rewards) if rewards else None,
        "max": max(rewards) if rewards else None,
    }


def _metric_block(group: Sequence[ResponseReport], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per metric: ``mean`` over trained responses with a scored conversation, ``weighted`` over trained
    responses whose forward sampling ran, ``scored`` and ``failures`` summed over the group."""
    trained = [r for r in group if r.trained]
    out = {}
    for name in names:
        scored, failures = _metric_totals(group, name)
        out[name] = {
            "mean": _mean(r.score.means.get(name) for r in trained if r.score.scored.get(name, 0) > 0),
            "weighted": _mean(r.score.weighted.get(name) for r in trained if not r.skipped),
            "scored": scored,
            "failures": failures,
        }
    return out


def _forward_sampling_block(sampled: Sequence[ResponseReport]) -> dict[str, Any]:
    """Conversations, future turns per conversation, end reasons, simulator failures and seconds of the
    responses whose forward sampling ran."""
    conversations = sum(r.conversations for r in sampled)
    turns = sum(r.sampling.future_turns_mean * r.conversations for r in sampled)
    end_reasons: Counter[str] = Counter()
    for report in sampled:
        end_reasons.update(report.sampling.end_counts())
    seconds = [r.sampling.seconds for r in sampled]
    return {
        "conversations": conversations,
        "future_turns_mean": turns / conversations if conversations else None,
        "end_reasons": {reason: end_reasons[reason] for reason in sorted(end_reasons)},
        "simulator_failures": sum(r.sampling.simulator_failures for r in sampled),
        "seconds": {"mean": _mean(seconds), "max": max(seconds, default=None)},
    }


def _running_totals(
    previous: Mapping[str, float] | None, judge: Usage, simulator: Usage
) -> dict[str, float]:
    """:data:`TOTAL_KEYS` continued from ``previous`` (the last step's ``totals``) with this step's usage."""
    totals = dict.fromkeys(TOTAL_KEYS, 0.0)
    totals.update({k: float(v) for k, v in (previous or {}).items() if k in totals})
    totals["judge_tokens"] += judge.tokens
    totals["judge_cost_usd"] += judge.cost_usd
    totals["simulator_tokens"] += simulator.tokens
    totals["simulator_cost_usd"] += simulator.cost_usd
    return totals


def _data_source_blocks(reports: Sequence[ResponseReport], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per data source (only when the step has several): responses, reward mean and metric means."""
    by_source: dict[str, list[ResponseReport]] = defaultdict(list)
    for report in reports:
        by_source[str(report.data_source)].append(report)
    if len(by_source) < 2:
        return {}
    return {
        source: {
            "responses": len(group),
            "reward_mean": _mean(r.reward for r in group if r.trained),
            "metrics": {name: block["mean"] for name, block in _metric_block(group, names).items()},
        }
        for source, group in by_source.items()
    }


def _diagnostics_block(trained: Sequence[ResponseReport]) -> dict[str, Any]:
    """Reward-quality diagnostics of the trained responses (:mod:`~collabllm_verl.recipe.core.reward_diagnostics`):
    ask rates (split by ``ambiguous`` when rows carry it), the share of GRPO groups with all-equal rewards,
    the mean future-score spread and the goal-leak rate."""
    diagnosed = [r.diagnostics for r in trained if r.diagnostics is not None]
    groups: dict[Any, list[float]] = defaultdict(list)
    for report in trained:
        if report.reward is not None:
            groups[report.uid].append(report.reward)
    turns = sum(d.user_turns for d in diagnosed)
    leaked = sum(d.leaked_turns for d in diagnosed)
    return {
        **ask_rates((d.asks, d.ambiguous) for d in diagnosed),
        "equal_reward_groups": equal_reward_share(groups),
        "groups": sum(len(g) >= 2 for g in groups.values()),
        "score_spread_mean": _mean(d.score_spread for d in diagnosed),
        "goal_leak_rate": leaked / turns if turns else None,
        "simulated_user_turns": turns,
    }


def summarize_step(
    step: int | None, reports: Sequence[ResponseReport], previous_totals: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """The step's summary (one ``summary.jsonl`` row).

    Args:
        step: the trainer step.
        reports: every response report of the step.
        previous_totals: ``totals`` of the previous step's summary (running totals continue from it).

    Returns:
        ``{"step", "responses", "trained", "excluded", "agent_failures", "skipped", "skip_reasons",
        "excluded_reasons",
        "reward": {mean, min, max}, "metrics": {name: {mean, weighted, scored, failures}},
        "forward_sampling": {conversations, future_turns_mean, end_reasons, simulator_failures,
        seconds: {mean, max}}, "judge": {calls, failed_calls, prompt_tokens, completion_tokens, cost_usd},
        "simulator": {...same...}, "totals": {judge_tokens, judge_cost_usd, simulator_tokens,
        simulator_cost_usd}, "data_sources": {name: {responses, reward_mean, metrics: {name: mean}}},
        "diagnostics": {ask_rate, ask_rate_ambiguous, ask_rate_clear, equal_reward_groups, groups,
        score_spread_mean, goal_leak_rate, simulated_user_turns}}`` (:func:`_diagnostics_block`).
        The reward is over trained responses (the skip penalty included), metric means and weighted values
        over trained responses whose forward sampling ran; counts of failures, usage and forward sampling
        over all responses. A mean with nothing to average is None.
    """
    trained = [r for r in reports if r.trained]
    sampled = _sampled(reports)
    names = _metric_names(reports)
    judge = sum((s.judge_usage for s in _scores(reports)), Usage())
    simulator = sum((r.sampling.simulator_usage for r in sampled), Usage())
    return {
        "step": step,
        "responses": len(reports),
        "trained": len(trained),
        "excluded": sum(r.excluded is not None for r in reports),
        "agent_failures": sum(r.agent_error is not None for r in reports),
        "skipped": sum(r.skipped for r in reports),
        "skip_reasons": dict(Counter(r.skip_reason or "unknown" for r in reports if r.skipped)),
        "excluded_reasons": [r.excluded for r in reports if r.excluded][:5],
        "reward": _reward_block(trained),
        "metrics": _metric_block(reports, names),
        "forward_sampling": _forward_sampling_block(sampled),
        "judge": judge.columns(),
        "simulator": simulator.columns(),
        "totals": _running_totals(previous_totals, judge, simulator),
        "data_sources": _data_source_blocks(reports, names),
        "diagnostics": _diagnostics_block(trained),
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
    if summary.get("agent_failures"):
        parts.append(f"| agent loop: {summary['agent_failures']} responses failed")
    for who in ("judge", "simulator"):
        usage = summary[who]
        parts.append(
            f"| {who}: {int(usage['calls'])} calls, {int(usage['failed_calls'])} failed, "
            f"{int(usage['prompt_tokens'] + usage['completion_tokens'])} tokens, ${usage['cost_usd']:.4g}"
        )
    return " ".join(parts)


def _column_means(group: Sequence[ResponseReport], names: Sequence[str], prefix: str) -> dict[str, float]:
    """``<prefix><column>``: each column's mean over the trained responses whose forward sampling ran; a
    metric's raw mean only over those with a scored conversation. Means with nothing to average are left
    out."""
    trained = [r for r in group if r.trained and not r.skipped]
    rows = [(r, r.columns) for r in trained]
    raw_means = {SampleScore.mean_column(name): name for name in names}
    metrics = {}
    for key in sorted({k for _, columns in rows for k in columns}):
        name = raw_means.get(key)
        values = (
            columns.get(key)
            for report, columns in rows
            if name is None or report.score.scored.get(name, 0) > 0
        )
        value = _mean(values)
        if value is not None:
            metrics[f"{prefix}{key}"] = value
    return metrics


def training_metrics(summary: Mapping[str, Any], reports: Sequence[ResponseReport]) -> dict[str, float]:
    """The step's ``collabllm/...`` training metrics (floats; a mean with nothing to average is left out).

    * ``collabllm/<column>`` for every ``mr/*`` and ``fs/*`` column of ``reward_extra_info``: its mean over
      the trained responses whose forward sampling ran (skipped ones are counted in ``step/skipped``; a
      metric's raw mean ``mr/<name>`` only over those with a scored conversation);
    * ``collabllm/<data_source>/<column>`` the same per data source, when the step has several;
    * ``collabllm/step/<count>``: responses, trained, excluded, skipped, agent_failures, judge and simulator calls,
      failures, tokens and cost (sums over the step), per-metric ``<name>_failures`` and ``<name>_scored``;
    * ``collabllm/total/<key>``: running totals of judge and simulator tokens and cost;
    * ``collabllm/diag/<key>``: the step's reward-quality diagnostics (``summary["diagnostics"]``: ask rates,
      equal-reward groups, future-score spread, goal-leak rate), those with a value.
    """
    names = list(summary["metrics"])
    metrics = _column_means(reports, names, METRICS_PREFIX)
    for source in summary.get("data_sources") or {}:
        group = [r for r in reports if str(r.data_source) == source]
        metrics.update(_column_means(group, names, f"{METRICS_PREFIX}{source}/"))
    step = f"{METRICS_PREFIX}step/"
    for key in ("responses", "trained", "excluded", "skipped", "agent_failures"):
        metrics[step + key] = float(summary.get(key, 0))
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
    for key, value in (summary.get("diagnostics") or {}).items():
        if value is not None:
            metrics[f"{METRICS_PREFIX}diag/{key}"] = float(value)
    return metrics
