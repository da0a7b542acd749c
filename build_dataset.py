"""Build multi-turn CollabLLM datasets from a single-turn task (the data engine).

Examples::

    # Simulated openers for RL (one user-simulator call per task), then RL prompts:
    python build_dataset.py --dataset data/math/math500_level5.jsonl --mode openers --local_dir ~/data/math-openers
    python process_dataset.py --dataset ~/data/math-openers --local_dir ~/data/math-rl --dataset_type rl

    # Full conversations with K=3 scored candidates per turn (the published collabllm-multiturn-* schema):
    python build_dataset.py --dataset data/math/math500_level5.jsonl --mode conversations \\
        --assistant_model gpt-4o --local_dir ~/data/math-multiturn

    # Offline, with the scripted stand-ins of the local server (no API key):
    python build_dataset.py --dataset data/math/math500_level5.jsonl --mode conversations --local_server \\
        --user_model openai/scripted-user --assistant_model openai/scripted-assistant \\
        --judge_model openai/scripted-judge --max_rows 4 --local_dir /tmp/math-multiturn

Writes ``train.parquet``, ``build_dataset.json`` (settings and run summary) and ``records.jsonl`` (resume
state) into ``--local_dir``; failed tasks go to ``failures.jsonl``. Running the same command again
continues a killed or partly failed run. Every flag: docs/datasets.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm must not download its price map

from pydantic import ValidationError

from collabllm_verl.interactions.collabllm_interaction import CollabLLMInteraction
from collabllm_verl.metrics import UnknownMetricError
from collabllm_verl.metrics.presets import TASK_PRESETS, preset
from collabllm_verl.recipe.cli.model_args import (
    RoleEndpoint,
    add_model_arguments,
    local_server,
    resolve_roles,
)
from collabllm_verl.recipe.cli.settings_flags import add_settings_arguments
from collabllm_verl.recipe.core.llm_client import LLMSettings
from collabllm_verl.recipe.core.multiturn_reward import RewardSettings, resolve_settings
from collabllm_verl.recipe.core.settings import DEFAULT_LLM_MODEL
from collabllm_verl.recipe.core.task_runner import DEFAULT_FAILURE_BUDGET, TaskRunnerSettings
from collabllm_verl.recipe.data_engine.build import MODES, build
from collabllm_verl.recipe.data_engine.config import SCORE_AGGREGATIONS, SCORE_FORMULAS, Engine, EngineConfig
from collabllm_verl.recipe.data_engine.runner import RunSummary
from collabllm_verl.recipe.data_engine.task import tasks_from_rows
from collabllm_verl.recipe.dataset.rows import DatasetFormatError, SourceSpec
from collabllm_verl.recipe.dataset.source import add_source_arguments, load_rows, system_prompt_from_arg

logger = logging.getLogger("build_dataset")

ROLES = ("user", "assistant", "judge")
DEFAULT_MODELS = dict.fromkeys(ROLES, DEFAULT_LLM_MODEL)
PRESET_BY_ABILITY = {"math": "math", "writing": "document", "coding": "code"}
# The local stand-in server accepts any key; it is passed like every key, through an environment variable.


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_source_arguments(
        p,
        system_prompt_help="file holding the system prompt of the non-proactive candidates and of the assistant "
        "in forward sampling, or 'none' (default: none, as the original data engine)",
    )
    p.set_defaults(system_prompt="none")
    p.add_argument("--local_dir", required=True, help="output folder (also holds the resume state)")
    p.add_argument("--mode", choices=MODES, default="conversations", help="openers or full conversations (default)")
    add_model_arguments(p, ROLES, DEFAULT_MODELS)
    g = p.add_argument_group("conversation search (--mode conversations)")
    g.add_argument("--num_candidates", type=int, default=3, help="K, candidate replies per turn (default 3)")
    g.add_argument("--proactive_share", type=float, default=0.5,
                   help="share of the candidates given the proactive instruction instead of the system prompt, "
                   "floor(K * share) of them (default 0.5: 1 of 3, as the original)")
    g.add_argument("--num_samples", type=int, default=3, help="S, forward-sampled conversations per candidate (3)")
    g.add_argument("--max_new_turns", type=int, default=4,
                   help="messages each forward-sampled conversation adds after the candidate, even (default 4)")
    g.add_argument("--max_total_turns", type=int, default=14, help="most messages per conversation (default 14)")
    g.add_argument("--score_aggregation", choices=SCORE_AGGREGATIONS, default="original",
                   help="a candidate's score: 'original' (mean over the forward-sampled conversations of the "
                   "weighted metric sum, no clamp, as the original data engine; default) or 'training' (the RL "
                   "reward: per metric clamp(weight * mean, -1, 1), summed)")
    g.add_argument("--assistant_temperature", type=float, default=0.8, help="candidate sampling temperature (0.8)")
    g.add_argument("--assistant_max_tokens", type=int, default=2048,
                   help="token limit per assistant turn (default 2048, as the original data engine)")
    g.add_argument("--preset", choices=sorted(TASK_PRESETS), default=None,
                   help="metric weights and options of a task family (default: by the dataset's task)")
    g.add_argument("--metric_weights", default=None, metavar="NAME=W,...",
                   help="metric weights replacing the preset's, e.g. accuracy=1,interactivity=0.5,token_amount=-0.5")
    g.add_argument("--metric_kwargs", default=None, metavar="JSON",
                   help='per-metric options merged over the preset\'s, e.g. \'{"token_amount": {"unit": "words"}}\'')
    r = p.add_argument_group("run")
    r.add_argument("--max_concurrent_tasks", type=int, default=16, help="tasks in flight at once (default 16)")
    r.add_argument("--max_concurrency", type=int, default=64,
                   help="LLM requests in flight per model and endpoint in this process (default 64)")
    r.add_argument("--requests_per_minute", type=float, default=None, help="request-rate limit per model")
    r.add_argument("--num_retries", type=int, default=3,
                   help="retries of one LLM call after its first attempt, with back-off (default 3)")
    r.add_argument("--task_retries", type=int, default=1,
                   help="extra attempts of a task that failed after the LLM layer's retries (default 1)")
    r.add_argument("--failure_budget", type=float, default=DEFAULT_FAILURE_BUDGET,
                   help="share of this run's tasks that may fail; one more stops the run, keeping the finished "
                   f"ones (1: never; default {DEFAULT_FAILURE_BUDGET})")
    r.add_argument("--no_progress", action="store_true", help="no progress bar")
    add_settings_arguments(p, TaskRunnerSettings, {"budget": ["max_cost_usd"]})
    return p.parse_args(argv)


def _weights(text: str) -> dict[str, float]:
    weights = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ValueError(f"--metric_weights expects NAME=NUMBER[,NAME=NUMBER...], got {item!r}")
    return weights


def reward_kwargs(args: argparse.Namespace, ability: str, judge: RoleEndpoint) -> dict[str, Any]:
    """``reward_kwargs`` of the MR (weights, judge, metric options) from the flags and the task's preset.

    Raises:
        ValueError: no preset for the task and no ``--metric_weights``, or malformed flags.
    """
    name = args.preset or PRESET_BY_ABILITY.get(ability)
    if name is None and not args.metric_weights:
        raise ValueError(f"no metric preset for a '{ability}' task: pass --preset or --metric_weights")
    chosen = preset(name) if name else {"metric_weights": {}, "metric_kwargs": {}}
    weights = _weights(args.metric_weights) if args.metric_weights else chosen["metric_weights"]
    extra = json.loads(args.metric_kwargs) if args.metric_kwargs else {}
    if not isinstance(extra, dict) or not all(isinstance(v, dict) for v in extra.values()):
        raise ValueError("--metric_kwargs must be a JSON object of metric name -> options object")
    options = {**chosen["metric_kwargs"], **extra}
    return {
        "metric_weights": weights,
        "metric_kwargs": {metric: opts for metric, opts in options.items() if metric in weights},
        "llm_judge_kwargs": judge.config(**call_limits(args)),
    }


def call_limits(args: argparse.Namespace) -> dict[str, Any]:
    """The LLM layer's per-call settings shared by every role."""
    return {
        "max_concurrency": args.max_concurrency,
        "requests_per_minute": args.requests_per_minute,
        "num_retries": args.num_retries,
    }


