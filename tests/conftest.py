"""Shared fixtures: a local OpenAI-compatible server (offline stand-ins) for every LLM call in tests."""

from __future__ import annotations

import os

# litellm downloads its price map at import unless told otherwise (no internet in CI); set before import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import pytest  # noqa: E402

from collabllm_verl.recipe.local_llm_server import LocalLLMServer  # noqa: E402


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
