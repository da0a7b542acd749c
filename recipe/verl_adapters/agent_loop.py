"""CollabLLM agent loop for verl 0.9.1: the trained response, then concurrent forward sampling.

Registered as ``collabllm_agent`` (``verl.experimental.agent_loop.agent_loop.register``) and listed in
``config/agent.yaml`` for ``actor_rollout_ref.rollout.agent.agent_loop_config_path``. Dataset rows select it
with ``agent_name: collabllm_agent``. verl builds one loop object per sample inside the agent-loop worker's
event loop and calls :meth:`CollabLLMAgentLoop.run` with the row's fields.

1. The policy answers ``raw_prompt`` through ``server_manager.generate``. Only these tokens are trained:
   ``prompt_ids``, ``response_ids``, ``response_mask`` (all 1) and ``response_logprobs``.
2. Forward sampling (CollabLLM, Wu et al. 2025, §3.2): unless the response is unusable (truncated, empty, or
   with a malformed ``<think>`` block), ``num_repeat_rollouts`` future conversations run concurrently, each
   alternating a user-simulator turn and a policy reply (:mod:`collabllm_verl.recipe.core.forward_sampling`).
3. The future conversations and per-sample metrics go to ``AgentLoopOutput.extra_fields["collabllm"]`` for
   the reward manager, which scores them into the multiturn-aware reward.

User-facing documentation: ``docs/agent_loop.md``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import (
    AgentLoopBase,
    AgentLoopOutput,
    _agent_loop_registry,
    register,
)
from verl.utils.import_utils import resolve_config_path
from verl.utils.profiler import simple_timer
from verl.utils.rollout_trace import rollout_trace_op
from verl.workers.rollout.replica import TokenOutput

from collabllm_verl.recipe.core.forward_sampling import (
    REASONING_CLOSE,
    REASONING_OPEN,
    TurnLimits,
    sample_future_conversation,
    skipped_forward_sampling,
    summarize_forward_sampling,
    unusable_response_reason,
    visible_history,
)
from collabllm_verl.recipe.core.llm_client import Usage, usage_scope
from collabllm_verl.recipe.core.logit_bias import resolve_logit_bias
from collabllm_verl.recipe.core.plain import to_plain
from collabllm_verl.recipe.verl_adapters.step_ledger import LedgerClient
from collabllm_verl.recipe.verl_adapters.step_summary import ResponseReport

logger = logging.getLogger(__name__)

AGENT_NAME = "collabllm_agent"
PACKAGE_PREFIX = "pkg://"
DEFAULT_INTERACTION_CONFIG = "pkg://collabllm_verl.config/collabllm_interaction_config.yaml"

# The step ledger's sending side for this process: an agent loop that raises reports it there (run()).
_LEDGER = LedgerClient()

# Interactions loaded in this process, keyed by the resolved YAML path. verl builds a new agent loop per
# sample, so loading (and the user simulator's clients) must be shared, not rebuilt per sample.
_INTERACTIONS_BY_PATH: dict[tuple[str, str], dict[str, Any]] = {}


def resolve_interaction_config_path(path: str, agent_loop_config_path: str | None = None) -> str:
    """Find the interaction YAML named in ``config/agent.yaml``, whatever the working directory.

    Accepted forms, tried in this order:

    * ``pkg://<package>/<file>``: a file shipped inside an installed package
      (e.g. ``pkg://collabllm_verl.config/collabllm_interaction_config.yaml``);
    * an absolute path;
    * a path relative to the directory of the agent-loop YAML (``agent_loop_config_path``, itself resolved
      the way verl resolves it), then relative to the current working directory.

    Args:
        path: the ``interaction_config_path`` value.
        agent_loop_config_path: ``actor_rollout_ref.rollout.agent.agent_loop_config_path`` or None.

    Returns:
        An absolute path to an existing file.

    Raises:
        FileNotFoundError: no candidate exists (the message lists every location tried).
    """
    if not isinstance(path, str) or not path.strip():
        raise FileNotFoundError(f"interaction_config_path must be a non-empty string, got {path!r}")
    tried: list[str] = []
    if path.startswith(PACKAGE_PREFIX):
        package, _, relative = path[len(PACKAGE_PREFIX) :].partition("/")
        try:
            candidate = str(resources.files(package).joinpath(relative))
        except ModuleNotFoundError:
            raise FileNotFoundError(f"interaction_config_path {path!r}: package {package!r} is not installed") from None
        if os.path.isfile(candidate):
            return candidate
        raise FileNotFoundError(f"interaction_config_path {path!r}: {candidate} does not exist")
    path = os.path.expanduser(path)
    if os.path.isabs(path):
        if os.path.isfile(path):
            return path
        raise FileNotFoundError(f"interaction_config_path {path!r} does not exist")
    if agent_loop_config_path:
        try:
            agent_yaml = resolve_config_path(agent_loop_config_path)
            candidate = os.path.join(os.path.dirname(os.path.abspath(agent_yaml)), path)
            tried.append(candidate)
            if os.path.isfile(candidate):
                return candidate
        except FileNotFoundError:
            pass
    candidate = os.path.abspath(path)
    tried.append(candidate)
    if os.path.isfile(candidate):
        return candidate
    raise FileNotFoundError(f"interaction_config_path {path!r} not found; tried {tried}")


def load_interactions_cached(config_path: str, simulator: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Interactions (name -> ``BaseInteraction``) of an interaction YAML, loaded once per process and settings.

    Args:
        config_path: a resolved, absolute path (see :func:`resolve_interaction_config_path`).
        simulator: ``actor_rollout_ref.rollout.custom.user_simulator``: settings merged over the ``config`` of
            every entry of the file (keys of :class:`~collabllm_verl.recipe.core.settings.SimulatorSettings`).

    Raises:
        Whatever :func:`collabllm_verl.interactions.loader.load_interactions` raises for a bad file or setting.
    """
    simulator = dict(simulator or {})
    cache_key = (config_path, json.dumps(simulator, sort_keys=True, default=str))
    interactions = _INTERACTIONS_BY_PATH.get(cache_key)
    if interactions is None:
        from collabllm_verl.interactions.loader import load_interactions

        interactions = dict(load_interactions(config_path, config_overrides=simulator))
        _INTERACTIONS_BY_PATH[cache_key] = interactions
    return interactions


def _stop_reason(output: TokenOutput) -> str | None:
    reason = output.stop_reason
    if isinstance(reason, Mapping):  # SGLang reports {"type": "length", ...}
        reason = reason.get("type")
    return reason


class _PolicyChat:
    """The policy's side of one future conversation, kept as a Continuous Token stream.

    Starts from the trained sequence's tokens (prompt + response); user messages are merged with verl's
    Continuous Token builder (the tokenization ``ToolAgentLoop`` uses for appended turns) and replies are
    generated with ``server_manager.generate`` under one request id (sticky session, prefix-cache friendly).
    ``prompt_length`` is the number of prompt tokens at the start of ``token_ids``; everything after them
    counts against the future-token budget. Implements
    :class:`collabllm_verl.recipe.core.forward_sampling.PolicyChat`.
    """

    def __init__(
        self,
        agent: CollabLLMAgentLoop,
        messages: list[dict],
        token_ids: list[int],
        sampling_params: dict,
        *,
        prompt_length: int,
    ):
        self._agent = agent
        self._messages = list(messages)
        self._token_ids = list(token_ids)
        self._prompt_length = int(prompt_length)
        self._sampling_params = sampling_params
        self._request_id = uuid4().hex
        self._last_reply_truncated = False

    @property
    def tokens_after_prompt(self) -> int:
        return len(self._token_ids) - self._prompt_length

    @property
    def last_reply_truncated(self) -> bool:
        return self._last_reply_truncated

    async def add_user_message(self, content: str) -> None:
        previous = list(self._messages)
        self._messages.append({"role": "user", "content": content})
        builder = self._agent.continuous_token_builder
        merged = await self._agent.loop.run_in_executor(
            None, lambda: builder.merge_context_tokens(previous, self._messages, self._token_ids)
        )
        self._token_ids = merged.token_ids

    async def reply(self, max_new_tokens: int | None = None) -> str | None:
        room = self._agent.context_window - len(self._token_ids)
        if room < 1:
            return None
        params = dict(self._sampling_params)
        params["max_tokens"] = min(int(params.get("max_tokens") or self._agent.response_length), room)
        if max_new_tokens is not None:
            params["max_tokens"] = min(params["max_tokens"], int(max_new_tokens))
        output: TokenOutput = await self._agent.server_manager.generate(
            request_id=self._request_id, prompt_ids=self._token_ids, sampling_params=params
        )
        self._token_ids = self._token_ids + list(output.token_ids)
        cut = self._agent.ends_without_stop_token(output.token_ids)
        self._last_reply_truncated = (
            max_new_tokens is not None and cut and len(output.token_ids) >= int(max_new_tokens)
        )
        eos = self._agent.tokenizer.eos_token_id
        if eos is not None and cut:
            # a reply cut at its token budget: close the turn so the next user turn is rendered after it
            self._token_ids.append(eos)
        text = self._agent.decode(output.token_ids)
        self._messages.append({"role": "assistant", "content": text})
        return text


def _future_token_budget(rollout_config: Any, response_length: int) -> int:
    """``actor_rollout_ref.rollout.custom.future_token_budget``, or ``response_length`` when unset.

    Raises:
        ValueError: the value is not an integer >= 1.
    """
    custom = rollout_config.get("custom") or {}
    value = custom.get("future_token_budget") if isinstance(custom, Mapping) else None
    if value is None:
        return int(response_length)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            "actor_rollout_ref.rollout.custom.future_token_budget (tokens after the prompt in one future "
            f"conversation) must be an integer >= 1, got {value!r}"
        )
    return value


