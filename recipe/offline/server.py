"""A local OpenAI-compatible chat server on 127.0.0.1 for tests, benchmarks and the CPU quick start.

It answers ``POST /v1/chat/completions`` (non-streaming) with scripted, deterministic responders chosen by
the request's ``model`` field (a provider prefix such as ``openai/`` or ``hosted_vllm/`` is ignored):

* ``scripted-user`` - offline stand-in for the user simulator (:mod:`collabllm_verl.recipe.offline.scripted_user`);
* ``scripted-judge`` - offline stand-in judges, registered by the optional module
  ``collabllm_verl.recipe.offline.scripted_judges`` when it is installed;
* ``scripted-assistant`` - offline stand-in assistant (candidate replies, a scripted policy), registered by
  the optional module ``collabllm_verl.recipe.offline.scripted_assistant``;
* ``scripted-ambiguity-user`` - offline stand-in user for the ambiguity-controlled family
  (:mod:`collabllm_verl.recipe.offline.scripted_ambiguity_user`; rows from ``--ambiguity-rows``);
* ``echo`` - returns the content of the last message (for tests of the LLM-call layer).

None of them is a language model: results obtained with them say nothing about model quality, and their
log lines say so. Other responders can be added with :func:`register_responder` (a process-wide registry:
every ``LocalLLMServer`` serves every registered name). A real checkpoint is not served here but by
:func:`collabllm_verl.recipe.serving.hf_chat.serve_checkpoint`, on a server of its own that lists and
answers that model only.

Fault injection (for testing retries and failure handling): a fixed added latency, a queue of faults
served to the next requests (:meth:`LocalLLMServer.inject`), and/or a random fault rate. Fault modes:

==================  ==============================================================================
``rate_limit``      HTTP 429 with ``Retry-After`` (whole seconds, rounded up) and ``retry-after-ms``
``server_error``    HTTP 500 with an OpenAI-style error body
``bad_body``        HTTP 200 whose body is truncated, invalid JSON
``malformed_json``  HTTP 200; the message content is prose, not JSON
``truncated_json``  HTTP 200; the content is the responder's answer cut after 25 characters
``missing_keys``    HTTP 200; the content is a JSON object without the expected keys
``empty``           HTTP 200; the content is the empty string
``hang``            the server waits ``hang_s`` seconds (default 3600) before answering
==================  ==============================================================================

Use from Python::

    with LocalLLMServer(latency_ms=50) as server:
        litellm.completion(model="openai/scripted-user", api_base=server.base_url, api_key="local", ...)

or from a shell (foreground; prints ``LOCAL_LLM_SERVER_URL=...`` when ready)::

    python -m collabllm_verl.recipe.offline.server --port 8011 --latency-ms 50 --ready-file /tmp/url
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib
import inspect
import json
import logging
import math
import os
import random
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from collabllm_verl.recipe.serving.http_thread import ThreadedHTTPServer
from collabllm_verl.recipe.serving.http_thread import error_body as _error_body

__all__ = ["FAULT_MODES", "LocalLLMServer", "main", "register_responder", "registered_responders"]

logger = logging.getLogger(__name__)

FAULT_MODES = (
    "rate_limit",
    "server_error",
    "bad_body",
    "malformed_json",
    "truncated_json",
    "missing_keys",
    "empty",
    "hang",
)
_OPTIONAL_RESPONDER_MODULES = (
    "collabllm_verl.recipe.offline.scripted_judges",
    "collabllm_verl.recipe.offline.scripted_assistant",
    "collabllm_verl.recipe.offline.scripted_ambiguity_user",
)

Responder = Callable[[list, dict], Any]
_RESPONDERS: dict[str, Responder] = {}
_RESPONDERS_LOCK = threading.Lock()


def register_responder(name: str, fn: Responder) -> None:
    """Route requests whose model is ``name`` (after stripping a ``provider/`` prefix) to ``fn``.

    ``fn(messages: list[dict], request: dict) -> str`` returns the assistant message content; it may also
    be an ``async`` function. ``request`` is the full JSON body (extra litellm ``extra_body`` fields are
    at its top level). A ``ValueError`` raised by ``fn`` becomes HTTP 400, any other exception HTTP 500.
    Registering a name again replaces the previous responder.
    """
    if not name or "/" in name:
        raise ValueError(f"responder name must be non-empty and contain no '/', got {name!r}")
    if not callable(fn):
        raise TypeError(f"responder {name!r} must be callable")
    with _RESPONDERS_LOCK:
        _RESPONDERS[name] = fn


def registered_responders() -> list[str]:
    """Names of the registered responders (after the built-in ones are loaded)."""
    _load_builtin_responders()
    with _RESPONDERS_LOCK:
        return sorted(_RESPONDERS)


def _echo_responder(messages: list, request: dict) -> str:
    content = messages[-1].get("content") if messages else ""
    return content if isinstance(content, str) else json.dumps(content)


_builtins_loaded = False


def _load_builtin_responders() -> None:
    """Register ``echo`` and ``scripted-user``; import the optional scripted judges and assistant when installed."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    from collabllm_verl.recipe.offline.scripted_user import scripted_user_responder

    with _RESPONDERS_LOCK:
        _RESPONDERS.setdefault("echo", _echo_responder)
        _RESPONDERS.setdefault("scripted-user", scripted_user_responder)
    for module in _OPTIONAL_RESPONDER_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # the module exists but one of its imports is missing: a real error
                raise
            logger.info("optional responder module %s is not installed", module)
    _builtins_loaded = True


