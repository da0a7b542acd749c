"""End to end on a CPU: the README's quick start (`quickstart_cpu.sh`: simulated openers, processing, SFT, then
`DEVICE=cpu bash train_rl_collabllm.sh` from the SFT checkpoint) runs GRPO with the CollabLLM agent loop and
reward manager on real MATH level-5 problems (tiny model, hf rollout, local simulator/judge server).

Checks what CI must prove: exit status 0, finite rewards for every step, the KL loss against the reference
model logged (the same KL setup as the GPU recipe), the per-metric reward breakdown logged, forward-sampled
conversations in the JSONL dump, and a saved checkpoint that loads.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import torch

from collabllm_verl.recipe.dataset.jsonl import read_json_lines

REPO = Path(__file__).resolve().parents[1]
STEPS, BATCH, N, S = 2, 2, 2, 2
METRICS = {"accuracy", "interactivity", "token_amount"}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """Run the README's CPU quick start once for all checks: `bash quickstart_cpu.sh OUT` processes the bundled
    MATH level-5 problems, runs SFT of a tiny model, then `DEVICE=cpu train_rl_collabllm.sh` from the SFT
    checkpoint. Returns the finished process and the GRPO output folder (OUT/rl)."""
    root = tmp_path_factory.mktemp("quickstart")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VERL_", "COLLABLLM_", "RAY_ADDRESS"))}
    env.update(
        PYTHON=sys.executable,
        TOTAL_STEPS=str(STEPS),
        TRAIN_BATCH_SIZE=str(BATCH),
        ROLLOUT_N=str(N),
        NUM_REPEAT_ROLLOUTS=str(S),
    )
    proc = subprocess.run(
        ["bash", str(REPO / "quickstart_cpu.sh"), str(root / "qs")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    return proc, root / "qs" / "rl"


def _sft_model(out: Path) -> Path:
    """The Hugging Face model the quick start's SFT stage saved last (GRPO's initial policy)."""
    steps = sorted((out.parent / "sft" / "checkpoints").glob("global_step_*"), key=lambda p: int(p.name.split("_")[-1]))
    return steps[-1] / "huggingface"


def _step_metrics(out: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {row["step"]: row["data"] for row in rows}


@pytest.mark.slow
def test_cpu_grpo_run_exits_cleanly_with_finite_rewards(cpu_run):
    proc, out = cpu_run
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    metrics = _step_metrics(out)
    assert sorted(metrics) == list(range(1, STEPS + 1))
    for step, values in metrics.items():
        for key in ("critic/score/mean", "critic/rewards/mean", "actor/pg_loss", "actor/grad_norm"):
            assert _finite(values[key]), (step, key, values.get(key))
    # the quick start names the last step's conversations
    assert f"checkpoints/conversations/step_{STEPS:06d}.jsonl" in proc.stdout
    # the offline stand-in server was stopped by the script's trap: its port no longer answers
    url = (out / "llm_server.url").read_text().strip()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/models", timeout=5).close()


@pytest.mark.slow
def test_kl_loss_against_the_reference_model_is_logged(cpu_run):
    """The preset trains with use_kl_loss (low_var_kl, coefficient 0.001), so verl builds the reference model."""
    proc, out = cpu_run
    assert proc.returncode == 0, proc.stderr[-5000:]
    metrics = _step_metrics(out)
    for step, values in metrics.items():
        assert _finite(values.get("actor/kl_loss")) and values["actor/kl_loss"] >= 0.0, (step, values)
        assert values.get("actor/kl_coef") == pytest.approx(0.001), (step, values.get("actor/kl_coef"))
        # the reference model's log-probs were computed this step
        assert _finite(values.get("timing_s/ref")), (step, sorted(values))
    # before the first update the policy equals the reference model (both load the same weights)
    assert metrics[1]["actor/kl_loss"] < 1e-3, metrics[1]["actor/kl_loss"]


@pytest.mark.slow
def test_reward_breakdown_is_logged_for_every_step(cpu_run):
    proc, out = cpu_run
    console = proc.stdout + proc.stderr
    summaries = [
        json.loads(line)
        for line in (out / "checkpoints/conversations/summary.jsonl").read_text().splitlines()
    ]
    assert [s["step"] for s in summaries] == list(range(1, STEPS + 1))
    for summary in summaries:
        assert f"[collabllm reward] step {summary['step']}: {BATCH * N} responses" in console
        assert summary["responses"] == BATCH * N
        assert set(summary["metrics"]) == METRICS
        assert _finite(summary["reward"]["mean"])
        # the breakdown agrees with the reward the trainer used
        metrics = _step_metrics(out)[summary["step"]]
        assert math.isclose(summary["reward"]["mean"], metrics["critic/score/mean"], rel_tol=1e-4, abs_tol=1e-5)
        assert summary["excluded"] == 0 and summary["trained"] == BATCH * N
        # ... and is a training metric of the step too (console, file logger, wandb): every mr/ and fs/
        # column of reward_extra_info, the step's counts and usage, the running totals
        for name in METRICS:
            block = summary["metrics"][name]
            assert block["failures"] == 0 and block["scored"] == metrics[f"collabllm/step/{name}_scored"]
            if block["mean"] is not None:
                assert metrics[f"collabllm/mr/{name}"] == pytest.approx(block["mean"])
            assert f"collabllm/mr/{name}_weighted" in metrics
        for key in ("fs/future_turns_mean", "fs/end_turn_limit", "fs/simulator_calls", "mr/judge_calls",
                    "step/judge_prompt_tokens", "step/simulator_cost_usd", "total/judge_tokens"):
            assert _finite(metrics[f"collabllm/{key}"]), key
        assert metrics["collabllm/total/judge_tokens"] >= metrics["collabllm/step/judge_prompt_tokens"] > 0
        assert f"step:{summary['step']} - " in console and "collabllm/step/trained:" in console  # verl's line


@pytest.mark.slow
def test_sampled_conversations_are_dumped_with_their_scores(cpu_run):
    _, out = cpu_run
    dump = out / "checkpoints" / "conversations"
    last = sorted(dump.glob("step_*.jsonl"))[-1]  # the highest-numbered file holds the last step
    assert last.name == f"step_{STEPS:06d}.jsonl"
    all_records = [r for step in range(1, STEPS + 1) for r in read_json_lines(dump / f"step_{step:06d}.jsonl")]
    last_records = read_json_lines(last)
    assert len(last_records) == BATCH * N
    for record in all_records:
        assert _finite(record["reward"]) and set(record["metrics"]) == METRICS
        assert record["history"] and record["history"][-1]["role"] == "user"
        assert record["ground_truth"]
        sampling = record["forward_sampling"]
        if sampling["skipped"]:
            assert record["reward"] == -1.0 and sampling["skip_reason"]
            continue
        assert sampling["num_conversations"] == S == len(record["future_conversations"])
        weighted = sum(m["weighted"] for m in record["metrics"].values())
        assert math.isclose(record["reward"], weighted, abs_tol=1e-6)
        for future in record["future_conversations"]:
            assert set(future["scores"]) == METRICS
            roles = [m["role"] for m in future["messages"]]
            # user simulator, then the policy; a terminating or budget-ending user message may come last
            assert roles == (["user", "assistant"] * len(roles))[: len(roles)]
    # at least one response was followed by real forward-sampled turns
    assert any(f["messages"] for r in all_records for f in r["future_conversations"])


@pytest.mark.slow
def test_grpo_prompts_are_the_simulators_openers(cpu_run):
    """The quick start trains on underspecified requests: every RL prompt ends with the user simulator's
    vague opener (build_dataset.py --mode openers), and the full problem is only the simulator's hidden goal."""
    import pandas as pd

    from collabllm_verl.recipe.offline.scripted_user import vague_opener

    proc, out = cpu_run
    assert proc.returncode == 0, proc.stderr[-5000:]
    partial = []
    for split in ("train", "validation"):
        for _, row in pd.read_parquet(out.parent / "data" / f"rl_{split}.parquet").iterrows():
            goal = row["extra_info"]["interaction_kwargs"]["single_turn_prompt"]
            opener = list(row["prompt"])[-1]["content"]
            assert opener == vague_opener(goal)
            partial.append(goal not in opener)
    assert len(partial) == 134 and sum(partial) >= 120  # a very short problem may fit in an opener whole
    records = read_json_lines(sorted((out / "checkpoints" / "conversations").glob("step_*.jsonl"))[-1])
    assert all(r["history"][-1]["content"].startswith("hi, I need some help") for r in records)


