"""Calls per second of the LLM-call layer through the run-wide limiter (one Ray actor, leases) against the
per-process limiter alone, in the same run: what the shared limit costs on the hot path.

    python benchmarks/bench_llm_limiter.py [--workers 2] [--callers 8] [--calls 200] [--latency_ms 0]

A local Ray instance (small object store) runs ``--workers`` worker actors; each makes ``--calls`` calls
with ``--callers`` concurrent coroutines through ``acomplete_text`` to the offline stand-in server
(``openai/echo``, ``--latency_ms`` added per answer), first with the per-process limit only
(``max_concurrency``), then with a run-wide ``run_max_concurrency`` as large as the demand (it never binds, so
the difference is the limiter's own cost), then with a binding run-wide limit (``--limit``) whose throughput
is compared with limit / latency when ``--latency_ms`` > 0, and with the same limit enforced per process in
one worker that makes every call (its reference: what the layer reaches at that limit without Ray). Prints
one JSON line per mode.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2, help="worker actors (processes)")
    p.add_argument("--callers", type=int, default=8, help="concurrent calls per worker")
    p.add_argument("--calls", type=int, default=200, help="calls per worker and mode")
    p.add_argument("--latency_ms", type=float, default=0.0, help="latency the server adds per answer")
    p.add_argument("--limit", type=int, default=4, help="the binding run-wide limit of the last mode")
    return p.parse_args(argv)


def main(argv=None) -> None:
    import ray

    from collabllm_verl.recipe.offline.server import LocalLLMServer

    args = _parse(argv)
    env = {"PYTHONPATH": os.environ.get("PYTHONPATH", ""), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    ray.init(
        num_cpus=2,
        object_store_memory=100 * 1024 * 1024,
        include_dashboard=False,
        runtime_env={"env_vars": env},
    )

    @ray.remote(num_cpus=0)
    class Worker:
        async def run(self, config: dict, calls: int, callers: int) -> tuple[float, float]:
            from collabllm_verl.recipe.core.llm_client import LLMSettings, acomplete_text

            settings = LLMSettings.from_config(config)
            queue = iter(range(calls))

            async def caller() -> None:
                for _ in queue:
                    await acomplete_text([{"role": "user", "content": "ping"}], settings, purpose="bench")

            start = time.time()
            await asyncio.gather(*(caller() for _ in range(callers)))
            return start, time.time()

    with LocalLLMServer() as server:
        base = {"model": "openai/echo", "api_base": server.base_url, "api_key": "local", "num_retries": 0}
        workers = [Worker.remote() for _ in range(args.workers)]
        demand = args.workers * args.callers
        modes = {
            "per_process": {**base, "max_concurrency": args.callers},
            "run_wide_not_binding": {**base, "max_concurrency": args.callers, "run_max_concurrency": demand},
            "run_wide_binding": {**base, "max_concurrency": args.callers, "run_max_concurrency": args.limit},
            "per_process_binding_one_worker": {**base, "max_concurrency": args.limit},
        }
        ray.get([w.run.remote(modes["run_wide_not_binding"], 4, 2) for w in workers])  # warm-up
        server.configure(latency_ms=args.latency_ms)
        for name, config in modes.items():
            server.reset()
            server.configure(latency_ms=args.latency_ms)
            # the last mode: the same limit per process, in one worker making every call (the reference)
            chosen = workers[:1] if name.startswith("per_process_binding") else workers
            calls_each = args.calls * args.workers // len(chosen)
            callers = args.callers * args.workers // len(chosen)
            results = ray.get([w.run.remote(config, calls_each, callers) for w in chosen])
            wall = max(r[1] for r in results) - min(r[0] for r in results)
            calls = calls_each * len(chosen)
            row = {
                "mode": name,
                "workers": args.workers,
                "callers_per_worker": args.callers,
                "latency_ms": args.latency_ms,
                "calls": calls,
                "calls_per_s": round(calls / wall, 1),
                "server_max_in_flight": server.stats()["max_in_flight"],
            }
            if name in ("run_wide_binding", "per_process_binding_one_worker"):
                row["limit"] = args.limit
                if args.latency_ms:
                    row["limit_over_latency_per_s"] = round(args.limit / (args.latency_ms / 1000), 1)
            print(json.dumps(row), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
