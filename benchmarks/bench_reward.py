"""Benchmark: multiturn-aware reward scoring of a batch with LLM judges under a concurrency cap.

Scores B samples x S forward-sampled conversations x M judge metrics (``accuracy`` and
``interactivity``) with the ``collabllm`` reward manager, the way verl's reward loop calls it (one
``run_single`` per sample, all samples concurrently). Judges are the local server's offline stand-ins,
served from a separate process with a fixed answer latency. For each concurrency cap C
(``llm_judge_kwargs.max_concurrency``) it reports the median wall time of ``--rounds`` rounds against
the lower bound ``ceil(B*S*M / C) * latency`` (the target is <= 1.2x the bound), and the wall time of
the same requests sent with bare ``litellm.acompletion`` under the same cap (the client's floor).

    python benchmarks/bench_reward.py --batch 64 --samples 3 --latency-ms 50 --caps 4,8,16,32 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
import numpy as np
from bench_user_simulator import start_server
from omegaconf import OmegaConf
from verl import DataProto

from collabllm_verl.metrics import MetricContext
from collabllm_verl.metrics.judge import build_judge_messages
from collabllm_verl.recipe.core.llm_client import llm_stats, reset_llm_stats
from collabllm_verl.recipe.verl_adapters.reward_manager import CollabLLMRewardManager

METRICS = ("accuracy", "interactivity")


def make_batch(batch: int, samples: int) -> DataProto:
    """B samples, each with S future conversations, as the agent loop delivers them (non-tensor part)."""
    history = [{"role": "user", "content": "Can you help me compute a product?"}]
    future = [
        {"role": "assistant", "content": "Sure. Which two numbers should I multiply?"},
        {"role": "user", "content": "7 and 6, please."},
        {"role": "assistant", "content": "7 times 6 is 42. I suggest checking with 6 times 7."},
    ]
    collab = {
        "future_conversations": [history + future for _ in range(samples)],
        "num_history_messages": len(history),
        "forward_sampling_skipped": False,
        "skip_reason": None,
    }
    rows = {
        "data_source": np.array(["bench"] * batch, dtype=object),
        "reward_model": np.array([{"ground_truth": "42"} for _ in range(batch)], dtype=object),
        "extra_info": np.array(
            [{"interaction_kwargs": {"single_turn_prompt": "Compute 7 * 6."}} for _ in range(batch)],
            dtype=object,
        ),
        "tool_extra_fields": np.array([{"collabllm": collab} for _ in range(batch)], dtype=object),
    }
    return DataProto.from_dict(non_tensors=rows)


def make_manager(base_url: str, cap: int) -> CollabLLMRewardManager:
    os.environ.setdefault("COLLABLLM_JUDGE_API_KEY", "local")  # the local server accepts any key
    config = OmegaConf.create(
        {
            "reward": {
                "reward_kwargs": {
                    "metric_weights": dict.fromkeys(METRICS, 1.0),
                    "llm_judge_kwargs": {
                        "model": "openai/scripted-judge",
                        "api_base": base_url,
                        "api_key_env": "COLLABLLM_JUDGE_API_KEY",
                        "max_concurrency": cap,
                    },
                }
            }
        }
    )
    return CollabLLMRewardManager(config, tokenizer=None)


async def score_batch(manager: CollabLLMRewardManager, data: DataProto) -> list[dict]:
    """As verl's RewardLoopWorker.compute_score_batch: one task per sample."""
    return await asyncio.gather(*(manager.run_single(data[i : i + 1]) for i in range(len(data))))


async def bare_litellm(data: DataProto, base_url: str, cap: int) -> None:
    """Reference: the same judge requests with bare ``litellm.acompletion`` + ``json.loads`` under an
    ``asyncio.Semaphore(cap)``: the client's own floor, without the reward manager and the LLM layer."""
    semaphore = asyncio.Semaphore(cap)
    requests = []
    for i in range(len(data)):
        item = data[i]
        collab = item.non_tensor_batch["tool_extra_fields"]["collabllm"]
        for conversation in collab["future_conversations"]:
            ctx = MetricContext(
                messages=conversation,
                num_history_messages=collab["num_history_messages"],
                ground_truth=item.non_tensor_batch["reward_model"]["ground_truth"],
                extra_info=item.non_tensor_batch["extra_info"],
            )
            requests += [build_judge_messages(task, ctx) for task in METRICS]

    async def one(messages):
        async with semaphore:
            response = await litellm.acompletion(
                model="openai/scripted-judge", api_base=base_url, api_key="local", messages=messages
            )
        json.loads(response.choices[0].message.content)

    await asyncio.gather(*(one(m) for m in requests))


async def run(args) -> list[dict]:
    proc, base_url = start_server(args.latency_ms)
    try:
        data = make_batch(args.batch, args.samples)
        calls = args.batch * args.samples * len(METRICS)
        await score_batch(make_manager(base_url, 64), data[:4])  # warm-up: litellm's first-call set-up
        results = []
        for cap in args.caps:
            manager = make_manager(base_url, cap)
            walls, cpus = [], []
            for _ in range(args.rounds):
                reset_llm_stats()
                cpu0, t0 = time.process_time(), time.perf_counter()
                outputs = await score_batch(manager, data)
                walls.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - cpu0)
                assert all(o["reward_extra_info"]["mr/judge_failures"] == 0 for o in outputs)
                assert llm_stats()["requests"] == calls
            bare = []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                await bare_litellm(data, base_url, cap)
                bare.append(time.perf_counter() - t0)
            bound = math.ceil(calls / cap) * args.latency_ms / 1000.0
            wall = statistics.median(walls)
            results.append(
                {
                    "cap": cap,
                    "calls": calls,
                    "wall_s": round(wall, 3),
                    "bound_s": round(bound, 3),
                    "ratio": round(wall / bound, 2),
                    "bare_litellm_s": round(statistics.median(bare), 3),
                    "client_cpu_ms_per_call": round(1000 * statistics.median(cpus) / calls, 2),
                    "walls_s": [round(w, 3) for w in walls],
                }
            )
            print(json.dumps(results[-1]), flush=True)
        return results
    finally:
        proc.terminate()
        proc.wait(10)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64, help="samples B (default 64)")
    p.add_argument(
        "--samples", type=int, default=3, help="forward-sampled conversations per sample S (default 3)"
    )
    p.add_argument("--latency-ms", type=float, default=50.0, help="judge answer latency (default 50)")
    p.add_argument(
        "--caps", default="4,8,16,32", help="comma-separated concurrency caps C (default 4,8,16,32)"
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds per cap; the median is reported (default 3)")
    p.add_argument("--json-out", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    args.caps = [int(c) for c in args.caps.split(",")]
    results = asyncio.run(run(args))
    print(f"\nB={args.batch} S={args.samples} M={len(METRICS)} latency={args.latency_ms:g} ms")
    print(
        "| C | calls | wall (s) | bound ceil(BSM/C)*latency (s) | wall/bound | bare litellm (s) "
        "| client CPU per call (ms) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['cap']} | {r['calls']} | {r['wall_s']:.3f} | {r['bound_s']:.3f} | {r['ratio']:.2f} "
            f"| {r['bare_litellm_s']:.3f} | {r['client_cpu_ms_per_call']:.2f} |"
        )
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump({"args": vars(args), "results": results}, fh, indent=2)


if __name__ == "__main__":
    sys.exit(main())