def runner_settings(args: argparse.Namespace) -> TaskRunnerSettings:
    """How the tasks run: ``--max_concurrent_tasks``, ``--task_retries``, ``--failure_budget``, ``--no_progress``.

    Raises:
        ValueError: a value out of range (names the flags).
    """
    try:
        return TaskRunnerSettings(
            max_concurrent=args.max_concurrent_tasks,
            retries=args.task_retries,
            failure_budget=args.failure_budget,
            max_cost_usd=args.max_cost_usd,
            progress=not args.no_progress,
        )
    except ValidationError:
        raise ValueError(
            "--max_concurrent_tasks must be >= 1, --task_retries >= 0, --failure_budget in [0, 1] and --max_cost_usd "
            f"> 0 (got {args.max_concurrent_tasks}, {args.task_retries}, {args.failure_budget}, {args.max_cost_usd})"
        ) from None


def conversation_engine(
    args: argparse.Namespace, spec: SourceSpec, interaction: CollabLLMInteraction, roles: dict[str, RoleEndpoint]
) -> tuple[Engine, dict[str, Any]]:
    """The search's objects for ``--mode conversations`` and what the manifest records of them.

    Returns:
        ``(engine, manifest entries)``: the entries are ``models`` (assistant, judge), ``search`` and ``reward``.

    Raises:
        ValueError: bad search or metric flags (names the flag).
        UnknownMetricError: an unknown metric name.
    """
    config = EngineConfig(
        num_candidates=args.num_candidates,
        proactive_share=args.proactive_share,
        num_samples=args.num_samples,
        max_new_turns=args.max_new_turns,
        max_total_turns=args.max_total_turns,
        system_prompt=system_prompt_from_arg(args.system_prompt),
        score_aggregation=args.score_aggregation,
    )
    kwargs = reward_kwargs(args, spec.ability, roles["judge"])
    reward = RewardSettings.from_reward_kwargs(kwargs)
    assistant = roles["assistant"].config(
        temperature=args.assistant_temperature, max_tokens=args.assistant_max_tokens, **call_limits(args)
    )
    engine = Engine(
        config=config,
        interaction=interaction,
        assistant=LLMSettings.from_config(assistant),
        reward=reward,
        metrics=resolve_settings(reward),
    )
    entries = {
        "models": {"assistant": assistant["model"], "judge": kwargs["llm_judge_kwargs"]["model"]},
        "search": {
            "num_candidates": config.num_candidates,
            "num_proactive": config.num_proactive,
            "num_samples": config.num_samples,
            "max_new_turns": config.max_new_turns,
            "max_total_turns": config.max_total_turns,
            "assistant_temperature": args.assistant_temperature,
            "system_prompt": config.system_prompt,
            "proactive_instruction": config.proactive_instruction,
        },
        "reward": {
            "metric_weights": reward.metric_weights,
            "metric_kwargs": reward.metric_kwargs,
            "failure_policy": reward.failure_policy,
            "score_aggregation": config.score_aggregation,
            "score": SCORE_FORMULAS[config.score_aggregation],
        },
    }
    return engine, entries