def _count_tokens(text: str) -> int:
    """Approximate token count (words and punctuation marks) reported in ``usage``."""
    return len(re.findall(r"\w+|[^\w\s]", text))


class LocalLLMServer:
    """OpenAI-compatible HTTP server running uvicorn in a background thread of this process
    (:class:`~collabllm_verl.recipe.serving.http_thread.ThreadedHTTPServer`).

    Args:
        host: interface to bind; keep the default ``127.0.0.1`` (the server has no authentication).
        port: TCP port; 0 picks a free one. The bound port is :attr:`port`.
        latency_ms: milliseconds added before every answer (>= 0).
        faults: fault modes (see :data:`FAULT_MODES`) served, in order, to the next requests.
        fault_rate: probability in [0, 1] that a request (with no queued fault) gets a random fault from
            ``fault_modes``.
        fault_modes: modes drawn when ``fault_rate`` > 0 (default: all but ``hang``).
        retry_after_s: delay announced by ``rate_limit`` faults, in seconds (>= 0).
        hang_s: how long a ``hang`` fault waits before answering, in seconds.
        seed: seed of the random fault draws.

    The server is started by :meth:`start` or ``with``; :attr:`base_url` is ``http://127.0.0.1:PORT/v1``.
    Settings can be changed while it runs with :meth:`configure`, :meth:`inject` and :meth:`reset`.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: float = 0.0,
        faults: Iterable[str] = (),
        fault_rate: float = 0.0,
        fault_modes: Iterable[str] | None = None,
        retry_after_s: float = 1.0,
        hang_s: float = 3600.0,
        seed: int = 0,
    ) -> None:
        self.host = host
        self._requested_port = int(port)
        self._lock = threading.Lock()
        self._faults: collections.deque[str] = collections.deque()
        self._rng = random.Random(seed)
        self.latency_ms = 0.0
        self.fault_rate = 0.0
        self.fault_modes: tuple[str, ...] = tuple(m for m in FAULT_MODES if m != "hang")
        self.retry_after_s = 1.0
        self.hang_s = 3600.0
        self.configure(
            latency_ms=latency_ms,
            fault_rate=fault_rate,
            fault_modes=fault_modes,
            retry_after_s=retry_after_s,
            hang_s=hang_s,
        )
        self.inject(*faults)
        self.received: collections.deque[dict] = collections.deque(maxlen=5000)
        self._counts: collections.Counter[str] = collections.Counter()
        self._in_flight = 0
        self._http: ThreadedHTTPServer | None = None
        self.port: int | None = None

    # ---------------------------------------------------------------- configuration
    def configure(
        self,
        *,
        latency_ms: float | None = None,
        fault_rate: float | None = None,
        fault_modes: Iterable[str] | None = None,
        retry_after_s: float | None = None,
        hang_s: float | None = None,
    ) -> None:
        """Change settings at runtime; arguments left as None keep their value. Raises ValueError."""
        if latency_ms is not None:
            if latency_ms < 0:
                raise ValueError(f"latency_ms must be >= 0, got {latency_ms}")
            self.latency_ms = float(latency_ms)
        if fault_rate is not None:
            if not 0.0 <= fault_rate <= 1.0:
                raise ValueError(f"fault_rate must be in [0, 1], got {fault_rate}")
            self.fault_rate = float(fault_rate)
        if fault_modes is not None:
            modes = tuple(fault_modes)
            self._check_modes(modes)
            if not modes:
                raise ValueError("fault_modes must not be empty")
            self.fault_modes = modes
        if retry_after_s is not None:
            if retry_after_s < 0:
                raise ValueError(f"retry_after_s must be >= 0, got {retry_after_s}")
            self.retry_after_s = float(retry_after_s)
        if hang_s is not None:
            if hang_s < 0:
                raise ValueError(f"hang_s must be >= 0, got {hang_s}")
            self.hang_s = float(hang_s)

    @staticmethod
    def _check_modes(modes: Iterable[str]) -> None:
        unknown = [m for m in modes if m not in FAULT_MODES]
        if unknown:
            raise ValueError(f"unknown fault mode(s) {unknown}; known: {list(FAULT_MODES)}")

    def inject(self, *modes: str) -> None:
        """Queue faults: the next ``len(modes)`` requests get these faults, in order."""
        self._check_modes(modes)
        with self._lock:
            self._faults.extend(modes)

    def reset(self) -> None:
        """Clear queued faults, latency, fault rate, received requests and counters."""
        with self._lock:
            self._faults.clear()
            self._counts.clear()
        self.received.clear()
        self.latency_ms = 0.0
        self.fault_rate = 0.0
        self.retry_after_s = 1.0
        self.hang_s = 3600.0

    def stats(self) -> dict[str, int]:
        """Counters since start/reset: ``requests``, ``model:<name>``, ``fault:<mode>`` and
        ``max_in_flight`` (most requests handled at the same time)."""
        with self._lock:
            return dict(self._counts)

    def _next_fault(self) -> str | None:
        with self._lock:
            if self._faults:
                return self._faults.popleft()
            if self.fault_rate > 0 and self._rng.random() < self.fault_rate:
                return self._rng.choice(self.fault_modes)
        return None

    # ---------------------------------------------------------------- lifecycle
    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``, the ``api_base`` for litellm. Raises RuntimeError before start."""
        if self.port is None:
            raise RuntimeError("LocalLLMServer is not started")
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout_s: float = 30.0) -> LocalLLMServer:
        """Bind the port and start serving in a daemon thread; returns once the server accepts requests."""
        if self._http is not None:
            raise RuntimeError("LocalLLMServer is already started")
        _load_builtin_responders()
        http = ThreadedHTTPServer(self._build_app(), host=self.host, port=self._requested_port, name="local-llm-server")
        http.start(timeout_s)
        self._http, self.port = http, http.port
        logger.info(
            "local OpenAI-compatible server at %s (responders: %s; scripted-* are offline stand-ins, not LLMs)",
            self.base_url,
            ", ".join(registered_responders()),
        )
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving (pending hung requests are cancelled after ~1 s) and release the port."""
        if self._http is not None:
            self._http.stop(timeout_s)
        self._http = None

    def __enter__(self) -> LocalLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- HTTP
    def _build_app(self):
        app = FastAPI(title="collabllm-verl local LLM server (offline stand-ins)")

        @app.get("/health")
        async def health() -> dict:
            return {"status": "ok"}

        @app.get("/v1/models")
        async def models() -> dict:
            return {"object": "list", "data": [{"id": n, "object": "model"} for n in registered_responders()]}

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request):
            try:
                body = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                return JSONResponse(_error_body("request body is not JSON", "invalid_request_error", 400), 400)
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                return JSONResponse(_error_body("'messages' must be a list", "invalid_request_error", 400), 400)
            if body.get("stream"):
                return JSONResponse(_error_body("streaming is not supported", "invalid_request_error", 400), 400)
            model = str(body.get("model", ""))
            name = model.rsplit("/", 1)[-1]
            fault = self._next_fault()
            self.received.append(body)
            with self._lock:
                self._counts["requests"] += 1
                self._counts[f"model:{name}"] += 1
                if fault:
                    self._counts[f"fault:{fault}"] += 1
                self._in_flight += 1
                self._counts["max_in_flight"] = max(self._counts["max_in_flight"], self._in_flight)
            try:
                return await self._answer(request, body, model, name, fault)
            finally:
                with self._lock:
                    self._in_flight -= 1

        return app

    async def _answer(self, request: Request, body: dict, model: str, name: str, fault: str | None):
        """Latency, faults and the responder's answer for one chat-completion request."""
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000.0)
        if fault == "hang":
            # Wait hang_s seconds, or until the client gives up (its timeout) and disconnects.
            deadline = time.monotonic() + self.hang_s
            while time.monotonic() < deadline:
                await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
                if await request.is_disconnected():
                    return Response(status_code=499)
        if fault == "rate_limit":
            headers = {
                "Retry-After": str(math.ceil(self.retry_after_s)),
                "retry-after-ms": str(int(self.retry_after_s * 1000)),
            }
            return JSONResponse(
                _error_body("rate limit (fault injection)", "rate_limit_error", 429), 429, headers=headers
            )
        if fault == "server_error":
            return JSONResponse(_error_body("internal error (fault injection)", "server_error", 500), 500)
        with _RESPONDERS_LOCK:
            responder = _RESPONDERS.get(name)
        if responder is None:
            message = f"model {name!r} not served here; known: {sorted(_RESPONDERS)}"
            return JSONResponse(_error_body(message, "invalid_request_error", "model_not_found"), 404)
        try:
            content = responder(body["messages"], body)
            if inspect.isawaitable(content):
                content = await content
        except ValueError as exc:
            return JSONResponse(_error_body(f"{name}: {exc}", "invalid_request_error", 400), 400)
        except Exception as exc:  # a bug in a responder: report it as a server error
            logger.exception("responder %s failed", name)
            return JSONResponse(_error_body(f"{name} failed: {exc}", "server_error", 500), 500)
        content = self._apply_content_fault(fault, str(content))
        prompt_tokens = sum(
            _count_tokens(m.get("content") or "") for m in body["messages"] if isinstance(m.get("content"), str)
        )
        completion_tokens = _count_tokens(content)
        payload = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        if fault == "bad_body":
            raw = json.dumps(payload)
            return Response(raw[: len(raw) // 2], media_type="application/json")
        return JSONResponse(payload)

    @staticmethod
    def _apply_content_fault(fault: str | None, content: str) -> str:
        if fault == "malformed_json":
            return "Sorry, I am not able to put that into the requested format."
        if fault == "truncated_json":
            return content[:25]
        if fault == "missing_keys":
            return json.dumps({"note": "fault injection: the expected keys are missing"})
        if fault == "empty":
            return ""
        return content


# -------------------------------------------------------------------- CLI
def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m collabllm_verl.recipe.offline.server",
        description="Local OpenAI-compatible server with scripted (offline stand-in) responders.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one (default 0)")
    p.add_argument("--latency-ms", type=float, default=0.0, help="milliseconds added to every answer")
    p.add_argument("--fault", action="append", default=[], choices=FAULT_MODES, help="queue a fault (repeatable)")
    p.add_argument("--fault-rate", type=float, default=0.0, help="probability of a random fault per request")
    p.add_argument("--fault-modes", default=None, help="comma-separated modes drawn at --fault-rate")
    p.add_argument("--retry-after-s", type=float, default=1.0, help="delay announced by rate_limit faults")
    p.add_argument("--hang-s", type=float, default=3600.0, help="wait of a hang fault, seconds")
    p.add_argument("--scripted-max-turns", type=int, default=None, help="scripted user: user turns before it ends")
    p.add_argument("--ambiguity-rows", action="append", default=[], metavar="FILE",
                   help="scripted-ambiguity-user: a JSONL file of the ambiguity family (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed of random faults")
    p.add_argument("--ready-file", default=None, help="write the base URL to this file once serving")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the server in the foreground until SIGINT/SIGTERM."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.scripted_max_turns is not None:
        from collabllm_verl.recipe.offline import scripted_user

        if args.scripted_max_turns < 1:
            raise SystemExit("--scripted-max-turns must be >= 1")
        scripted_user.DEFAULTS["max_turns"] = args.scripted_max_turns
    if args.ambiguity_rows:
        from collabllm_verl.recipe.offline.scripted_ambiguity_user import register_rows

        for file in args.ambiguity_rows:
            register_rows(file)
    server = LocalLLMServer(
        host=args.host,
        port=args.port,
        latency_ms=args.latency_ms,
        faults=args.fault,
        fault_rate=args.fault_rate,
        fault_modes=args.fault_modes.split(",") if args.fault_modes else None,
        retry_after_s=args.retry_after_s,
        hang_s=args.hang_s,
        seed=args.seed,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with server:
        print(f"LOCAL_LLM_SERVER_URL={server.base_url}", flush=True)
        if args.ready_file:  # written atomically: scripts poll for the file, then read the URL
            tmp = f"{args.ready_file}.tmp{os.getpid()}"
            with open(tmp, "w") as fh:
                fh.write(server.base_url + "\n")
            os.replace(tmp, args.ready_file)
        stop.wait()
    logger.info("local LLM server stopped")


if __name__ == "__main__":
    # `python -m` runs this file as `__main__`, a second copy of the module: responders that other modules
    # (scripted_judges) register through `collabllm_verl.recipe.offline.server` would be invisible to it.
    from collabllm_verl.recipe.offline.server import main as _canonical_main

    _canonical_main()
