"""The one LLM-call layer of the project: every user-simulator and judge request goes through here.

What it adds on top of :func:`litellm.acompletion`:

* **Run-wide limits** (optional): ``run_max_concurrency`` / ``run_requests_per_minute`` are shared by every
  process of a Ray run through one named actor (:mod:`.run_limits`), granted in leases so that the hot path
  makes no round trip per call; the per-process limits below still apply inside each process.
* **Shared limits per process.** Calls with the same ``(model, api_base, max_concurrency,
  requests_per_minute)`` share one concurrency limit and one request-rate limit in the process, however
  many agent loops / reward managers / conversations issue them (a new agent loop object is built per
  sample in verl, so limits can not live on those objects). The concurrency semaphore and the rate
  limiter (``aiolimiter``) are created lazily for each running event loop (verl runs one loop per worker
  process; tests create one per test).
* **Bounded retries** (via ``tenacity``) for transient errors (HTTP 408/409/429/5xx, connection errors,
  timeouts) and for unusable answers (empty text, JSON that can not be repaired, missing keys, wrong value
  types). The delay before retry ``k`` (1-based) is ``min(backoff_max, max(retry_after,
  backoff_initial * 2**(k-1) * U(1, 1.5)))`` seconds, where ``retry_after`` comes from the server's
  ``Retry-After`` / ``retry-after-ms`` header when present. Non-transient errors (authentication, bad
  request, unknown model, context window exceeded) are not retried.
* **A typed failure.** When the retries are exhausted, :class:`LLMCallError` is raised. Callers must
  handle it explicitly (the user simulator ends the conversation and reports the failure; judges count
  it); it is never turned into an empty string or a zero score here.
* **Lenient JSON** (:func:`acomplete_json`) through ``json-repair``: code fences, single quotes,
  trailing commas and text around the object are tolerated; required keys and value types are checked.
* **Counters** per process (:func:`llm_stats`) and per block of code (:func:`usage_scope`), named once
  in :class:`Usage`: calls, HTTP requests, retries, failures, prompt and completion tokens, cost in USD
  (the settings' ``input_cost_per_token``/``output_cost_per_token`` when set, else litellm's price map when
  the model is in it); per process also latency.
* **No secrets in logs**: :func:`redact_secrets` masks API keys in configs; ``LLMSettings.__repr__`` and
  every log line of this module are redacted.

Set ``LITELLM_LOCAL_MODEL_COST_MAP=True`` before litellm is imported on machines without internet access
(litellm otherwise tries to download its model price map at import time).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import email.utils
import json
import logging
import os
import random
import re
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Annotated, Any, ClassVar

import json_repair
import litellm
from aiolimiter import AsyncLimiter
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from collabllm_verl.recipe.core import run_limits
from collabllm_verl.recipe.core.plain import to_plain
from collabllm_verl.recipe.core.validation import NonNegative, check_backoff_order, validate

__all__ = [
    "LITELLM_PASSTHROUGH_KEYS",
    "LLM_SETTINGS_KEYS",
    "LLMCallError",
    "LLMSettings",
    "Usage",
    "acomplete_json",
    "acomplete_text",
    "extract_json",
    "llm_stats",
    "redact_secrets",
    "reset_llm_stats",
    "token_cost_usd",
    "usage_scope",
]

logger = logging.getLogger(__name__)

# litellm prints a "Give Feedback / Get Help" banner on every exception; failures are logged here instead.
litellm.suppress_debug_info = True

# Config keys copied into ``LLMSettings.completion_kwargs`` (forwarded to ``litellm.acompletion``).
LITELLM_PASSTHROUGH_KEYS = frozenset(
    {
        "temperature",
        "max_tokens",
        "max_completion_tokens",
        "top_p",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "response_format",
        "api_base",
        "api_key",
        "api_version",
        "organization",
        "custom_llm_provider",
        "extra_headers",
        "extra_body",
        "reasoning_effort",
    }
)
# Config keys that set the other LLMSettings fields.
_SETTINGS_FIELD_KEYS = frozenset(
    {
        "timeout",
        "num_retries",
        "max_concurrency",
        "requests_per_minute",
        "backoff_initial",
        "backoff_max",
        "input_cost_per_token",
        "output_cost_per_token",
        "run_max_concurrency",
        "run_requests_per_minute",
    }
)
# Every key :meth:`LLMSettings.from_config` understands (besides the model key); callers use it to
# validate their own configs.
LLM_SETTINGS_KEYS = LITELLM_PASSTHROUGH_KEYS | _SETTINGS_FIELD_KEYS | {"completion_kwargs", "base_url", "api_key_env"}

# Keys the layer sets itself; a config must not override them.
_RESERVED_KWARGS = frozenset({"model", "messages", "stream", "num_retries", "max_retries", "timeout"})


# --------------------------------------------------------------------------------------------------
# Secrets
# --------------------------------------------------------------------------------------------------

_SECRET_KEY_RE = re.compile(r"(api[_-]?key|secret|password|passwd|authorization|access[_-]?token|bearer)", re.I)
_SECRET_VALUE_RE = re.compile(
    r"\b(sk-[A-Za-z0-9_\-]{6,}|sk_[A-Za-z0-9_\-]{6,}|hf_[A-Za-z0-9]{10,}|AIza[0-9A-Za-z_\-]{20,})"
)
_MASK = "***"


def redact_secrets(obj: Any) -> Any:
    """Return a deep copy of ``obj`` with secrets masked, for logging or printing configs.

    Mappings (including OmegaConf ``DictConfig``), lists and tuples are copied recursively. A value is
    replaced by ``"***"`` when its key looks like a credential (``api_key``, ``*_secret``, ``password``,
    ``authorization``, ``access_token``, ...) and is not empty; strings anywhere that look like provider
    keys (``sk-...``, ``hf_...``, ``AIza...``) are masked too. Other values are returned unchanged.
    """
    try:  # OmegaConf containers -> plain containers, without resolving interpolations that may fail
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            obj = OmegaConf.to_container(obj, resolve=False)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if isinstance(key, str) and _SECRET_KEY_RE.search(key) and value not in (None, ""):
                out[key] = _MASK
            else:
                out[key] = redact_secrets(value)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_secrets(v) for v in obj)
    if isinstance(obj, str):
        return _SECRET_VALUE_RE.sub(_MASK, obj)
    return obj


def _scrub(text: str, settings: LLMSettings | None = None) -> str:
    """Mask key-like substrings and the settings' own API key in a log/error message."""
    text = _SECRET_VALUE_RE.sub(_MASK, str(text))
    if settings is not None:
        key = settings.completion_kwargs.get("api_key")
        if isinstance(key, str) and len(key) >= 4:
            text = text.replace(key, _MASK)
    return text