@functools.lru_cache(maxsize=8)
def _generation_eos_ids(model_path: str) -> tuple[int, ...]:
    """The end-of-sequence ids of ``model_path``'s ``generation_config.json`` (empty when it has none)."""
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
    except (OSError, ValueError):
        return ()
    if eos is None:
        return ()
    return (int(eos),) if isinstance(eos, int) else tuple(int(e) for e in eos)


def request_logit_bias(
    rollout_config: Any, tokenizer: Any, model_path: str | None, *, prefix: str = ""
) -> dict[int, float] | None:
    """``actor_rollout_ref.rollout.custom.{logit_bias,eos_logit_bias}`` as vLLM's ``logit_bias`` sampling
    parameter (``{token_id: bias}``, logit units), sent with every request of the loop; empty when unset.

    With ``prefix="future_"`` it reads ``custom.{future_logit_bias,future_eos_logit_bias}``: the bias of
    forward-sampled replies only, sent with each of them (``{}`` included) in place of the trained
    response's bias and of the ``hf`` server's own; None when neither key is set (futures then sample as the
    trained response does). An exploration bias on the trained response (the CPU preset's question bias)
    thus need not reach the futures that score it: there the policy answers with its own distribution.

    The vLLM CPU preset (``config/collabllm_rl_cpu_vllm.yaml``) points the unprefixed keys at the ``hf``
    backend's ``engine_kwargs.hf`` biases, so an untrained tiny model ends its turns under both backends. The
    end-of-sequence ids are the tokenizer's plus the model's ``generation_config.json`` ones (as the ``hf``
    server biases them).

    Raises:
        ValueError: see :func:`~collabllm_verl.recipe.core.logit_bias.resolve_logit_bias`.
    """
    custom = to_plain(rollout_config.get("custom")) or {}
    values = [custom.get(f"{prefix}logit_bias"), custom.get(f"{prefix}eos_logit_bias")]
    if prefix and all(value is None for value in values):
        return None
    if not any(values):
        return {}
    eos = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    eos.update(_generation_eos_ids(model_path) if model_path else ())
    return resolve_logit_bias(
        custom,
        sorted(eos),
        vocab_size=len(tokenizer),
        tokenizer=tokenizer,
        setting="actor_rollout_ref.rollout.custom",
        prefix=prefix,
    )


