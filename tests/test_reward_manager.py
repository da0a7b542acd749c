"""The ``collabllm`` reward manager on DataProto batches built the way verl 0.9.1 builds them.

The manager is created through verl's own ``load_reward_manager`` from verl's composed ``ppo_trainer``
config with Hydra overrides, exactly as a reward-loop worker does, and ``run_single`` is called on
single-trajectory DataProto objects shaped like ``AgentLoopWorker._compute_score`` makes them
(``verl/experimental/agent_loop/agent_loop.py``). The metrics here are test metrics registered below,
whose values are read from the conversations, so every expected number is computed by hand.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import re

import numpy as np
import pytest
import torch
import verl
from hydra import compose, initialize_config_dir
from tensordict import TensorDict
from verl import DataProto
from verl.trainer.ppo.reward import load_reward_manager

from collabllm_verl.metrics import MetricContext, MetricError, UnknownMetricError, register_metric
from collabllm_verl.recipe.core.multiturn_reward import ForwardSamplingStats, SampleScore, aggregate_metric
from collabllm_verl.recipe.dataset.jsonl import read_json_lines
from collabllm_verl.recipe.verl_adapters.reward_manager import CollabLLMRewardManager, ResponseExcluded
from collabllm_verl.recipe.verl_adapters.step_summary import (
    FailureBudgetExceeded,
    FatalRewardError,
    check_reports,
    format_summary,
    summarize_step,
    training_metrics,
)

VERL_CONFIG_DIR = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")


# ---------------------------------------------------------------- test metrics
@register_metric(
    "test_value", value_range=(-10.0, 10.0), unit="number", description="v=<x> in the last message"
)
async def _test_value(ctx: MetricContext) -> float:
    """The number after ``v=`` in the last message; fails on request (JUDGE_FAIL / SANDBOX_FAIL)."""
    await asyncio.sleep(0)  # a real await, like a judge call
    text = ctx.messages[-1]["content"]
    if "JUDGE_FAIL" in text:
        raise MetricError("test_value", "judge unusable (test)", judge_failure=True)
    if "SANDBOX_FAIL" in text:
        raise MetricError("test_value", "sandbox crashed (test)")
    return float(re.search(r"v=(-?[\d.]+)", text).group(1))


@register_metric(
    "test_future_len", value_range=(0.0, float("inf")), unit="messages", description="future messages"
)
async def _test_future_len(ctx: MetricContext) -> float:
    return float(len(ctx.future_messages))


# ---------------------------------------------------------------- builders
def verl_config(*overrides: str):
    """verl's ppo_trainer config with ``reward.reward_manager.name=collabllm`` plus ``overrides``."""
    with initialize_config_dir(config_dir=VERL_CONFIG_DIR, version_base=None):
        return compose(
            config_name="ppo_trainer", overrides=["reward.reward_manager.name=collabllm", *overrides]
        )


def make_manager(*overrides: str) -> CollabLLMRewardManager:
    return load_reward_manager(verl_config(*overrides), tokenizer=None)


HISTORY = [{"role": "user", "content": "help me with a thing"}]


def conversation(*future_contents: str) -> list[dict]:
    """History + trained response + forward-sampled turns (alternating assistant/user)."""
    roles = ["assistant", "user"]
    return HISTORY + [{"role": roles[i % 2], "content": c} for i, c in enumerate(future_contents)]


def collab_fields(conversations, *, skipped=False, skip_reason=None, end_reasons=None, seconds=0.1) -> dict:
    """The agent loop's ``extra_fields["collabllm"]``; the counters are derived from ``end_reasons``
    (default: every conversation reached the turn limit), as ``summarize_forward_sampling`` does."""
    end_reasons = ["turn_limit"] * len(conversations) if end_reasons is None else end_reasons
    return {
        "future_conversations": conversations,
        "num_history_messages": len(HISTORY),
        "forward_sampling_skipped": skipped,
        "skip_reason": skip_reason,
        "simulator_failures": end_reasons.count("simulator_failure"),
        "future_turns": [len(c) - len(HISTORY) - 1 for c in conversations],
        "end_reasons": end_reasons,
        "early_terminations": end_reasons.count("terminated"),
        "forward_sampling_seconds": 0.0 if skipped else seconds,
    }


def reward_input(collab: dict, ground_truth="42", prompt_len=5, response_len=7) -> DataProto:
    """One trajectory as ``AgentLoopWorker._compute_score`` passes it to the reward loop."""
    row = {
        "data_source": "collabllm/test",
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": {"index": 0, "interaction_kwargs": {"name": "collabllm", "single_turn_prompt": "goal"}},
        "raw_prompt": [{"role": "user", "content": "help me with a thing"}],
        "agent_name": "collabllm_agent",
    }
    prompts = torch.arange(1, prompt_len + 1)
    responses = torch.arange(100, 100 + response_len)
    input_ids = torch.cat([prompts, responses])
    n = 1
    batch = TensorDict(
        {
            "prompts": prompts.unsqueeze(0),
            "responses": responses.unsqueeze(0),
            "attention_mask": torch.ones_like(input_ids).unsqueeze(0),
            "input_ids": input_ids.unsqueeze(0),
            "position_ids": torch.arange(len(input_ids)).unsqueeze(0),
        },
        batch_size=n,
    )
    non_tensor_batch = {
        **{k: np.array([v] * n) for k, v in row.items()},
        "__num_turns__": np.array([2]),
        "tool_extra_fields": np.array([{"collabllm": collab, "min_global_steps": 0}], dtype=object),
        "prompt_len": np.array([prompt_len]),
        "response_len": np.array([response_len]),
    }
    return DataProto(batch=batch, non_tensor_batch=non_tensor_batch)


