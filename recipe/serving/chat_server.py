"""An OpenAI-compatible chat server on 127.0.0.1 over the responders it is given (no verl or torch import).

:class:`ChatServer` serves a fixed mapping ``{model name: responder}`` given to its constructor (a checkpoint
through :class:`~collabllm_verl.recipe.serving.hf_chat.HFChatBackend`, see
:func:`~collabllm_verl.recipe.serving.hf_chat.serve_checkpoint`). It has no global registry, scripted
responders or fault injection: those belong to the offline stand-in server
(:mod:`collabllm_verl.recipe.offline.server`), used by tests.

Endpoints, as the OpenAI API (and vLLM) answer them:

* ``GET /v1/models`` lists the served models, and only those; ``GET /v1/models/{name}`` returns one (404 else);
* ``POST /v1/chat/completions`` answers a non-streaming chat completion: ``n`` choices (1 to
  :data:`MAX_CHOICES`), each with its ``finish_reason`` (``"stop"``: the model ended its turn; ``"length"``:
  the token budget ran out), and ``usage`` as the responder counts it (for a checkpoint: its tokenizer's
  tokens of the chat-template prompt, and of every choice, summed);
* ``GET /health``.

Not supported, answered with HTTP 400 whose ``error.param`` names the field: ``stream=true`` (no
server-sent events: send non-streaming requests), and ``stop``, ``logprobs``, ``top_logprobs``,
``logit_bias``, ``presence_penalty``, ``frequency_penalty``, ``tools``, ``tool_choice``, ``functions``,
``function_call`` and a ``response_format`` other than ``{"type": "text"}`` whenever they are set to
anything but their neutral value. ``seed`` is accepted and not applied (OpenAI's own seed is best effort;
batching makes replies depend on their batch). Other unknown fields are ignored, as vLLM does.

Errors are OpenAI-style bodies ``{"error": {"message", "type", "param", "code"}}``: 400 for a malformed request
(the message names the field, e.g. ``messages[1].content``) or a ``ValueError`` of the responder (a prompt
longer than the context window), 404 for an unknown model, 500 when the responder fails otherwise (clients
retry it). The server checks no API key: keep it on 127.0.0.1.

Use::

    with ChatServer({"checkpoint": backend}) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="local")
        client.chat.completions.create(model="checkpoint", messages=[...], n=2)
"""

from __future__ import annotations

import inspect
import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from collabllm_verl.recipe.serving.http_thread import ThreadedHTTPServer, error_body

__all__ = [
    "MAX_CHOICES",
    "UNSUPPORTED_FIELDS",
    "ChatChoice",
    "ChatMessage",
    "ChatRequest",
    "ChatResponder",
    "ChatResult",
    "ChatServer",
]

logger = logging.getLogger(__name__)

MAX_CHOICES = 128
"""Largest ``n`` (choices per request) the server accepts."""

UNSUPPORTED_FIELDS = (
    "stream",
    "stop",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
)
"""Request fields refused (HTTP 400) unless absent or neutral (see :func:`_is_neutral`)."""

_NEUTRAL_TEXT = ("none", "auto")  # tool_choice / function_call values that call no tool


class ChatMessage(BaseModel):
    """One message of a chat request: a role and its text.

    ``content`` may be a string or a list of ``{"type": "text", "text": ...}`` parts (joined without separator,
    as OpenAI reads them); other parts (images, audio) and messages without content (tool calls) are refused.
    """

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _text_of_parts(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not all(
                isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str)
                for p in value
            ):
                raise ValueError(
                    "content parts must all be {'type': 'text', 'text': str} (the server is text-only)"
                )
            return "".join(p["text"] for p in value)
        if not isinstance(value, str):
            raise ValueError("content must be a string or a list of text parts")
        return value


class ChatRequest(BaseModel):
    """The body of ``POST /v1/chat/completions`` as the server reads it (unknown fields are kept in
    ``model_extra`` and not used).

    Attributes:
        model: the served model's name.
        messages: the conversation, at least one message.
        n: choices to return, 1 to :data:`MAX_CHOICES` (``None``: 1).
        temperature, top_p, top_k, repetition_penalty: sampling settings (``top_k`` and ``repetition_penalty``
            are vLLM's extensions); the responder checks their ranges.
        max_tokens, max_completion_tokens: the reply budget in tokens (the second is OpenAI's newer name).
        seed: accepted, not applied (module docstring).
    """

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    n: Annotated[int, Field(strict=True, ge=1, le=MAX_CHOICES)] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    seed: int | None = None

    @property
    def choices(self) -> int:
        """How many choices to return (``n``, default 1)."""
        return self.n or 1

    def conversation(self) -> list[dict[str, str]]:
        """The messages as ``[{"role": ..., "content": str}, ...]``."""
        return [{"role": m.role, "content": m.content} for m in self.messages]

    def sampling_fields(self) -> dict[str, Any]:
        """The sampling settings the request sets: ``temperature``, ``top_p``, ``top_k``,
        ``repetition_penalty``, ``max_tokens``, ``max_completion_tokens`` (absent ones left out)."""
        names = ("temperature", "top_p", "top_k", "repetition_penalty", "max_tokens", "max_completion_tokens")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


@dataclass(frozen=True)
class ChatChoice:
    """One reply.

    Attributes:
        content: the assistant message's text.
        finish_reason: ``"stop"`` (the model ended its turn) or ``"length"`` (the token budget ran out).
    """

    content: str
    finish_reason: Literal["stop", "length"]


