"""Shared fixtures: a local OpenAI-compatible server (offline stand-ins) for every LLM call in tests."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

# litellm downloads its price map at import unless told otherwise (no internet in CI); set before import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import pytest

from collabllm_verl.recipe.offline.server import LocalLLMServer

if TYPE_CHECKING:
    from collabllm_verl.recipe.core.llm_client import LLMSettings


@pytest.fixture(scope="session")
def _llm_server_session():
    with LocalLLMServer() as server:
        yield server


@pytest.fixture
def llm_server(_llm_server_session: LocalLLMServer) -> LocalLLMServer:
    """A running :class:`LocalLLMServer` on 127.0.0.1 (shared by the session), reset before and after
    each test: no latency, no faults, empty request log and counters. Use ``llm_server.base_url`` as
    litellm's ``api_base`` with ``api_key="local"`` and a model such as ``openai/scripted-user``."""
    _llm_server_session.reset()
    yield _llm_server_session
    _llm_server_session.reset()


@pytest.fixture
def user_simulator_config(llm_server: LocalLLMServer) -> dict:
    """Config of a CollabLLMInteraction whose simulator is the scripted user of ``llm_server``
    (fast retries so fault tests stay quick)."""
    return {
        "name": "collabllm",
        "user_model": "openai/scripted-user",
        "api_base": llm_server.base_url,
        "api_key": "local",
        "timeout": 5.0,
        "num_retries": 2,
        "backoff_initial": 0.01,
        "backoff_max": 0.2,
    }


@pytest.fixture
def judge(llm_server: LocalLLMServer) -> LLMSettings:
    """LLM settings of a judge served by the ``scripted-judge`` responder of ``llm_server`` (temperature 0,
    one retry with millisecond back-off so that fault tests stay quick)."""
    from collabllm_verl.recipe.core.llm_client import LLMSettings  # litellm loads in seconds: only when used

    return LLMSettings(
        model="openai/scripted-judge",
        completion_kwargs={"api_base": llm_server.base_url, "api_key": "local", "temperature": 0},
        num_retries=1,
        backoff_initial=0.01,
        backoff_max=0.05,
    )
