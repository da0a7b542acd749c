"""Evaluate a model as a collaborator: simulated conversations, the paper's metrics, intervals, comparisons.

    python evaluate.py --dataset SOURCE --out DIR (--policy_model MODEL | --policy_checkpoint DIR) [flags]
    python evaluate.py compare RUN_A RUN_B [--out DIR]        (also: --compare RUN_A RUN_B)

(also installed as ``collabllm-evaluate``). Each conversation starts empty, the user simulator (who knows
the task's hidden goal) opens, the model under test and the simulator alternate until the simulator ends
the chat or ``--max_messages`` is reached, and the task's metrics are computed once on the finished
conversation (docs/evaluation.md). Outputs in ``--out``: ``conversations.jsonl``, ``summary.json``, ``summary.md``
and ``summary.png``; re-running the same command resumes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger("evaluate")

# evaluate.py's own flags, generated from EvaluationSettings (defaults and help live on its fields).
FLAG_GROUPS = {
    "evaluation": [
        "protocol", "out", "num_rows", "samples_per_row", "seed", "max_messages", "task", "metrics", "concurrency",
        "task_retries", "failure_budget", "max_cost_usd", "label", "overwrite", "bootstrap_resamples", "progress",
    ],
    "model under test (policy)": [
        "policy_checkpoint", "policy_device", "policy_dtype", "policy_max_batch_size", "policy_max_model_len",
        "temperature", "top_p", "max_tokens",
    ],
    "LLM calls": ["timeout", "num_retries", "llm_max_concurrency"],
}

def build_parser() -> argparse.ArgumentParser:
    """The flags of an evaluation run: the source flags, :data:`FLAG_GROUPS` and the model flags."""
    # imported here: litellm must not load before main() has chosen its bundled price map
    from collabllm_verl.recipe.cli.model_args import add_model_arguments
    from collabllm_verl.recipe.cli.settings_flags import add_settings_arguments
    from collabllm_verl.recipe.dataset.source import add_source_arguments
    from collabllm_verl.recipe.evaluation.settings import EVALUATION_ROLES, PROTOCOLS, EvaluationSettings

    p = argparse.ArgumentParser(
        prog="evaluate.py",
        description=__doc__.split("\n\n")[0],
        epilog="Compare two runs: evaluate.py compare RUN_A RUN_B [--out DIR] (or --compare RUN_A RUN_B)",
    )
    add_source_arguments(p)
    add_settings_arguments(p, EvaluationSettings, FLAG_GROUPS)
    by_protocol = {
        role: "the protocol's: " + ", ".join(f"{name} {getattr(d, f'{role}_model')}" for name, d in PROTOCOLS.items())
        for role in ("user", "judge")
    }
    add_model_arguments(p, EVALUATION_ROLES, {"user": "", "judge": "", "policy": ""}, by_protocol)
    return p


def settings_from_args(args: argparse.Namespace):
    """The run's :class:`~collabllm_verl.recipe.evaluation.settings.EvaluationSettings` from parsed flags; every
    role's model and endpoint is resolved here, once (inside ``local_server`` when it runs).

    Raises:
        ValueError: a flag value the settings refuse (the message names the flag).
    """
    from collabllm_verl.recipe.cli import settings_flags
    from collabllm_verl.recipe.cli.model_args import resolve_roles
    from collabllm_verl.recipe.evaluation.settings import (
        EVALUATION_ROLES,
        EvaluationSettings,
        SourceSelection,
    )

    roles = resolve_roles(args, EVALUATION_ROLES)
    return settings_flags.settings_from_args(EvaluationSettings, args, source=SourceSelection.from_args(args), **roles)


def build_compare_parser() -> argparse.ArgumentParser:
    """The flags of ``evaluate.py compare``."""
    p = argparse.ArgumentParser(prog="evaluate.py compare", description="Paired comparison of two runs: B - A.")
    p.add_argument("runs", nargs="*", metavar="RUN", help="RUN_A RUN_B (run folders)")
    p.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), default=None, help="the same, as a flag")
    p.add_argument("--out", default=None, help="output folder (default: RUN_B/compare_vs_<RUN_A name>)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--bootstrap_resamples", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    p.add_argument(
        "--allow_mixed_protocols",
        action="store_true",
        help="compare runs evaluated under different --protocol values (refused otherwise) with a warning",
    )
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
        result = compare_runs(
            run_a,
            run_b,
            out,
            n_resamples=args.bootstrap_resamples,
            seed=args.seed,
            allow_mixed_protocols=args.allow_mixed_protocols,
        )
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
    """Entry point of ``evaluate.py`` / ``collabllm-evaluate``; returns the exit status (2: bad input, 1: the run
    stopped because too many conversations could not be finished)."""
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
    from collabllm_verl.recipe.cli.model_args import local_server
    from collabllm_verl.recipe.core.task_runner import BudgetExceeded, FailureBudgetExceeded
    from collabllm_verl.recipe.dataset.rows import DatasetFormatError
    from collabllm_verl.recipe.evaluation.pipeline import metric_line, run_evaluation

    try:
        with local_server(args):
            summary = run_evaluation(settings_from_args(args))
    except (DatasetFormatError, ValueError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 2
    except (FailureBudgetExceeded, BudgetExceeded) as err:
        logger.error("%s", err)
        return 1
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
