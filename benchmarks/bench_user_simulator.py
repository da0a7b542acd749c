"""Throughput of concurrent user-simulator calls: through the LLM-call layer vs. bare litellm.

Starts the local OpenAI-compatible server in a separate process (so its CPU use does not compete with the
client's GIL) with a fixed answer latency, then times N concurrent simulator requests made

* ``direct``: ``litellm.acompletion`` + ``json.loads`` of the answer (no limits, retries or counters);
* ``layer``: ``llm_client.acomplete_json`` (limiter, retries, lenient JSON, key checks, counters);
* ``interaction``: ``CollabLLMInteraction.generate_response`` (prompt building + the layer).

Each path runs ``--rounds`` times after one warm-up round, in alternating order; the median wall time is
reported as calls/s, and the layer's overhead per call as (median layer wall - median direct wall) / N
and as client CPU milliseconds per call.

    python benchmarks/bench_user_simulator.py --n 384 --latency-ms 50 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm

from collabllm_verl.interactions.collabllm_interaction import CollabLLMInteraction
from collabllm_verl.interactions.simulator_prompt import build_simulator_messages
from collabllm_verl.recipe.core import llm_client

SIGNAL = "[[TERMINATE CHAT]]"
CHAT = [
    {"role": "user", "content": "I need help with a number puzzle"},
    {"role": "assistant", "content": "Sure! Could you tell me the exact puzzle?"},
]


def start_server(latency_ms: float, command: list[str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start the local server in its own process; ``command`` replaces ``python -m ...offline.server`` (it gets
    ``--latency-ms`` and ``--ready-file`` appended). Returns the process and the base URL."""
    ready = Path(tempfile.mkdtemp()) / "url"
    proc = subprocess.Popen(
        [*(command or [sys.executable, "-m", "collabllm_verl.recipe.offline.server"]),
         "--latency-ms", str(latency_ms), "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("local LLM server did not start")
        time.sleep(0.05)
    return proc, ready.read_text().strip()


def prompts(n: int) -> list[list[dict]]:
    return [
        build_simulator_messages(goal=f"Find the {i}-th prime number and explain the method.", task_desc="math",
                                 history=CHAT, termination_signal=SIGNAL)
        for i in range(n)
    ]


async def run_direct(batch, settings: llm_client.LLMSettings) -> None:
    async def one(messages):
        r = await litellm.acompletion(model=settings.model, messages=messages, timeout=settings.timeout,
                                      max_retries=0, **settings.completion_kwargs)
        return json.loads(r.choices[0].message.content)["response"]

    out = await asyncio.gather(*(one(m) for m in batch))
    assert all(out)


async def run_layer(batch, settings: llm_client.LLMSettings) -> None:
    out = await asyncio.gather(*(llm_client.acomplete_json(m, settings, required={"response": str},
                                                           purpose="bench") for m in batch))
    assert all(o["response"] for o in out)


async def run_interaction(n: int, sim: CollabLLMInteraction) -> None:
    ids = [await sim.start_interaction(single_turn_prompt=f"Find the {i}-th prime number.", task_desc="math")
           for i in range(n)]
    out = await asyncio.gather(*(sim.generate_response(i, CHAT) for i in ids))
    assert not any(meta["simulator_failed"] for *_, meta in out)
    for i in ids:
        await sim.finalize_interaction(i)


async def bench(args) -> dict:
    proc, url = start_server(args.latency_ms)
    try:
        cfg = {"user_model": "openai/scripted-user", "api_base": url, "api_key": "local", "temperature": 1.0,
               "max_tokens": 512, "max_concurrency": args.max_concurrency or args.n, "timeout": 60}
        settings = llm_client.LLMSettings.from_config(cfg, model_key="user_model")
        sim = CollabLLMInteraction(cfg)
        batch = prompts(args.n)
        paths = {
            "direct": lambda: run_direct(batch, settings),
            "layer": lambda: run_layer(batch, settings),
            "interaction": lambda: run_interaction(args.n, sim),
        }
        for fn in paths.values():  # warm-up: connections, imports, litellm caches
            await fn()
        wall: dict[str, list[float]] = {k: [] for k in paths}
        cpu: dict[str, list[float]] = {k: [] for k in paths}
        for r in range(args.rounds):
            order = list(paths) if r % 2 == 0 else list(reversed(paths))
            for name in order:
                t0, c0 = time.perf_counter(), time.process_time()
                await paths[name]()
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        result = {"n": args.n, "latency_ms": args.latency_ms, "rounds": args.rounds,
                  "max_concurrency": cfg["max_concurrency"], "cpu_count": os.cpu_count(), "paths": {}}
        for name in paths:
            w, c = statistics.median(wall[name]), statistics.median(cpu[name])
            result["paths"][name] = {"wall_s": round(w, 3), "calls_per_s": round(args.n / w, 1),
                                     "client_cpu_ms_per_call": round(1000 * c / args.n, 2)}
        d, lay = result["paths"]["direct"], result["paths"]["layer"]
        result["layer_overhead_ms_per_call"] = {
            "wall": round(1000 * (lay["wall_s"] - d["wall_s"]) / args.n, 3),
            "client_cpu": round(lay["client_cpu_ms_per_call"] - d["client_cpu_ms_per_call"], 3),
        }
        stats = llm_client.llm_stats()
        result["layer_counters"] = {k: stats.get(f"bench/{k}", 0) for k in ("calls", "requests", "retries", "failures")}
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=384, help="concurrent simulator calls per round")
    p.add_argument("--latency-ms", type=float, default=50.0, help="server answer latency")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per path (median reported)")
    p.add_argument("--max-concurrency", type=int, default=None, help="layer limit (default: --n, no throttling)")
    p.add_argument("--json-out", default=None, help="also write the result as JSON here")
    args = p.parse_args()
    result = asyncio.run(bench(args))
    print(f"{args.n} concurrent simulator calls, server latency {args.latency_ms:g} ms, "
          f"median of {args.rounds} rounds, {os.cpu_count()} CPUs")
    print(f"{'path':<12} {'wall s':>8} {'calls/s':>9} {'client CPU ms/call':>19}")
    for name, r in result["paths"].items():
        print(f"{name:<12} {r['wall_s']:>8.3f} {r['calls_per_s']:>9.1f} {r['client_cpu_ms_per_call']:>19.2f}")
    o = result["layer_overhead_ms_per_call"]
    print(f"layer overhead per call: {o['wall']:+.3f} ms wall, {o['client_cpu']:+.3f} ms client CPU")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