WEIGHTS = (
    "+reward.reward_kwargs.metric_weights.test_value=2",
    "+reward.reward_kwargs.metric_weights.test_future_len=-0.1",
)


@pytest.fixture(scope="module")
def manager() -> CollabLLMRewardManager:
    return make_manager(*WEIGHTS)


# ---------------------------------------------------------------- aggregation
async def test_exact_aggregation(manager):
    convs = [
        conversation("answer", "thanks", "v=0.1"),  # 3 future messages
        conversation("q?", "details", "answer", "ok", "v=0.2"),  # 5
        conversation("v=0.3"),  # 1
    ]
    out = await manager.run_single(reward_input(collab_fields(convs)))
    info = out["reward_extra_info"]
    # test_value: mean 0.2 * 2 = 0.4 ; test_future_len: mean 3 * -0.1 = -0.3
    assert out["reward_score"] == pytest.approx(0.4 - 0.3)
    assert info["mr/test_value"] == pytest.approx(0.2)
    assert info["mr/test_value_weighted"] == pytest.approx(0.4)
    assert info["mr/test_future_len"] == pytest.approx(3.0)
    assert info["mr/test_future_len_weighted"] == pytest.approx(-0.3)
    assert info["mr/num_conversations"] == 3.0
    assert info["mr/skipped"] == 0.0
    assert info["mr/test_value_failures"] == 0.0 and info["mr/judge_failures"] == 0.0
    assert all(isinstance(v, float) for v in info.values())


async def test_clamping_per_metric(manager):
    # test_value mean 3 * 2 = 6 -> clamped to 1; test_future_len mean 25 * -0.1 = -2.5 -> clamped to -1
    long_future = ["x"] * 24 + ["v=3"]
    out = await manager.run_single(reward_input(collab_fields([conversation(*long_future)])))
    info = out["reward_extra_info"]
    assert info["mr/test_value"] == pytest.approx(3.0)
    assert info["mr/test_value_weighted"] == 1.0
    assert info["mr/test_future_len"] == pytest.approx(25.0)
    assert info["mr/test_future_len_weighted"] == -1.0
    assert out["reward_score"] == pytest.approx(0.0)


def test_aggregate_metric_bounds():
    assert aggregate_metric([], 5.0) == (0.0, 0.0)
    assert aggregate_metric([0.5, 1.5], 0.5) == (1.0, 0.5)
    assert aggregate_metric([-4.0], 1.0) == (-4.0, -1.0)


async def test_skipped_sample_gets_penalty(manager):
    normal = await manager.run_single(reward_input(collab_fields([conversation("v=0.5")])))
    skipped = await manager.run_single(reward_input(collab_fields([], skipped=True, skip_reason="truncated")))
    assert skipped["reward_score"] == -1.0
    assert skipped["reward_extra_info"]["mr/skipped"] == 1.0
    # verl stacks reward_extra_info per key over the batch: every sample must carry the same keys
    assert set(skipped["reward_extra_info"]) == set(normal["reward_extra_info"])

    custom = make_manager(*WEIGHTS, "+reward.reward_kwargs.skip_penalty=-0.25")
    out = await custom.run_single(reward_input(collab_fields([], skipped=True, skip_reason="empty")))
    assert out["reward_score"] == -0.25


async def test_unequal_conversation_counts_in_one_batch(manager):
    """Samples with 3, 1 and 0 usable conversations, concurrently, as RewardLoopWorker.compute_score_batch."""
    inputs = [
        reward_input(collab_fields([conversation("v=1"), conversation("v=0"), conversation("v=0.5")])),
        reward_input(collab_fields([conversation("a", "b", "v=-0.5")])),
        # every user-simulator call failed: nothing is a sample of the future, the response is excluded
        reward_input(collab_fields([conversation("v=1")] * 2, end_reasons=["simulator_failure"] * 2)),
    ]
    batch = DataProto.concat(inputs)
    outputs = await asyncio.gather(
        *(manager.run_single(batch[i : i + 1]) for i in range(len(batch))), return_exceptions=True
    )
    assert isinstance(outputs[2], ResponseExcluded)
    assert "all 2 future conversations ended by a user-simulator failure" in str(outputs[2])
    outputs = outputs[:2]
    assert [o["reward_score"] for o in outputs] == pytest.approx([1.0 - 0.1, -1.0 - 0.3])
    assert [o["reward_extra_info"]["mr/num_conversations"] for o in outputs] == [3.0, 1.0]
    # the reward loop manager builds one numpy column per key from the first sample's keys
    keys = list(outputs[0]["reward_extra_info"])
    columns = {k: np.array([o["reward_extra_info"][k] for o in outputs]) for k in keys}
    assert columns["mr/test_value"].tolist() == pytest.approx([0.5, -0.5])
    assert columns["mr/test_value_scored"].tolist() == [3.0, 1.0]


