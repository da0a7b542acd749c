"""Wall time of ``evaluate.py`` against the critical path of its conversations.

Runs the evaluation CLI in-process (``evaluate.main``) on ``--tasks`` MATH level-5 problems
(``data/math/math500_level5.jsonl``) with one conversation each. The user simulator (scripted user), the
judges (scripted judges) and the model under test (a scripted policy that always asks a clarifying question,
so every conversation runs to ``--max-messages``) are served by the local OpenAI-compatible server, started
in a separate process with ``--latency-ms`` added to every answer. All calls go through litellm and the
project's LLM layer, as with real models.

The critical path of one conversation is ``max_messages x latency`` (user and policy turns alternate, one
after another) plus one judging round (``accuracy`` and ``interactivity`` are judged concurrently; ``token_amount``
calls no LLM): ``(14 + 1) x 100 ms = 1.5 s`` by default. With the default concurrency every conversation runs
at once, so a perfect run takes the critical path; the target is a wall time <= 1.5 x the critical path.

Reported per round (median over ``--rounds`` after one warm-up round): the wall time of the conversations
and their scoring (``invocation.conversations_wall_seconds`` of ``summary.json``; ``setup_and_run`` adds
loading the tasks and building the models, ``main`` adds writing the summary, its bootstrap and figure),
the ratio to the critical path, conversations per minute, the client process's CPU seconds, and the
LLM requests made. For reference, the same requests (same prompts, same order of dependencies, same
concurrency) are also sent with bare ``litellm.acompletion`` and no project code in between (``bare``): the
floor of any litellm-based evaluator on this machine.

    python benchmarks/bench_evaluate.py --tasks 64 --latency-ms 100 --rounds 3 [--concurrency 64] [--out r.json]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_user_simulator import start_server

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "math" / "math500_level5.jsonl"
QUESTION = "Could you tell me which part of the problem you would like to start with?"
KEY_ENV = "BENCH_LOCAL_KEY"


def serve(latency_ms: float, ready_file: str) -> None:
    """Server process: the built-in stand-ins plus ``bench-policy``; the scripted user never ends early."""
    from collabllm_verl.recipe.offline import server

    server.register_responder("bench-policy", lambda messages, request: QUESTION)
    server.main(["--latency-ms", str(latency_ms), "--ready-file", ready_file, "--scripted-max-turns", "1000"])


def one_round(base_url: str, out: Path, args) -> dict:
    import evaluate
    from collabllm_verl.recipe.core.llm_client import llm_stats, reset_llm_stats

    reset_llm_stats()
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    code = evaluate.main([
        "--dataset", str(DATA), "--out", str(out), "--overwrite", "--num_rows", str(args.tasks), "--task", "math",
        "--max_messages", str(args.max_messages), "--concurrency", str(args.concurrency), "--no_progress",
        "--policy_model", f"{args.policy_provider}/bench-policy", "--user_model", f"{args.provider}/scripted-user",
        "--judge_model", f"{args.provider}/scripted-judge", "--api_base", base_url, "--api_key_env", KEY_ENV,
        "--llm_max_concurrency", str(args.llm_max_concurrency), "--bootstrap_resamples", "2000",
    ])
    total_wall = time.perf_counter() - wall_start
    if code != 0:
        raise RuntimeError(f"evaluate.py exited with {code}")
    summary = json.loads((out / "summary.json").read_text())
    conversations = summary["conversations"]
    if conversations["scored"] != args.tasks or conversations["messages_histogram"] != {
        str(args.max_messages): args.tasks
    }:
        raise RuntimeError(f"unexpected conversations: {conversations}")
    return {
        "wall_s": summary["invocation"]["conversations_wall_seconds"],
        "setup_and_run_wall_s": summary["invocation"]["wall_seconds"],
        "main_wall_s": total_wall,
        "client_cpu_s": time.process_time() - cpu_start,
        "requests": llm_stats()["requests"],
    }


async def bare_litellm(base_url: str, args) -> float:
    """Wall seconds of the same conversations and judge calls sent with bare ``litellm.acompletion``."""
    import asyncio

    import litellm

    from collabllm_verl.interactions.simulator_prompt import build_simulator_messages
    from collabllm_verl.metrics import MetricContext
    from collabllm_verl.metrics.judge import build_judge_messages
    from collabllm_verl.recipe.dataset.system_prompt import COLLABORATOR_SYSTEM_PROMPT

    rows = [json.loads(line) for line in DATA.read_text().splitlines()[: args.tasks]]
    semaphore = asyncio.Semaphore(args.concurrency)

    async def ask(model: str, messages: list[dict], **kwargs) -> str:
        response = await litellm.acompletion(
            model=model, messages=messages, api_base=base_url, api_key="local", max_retries=0, **kwargs
        )
        return response.choices[0].message.content

    async def conversation(row: dict) -> None:
        async with semaphore:
            messages: list[dict] = []
            for _ in range(args.max_messages // 2):
                prompt = build_simulator_messages(
                    goal=row["problem"], task_desc="math", history=messages, termination_signal="[[TERMINATE CHAT]]"
                )
                user_model = f"{args.provider}/scripted-user"
                answer = json.loads(await ask(user_model, prompt, temperature=1.0, max_tokens=512))
                messages.append({"role": "user", "content": answer["response"]})
                policy_prompt = [{"role": "system", "content": COLLABORATOR_SYSTEM_PROMPT}, *messages]
                policy_model = f"{args.policy_provider}/bench-policy"
                reply = await ask(policy_model, policy_prompt, temperature=0.6, max_tokens=2048)
                messages.append({"role": "assistant", "content": reply})
            ctx = MetricContext(messages=messages, ground_truth=row["solution"],
                                extra_info={"interaction_kwargs": {"single_turn_prompt": row["problem"]}})
            await asyncio.gather(
                *(ask(f"{args.provider}/scripted-judge", build_judge_messages(task, ctx), temperature=0)
                  for task in ("accuracy", "interactivity"))
            )

    started = time.perf_counter()
    await asyncio.gather(*(conversation(row) for row in rows))
    return time.perf_counter() - started


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--max-messages", type=int, default=14)
    parser.add_argument("--concurrency", type=int, default=64, help="evaluate.py --concurrency (default 64)")
    parser.add_argument("--llm-max-concurrency", type=int, default=64, help="evaluate.py --llm_max_concurrency")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--policy-provider", default="hosted_vllm",
                        help="litellm provider prefix of the model under test (default hosted_vllm, as a checkpoint "
                        "served by vLLM or by evaluate.py --policy_checkpoint)")
    parser.add_argument("--provider", default="openai",
                        help="litellm provider prefix of the user simulator and judges (default openai, as API models)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ready-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.latency_ms, args.ready_file)
        return
    os.environ[KEY_ENV] = "local"
    import logging

    proc, base_url = start_server(args.latency_ms, [sys.executable, __file__, "--serve"])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            one_round(base_url, Path(tmp) / "warmup", args)
            logging.disable(logging.INFO)
            rounds, bare = [], []
            for i in range(args.rounds):  # alternate, so that both see the same machine load
                rounds.append(one_round(base_url, Path(tmp) / f"round{i}", args))
                cpu_start = time.process_time()
                bare.append((asyncio.run(bare_litellm(base_url, args)), time.process_time() - cpu_start))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    latency = args.latency_ms / 1000.0
    critical = (args.max_messages + 1) * latency
    wall = statistics.median(r["wall_s"] for r in rounds)
    result = {
        "tasks": args.tasks,
        "latency_ms": args.latency_ms,
        "max_messages": args.max_messages,
        "concurrency": args.concurrency,
        "providers": {"policy": args.policy_provider, "user_and_judge": args.provider},
        "critical_path_s": critical,
        "wall_s_median": wall,
        "wall_s_all": [round(r["wall_s"], 3) for r in rounds],
        "setup_and_run_wall_s_median": statistics.median(r["setup_and_run_wall_s"] for r in rounds),
        "main_wall_s_median": statistics.median(r["main_wall_s"] for r in rounds),
        "ratio_to_critical_path": wall / critical,
        "bare_litellm_wall_s_median": statistics.median(b[0] for b in bare),
        "bare_litellm_ratio_to_critical_path": statistics.median(b[0] for b in bare) / critical,
        "bare_litellm_client_cpu_s_median": statistics.median(b[1] for b in bare),
        "target_met": wall <= 1.5 * critical,
        "conversations_per_min": args.tasks / wall * 60.0,
        "client_cpu_s_median": statistics.median(r["client_cpu_s"] for r in rounds),
        "requests": rounds[0]["requests"],
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
