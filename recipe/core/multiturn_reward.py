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
from collabllm_verl.recipe.core.dump_settings import DumpSettings
from collabllm_verl.recipe.core.llm_client import LLMSettings, Usage, usage_scope
from collabllm_verl.recipe.core.plain import to_plain
from collabllm_verl.recipe.core.settings import JudgeSettings
from collabllm_verl.recipe.core.validation import Finite, NonNegative, NotText, validate

__all__ = [
    "EXTRA_INFO_PREFIX",
    "FORWARD_SAMPLING_PREFIX",
    "REWARD_KWARGS_KEYS",
    "ConversationScore",
    "ForwardSamples",
    "ForwardSamplingStats",
    "MetricOutcome",
    "RewardSettings",
    "SampleScore",
    "aggregate_metric",
    "resolve_metric_specs",
    "resolve_settings",
    "score_conversation",
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
REWARD_KWARGS_KEYS = (
    "metric_weights",
    "llm_judge_kwargs",
    "metric_kwargs",
    "failure_policy",
    "skip_penalty",
    "max_failure_rate",
    "conversation_dump",
)
Count = Annotated[int, NotText, Field(ge=0)]


class RewardSettings(BaseModel):
    """Validated ``reward_kwargs`` of the ``collabllm`` reward manager (a frozen pydantic model).

    Attributes:
        metric_weights: metric name -> weight (any finite number; negative to penalise, 0 to log only).
        judge: settings of the LLM judges (key ``llm_judge_kwargs``: the keys of
            :class:`~collabllm_verl.recipe.core.settings.JudgeSettings`; absent or empty: its defaults).
        metric_kwargs: metric name -> that metric's options (see each metric's documentation).
        failure_policy: ``"drop"`` or ``"zero"`` (see the module docstring).
        skip_penalty: reward of a response whose forward sampling was skipped.
        max_failure_rate: failure budget in [0, 1]: training stops when, in one step, the share of a
            metric's failed computations (judge calls) or of future conversations ended by a user-simulator
            failure exceeds it (enforced on the trainer's driver, recipe/verl_adapters/replay_buffer.py).
        conversation_dump: where the reward manager writes the JSONL of scored rollouts
            (:class:`~collabllm_verl.recipe.core.dump_settings.DumpSettings`), or None (the default)
            for no dump.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    metric_weights: dict[str, Finite] = Field(None, validate_default=True)  # required; the hint below
    judge: LLMSettings = Field(None, alias="llm_judge_kwargs", validate_default=True)
    metric_kwargs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    failure_policy: Literal["drop", "zero"] = "drop"
    skip_penalty: Finite = -1.0
    max_failure_rate: Annotated[NonNegative, Field(le=1)] = 0.2
    conversation_dump: DumpSettings | None = None

    @field_validator("conversation_dump", mode="before")
    @classmethod
    def _dump_settings(cls, value: Any) -> Any:
        return value if isinstance(value, DumpSettings) else DumpSettings.from_mapping(value)

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
        if isinstance(value, LLMSettings):
            return value
        where = "reward_kwargs.llm_judge_kwargs"
        judge = JudgeSettings.from_mapping(value, where=where)
        if judge.api_key:
            logger.warning(
                "%s.api_key is part of the trainer config, which verl prints; put the key in an environment "
                "variable and set llm_judge_kwargs.api_key_env=<VAR> instead (train_rl_collabllm.sh does this)",
                where,
            )
        return judge.to_llm(where=where)

    @classmethod
    def from_reward_kwargs(cls, reward_kwargs: Mapping[str, Any]) -> RewardSettings:
        """Validate a ``reward_kwargs`` mapping (plain dict or ``DictConfig``).

        Raises:
            TypeError: ``reward_kwargs`` is not a mapping.
            ValueError: an unknown key, an empty or non-numeric ``metric_weights``, an unknown
                ``failure_policy``, bad ``llm_judge_kwargs`` (unknown keys, no ``model``), a malformed
                ``metric_kwargs`` or ``conversation_dump``. Each message names the offending key
                (``reward_kwargs.metric_weights.accuracy: ...``).
        """
        kwargs = to_plain(reward_kwargs) or {}
        if not isinstance(kwargs, Mapping):
            raise TypeError(f"reward_kwargs must be a mapping, got {type(kwargs).__name__}")
        return validate(cls, kwargs, where="reward_kwargs", known=REWARD_KWARGS_KEYS)

    @classmethod
    def from_trainer_config(cls, config: Any) -> RewardSettings:
        """Read ``reward.reward_kwargs`` of verl's trainer config (``DictConfig`` or plain mapping).

        The original recipe's ``+reward_model.reward_kwargs.*`` command-line form is translated by the recipe's
        entry point (:mod:`collabllm_verl.recipe.verl_adapters.overrides`) before the config is composed; a
        config that still holds ``reward_model.reward_kwargs`` did not come through it.

        Raises:
            TypeError, ValueError: as :meth:`from_reward_kwargs`; ValueError also when ``reward.reward_kwargs``
                is empty or ``reward_model.reward_kwargs`` is set.
        """
        def section(path: str) -> Any:
            if OmegaConf.is_config(config):
                return to_plain(OmegaConf.select(config, path, default=None))
            node: Any = config
            for part in path.split("."):
                node = node.get(part) if isinstance(node, Mapping) else None
            return node

        legacy = section("reward_model.reward_kwargs")
        if legacy:
            raise ValueError(
                "reward_model.reward_kwargs is the original recipe's form: start the trainer through "
                "train_rl_collabllm.sh or python -m collabllm_verl.recipe.verl_adapters.main_ppo, which translate "
                "it, or write reward.reward_kwargs.* instead"
            )
        current = section("reward.reward_kwargs")
        if not current:
            raise ValueError(
                "the collabllm reward manager needs reward_kwargs, e.g. "
                "+reward.reward_kwargs.metric_weights.accuracy=1"
            )
        return cls.from_reward_kwargs(current)


def resolve_settings(settings: RewardSettings) -> dict[str, MetricSpec]:
    """Start-up validation: every metric exists and its options are valid.

    Returns:
        metric name -> spec, in ``metric_weights`` order.

    Raises:
        UnknownMetricError: a name in ``metric_weights`` or ``metric_kwargs`` is not registered (the
            message lists the available metrics).
        ValueError: bad metric options.
        ImportError: a metric's optional dependency is missing (e.g. bigcodebench for ``pass_rate``).
    """
    unweighted = [name for name in settings.metric_kwargs if name not in settings.metric_weights]
    for name in resolve_metric_specs(unweighted, settings.metric_kwargs):
        logger.warning("reward_kwargs.metric_kwargs.%s is set but %s has no weight: it is not computed", name, name)
    return resolve_metric_specs(list(settings.metric_weights), settings.metric_kwargs)


def resolve_metric_specs(names: Sequence[str], metric_kwargs: Mapping[str, Mapping[str, Any]]) -> dict[str, MetricSpec]:
    """Look up metrics and check their options (start-up validation, shared by training, evaluation and data
    generation).

    Args:
        names: metric names.
        metric_kwargs: metric name -> options; a metric without an entry is checked with no options.

    Returns:
        metric name -> spec, in ``names`` order.

    Raises:
        UnknownMetricError: a name is not registered (the message lists the available metrics).
        ValueError: bad metric options.
        ImportError: a metric's optional dependency is missing (e.g. bigcodebench for ``pass_rate``).
    """
    specs = resolve_metrics(list(names))
    for name, spec in specs.items():
        spec.check_options(metric_kwargs.get(name, {}))
    return specs


class ForwardSamplingStats(BaseModel):
    """The forward-sampling counters of one response, without its conversations: what the trainer's driver
    and the conversation dump read (a frozen pydantic model, picklable). :class:`ForwardSamples` adds the
    conversations. Input keys, where they differ from the attribute names, are given in brackets.

    Attributes:
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
        simulator_usage: the user simulator's LLM usage for this response (:class:`Usage`: ``calls``,
            ``failures``, ``prompt_tokens``, ``completion_tokens`` in the simulator model's tokens,
            ``cost_usd`` from litellm's price map); all 0 when the producer does not report it.
        simulator: the simulator's model and endpoint (``LLMSettings.describe()``, no key), or None.
        simulator_error: the last simulator failure's description, or None.
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    skipped: bool = Field(False, alias="forward_sampling_skipped")
    skip_reason: str | None = None
    future_turns: list[Count] = Field(default_factory=list)
    end_reasons: list[str] = Field(default_factory=list)
    early_terminations: Count = 0
    simulator_failures: Count = 0
    seconds: NonNegative = Field(0.0, alias="forward_sampling_seconds")
    simulator_usage: Usage = Field(default_factory=Usage)
    simulator: str | None = None
    simulator_error: str | None = None

    @property
    def future_turns_mean(self) -> float:
        """Mean of ``future_turns`` (messages, not pairs); 0.0 when there is none."""
        return sum(self.future_turns) / len(self.future_turns) if self.future_turns else 0.0

    def end_counts(self) -> dict[str, int]:
        """Conversations per end reason, for every ``END_*`` reason of recipe/core/forward_sampling.py
        (0 where none ended so); other reasons are not counted."""
        counts = dict.fromkeys(END_REASONS, 0)
        for reason in self.end_reasons:
            if reason in counts:
                counts[reason] += 1
        return counts

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
                                     prompt_tokens, completion_tokens, cost_usd (Usage.columns)
            fs/seconds               wall-clock seconds of forward sampling
        """
        p = FORWARD_SAMPLING_PREFIX
        stats = ForwardSamplingStats() if self.skipped else self  # a skipped response: every counter 0
        return {
            f"{p}future_turns_mean": stats.future_turns_mean,
            f"{p}future_turns_max": float(max(stats.future_turns, default=0)),
            f"{p}early_terminations": float(stats.early_terminations),
            f"{p}simulator_failures": float(stats.simulator_failures),
            **{f"{p}end_{reason}": float(count) for reason, count in stats.end_counts().items()},
            **stats.simulator_usage.columns(f"{p}simulator_"),
            f"{p}seconds": float(stats.seconds),
        }


class ForwardSamples(ForwardSamplingStats):
    """One response's forward-sampling result, read from ``extra_fields["collabllm"]``: the counters of
    :class:`ForwardSamplingStats` plus the conversations (a frozen pydantic model).

    Attributes:
        conversations (``future_conversations``): the S (possibly fewer) full conversations.
        num_history_messages: messages before the trained response in each conversation.
    """

    conversations: list[list[dict[str, Any]]] = Field(default_factory=list, alias="future_conversations")
    num_history_messages: Count = 0

    @property
    def scorable(self) -> list[int]:
        """Indices of the conversations that are samples of the future: all but those a user-simulator
        failure ended (all of them when ``end_reasons`` does not match ``conversations``)."""
        if len(self.end_reasons) != len(self.conversations):
            return list(range(len(self.conversations)))
        return [i for i, r in enumerate(self.end_reasons) if r != forward_sampling.END_SIMULATOR_FAILURE]

    def stats(self) -> ForwardSamplingStats:
        """The counters without the conversations (what is sent to the trainer's driver)."""
        return ForwardSamplingStats(**{name: getattr(self, name) for name in ForwardSamplingStats.model_fields})

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


@dataclass
class SampleScore:
    """The reward of one response and its breakdown (picklable: it is sent to the trainer's driver).

    Attributes:
        reward: the scalar multiturn-aware reward (meaningless when ``excluded`` is set).
        means: metric -> raw mean over the scored conversations (0.0 when none was scored).
        weighted: metric -> ``clamp(weight * mean, -1, 1)``.
        failures: metric -> conversations on which the metric failed.
        scored: metric -> conversations on which the metric produced a value.
        errors: metric -> the last failure's description (no secrets), for metrics that failed.
        judge_failures: metric failures caused by the LLM judge, over all metrics.
        judge_usage: this response's judge usage (:class:`Usage`; tokens in the judge model's tokens,
            ``cost_usd`` from litellm's price map, 0 for models it does not know).
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
    judge_usage: Usage = field(default_factory=Usage)
    num_conversations: int = 0
    skipped: bool = False
    excluded: str | None = None
    per_conversation: dict[str, list[float | None]] = field(default_factory=dict)

    @staticmethod
    def mean_column(name: str) -> str:
        """The ``reward_extra_info`` key of metric ``name``'s raw mean: ``mr/<name>``."""
        return f"{EXTRA_INFO_PREFIX}{name}"

    def extra_info(self) -> dict[str, float]:
        """Flat ``reward_extra_info``: the same keys for every sample, all floats
        (see docs/metrics_and_reward.md)."""
        p = EXTRA_INFO_PREFIX
        info: dict[str, float] = {}
        for name in self.means:
            info[self.mean_column(name)] = float(self.means[name])
            info[f"{p}{name}_weighted"] = float(self.weighted[name])
            info[f"{p}{name}_failures"] = float(self.failures[name])
            info[f"{p}{name}_scored"] = float(self.scored.get(name, 0))
        info[f"{p}judge_failures"] = float(self.judge_failures)
        info.update(self.judge_usage.columns(f"{p}judge_"))
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


@dataclass(frozen=True)
class MetricOutcome:
    """One metric on one conversation: its value, or why it could not be computed.

    Attributes:
        value: the metric's value (within its spec's ``value_range``), None when it failed.
        error: the failure's description (:attr:`MetricError.reason`, no secrets), None when it was scored.
        judge_failure: an LLM judge call (or its answer) caused the failure.
    """

    value: float | None
    error: str | None = None
    judge_failure: bool = False


@dataclass(frozen=True)
class ConversationScore:
    """Every metric on one conversation (:func:`score_conversation`).

    Attributes:
        metrics: metric name -> :class:`MetricOutcome`, in the order of the specs.
    """

    metrics: dict[str, MetricOutcome]

    @property
    def values(self) -> dict[str, float | None]:
        """Metric -> value, None where the metric failed."""
        return {name: outcome.value for name, outcome in self.metrics.items()}

    @property
    def failures(self) -> dict[str, str]:
        """Metric -> failure description, for the metrics that failed (in spec order)."""
        return {name: outcome.error for name, outcome in self.metrics.items() if outcome.error is not None}


async def score_conversation(
    specs: Mapping[str, MetricSpec],
    messages: Sequence[Mapping[str, Any]],
    *,
    judge: LLMSettings | None,
    metric_kwargs: Mapping[str, Mapping[str, Any]],
    ground_truth: Any,
    extra_info: Mapping[str, Any],
    data_source: str | None = None,
    num_history_messages: int = 0,
    tokenizer: Any = None,
) -> ConversationScore:
    """Score every metric of ``specs`` on one conversation, concurrently: the per-metric scoring that
    :func:`score_sample` runs on each forward-sampled conversation, and evaluation on a finished one.

    Args:
        specs: metric name -> spec (:func:`resolve_metric_specs`).
        messages: the conversation, ``[{"role", "content"}, ...]`` without a system message.
        judge: the LLM judges' settings (used by the metrics that need one).
        metric_kwargs: metric name -> its options (absent: none).
        ground_truth, extra_info, data_source: the row's reference, ``extra_info`` and ``data_source``.
        num_history_messages: messages before the scored response (0: every message is conversation).
        tokenizer: the policy tokenizer, when there is one.

    Returns:
        Per metric, the value or the failure (a :class:`MetricError`: a failed judge call, an unusable
        judge answer, a sandbox crash); failures are logged as warnings.

    Raises:
        Any non-:class:`MetricError` exception of a metric (configuration or data errors such as a missing
        ground truth), after every metric call of the conversation has finished.
    """
    names = list(specs)
    contexts = [
        MetricContext(
            messages=messages,
            num_history_messages=num_history_messages,
            ground_truth=ground_truth,
            extra_info=extra_info,
            data_source=data_source,
            judge=judge,
            options=metric_kwargs.get(name, {}),
            tokenizer=tokenizer,
        )
        for name in names
    ]
    results = await asyncio.gather(
        *(specs[name].score(ctx) for name, ctx in zip(names, contexts, strict=True)), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, MetricError):
            raise result
    outcomes: dict[str, MetricOutcome] = {}
    for name, result in zip(names, results, strict=True):
        if isinstance(result, MetricError):
            logger.warning("collabllm reward: %s", result)
            outcomes[name] = MetricOutcome(None, result.reason, result.judge_failure)
        else:
            outcomes[name] = MetricOutcome(float(result))
    return ConversationScore(outcomes)


async def _score_conversations(
    settings: RewardSettings,
    specs: Mapping[str, MetricSpec],
    conversations: Sequence[Sequence[Mapping[str, Any]]],
    **context: Any,
) -> list[ConversationScore]:
    """:func:`score_conversation` on each conversation concurrently (``context``: its keyword arguments
    besides the judge and the options); once all have finished, the first exception (in order) is raised."""
    results = await asyncio.gather(
        *(
            score_conversation(
                specs, messages, judge=settings.judge, metric_kwargs=settings.metric_kwargs, **context
            )
            for messages in conversations
        ),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return list(results)


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
    with usage_scope() as usage:
        results = await _score_conversations(
            settings,
            specs,
            [samples.conversations[index] for index in scorable],
            num_history_messages=samples.num_history_messages,
            ground_truth=ground_truth,
            extra_info=extra_info,
            data_source=data_source,
            tokenizer=tokenizer,
        )

    values: dict[str, list[float]] = {name: [] for name in names}
    per_conversation: dict[str, list[float | None]] = {name: [None] * count for name in names}
    failures, scored = dict(zeros), dict(zeros)
    errors: dict[str, str] = {}
    judge_failures = 0
    for index, conversation in zip(scorable, results, strict=True):
        for name, outcome in conversation.metrics.items():
            if outcome.error is not None:
                failures[name] += 1
                errors[name] = outcome.error
                judge_failures += int(outcome.judge_failure)
                if settings.failure_policy == "zero":
                    values[name].append(0.0)
            else:
                scored[name] += 1
                values[name].append(outcome.value)
                per_conversation[name][index] = outcome.value

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
        judge_usage=usage.model_copy(),
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