async def test_conversations_ended_by_a_simulator_failure_are_not_scored(manager):
    """A conversation cut by a simulator failure is not a sample of the future: it is left out of every
    metric (its values are None in the dump), the others are scored as usual."""
    fields = collab_fields(
        [conversation("v=0.1"), conversation("a", "b", "v=0.9")], end_reasons=["simulator_failure", "terminated"]
    )
    out = await manager.run_single(reward_input(fields))
    info = out["reward_extra_info"]
    assert info["mr/test_value"] == pytest.approx(0.9) and info["mr/test_value_scored"] == 1.0
    assert info["mr/test_value_failures"] == 0.0 and info["mr/num_conversations"] == 2.0
    assert out["reward_score"] == pytest.approx(1.0 - 0.1 * 3)  # 2 * 0.9 clamped to 1


async def test_multi_sequence_trajectory_uses_last_sequence(manager):
    first = reward_input(collab_fields([conversation("v=9")]))
    last = reward_input(collab_fields([conversation("v=0.25")]))
    out = await manager.run_single(DataProto.concat([first, last]))
    assert out["reward_extra_info"]["mr/test_value"] == pytest.approx(0.25)


# ---------------------------------------------------------------- forward-sampling counters
FS_KEYS = {
    "fs/future_turns_mean",
    "fs/future_turns_max",
    "fs/early_terminations",
    "fs/end_terminated",
    "fs/end_turn_limit",
    "fs/end_context_limit",
    "fs/end_simulator_failure",
    "fs/end_token_budget",
    "fs/simulator_failures",
    "fs/simulator_calls",
    "fs/simulator_prompt_tokens",
    "fs/simulator_completion_tokens",
    "fs/simulator_cost_usd",
    "fs/seconds",
}


async def test_forward_sampling_counters_are_reported(manager):
    """The agent loop's counters become ``fs/`` columns: same keys for every sample, 0 when skipped."""
    inputs = [
        reward_input(
            collab_fields(
                [  # the first message after the history is the trained response, not a future turn
                    conversation("answer", "thanks", "v=0.1"),  # 2 future turns
                    conversation("q?", "details", "answer", "ok", "v=0.2"),  # 4
                    conversation("v=0.3"),  # 0
                ],
                end_reasons=["terminated", "turn_limit", "context_limit"],
                seconds=2.5,
            )
        ),
        reward_input(
            collab_fields(
                [conversation("a", "b", "v=1"), conversation("v=0")],  # 2 and 0 future turns
                end_reasons=["simulator_failure", "terminated"],
                seconds=0.75,
            )
        ),
        reward_input(collab_fields([], skipped=True, skip_reason="truncated")),
    ]
    outputs = await asyncio.gather(*(manager.run_single(data) for data in inputs))
    infos = [o["reward_extra_info"] for o in outputs]
    for info in infos:
        assert FS_KEYS <= set(info) and set(info) == set(infos[0])
        assert all(isinstance(v, float) for v in info.values())
    assert infos[0]["fs/future_turns_mean"] == pytest.approx(2.0)
    assert infos[0]["fs/future_turns_max"] == 4.0
    assert infos[0]["fs/early_terminations"] == 1.0
    assert infos[0]["fs/end_turn_limit"] == 1.0 and infos[0]["fs/end_context_limit"] == 1.0
    assert infos[0]["fs/simulator_failures"] == 0.0
    assert infos[0]["fs/seconds"] == pytest.approx(2.5)
    assert infos[1]["fs/future_turns_mean"] == pytest.approx(1.0)
    assert infos[1]["fs/future_turns_max"] == 2.0
    assert infos[1]["fs/simulator_failures"] == 1.0 and infos[1]["fs/early_terminations"] == 1.0
    assert infos[1]["fs/end_turn_limit"] == 0.0 and infos[1]["fs/end_simulator_failure"] == 1.0
    assert infos[1]["fs/seconds"] == pytest.approx(0.75)
    # the skipped sample: every counter 0
    assert {k: infos[2][k] for k in FS_KEYS} == dict.fromkeys(FS_KEYS, 0.0)
    # the reward itself is untouched by the counters
    assert outputs[0]["reward_score"] == pytest.approx(0.4 - 0.3)
    # verl stacks each key into a batch column
    column = np.array([info["fs/future_turns_mean"] for info in infos])
    assert column.tolist() == pytest.approx([2.0, 1.0, 0.0])


