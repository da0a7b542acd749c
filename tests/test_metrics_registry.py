"""The metric registry: registration forms, value checks, judge-failure conversion, unknown names."""

from __future__ import annotations

import math

import pytest

from collabllm_verl.metrics import (
    MetricContext,
    MetricError,
    UnknownMetricError,
    available_metrics,
    get_metric,
    register_metric,
    resolve_metrics,
)
from collabllm_verl.recipe.core.llm_client import LLMCallError

BUILT_IN = {"accuracy", "interactivity", "token_amount", "bleu_score", "pass_rate", "math_accuracy"}


def test_built_in_metrics_document_range_and_unit():
    assert BUILT_IN <= set(available_metrics())
    for name in BUILT_IN:
        spec = get_metric(name)
        low, high = spec.value_range
        assert low <= high and spec.unit and spec.description
    assert {n for n in BUILT_IN if get_metric(n).needs_judge} == {
        "accuracy",
        "interactivity",
        "bleu_score",
        "pass_rate",
    }


@register_metric("reg_test_class", value_range=(0, 1), unit="fraction", description="class form")
class _ClassMetric:
    def __init__(self):
        self.calls = 0

    async def __call__(self, ctx: MetricContext) -> float:
        self.calls += 1
        return float(ctx.options.get("value", 0.5))


async def test_class_metric_is_instantiated_once():
    spec = get_metric("reg_test_class")
    assert await spec.score(MetricContext(messages=[])) == 0.5
    assert await spec.score(MetricContext(messages=[], options={"value": 1})) == 1.0
    assert spec.fn.calls == 2


def test_registration_errors():
    with pytest.raises(ValueError, match="async"):

        @register_metric("reg_test_sync", value_range=(0, 1), unit="x", description="x")
        def _sync(ctx):
            return 1.0

    with pytest.raises(ValueError, match="already registered"):

        @register_metric("accuracy", value_range=(0, 1), unit="x", description="x")
        async def _other(ctx):
            return 1.0

    with pytest.raises(ValueError, match="inverted"):
        register_metric("reg_test_bad_range", value_range=(1, 0), unit="x", description="x")


@pytest.mark.parametrize("value", [1.5, -0.1, math.nan, "0.5", True, None])
async def test_values_outside_range_or_not_numbers_are_metric_errors(value):
    @register_metric(f"reg_test_value_{value!r}", value_range=(0, 1), unit="x", description="x")
    async def _metric(ctx):
        return value

    with pytest.raises(MetricError) as err:
        await get_metric(f"reg_test_value_{value!r}").score(MetricContext(messages=[]))
    assert not err.value.judge_failure


async def test_llm_call_errors_become_judge_failures():
    @register_metric("reg_test_llm_fail", value_range=(0, 1), unit="x", description="x", needs_judge=True)
    async def _metric(ctx):
        raise LLMCallError(model="m", attempts=4, reason="HTTP 503", purpose="judge:x")

    with pytest.raises(MetricError) as err:
        await get_metric("reg_test_llm_fail").score(MetricContext(messages=[]))
    assert err.value.judge_failure and "503" in err.value.reason


async def test_other_exceptions_propagate():
    @register_metric("reg_test_bug", value_range=(0, 1), unit="x", description="x")
    async def _metric(ctx):
        raise KeyError("ground_truth")

    with pytest.raises(KeyError):
        await get_metric("reg_test_bug").score(MetricContext(messages=[]))


def test_unknown_names_list_the_available_metrics():
    with pytest.raises(UnknownMetricError, match=r"available metrics: .*accuracy.*math_accuracy"):
        get_metric("acc")
    with pytest.raises(UnknownMetricError) as err:
        resolve_metrics(["accuracy", "blue_score", "passrate"])
    assert "blue_score" in str(err.value) and "passrate" in str(err.value)


def test_context_helpers():
    ctx = MetricContext(
        messages=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "old"},
            {"role": "user", "content": "more"},
            {"role": "assistant", "content": "new"},
            {"role": "user", "content": "thanks"},
        ],
        num_history_messages=2,
        extra_info={"interaction_kwargs": {"single_turn_prompt": "goal", "task_desc": "desc"}},
    )
    assert [m["content"] for m in ctx.future_messages] == ["more", "new", "thanks"]
    assert ctx.last_assistant_message() == "new"
    assert ctx.single_turn_prompt == "goal" and ctx.task_desc == "desc"
    assert MetricContext(messages=ctx.messages, num_history_messages=4).last_assistant_message() is None
