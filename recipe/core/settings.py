"""The user-facing settings of the recipe's LLM roles: one pydantic model per role, one home per default.

* :class:`LLMRoleSettings`: how to reach one LLM (model, endpoint, key variable, sampling, timeout,
  retries, per-process and run-wide limits, prices). Shared by the roles below and by the CLIs' assistant
  and policy roles.
* :class:`SimulatorSettings`: the user simulator of forward sampling (the interaction YAML's ``config``,
  ``actor_rollout_ref.rollout.custom.user_simulator`` in the trainer config, the CLIs' ``--user_*`` flags).
* :class:`JudgeSettings`: the LLM judges of the metrics (``reward.reward_kwargs.llm_judge_kwargs``, the
  CLIs' ``--judge_*`` flags).

Every field has a docstring (pydantic reads them: ``model_fields[name].description``); docs and CLI help
are generated from the fields, and ``tests/test_settings.py`` fails when a documented default differs from
the model's. Unknown keys are errors (``extra="forbid"``) that name the key as the user wrote it.
:meth:`LLMRoleSettings.to_llm` turns the settings into the LLM-call layer's
:class:`~collabllm_verl.recipe.core.llm_client.LLMSettings`. No verl import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StringConstraints

from collabllm_verl.recipe.core.llm_client import LITELLM_PASSTHROUGH_KEYS, LLMSettings
from collabllm_verl.recipe.core.plain import to_plain
from collabllm_verl.recipe.core.validation import validate

__all__ = ["DEFAULT_LLM_MODEL", "JudgeSettings", "LLMRoleSettings", "SimulatorSettings", "settings_table"]

DEFAULT_LLM_MODEL = "gpt-4o-mini"
"""The model of the user simulator and of the judges unless a run names another (the verl recipe's)."""

ModelName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class LLMRoleSettings(BaseModel):
    """How one role calls its LLM. Values that are None are left to litellm and the provider."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True, populate_by_name=True)

    model: ModelName = DEFAULT_LLM_MODEL
    """litellm model string: `gpt-4o-mini`, `anthropic/claude-3-5-sonnet-latest`, `hosted_vllm/<name>` (with
    `api_base`), `openai/scripted-user` (the offline stand-in server)."""

    api_base: str | None = Field(None, validation_alias=AliasChoices("api_base", "base_url"))
    """Endpoint URL of an OpenAI-compatible server (`base_url` is accepted too); None: the provider's default."""

    api_key_env: str | None = None
    """Name of the environment variable holding the API key (read when the settings are used, never written
    into a config); None: litellm reads the provider's variable (OPENAI_API_KEY, ANTHROPIC_API_KEY, ...)."""

    api_key: str | None = None
    """The API key itself. Discouraged: configs are printed; use `api_key_env`."""

    temperature: float | None = None
    """Sampling temperature; None: the provider's default."""

    max_tokens: int | None = Field(None, gt=0)
    """Most tokens (the model's tokenizer) in one answer; None: the provider's default."""

    timeout: float = Field(60.0, gt=0)
    """Seconds allowed for one HTTP request (one attempt)."""

    num_retries: int = Field(3, ge=0)
    """Retries after the first attempt of a call that failed transiently (429, 5xx, timeouts, bad JSON)."""

    max_concurrency: int = Field(64, ge=1)
    """Requests in flight at once, per process and (model, endpoint)."""

    requests_per_minute: float | None = Field(None, gt=0)
    """Request starts per minute, per process and (model, endpoint); None: no rate limit."""

    backoff_initial: float = Field(0.5, gt=0)
    """Seconds before the first retry (before jitter); doubled per retry."""

    backoff_max: float = Field(30.0, gt=0)
    """Longest single back-off sleep in seconds, a server's Retry-After included."""

    input_cost_per_token: float | None = Field(None, ge=0)
    """USD per prompt token, for every cost figure and budget (litellm's custom pricing), with
    `output_cost_per_token`; None: litellm's price map ($0, reported as unpriced, for a model it does not list)."""

    output_cost_per_token: float | None = Field(None, ge=0)
    """USD per completion token, set together with `input_cost_per_token`."""

    run_max_concurrency: int | None = Field(None, ge=1)
    """Requests in flight at once per (model, endpoint) over the whole Ray run, every worker on every node;
    None: none (outside Ray only the per-process limits apply)."""

    run_requests_per_minute: float | None = Field(None, gt=0)
    """Request starts per minute per (model, endpoint) over the whole Ray run; None: no run-wide rate limit."""

    completion_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Further keyword arguments for `litellm.acompletion` (top_p, stop, seed, extra_headers, ...)."""

    # Options that litellm takes directly; also accepted at the top level, as the original recipe wrote them.
    _PASSTHROUGH: ClassVar[frozenset[str]] = LITELLM_PASSTHROUGH_KEYS - {"temperature", "max_tokens", "api_base",
                                                                        "api_key"}

    @classmethod
    def from_mapping(cls, data: Any, *, where: str):
        """Validate a plain dict or OmegaConf mapping; None values are dropped (the default applies).

        litellm options that are not fields (``top_p``, ``seed``, ...) may be given at the top level: they are
        moved into ``completion_kwargs``.

        Raises:
            TypeError: ``data`` is not a mapping.
            ValueError: an unknown key or a bad value; the message names ``<where>.<key>``.
        """
        data = to_plain(data)
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise TypeError(f"{where}: must be a mapping, got {type(data).__name__}")
        data = {k: v for k, v in data.items() if v is not None}
        moved = {k: data.pop(k) for k in list(data) if k in cls._PASSTHROUGH}
        if moved:
            data["completion_kwargs"] = {**moved, **(data.get("completion_kwargs") or {})}
        known = sorted({f.alias or n for n, f in cls.model_fields.items()} | cls._PASSTHROUGH | {"base_url"})
        return validate(cls, data, where=where, known=known)

    def to_llm(self, *, where: str) -> LLMSettings:
        """The LLM-call layer's settings; reads the key from ``api_key_env`` now.

        Raises:
            ValueError: ``api_key_env`` names a variable that is not set, or ``completion_kwargs`` holds a key
                the layer sets itself (``model``, ``timeout``, ...).
        """
        # the layer's own conversion (api_key_env, litellm options, limits); keys it does not know are ignored
        return LLMSettings.from_config(self.model_dump(), where=where)


class SimulatorSettings(LLMRoleSettings):
    """The user simulator (CollabLLM paper, section 3.2): an LLM role-playing the user who knows the goal."""

    model: ModelName = Field(DEFAULT_LLM_MODEL, validation_alias=AliasChoices("model", "user_model"))
    """litellm model string of the simulator (`user_model` is accepted too, the original recipe's key)."""

    temperature: float | None = 1.0
    """Sampling temperature of the simulator (the verl recipe's 1.0)."""

    max_tokens: int | None = Field(512, gt=0)
    """Most tokens in one simulator answer, its JSON wrapper included."""

    termination_signal: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)] = "[[TERMINATE CHAT]]"
    """Text by which the simulator ends the conversation."""

    enable_log: bool = False
    """Log every simulator message at INFO level (instance id, turn, message)."""


class JudgeSettings(LLMRoleSettings):
    """The LLM judges of the judged metrics (accuracy, interactivity, the extractions of bleu_score and
    pass_rate)."""

    temperature: float | None = 0.0
    """Sampling temperature of the judges: 0, deterministic grading (the verl recipe's)."""

    max_tokens: int | None = Field(2048, gt=0)
    """Most tokens in one judge answer (the verl recipe's 2048)."""


def settings_table(model: type[BaseModel]) -> list[tuple[str, str, str]]:
    """``(key, default, description)`` per field of ``model``, in declaration order: what the docs list.

    The default is written as it would be in YAML (``null``, ``1.0``, ``"[[TERMINATE CHAT]]"`` unquoted).
    """
    rows = []
    for name, field in model.model_fields.items():
        default = field.get_default(call_default_factory=True)
        text = "null" if default is None else str(default).lower() if isinstance(default, bool) else str(default)
        rows.append((name, text, " ".join((field.description or "").split())))
    return rows
