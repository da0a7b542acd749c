"""From an :class:`~.settings.EvaluationSettings` to a finished run folder, in four steps:

1. **plan** (:func:`plan_evaluation`): the tasks (:func:`~.tasks.load_tasks`), the metrics (the task
   presets of :mod:`collabllm_verl.metrics.presets`) and the judges, the user simulator
   (:class:`~collabllm_verl.interactions.collabllm_interaction.CollabLLMInteraction`), the sampling settings
   and the run's identity (``run.json``);
2. **run** (:func:`_run_conversations`): the model under test
   (:class:`~collabllm_verl.recipe.core.litellm_policy.LiteLLMPolicy`, over a checkpoint served by
   :func:`~collabllm_verl.recipe.serving.hf_chat.serve_checkpoint` with ``policy_checkpoint``) talks with
   the simulator, through :func:`~.conversations.run_conversations` (the core task runner);
3. **summarise** (:func:`_summarize`): every record of the run -> ``summary.json`` (:mod:`.report`);
4. **write**: ``summary.md`` and ``summary.png`` beside it.

Every role's model and endpoint arrives resolved in the settings (``evaluate.py`` resolves each once). No
verl import.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from collabllm_verl.interactions.collabllm_interaction import CollabLLMInteraction
from collabllm_verl.metrics import resolve_metrics
from collabllm_verl.metrics.presets import TASK_PRESETS, preset
from collabllm_verl.recipe.core.litellm_policy import LiteLLMPolicy
from collabllm_verl.recipe.core.llm_client import LLMSettings, redact_secrets
from collabllm_verl.recipe.core.multiturn_reward import resolve_metric_specs
from collabllm_verl.recipe.core.run_store import RunStore
from collabllm_verl.recipe.core.settings import JudgeSettings
from collabllm_verl.recipe.core.task_runner import TaskRunnerSettings
from collabllm_verl.recipe.dataset.source import system_prompt_from_arg

from .conversations import (
    CONVERSATIONS_FILE,
    ConversationSlot,
    EvalScoring,
    open_run_store,
    run_conversations,
)
from .report import build_summary, write_run_outputs
from .settings import EVALUATION_ROLES, PROTOCOLS, EvaluationProtocol, EvaluationSettings
from .tasks import EvalTask, TaskSource, load_tasks

__all__ = [
    "ABILITY_PRESETS",
    "DEFAULT_TEMPERATURES",
    "EvaluationPlan",
    "choose_metrics",
    "metric_line",
    "plan_evaluation",
    "run_evaluation",
]

logger = logging.getLogger(__name__)

# Task preset of a dataset's ability (recipe/dataset/source.py TASKS).
ABILITY_PRESETS = {"math": "math", "writing": "document", "coding": "code"}
# Temperature of the model under test: 0.6 (math) and 0.8 (documents) as the original evaluation
# commands; code has no value there and uses 0.8.
DEFAULT_TEMPERATURES = {"math": 0.6, "document": 0.8, "code": 0.8}
FALLBACK_TEMPERATURE = 0.7  # a task without a preset
CHECKPOINT_MODEL_NAME = "checkpoint"


def choose_metrics(
    task_preset: str | None,
    metrics: Sequence[str] | None,
    tasks: Sequence[EvalTask],
    protocol: EvaluationProtocol = PROTOCOLS["recipe"],
) -> tuple[str | None, list[str], dict[str, dict]]:
    """``(preset name, metric names, metric options)`` from the ``task`` and ``metrics`` settings and the data.

    Without a preset the tasks' most common ability chooses one (``math``, ``writing`` -> ``document``,
    ``coding`` -> ``code``). The protocol's metric options (``interactivity``'s rubric, ``token_amount``'s
    unit: thousands of cl100k assistant tokens in both protocols) replace the preset's.

    Raises:
        ValueError: no preset fits and no metrics are given.
    """
    name = task_preset
    if name is None:
        ability = Counter(t.ability for t in tasks).most_common(1)[0][0]
        name = ABILITY_PRESETS.get(ability)
    chosen = preset(name) if name else None
    if metrics:
        names = list(metrics)
    elif chosen is not None:
        names = chosen["eval_metrics"]
    else:
        raise ValueError(
            f"no task preset fits these tasks (ability {tasks[0].ability!r}); pass --task "
            f"{'|'.join(TASK_PRESETS)} or --metrics a,b,c"
        )
    preset_options = chosen["metric_kwargs"] if chosen else {}
    protocol_options = protocol.metric_options()
    options = {  # per metric: the protocol's keys over the preset's, the preset's other keys kept
        m: {**preset_options.get(m, {}), **protocol_options.get(m, {})} for m in {*preset_options, *protocol_options}
    }
    return name, names, {m: options[m] for m in names if m in options}


def _sha(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class EvaluationPlan:
    """What a run evaluates, resolved before any conversation starts.

    Attributes:
        tasks: the tasks, in source order.
        source: where they came from.
        preset: the task preset's name, or None.
        scoring: the metrics (specs, options, judges).
        simulator: the user simulator.
        user_config: the simulator's flat LLM config (no key, only its variable).
        judge_config: the judges' flat LLM config, or None when no metric needs a judge.
        system_prompt: the model under test's system prompt, or None.
        sampling: ``temperature``, ``top_p``, ``max_tokens`` of the model under test.
        label: the model's name in tables.
        identity: the settings that change what a conversation means (``run.json``; not the number of
            conversations per task: more samples extend a run).
        samples_per_row: conversations per task, k.
    """

    tasks: list[EvalTask]
    source: TaskSource
    preset: str | None
    scoring: EvalScoring
    simulator: CollabLLMInteraction
    user_config: dict[str, Any]
    judge_config: dict[str, Any] | None
    system_prompt: str | None
    sampling: dict[str, Any]
    label: str
    identity: dict[str, Any]
    samples_per_row: int

    @property
    def keys(self) -> set[str]:
        """Record keys of every conversation of the run."""
        return {ConversationSlot(task, k).key for task in self.tasks for k in range(self.samples_per_row)}


def _scoring(
    settings: EvaluationSettings, names: list[str], options: dict[str, dict]
) -> tuple[EvalScoring, dict | None]:
    """The metrics' specs and judges, and the judges' flat config (None when no metric needs a judge)."""
    needs_judge = any(spec.needs_judge for spec in resolve_metrics(names).values())
    judge_config = settings.judge.config(**settings.llm_limits) if needs_judge else None
    judge = None
    if judge_config is not None:
        judge = JudgeSettings.from_mapping(judge_config, where="judge").to_llm(where="judge")
    return EvalScoring(specs=resolve_metric_specs(names, options), options=options, judge=judge), judge_config


def plan_evaluation(settings: EvaluationSettings) -> EvaluationPlan:
    """Step 1: load the tasks and resolve metrics, judges, simulator, sampling and the run's identity.

    Raises:
        DatasetFormatError, ValueError, FileNotFoundError: bad data or settings (the message names the file,
            row and field, or the flag).
        UnknownMetricError: an unknown metric name (a ValueError).
    """
    if settings.policy_checkpoint and not Path(settings.policy_checkpoint).is_dir():
        raise FileNotFoundError(f"--policy_checkpoint {settings.policy_checkpoint}: no such folder")
    tasks, source = load_tasks(settings.source, num_rows=settings.num_rows)
    preset_name, metric_names, metric_options = choose_metrics(
        settings.task, settings.metrics, tasks, settings.protocol_definition
    )
    scoring, judge_config = _scoring(settings, metric_names, metric_options)
    user_config = settings.user.config(
        model_key="user_model", max_tokens=settings.protocol_definition.user_max_tokens, **settings.llm_limits
    )
    system_prompt = system_prompt_from_arg(settings.source.system_prompt)
    temperature = settings.temperature
    if temperature is None:
        temperature = DEFAULT_TEMPERATURES.get(preset_name, FALLBACK_TEMPERATURE)
    sampling = {"temperature": temperature, "top_p": settings.top_p, "max_tokens": settings.max_tokens}
    src = settings.source
    identity = {
        "protocol": settings.protocol,
        "dataset": src.dataset,
        "split": src.split,
        "schema": src.source_schema,
        "adaptor": src.adaptor,
        "adaptor_options": sorted(src.adaptor_option),
        "filters": sorted(src.filter),
        "fields": [src.prompt_field, src.reference_field, src.answer_field],
        "task_desc": src.task_desc,
        "max_messages": settings.max_messages,
        "metrics": metric_names,
        "metric_options": metric_options,
        "policy": settings.policy_identity,
        "system_prompt_sha": _sha(system_prompt),
        "sampling": sampling,
        "user_model": settings.user.model,
        "user_max_tokens": user_config["max_tokens"],
        "judge_model": settings.judge.model if judge_config else None,
    }
    return EvaluationPlan(
        tasks=tasks,
        source=source,
        preset=preset_name,
        scoring=scoring,
        simulator=CollabLLMInteraction({"name": "collabllm", **user_config}),
        user_config=user_config,
        judge_config=judge_config,
        system_prompt=system_prompt,
        sampling=sampling,
        label=settings.label or settings.policy_identity,
        identity=identity,
        samples_per_row=settings.samples_per_row,
    )


@contextlib.contextmanager
def _policy_endpoint(settings: EvaluationSettings) -> Iterator[dict[str, Any]]:
    """The policy's flat LLM config; serves ``policy_checkpoint`` on 127.0.0.1 for the block's duration."""
    if not settings.policy_checkpoint:
        yield settings.policy.config()
        return
    from collabllm_verl.recipe.serving.hf_chat import serve_checkpoint

    with serve_checkpoint(
        settings.policy_checkpoint,
        name=CHECKPOINT_MODEL_NAME,
        device=settings.policy_device,
        dtype=settings.policy_dtype,
        max_batch_size=settings.policy_max_batch_size,
        max_model_len=settings.policy_max_model_len,
        default_max_tokens=settings.max_tokens,
        seed=settings.seed,
    ) as served:
        yield {"model": served.model, "api_base": served.api_base, "api_key": "local"}


def _run_conversations(
    settings: EvaluationSettings, plan: EvaluationPlan, endpoint: Mapping[str, Any], store: RunStore
) -> tuple[dict[str, int], float]:
    """Step 2: every missing conversation, in an event loop of its own; ``(counts, wall seconds)``."""
    policy_settings = LLMSettings.from_config({**endpoint, **plan.sampling, **settings.llm_limits})

    def make_policy(task: EvalTask, sample_index: int) -> LiteLLMPolicy:
        return LiteLLMPolicy(policy_settings, system_prompt=plan.system_prompt, purpose="policy")

    runner = TaskRunnerSettings(
        max_concurrent=settings.concurrency,
        retries=settings.task_retries,
        failure_budget=settings.failure_budget,
        max_cost_usd=settings.max_cost_usd,
        progress=settings.progress,
        desc="conversations",
        unit="conversation",
    )
    started = time.perf_counter()
    counts = asyncio.run(
        run_conversations(
            plan.tasks,
            protocol=settings.conversation,
            make_policy=make_policy,
            interaction=plan.simulator,
            scoring=plan.scoring,
            store=store,
            runner=runner,
        )
    )
    return counts, time.perf_counter() - started


def _run_settings(settings: EvaluationSettings, plan: EvaluationPlan, endpoint: Mapping[str, Any]) -> dict[str, Any]:
    """``summary.json``'s ``settings``: every setting of the run, secrets masked."""
    return redact_secrets(
        {
            **plan.identity,
            "model_label": plan.label,
            "task_preset": plan.preset,
            "samples_per_row": settings.samples_per_row,
            "num_rows": settings.num_rows,
            "max_rows": settings.source.max_rows,
            "system_prompt": settings.source.system_prompt or "project",
            "policy_endpoint": {k: v for k, v in endpoint.items() if k != "api_key"},
            "user_api_base": plan.user_config.get("api_base"),
            "judge_api_base": (plan.judge_config or {}).get("api_base"),
            "key_env_vars": {role: getattr(settings, role).api_key_env for role in EVALUATION_ROLES},
            "concurrency": settings.concurrency,
            "llm": settings.llm_limits,
            "seed": settings.seed,
            "task_ids_sha": _sha(",".join(sorted(t.task_id for t in plan.tasks))),
        }
    )