async def test_token_budget_ends_are_counted(manager):
    fields = collab_fields(
        [conversation("q?", "a", "v=0.5"), conversation("q?", "v=0.5")], end_reasons=["token_budget", "token_budget"]
    )
    info = (await manager.run_single(reward_input(fields)))["reward_extra_info"]
    assert info["fs/end_token_budget"] == 2.0 and info["fs/end_turn_limit"] == 0.0


async def test_forward_sampling_counters_without_end_reasons(manager):
    """``end_reasons`` is optional for producers: its columns are then 0, the other counters still hold."""
    fields = collab_fields([conversation("q?", "a", "v=0.5")], seconds=1.25)  # 2 future turns
    del fields["end_reasons"]
    info = (await manager.run_single(reward_input(fields)))["reward_extra_info"]
    assert info["fs/end_turn_limit"] == 0.0 and info["fs/end_context_limit"] == 0.0
    assert info["fs/future_turns_mean"] == 2.0 and info["fs/seconds"] == pytest.approx(1.25)


class CollectingLedger:
    """Stands in for the step ledger's client: keeps the reports the manager sends."""

    def __init__(self):
        self.reports = []

    async def report(self, report):
        self.reports.append(report)


async def run_step(m, inputs, step=7):
    """Run ``inputs`` through manager ``m`` as one step; returns (outputs or exceptions, reports)."""
    m.ledger = CollectingLedger()
    for data in inputs:
        data.non_tensor_batch["global_steps"] = np.array([step])
    outputs = await asyncio.gather(*(m.run_single(d) for d in inputs), return_exceptions=True)
    return outputs, m.ledger.reports


async def test_step_summary_reports_forward_sampling_totals(capsys):
    """The driver's per-step summary adds up the reports the manager sends for every response."""
    m = make_manager(*WEIGHTS)
    inputs = [
        reward_input(
            collab_fields(
                [conversation("a", "b", "v=1"), conversation("v=0")],  # 2 and 0 future turns
                end_reasons=["terminated", "simulator_failure"],
                seconds=0.5,
            )
        ),
        reward_input(
            collab_fields(
                [conversation("q?", "x", "y", "z", "v=0.5")],  # 4 future turns
                end_reasons=["terminated"],
                seconds=1.5,
            )
        ),
        reward_input(collab_fields([], skipped=True, skip_reason="empty")),
    ]
    _, reports = await run_step(m, inputs)
    summary = summarize_step(7, reports)
    assert summary["step"] == 7 and summary["responses"] == 3 and summary["skipped"] == 1
    assert summary["trained"] == 3 and summary["excluded"] == 0 and summary["skip_reasons"] == {"empty": 1}
    sampling = summary["forward_sampling"]
    assert sampling["conversations"] == 3
    assert sampling["future_turns_mean"] == pytest.approx(2.0)  # (2 + 0 + 4) / 3; the skipped one has none
    assert sampling["end_reasons"]["terminated"] == 2 and sampling["simulator_failures"] == 1
    assert sampling["seconds"] == {"mean": pytest.approx(1.0), "max": pytest.approx(1.5)}
    # test_value: 1 (the failed simulator conversation is not scored) and 0.5
    # weighted: over the responses whose forward sampling ran (2 * 1 and 2 * 0.5, both clamped to 1)
    assert summary["metrics"]["test_value"] == {"mean": 0.75, "weighted": 1.0, "scored": 2, "failures": 0}
    assert summary["reward"]["mean"] == pytest.approx(sum(r.reward for r in reports) / 3)
    line = format_summary(summary)
    assert line.startswith("[collabllm reward] step 7: 3 responses (3 trained, 0 excluded, 1 skipped)")
    assert "test_value: mean 0.75, weighted 1, 2 scored, 0 failed" in line
    assert "future turns mean 2, ended: simulator_failure 1, terminated 2;" in line


async def test_outage_excludes_responses_and_counts_them():
    """A response whose weighted metric failed on every conversation is excluded (never rewarded on the
    other metrics); the step's summary counts it, and a metric nobody scored reads n/a, not 0."""
    m = make_manager(*WEIGHTS)
    inputs = [
        reward_input(collab_fields([conversation("JUDGE_FAIL")] * 3)),
        reward_input(collab_fields([conversation("v=0.4"), conversation("JUDGE_FAIL")])),
    ]
    outputs, reports = await run_step(m, inputs, step=2)
    assert isinstance(outputs[0], ResponseExcluded)
    assert "metric 'test_value' could not be scored on any of its 3 future conversations" in str(outputs[0])
    assert "judge unusable (test)" in str(outputs[0])
    assert outputs[1]["reward_score"] == pytest.approx(2 * 0.4 - 0.1)
    excluded = reports[0]
    assert excluded.excluded and excluded.reward is None and excluded.columns["mr/test_value_failures"] == 3.0
    summary = summarize_step(2, reports)
    assert (summary["trained"], summary["excluded"]) == (1, 1)
    assert summary["metrics"]["test_value"] == {"mean": pytest.approx(0.4), "weighted": pytest.approx(0.8),
                                                "scored": 1, "failures": 4}
    assert summary["judge"]["failed_calls"] == 0  # the test metric fails without calling an LLM
    only_failures = summarize_step(3, reports[:1])
    assert only_failures["metrics"]["test_value"]["mean"] is None
    assert "test_value: mean n/a, weighted n/a, 0 scored, 3 failed" in format_summary(only_failures)
    metrics = training_metrics(summary, reports)
    assert metrics["collabllm/mr/test_value"] == pytest.approx(0.4)
    assert metrics["collabllm/step/excluded"] == 1.0 and metrics["collabllm/step/test_value_failures"] == 4.0
    assert "collabllm/mr/test_value" not in training_metrics(only_failures, reports[:1])