# --------------------------------------------------------------------------------------------------
# Settings and errors
# --------------------------------------------------------------------------------------------------


class LLMSettings(BaseModel):
    """How to call one LLM: model, litellm keyword arguments, timeout, retries and per-process limits.

    A frozen pydantic model: direct construction validates too (``pydantic.ValidationError``, a
    ``ValueError``); :meth:`from_config` is the entry point for user configs (shorter messages).

    Attributes:
        model: any litellm model string (``gpt-4o-mini``, ``anthropic/claude-3-5-haiku-latest``,
            ``hosted_vllm/Qwen/Qwen2.5-7B-Instruct``, ``openai/scripted-user`` for the local server).
        completion_kwargs: forwarded to ``litellm.acompletion`` (``temperature``, ``max_tokens``,
            ``api_base``, ``api_key``, ...). Must not contain ``model``, ``messages``, ``stream``,
            ``timeout`` or retry keys (the layer sets those).
        timeout: seconds allowed for one HTTP request (one attempt), > 0.
        num_retries: retries after the first attempt (so at most ``num_retries + 1`` requests), >= 0.
        max_concurrency: requests in flight at once in this process for this model/endpoint, >= 1.
        requests_per_minute: request-start rate limit for this model/endpoint in this process, > 0, or
            None for no rate limit.
        backoff_initial: seconds before the first retry (before jitter), > 0.
        backoff_max: upper bound in seconds of any single back-off sleep (``Retry-After`` included),
            >= ``backoff_initial``.
        input_cost_per_token, output_cost_per_token: USD per prompt / completion token (>= 0), given
            together or not at all; they replace litellm's price map in every cost figure (litellm's custom
            pricing, ``custom_cost_per_token``). None: litellm's price map (0 and ``cost_unknown`` for a
            model it does not list).
        run_max_concurrency: requests in flight at once for this model/endpoint over the whole Ray run
            (every agent-loop and reward worker on every node, :mod:`.run_limits`), >= 1; None: no run-wide
            limit. Outside Ray only the per-process limits apply.
        run_requests_per_minute: request starts per minute for this model/endpoint over the whole Ray run,
            > 0; None: no run-wide rate limit.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
    completion_kwargs: dict[str, Any] = Field(default_factory=dict)
    timeout: Annotated[float, Field(gt=0)] = 60.0
    num_retries: Annotated[int, Field(ge=0)] = 3
    max_concurrency: Annotated[int, Field(ge=1)] = 64
    requests_per_minute: Annotated[float, Field(gt=0)] | None = None
    backoff_initial: Annotated[float, Field(gt=0)] = 0.5
    backoff_max: Annotated[float, Field(gt=0)] = 30.0
    input_cost_per_token: Annotated[float, Field(ge=0)] | None = None
    output_cost_per_token: Annotated[float, Field(ge=0)] | None = None
    run_max_concurrency: Annotated[int, Field(ge=1)] | None = None
    run_requests_per_minute: Annotated[float, Field(gt=0)] | None = None

    @field_validator("completion_kwargs")
    @classmethod
    def _no_reserved_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        bad = _RESERVED_KWARGS & set(value)
        if bad:
            raise ValueError(f"must not set {sorted(bad)}; use the LLMSettings fields instead")
        return value

    @model_validator(mode="after")
    def _backoff_order(self) -> LLMSettings:
        return check_backoff_order(self, "backoff_initial", "backoff_max")

    @model_validator(mode="after")
    def _prices_together(self) -> LLMSettings:
        if (self.input_cost_per_token is None) != (self.output_cost_per_token is None):
            raise ValueError("input_cost_per_token and output_cost_per_token must be set together")
        return self

    @property
    def prices(self) -> dict[str, float] | None:
        """litellm's ``custom_cost_per_token`` (``{"input_cost_per_token", "output_cost_per_token"}``, USD
        per token) when the settings give prices, else None."""
        if self.input_cost_per_token is None or self.output_cost_per_token is None:
            return None
        return {
            "input_cost_per_token": self.input_cost_per_token,
            "output_cost_per_token": self.output_cost_per_token,
        }

    @property
    def shares_run_limits(self) -> bool:
        """True when a run-wide limit (``run_max_concurrency`` or ``run_requests_per_minute``) is set."""
        return self.run_max_concurrency is not None or self.run_requests_per_minute is not None

    def __repr__(self) -> str:  # never show the API key
        fields = {**self.__dict__, "completion_kwargs": redact_secrets(self.completion_kwargs)}
        return f"LLMSettings({', '.join(f'{k}={v!r}' for k, v in fields.items())})"

    __str__ = __repr__

    @property
    def api_base(self) -> str | None:
        """The endpoint URL from ``completion_kwargs`` (None means the provider's default)."""
        return self.completion_kwargs.get("api_base")

    def describe(self) -> str:
        """``"<model> at <endpoint>"`` for messages (never the key), e.g.
        ``"openai/scripted-judge at http://127.0.0.1:8011/v1"`` or ``"gpt-4o-mini at the provider's
        default endpoint"``."""
        endpoint = _scrub(self.api_base) if self.api_base else "the provider's default endpoint"
        return f"{self.model} at {endpoint}"

    @classmethod
    def from_config(cls, cfg: Mapping, *, model_key: str = "model", where: str = "LLM config") -> LLMSettings:
        """Build settings from a flat config mapping (plain dict or OmegaConf ``DictConfig``).

        ``cfg[model_key]`` is the litellm model string (e.g. ``user_model`` for the user simulator).
        Keys in :data:`LITELLM_PASSTHROUGH_KEYS` go to ``completion_kwargs`` (``base_url`` is accepted as
        an alias of ``api_base``), a nested ``completion_kwargs`` mapping is merged on top, and
        ``timeout``, ``num_retries``, ``max_concurrency``, ``requests_per_minute``, ``backoff_initial``,
        ``backoff_max`` set the fields. Values that are None (e.g. ``${oc.env:OPENAI_API_KEY,null}``
        with the variable unset) are dropped. ``api_key_env`` names an environment variable that holds the
        API key: the key is read from the process environment here, so it never sits in a config that a
        trainer prints (verl's ``main_ppo`` prints its whole resolved config). Other keys are ignored: the
        caller validates its own keys (see :data:`LLM_SETTINGS_KEYS`).

        Args:
            where: how the user names ``cfg`` in error messages (``"reward_kwargs.llm_judge_kwargs"``).

        Raises:
            ValueError: the model key is missing/empty, a value has the wrong type or is out of range, or
                ``api_key_env`` names a variable that is not set; the message names the key
                (``<where>.<key>``) or the variable.
        """
        plain = to_plain(cfg)
        if not isinstance(plain, Mapping):
            raise ValueError(f"LLM config must be a mapping, got {type(cfg).__name__}")
        cfg = {k: v for k, v in plain.items() if v is not None}
        if not cfg.get(model_key):
            raise ValueError(f"{where}.{model_key}: required, the litellm model string (got keys {sorted(cfg)})")
        kwargs: dict[str, Any] = {k: cfg[k] for k in LITELLM_PASSTHROUGH_KEYS if k in cfg}
        if "base_url" in cfg:
            kwargs.setdefault("api_base", cfg["base_url"])
        key_env = cfg.get("api_key_env")
        if key_env is not None and "api_key" not in kwargs:
            if not os.environ.get(str(key_env)):
                raise ValueError(f"{where}.api_key_env names {key_env!r}, which is not set in the environment")
            kwargs["api_key"] = os.environ[str(key_env)]
        extra = cfg.get("completion_kwargs") or {}
        if not isinstance(extra, Mapping):
            raise ValueError(f"{where}.completion_kwargs: must be a mapping, got {type(extra).__name__}")
        kwargs.update({k: v for k, v in extra.items() if v is not None})
        fields = {k: cfg[k] for k in _SETTINGS_FIELD_KEYS if k in cfg}
        return validate(cls, {"model": str(cfg[model_key]), "completion_kwargs": kwargs, **fields}, where=where)


class LLMCallError(RuntimeError):
    """An LLM call failed for good: retries exhausted or a non-retryable error.

    Attributes:
        model: the litellm model string.
        attempts: HTTP requests made (1 .. num_retries + 1).
        reason: short description of the last failure (error class and message, secrets masked).
        purpose: the caller's label (``"user_simulator"``, ``"judge:accuracy"``, ...).
    """

    def __init__(self, *, model: str, attempts: int, reason: str, purpose: str = "") -> None:
        self.model = model
        self.attempts = attempts
        self.reason = reason
        self.purpose = purpose
        super().__init__(f"LLM call failed ({purpose or 'llm'}, model={model}) after {attempts} attempt(s): {reason}")


class _UnusableAnswer(ValueError):
    """The model answered, but the answer can not be used (empty, bad JSON, missing keys)."""


# --------------------------------------------------------------------------------------------------
# Counters
# --------------------------------------------------------------------------------------------------


class Usage(BaseModel):
    """LLM usage counters: the one vocabulary of the project for what LLM calls cost.

    The per-process totals (:func:`llm_stats`), a :func:`usage_scope` block, a response's judge and
    simulator usage, a training step's sums and the evaluation and data-engine records all use these
    names. Every counter is a finite float >= 0.

    Attributes:
        calls: ``acomplete_*`` invocations (one call makes 1 .. ``num_retries + 1`` requests).
        requests: HTTP requests sent (attempts, retries included).
        retries: attempts after the first one.
        failures: calls that raised :class:`LLMCallError`.
        prompt_tokens, completion_tokens: model tokens as the servers report them.
        cost_usd: US dollars: the settings' prices (``input_cost_per_token``, ``output_cost_per_token``)
            when given, else litellm's price map, for the models it knows.
        cost_unknown: successful requests without a price (no prices set and the model not in litellm's
            map; not in ``cost_usd``).

    ``a + b`` and ``a - b`` are counter-wise; validation accepts a mapping with any subset of the names
    (missing ones are 0, other keys are ignored) and names a bad value's key.
    """

    model_config = ConfigDict(extra="ignore")

    calls: NonNegative = 0.0
    requests: NonNegative = 0.0
    retries: NonNegative = 0.0
    failures: NonNegative = 0.0
    prompt_tokens: NonNegative = 0.0
    completion_tokens: NonNegative = 0.0
    cost_usd: NonNegative = 0.0
    cost_unknown: NonNegative = 0.0

    COLUMNS: ClassVar[Mapping[str, str]] = MappingProxyType(
        {
            "calls": "calls",
            "failures": "failed_calls",  # "failures" would collide with fs/simulator_failures (conversations)
            "prompt_tokens": "prompt_tokens",
            "completion_tokens": "completion_tokens",
            "cost_usd": "cost_usd",
        }
    )
    """The counters reported per response and per training step -> their documented column names
    (``mr/judge_<column>``, ``fs/simulator_<column>``, a step summary's ``judge``/``simulator`` block)."""

    @classmethod
    def counter_names(cls) -> tuple[str, ...]:
        """Every counter name, in declaration order."""
        return tuple(cls.model_fields)

    @property
    def tokens(self) -> float:
        """``prompt_tokens + completion_tokens``."""
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage.model_construct(**{k: getattr(self, k) + getattr(other, k) for k in self.counter_names()})

    def __sub__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage.model_construct(**{k: getattr(self, k) - getattr(other, k) for k in self.counter_names()})

    def as_dict(self, *names: str) -> dict[str, float]:
        """``{counter: value}`` for ``names`` (default: every counter), in that order.

        Raises:
            KeyError: a name is not a counter.
        """
        unknown = [n for n in names if n not in type(self).model_fields]
        if unknown:
            raise KeyError(f"not LLM usage counters: {unknown}; known: {list(self.counter_names())}")
        return {name: float(getattr(self, name)) for name in names or self.counter_names()}

    def columns(self, prefix: str = "") -> dict[str, float]:
        """The reported counters under their column names (:attr:`COLUMNS`), each prefixed, e.g.
        ``usage.columns("mr/judge_")`` -> ``{"mr/judge_calls": ..., "mr/judge_failed_calls": ..., ...}``."""
        return {f"{prefix}{column}": float(getattr(self, key)) for key, column in self.COLUMNS.items()}

    def _add_counts(self, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            setattr(self, key, getattr(self, key) + value)


_stats_lock = threading.Lock()
_stats: dict[str, Usage] = defaultdict(Usage)  # purpose ("" = all purposes) -> counters
_latency: dict[str, float] = defaultdict(float)  # purpose -> seconds spent in successful calls


# Usage records of the open :func:`usage_scope` blocks of the current task (innermost last).
_usage_sinks: contextvars.ContextVar[tuple[Usage, ...]] = contextvars.ContextVar(
    "collabllm_llm_usage_sinks", default=()
)


def _count(purpose: str, **values: float) -> None:
    """Add ``values`` (:class:`Usage` counters, or ``latency_s_total`` in seconds) to the process totals,
    to ``purpose``'s and to every open :func:`usage_scope` of the current task."""
    latency = values.pop("latency_s_total", 0.0)
    with _stats_lock:
        scopes = ("", purpose) if purpose else ("",)  # an empty purpose must not count twice
        for scope in scopes:
            _stats[scope]._add_counts(values)
            _latency[scope] += latency
        for sink in _usage_sinks.get():
            sink._add_counts(values)


@contextlib.contextmanager
def usage_scope():
    """Count the LLM calls made inside a ``with`` block, including tasks it starts (``asyncio.gather``).

    Yields a :class:`Usage`, updated in place as calls finish; scopes nest. Used by the reward manager to
    report each sample's judge cost while many samples are scored concurrently (per-process totals can not
    be split by sample).
    """
    sink = Usage()
    token = _usage_sinks.set((*_usage_sinks.get(), sink))
    try:
        yield sink
    finally:
        _usage_sinks.reset(token)


def llm_stats() -> dict[str, float]:
    """Per-process counters since start (or the last :func:`reset_llm_stats`), as a flat dict.

    Keys without a prefix are totals over all purposes; ``"<purpose>/<counter>"`` keys are per purpose
    (e.g. ``"user_simulator/requests"``). Counters: the :class:`Usage` ones (``calls``, ``requests``,
    ``retries``, ``failures``, ``prompt_tokens``, ``completion_tokens``, ``cost_usd``, ``cost_unknown``),
    then ``latency_s_total`` and ``latency_s_mean`` (seconds per successful call, including retries and
    back-off).
    """
    with _stats_lock:
        out: dict[str, float] = {}
        for scope in list(_stats) or [""]:  # "" (all purposes) is counted first, so it comes first
            usage, latency = _stats.get(scope, Usage()), _latency.get(scope, 0.0)
            prefix = f"{scope}/" if scope else ""
            out.update({prefix + key: value for key, value in usage.as_dict().items()})
            ok = usage.calls - usage.failures
            out[prefix + "latency_s_total"] = latency
            out[prefix + "latency_s_mean"] = latency / ok if ok > 0 else 0.0
        return out


def reset_llm_stats() -> None:
    """Zero every counter of this process (tests and benchmarks)."""
    with _stats_lock:
        _stats.clear()
        _latency.clear()


# --------------------------------------------------------------------------------------------------
# Per-process limiters
# --------------------------------------------------------------------------------------------------


class _Limiter:
    """Concurrency semaphore plus an optional request-rate limit, one pair per running event loop.

    asyncio primitives belong to the loop that awaits them, so each loop gets its own pair (created
    lazily); verl runs one loop per worker process, so in training this is one pair per process. The rate
    limit is ``aiolimiter.AsyncLimiter(1, 60 / requests_per_minute)``: request starts are spaced evenly,
    at most ``requests_per_minute`` a minute, without an initial burst.
    """

    def __init__(self, max_concurrency: int, requests_per_minute: float | None) -> None:
        self.max_concurrency = max_concurrency
        self.requests_per_minute = requests_per_minute
        self._per_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[asyncio.Semaphore, AsyncLimiter | None]
        ] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def _primitives(self) -> tuple[asyncio.Semaphore, AsyncLimiter | None]:
        loop = asyncio.get_running_loop()
        with self._lock:
            pair = self._per_loop.get(loop)
            if pair is None:
                rate = (
                    AsyncLimiter(1, 60.0 / float(self.requests_per_minute)) if self.requests_per_minute else None
                )
                pair = self._per_loop[loop] = (asyncio.Semaphore(self.max_concurrency), rate)
            return pair

    def semaphore(self) -> asyncio.Semaphore:
        return self._primitives()[0]

    async def rate(self) -> None:
        rate = self._primitives()[1]
        if rate is not None:
            await rate.acquire()


_limiters: dict[tuple, _Limiter] = {}
_limiters_lock = threading.Lock()


def _limiter_for(settings: LLMSettings) -> _Limiter:
    key = (settings.model, settings.api_base, settings.max_concurrency, settings.requests_per_minute)
    with _limiters_lock:
        lim = _limiters.get(key)
        if lim is None:
            lim = _limiters[key] = _Limiter(settings.max_concurrency, settings.requests_per_minute)
        return lim


# --------------------------------------------------------------------------------------------------
# Retry policy
# --------------------------------------------------------------------------------------------------

_RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_NON_RETRYABLE_TYPES: tuple[type[BaseException], ...] = tuple(
    t
    for t in (
        getattr(litellm, "AuthenticationError", None),
        getattr(litellm, "PermissionDeniedError", None),
        getattr(litellm, "NotFoundError", None),
        getattr(litellm, "BadRequestError", None),  # includes context-window and content-policy errors
        getattr(litellm, "UnprocessableEntityError", None),
    )
    if t is not None
)
_RETRYABLE_TYPES: tuple[type[BaseException], ...] = tuple(
    t
    for t in (
        _UnusableAnswer,
        asyncio.TimeoutError,
        TimeoutError,
        getattr(litellm, "Timeout", None),
        getattr(litellm, "RateLimitError", None),
        getattr(litellm, "APIConnectionError", None),
        getattr(litellm, "InternalServerError", None),
        getattr(litellm, "ServiceUnavailableError", None),
        getattr(litellm, "BadGatewayError", None),
    )
    if t is not None
)


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, _RETRYABLE_TYPES):
        return True
    if isinstance(exc, _NON_RETRYABLE_TYPES):
        return False
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status in _RETRYABLE_STATUS
    # litellm.APIError without a status, JSON decoding of a truncated body, ...
    return isinstance(exc, (getattr(litellm, "APIError", ()), json.JSONDecodeError))


