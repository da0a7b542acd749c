"""Statistics of an evaluation run: per-task means, bootstrap intervals over tasks, pass^k, paired differences.

The unit of resampling is the **task** (one hidden goal): with ``k`` conversations per task, each task's
value is the mean of its scored conversations, and the reported mean is the mean of these task values
(every task weighs the same; with one conversation per task it is the plain mean over conversations).
Intervals are ``scipy.stats.bootstrap`` intervals of that mean over tasks (BCa by default, 95 %), so they
describe how much the number would move on another draw of tasks of the same kind, the variance of the
simulated conversations included. A conversation on which a metric failed is left out of that metric
(never counted as 0); a task with no scored conversation is left out of that metric.

No verl import.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_CONFIDENCE",
    "DEFAULT_RESAMPLES",
    "MetricSummary",
    "PairedDifference",
    "bootstrap_interval",
    "paired_difference",
    "pass_hat_k",
    "summarize_metric",
    "task_values",
]

DEFAULT_CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 10_000


def bootstrap_interval(
    values: Sequence[float],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    method: str = "BCa",
) -> tuple[float, float] | None:
    """Bootstrap confidence interval of the mean of ``values`` (``scipy.stats.bootstrap``).

    Args:
        values: one value per task (finite floats).
        confidence: confidence level in (0, 1).
        n_resamples: bootstrap resamples (>= 100).
        seed: seed of the resampling (the same inputs and seed give the same interval).
        method: ``"BCa"`` (bias-corrected and accelerated, default) or ``"percentile"``; BCa falls back to
            the percentile interval when it is undefined (e.g. a single value differs from all others).

    Returns:
        ``(low, high)``; ``(v, v)`` when every value equals ``v``; None for fewer than 2 values (no interval
        can be estimated from one task).

    Raises:
        ValueError: a non-finite value, or ``confidence``/``n_resamples``/``method`` out of range.
    """
    from scipy import stats

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 100:
        raise ValueError(f"n_resamples must be >= 100, got {n_resamples}")
    if method not in ("BCa", "percentile"):
        raise ValueError(f"method must be 'BCa' or 'percentile', got {method!r}")
    data = np.asarray(list(values), dtype=float)
    if not np.all(np.isfinite(data)):
        raise ValueError("bootstrap_interval: values must be finite numbers")
    if data.size < 2:
        return None
    if np.all(data == data[0]):
        return float(data[0]), float(data[0])
    for attempt in ((method, "percentile") if method == "BCa" else (method,)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns (and returns NaN) where BCa is undefined
            result = stats.bootstrap(
                (data,),
                np.mean,
                confidence_level=confidence,
                n_resamples=n_resamples,
                method=attempt,
                rng=np.random.default_rng(seed),
                vectorized=True,
            )
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return low, high
    return None


def task_values(records: Iterable[Mapping[str, Any]], metric: str) -> dict[str, list[float]]:
    """Per task, the values of ``metric`` on its scored conversations (failed values left out).

    Args:
        records: conversation records (``conversations.jsonl``): ``task_id``, ``status`` and
            ``metrics`` (metric -> value or None).

    Returns:
        task id -> list of values (in record order), tasks sorted by id so that the bootstrap does not
        depend on the order in which concurrent conversations finished; a task whose conversations all
        failed this metric is absent.
    """
    out: dict[str, list[float]] = {}
    for record in records:
        if record.get("status") != "scored":
            continue
        value = (record.get("metrics") or {}).get(metric)
        if value is None:
            continue
        out.setdefault(record["task_id"], []).append(float(value))
    return dict(sorted(out.items()))


def pass_hat_k(per_task: Mapping[str, Sequence[float]], k: int) -> float | None:
    """pass^k of a 0/1 metric: the chance that ``k`` conversations of a task drawn together all succeed.

    The unbiased estimate from ``n >= k`` conversations of which ``c`` succeeded is ``C(c, k) / C(n, k)``
    (the pass^k of tau-bench), averaged over tasks with at least ``k`` scored conversations.

    Returns:
        A value in [0, 1], or None when no task has ``k`` scored conversations.
    """
    estimates = []
    for values in per_task.values():
        n, c = len(values), sum(1 for v in values if v >= 0.5)
        if n >= k:
            estimates.append(math.comb(c, k) / math.comb(n, k))
    return float(np.mean(estimates)) if estimates else None


@dataclass
class MetricSummary:
    """One metric over a run (a ``summary.json`` entry).

    Attributes:
        mean: mean over tasks of the per-task means (None when nothing was scored).
        ci_low, ci_high: bootstrap interval of ``mean`` (None with fewer than 2 tasks).
        confidence: the interval's confidence level.
        n_tasks: tasks with at least one scored value.
        n_scored: conversations with a value of this metric.
        failures: scored conversations on which this metric failed (left out of the mean).
        std_over_tasks: standard deviation of the per-task means (ddof 1; None with fewer than 2 tasks).
        within_task_std: mean over tasks with >= 2 values of their standard deviation (ddof 1): the spread
            between repeated conversations of one task; None when no task has 2 values.
        pass_hat: for 0/1 metrics, ``{"1": pass^1, ..., "k": pass^k}`` (see :func:`pass_hat_k`), else empty.
    """

    mean: float | None
    ci_low: float | None
    ci_high: float | None
    confidence: float
    n_tasks: int
    n_scored: int
    failures: int
    std_over_tasks: float | None = None
    within_task_std: float | None = None
    pass_hat: dict[str, float | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)


def summarize_metric(
    records: Sequence[Mapping[str, Any]],
    metric: str,
    *,
    binary: bool = False,
    samples_per_task: int = 1,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> MetricSummary:
    """Summarise one metric over the conversation records of a run.

    Args:
        records: conversation records (see :func:`task_values`; failed metrics are listed in
            ``metric_failures``).
        metric: the metric name.
        binary: the metric is 0/1 per conversation (accuracy, pass_rate): pass^1..pass^k are reported.
        samples_per_task: k, conversations per task.
        confidence, n_resamples, seed: see :func:`bootstrap_interval`.
    """
    per_task = task_values(records, metric)
    means = np.array([np.mean(v) for v in per_task.values()], dtype=float)
    failures = sum(
        1 for r in records if r.get("status") == "scored" and metric in (r.get("metric_failures") or [])
    )
    interval = bootstrap_interval(means, confidence=confidence, n_resamples=n_resamples, seed=seed) if len(
        means
    ) else None
    spreads = [float(np.std(v, ddof=1)) for v in per_task.values() if len(v) >= 2]
    pass_hat = (
        {str(k): pass_hat_k(per_task, k) for k in range(1, samples_per_task + 1)} if binary else {}
    )
    return MetricSummary(
        mean=float(means.mean()) if len(means) else None,
        ci_low=interval[0] if interval else None,
        ci_high=interval[1] if interval else None,
        confidence=confidence,
        n_tasks=len(means),
        n_scored=sum(len(v) for v in per_task.values()),
        failures=failures,
        std_over_tasks=float(np.std(means, ddof=1)) if len(means) >= 2 else None,
        within_task_std=float(np.mean(spreads)) if spreads else None,
        pass_hat=pass_hat,
    )


@dataclass
class PairedDifference:
    """Run B minus run A on one metric, paired by task (a ``compare.json`` entry).

    Attributes:
        n_tasks: tasks scored in both runs.
        mean_a, mean_b: means over those tasks of each run's per-task means.
        mean_diff: mean over those tasks of (B - A); equals ``mean_b - mean_a``.
        ci_low, ci_high: bootstrap interval of ``mean_diff`` over tasks (None with fewer than 2 tasks).
        confidence: the interval's confidence level.
        wins, ties, losses: tasks where B's value is above, equal to, below A's.
        only_a, only_b: tasks scored in one run only (left out of the comparison).
    """

    n_tasks: int
    mean_a: float | None
    mean_b: float | None
    mean_diff: float | None
    ci_low: float | None
    ci_high: float | None
    confidence: float
    wins: int
    ties: int
    losses: int
    only_a: int
    only_b: int

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)


def paired_difference(
    records_a: Sequence[Mapping[str, Any]],
    records_b: Sequence[Mapping[str, Any]],
    metric: str,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> PairedDifference:
    """Per-task differences B - A of ``metric`` between two runs, with a bootstrap interval over tasks.

    Tasks are paired by ``task_id``; each side's task value is the mean of its scored conversations.
    """
    a = {task: float(np.mean(v)) for task, v in task_values(records_a, metric).items()}
    b = {task: float(np.mean(v)) for task, v in task_values(records_b, metric).items()}
    common = [task for task in a if task in b]
    diffs = np.array([b[t] - a[t] for t in common], dtype=float)
    interval = (
        bootstrap_interval(diffs, confidence=confidence, n_resamples=n_resamples, seed=seed) if len(diffs) else None
    )
    return PairedDifference(
        n_tasks=len(common),
        mean_a=float(np.mean([a[t] for t in common])) if common else None,
        mean_b=float(np.mean([b[t] for t in common])) if common else None,
        mean_diff=float(diffs.mean()) if len(diffs) else None,
        ci_low=interval[0] if interval else None,
        ci_high=interval[1] if interval else None,
        confidence=confidence,
        wins=int(np.sum(diffs > 0)),
        ties=int(np.sum(diffs == 0)),
        losses=int(np.sum(diffs < 0)),
        only_a=len(set(a) - set(b)),
        only_b=len(set(b) - set(a)),
    )
