"""The settings of one evaluation run (:class:`EvaluationSettings`): what ``evaluate.py``'s flags mean.

``evaluate.py`` generates its flags from these fields (:mod:`collabllm_verl.recipe.cli.settings_flags`):
each default and help text is written once, here. The source flags are shared with the other CLIs and keep
their defaults in :func:`collabllm_verl.recipe.dataset.source.add_source_arguments`; the model flags in
:mod:`collabllm_verl.recipe.cli.model_args`, which resolves every role's model and endpoint once
(:class:`~collabllm_verl.recipe.cli.model_args.RoleEndpoint`). No verl import.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from collabllm_verl.metrics.presets import PAPER_TOKEN_AMOUNT, TASK_PRESETS
from collabllm_verl.recipe.cli.model_args import RoleEndpoint
from collabllm_verl.recipe.core.settings import DEFAULT_LLM_MODEL
from collabllm_verl.recipe.core.task_runner import DEFAULT_FAILURE_BUDGET, TaskRunnerSettings

from .conversations import EvalProtocol

__all__ = ["EVALUATION_ROLES", "PROTOCOLS", "EvaluationProtocol", "EvaluationSettings", "SourceSelection"]

EVALUATION_ROLES = ("user", "judge", "policy")
"""The LLM roles of an evaluation: the user simulator, the judges and the model under test."""

TaskPreset = Literal[tuple(sorted(TASK_PRESETS))]  # type: ignore[valid-type]


class EvaluationProtocol(BaseModel):
    """What an evaluation protocol fixes beyond the conversation loop (a frozen pydantic model): the reply
    cap, the interactivity rubric, the token unit and the default user simulator and judge. Every run
    records its protocol in ``summary.json`` and ``compare`` refuses to mix protocols (docs/evaluation.md).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    name: str
    """``recipe`` or ``paper``."""
    description: str
    """One sentence for ``summary.md``."""
    max_tokens: int = Field(ge=1)
    """Default tokens per reply of the model under test."""
    user_max_tokens: int = Field(ge=1)
    """Tokens per message of the user simulator."""
    interactivity_rubric: Literal["anchors", "coarse"]
    """``interactivity``'s ``rubric`` option (metrics/interactivity.py)."""
    token_amount: dict[str, Any]
    """``token_amount``'s options (metrics/token_amount.py): unit, roles, tokenizer, scale."""
    user_model: str
    """Default litellm model of the user simulator."""
    judge_model: str
    """Default litellm model of the judges."""

    def metric_options(self) -> dict[str, dict[str, Any]]:
        """The options this protocol sets per metric (they override a preset's)."""
        return {
            "interactivity": {"rubric": self.interactivity_rubric},
            "token_amount": dict(self.token_amount),
        }


PROTOCOLS: dict[str, EvaluationProtocol] = {
    "recipe": EvaluationProtocol(
        name="recipe",
        description="this recipe's defaults (replies up to 2048 tokens, simulator messages up to 512, the verl "
        "recipe's four-anchor interactivity rubric, gpt-4o-mini as user and judge, thousands of cl100k "
        "assistant tokens)",
        max_tokens=2048,
        user_max_tokens=512,
        interactivity_rubric="anchors",
        token_amount=PAPER_TOKEN_AMOUNT,
        user_model=DEFAULT_LLM_MODEL,
        judge_model=DEFAULT_LLM_MODEL,
    ),
    # The paper's runs (docs/evaluation.md): vLLM's default reply cap, the authors' coarse rubric, GPT-4o as
    # the simulated user and Claude 3.5 Sonnet as the judge (the snapshot is our choice; the paper names none).
    "paper": EvaluationProtocol(
        name="paper",
        description="the paper's evaluation runs (replies up to 1024 tokens, simulator messages up to 1024, "
        "coarse 1 / 0.5 / 0 interactivity rubric, GPT-4o as user, Claude 3.5 Sonnet as judge, thousands of "
        "cl100k assistant tokens)",
        max_tokens=1024,
        user_max_tokens=1024,
        interactivity_rubric="coarse",
        token_amount=PAPER_TOKEN_AMOUNT,
        user_model="gpt-4o",
        judge_model="anthropic/claude-3-5-sonnet-20240620",
    ),
}
"""The evaluation protocols, by name (``evaluate.py --protocol``)."""