async def test_failure_budget_stops_with_a_readable_error():
    """4 of 5 test_value computations failed (80 %): above the default budget (20 %), not above 0.9."""
    inputs = lambda: [  # noqa: E731
        reward_input(collab_fields([conversation("JUDGE_FAIL")] * 3)),
        reward_input(collab_fields([conversation("v=0.4"), conversation("JUDGE_FAIL")])),
    ]
    _, reports = await run_step(make_manager(*WEIGHTS), inputs(), step=5)
    with pytest.raises(FailureBudgetExceeded) as err:
        check_reports(5, reports)
    message = str(err.value)
    for part in ("step 5", "metric 'test_value'", "4 of 5", "80%", "max_failure_rate=0.2", "judge unusable (test)"):
        assert part in message
    _, reports = await run_step(
        make_manager(*WEIGHTS, "+reward.reward_kwargs.max_failure_rate=0.9"), inputs(), step=5
    )
    check_reports(5, reports)  # within the budget


async def test_simulator_failures_count_against_the_budget():
    m = make_manager(*WEIGHTS)
    fields = collab_fields([conversation("v=1")] * 2, end_reasons=["simulator_failure"] * 2)
    fields.update(
        simulator="openai/scripted-user at http://127.0.0.1:9/v1", simulator_error="APIConnectionError: refused"
    )
    _, reports = await run_step(m, [reward_input(fields), reward_input(collab_fields([conversation("v=1")]))])
    with pytest.raises(FailureBudgetExceeded) as err:
        check_reports(7, reports)
    message = str(err.value)
    assert "the user simulator (openai/scripted-user at http://127.0.0.1:9/v1)" in message
    assert "2 of 3 future conversations (67%)" in message and "APIConnectionError: refused" in message


async def test_non_transient_errors_stop_the_run():
    """A row without ground truth is not an outage: it is reported as fatal and the driver stops."""
    m = make_manager(*WEIGHTS)
    data = reward_input(collab_fields([conversation("v=1")]))
    data.non_tensor_batch["reward_model"] = np.array([{"style": "rule"}], dtype=object)
    outputs, reports = await run_step(m, [data, reward_input(collab_fields([conversation("v=1")]))])
    assert isinstance(outputs[0], ValueError) and reports[0].fatal
    with pytest.raises(FatalRewardError, match=r"1 response.*no reward_model\.ground_truth"):
        check_reports(7, reports)


async def test_breakdown_per_data_source_and_running_totals(llm_server):
    m = make_manager(*judge_overrides(llm_server.base_url))
    math_row = reward_input(collab_fields([conversation("It is 42.")]))
    code_row = reward_input(collab_fields([conversation("It is 41.")]))
    code_row.non_tensor_batch["data_source"] = np.array(["code"], dtype=object)
    _, reports = await run_step(m, [math_row, code_row], step=1)
    summary = summarize_step(1, reports, previous_totals={"judge_tokens": 100.0, "judge_cost_usd": 1.0})
    assert set(summary["data_sources"]) == {"collabllm/test", "code"}
    assert summary["data_sources"]["code"]["metrics"]["accuracy"] == 0.0
    assert summary["data_sources"]["collabllm/test"]["metrics"]["accuracy"] == 1.0
    judge_tokens = summary["judge"]["prompt_tokens"] + summary["judge"]["completion_tokens"]
    assert summary["judge"]["calls"] == 4 and judge_tokens > 0 and summary["judge"]["cost_usd"] > 0
    assert summary["totals"]["judge_tokens"] == pytest.approx(100 + judge_tokens)
    assert summary["totals"]["judge_cost_usd"] == pytest.approx(1 + summary["judge"]["cost_usd"])
    metrics = training_metrics(summary, reports)
    assert metrics["collabllm/code/mr/accuracy"] == 0.0 and metrics["collabllm/mr/accuracy"] == 0.5
    assert metrics["collabllm/total/judge_tokens"] == pytest.approx(100 + judge_tokens)


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("early_terminations", -1, ValueError),
        ("simulator_failures", 1.5, ValueError),
        ("future_turns", [2, "three"], ValueError),
        ("future_turns", 3, TypeError),
        ("forward_sampling_seconds", "fast", ValueError),
    ],
)
async def test_malformed_forward_sampling_counter_is_named(manager, field, value, error):
    fields = collab_fields([conversation("v=0.5")])
    fields[field] = value
    with pytest.raises(error, match=field):
        await manager.run_single(reward_input(fields))