async def _report_agent_failure(row: Mapping[str, Any], exc: BaseException) -> None:
    """Send the step ledger a report of a response whose agent loop raised ``exc`` (never raises itself)."""
    extra_info = to_plain(row.get("extra_info")) or {}
    report = ResponseReport(
        uid=str(row["uid"]) if row.get("uid") is not None else None,
        data_source=str(row.get("data_source")) if row.get("data_source") is not None else None,
        agent_error=f"{type(exc).__name__}: {exc}"[:2000],
        context={"row_index": extra_info.get("index", row.get("index"))},
    )
    try:
        await _LEDGER.report(report)
    except Exception:  # the original error is what matters; say that this one was lost
        logger.exception("collabllm agent loop: could not report a failure to the step ledger")


def _simulator_report(interaction: Any, conversations: list, usage: Usage) -> dict[str, Any]:
    """The user simulator's part of the payload: its usage for this response (``simulator_usage``), its
    model and endpoint (``simulator``, no key) and the last failure (``simulator_error``), read by the
    reward manager's failure accounting (docs/metrics_and_reward.md, "Failures")."""
    settings = getattr(interaction, "llm", None)
    errors = [c.error for c in conversations if c.error]
    return {
        "simulator_usage": usage.as_dict(*Usage.COLUMNS),
        "simulator": settings.describe() if hasattr(settings, "describe") else type(interaction).__name__,
        "simulator_error": errors[-1] if errors else None,
    }