ProtocolName = Literal[tuple(PROTOCOLS)]  # type: ignore[valid-type]


class SourceSelection(BaseModel):
    """The source flags shared by every CLI (``add_source_arguments``, which holds their defaults and help):
    which dataset, which rows, how to read them. A frozen pydantic model."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True, populate_by_name=True)

    dataset: str
    """Hub name, local dataset folder, .jsonl/.json/.parquet/.csv file, or a processed RL parquet."""
    split: str
    """Split of a hub dataset or folder."""
    source_schema: Literal["auto", "multiturn", "single_turn", "ambiguity"] = Field(alias="schema")
    """Source schema (``--schema``); auto: multiturn when the CollabLLM columns are present."""
    prompt_field: str
    """Single-turn sources: the column with the request."""
    reference_field: str
    """Single-turn sources: the column with the reference answer (the ground truth)."""
    answer_field: str | None
    """Single-turn sources: optional column with a short final answer."""
    filter: list[str]
    """``FIELD=VALUE`` filters; a row is kept when every FIELD equals VALUE as text."""
    data_source: str | None
    """``data_source`` of the rows; None: the dataset's name."""
    task_desc: str | None
    """Task description for the user simulator; None: by the dataset's name."""
    system_prompt: str | None
    """File with the assistant's system prompt, ``none``, or None for the project's prompt."""
    max_rows: int | None
    """Read only the first N matching source rows; None: all."""
    num_proc: int | None
    """Processes ``datasets`` uses to prepare the source; None: its default."""
    adaptor: str | None = None
    """Adaptor of a raw source of the paper's tasks or Abg-CoQA (``recipe/dataset/adaptors.py``); None: none."""
    adaptor_option: list[str] = []
    """``KEY=VALUE`` options of the adaptor."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SourceSelection:
        """The source flags of parsed arguments."""
        names = [field.alias or name for name, field in cls.model_fields.items()]
        return cls.model_validate({name: getattr(args, name) for name in names})

    def as_namespace(self) -> argparse.Namespace:
        """The flags as the dataset loaders read them (``load_rows`` takes the parsed source flags)."""
        return argparse.Namespace(**self.model_dump(by_alias=True))


class EvaluationSettings(BaseModel):
    """Everything one evaluation run needs (a frozen pydantic model; unknown keys are refused)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    source: SourceSelection
    """Where the tasks come from (the source flags)."""
    user: RoleEndpoint
    """Model and endpoint of the user simulator."""
    judge: RoleEndpoint
    """Model and endpoint of the LLM judges."""
    policy: RoleEndpoint
    """Model and endpoint of the model under test (unused with ``policy_checkpoint``)."""

    # ------------------------------------------------------------------------------------------ the run
    protocol: ProtocolName = "recipe"
    """evaluation protocol: recipe (this recipe's defaults) or paper (the paper's runs: 1024-token replies,
    coarse interactivity rubric, gpt-4o user, Claude 3.5 Sonnet judge); it sets the defaults of
    --max_tokens, --user_model and --judge_model, which still override it"""
    out: Path
    """run folder: outputs, and the records a re-run resumes from"""
    num_rows: int | None = None
    """evaluate the first N tasks (default all)"""
    samples_per_row: int = 1
    """conversations per task, k"""
    seed: int = 0
    """seed of the bootstrap and of a served checkpoint"""
    max_messages: int = 14
    """messages per conversation, user and assistant together, even"""
    task: TaskPreset | None = None
    """metric preset (default: from the dataset: math, writing -> document, coding -> code)"""
    metrics: list[str] | None = None
    """comma-separated metrics instead of the preset's"""
    concurrency: int = Field(64, ge=1)
    """conversations in flight at once"""
    task_retries: int = Field(0, ge=0)
    """extra attempts, within this run, of a conversation that could not be finished; a re-run tries it
    again anyway"""
    failure_budget: float = Field(DEFAULT_FAILURE_BUDGET, ge=0.0, le=1.0)
    """share of this run's conversations that may stay unfinished; one more stops the run (1: never)"""
    max_cost_usd: float | None = Field(TaskRunnerSettings.model_fields["max_cost_usd"].default, gt=0.0)
    """most USD this run's LLM calls may spend (user simulator, judges, a priced policy); past it the run stops,
    keeping the finished conversations: re-run with a higher budget to continue"""
    label: str | None = None
    """name of the model in tables (default: the model string or path)"""
    overwrite: bool = False
    """discard the records already in --out"""
    bootstrap_resamples: int = Field(10_000, ge=1)
    """bootstrap resamples"""
    progress: bool = True
    """the progress bar (tqdm, on stderr)"""

    # ----------------------------------------------------------------------------- the model under test
    policy_checkpoint: str | None = None
    """Hugging Face checkpoint folder served by the project on 127.0.0.1 (transformers)"""
    policy_device: str = "auto"
    """auto (a GPU if any), cpu, cuda, cuda:N"""
    policy_dtype: str = "auto"
    """auto (bfloat16 on a GPU, else float32), float32, ..."""
    policy_max_batch_size: int = Field(32, ge=1)
    """replies sampled together"""
    policy_max_model_len: int | None = None
    """context window in tokens (default: the model's max_position_embeddings)"""
    temperature: float | None = None
    """sampling temperature of the model under test (default: math 0.6, document/code 0.8)"""
    top_p: float | None = None
    """nucleus sampling (default: the server's)"""
    max_tokens: int | None = Field(None, ge=1)
    """tokens per reply of the model under test (default: the protocol's, recipe 2048, paper 1024)"""

    # --------------------------------------------------------------------------------------- LLM calls
    timeout: float = Field(60.0, gt=0)
    """seconds per request"""
    num_retries: int = Field(3, ge=0)
    """retries after a failed request"""
    llm_max_concurrency: int = Field(64, ge=1)
    """requests in flight per model and endpoint, shared by the process"""

    @field_validator("metrics", mode="before")
    @classmethod
    def _split_metrics(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()] or None
        return value

    @model_validator(mode="before")
    @classmethod
    def _protocol_defaults(cls, data: Any) -> Any:
        """Fill ``max_tokens`` and the user and judge models the flags left unset from the protocol."""
        if not isinstance(data, dict):
            return data
        chosen = PROTOCOLS.get(data.get("protocol") or "recipe")
        if chosen is None:
            return data  # the field's validation names the bad value
        data = dict(data)
        if data.get("max_tokens") is None:
            data["max_tokens"] = chosen.max_tokens
        for role, default in (("user", chosen.user_model), ("judge", chosen.judge_model)):
            endpoint = data.get(role)
            if isinstance(endpoint, RoleEndpoint) and not endpoint.model:
                data[role] = endpoint.model_copy(update={"model": default})
            elif isinstance(endpoint, dict) and not endpoint.get("model"):
                data[role] = {**endpoint, "model": default}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> EvaluationSettings:
        if bool(self.policy.model) == bool(self.policy_checkpoint):
            raise ValueError(
                "give exactly one of --policy_model (a litellm model string) and --policy_checkpoint DIR"
            )
        self.conversation  # noqa: B018 - validates max_messages and samples_per_row (EvalProtocol's rules)
        return self

    @property
    def protocol_definition(self) -> EvaluationProtocol:
        """The chosen protocol's definition (:data:`PROTOCOLS`)."""
        return PROTOCOLS[self.protocol]

    @property
    def conversation(self) -> EvalProtocol:
        """The conversation settings (:class:`~.conversations.EvalProtocol`)."""
        return EvalProtocol(max_messages=self.max_messages, samples_per_row=self.samples_per_row)

    @property
    def llm_limits(self) -> dict[str, Any]:
        """The LLM layer's per-call settings shared by every role."""
        return {"timeout": self.timeout, "num_retries": self.num_retries, "max_concurrency": self.llm_max_concurrency}

    @property
    def policy_identity(self) -> str:
        """The model under test as runs are compared: the checkpoint's absolute path, or the model string."""
        if self.policy_checkpoint:
            return Path(self.policy_checkpoint).resolve().as_posix()
        return str(self.policy.model)