def report(args: argparse.Namespace, summary: RunSummary, files: dict[str, Any]) -> int:
    """Print the run's summary; returns the exit code (0 done, 1 some task failed or the run was stopped)."""
    for line in summary.lines():
        print(line)
    if files:
        print(f"wrote {', '.join(str(path) for path in files.values())}")
    if summary.failed:
        print(f"{summary.failed} task(s) failed (listed in {args.local_dir}/failures.jsonl); run the same command "
              "again to retry them", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    """Build the dataset described by ``args``; returns the exit code (0 done, 1 some task failed or the
    failure budget stopped the run).

    Steps: read the source rows as tasks, resolve every role's model once, build the user simulator (and for
    ``--mode conversations`` the search's objects), run the tasks, report.
    """
    runner = runner_settings(args)
    spec, rows, filters = load_rows(args)
    tasks = tasks_from_rows(spec, rows, mode=args.mode)
    roles = resolve_roles(args, ROLES)
    user = roles["user"].config(model_key="user_model", **call_limits(args))
    interaction = CollabLLMInteraction({"name": "collabllm", **user})
    manifest: dict[str, Any] = {
        "source": args.dataset,
        "split": args.split,
        "filters": filters,
        "max_rows": args.max_rows,
        "task_desc": spec.task_desc,
        "ability": spec.ability,
        "data_source": spec.data_source,
        "models": {"user": user["user_model"]},
    }
    engine = None
    if args.mode == "conversations":
        engine, entries = conversation_engine(args, spec, interaction, roles)
        manifest["models"].update(entries.pop("models"))
        manifest.update(entries)
    summary, files = build(
        tasks=tasks,
        mode=args.mode,
        local_dir=args.local_dir,
        interaction=interaction,
        engine=engine,
        manifest=manifest,
        runner=runner,
    )
    return report(args, summary, files)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("LiteLLM", "httpx"):  # one INFO line per request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parse_args(argv)
    try:
        with local_server(args):
            return run(args)
    except (DatasetFormatError, UnknownMetricError, ValueError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
