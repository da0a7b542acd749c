"""The metric registry: named conversation-level metrics that the ``collabllm`` reward manager combines.

A metric scores ONE finished conversation (the trained response plus its forward-sampled future turns,
docs/design.md §1) and returns a float in its documented range. The reward manager averages a metric over the
S forward-sampled conversations of a response, multiplies by the metric's weight and clamps to [-1, 1]
(see :mod:`collabllm_verl.recipe.verl_adapters.reward_manager`).

Adding a metric means adding one module to ``metrics/`` that decorates an async function (or a class
whose instances are async callables) with :func:`register_metric`; every module of the package is
imported by ``collabllm_verl.metrics``. Metrics defined outside the package register the same way; make
sure their module is imported in every verl process (``VERL_USE_EXTERNAL_MODULES``).

Example::

    @register_metric("answer_length", value_range=(0, math.inf), unit="characters",
                     description="characters of the final assistant message")
    async def answer_length(ctx: MetricContext) -> float:
        return float(len(ctx.last_assistant_message() or ""))
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MetricContext",
    "MetricError",
    "MetricSpec",
    "UnknownMetricError",
    "available_metrics",
    "get_metric",
    "register_metric",
    "resolve_metrics",
]


class MetricError(RuntimeError):
    """A metric could not produce a value for one conversation.

    Raised for judge calls that failed after the LLM layer's retries, judge answers that are unusable
    (out of range, wrong shape), or an infrastructure error of a code sandbox. The reward manager counts
    it and applies its ``failure_policy``; it is never silently turned into a score.

    Attributes:
        metric: the metric's registered name.
        reason: short description (no secrets).
        judge_failure: True when an LLM judge call (or its answer) was the cause.
    """

    def __init__(self, metric: str, reason: str, *, judge_failure: bool = False) -> None:
        self.metric = metric
        self.reason = reason
        self.judge_failure = judge_failure
        super().__init__(f"metric {metric!r} failed: {reason}")


class UnknownMetricError(ValueError):
    """A configured metric name is not registered; the message lists the available metrics."""


@dataclass(frozen=True)
class MetricContext:
    """Everything a metric may read about one forward-sampled conversation.

    Attributes:
        messages: the full conversation as ``[{"role", "content"}, ...]``: the prompt history (no system
            message), the trained response at index ``num_history_messages``, then the forward-sampled
            user/assistant turns (the agent loop's ``extra_fields["collabllm"]`` contract,
            docs/architecture.md).
        num_history_messages: number of messages before the trained response (>= 0).
        ground_truth: the row's ``reward_model.ground_truth`` (a reference answer, document or a
            task-specific structure, e.g. a BigCodeBench task for ``pass_rate``).
        extra_info: the row's ``extra_info`` mapping (``interaction_kwargs`` with ``single_turn_prompt``
            and ``task_desc``, ...).
        data_source: the row's ``data_source`` (may be None).
        judge: :class:`~collabllm_verl.recipe.core.llm_client.LLMSettings` for LLM judges, or None when no
            judge was configured (metrics that need one are rejected at start-up in that case).
        options: this metric's options (``reward_kwargs.metric_kwargs.<name>``), validated against the
            spec's documented ``options`` at start-up.
        tokenizer: the policy tokenizer (Hugging Face) when the reward manager has one, else None.
    """

    messages: Sequence[Mapping[str, Any]]
    num_history_messages: int = 0
    ground_truth: Any = None
    extra_info: Mapping[str, Any] = field(default_factory=dict)
    data_source: str | None = None
    judge: Any = None
    options: Mapping[str, Any] = field(default_factory=dict)
    tokenizer: Any = None

    @property
    def future_messages(self) -> list[Mapping[str, Any]]:
        """The trained response and every forward-sampled message after it."""
        return list(self.messages[self.num_history_messages :])

    @property
    def interaction_kwargs(self) -> Mapping[str, Any]:
        """``extra_info["interaction_kwargs"]`` (empty mapping when absent)."""
        value = (self.extra_info or {}).get("interaction_kwargs") or {}
        return value if isinstance(value, Mapping) else {}

    @property
    def single_turn_prompt(self) -> str:
        """The hidden goal given to the user simulator (``interaction_kwargs.single_turn_prompt``), or ''."""
        return str(self.interaction_kwargs.get("single_turn_prompt") or "")

    @property
    def task_desc(self) -> str:
        """The task description (``interaction_kwargs.task_desc``), or ''."""
        return str(self.interaction_kwargs.get("task_desc") or "")

    def last_assistant_message(self, *, future_only: bool = True) -> str | None:
        """Content of the last assistant message (in the future part by default), or None."""
        pool = self.future_messages if future_only else list(self.messages)
        for message in reversed(pool):
            if message.get("role") == "assistant":
                return str(message.get("content") or "")
        return None


MetricFn = Callable[[MetricContext], Awaitable[float]]


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric.

    Attributes:
        name: the key used in ``metric_weights``.
        fn: async callable ``fn(ctx: MetricContext) -> float``.
        value_range: inclusive ``(low, high)`` bounds of a value; ``math.inf`` for unbounded.
        unit: what one unit of the value is (``"0/1"``, ``"whitespace words"``, ``"fraction"``...).
        description: one line for docs and error messages.
        needs_judge: True when the metric calls the LLM judge (``llm_judge_kwargs`` must be set).
        options: documented option names -> one-line help; other option names are rejected.
        validate: optional start-up check ``validate(options)`` raising ``ValueError`` (bad option value)
            or ``ImportError`` (missing optional dependency), so mistakes surface before training.
    """

    name: str
    fn: MetricFn
    value_range: tuple[float, float]
    unit: str
    description: str
    needs_judge: bool = False
    options: Mapping[str, str] = field(default_factory=dict)
    validate: Callable[[Mapping[str, Any]], None] | None = None

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Start-up check of this metric's options and optional dependencies.

        Raises:
            ValueError: an option is not documented, or ``validate`` rejects a value.
            ImportError: ``validate`` found an optional dependency missing.
        """
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise ValueError(f"metric {self.name!r} has no option(s) {unknown}; known options: {known}")
        if self.validate is not None:
            self.validate(options)

    async def score(self, ctx: MetricContext) -> float:
        """Score one conversation; returns a finite float within ``value_range``.

        Raises:
            MetricError: the metric failed (judge failure, unusable answer, sandbox error) or returned a
                value that is not a number in ``value_range``. An ``LLMCallError`` of the LLM layer (a judge
                call that failed after its retries) becomes one here, with ``judge_failure=True``; this is the
                only place that conversion happens.
        """
        try:
            value = await self.fn(ctx)
        except MetricError:
            raise
        except Exception as exc:
            # An LLMCallError can only exist once the LLM layer is imported; looking it up here keeps
            # litellm out of processes that only run rule-based metrics.
            llm_client = sys.modules.get("collabllm_verl.recipe.core.llm_client")
            if llm_client is not None and isinstance(exc, llm_client.LLMCallError):
                raise MetricError(self.name, exc.reason, judge_failure=True) from None
            raise
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MetricError(self.name, f"returned {type(value).__name__}, expected a number")
        value = float(value)
        low, high = self.value_range
        if math.isnan(value) or not (low <= value <= high):
            raise MetricError(self.name, f"value {value!r} is outside its range [{low}, {high}]")
        return value


_REGISTRY: dict[str, MetricSpec] = {}


def register_metric(
    name: str,
    *,
    value_range: tuple[float, float],
    unit: str,
    description: str,
    needs_judge: bool = False,
    options: Mapping[str, str] | None = None,
    validate: Callable[[Mapping[str, Any]], None] | None = None,
) -> Callable[[Any], Any]:
    """Decorator registering an async metric function, or a class whose instances are async callables.

    A class is instantiated once (without arguments) at registration. Returns the decorated object
    unchanged. The keyword arguments become the :class:`MetricSpec` fields of the same names.

    Raises:
        ValueError: ``name`` is already registered to a different object, the range is inverted, or the
            callable is not async.
    """
    low, high = float(value_range[0]), float(value_range[1])
    if not low <= high:
        raise ValueError(f"metric {name!r}: value_range {value_range} is inverted")

    def decorator(obj: Any) -> Any:
        fn = obj() if isinstance(obj, type) else obj
        plain = inspect.isfunction(fn) or inspect.ismethod(fn)
        target = fn if plain else (fn.__call__ if callable(fn) else None)
        if not inspect.iscoroutinefunction(target):
            raise ValueError(f"metric {name!r} must be an async function or a class with an async __call__")
        existing = _REGISTRY.get(name)
        if existing is not None and getattr(existing.fn, "__qualname__", None) != getattr(
            fn, "__qualname__", None
        ):
            raise ValueError(f"metric {name!r} is already registered ({existing.fn!r})")
        _REGISTRY[name] = MetricSpec(
            name=name,
            fn=fn,
            value_range=(low, high),
            unit=unit,
            description=description,
            needs_judge=needs_judge,
            options=dict(options or {}),
            validate=validate,
        )
        return obj

    return decorator


def available_metrics() -> list[str]:
    """Sorted names of every registered metric."""
    return sorted(_REGISTRY)


def get_metric(name: str) -> MetricSpec:
    """The spec registered under ``name``.

    Raises:
        UnknownMetricError: no such metric; the message lists the available ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownMetricError(
            f"unknown metric {name!r}; available metrics: {', '.join(available_metrics())}"
        ) from None


def resolve_metrics(names: Sequence[str]) -> dict[str, MetricSpec]:
    """Look up several metric names at once (start-up validation).

    Raises:
        UnknownMetricError: one or more names are not registered; all of them are named, with the list
            of available metrics.
    """
    unknown = [n for n in names if n not in _REGISTRY]
    if unknown:
        raise UnknownMetricError(
            f"unknown metric(s) {unknown} in reward_kwargs; "
            f"available metrics: {', '.join(available_metrics())}"
        )
    return {n: _REGISTRY[n] for n in names}