def _summarize(
    settings: EvaluationSettings,
    plan: EvaluationPlan,
    records: list[dict[str, Any]],
    run_settings: Mapping[str, Any],
    invocation: Mapping[str, Any],
) -> dict[str, Any]:
    """Step 3: ``summary.json``'s content from every record of the run."""
    return build_summary(
        records,
        specs=plan.scoring.specs,
        metric_options=plan.scoring.options,
        samples_per_row=settings.samples_per_row,
        num_tasks=len(plan.tasks),
        settings=run_settings,
        protocol=settings.protocol_definition.model_dump(),
        data={
            "dataset": plan.source.dataset,
            "kind": plan.source.kind,
            "rows_read": plan.source.rows_read,
            "filters": dict(plan.source.filters),
            "num_tasks": len(plan.tasks),
        },
        invocation=invocation,
        n_resamples=settings.bootstrap_resamples,
        seed=settings.seed,
    )


def run_evaluation(settings: EvaluationSettings) -> dict[str, Any]:
    """Run (or resume) the evaluation the settings describe and write its outputs into ``settings.out``.

    Returns:
        The summary (``summary.json``'s content) with ``outputs``: the written files.

    Raises:
        DatasetFormatError, ValueError, FileNotFoundError: bad data or settings (the message names the file,
            row and field, or the flag).
        FailureBudgetExceeded: too many conversations could not be finished (the records are kept).
        RuntimeError: a metric failed on bad data (names the row).
    """
    started_at = datetime.now(timezone.utc)
    wall_start = time.perf_counter()
    plan = plan_evaluation(settings)
    out_dir = Path(settings.out)
    store = open_run_store(out_dir, plan.identity, overwrite=settings.overwrite)
    with _policy_endpoint(settings) as endpoint:
        counts, run_seconds = _run_conversations(settings, plan, endpoint, store)
    keys = plan.keys
    records = [r for r in store.records() if r["key"] in keys]
    invocation = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - wall_start,
        "conversations_wall_seconds": run_seconds,
        "conversations_run": counts["run"],
        "skipped": counts["skipped"],
        "records_file": str(out_dir / CONVERSATIONS_FILE),
    }
    summary = _summarize(settings, plan, records, _run_settings(settings, plan, endpoint), invocation)
    outputs = write_run_outputs(out_dir, summary, model_label=plan.label)
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