def _retry_after_seconds(exc: BaseException | None) -> float:
    """Seconds the server asked us to wait (``retry-after-ms`` or ``Retry-After``), else 0."""
    if exc is None:
        return 0.0
    headers = None
    response = getattr(exc, "response", None)
    if response is not None:
        headers = getattr(response, "headers", None)
    if not headers:
        headers = getattr(exc, "litellm_response_headers", None) or getattr(exc, "headers", None)
    if not headers:
        return 0.0
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000.0)
        value = headers.get("retry-after")
        if value is None:
            return 0.0
        try:
            return max(0.0, float(value))
        except ValueError:
            parsed = email.utils.parsedate_tz(value)
            return max(0.0, email.utils.mktime_tz(parsed) - time.time()) if parsed else 0.0
    except Exception:  # noqa: BLE001  (a malformed header: fall back to exponential back-off)
        return 0.0


def _jitter() -> float:
    """The random factor of the exponential back-off: uniform in ``[1, 1.5]``."""
    return random.uniform(1.0, 1.5)


async def _sleep(seconds: float) -> None:
    """The back-off sleep between attempts (tenacity's ``sleep``); never blocks the event loop.

    A module attribute, read each time a call starts, so that tests can record the waits instead of
    waiting them.
    """
    await asyncio.sleep(seconds)


