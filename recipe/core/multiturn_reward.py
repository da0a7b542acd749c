"""Multiturn-aware reward (MR) scoring: the core shared by training, evaluation and data generation.

Nothing here imports verl. Given the forward-sampled conversations of one response (``ForwardSamples``),
:func:`score_sample` scores every configured metric on every conversation concurrently and aggregates as
in the verl CollabLLM recipe (docs/design.md §1)::

    reward = sum over metrics m of clamp(weight_m * mean_s(value_m,s), -1, 1)

A response whose forward sampling was skipped (truncated, empty, malformed reasoning) gets
``skip_penalty`` (default -1). A conversation on which a metric fails (a judge call that failed after the
LLM layer's retries, an unusable judge answer, a sandbox crash) is dropped from that metric's mean
(``failure_policy: drop``, default) or scored 0 (``failure_policy: zero``, the original code's
behaviour); both are counted in the breakdown (:meth:`SampleScore.extra_info`, ``mr/`` keys).

Outages never reshape the reward (docs/metrics_and_reward.md, "Failures"): a future conversation that a
user-simulator failure ended is not a sample of the future and is not scored; under ``drop``, a response
whose weighted metric could not be scored on any of its conversations, or whose conversations all ended
by a simulator failure, is marked :attr:`SampleScore.excluded` (the reward manager then keeps it out of
the policy gradient) instead of being rewarded on the remaining metrics.

The forward-sampling counters (future turns, end reasons, simulator failures and usage, seconds) are
flattened by :meth:`ForwardSamples.extra_info` under ``fs/``.

Settings (``RewardSettings``) come from ``reward_kwargs`` (docs/metrics_and_reward.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict, Field, field_validator

from collabllm_verl.metrics import MetricContext, MetricError, MetricSpec, resolve_metrics
from collabllm_verl.recipe.core import forward_sampling
from collabllm_verl.recipe.core.llm_client import LLM_SETTINGS_KEYS, LLMSettings, usage_scope
from collabllm_verl.recipe.core.validation import Finite, NonNegative, NotText, validate

__all__ = [
    "DUMP_KWARGS_KEYS",
    "EXTRA_INFO_PREFIX",
    "FAILURE_POLICIES",
    "FORWARD_SAMPLING_PREFIX",
    "REWARD_KWARGS_KEYS",
    "ForwardSamples",
    "RewardSettings",
    "SampleScore",
    "aggregate_metric",
    "resolve_settings",
    "score_sample",
]

logger = logging.getLogger(__name__)

EXTRA_INFO_PREFIX = "mr/"
FORWARD_SAMPLING_PREFIX = "fs/"
# Every end reason the forward-sampling core defines (its END_* constants) gets an ``fs/end_<reason>``
# column, so a new reason is counted without touching this module.
END_REASONS = tuple(
    value
    for name, value in sorted(vars(forward_sampling).items())
    if name.startswith("END_") and isinstance(value, str)
)
# LLM usage counters (llm_client.usage_scope) -> column suffix of ``mr/judge_<suffix>`` and
# ``fs/simulator_<suffix>`` (``failures`` would collide with the conversation counter fs/simulator_failures).
USAGE_COLUMNS = {
    "calls": "calls",
    "failures": "failed_calls",
    "prompt_tokens": "prompt_tokens",
    "completion_tokens": "completion_tokens",
    "cost_usd": "cost_usd",
}
SIMULATOR_USAGE_KEYS = tuple(USAGE_COLUMNS)
FAILURE_POLICIES = ("drop", "zero")
REWARD_KWARGS_KEYS = (
    "metric_weights",
    "llm_judge_kwargs",
    "metric_kwargs",
    "failure_policy",
    "skip_penalty",
    "max_failure_rate",
)
# Read by collabllm_verl.recipe.verl_adapters.conversation_dump (JSONL of scored responses), not by RewardSettings.
DUMP_KWARGS_KEYS = ("conversation_dump",)
# The verl recipe's judge default (docs/design.md §1): deterministic grading.
JUDGE_DEFAULTS = {"temperature": 0.0}
Count = Annotated[int, NotText, Field(ge=0)]


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain Python containers (interpolations resolved)."""
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


