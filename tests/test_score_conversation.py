"""score_conversation (recipe/core/multiturn_reward.py): every metric once on one conversation, the value or
the failure per metric; score_sample aggregates the same per-conversation outcomes."""

from __future__ import annotations

import pytest

from collabllm_verl.metrics import MetricContext, MetricError, register_metric
from collabllm_verl.recipe.core.multiturn_reward import (
    ForwardSamples,
    RewardSettings,
    resolve_metric_specs,
    score_conversation,
    score_sample,
)

CONVERSATION = [
    {"role": "user", "content": "help"},
    {"role": "assistant", "content": "Which part?"},
    {"role": "user", "content": "the sum"},
    {"role": "assistant", "content": "It is 4."},
]


@register_metric("sc_test_turns", value_range=(0, 100), unit="messages", description="assistant messages scored",
                 options={"per": "divide by this"})
async def _turns(ctx: MetricContext) -> float:
    scored = [m for m in ctx.messages[ctx.num_history_messages:] if m["role"] == "assistant"]
    return len(scored) / float(ctx.options.get("per", 1))


@register_metric("sc_test_flaky", value_range=(0, 1), unit="0/1", description="fails when asked to")
async def _flaky(ctx: MetricContext) -> float:
    if "fail" in str(ctx.ground_truth):
        raise MetricError("sc_test_flaky", "judge answered prose", judge_failure=True)
    return 1.0


@register_metric("sc_test_broken", value_range=(0, 1), unit="0/1", description="bad data")
async def _broken(ctx: MetricContext) -> float:
    raise KeyError("ground truth has no 'tests'")


SPECS = resolve_metric_specs(["sc_test_turns", "sc_test_flaky"], {"sc_test_turns": {"per": 2}})


async def test_each_metric_gives_its_value_or_its_failure():
    score = await score_conversation(
        SPECS, CONVERSATION, judge=None, metric_kwargs={"sc_test_turns": {"per": 2}}, ground_truth="fail",
        extra_info={},
    )
    assert score.values == {"sc_test_turns": 1.0, "sc_test_flaky": None}  # 2 assistant messages / 2
    assert score.failures == {"sc_test_flaky": "judge answered prose"}
    assert score.metrics["sc_test_flaky"].judge_failure and score.metrics["sc_test_turns"].error is None
    later = await score_conversation(
        SPECS, CONVERSATION, judge=None, metric_kwargs={}, ground_truth="ok", extra_info={}, num_history_messages=3
    )
    assert later.values == {"sc_test_turns": 1.0, "sc_test_flaky": 1.0} and later.failures == {}


async def test_a_metric_error_that_is_not_a_metric_failure_is_raised():
    specs = resolve_metric_specs(["sc_test_flaky", "sc_test_broken"], {})
    with pytest.raises(KeyError, match="tests"):
        await score_conversation(specs, CONVERSATION, judge=None, metric_kwargs={}, ground_truth="x", extra_info={})


async def test_score_sample_aggregates_the_per_conversation_outcomes():
    settings = RewardSettings.from_reward_kwargs(
        {"metric_weights": {"sc_test_turns": 0.5, "sc_test_flaky": 1.0}, "metric_kwargs": {"sc_test_turns": {"per": 2}}}
    )
    specs = resolve_metric_specs(list(settings.metric_weights), settings.metric_kwargs)
    short = CONVERSATION[:2]
    samples = ForwardSamples(conversations=[CONVERSATION, short], num_history_messages=1)
    score = await score_sample(settings, specs, samples, ground_truth="fail", extra_info={})
    # turns after the first message: 2 and 1 assistant messages, / 2 -> 1.0 and 0.5
    assert score.per_conversation == {"sc_test_turns": [1.0, 0.5], "sc_test_flaky": [None, None]}
    assert score.means["sc_test_turns"] == pytest.approx(0.75) and score.failures["sc_test_flaky"] == 2
    assert score.judge_failures == 2 and score.errors == {"sc_test_flaky": "judge answered prose"}
    assert score.excluded is not None and "sc_test_flaky" in score.excluded


def test_metric_options_are_checked_at_start_up():
    with pytest.raises(ValueError):
        resolve_metric_specs(["sc_test_turns"], {"sc_test_turns": {"nope": 1}})