@pytest.mark.slow
def test_checkpoint_is_saved_and_loads(cpu_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, out = cpu_run
    checkpoints = out / "checkpoints"
    assert (checkpoints / "latest_checkpointed_iteration.txt").read_text().strip() == str(STEPS)
    actor = checkpoints / f"global_step_{STEPS}" / "actor"
    shard = torch.load(actor / "model_world_size_1_rank_0.pt", map_location="cpu", weights_only=False)
    hf_dir = actor / "huggingface"
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    initial = AutoModelForCausalLM.from_pretrained(_sft_model(out), dtype=torch.float32)
    trained_state, initial_state = model.state_dict(), initial.state_dict()
    assert trained_state.keys() == initial_state.keys()
    assert set(shard) >= {k for k in trained_state if k != "lm_head.weight"}
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True
    )
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([list(ids)])).logits
    assert torch.isfinite(logits).all()
    if any(values["actor/grad_norm"] > 0 for values in _step_metrics(out).values()):
        changed = any(not torch.equal(trained_state[k], initial_state[k]) for k in trained_state)
        assert changed, "the trainer reported gradients but the saved weights equal the initial model"


# ----------------------------------------------------------------------------- the dump, without a trainer


def _record(step: int, reward: float, accuracy: float) -> dict:
    from collabllm_verl.recipe.verl_adapters.conversation_dump import build_record

    history = [{"role": "user", "content": "What is 2 + 2?"}]
    conversations = [
        [
            *history,
            {"role": "assistant", "content": "Do you mean in base 10?"},
            {"role": "user", "content": "Yes."},
            {"role": "assistant", "content": "4"},
        ],
        [*history, {"role": "assistant", "content": "Do you mean in base 10?"}],
    ]
    return build_record(
        step=step,
        uid="u",
        session_id=0,
        data_source="math",
        ground_truth="4",
        reward=reward,
        weights={"accuracy": 1.0, "token_amount": -0.5},
        means={"accuracy": accuracy, "token_amount": 2.0},
        weighted={"accuracy": accuracy, "token_amount": -1.0},
        failures={"accuracy": 1},
        per_conversation={"accuracy": [accuracy, None], "token_amount": [3.0, 1.0]},
        conversations=conversations,
        num_history_messages=1,
    )


