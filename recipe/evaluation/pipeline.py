"""From ``evaluate.py``'s flags to a finished run folder: tasks, metrics, models, conversations, outputs.

The CLI (``evaluate.py``) only parses flags; this module wires the core pieces together:
:func:`~.tasks.load_tasks`, the task presets (:mod:`collabllm_verl.metrics.presets`), the user simulator
(:class:`~collabllm_verl.interactions.collabllm_interaction.CollabLLMInteraction`), the model under test
(:class:`~collabllm_verl.recipe.core.litellm_policy.LiteLLMPolicy`, over a checkpoint served by
:func:`~collabllm_verl.recipe.serving.hf_chat.serve_checkpoint` when ``--policy_checkpoint`` is given),
:class:`~.conversations.EvaluationRunner` and :mod:`.report`. No verl import.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from collabllm_verl.interactions.collabllm_interaction import CollabLLMInteraction
from collabllm_verl.metrics import resolve_metrics
from collabllm_verl.metrics.presets import PAPER_TOKEN_AMOUNT, TASK_PRESETS, preset
from collabllm_verl.recipe.dataset.source import system_prompt_from_arg
from collabllm_verl.recipe.core.litellm_policy import LiteLLMPolicy
from collabllm_verl.recipe.core.llm_client import LLMSettings, redact_secrets
from collabllm_verl.recipe.cli.model_args import model_config
from collabllm_verl.recipe.core.multiturn_reward import RewardSettings, resolve_settings
from collabllm_verl.recipe.core.run_store import stable_key

from .conversations import CONVERSATIONS_FILE, EvalProtocol, EvaluationRunner, open_run_store
from .report import build_summary, write_run_outputs
from .tasks import EvalTask, load_tasks

__all__ = ["ABILITY_PRESETS", "DEFAULT_TEMPERATURES", "choose_metrics", "run_evaluation"]

logger = logging.getLogger(__name__)

# Task preset of a dataset's ability (recipe/dataset/source.py TASKS).
ABILITY_PRESETS = {"math": "math", "writing": "document", "coding": "code"}
# Temperature of the model under test: 0.6 (math) and 0.8 (documents) as the original evaluation
# commands; code has no value there and uses 0.8.
DEFAULT_TEMPERATURES = {"math": 0.6, "document": 0.8, "code": 0.8}
CHECKPOINT_MODEL_NAME = "checkpoint"


def choose_metrics(args: argparse.Namespace, tasks: list[EvalTask]) -> tuple[str | None, list[str], dict[str, dict]]:
    """``(preset name, metric names, metric options)`` from ``--task`` / ``--metrics`` and the data.

    Without ``--task`` the preset follows the tasks' ability (``math``, ``writing`` -> ``document``,
    ``coding`` -> ``code``). ``token_amount`` is always counted in the paper's unit (thousands of cl100k
    assistant tokens).

    Raises:
        ValueError: no preset fits and ``--metrics`` is not given.
    """
    name = args.task
    if name is None:
        ability = Counter(t.ability for t in tasks).most_common(1)[0][0]
        name = ABILITY_PRESETS.get(ability)
    chosen = preset(name) if name else None
    if args.metrics:
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    elif chosen is not None:
        metrics = chosen["eval_metrics"]
    else:
        raise ValueError(
            f"no task preset fits these tasks (ability {tasks[0].ability!r}); pass --task "
            f"{'|'.join(TASK_PRESETS)} or --metrics a,b,c"
        )
    options = dict(chosen["metric_kwargs"]) if chosen else {}
    if "token_amount" in metrics:
        options.setdefault("token_amount", dict(PAPER_TOKEN_AMOUNT))
    return name, metrics, {m: options[m] for m in metrics if m in options}


def _sha(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _policy_identity(args: argparse.Namespace) -> str:
    if args.policy_checkpoint:
        return str(Path(args.policy_checkpoint).resolve())
    return str(args.policy_model)


@contextlib.contextmanager
def _policy_endpoint(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """The policy's flat LLM config; serves ``--policy_checkpoint`` on 127.0.0.1 for the block's duration."""
    if not args.policy_checkpoint:
        yield model_config(args, "policy")
        return
    from collabllm_verl.recipe.serving.hf_chat import serve_checkpoint

    with serve_checkpoint(
        args.policy_checkpoint,
        name=CHECKPOINT_MODEL_NAME,
        device=args.policy_device,
        dtype=args.policy_dtype,
        max_batch_size=args.policy_max_batch_size,
        max_model_len=args.policy_max_model_len,
        default_max_tokens=args.max_tokens,
        seed=args.seed,
    ) as served:
        yield {"model": served.model, "api_base": served.api_base, "api_key": "local"}


def run_evaluation(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or resume) the evaluation the flags describe and write its outputs into ``args.out``.

    Returns:
        The summary (``summary.json``'s content) with ``outputs``: the written files.

    Raises:
        DatasetFormatError, ValueError, FileNotFoundError: bad data or flags (the message names the file,
            row and field, or the flag).
        RuntimeError: a metric failed on bad data (names the row).
    """
    if bool(args.policy_model) == bool(args.policy_checkpoint):
        raise ValueError("give exactly one of --policy_model (a litellm model string) and --policy_checkpoint DIR")
    if args.policy_checkpoint and not Path(args.policy_checkpoint).is_dir():
        raise FileNotFoundError(f"--policy_checkpoint {args.policy_checkpoint}: no such folder")
    started_at = datetime.now(timezone.utc)
    wall_start = time.perf_counter()
    protocol = EvalProtocol(max_messages=args.max_messages, samples_per_row=args.samples_per_row)
    tasks, source = load_tasks(args)
    preset_name, metric_names, metric_options = choose_metrics(args, tasks)
    specs_by_name = resolve_metrics(metric_names)
    needs_judge = any(spec.needs_judge for spec in specs_by_name.values())
    llm_limits = {"timeout": args.timeout, "num_retries": args.num_retries, "max_concurrency": args.llm_max_concurrency}
    judge_config = model_config(args, "judge", **llm_limits) if needs_judge else None
    reward_settings = RewardSettings.from_reward_kwargs(
        {
            "metric_weights": dict.fromkeys(metric_names, 1.0),
            "metric_kwargs": metric_options,
            "failure_policy": "drop",
            **({"llm_judge_kwargs": judge_config} if judge_config else {}),
        }
    )
    specs = resolve_settings(reward_settings)
    user_config = model_config(args, "user", model_key="user_model", **llm_limits)
    simulator = CollabLLMInteraction({"name": "collabllm", **user_config})
    system_prompt = system_prompt_from_arg(args.system_prompt)
    temperature = args.temperature if args.temperature is not None else DEFAULT_TEMPERATURES.get(preset_name, 0.7)
    sampling = {"temperature": temperature, "top_p": args.top_p, "max_tokens": args.max_tokens}
    model_label = args.label or (
        Path(args.policy_checkpoint).resolve().as_posix() if args.policy_checkpoint else args.policy_model
    )

    identity = {
        "dataset": args.dataset,
        "split": args.split,
        "schema": args.schema,
        "filters": sorted(args.filter),
        "fields": [args.prompt_field, args.reference_field, args.answer_field],
        "task_desc": args.task_desc,
        "max_messages": protocol.max_messages,
        "metrics": metric_names,
        "metric_options": metric_options,
        "policy": _policy_identity(args),
        "system_prompt_sha": _sha(system_prompt),
        "sampling": sampling,
        "user_model": args.user_model,
        "judge_model": args.judge_model if needs_judge else None,
    }
    out_dir = Path(args.out)
    store = open_run_store(out_dir, identity, overwrite=args.overwrite)

    with _policy_endpoint(args) as endpoint:
        policy_settings = LLMSettings.from_config({**endpoint, **sampling, **llm_limits})

        def make_policy(task: EvalTask, sample_index: int) -> LiteLLMPolicy:
            return LiteLLMPolicy(policy_settings, system_prompt=system_prompt, purpose="policy")

        runner = EvaluationRunner(
            tasks,
            protocol=protocol,
            make_policy=make_policy,
            interaction=simulator,
            settings=reward_settings,
            specs=specs,
            store=store,
            concurrency=args.concurrency,
            progress=not args.no_progress,
        )
        run_start = time.perf_counter()
        counts = asyncio.run(runner.run())
        run_seconds = time.perf_counter() - run_start

    wanted = {stable_key(t.task_id, k) for t in tasks for k in range(protocol.samples_per_row)}
    records = [r for r in store.records() if r["key"] in wanted]
    settings = redact_secrets(
        {
            **identity,
            "model_label": model_label,
            "task_preset": preset_name,
            "samples_per_row": protocol.samples_per_row,
            "num_rows": args.num_rows,
            "max_rows": args.max_rows,
            "system_prompt": args.system_prompt or "project",
            "policy_endpoint": {k: v for k, v in endpoint.items() if k != "api_key"},
            "user_api_base": user_config.get("api_base"),
            "judge_api_base": (judge_config or {}).get("api_base"),
            "key_env_vars": {role: model_config(args, role).get("api_key_env") for role in ("policy", "user", "judge")},
            "concurrency": args.concurrency,
            "llm": llm_limits,
            "seed": args.seed,
            "task_ids_sha": _sha(",".join(sorted(t.task_id for t in tasks))),
        }
    )
    summary = build_summary(
        records,
        specs=specs,
        metric_options=metric_options,
        samples_per_row=protocol.samples_per_row,
        num_tasks=len(tasks),
        settings=settings,
        data={
            "dataset": source.dataset,
            "kind": source.kind,
            "rows_read": source.rows_read,
            "filters": dict(source.filters),
            "num_tasks": len(tasks),
        },
        invocation={
            "started_at": started_at.isoformat(timespec="seconds"),
            "wall_seconds": time.perf_counter() - wall_start,
            "conversations_wall_seconds": run_seconds,
            "conversations_run": counts["run"],
            "skipped": counts["skipped"],
            "records_file": str(out_dir / CONVERSATIONS_FILE),
        },
        n_resamples=args.bootstrap_resamples,
        seed=args.seed,
    )
    outputs = write_run_outputs(out_dir, summary, model_label=model_label)
    return {**summary, "outputs": [str(p) for p in [out_dir / CONVERSATIONS_FILE, *outputs]]}


def metric_line(summary: Mapping[str, Any]) -> str:
    """One line of means and intervals for the console."""
    parts = []
    for name, entry in summary["metrics"].items():
        if entry["mean"] is None:
            parts.append(f"{name}: —")
        elif entry["ci_low"] is None:
            parts.append(f"{name}: {entry['mean']:.4g}")
        else:
            parts.append(f"{name}: {entry['mean']:.4g} [{entry['ci_low']:.4g}, {entry['ci_high']:.4g}]")
    return " | ".join(parts)