def _backoff_seconds(settings: LLMSettings, retry: int, retry_after: float, jitter: float) -> float:
    """Seconds to wait before retry ``retry`` (1-based):
    ``min(backoff_max, max(retry_after, backoff_initial * 2**(retry-1) * jitter))``.

    Args:
        retry_after: what the server asked for (``Retry-After``), in seconds; 0 when it did not.
        jitter: the random factor, in ``[1, 1.5]`` (:func:`_jitter`).
    """
    exponential = settings.backoff_initial * (2 ** (retry - 1)) * jitter
    return min(settings.backoff_max, max(retry_after, exponential))


def _make_wait(settings: LLMSettings) -> Callable[[RetryCallState], float]:
    """tenacity's ``wait``: :func:`_backoff_seconds` for the failed attempt (its ``Retry-After`` header)."""

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        return _backoff_seconds(settings, state.attempt_number, _retry_after_seconds(exc), _jitter())

    return wait


def _describe(exc: BaseException, settings: LLMSettings) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if len(text) > 300:
        text = text[:300] + "..."
    return _scrub(f"{type(exc).__name__}: {text}" if text else type(exc).__name__, settings)


# --------------------------------------------------------------------------------------------------
# Calls
# --------------------------------------------------------------------------------------------------


_UNPRICED_MODELS: set[str] = set()  # models litellm's price map does not know (checked once per process)