def _write_records(directory: str, step: int, rewards: list[float]) -> None:
    from collabllm_verl.recipe.verl_adapters.conversation_dump import ConversationDumpWriter, DumpSettings

    writer = ConversationDumpWriter(DumpSettings(directory))
    for reward in rewards:
        writer.write(_record(step, reward, accuracy=1.0))


def test_records_of_concurrent_writers_are_all_kept(tmp_path):
    import multiprocessing

    rewards = [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6], [0.7, 0.8]]
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_records, args=(str(tmp_path), 3, r)) for r in rewards]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    records = read_json_lines(tmp_path / "step_000003.jsonl")
    assert sorted(r["reward"] for r in records) == pytest.approx([x for pair in rewards for x in pair])
    futures = records[0]["future_conversations"]
    assert [len(f["messages"]) for f in futures] == [2, 0]  # the messages after the trained response
    assert futures[0]["scores"] == {"accuracy": 1.0, "token_amount": 3.0}
    assert futures[1]["scores"] == {"accuracy": None, "token_amount": 1.0}  # the judge failed there
    assert records[0]["response"] == "Do you mean in base 10?"


def test_resumed_step_replaces_the_interrupted_runs_summary_and_records(tmp_path):
    """A run killed during step 2 left a summary row and records for it; the resumed run redoes step 2:
    its summary row replaces the old one and the old records are dropped (no duplicated step)."""
    from collabllm_verl.recipe.verl_adapters.conversation_dump import (
        keep_step_records,
        previous_totals,
        write_summary,
    )

    for step in (1, 2):
        write_summary(tmp_path, {"step": step, "totals": {"judge_tokens": 10.0 * step}})
    _write_records(str(tmp_path), 2, [0.1, 0.2])  # the interrupted run's records (uid "u")
    assert previous_totals(tmp_path, 2) == {"judge_tokens": 10.0}
    write_summary(tmp_path, {"step": 2, "totals": {"judge_tokens": 15.0}})  # the resumed run's step 2
    rows = [json.loads(line) for line in (tmp_path / "summary.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[1]["totals"] == {"judge_tokens": 15.0}
    from collabllm_verl.recipe.verl_adapters.conversation_dump import build_record

    fresh = build_record(step=2, uid="v", session_id=0, data_source="math", ground_truth="4", reward=0.5,
                         weights={"accuracy": 1.0}, means={"accuracy": 0.5}, weighted={"accuracy": 0.5})
    with open(tmp_path / "step_000002.jsonl", "a") as fh:
        fh.write(json.dumps(fresh) + "\n")
    assert keep_step_records(tmp_path, 2, {"v"}) == 2
    assert [r["uid"] for r in read_json_lines(tmp_path / "step_000002.jsonl")] == ["v"]


def test_dump_settings_are_validated_and_old_steps_pruned(tmp_path):
    from collabllm_verl.recipe.verl_adapters.conversation_dump import ConversationDumpWriter, DumpSettings

    assert DumpSettings.from_mapping(None) is None
    assert DumpSettings.from_mapping({"dir": ""}) is None
    with pytest.raises(ValueError, match="unknown"):
        DumpSettings.from_mapping({"dir": "x", "keep": 2})
    with pytest.raises(ValueError, match="keep_last_steps"):
        DumpSettings.from_mapping({"dir": "x", "keep_last_steps": 0})
    writer = ConversationDumpWriter(DumpSettings.from_mapping({"dir": str(tmp_path), "keep_last_steps": 2}))
    for step in range(1, 5):
        writer.write(_record(step, 0.5, accuracy=0.0))
    assert sorted(p.name for p in tmp_path.glob("step_*.jsonl")) == ["step_000003.jsonl", "step_000004.jsonl"]