@dataclass(frozen=True)
class ChatResult:
    """A responder's answer to one request.

    Attributes:
        choices: exactly ``request.choices`` replies, in order.
        prompt_tokens: tokens of the prompt as the model read it (>= 0).
        completion_tokens: tokens generated, all choices together (>= 0).
    """

    choices: list[ChatChoice]
    prompt_tokens: int
    completion_tokens: int


class ChatResponder(Protocol):
    """What :class:`ChatServer` serves under a model name."""

    async def complete(self, request: ChatRequest) -> ChatResult:
        """Answer ``request`` with ``request.choices`` choices; raise ``ValueError`` for a request it cannot
        serve (HTTP 400), anything else for a failure (HTTP 500)."""
        ...


def _is_neutral(value: Any) -> bool:
    """True for a value that asks nothing of the server: absent/false/zero/empty, ``tool_choice`` ``"none"`` or
    ``"auto"``, ``response_format={"type": "text"}``."""
    return not value or value in _NEUTRAL_TEXT or value == {"type": "text"}


def _field_path(loc: tuple) -> str:
    """A pydantic error location as a request field: ``("messages", 1, "content")`` -> ``messages[1].content``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _bad_request(message: str, param: str | None = None, code: str | int = 400) -> JSONResponse:
    return JSONResponse(error_body(message, "invalid_request_error", code, param), 400)


def _parse_chat_request(body: Any) -> ChatRequest | JSONResponse:
    """Validate a decoded request body; a 400 response naming the first field at fault when it is not valid."""
    if not isinstance(body, dict):
        return _bad_request("the request body must be a JSON object")
    if body.get("stream"):
        return _bad_request(
            "stream=true is not supported: this server answers non-streaming chat completions only "
            "(send the request without streaming)",
            "stream",
        )
    for name in UNSUPPORTED_FIELDS:
        if not _is_neutral(body.get(name)):
            return _bad_request(f"'{name}' is not supported by this server (leave it unset)", name)
    try:
        return ChatRequest.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors()
        lines = [f"{_field_path(e['loc']) or 'body'}: {e['msg'].removeprefix('Value error, ')}" for e in errors]
        return _bad_request("; ".join(lines), _field_path(errors[0]["loc"]) or None)


class ChatServer(ThreadedHTTPServer):
    """The OpenAI-compatible chat endpoint of the module docstring, in a background thread.

    Args:
        responders: model name -> responder (:class:`ChatResponder`); the names are the only models served.
        host: interface to bind (default ``127.0.0.1``; the server checks no key).
        port: TCP port; 0 picks a free one.

    Raises:
        ValueError: no responder, or an empty name.
        TypeError: a responder without an ``async complete(request)`` method.
    """

    def __init__(
        self, responders: Mapping[str, ChatResponder], *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        if not responders:
            raise ValueError("ChatServer needs at least one responder")
        for name, responder in responders.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"responder names must be non-empty strings, got {name!r}")
            if not callable(getattr(responder, "complete", None)):
                raise TypeError(f"responder {name!r} has no complete(request) method")
        self.responders: dict[str, ChatResponder] = dict(responders)
        self._created = int(time.time())
        super().__init__(self._build_app(), host=host, port=port, name="chat-server")

    def _model_card(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self._created, "owned_by": "collabllm-verl"}

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="collabllm-verl chat server")

        @app.get("/health")
        async def health() -> dict:
            return {"status": "ok"}

        @app.get("/v1/models")
        async def models() -> dict:
            return {"object": "list", "data": [self._model_card(name) for name in self.responders]}

        @app.get("/v1/models/{name:path}")
        async def model(name: str):
            if name not in self.responders:
                return self._unknown_model(name)
            return self._model_card(name)

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request):
            try:
                body = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                return _bad_request("the request body is not JSON")
            parsed = _parse_chat_request(body)
            if isinstance(parsed, JSONResponse):
                return parsed
            return await self._complete(parsed)

        return app

    def _unknown_model(self, name: str) -> JSONResponse:
        message = f"model {name!r} is not served here; served: {sorted(self.responders)}"
        return JSONResponse(error_body(message, "invalid_request_error", "model_not_found", "model"), 404)

    async def _complete(self, request: ChatRequest) -> JSONResponse:
        """The responder's answer as an OpenAI ``chat.completion`` object, or an error response."""
        responder = self.responders.get(request.model)
        if responder is None:
            return self._unknown_model(request.model)
        try:
            result = responder.complete(request)
            if inspect.isawaitable(result):
                result = await result
        except ValueError as exc:
            return _bad_request(f"{request.model}: {exc}")
        except Exception as exc:  # a failing backend: a server error, which clients retry
            logger.exception("responder %s failed", request.model)
            return JSONResponse(error_body(f"{request.model} failed: {exc}", "server_error", 500), 500)
        if len(result.choices) != request.choices:
            message = f"{request.model} returned {len(result.choices)} choices for n={request.choices}"
            return JSONResponse(error_body(message, "server_error", 500), 500)
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": request.model,
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": choice.content},
                        "logprobs": None,
                        "finish_reason": choice.finish_reason,
                    }
                    for i, choice in enumerate(result.choices)
                ],
                "usage": {
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                    "total_tokens": result.prompt_tokens + result.completion_tokens,
                },
            }
        )
