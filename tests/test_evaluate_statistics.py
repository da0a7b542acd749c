"""Statistics of evaluate.py: bootstrap intervals over tasks, per-task means, pass^k, paired differences."""

from __future__ import annotations

import math

import numpy as np
import pytest

from collabllm_verl.recipe.evaluation.statistics import (
    bootstrap_interval,
    paired_difference,
    pass_hat_k,
    summarize_metric,
    task_values,
)


def _record(task: str, k: int, value: float | None, *, status: str = "scored", metric: str = "accuracy") -> dict:
    failures = [metric] if status == "scored" and value is None else []
    return {
        "key": f"{task}-{k}",
        "task_id": task,
        "sample_index": k,
        "status": status,
        "metrics": {metric: value},
        "metric_failures": failures,
    }


def test_interval_agrees_with_the_normal_approximation_on_many_tasks():
    """For 400 Bernoulli(0.3) task values the bootstrap interval of the mean is close to
    mean +- 1.96 * sd / sqrt(n) (both are valid 95 % intervals at this size)."""
    values = (np.random.default_rng(7).random(400) < 0.3).astype(float)
    mean, half = values.mean(), 1.96 * values.std(ddof=1) / math.sqrt(len(values))
    for method in ("BCa", "percentile"):
        low, high = bootstrap_interval(values, method=method, seed=3)
        assert low < mean < high
        assert low == pytest.approx(mean - half, abs=0.01)
        assert high == pytest.approx(mean + half, abs=0.01)


def test_interval_is_reproducible_and_narrows_with_more_tasks():
    rng = np.random.default_rng(0)
    small, large = rng.random(20), rng.random(500)
    assert bootstrap_interval(small, seed=5) == bootstrap_interval(small, seed=5)
    width = lambda v: bootstrap_interval(v)[1] - bootstrap_interval(v)[0]  # noqa: E731
    assert width(large) < width(small) / 3  # about sqrt(25) = 5 times narrower


def test_interval_edge_cases():
    assert bootstrap_interval([0.4]) is None  # one task: no interval
    assert bootstrap_interval([]) is None
    assert bootstrap_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)
    low, high = bootstrap_interval([0.0, 0.0, 0.0, 1.0])  # BCa is undefined here: percentile fallback
    assert 0.0 <= low <= 0.25 <= high <= 1.0
    with pytest.raises(ValueError, match="finite"):
        bootstrap_interval([0.1, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval([0.1, 0.2], confidence=1.5)


def test_task_values_average_samples_and_leave_failures_out():
    records = [
        _record("a", 0, 1.0), _record("a", 1, 0.0), _record("a", 2, None),  # a metric failure
        _record("b", 0, 1.0),
        _record("c", 0, None, status="conversation_failed"),  # never scored
    ]
    assert task_values(records, "accuracy") == {"a": [1.0, 0.0], "b": [1.0]}
    summary = summarize_metric(records, "accuracy", binary=True, samples_per_task=3, n_resamples=1000)
    # per-task means: a = 0.5, b = 1.0; the failed value is not a 0
    assert summary.mean == pytest.approx(0.75)
    assert (summary.n_tasks, summary.n_scored, summary.failures) == (2, 3, 1)
    assert summary.std_over_tasks == pytest.approx(np.std([0.5, 1.0], ddof=1))
    assert summary.within_task_std == pytest.approx(np.std([1.0, 0.0], ddof=1))  # only task a has 2 values
    assert summary.ci_low <= summary.mean <= summary.ci_high
    # concurrent conversations finish in any order: the summary (interval included) does not depend on it
    shuffled = summarize_metric(records[::-1], "accuracy", binary=True, samples_per_task=3, n_resamples=1000)
    assert (shuffled.ci_low, shuffled.ci_high) == (summary.ci_low, summary.ci_high)


def test_pass_hat_k_matches_the_combinatorial_estimate():
    per_task = {"a": [1.0, 1.0, 0.0], "b": [1.0, 1.0, 1.0], "c": [0.0, 0.0, 0.0]}
    assert pass_hat_k(per_task, 1) == pytest.approx((2 / 3 + 1 + 0) / 3)
    # C(2,2)/C(3,2) = 1/3 for a, 1 for b, 0 for c
    assert pass_hat_k(per_task, 2) == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert pass_hat_k(per_task, 3) == pytest.approx((0 + 1 + 0) / 3)
    assert pass_hat_k(per_task, 4) is None


def test_paired_difference_pairs_by_task():
    run_a = [_record("t1", 0, 1.0), _record("t2", 0, 0.0), _record("t3", 0, 1.0), _record("only_a", 0, 1.0)]
    run_b = [_record("t1", 0, 1.0), _record("t2", 0, 1.0), _record("t3", 0, 0.0), _record("t3", 1, 0.0),
             _record("only_b", 0, 0.0)]
    diff = paired_difference(run_a, run_b, "accuracy", n_resamples=1000)
    assert diff.n_tasks == 3 and (diff.only_a, diff.only_b) == (1, 1)
    assert diff.mean_a == pytest.approx(2 / 3) and diff.mean_b == pytest.approx(2 / 3)
    assert diff.mean_diff == pytest.approx(0.0)  # (0 + 1 - 1) / 3
    assert (diff.wins, diff.ties, diff.losses) == (1, 1, 1)
    assert diff.ci_low < 0 < diff.ci_high
