"""An ASGI app served by uvicorn in a background thread of this process, and OpenAI-style error bodies.

Shared by the chat server over a checkpoint (:mod:`collabllm_verl.recipe.serving.chat_server`) and the offline
stand-in server (:mod:`collabllm_verl.recipe.offline.server`). No verl or torch import.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

__all__ = ["ThreadedHTTPServer", "error_body"]


def error_body(message: str, kind: str, code: str | int | None, param: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error payload ``{"error": {"message", "type", "param", "code"}}``.

    Args:
        message: what went wrong, for a person.
        kind: ``invalid_request_error``, ``rate_limit_error``, ``server_error``, ...
        code: a short code or the HTTP status.
        param: the request field at fault (``"n"``, ``"messages[0].content"``), when there is one.
    """
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class ThreadedHTTPServer:
    """Serves ``app`` with uvicorn in a daemon thread; :meth:`start` returns once it accepts connections.

    Args:
        app: the ASGI application (a FastAPI app).
        host: interface to bind; keep the default ``127.0.0.1`` (the servers of this project check no key).
        port: TCP port; 0 picks a free one. The bound port is :attr:`port`.
        name: the thread's name prefix (shows in stack dumps).

    Use with ``with`` or :meth:`start` / :meth:`stop`; :attr:`base_url` is ``http://HOST:PORT/v1``.
    """

    def __init__(
        self, app: Any, *, host: str = "127.0.0.1", port: int = 0, name: str = "http-server"
    ) -> None:
        self.app = app
        self.host = host
        self.name = name
        self._requested_port = int(port)
        self._server = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.port: int | None = None

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1`` (the ``api_base`` / ``base_url`` of OpenAI clients). Raises RuntimeError before
        :meth:`start`."""
        if self.port is None:
            raise RuntimeError(f"{self.name} is not started")
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout_s: float = 30.0) -> ThreadedHTTPServer:
        """Bind the port and serve in a daemon thread.

        Raises:
            RuntimeError: already started, or not accepting requests within ``timeout_s`` seconds.
            OSError: the port cannot be bound.
        """
        import uvicorn

        if self._thread is not None:
            raise RuntimeError(f"{self.name} is already started")
        # proto=IPPROTO_TCP: asyncio enables TCP_NODELAY only on sockets whose proto is TCP; with proto 0
        # Nagle's algorithm delays each response body by ~40 ms (delayed ACK) after its headers.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        self._socket = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            loop="asyncio",
            http="h11",
            timeout_graceful_shutdown=1,
            backlog=4096,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=f"{self.name}:{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving (open requests are cancelled after ~1 s) and release the port; :attr:`port` keeps its
        value."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._socket is not None:
            self._socket.close()
        self._server = None
        self._thread = None
        self._socket = None

    def __enter__(self) -> ThreadedHTTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
