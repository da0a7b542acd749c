"""End to end on a CPU (`DEVICE=cpu train_rl_collabllm.sh`, tiny model, hf rollout): what happens when the
judge fails, PPO with a critic, and resuming a killed run.

Three CPU training set-ups, each as small as the behaviour allows:

* **Outage** (GRPO, S = 1 future conversation per response, judge retries off, failure budget 0.6): the
  judges run on their own local server. Step 1: exactly one judge call fails, so exactly one response has a
  weighted metric with no scored conversation: it is left out of the policy gradient (verl's batch mean
  reward equals the mean over the other responses) and counted in the step line, ``summary.jsonl`` and the
  ``collabllm/step/*`` training metrics. Step 2: every judge call fails; the driver stops the run with one
  error naming the metric, the judge's endpoint, the rate and the last error.
* **PPO, killed and resumed** (``ALGORITHM=ppo``, a checkpoint every step, the user simulator and judges
  on a local server with 200 ms latency so step 2 takes a few seconds): the run is killed during step 2,
  then resumed from ``global_step_1``. Both steps log ``critic/vf_loss``; training continues at step 2; the
  conversation dump and the step summary hold each step once; the judge's API key, given on the command
  line in the blog's form, appears in no output and no file (the conversation dump, checkpoints, metrics).
* **Budget** (GRPO, S = 1, ``LLM_PRICES`` set so high that step 1 costs more than ``MAX_COST_USD``, run-wide
  limits on): step 1 prints the cost projection, verl saves ``global_step_1``, and the run stops with one
  error naming the budget and the spend; step 2 never starts.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collabllm_verl.recipe.dataset.jsonl import read_json_lines
from collabllm_verl.recipe.offline.server import LocalLLMServer

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-test-DoNotPrint0123456789"
pytestmark = pytest.mark.slow


def _env(out: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VERL_", "COLLABLLM_", "RAY_ADDRESS"))}
    env.update(PYTHON=sys.executable, DEVICE="cpu", OUTPUT_DIR=str(out), TRAIN_BATCH_SIZE="2", ROLLOUT_N="2")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def rl_data(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("data")
    subprocess.run(
        [
            sys.executable,
            str(REPO / "process_dataset.py"),
            "--dataset",
            str(REPO / "data/math/math500_level5.jsonl"),
            "--local_dir",
            str(data),
            "--dataset_type",
            "rl",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return data


def _start(out: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "run.log", "ab")  # noqa: SIM115  (closed with the process)
    return subprocess.Popen(
        ["bash", str(REPO / "train_rl_collabllm.sh"), *args],
        cwd=out,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_until(proc: subprocess.Popen, condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before the awaited condition")
        if time.monotonic() > deadline:
            raise AssertionError("the awaited condition did not happen in time")
        time.sleep(0.1)


def _kill(proc: subprocess.Popen) -> None:
    """``kill -9`` of the run's process group (bash, the trainer's driver); the Ray processes it started
    die with it (Ray sets them to die with their parent). Waits a few seconds for them to go."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        time.sleep(5)


def _summaries(out: Path) -> list[dict]:
    path = out / "checkpoints" / "conversations" / "summary.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _metrics(out: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {row["step"]: row["data"] for row in rows}


