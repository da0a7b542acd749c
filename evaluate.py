"""Evaluate a model as a collaborator: simulated conversations, the paper's metrics, intervals, comparisons.

    python evaluate.py --dataset SOURCE --out DIR (--policy_model MODEL | --policy_checkpoint DIR) [flags]
    python evaluate.py compare RUN_A RUN_B [--out DIR]        (also: --compare RUN_A RUN_B)

(also installed as ``collabllm-evaluate``). Each conversation starts empty, the user simulator (who knows
the task's hidden goal) opens, the model under test and the simulator alternate until the simulator ends
the chat or ``--max_messages`` is reached, and the task's metrics are computed once on the finished
conversation (docs/evaluation.md). Outputs in ``--out``: ``conversations.jsonl``, ``summary.json``, ``summary.md``
and ``summary.png``; re-running the same command resumes. See README, "Evaluation: evaluate.py".
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger("evaluate")

DEFAULT_MODELS = {"user": "gpt-4o-mini", "judge": "gpt-4o-mini", "policy": ""}


def build_parser() -> argparse.ArgumentParser:
    """The flags of an evaluation run."""
    from collabllm_verl.metrics.presets import TASK_PRESETS
    from collabllm_verl.recipe.dataset.source import add_source_arguments
    from collabllm_verl.recipe.cli.model_args import add_model_arguments

    p = argparse.ArgumentParser(
        prog="evaluate.py",
        description=__doc__.split("\n\n")[0],
        epilog="Compare two runs: evaluate.py compare RUN_A RUN_B [--out DIR] (or --compare RUN_A RUN_B)",
    )
    add_source_arguments(p)
    run = p.add_argument_group("evaluation")
    run.add_argument("--out", required=True, help="run folder: outputs, and the records a re-run resumes from")
    run.add_argument("--num_rows", type=int, default=None, help="evaluate the first N tasks (default all)")
    run.add_argument("--samples_per_row", type=int, default=1, help="conversations per task, k (default 1)")
    run.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of a served checkpoint (default 0)")
    run.add_argument("--max_messages", type=int, default=14, help="messages per conversation, even (default 14)")
    run.add_argument("--task", choices=sorted(TASK_PRESETS), default=None,
                     help="metric preset (default: from the dataset: math, writing -> document, coding -> code)")
    run.add_argument("--metrics", default=None, help="comma-separated metrics instead of the preset's")
    run.add_argument("--concurrency", type=int, default=64, help="conversations in flight at once (default 64)")
    run.add_argument("--label", default=None, help="name of the model in tables (default: the model string or path)")
    run.add_argument("--overwrite", action="store_true", help="discard the records already in --out")
    run.add_argument("--bootstrap_resamples", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    run.add_argument("--no_progress", action="store_true", help="no progress bar")

    policy = p.add_argument_group("model under test (policy)")
    policy.add_argument("--policy_checkpoint", default=None,
                        help="Hugging Face checkpoint folder served by the project on 127.0.0.1 (transformers)")
    policy.add_argument("--policy_device", default="auto", help="auto (a GPU if any), cpu, cuda, cuda:N")
    policy.add_argument("--policy_dtype", default="auto", help="auto (bfloat16 on a GPU, else float32), float32, ...")
    policy.add_argument("--policy_max_batch_size", type=int, default=32, help="replies sampled together (default 32)")
    policy.add_argument("--policy_max_model_len", type=int, default=None,
                        help="context window in tokens (default: the model's max_position_embeddings)")
    policy.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature of the model under test (default: math 0.6, document/code 0.8)")
    policy.add_argument("--top_p", type=float, default=None, help="nucleus sampling (default: the server's)")
    policy.add_argument("--max_tokens", type=int, default=2048, help="tokens per reply of the model under test")

    llm = p.add_argument_group("LLM calls")
    llm.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    llm.add_argument("--num_retries", type=int, default=3, help="retries after a failed request (default 3)")
    llm.add_argument("--llm_max_concurrency", type=int, default=64,
                     help="requests in flight per model and endpoint, shared by the process (default 64)")
    add_model_arguments(p, ["user", "judge", "policy"], DEFAULT_MODELS)
    return p


def build_compare_parser() -> argparse.ArgumentParser:
    """The flags of ``evaluate.py compare``."""
    p = argparse.ArgumentParser(prog="evaluate.py compare", description="Paired comparison of two runs: B - A.")
    p.add_argument("runs", nargs="*", metavar="RUN", help="RUN_A RUN_B (run folders)")
    p.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), default=None, help="the same, as a flag")
    p.add_argument("--out", default=None, help="output folder (default: RUN_B/compare_vs_<RUN_A name>)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--bootstrap_resamples", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    return p


def compare_main(argv: list[str]) -> int:
    """``evaluate.py compare RUN_A RUN_B``: writes compare.json, compare.md and compare.png."""
    from collabllm_verl.recipe.evaluation.compare import compare_runs

    parser = build_compare_parser()
    args = parser.parse_args(argv)
    runs = args.compare or args.runs
    if len(runs) != 2 or (args.compare and args.runs):
        parser.error("give exactly two run folders: compare RUN_A RUN_B (or --compare RUN_A RUN_B)")
    run_a, run_b = Path(runs[0]), Path(runs[1])
    out = Path(args.out) if args.out else run_b / f"compare_vs_{run_a.resolve().name}"
    try:
        result = compare_runs(run_a, run_b, out, n_resamples=args.bootstrap_resamples, seed=args.seed)
    except (FileNotFoundError, ValueError) as err:
        logger.error("%s", err)
        return 2
    print((out / "compare.md").read_text(encoding="utf-8"))
    print(f"written: {out / 'compare.json'}, {out / 'compare.md'}, {out / 'compare.png'}")
    differing = ", ".join(result["differing_settings"])
    if differing:
        logger.warning("the runs also differ in %s: the difference is not the model's alone", differing)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``evaluate.py`` / ``collabllm-evaluate``; returns the exit status (2: bad input)."""
    # litellm's bundled price map, read before litellm is first imported (no download at start-up; set
    # LITELLM_LOCAL_MODEL_COST_MAP=False for the online one).
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("LiteLLM", "httpx"):  # one INFO line per request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        return compare_main(argv[1:])
    if "--compare" in argv:
        return compare_main(argv)
    args = build_parser().parse_args(argv)
    from collabllm_verl.recipe.dataset.rows import DatasetFormatError
    from collabllm_verl.recipe.evaluation.pipeline import metric_line, run_evaluation
    from collabllm_verl.recipe.cli.model_args import local_server

    try:
        with local_server(args):
            summary = run_evaluation(args)
    except (DatasetFormatError, ValueError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 2
    conversations = summary["conversations"]
    print(metric_line(summary))
    print(
        f"{conversations['scored']} of {conversations['expected']} conversations scored, "
        f"{conversations['conversation_failures']} unfinished; cost ${summary['usage']['cost_usd']:.4f}"
    )
    print("written: " + ", ".join(summary["outputs"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