async def test_reports_are_typed_and_cross_processes_whole():
    """The driver receives the reward core's typed records (not re-parsed columns), pickled as Ray does;
    the conversations stay in the reward worker."""
    m = make_manager(*WEIGHTS)
    inputs = [reward_input(collab_fields([conversation("v=0.5"), conversation("a", "b", "v=1")],
                                         end_reasons=["terminated", "turn_limit"]))]
    outputs, reports = await run_step(m, inputs, step=4)
    report = reports[0]
    assert isinstance(report.score, SampleScore) and isinstance(report.sampling, ForwardSamplingStats)
    copy = pickle.loads(pickle.dumps(report))
    assert copy == report and copy.columns == outputs[0]["reward_extra_info"]
    assert copy.score.means["test_value"] == pytest.approx(0.75) and copy.score.scored["test_value"] == 2
    assert copy.sampling.end_counts()["terminated"] == 1 and copy.sampling.future_turns == [0, 2]
    assert not hasattr(copy.sampling, "conversations")
    assert copy.reward == pytest.approx(outputs[0]["reward_score"]) and copy.trained and not copy.skipped


async def test_conversation_dump_is_a_reward_setting(tmp_path):
    """``reward_kwargs.conversation_dump`` is validated with the other reward settings; every scored
    response becomes one record of its step's file, built from the same typed breakdown."""
    m = make_manager(*WEIGHTS, f"+reward.reward_kwargs.conversation_dump.dir='{tmp_path}'")
    assert m.settings.conversation_dump.dir == str(tmp_path)
    inputs = [reward_input(collab_fields([conversation("v=0.5"), conversation("a", "b", "v=1")]))]
    outputs, reports = await run_step(m, inputs, step=3)
    [record] = read_json_lines(tmp_path / "step_000003.jsonl")
    assert record["reward"] == pytest.approx(outputs[0]["reward_score"]) and record["step"] == 3
    assert record["metrics"]["test_value"]["values"] == [0.5, 1.0]
    assert record["metrics"]["test_future_len"]["mean"] == pytest.approx(2.0)
    assert record["forward_sampling"]["future_turns"] == [0, 2]
    assert record["history"] == HISTORY and [len(f["messages"]) for f in record["future_conversations"]] == [0, 2]
    assert reports[0].context["dump_dir"] == str(tmp_path)
    assert make_manager(*WEIGHTS).conversation_dump is None  # off unless configured
    with pytest.raises(ValueError, match=r"reward_kwargs\.conversation_dump: unknown key\(s\) \['keep'\]"):
        make_manager(*WEIGHTS, f"+reward.reward_kwargs.conversation_dump.dir='{tmp_path}'",
                     "+reward.reward_kwargs.conversation_dump.keep=2")
    with pytest.raises(ValueError, match="keep_last_steps must be an integer >= 1"):
        make_manager(*WEIGHTS, f"+reward.reward_kwargs.conversation_dump.dir='{tmp_path}'",
                     "+reward.reward_kwargs.conversation_dump.keep_last_steps=0")


# ---------------------------------------------------------------- failure policies
FAILING = [
    conversation("v=0.2"),
    conversation("v=0.4"),
    conversation("JUDGE_FAIL"),
    conversation("SANDBOX_FAIL"),
]


async def test_failure_policy_drop_is_default(manager):
    out = await manager.run_single(reward_input(collab_fields(FAILING)))
    info = out["reward_extra_info"]
    assert info["mr/test_value"] == pytest.approx(0.3)  # mean of the two scored conversations
    assert info["mr/test_value_failures"] == 2.0
    assert info["mr/judge_failures"] == 1.0  # the sandbox failure is not a judge failure
    assert info["mr/test_future_len_failures"] == 0.0
    assert out["reward_score"] == pytest.approx(2 * 0.3 - 0.1)


async def test_failure_policy_zero():
    zero = make_manager(*WEIGHTS, "+reward.reward_kwargs.failure_policy=zero")
    out = await zero.run_single(reward_input(collab_fields(FAILING)))
    info = out["reward_extra_info"]
    assert info["mr/test_value"] == pytest.approx(0.15)  # (0.2 + 0.4 + 0 + 0) / 4
    assert info["mr/test_value_failures"] == 2.0
    assert out["reward_score"] == pytest.approx(2 * 0.15 - 0.1)


