"""`POST /api/v1/decisions` straight from ASGI, for the requests that need nothing else.

The synchronous decision is the platform's latency-critical call; FastAPI's routing and
dependency solving cost about three times the decision itself. This middleware answers a
request with a JSON body, a key holding the `score` scope and a valid `TransactionIn`, through
the same `decide_one` as the route; anything else (no or wrong key, bad JSON, an invalid field,
a pipeline not running) goes on to the FastAPI route with its body replayed, so every error is
rendered there, in one place, and the OpenAPI schema documents both.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fraudapp.api.responses import fraudapp_error
from fraudapp.api.transactions import TransactionIn, decide_one
from fraudapp.errors import FraudAppError

PATH = "/api/v1/decisions"
MAX_BODY_BYTES = 64 * 1024  # a transaction is a few hundred bytes; larger bodies go the slow way


class DecisionFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        runtime = scope.get("state", {}).get("runtime")
        principal = runtime.api_keys.identify(_text(headers.get(b"x-api-key"))) if runtime else None
        declared = headers.get(b"content-length", b"0")
        if (
            principal is None
            or not principal.allows("score")
            or not headers.get(b"content-type", b"").startswith(b"application/json")
            or not declared.isdigit()
            or int(declared) > MAX_BODY_BYTES
        ):
            await self.app(scope, receive, send)
            return
        body, messages = await _read_body(receive)
        pipeline = runtime.engine.pipeline
        try:
            transaction = TransactionIn.model_validate_json(body)
        except ValidationError:
            transaction = None
        if transaction is None or pipeline is None or not pipeline.accepting:
            await self.app(scope, _replay(messages, receive), send)
            return
        try:
            payload = orjson.dumps(await decide_one(pipeline, transaction))
        except FraudAppError as exc:  # the pipeline stopped meanwhile: the route's answer
            response = await fraudapp_error(Request(scope), exc)
            await response(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


async def _read_body(receive: Receive) -> tuple[bytes, list[Message]]:
    messages: list[Message] = []
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks), messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A `receive` that gives back what was read, then what comes after."""
    pending = list(messages)

    async def replayed() -> Any:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