class RewardSettings(BaseModel):
    """Validated ``reward_kwargs`` of the ``collabllm`` reward manager (a frozen pydantic model).

    Attributes:
        metric_weights: metric name -> weight (any finite number; negative to penalise, 0 to log only).
        judge: settings of the LLM judge (key ``llm_judge_kwargs``), or None when no metric needs one.
        metric_kwargs: metric name -> that metric's options (see each metric's documentation).
        failure_policy: ``"drop"`` or ``"zero"`` (see the module docstring).
        skip_penalty: reward of a response whose forward sampling was skipped.
        max_failure_rate: failure budget in [0, 1]: training stops when, in one step, the share of a
            metric's failed computations (judge calls) or of future conversations ended by a user-simulator
            failure exceeds it (enforced on the trainer's driver, recipe/verl_adapters/replay_buffer.py).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    metric_weights: dict[str, Finite] = Field(None, validate_default=True)  # required; the hint below
    judge: LLMSettings | None = Field(None, alias="llm_judge_kwargs")
    metric_kwargs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    failure_policy: Literal["drop", "zero"] = "drop"
    skip_penalty: Finite = -1.0
    max_failure_rate: Annotated[NonNegative, Field(le=1)] = 0.2

    @field_validator("metric_weights", mode="before")
    @classmethod
    def _weights_given(cls, value: Any) -> Any:
        if not isinstance(value, Mapping) or not value:
            raise ValueError(
                "reward_kwargs.metric_weights must be a non-empty mapping of metric name -> weight, e.g. "
                "+reward.reward_kwargs.metric_weights.accuracy=1"
            )
        return value

    @field_validator("judge", mode="before")
    @classmethod
    def _judge_settings(cls, value: Any) -> Any:
        if value is None or isinstance(value, LLMSettings):
            return value
        where = "reward_kwargs.llm_judge_kwargs"
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: must be a mapping")
        bad = sorted(set(value) - set(LLM_SETTINGS_KEYS) - {"model"})
        if bad:
            raise ValueError(f"{where}: unknown key(s) {bad}; known: {sorted(LLM_SETTINGS_KEYS | {'model'})}")
        if value.get("api_key"):
            logger.warning(
                "%s.api_key is part of the trainer config, which verl prints; put the key in an environment "
                "variable and set llm_judge_kwargs.api_key_env=<VAR> instead (train_rl_collabllm.sh does this)",
                where,
            )
        return LLMSettings.from_config({**JUDGE_DEFAULTS, **value}, where=where)

    @classmethod
    def from_reward_kwargs(cls, reward_kwargs: Mapping[str, Any]) -> RewardSettings:
        """Validate a ``reward_kwargs`` mapping (plain dict or ``DictConfig``).

        Raises:
            TypeError: ``reward_kwargs`` is not a mapping.
            ValueError: an unknown key, an empty or non-numeric ``metric_weights``, an unknown
                ``failure_policy``, bad ``llm_judge_kwargs`` (unknown keys, no ``model``) or a malformed
                ``metric_kwargs``. Each message names the offending key
                (``reward_kwargs.metric_weights.accuracy: ...``).
        """
        kwargs = _plain(reward_kwargs) or {}
        if not isinstance(kwargs, Mapping):
            raise TypeError(f"reward_kwargs must be a mapping, got {type(kwargs).__name__}")
        kwargs = {k: v for k, v in kwargs.items() if k not in DUMP_KWARGS_KEYS}
        return validate(cls, kwargs, where="reward_kwargs", known=[*REWARD_KWARGS_KEYS, *DUMP_KWARGS_KEYS])

    @classmethod
    def from_trainer_config(cls, config: Any) -> RewardSettings:
        """Read ``reward.reward_kwargs`` (and the legacy ``reward_model.reward_kwargs``) of verl's config.

        Raises:
            TypeError, ValueError: as :meth:`from_reward_kwargs`; ValueError also when neither location
                holds any setting.
        """
        if OmegaConf.is_config(config):
            current = _plain(OmegaConf.select(config, "reward.reward_kwargs", default=None))
            legacy = _plain(OmegaConf.select(config, "reward_model.reward_kwargs", default=None))
        elif isinstance(config, Mapping):
            current = (config.get("reward") or {}).get("reward_kwargs")
            legacy = (config.get("reward_model") or {}).get("reward_kwargs")
        else:
            current = legacy = None
        if legacy:
            logger.warning(
                "collabllm reward manager: reading the legacy '+reward_model.reward_kwargs.*' settings; "
                "please use '+reward.reward_kwargs.*' (where both set a key, reward.reward_kwargs wins)"
            )
        if not current and not legacy:
            raise ValueError(
                "the collabllm reward manager needs reward_kwargs, e.g. "
                "+reward.reward_kwargs.metric_weights.accuracy=1 "
                "+reward.reward_kwargs.llm_judge_kwargs.model=gpt-4o-mini"
            )
        merged = OmegaConf.to_container(OmegaConf.merge(legacy or {}, current or {}), resolve=True)
        return cls.from_reward_kwargs(merged)


def resolve_settings(settings: RewardSettings) -> dict[str, MetricSpec]:
    """Start-up validation: every metric exists, its options are valid, judges are configured.

    Returns:
        metric name -> spec, in ``metric_weights`` order.

    Raises:
        UnknownMetricError: a name in ``metric_weights`` or ``metric_kwargs`` is not registered (the
            message lists the available metrics).
        ValueError: bad metric options, or a judge metric without ``llm_judge_kwargs``.
        ImportError: a metric's optional dependency is missing (e.g. bigcodebench for ``pass_rate``).
    """
    specs = resolve_metrics(list(settings.metric_weights))
    for name, spec in resolve_metrics(list(settings.metric_kwargs)).items():
        spec.check_options(settings.metric_kwargs[name])
        if name not in specs:
            logger.warning(
                "reward_kwargs.metric_kwargs.%s is set but %s has no weight: it is not computed", name, name
            )
    for name, spec in specs.items():
        if name not in settings.metric_kwargs:
            spec.check_options({})
        if spec.needs_judge and settings.judge is None:
            raise ValueError(
                f"metric {name!r} needs an LLM judge: "
                "set +reward.reward_kwargs.llm_judge_kwargs.model=<litellm model>"
            )
    return specs


class ForwardSamples(BaseModel):
    """One response's forward-sampling result, read from ``extra_fields["collabllm"]`` (a frozen pydantic
    model; the input keys, where they differ from the attribute names, are given in brackets).

    Attributes:
        conversations (``future_conversations``): the S (possibly fewer) full conversations.
        num_history_messages: messages before the trained response in each conversation.
        skipped (``forward_sampling_skipped``): forward sampling was skipped; the response gets
            ``skip_penalty``.
        skip_reason: why (``"truncated"``, ``"empty"``, ``"malformed_think"``, ``"repeated_think"``,
            ``"empty_think"``), or None.
        future_turns: per conversation, the assistant + user messages added after the trained response.
        end_reasons: per conversation, why it ended (``"terminated"``, ``"turn_limit"``,
            ``"simulator_failure"``, ``"context_limit"``, ``"token_budget"``); may be empty (optional for
            producers).
        early_terminations: conversations the user simulator ended with its termination signal.
        simulator_failures: conversations ended by a user-simulator failure.
        seconds (``forward_sampling_seconds``): wall-clock seconds the agent loop spent on forward sampling
            for this response.
        simulator_usage: the user simulator's LLM usage for this response (``calls``, ``failures``,
            ``prompt_tokens``, ``completion_tokens`` in the simulator model's tokens, ``cost_usd`` from
            litellm's price map); empty when the producer does not report it.
        simulator: the simulator's model and endpoint (``LLMSettings.describe()``, no key), or None.
        simulator_error: the last simulator failure's description, or None.
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    conversations: list[list[dict[str, Any]]] = Field(default_factory=list, alias="future_conversations")
    num_history_messages: Count = 0
    skipped: bool = Field(False, alias="forward_sampling_skipped")
    skip_reason: str | None = None
    future_turns: list[Count] = Field(default_factory=list)
    end_reasons: list[str] = Field(default_factory=list)
    early_terminations: Count = 0
    simulator_failures: Count = 0
    seconds: NonNegative = Field(0.0, alias="forward_sampling_seconds")
    simulator_usage: dict[str, NonNegative] = Field(default_factory=dict)
    simulator: str | None = None
    simulator_error: str | None = None

    @property
    def scorable(self) -> list[int]:
        """Indices of the conversations that are samples of the future: all but those a user-simulator
        failure ended (all of them when ``end_reasons`` does not match ``conversations``)."""
        if len(self.end_reasons) != len(self.conversations):
            return list(range(len(self.conversations)))
        return [i for i, r in enumerate(self.end_reasons) if r != forward_sampling.END_SIMULATOR_FAILURE]

    @classmethod
    def from_extra_fields(cls, fields: Mapping[str, Any]) -> ForwardSamples:
        """Validate the agent loop's ``collabllm`` dict (docs/architecture.md, extra_fields contract).

        Absent or None fields take their defaults (empty / 0); unknown keys are ignored. numpy arrays
        and integers are accepted where lists and integers are expected.

        Raises:
            TypeError: ``fields`` is not a mapping, or a field is of the wrong kind (e.g. ``future_turns``
                not a list).
            ValueError: any other bad value (negative, fractional, text); the message names the field,
                e.g. ``extra_fields['collabllm']['future_turns'][1]: ...``.
        """
        if isinstance(fields, Mapping):
            fields = {k: v for k, v in fields.items() if v is not None}
        return validate(cls, fields, where="extra_fields['collabllm']", style="item")

    def extra_info(self) -> dict[str, float]:
        """Forward-sampling columns of ``reward_extra_info`` (prefix ``fs/``; the same keys for every
        response, all floats, all 0 when forward sampling was skipped; see docs/metrics_and_reward.md)::

            fs/future_turns_mean     mean of future_turns over the conversations (messages, not pairs)
            fs/future_turns_max      the longest conversation's future_turns
            fs/early_terminations    conversations ended by the simulator's termination signal
            fs/simulator_failures    conversations ended by a simulator failure
            fs/end_<reason>          conversations that ended for <reason>, one column per END_* constant
                                     of recipe/core/forward_sampling.py (from end_reasons)
            fs/simulator_<counter>   the simulator's LLM usage for this response: calls, failed_calls,
                                     prompt_tokens, completion_tokens, cost_usd
            fs/seconds               wall-clock seconds of forward sampling
        """
        p = FORWARD_SAMPLING_PREFIX
        info = {
            f"{p}future_turns_mean": 0.0,
            f"{p}future_turns_max": 0.0,
            f"{p}early_terminations": 0.0,
            f"{p}simulator_failures": 0.0,
            **{f"{p}end_{reason}": 0.0 for reason in END_REASONS},
            **{f"{p}simulator_{column}": 0.0 for column in USAGE_COLUMNS.values()},
            f"{p}seconds": 0.0,
        }
        if self.skipped:
            return info
        if self.future_turns:
            info[f"{p}future_turns_mean"] = sum(self.future_turns) / len(self.future_turns)
            info[f"{p}future_turns_max"] = float(max(self.future_turns))
        info[f"{p}early_terminations"] = float(self.early_terminations)
        info[f"{p}simulator_failures"] = float(self.simulator_failures)
        for reason in self.end_reasons:
            if f"{p}end_{reason}" in info:
                info[f"{p}end_{reason}"] += 1.0
        for key, column in USAGE_COLUMNS.items():
            info[f"{p}simulator_{column}"] = float(self.simulator_usage.get(key, 0.0))
        info[f"{p}seconds"] = float(self.seconds)
        return info