async def test_all_conversations_failing_exclude_the_response(manager):
    """Under drop, a weighted metric with no scored conversation excludes the response instead of letting
    the other metrics alone make its reward (an outage must not reshape the reward)."""
    with pytest.raises(ResponseExcluded, match="metric 'test_value' could not be scored"):
        await manager.run_single(reward_input(collab_fields([conversation("JUDGE_FAIL")] * 3)))
    zero = make_manager(*WEIGHTS, "+reward.reward_kwargs.failure_policy=zero")  # opt-in: failures score 0
    out = await zero.run_single(reward_input(collab_fields([conversation("JUDGE_FAIL")] * 3)))
    assert out["reward_score"] == pytest.approx(-0.1)
    log_only = make_manager(WEIGHTS[1], "+reward.reward_kwargs.metric_weights.test_value=0")  # weight 0: logged
    out = await log_only.run_single(reward_input(collab_fields([conversation("JUDGE_FAIL")] * 3)))
    assert out["reward_score"] == pytest.approx(-0.1)


async def test_other_metric_errors_propagate():
    """A data/config error is not a judge failure: it surfaces instead of becoming a score."""
    m = make_manager("+reward.reward_kwargs.metric_weights.math_accuracy=1")
    with pytest.raises(ValueError, match="ground_truth"):
        await m.run_single(reward_input(collab_fields([conversation("\\boxed{1}")]), ground_truth=""))


# ---------------------------------------------------------------- configuration
async def test_legacy_reward_model_form_works_through_the_entry_points_translation():
    """The original README's ``+reward_model.reward_kwargs.*`` form: translated once, by the entry point
    (verl_adapters/overrides.py), into the form the reward manager reads."""
    from collabllm_verl.recipe.verl_adapters.overrides import translate_overrides

    legacy = (
        "+reward_model.reward_kwargs.metric_weights.test_value=2",
        "+reward_model.reward_kwargs.metric_weights.test_future_len=-0.1",
    )
    m = make_manager(*translate_overrides(legacy).overrides)
    assert m.settings.metric_weights == {"test_value": 2.0, "test_future_len": -0.1}
    out = await m.run_single(reward_input(collab_fields([conversation("v=0.5")])))
    assert out["reward_score"] == pytest.approx(1.0 - 0.1)


def test_legacy_form_that_bypassed_the_entry_point_is_a_clear_error():
    with pytest.raises(ValueError, match=r"reward_model.reward_kwargs is the original recipe's form: .*main_ppo"):
        make_manager("+reward_model.reward_kwargs.metric_weights.test_value=2")


def test_new_form_wins_over_legacy_form():
    from collabllm_verl.recipe.verl_adapters.overrides import translate_overrides

    m = make_manager(*translate_overrides([
        "+reward_model.reward_kwargs.metric_weights.test_value=2",
        "+reward_model.reward_kwargs.failure_policy=zero",
        "+reward.reward_kwargs.metric_weights.test_value=3",
    ]).overrides)
    assert m.settings.metric_weights == {"test_value": 3.0}
    assert m.settings.failure_policy == "zero"


def test_judge_settings_default_to_the_judge_model():
    m = make_manager("+reward.reward_kwargs.metric_weights.accuracy=1")
    assert m.settings.judge.model == "gpt-4o-mini"
    assert m.settings.judge.completion_kwargs == {"temperature": 0.0, "max_tokens": 2048}


def test_unknown_metric_fails_at_start_up_with_the_list():
    with pytest.raises(UnknownMetricError) as err:
        make_manager("+reward.reward_kwargs.metric_weights.acuracy=1")
    message = str(err.value)
    assert "acuracy" in message
    for name in ("accuracy", "interactivity", "token_amount", "bleu_score", "pass_rate", "math_accuracy"):
        assert name in message


@pytest.mark.parametrize(
    "overrides, match",
    [
        ((), "needs reward_kwargs"),
        ((*WEIGHTS, "+reward.reward_kwargs.llm_judge_kwargs.max_tokens=0"), r"llm_judge_kwargs.max_tokens"),
        ((*WEIGHTS, "+reward.reward_kwargs.failure_policy=ignore"), "failure_policy"),
        ((*WEIGHTS, "+reward.reward_kwargs.metric_wieghts.x=1"), "unknown reward_kwargs key"),
        (("+reward.reward_kwargs.metric_weights.test_value=abc",), "finite number"),
        ((*WEIGHTS, "+reward.reward_kwargs.metric_kwargs.token_amount.unit=chars"), "unit"),
        ((*WEIGHTS, "+reward.reward_kwargs.metric_kwargs.test_value.foo=1"), "no option"),
        (
            (
                *WEIGHTS,
                "+reward.reward_kwargs.llm_judge_kwargs.model=m",
                "+reward.reward_kwargs.llm_judge_kwargs.temprature=0",
            ),
            "temprature",
        ),
    ],
)
def test_bad_settings_fail_at_start_up(overrides, match):
    with pytest.raises(ValueError, match=match):
        make_manager(*overrides)


async def test_sample_without_forward_sampling_result_is_rejected(manager):
    data = reward_input(collab_fields([]))
    data.non_tensor_batch["tool_extra_fields"] = np.array([{"min_global_steps": 0}], dtype=object)
    with pytest.raises(ValueError, match="collabllm_agent"):
        await manager.run_single(data)


