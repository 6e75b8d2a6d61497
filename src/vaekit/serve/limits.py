"""Caps on what requests may cost the server: the size of each body (``BodyLimit``, on the raw bytes before
anything parses them) and how many requests are served at once (``InFlightLimit``, before any body is read).
"""

from __future__ import annotations

import json
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]

# Peak server memory per in-flight request, per byte of its body: measured at 14 for a maximum-size (8 MiB)
# body of JSON numbers, the costliest kind (the received bytes, ~2 million parsed Python floats and their
# list, the numpy copy; benchmarks/serve_load.py --big-bodies 1 --max-in-flight 0: 114 MiB above idle), and
# taken as 16 for a margin over that one measurement.
PEAK_BYTES_PER_BODY_BYTE = 16
DEFAULT_MEMORY_BUDGET = 2**30  # what requests in flight may take at worst, on top of the loaded model
# FastAPI runs the endpoints in anyio's thread pool of 40 threads: more requests than that only wait, holding
# their parsed bodies, for a thread (and then for the model's lock).
THREAD_POOL = 40
RETRY_AFTER_S = 1  # a busy server frees a slot within about one request's time


class BodyLimit:
    """ASGI middleware: a body over ``max_bytes`` is answered 413 before the application sees it.

    A declared Content-Length over the cap is refused at once; a body without one (chunked) is read until it
    passes the cap. The body is then handed on whole, so a parser never meets a truncated request.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared == -1:
            await _answer(send, 400, "the Content-Length header is not a number")
            return
        if declared is not None and declared > self.max_bytes:
            await _answer(send, 413, f"the request body is {declared} bytes; the limit is {self.max_bytes} bytes")
            return
        try:
            body = await self._read(receive)
        except _Disconnected:
            return
        if body is None:
            await _answer(send, 413, f"the request body is over the limit of {self.max_bytes} bytes")
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Any) -> bytes | None:
        """The whole body, or None once it passes the cap."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def default_max_in_flight(max_body_bytes: int, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """How many requests to serve at once: as many maximum-size bodies as fit the memory budget at their peak
    cost (8 for the default 8 MiB limit and 1 GiB budget), at least 2 and at most the endpoints' thread pool.

    The model answers one request at a time anyway, so a small cap costs no throughput: the requests it turns
    away would only have waited, holding their bodies. A browser opens at most 6 connections to a server, so
    the page never meets the default cap on its own."""
    return max(2, min(THREAD_POOL, memory_budget // (PEAK_BYTES_PER_BODY_BYTE * max_body_bytes)))


class InFlightLimit:
    """ASGI middleware: beyond ``max_in_flight`` HTTP requests at once, the next is answered 503 with a
    ``Retry-After`` header before its body is read, so memory is bounded by the cap times the body limit.

    A request counts from its arrival (while its body is still coming in) until its response is sent. The
    counter lives on the event loop's single thread, so it needs no lock.
    """

    def __init__(self, app: Any, max_in_flight: int, retry_after_s: int = RETRY_AFTER_S) -> None:
        self.app, self.max_in_flight, self.retry_after_s = app, max_in_flight, retry_after_s
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            # No "Connection: close": the server then reads and drops the unread body (no buffering), and the
            # client, still sending it, gets to read this answer instead of a reset connection.
            await _answer(send, 503, f"the server is busy: {self.max_in_flight} requests are in flight, the most "
                          f"it serves at once; retry in {self.retry_after_s} s",
                          [(b"retry-after", str(self.retry_after_s).encode())], close=False)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class _Disconnected(Exception):
    """The client went away before sending its whole body."""


def _content_length(scope: Scope) -> int | None:
    """The declared body size; None when absent, -1 when it is not a number."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            return int(value) if value.strip().isdigit() else -1
    return None


def _replay(body: bytes, receive: Any) -> Any:
    """A ``receive`` that gives the buffered body once, then waits on the real one (for the disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _answer(send: Any, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None,
                  close: bool = True) -> None:
    """A JSON ``{"detail": ...}`` answer; ``close``: end the connection rather than read the rest of the body."""
    payload = json.dumps({"detail": detail}).encode()
    fixed = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status,
                "headers": fixed + (headers or []) + ([(b"connection", b"close")] if close else [])})
    await send({"type": "http.response.body", "body": payload})