@dataclass
class SampleScore:
    """The reward of one response and its breakdown.

    Attributes:
        reward: the scalar multiturn-aware reward (meaningless when ``excluded`` is set).
        means: metric -> raw mean over the scored conversations (0.0 when none was scored).
        weighted: metric -> ``clamp(weight * mean, -1, 1)``.
        failures: metric -> conversations on which the metric failed.
        scored: metric -> conversations on which the metric produced a value.
        errors: metric -> the last failure's description (no secrets), for metrics that failed.
        judge_failures: metric failures caused by the LLM judge, over all metrics.
        judge_usage: this response's judge usage (llm_client usage counters: ``calls``, ``failures``,
            ``prompt_tokens``, ``completion_tokens`` in the judge model's tokens, ``cost_usd`` from litellm's
            price map, 0 for models it does not know).
        num_conversations: forward-sampled conversations available.
        skipped: the skip penalty was applied.
        excluded: why the response must be kept out of the policy gradient (module docstring), or None.
        per_conversation: metric -> one value per conversation, None where the metric failed or the
            conversation was not scored (ended by a simulator failure).
    """

    reward: float
    means: dict[str, float]
    weighted: dict[str, float]
    failures: dict[str, int]
    scored: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    judge_failures: int = 0
    judge_usage: dict[str, float] = field(default_factory=dict)
    num_conversations: int = 0
    skipped: bool = False
    excluded: str | None = None
    per_conversation: dict[str, list[float | None]] = field(default_factory=dict)

    def extra_info(self) -> dict[str, float]:
        """Flat ``reward_extra_info``: the same keys for every sample, all floats
        (see docs/metrics_and_reward.md)."""
        p = EXTRA_INFO_PREFIX
        info: dict[str, float] = {}
        for name in self.means:
            info[f"{p}{name}"] = float(self.means[name])
            info[f"{p}{name}_weighted"] = float(self.weighted[name])
            info[f"{p}{name}_failures"] = float(self.failures[name])
            info[f"{p}{name}_scored"] = float(self.scored.get(name, 0))
        info[f"{p}judge_failures"] = float(self.judge_failures)
        for key, column in USAGE_COLUMNS.items():
            info[f"{p}judge_{column}"] = float(self.judge_usage.get(key, 0.0))
        info[f"{p}num_conversations"] = float(self.num_conversations)
        info[f"{p}skipped"] = 1.0 if self.skipped else 0.0
        return info