def token_cost_usd(settings: LLMSettings, prompt_tokens: float, completion_tokens: float) -> float | None:
    """USD for ``prompt_tokens`` and ``completion_tokens`` at the settings' own prices (litellm's
    ``cost_per_token`` with ``custom_cost_per_token``), or None when the settings set no prices."""
    prices = settings.prices
    if prices is None:
        return None
    prompt_usd, completion_usd = litellm.cost_per_token(
        model=settings.model,
        prompt_tokens=int(prompt_tokens),
        completion_tokens=int(completion_tokens),
        custom_cost_per_token=prices,
    )
    return float(prompt_usd) + float(completion_usd)


def _response_cost(
    response: Any, settings: LLMSettings, prompt_tokens: float, completion_tokens: float
) -> float | None:
    """USD of one response: the settings' prices, else litellm's price map; None when neither knows it."""
    custom = token_cost_usd(settings, prompt_tokens, completion_tokens)
    if custom is not None:
        return custom
    model = settings.model
    hidden = getattr(response, "_hidden_params", None) or {}
    cost = hidden.get("response_cost") if isinstance(hidden, Mapping) else None
    if isinstance(cost, (int, float)):
        return float(cost)
    if model in _UNPRICED_MODELS:
        return None
    try:
        return float(litellm.completion_cost(completion_response=response))
    except Exception:  # noqa: BLE001  (model not in litellm's price map: local servers, scripted responders)
        _UNPRICED_MODELS.add(model)
        return None