def test_api_key_is_not_logged(caplog):
    secret = "sk-test-0123456789abcdef"
    with caplog.at_level(logging.INFO, logger="collabllm_verl.recipe.verl_adapters.reward_manager"):
        make_manager(
            *WEIGHTS,
            "+reward.reward_kwargs.llm_judge_kwargs.model=gpt-4o-mini",
            f"+reward.reward_kwargs.llm_judge_kwargs.api_key={secret}",
        )
    assert caplog.records and all(secret not in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- with real judge calls
def judge_overrides(base_url: str) -> tuple[str, ...]:
    k = "+reward.reward_kwargs.llm_judge_kwargs"
    return (
        "+reward.reward_kwargs.metric_weights.accuracy=1",
        "+reward.reward_kwargs.metric_weights.interactivity=0.5",
        "+reward.reward_kwargs.metric_weights.token_amount=-0.01",
        f"{k}.model=openai/scripted-judge",
        f"{k}.api_base={base_url}",
        f"{k}.api_key=local",
        f"{k}.num_retries=1",
        f"{k}.backoff_initial=0.01",
        # litellm prices the stand-in like a paid model, so cost accounting is exercised
        f"{k}.completion_kwargs.input_cost_per_token=0.000001",
        f"{k}.completion_kwargs.output_cost_per_token=0.000002",
    )


async def test_end_to_end_with_judges_over_http(llm_server):
    from collabllm_verl.recipe.core.llm_client import llm_stats, reset_llm_stats
    from collabllm_verl.recipe.offline.scripted_judges import MALFORMED_MARKER

    m = make_manager(*judge_overrides(llm_server.base_url))
    convs = [
        conversation(
            "Do you want the steps?", "yes", "It is 42. I suggest double-checking."
        ),  # acc 1, inter 1, 12 words
        conversation("It is 41."),  # acc 0, inter 1/3, 3 words
        conversation(f"It is 42 {MALFORMED_MARKER}"),  # both judges fail (after 1 retry); 4 words
    ]
    reset_llm_stats()
    out = await m.run_single(reward_input(collab_fields(convs), ground_truth="42"))
    info = out["reward_extra_info"]
    assert info["mr/accuracy"] == pytest.approx(0.5)  # the failed conversation is dropped
    assert info["mr/interactivity"] == pytest.approx((1 + 1 / 3) / 2)
    assert info["mr/token_amount"] == pytest.approx((12 + 3 + 4) / 3)
    assert info["mr/accuracy_failures"] == 1 and info["mr/interactivity_failures"] == 1
    assert info["mr/judge_failures"] == 2
    expected = 0.5 + 0.5 * (1 + 1 / 3) / 2 - 0.01 * 19 / 3
    assert out["reward_score"] == pytest.approx(expected)
    # 2 judges x 3 conversations, 2 of them retried once
    assert llm_server.stats()["model:scripted-judge"] == 8
    assert info["mr/judge_cost_usd"] > 0
    assert info["mr/judge_cost_usd"] == pytest.approx(llm_stats()["cost_usd"])


async def test_judge_cost_is_attributed_per_sample(llm_server):
    from collabllm_verl.recipe.core.llm_client import llm_stats, reset_llm_stats

    m = make_manager(*judge_overrides(llm_server.base_url))
    short = reward_input(collab_fields([conversation("42")]))
    long = reward_input(collab_fields([conversation("It is 42. " * 50)] * 3))
    reset_llm_stats()
    outs = await asyncio.gather(m.run_single(short), m.run_single(long))
    costs = [o["reward_extra_info"]["mr/judge_cost_usd"] for o in outs]
    assert costs[1] > 3 * costs[0] > 0  # three long conversations vs one short one
    assert sum(costs) == pytest.approx(llm_stats()["cost_usd"])


def test_step_summary_counts_agent_loop_failures():
    """Responses whose agent loop raised (reported by the loop, never scored) are counted in the step's
    summary and metrics and, past ``max_failure_rate``, stop the run with the loop's error."""
    from collabllm_verl.recipe.verl_adapters.step_summary import ResponseReport, summarize_step

    failed = ResponseReport(uid="u1", agent_error="ConnectionError: rollout server is gone")
    ok = [ResponseReport(uid=f"u{i}", context={"max_failure_rate": 0.3}) for i in range(4)]
    check_reports(3, [*ok, failed])  # 1 of 5 = 20 %, within 30 %
    with pytest.raises(FailureBudgetExceeded) as err:
        check_reports(3, [*ok[:2], failed])  # 1 of 3
    message = str(err.value)
    for part in ("step 3", "agent loop", "1 of 3 responses", "33%", "max_failure_rate=0.3",
                 "ConnectionError: rollout server is gone"):
        assert part in message
    summary = summarize_step(3, [*ok, failed])
    assert summary["agent_failures"] == 1 and summary["responses"] == 5 and summary["trained"] == 0
    assert "agent loop: 1 responses failed" in format_summary(summary)
    assert training_metrics(summary, [*ok, failed])["collabllm/step/agent_failures"] == 1.0