def aggregate_metric(values: Sequence[float], weight: float) -> tuple[float, float]:
    """``(mean, clamp(weight * mean, -1, 1))`` of one metric over the scored conversations.

    An empty ``values`` (no conversation, or every one failed under ``drop``) gives ``(0.0, 0.0)``: the
    metric then contributes nothing to the reward.
    """
    if not values:
        return 0.0, 0.0
    mean = sum(values) / len(values)
    return mean, max(-1.0, min(1.0, weight * mean))


async def score_sample(
    settings: RewardSettings,
    specs: Mapping[str, MetricSpec],
    samples: ForwardSamples,
    *,
    ground_truth: Any,
    extra_info: Mapping[str, Any],
    data_source: str | None = None,
    tokenizer: Any = None,
) -> SampleScore:
    """Score every metric on every conversation of one response concurrently, then aggregate.

    Conversations that a user-simulator failure ended are not scored (:attr:`ForwardSamples.scorable`).
    Under ``failure_policy: drop`` the result is marked ``excluded`` when no conversation is left to
    score, or when a metric with a non-zero weight could not be scored on any conversation.

    Raises:
        Any non-:class:`MetricError` exception of a metric (configuration or data errors such as a
        missing ground truth), after all of this response's metric calls have finished.
    """
    names = list(specs)
    zeros = dict.fromkeys(names, 0)
    count = len(samples.conversations)
    if samples.skipped:
        return SampleScore(
            reward=settings.skip_penalty,
            means=dict.fromkeys(names, 0.0),
            weighted=dict.fromkeys(names, 0.0),
            failures=zeros,
            scored=dict(zeros),
            num_conversations=count,
            skipped=True,
        )

    scorable = samples.scorable
    jobs = [(name, index) for index in scorable for name in names]
    contexts = [
        MetricContext(
            messages=samples.conversations[index],
            num_history_messages=samples.num_history_messages,
            ground_truth=ground_truth,
            extra_info=extra_info,
            data_source=data_source,
            judge=settings.judge,
            options=settings.metric_kwargs.get(name, {}),
            tokenizer=tokenizer,
        )
        for name, index in jobs
    ]
    with usage_scope() as usage:
        results = await asyncio.gather(
            *(specs[name].score(ctx) for (name, _), ctx in zip(jobs, contexts, strict=True)),
            return_exceptions=True,
        )
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, MetricError):
            raise result

    values: dict[str, list[float]] = {name: [] for name in names}
    per_conversation: dict[str, list[float | None]] = {name: [None] * count for name in names}
    failures, scored = dict(zeros), dict(zeros)
    errors: dict[str, str] = {}
    judge_failures = 0
    for (name, index), result in zip(jobs, results, strict=True):
        if isinstance(result, MetricError):
            failures[name] += 1
            errors[name] = result.reason
            judge_failures += int(result.judge_failure)
            logger.warning("collabllm reward: %s", result)
            if settings.failure_policy == "zero":
                values[name].append(0.0)
        else:
            scored[name] += 1
            values[name].append(result)
            per_conversation[name][index] = float(result)

    means, weighted = {}, {}
    for name in names:
        means[name], weighted[name] = aggregate_metric(values[name], settings.metric_weights[name])
    return SampleScore(
        reward=sum(weighted.values()),
        means=means,
        weighted=weighted,
        failures=failures,
        scored=scored,
        errors=errors,
        judge_failures=judge_failures,
        judge_usage={key: float(usage.get(key, 0.0)) for key in USAGE_COLUMNS},
        num_conversations=count,
        excluded=_exclusion(settings, samples, scorable, scored, errors),
        per_conversation=per_conversation,
    )


def _exclusion(
    settings: RewardSettings,
    samples: ForwardSamples,
    scorable: Sequence[int],
    scored: Mapping[str, int],
    errors: Mapping[str, str],
) -> str | None:
    """Why a response must not be trained on (module docstring), or None."""
    if settings.failure_policy != "drop":
        return None
    count = len(samples.conversations)
    if not scorable:
        if not count:
            return "forward sampling produced no future conversation to score"
        return (
            f"all {count} future conversations ended by a user-simulator failure"
            f" (last error: {samples.simulator_error or 'unknown'})"
        )
    for name, weight in settings.metric_weights.items():
        if weight != 0 and scored.get(name, 0) == 0:
            return (
                f"metric {name!r} could not be scored on any of its {len(scorable)} future conversations"
                f" (last error: {errors.get(name, 'unknown')})"
            )
    return None
