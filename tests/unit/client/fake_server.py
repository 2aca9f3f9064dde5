"""A scripted fake Neblina server behind httpx.MockTransport, for the client tests.

A plain module, not part of conftest.py: tests import it by name (``from fake_server import
FakeServer``); ``import conftest`` would resolve to whichever of the suite's three
conftest.py files pytest loaded last.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

import httpx

from neblina_client import Client

URL = "http://neblina.test"
TOKEN = "nbl_" + "s3cr3tT0ken" * 3 + "abcdefghij"  # 4 + 43 characters, like a real one


class FakeServer:
    """Answers requests with scripted replies, in order, and records what it received."""

    url = URL
    token = TOKEN

    def __init__(self) -> None:
        self.replies: deque[httpx.Response | Exception] = deque()
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []

    def reply(
        self,
        status: int = 200,
        json: Any = None,
        *,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> FakeServer:
        if content is not None:
            self.replies.append(httpx.Response(status, content=content, headers=headers))
        else:
            self.replies.append(httpx.Response(status, json=json, headers=headers))
        return self

    def error(self, status: int, code: str, message: str = "nope", **headers: str) -> FakeServer:
        return self.reply(status, {"error": code, "message": message}, headers=headers)

    def fail(self, exc: Exception) -> FakeServer:
        self.replies.append(exc)
        return self

    def handle(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        if not self.replies:
            raise AssertionError(f"unexpected request {request.method} {request.url}")
        reply = self.replies.popleft()
        if isinstance(reply, Exception):
            raise reply
        return reply

    def client(self, **kwargs: Any) -> Client:
        options: dict[str, Any] = {"url": URL, "token": TOKEN, "dataset": "PENGUIN"}
        options.update(kwargs)
        # record the backoff instead of sleeping
        options.setdefault("sleep", self.sleeps.append)
        return Client(transport=httpx.MockTransport(self.handle), **options)

    def body(self, index: int = -1) -> Any:
        return json.loads(self.requests[index].content)
