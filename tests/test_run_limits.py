"""Run-wide LLM limits (recipe/core/run_limits.py) on a local two-node Ray cluster (``ray.cluster_utils.Cluster``
on 127.0.0.1): worker actors on both nodes call the local LLM server (injected latency) through the LLM-call
layer; the server's count of requests in flight never exceeds the run's limit, throughput at the limit is
within 15 % of limit / latency, and the run-wide request rate holds. Small object stores, few CPUs.

The throughput check is sensitive to a saturated CPU: a permit is held for the client-side time of a call
too (litellm, HTTP), which grows with the machine's load (benchmarks/README.md, run-wide LLM limiter)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

ray = pytest.importorskip("ray")
# throughput and rate are measured: never beside a training run (tests/conftest.py); the first test may wait
# for one slow module of the other xdist worker to finish, hence the longer timeout
pytestmark = [pytest.mark.timing, pytest.mark.timeout(1800)]

OBJECT_STORE = 100 * 1024 * 1024
LATENCY_S = 0.4
# a loaded machine may drop a loopback connection now and then; a retry is one more request, within the limits
RETRIES = {"num_retries": 2, "backoff_initial": 0.05, "backoff_max": 0.2}


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    env = {"PYTHONPATH": os.environ.get("PYTHONPATH", ""), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "object_store_memory": OBJECT_STORE,
            "resources": {"node_a": 8},
            "include_dashboard": False,
        },
    )
    cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE, resources={"node_b": 8})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env={"env_vars": env}, include_dashboard=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@ray.remote(num_cpus=0)
class Caller:
    """One worker process: ``callers`` concurrent coroutines, each making LLM calls through the layer."""

    async def call(self, config: dict, count: int, callers: int) -> tuple[float, float, int]:
        """``(start, end, calls)``: wall-clock seconds (time.time) around ``count`` calls by ``callers``."""
        from collabllm_verl.recipe.core.llm_client import LLMSettings, acomplete_text

        settings = LLMSettings.from_config(config)

        queue = iter(range(count))

        async def caller() -> int:
            done = 0
            for _ in queue:
                await acomplete_text([{"role": "user", "content": "ping"}], settings, purpose="limits_test")
                done += 1
            return done

        start = time.time()
        done = sum(await asyncio.gather(*(caller() for _ in range(callers))))
        return start, time.time(), done


@pytest.fixture(scope="module")
def actors(cluster, llm_server_module):
    """Four worker processes, two on each node, warmed up (litellm imported, the limits actor found)."""
    actors = [Caller.options(resources={node: 1}).remote() for node in ("node_a", "node_b") for _ in range(2)]
    _run(actors, _config(llm_server_module, run_requests_per_minute=60_000), 2, 1)  # no concurrency key yet
    return actors


@pytest.fixture(scope="module")
def llm_server_module():
    from collabllm_verl.recipe.offline.server import LocalLLMServer

    with LocalLLMServer() as server:
        yield server


def _run(actors: list, config: dict, count: int, callers: int) -> tuple[float, int]:
    """Calls per second over all actors (first start to last end) and the calls made."""
    results = ray.get([a.call.remote(config, count, callers) for a in actors])
    start, end = min(r[0] for r in results), max(r[1] for r in results)
    calls = sum(r[2] for r in results)
    return calls / (end - start), calls


def _config(llm_server, **limits) -> dict:
    return {
        "model": "openai/echo",
        "api_base": llm_server.base_url,
        "api_key": "local",
        **RETRIES,
        **limits,
    }


def test_run_wide_concurrency_holds_over_two_nodes(actors, llm_server_module):
    from collabllm_verl.recipe.core import run_limits

    llm_server = llm_server_module
    limit = 4
    llm_server.reset()
    llm_server.configure(latency_ms=LATENCY_S * 1000)
    # 4 workers x 4 callers: 16 want to be in flight
    rate, calls = _run(actors, _config(llm_server, run_max_concurrency=limit), 30, 4)
    stats = llm_server.stats()
    assert calls == 4 * 30
    assert stats["max_in_flight"] <= limit
    assert stats["max_in_flight"] == limit  # the limit is reached, not just respected
    expected = limit / LATENCY_S
    print(f"run-wide limit {limit}: {rate:.1f} calls/s (limit/latency {expected:.1f}), max in flight {stats}")
    assert abs(rate - expected) / expected <= 0.15, f"{rate:.1f} calls/s, expected {expected:.1f}"
    actor_stats = ray.get(run_limits.create_actor().stats.remote())
    (key,) = [k for k in actor_stats if "openai/echo" in k]
    assert actor_stats[key]["max_in_use"] <= limit and actor_stats[key]["in_use"] <= limit


def test_per_process_limits_multiply_without_the_run_limit(actors, llm_server_module):
    llm_server = llm_server_module
    llm_server.reset()
    llm_server.configure(latency_ms=LATENCY_S * 1000)
    _run(actors, _config(llm_server, max_concurrency=2), 12, 4)
    assert llm_server.stats()["max_in_flight"] > 2  # 4 processes x 2: the storm the run-wide limit prevents


def test_run_wide_request_rate_holds_over_two_nodes(actors, llm_server_module):
    from collabllm_verl.recipe.core import run_limits

    llm_server = llm_server_module
    per_minute = 480.0  # 8 starts a second over the whole run
    llm_server.reset()
    rate, calls = _run(actors, _config(llm_server, run_requests_per_minute=per_minute), 12, 3)
    assert calls == 48
    # the bucket may hold one second of starts (BURST_S) at the start; the rest come at the limit
    per_s, burst = per_minute / 60, per_minute / 60 * run_limits.BURST_S
    steady = (calls - burst) / (calls / rate)
    print(f"run-wide rate {per_s:.1f}/s: {rate:.2f} starts/s over the run, {steady:.2f}/s after the burst")
    assert abs(steady - per_s) / per_s <= 0.15
