"""Wall time of forward sampling in the CollabLLM agent loop: S=3 vs. S=1, and a batch of 64 samples.

The agent loop runs in-process through verl's ``AgentLoopWorker.generate_sequences`` (the same per-sample
path as in training) with a scripted policy (``recipe/testing/agent_loop_harness.py``; ``--policy-latency-ms`` per
policy call) and the real user simulator (``CollabLLMInteraction`` through litellm) talking to the local
OpenAI-compatible server's scripted user, started in a separate process with ``--latency-ms`` per request.
The policy always asks a clarifying question, so every future conversation runs to the turn limit:
``max_user_turns`` simulator calls, one after another, per conversation.

Measured:

* ``single``: one sample, ``forward_sampling_seconds`` of S=1 and of S=3 (median over ``--rounds``). The S
  conversations run concurrently, so the ratio should stay near 1 (target <= 1.3); run one after another
  it would be about S.
* ``batch``: ``--batch`` samples (default 64) with S=1 and S=3: wall time of ``generate_sequences`` and
  the per-sample forward-sampling seconds (mean, max).

    python benchmarks/bench_forward_sampling.py --latency-ms 100 --rounds 5 --batch 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from transformers import AutoTokenizer
from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

from collabllm_verl.recipe.cpu.tiny_model import build_tiny_model
from collabllm_verl.recipe.testing.agent_loop_harness import (
    ScriptedPolicy,
    compose_trainer_config,
    rows_to_batch,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_user_simulator import start_server

QUESTION = "Could you tell me a bit more about what you need?"


def write_configs(folder: Path, base_url: str, max_concurrency: int) -> Path:
    (folder / "interaction.yaml").write_text(
        "interaction:\n"
        "  - name: collabllm\n"
        "    class_name: collabllm_verl.interactions.collabllm_interaction.CollabLLMInteraction\n"
        f"    config: {{user_model: openai/scripted-user, api_base: '{base_url}', api_key: local,\n"
        f"             max_concurrency: {max_concurrency}}}\n"
    )
    agent_yaml = folder / "agent.yaml"
    agent_yaml.write_text(
        "- name: collabllm_agent\n"
        "  _target_: collabllm_verl.recipe.verl_adapters.agent_loop.CollabLLMAgentLoop\n"
        "  interaction_config_path: interaction.yaml\n"
    )
    return agent_yaml


def rows(n: int) -> list[dict]:
    return [
        {
            "raw_prompt": [{"role": "user", "content": f"can you help me with problem {i}"}],
            "agent_name": "collabllm_agent",
            "extra_info": {"index": i, "interaction_kwargs": {
                "name": "collabllm", "task_desc": "math problem solving",
                "single_turn_prompt": f"Compute the sum of the first {i + 5} odd numbers and explain why."}},
            "index": i,
        }
        for i in range(n)
    ]


async def run_once(worker: AgentLoopWorker, policy: ScriptedPolicy, n: int) -> dict:
    start = time.perf_counter()
    output = await worker.generate_sequences(rows_to_batch(rows(n)))
    wall = time.perf_counter() - start
    payloads = list(output.non_tensor_batch["collabllm"])
    seconds = [p["forward_sampling_seconds"] for p in payloads]
    failures = sum(p["simulator_failures"] for p in payloads)
    turns = [t for p in payloads for t in p["future_turns"]]
    return {"wall_s": wall, "fs_mean_s": statistics.mean(seconds), "fs_max_s": max(seconds),
            "simulator_failures": failures, "future_turns_mean": statistics.mean(turns)}


async def main_async(args) -> dict:
    proc, base_url = start_server(args.latency_ms)
    try:
        work = Path(tempfile.mkdtemp(prefix="bench_fs_"))
        model_dir = build_tiny_model(work / "tiny")
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        agent_yaml = write_configs(work, base_url, args.max_concurrency)

        def worker_for(s: int, policy: ScriptedPolicy) -> AgentLoopWorker:
            config = compose_trainer_config([
                f"actor_rollout_ref.model.path={model_dir}",
                "actor_rollout_ref.rollout.name=vllm",
                "actor_rollout_ref.rollout.prompt_length=1024",
                "actor_rollout_ref.rollout.response_length=128",
                # no future-token budget cut: every future has its full w user turns, as measured before
                "+actor_rollout_ref.rollout.custom.future_token_budget=4096",
                f"actor_rollout_ref.rollout.multi_turn.num_repeat_rollouts={s}",
                f"actor_rollout_ref.rollout.multi_turn.max_user_turns={args.max_user_turns}",
                f"actor_rollout_ref.rollout.multi_turn.max_assistant_turns={args.max_user_turns + 1}",
                f"actor_rollout_ref.rollout.agent.agent_loop_config_path={agent_yaml}",
                "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
            ])
            return AgentLoopWorker(config, llm_client=policy)

        policy = ScriptedPolicy(tokenizer, first=QUESTION, future=QUESTION, delay_s=args.policy_latency_ms / 1000)
        workers = {s: worker_for(s, policy) for s in (1, 3)}
        await run_once(workers[3], policy, 4)  # warm-up: imports, litellm client, connection pool

        single = {1: [], 3: []}
        for _ in range(args.rounds):
            for s in (1, 3):
                single[s].append((await run_once(workers[s], policy, 1))["fs_mean_s"])
        batch = {}
        for s in (1, 3):
            results = [await run_once(workers[s], policy, args.batch) for _ in range(args.batch_rounds)]
            best = min(results, key=lambda r: r["wall_s"])
            batch[f"S={s}"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in best.items()}
        s1, s3 = statistics.median(single[1]), statistics.median(single[3])
        return {
            "settings": {"simulator_latency_ms": args.latency_ms, "policy_latency_ms": args.policy_latency_ms,
                         "max_user_turns": args.max_user_turns, "rounds": args.rounds,
                         "batch": args.batch, "simulator_max_concurrency": args.max_concurrency,
                         "cpu_count": os.cpu_count()},
            "single": {"S=1_median_s": round(s1, 4), "S=3_median_s": round(s3, 4),
                       "ratio_S3_over_S1": round(s3 / s1, 3),
                       "sequential_estimate_ratio": 3.0},
            "batch": batch,
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=100.0, help="user-simulator latency per request")
    parser.add_argument("--policy-latency-ms", type=float, default=0.0, help="scripted policy latency per call")
    parser.add_argument("--max-user-turns", type=int, default=2, help="w: simulator turns per conversation")
    parser.add_argument("--rounds", type=int, default=5, help="repetitions of the single-sample measurement")
    parser.add_argument("--batch", type=int, default=64, help="samples in the batch measurement")
    parser.add_argument("--batch-rounds", type=int, default=2, help="repetitions of the batch measurement (best kept)")
    parser.add_argument("--max-concurrency", type=int, default=64,
                        help="simulator requests in flight per process (the interaction config's max_concurrency)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    results = asyncio.run(main_async(args))
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