# ------------------------------------------------------------------------------------------------ outage
@pytest.fixture(scope="module")
def outage_run(rl_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("outage")
    with LocalLLMServer() as judges:
        judges.inject("server_error")  # the first judge call of the run fails (no retry)
        env = _env(out, DATA_DIR=str(rl_data), NUM_REPEAT_ROLLOUTS="1", LLM_API_KEY=SECRET)
        k = "+reward.reward_kwargs"
        proc = _start(
            out,
            env,
            f"{k}.llm_judge_kwargs.api_base={judges.base_url}",
            f"{k}.llm_judge_kwargs.num_retries=0",
            f"{k}.max_failure_rate=0.6",
        )
        try:
            _wait_until(proc, lambda: len(_summaries(out)) >= 1, timeout=600)
            judges.configure(fault_rate=1.0, fault_modes=["server_error"])  # from step 2 on: a dead judge
            proc.wait(timeout=600)
        finally:
            _kill(proc)
        yield proc.returncode, (out / "run.log").read_text(errors="replace"), out, judges.base_url


def test_a_response_without_a_scored_weighted_metric_is_excluded_and_counted(outage_run):
    _, log, out, _ = outage_run
    step1 = _summaries(out)[0]
    assert step1["step"] == 1 and step1["responses"] == 4
    assert step1["excluded"] == 1 and step1["trained"] == 3
    assert step1["judge"]["failed_calls"] == 1
    assert sum(m["failures"] for m in step1["metrics"].values()) == 1
    assert "could not be scored on any of its 1 future conversations" in step1["excluded_reasons"][0]
    assert "InternalServerError" in step1["excluded_reasons"][0]
    assert "[collabllm reward] step 1: 4 responses (3 trained, 1 excluded" in log
    # verl trained on the other three only: its batch reward mean is theirs
    metrics = _metrics(out)[1]
    assert metrics["collabllm/step/excluded"] == 1.0 and metrics["collabllm/step/trained"] == 3.0
    assert math.isclose(metrics["critic/score/mean"], step1["reward"]["mean"], rel_tol=1e-4, abs_tol=1e-5)
    records = read_json_lines(out / "checkpoints" / "conversations" / "step_000001.jsonl")
    excluded = [r for r in records if r["excluded"]]
    assert len(records) == 4 and len(excluded) == 1 and excluded[0]["reward"] is None


def test_a_dead_judge_stops_training_with_one_readable_error(outage_run):
    returncode, log, out, judge_url = outage_run
    assert returncode != 0
    assert [s["step"] for s in _summaries(out)] == [1]  # step 2 was never trained
    assert 2 not in _metrics(out)
    message = next(line for line in log.splitlines() if "above reward_kwargs.max_failure_rate=0.6" in line)
    assert "collabllm reward: step 2: metric '" in message
    assert f"(judge: openai/scripted-judge at {judge_url})" in message
    assert "(100%)" in message and "last error: InternalServerError" in message
    assert SECRET not in log


# ------------------------------------------------------------------------------------- PPO, kill, resume
@pytest.fixture(scope="module")
def ppo_resumed(rl_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ppo")
    conversations = out / "checkpoints" / "conversations"
    with LocalLLMServer(latency_ms=200) as server:
        env = _env(
            out,
            DATA_DIR=str(rl_data),
            ALGORITHM="ppo",
            TOTAL_STEPS="2",
            SAVE_FREQ="1",
            LOCAL_LLM_SERVER="0",
            LLM_API_BASE=server.base_url,
            LLM_API_KEY="local",
        )
        judge_key = f"+reward_model.reward_kwargs.llm_judge_kwargs.api_key={SECRET}"  # the blog's form
        first = _start(out, env, judge_key)
        try:
            checkpointed = out / "checkpoints" / "latest_checkpointed_iteration.txt"
            _wait_until(
                first,
                lambda: (
                    checkpointed.exists()
                    and checkpointed.read_text().strip() == "1"
                    and (conversations / "step_000002.jsonl").exists()
                ),
                timeout=600,
            )
        finally:
            _kill(first)
        assert checkpointed.read_text().strip() == "1", (
            "step 2 finished before the kill; the test needs it cut"
        )
        first_metrics = _metrics(out)
        interrupted = read_json_lines(conversations / "step_000002.jsonl")
        resumed = _start(out, env, str(out / "checkpoints" / "global_step_1"), judge_key)
        resumed.wait(timeout=900)
        yield resumed.returncode, first_metrics, interrupted, out


def test_ppo_with_a_critic_trains_on_the_cpu(ppo_resumed):
    returncode, first_metrics, _, out = ppo_resumed
    assert returncode == 0, (out / "run.log").read_text()[-5000:]
    for metrics in (first_metrics[1], _metrics(out)[2]):
        assert math.isfinite(metrics["critic/vf_loss"]) and math.isfinite(metrics["critic/vpred_mean"])
        assert math.isfinite(metrics["actor/pg_loss"])
    assert (out / "checkpoints" / "global_step_2" / "critic").is_dir()


def test_a_killed_run_resumes_at_step_2_without_duplicated_or_missing_steps(ppo_resumed):
    returncode, _, interrupted, out = ppo_resumed
    assert returncode == 0
    assert sorted(_metrics(out)) == [2]  # the resumed run starts at step 2 (verl's file logger restarts)
    assert (out / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    summaries = _summaries(out)
    assert [s["step"] for s in summaries] == [1, 2]
    # running totals continue from step 1
    step2_tokens = summaries[1]["judge"]["prompt_tokens"] + summaries[1]["judge"]["completion_tokens"]
    assert summaries[1]["totals"]["judge_tokens"] == pytest.approx(
        summaries[0]["totals"]["judge_tokens"] + step2_tokens
    )
    conversations = out / "checkpoints" / "conversations"
    for step in (1, 2):
        records = read_json_lines(conversations / f"step_{step:06d}.jsonl")
        assert len(records) == 4 and len({(r["uid"], r["session_id"]) for r in records}) == 4
        assert {r["step"] for r in records} == {step}
    resumed_uids = {r["uid"] for r in read_json_lines(conversations / "step_000002.jsonl")}
    assert interrupted and not resumed_uids & {r["uid"] for r in interrupted}  # the killed run's records went


def test_the_api_key_appears_in_no_output_and_no_file(ppo_resumed):
    _, _, _, out = ppo_resumed
    assert SECRET not in (out / "run.log").read_text(errors="replace")
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


# ------------------------------------------------------------------------------------------------ budget
@pytest.fixture(scope="module")
def budget_run(rl_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("budget")
    env = _env(
        out, DATA_DIR=str(rl_data), NUM_REPEAT_ROLLOUTS="1", TOTAL_STEPS="3", LLM_PRICES="1000,2000",
        MAX_COST_USD="0.001",
    )
    limits = [
        "++actor_rollout_ref.rollout.custom.user_simulator.run_max_concurrency=2",
        "++reward.reward_kwargs.llm_judge_kwargs.run_max_concurrency=2",
    ]
    proc = _start(out, env, *limits)
    try:
        proc.wait(timeout=900)
    finally:
        _kill(proc)
    return proc.returncode, (out / "run.log").read_text(errors="replace"), out


def test_a_budget_below_one_step_stops_at_step_1_with_a_checkpoint(budget_run):
    returncode, log, out = budget_run
    assert returncode != 0
    assert [s["step"] for s in _summaries(out)] == [1]
    step1 = _summaries(out)[0]
    assert step1["judge"]["cost_usd"] > 0 and step1["simulator"]["cost_usd"] > 0  # the prices, not litellm's map
    spent = step1["totals"]["judge_cost_usd"] + step1["totals"]["simulator_cost_usd"]
    assert "[collabllm cost] cost after 1 of 3 steps: $" in log
    assert (out / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "1"
    assert (out / "checkpoints" / "global_step_1" / "actor").is_dir()
    stop = "BudgetExceeded: training run (step 1) stopped: spent $"
    message = next(line for line in log.splitlines() if stop in line)
    assert f"spent ${spent:.4g}" in message
    assert "more than the budget trainer.v1.sampler.sampler_kwargs.max_cost_usd=0.001 USD" in message
    assert "Checkpoint of step 1 saved in" in message and "global_step_1" in message
    assert 2 not in _metrics(out)
    limits = next(line for line in log.splitlines() if "[collabllm limits] step 1: " in line)
    for role in ("scripted-user", "scripted-judge"):  # every worker drew from the run's actor, within the limit
        used = re.search(rf"openai/{role} at \S+: at most (\d+) of 2 in use, (\d+) granted", limits)
        assert used and 1 <= int(used[1]) <= 2 and int(used[2]) >= 1, limits
