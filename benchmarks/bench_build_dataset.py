"""Wall time of full-conversation generation (``build_dataset.py --mode conversations``) against its critical
path, for N tasks with K=3 candidates and S=3 forward-sampled conversations per candidate.

The scripted user, assistant and judges run in the local OpenAI-compatible server, started in its own
process with ``--latency-ms`` per request; the data engine runs in this process through the CLI's entry
point (``build_dataset.main``), every call through litellm over HTTP.

Critical path: the longest chain of LLM calls that must happen one after another in a conversation, times
the latency. Per conversation it is the opener, then per turn the candidate, the longest forward-sampled
conversation of any candidate (one call per future message, plus the simulator's terminating call when it
ended the chat) and one judge round (metrics and conversations are judged concurrently). It is computed
from the written sessions with the scripted user's rule (it terminates after an answer, or sends the
terminating message, which the engine may keep). With unlimited concurrency the wall time of N tasks
approaches the longest critical path among them; the rest is client CPU (litellm ≈ 3 ms per call here).

    python benchmarks/bench_build_dataset.py --latency-ms 100 --tasks 1,8,32
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from bench_user_simulator import start_server

import build_dataset

REPO = Path(__file__).resolve().parents[1]

SIGNAL = "[[TERMINATE CHAT]]"
KEY_ENV = "BENCH_BUILD_DATASET_KEY"


def chain_calls(record: dict, max_new_turns: int) -> int:
    """Sequential LLM calls of one built conversation (see the module docstring)."""
    turns: dict[int, list[dict]] = {}
    for row in record["rows"]:
        turns.setdefault(row["turn_id"], []).append(row)
    calls = 1  # the opener
    for turn_id, rows in turns.items():
        longest = 0
        for row in rows:
            for session in row["sessions"]:
                future = session[turn_id + 1 :]
                extra = 1 if future and future[-1]["role"] == "assistant" and len(future) < max_new_turns else 0
                if not future:
                    extra = 1  # the simulator ended the chat right after the candidate
                longest = max(longest, len(future) + extra)
        calls += 1 + longest + 1  # candidate, forward sampling, judges
    return calls


def run_once(base_url: str, tasks: int, args: argparse.Namespace) -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench_build_dataset_"))
    argv = [
        "--dataset", str(REPO / "data" / "math" / "math500_level5.jsonl"), "--mode", "conversations",
        "--user_model", "openai/scripted-user", "--assistant_model", "openai/scripted-assistant",
        "--judge_model", "openai/scripted-judge", "--api_base", base_url, "--api_key_env", KEY_ENV,
        "--num_candidates", "3", "--num_samples", "3", "--max_new_turns", str(args.max_new_turns),
        "--max_rows", str(tasks), "--max_concurrent_tasks", str(tasks), "--max_concurrency", str(args.max_concurrency),
        "--local_dir", str(out), "--no_progress",
    ]
    cpu = time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        code = build_dataset.main(argv)
    cpu = time.process_time() - cpu
    if code != 0:
        raise RuntimeError(f"build_dataset.py exited with {code}")
    summary = json.loads((out / "build_dataset.json").read_text())["summary"]
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    chains = [chain_calls(r, args.max_new_turns) for r in records]
    latency = args.latency_ms / 1000.0
    calls = summary["llm"]["total"]["calls"]
    return {
        "tasks": tasks,
        "rows": summary["rows"],
        "turns_mean": sum(r["turns"] for r in records) / len(records),
        "calls": calls,
        "wall_s": summary["wall_s"],
        "critical_path_s": max(chains) * latency,
        "critical_calls": max(chains),
        "wall_over_critical": summary["wall_s"] / (max(chains) * latency),
        "calls_per_s": calls / summary["wall_s"],
        "client_cpu_ms_per_call": 1000.0 * cpu / calls,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latency-ms", type=float, default=100.0, help="server answer latency per request")
    p.add_argument("--tasks", default="1,8,32", help="comma-separated numbers of tasks (N) to time")
    p.add_argument("--max-new-turns", type=int, default=4, help="messages per forward-sampled conversation")
    p.add_argument("--max-concurrency", type=int, default=256, help="LLM requests in flight per model")
    p.add_argument("--rounds", type=int, default=3, help="runs per N; the median wall time is reported")
    p.add_argument("--json-out", default=None, help="also write the results as JSON here")
    args = p.parse_args()
    os.environ[KEY_ENV] = "local"
    proc, base_url = start_server(args.latency_ms)
    try:
        run_once(base_url, 1, args)  # warm-up: imports, connections
        results = []
        for n in args.tasks.split(","):
            rounds = [run_once(base_url, int(n), args) for _ in range(args.rounds)]
            results.append(sorted(rounds, key=lambda r: r["wall_s"])[len(rounds) // 2])  # the median round
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    print(f"K=3, S=3, max_new_turns={args.max_new_turns}, server latency {args.latency_ms:g} ms, "
          f"median of {args.rounds} rounds, {os.cpu_count()} CPUs")
    print(f"{'N':>4} {'rows':>5} {'turns':>5} {'calls':>6} {'wall s':>7} {'critical s':>10} {'wall/crit':>9} "
          f"{'calls/s':>8} {'CPU ms/call':>11}")
    for r in results:
        print(f"{r['tasks']:>4} {r['rows']:>5} {r['turns_mean']:>5.1f} {r['calls']:>6.0f} {r['wall_s']:>7.2f} "
              f"{r['critical_path_s']:>10.2f} {r['wall_over_critical']:>9.2f} {r['calls_per_s']:>8.1f} "
              f"{r['client_cpu_ms_per_call']:>11.2f}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