@dataclass
class _Row:
    """The dataset-row fields the loop reads, as plain Python."""

    messages: list[dict]  # raw_prompt
    history: list[dict[str, str]]  # raw_prompt without system messages (forward_sampling.visible_history)
    interaction: Any  # the user simulator named by interaction_kwargs
    interaction_kwargs: dict[str, Any]


@dataclass
class _TrainedResponse:
    """The trained response: verl's generation output and the trained tokens."""

    output: TokenOutput
    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]
    response_logprobs: list[float] | None
    text: str  # the decoded response (special tokens removed, reasoning kept)


def _register_unless_configured(cls: type[AgentLoopBase]) -> type[AgentLoopBase]:
    """verl's ``@register(AGENT_NAME)``, unless an agent-loop YAML has already defined ``AGENT_NAME``.

    The YAML entry carries constructor arguments (``interaction_config_path``); a plain registration has
    none. When this module is first imported by hydra while instantiating the YAML entry (no
    ``VERL_USE_EXTERNAL_MODULES`` import beforehand), an unconditional ``@register`` would replace the YAML
    entry and later samples would silently use the default interaction config.
    """
    if AGENT_NAME in _agent_loop_registry:
        return cls
    return register(AGENT_NAME)(cls)


@_register_unless_configured
class CollabLLMAgentLoop(AgentLoopBase):
    """verl agent loop that generates the trained response, then samples future conversations.

    Constructor arguments beyond verl's (given as keys of the ``config/agent.yaml`` entry):

    Args:
        interaction_config_path: the interaction YAML (user simulator); ``pkg://package/file``, absolute, or
            relative to the agent-loop YAML's directory (see :func:`resolve_interaction_config_path`).
            Default: the packaged ``config/collabllm_interaction_config.yaml``.
        future_sampling_params: overrides of the policy's sampling parameters for future turns (e.g.
            ``{temperature: 0.7, max_tokens: 256}``); default: the trained response's sampling parameters
            without log-probs, ``max_tokens = rollout.response_length`` capped by the context window and by
            the future-token budget left.

    Read from the trainer config (``actor_rollout_ref.rollout``): ``multi_turn.num_repeat_rollouts`` (S >= 1),
    ``multi_turn.max_user_turns``, ``multi_turn.max_assistant_turns`` (see
    :class:`collabllm_verl.recipe.core.forward_sampling.TurnLimits`), ``prompt_length``, ``response_length``,
    ``max_model_len``, and ``custom.future_token_budget``: tokens allowed after the prompt in each future
    conversation (trained response, user turns and replies together, policy tokenization); default
    ``response_length``, as the verl recipe (docs/design.md §1); ``custom.logit_bias`` and
    ``custom.eos_logit_bias``: fixed biases sent with every request as vLLM's ``logit_bias`` sampling
    parameter (:func:`request_logit_bias`; unset by default); ``custom.future_logit_bias`` and
    ``custom.future_eos_logit_bias``: the bias of forward-sampled replies instead (unset by default: the
    same as the trained response's).

    Raises:
        ValueError: missing/invalid ``num_repeat_rollouts``, turn limits, ``future_token_budget`` or logit
            biases.
        FileNotFoundError: the interaction YAML cannot be found.
    """

    def __init__(
        self,
        *args,
        interaction_config_path: str = DEFAULT_INTERACTION_CONFIG,
        future_sampling_params: Mapping[str, Any] | None = None,
        **kwargs,
    ):
        kwargs.pop("tools", None)  # verl passes its tool list to every loop; this one uses none
        super().__init__(*args, **kwargs)
        multi_turn = self.rollout_config.multi_turn
        self.num_repeat_rollouts = multi_turn.get("num_repeat_rollouts")
        if self.num_repeat_rollouts is None or int(self.num_repeat_rollouts) < 1:
            raise ValueError(
                "actor_rollout_ref.rollout.multi_turn.num_repeat_rollouts (S, future conversations per "
                f"response) must be an integer >= 1 for {AGENT_NAME}, got {self.num_repeat_rollouts!r}"
            )
        self.num_repeat_rollouts = int(self.num_repeat_rollouts)
        self.turn_limits = TurnLimits(
            max_user_turns=multi_turn.get("max_user_turns"),
            max_assistant_turns=multi_turn.get("max_assistant_turns"),
        )
        self.prompt_length = int(self.rollout_config.prompt_length)
        self.response_length = int(self.rollout_config.response_length)
        self.context_window = int(
            self.rollout_config.get("max_model_len") or (self.prompt_length + self.response_length)
        )
        self.future_token_budget = _future_token_budget(self.rollout_config, self.response_length)
        self.future_sampling_params = dict(to_plain(future_sampling_params) or {})
        self._special_ids = frozenset(self.tokenizer.all_special_ids)
        model_path = self.config.actor_rollout_ref.model.get("path")
        self.logit_bias = request_logit_bias(self.rollout_config, self.tokenizer, model_path)
        self.future_logit_bias = request_logit_bias(
            self.rollout_config, self.tokenizer, model_path, prefix="future_"
        )
        config_path = resolve_interaction_config_path(
            interaction_config_path, self.rollout_config.agent.get("agent_loop_config_path")
        )
        custom = to_plain(self.rollout_config.get("custom")) or {}
        self.interactions = load_interactions_cached(config_path, custom.get("user_simulator"))
        if not self.interactions:
            raise ValueError(f"interaction config {config_path} defines no interaction")

    # ------------------------------------------------------------------------------------------------
    # helpers
    # ------------------------------------------------------------------------------------------------
    def decode(self, token_ids: list[int]) -> str:
        """Decode generated tokens to message text (special tokens removed, reasoning kept)."""
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def _select_interaction(self, interaction_kwargs: Mapping[str, Any], row_index: Any) -> Any:
        name = interaction_kwargs.get("name")
        if name is None:
            if len(self.interactions) == 1:
                return next(iter(self.interactions.values()))
            raise ValueError(
                f"row {row_index}: extra_info.interaction_kwargs has no 'name' and the interaction config "
                f"defines several ({sorted(self.interactions)})"
            )
        if name not in self.interactions:
            raise ValueError(
                f"row {row_index}: extra_info.interaction_kwargs.name={name!r} is not in the interaction "
                f"config (known: {sorted(self.interactions)})"
            )
        return self.interactions[name]

    def ends_without_stop_token(self, token_ids: list[int]) -> bool:
        """True when generated ``token_ids`` are non-empty and do not end with a special (stop) token."""
        return bool(token_ids) and token_ids[-1] not in self._special_ids

    def _is_truncated(self, output: TokenOutput, budget: int) -> bool:
        if _stop_reason(output) == "length":
            return True
        return len(output.token_ids) >= budget and self.ends_without_stop_token(output.token_ids)

    async def _generation_prompt_opens_reasoning(self, messages: list[dict]) -> bool:
        """True when the chat template's generation prompt ends inside an open ``<think>`` block."""
        builder = self.continuous_token_builder
        delta = await self.loop.run_in_executor(
            None, lambda: builder.render_delta_token_id(messages, [], add_generation_prompt=True)
        )
        text = self.tokenizer.decode(delta, skip_special_tokens=False)
        return text.rfind(REASONING_OPEN) > text.rfind(REASONING_CLOSE)

    def _future_sampling_params(self, sampling_params: Mapping[str, Any]) -> dict[str, Any]:
        params = dict(sampling_params)
        params["logprobs"] = False
        if self.future_logit_bias is not None:
            params["logit_bias"] = dict(self.future_logit_bias)
        params.update(self.future_sampling_params)
        return params

    # ------------------------------------------------------------------------------------------------
    # verl entry point
    # ------------------------------------------------------------------------------------------------
    @rollout_trace_op
    async def run(self, sampling_params: dict[str, Any], priority: int = 0, **kwargs) -> AgentLoopOutput:
        """Generate the trained response to ``raw_prompt`` and forward-sample its future conversations.

        Args:
            sampling_params: verl's per-sample sampling parameters (temperature, top_p, top_k, logprobs, ...).
            priority: verl's request priority (vLLM scheduling).
            **kwargs: the dataset row: ``raw_prompt`` (list of messages), ``extra_info`` (with
                ``interaction_kwargs``: ``name``, ``single_turn_prompt``, ``task_desc``, ...), ``index``, ...

        Returns:
            ``AgentLoopOutput`` with the trained tokens and ``extra_fields``: the server's
            ``TokenOutput.extra_fields`` (``min_global_steps``/``max_global_steps``), ``turn_scores`` and
            ``tool_rewards`` (empty, for schema consistency with verl's loops) and ``collabllm`` (the
            forward-sampling payload, see ``docs/architecture.md``).

        Raises:
            ValueError: the row names an interaction the interaction config does not define.
            Exception: whatever the rollout server or the forward sampling raised; first reported to the step
                ledger (:class:`~collabllm_verl.recipe.verl_adapters.step_summary.ResponseReport` with
                ``agent_error``), where the driver counts it against the failure budget: verl itself only logs
                it in the worker and drops the sample from its group.
        """
        try:
            row = self._read_row(kwargs)
            metrics: dict[str, Any] = {}
            if self.logit_bias:
                sampling_params = {**sampling_params, "logit_bias": dict(self.logit_bias)}
            trained = await self._generate_trained_response(
                row.messages, sampling_params, int(priority), metrics
            )
            payload = await self._forward_sample(row, trained, sampling_params, metrics)
            return self._output(trained, payload, metrics)
        except Exception as exc:  # reported to the driver's failure budget, then re-raised
            await _report_agent_failure(kwargs, exc)
            raise

    def _read_row(self, row: Mapping[str, Any]) -> _Row:
        """The row fields the loop reads, as plain Python (verl hands over numpy arrays and OmegaConf)."""
        messages = [dict(m) for m in to_plain(row["raw_prompt"])]
        extra_info = to_plain(row.get("extra_info")) or {}
        interaction_kwargs = extra_info.get("interaction_kwargs") or {}
        row_index = extra_info.get("index", row.get("index"))
        return _Row(
            messages=messages,
            history=visible_history(messages),
            interaction=self._select_interaction(interaction_kwargs, row_index),
            interaction_kwargs=interaction_kwargs,
        )

    async def _generate_trained_response(
        self, messages: list[dict], sampling_params: dict[str, Any], priority: int, metrics: dict[str, Any]
    ) -> _TrainedResponse:
        """Step 1: the policy answers ``messages``; its tokens are the trained ones. Adds the generation time
        (``generate_sequences``) and ``num_preempted`` to ``metrics``."""
        prompt_ids = await self.ct_build_initial_tokens(messages)
        request_id = f"det-{priority}" if self.rollout_config.get("full_determinism", False) else uuid4().hex
        with simple_timer("generate_sequences", metrics):
            output: TokenOutput = await self.server_manager.generate(
                request_id=request_id, prompt_ids=prompt_ids, sampling_params=sampling_params, priority=priority
            )
        metrics["num_preempted"] = output.num_preempted if output.num_preempted is not None else -1
        merge_result, response_mask, response_logprobs = await self.ct_merge_assistant_token(
            prompt_ids,
            output.token_ids,
            [],
            [] if output.log_probs else None,
            assistant_logprobs=output.log_probs if output.log_probs else None,
        )
        return _TrainedResponse(
            output=output,
            prompt_ids=merge_result.token_ids[: len(merge_result.token_ids) - len(response_mask)],
            response_ids=merge_result.token_ids[-len(response_mask) :] if response_mask else [],
            response_mask=response_mask,
            response_logprobs=response_logprobs,
            text=self.decode(output.token_ids),
        )

    async def _skip_reason(
        self, messages: list[dict], trained: _TrainedResponse, sampling_params: Mapping[str, Any]
    ) -> str | None:
        """Why the trained response is unusable for forward sampling (truncated, empty, malformed
        reasoning; :func:`unusable_response_reason`), or None."""
        budget = int(sampling_params.get("max_tokens") or self.response_length)
        truncated = self._is_truncated(trained.output, min(budget, self.response_length))
        opened = False
        if REASONING_CLOSE in trained.text and not truncated:
            opened = await self._generation_prompt_opens_reasoning(messages)
        return unusable_response_reason(trained.text, truncated=truncated, opened_in_prompt=opened)

    async def _forward_sample(
        self, row: _Row, trained: _TrainedResponse, sampling_params: Mapping[str, Any], metrics: dict[str, Any]
    ) -> dict[str, Any]:
        """Step 2: the ``extra_fields["collabllm"]`` payload: the future conversations with their counters
        and the simulator's usage, or the skip. Sets ``metrics["tool_calls"]`` to the forward-sampling wall
        time (verl logs it as ``agent_loop/tool_calls/{min,max,mean}``)."""
        skip_reason = await self._skip_reason(row.messages, trained, sampling_params)
        if skip_reason is not None:
            return skipped_forward_sampling(skip_reason, num_history_messages=len(row.history)).as_dict()
        start = time.perf_counter()
        future_params = self._future_sampling_params(sampling_params)
        with usage_scope() as simulator_usage:  # only the simulator's calls go through the LLM layer
            conversations = await asyncio.gather(
                *[
                    sample_future_conversation(
                        history=row.history,
                        response=trained.text,
                        policy=self._policy_chat(row, trained, future_params),
                        interaction=row.interaction,
                        interaction_kwargs=row.interaction_kwargs,
                        limits=self.turn_limits,
                        token_budget=self.future_token_budget,
                    )
                    for _ in range(self.num_repeat_rollouts)
                ]
            )
        seconds = time.perf_counter() - start
        metrics["tool_calls"] = seconds
        summary = summarize_forward_sampling(conversations, num_history_messages=len(row.history), seconds=seconds)
        return {**summary.as_dict(), **_simulator_report(row.interaction, conversations, simulator_usage)}

    def _policy_chat(self, row: _Row, trained: _TrainedResponse, sampling_params: dict[str, Any]) -> _PolicyChat:
        """The policy's side of one future conversation, continuing the trained sequence's tokens."""
        return _PolicyChat(
            self,
            [*row.messages, {"role": "assistant", "content": trained.text}],
            trained.prompt_ids + trained.response_ids,
            sampling_params,
            prompt_length=len(trained.prompt_ids),
        )

    def _output(self, trained: _TrainedResponse, payload: dict[str, Any], metrics: dict[str, Any]) -> AgentLoopOutput:
        """Step 3: verl's output: the trained tokens (cut to ``response_length``) and the payload."""
        extra_fields = dict(trained.output.extra_fields)
        extra_fields.update({"turn_scores": [], "tool_rewards": [], "collabllm": payload})
        length = self.response_length
        routed = trained.output.routed_experts
        return AgentLoopOutput(
            prompt_ids=trained.prompt_ids,
            response_ids=trained.response_ids[:length],
            response_mask=trained.response_mask[:length],
            response_logprobs=trained.response_logprobs[:length] if trained.response_logprobs else None,
            routed_experts=routed[: len(trained.prompt_ids) + length] if routed is not None else None,
            num_turns=2,
            metrics=metrics,
            extra_fields=extra_fields,
        )
