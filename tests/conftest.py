"""Shared fixtures: a local OpenAI-compatible server (offline stand-ins) for every LLM call in tests."""

from __future__ import annotations

import fcntl
import os
from typing import TYPE_CHECKING

# litellm downloads its price map at import unless told otherwise (no internet in CI); set before import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import pytest

from collabllm_verl.recipe.offline.server import LocalLLMServer

if TYPE_CHECKING:
    from collabllm_verl.recipe.core.llm_client import LLMSettings


# the two longest files (their training runs took about 600 s each of one worker in a two-worker run)
LONGEST_FIRST = ("test_rl_cpu_outages.py", "test_ask_when_needed_bench.py")
_MODULE_MARKS = pytest.StashKey[dict]()  # test module -> names of the markers of its tests


def pytest_collection_modifyitems(session, config, items):
    """Order the files for ``-n 2`` (pyproject: ``--dist loadfile --no-loadscope-reorder``): the longest
    first, the other files with ``slow`` tests next, those with ``timing`` tests last, the rest in between
    (stable otherwise). The long training runs start at once, the light files fill the other worker's time,
    and a timing file rarely waits for a training run (``_cpu_share``, which reads the marks kept here)."""
    marks: dict[object, set[str]] = {}
    for item in items:
        marks.setdefault(item.module, set()).update(mark.name for mark in item.iter_markers())
    config.stash[_MODULE_MARKS] = marks

    def rank(item) -> int:
        names, name = marks[item.module], item.path.name
        if "timing" in names:
            return 3
        if name in LONGEST_FIRST:
            return LONGEST_FIRST.index(name) - len(LONGEST_FIRST)
        return 0 if "slow" in names else 1

    items.sort(key=rank)


@pytest.fixture(scope="module", autouse=True)
def _cpu_share(request, tmp_path_factory):
    """Keep timing-sensitive tests off a CPU saturated by a training run in another pytest-xdist worker.

    A module with a test marked ``timing`` holds an exclusive ``flock`` on a file in the session's shared
    temporary folder while it runs; a module with a ``slow`` test (a CPU training run) holds a shared one, so
    training runs overlap each other and the light tests, never a timing module. A second lock, the gate,
    gives the timing module precedence: it holds the gate while it waits, and a slow module passes the gate
    before it takes its shared lock, so the wait is at most one slow module. Module-scoped and autouse, so
    the lock is held before the module's own fixtures start their runs. Without xdist it is free at once."""
    markers = request.config.stash.get(_MODULE_MARKS, {}).get(request.module, set())
    exclusive = "timing" in markers
    if not exclusive and "slow" not in markers:
        yield
        return
    root = tmp_path_factory.getbasetemp()
    shared = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    with open(shared / "cpu_share.gate", "a") as gate, open(shared / "cpu_share.lock", "a") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        if not exclusive:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            fcntl.flock(gate, fcntl.LOCK_UN)


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