async def _with_deadline(coro, seconds: float):
    """Await ``coro`` with an overall deadline (asyncio.timeout avoids wait_for's extra task on 3.11+)."""
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(seconds):
            return await coro
    return await asyncio.wait_for(coro, seconds)  # pragma: no cover - Python 3.10


async def _one_request(messages: list[dict], settings: LLMSettings, purpose: str) -> str:
    limiter = _limiter_for(settings)
    async with limiter.semaphore():
        await limiter.rate()  # the per-process rate wait comes first: no run-wide permit is held while it sleeps
        async with run_limits.run_slot(settings):
            _count(purpose, requests=1)
            # litellm enforces ``timeout`` per socket read; the outer deadline bounds the whole request.
            response = await _with_deadline(
                litellm.acompletion(
                    model=settings.model,
                    messages=messages,
                    timeout=settings.timeout,
                    num_retries=0,
                    max_retries=0,
                    **settings.completion_kwargs,
                ),
                settings.timeout + 1.0,
            )
    usage = getattr(response, "usage", None)
    prompt_tokens = float(getattr(usage, "prompt_tokens", 0) or 0)
    completion_tokens = float(getattr(usage, "completion_tokens", 0) or 0)
    cost = _response_cost(response, settings, prompt_tokens, completion_tokens)
    _count(
        purpose,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=cost or 0.0,
        cost_unknown=0.0 if cost is not None else 1.0,
    )
    try:
        content = response.choices[0].message.content
    except (AttributeError, IndexError) as exc:
        raise _UnusableAnswer(f"response has no message content ({exc})") from None
    if not isinstance(content, str) or not content.strip():
        raise _UnusableAnswer("empty answer")
    return content


async def _call_with_retries(messages: list[dict], settings: LLMSettings, purpose: str, parse) -> Any:
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
    _count(purpose, calls=1)
    started = time.perf_counter()
    attempts = 0

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        _count(purpose, retries=1)
        logger.warning(
            "LLM retry %d/%d purpose=%s model=%s after %s; sleeping %.2f s",
            state.attempt_number,
            settings.num_retries,
            purpose,
            settings.model,
            _describe(exc, settings) if exc else "?",
            state.next_action.sleep if state.next_action else 0.0,
        )

    retrying = AsyncRetrying(
        sleep=_sleep,
        stop=stop_after_attempt(settings.num_retries + 1),
        wait=_make_wait(settings),
        retry=retry_if_exception(_is_retryable),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                attempts = attempt.retry_state.attempt_number
                text = await _one_request(messages, settings, purpose)
                result = parse(text)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001  (counted, logged and raised again as LLMCallError)
        _count(purpose, failures=1)
        reason = _describe(exc, settings)
        logger.error(
            "LLM call failed purpose=%s model=%s after %d attempt(s): %s", purpose, settings.model, attempts, reason
        )
        raise LLMCallError(model=settings.model, attempts=attempts, reason=reason, purpose=purpose) from None
    _count(purpose, latency_s_total=time.perf_counter() - started)
    return result


async def acomplete_text(messages: list[dict], settings: LLMSettings, *, purpose: str) -> str:
    """One chat completion; returns the assistant's text (non-empty).

    Args:
        messages: OpenAI-style chat messages, ``[{"role": ..., "content": ...}, ...]``.
        settings: model, litellm kwargs, timeout, retries and limits.
        purpose: label for counters and logs (``"user_simulator"``, ``"judge:accuracy"``).

    Raises:
        LLMCallError: every attempt failed (transient errors or empty answers until retries ran out) or a
            non-retryable error occurred.
        ValueError: ``messages`` is not a non-empty list.
    """
    return await _call_with_retries(messages, settings, purpose, parse=lambda text: text)


async def acomplete_json(
    messages: list[dict],
    settings: LLMSettings,
    *,
    required: Mapping[str, type | tuple[type, ...]],
    purpose: str,
    validate: Callable[[dict], str | None] | None = None,
) -> dict:
    """One chat completion whose answer must be a JSON object with the ``required`` keys and types.

    The answer is parsed leniently (:func:`extract_json`). An answer that is not a JSON object, lacks a
    required key, or has a value of the wrong type counts as unusable and is retried like a transient
    error. ``required`` maps key -> type or tuple of types (``{"score": (int, float)}``); ``bool`` is
    not accepted where only numbers are asked for. Extra keys are kept. ``validate`` (optional) gets the
    parsed object and returns a problem description (the answer is then unusable and retried) or None.

    Raises:
        LLMCallError: no usable answer within ``settings.num_retries + 1`` attempts.
    """
    required = dict(required)

    def parse(text: str) -> dict:
        obj = extract_json(text)
        problems = _check_required(obj, required) or (validate(obj) if validate is not None else None)
        if problems:
            raise _UnusableAnswer(problems)
        return obj

    return await _call_with_retries(messages, settings, purpose, parse=parse)


def extract_json(text: str) -> dict:
    """Parse a JSON object out of a model answer with ``json-repair``.

    Tolerates Markdown code fences, single quotes, trailing commas, unquoted keys, truncated objects
    and prose around the object. Raises :class:`ValueError` (a retryable "unusable answer" inside the
    layer) when no JSON object can be recovered.
    """
    try:
        obj = json_repair.loads(text)
    except Exception as exc:  # noqa: BLE001  (json-repair is lenient; any failure is an unusable answer)
        raise _UnusableAnswer(f"answer is not JSON ({exc})") from None
    if isinstance(obj, list):  # e.g. text before the object parsed as a list of fragments
        dicts = [o for o in obj if isinstance(o, dict)]
        obj = dicts[-1] if dicts else obj
    if not isinstance(obj, dict) or not obj:
        raise _UnusableAnswer(f"answer holds no JSON object (got {type(obj).__name__})")
    return obj


def _check_required(obj: dict, required: Mapping[str, type | tuple[type, ...]]) -> str:
    problems = []
    for key, types in required.items():
        if key not in obj:
            problems.append(f"missing key {key!r}")
            continue
        types_t = types if isinstance(types, tuple) else (types,)
        value = obj[key]
        if isinstance(value, bool) and bool not in types_t:
            problems.append(f"key {key!r} is a bool, expected {[t.__name__ for t in types_t]}")
        elif not isinstance(value, types_t):
            problems.append(f"key {key!r} is {type(value).__name__}, expected {[t.__name__ for t in types_t]}")
    return "; ".join(problems)
