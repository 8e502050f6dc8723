"""Request body limit: 413 once a body exceeds the limit, whether declared (Content-Length) or streamed (chunked)."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import error_body


class BodyLimitMiddleware:
    """Answer 413 ``payload_too_large`` once a request body exceeds ``max_bytes``.

    A declared Content-Length over the limit is refused before any byte is read. A streamed body is counted as it
    arrives: at the first byte over the limit the 413 is sent, the application is told the client went away (so it
    stops reading and stores nothing), and whatever it tries to answer after that is dropped.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._send_413(send)
            return
        seen = 0
        over_limit = False  # the body passed the limit: the application only hears "disconnected" from now on
        answered = False  # we sent the 413: whatever the application sends is dropped
        response_started = False

        async def limited_receive() -> Message:
            nonlocal seen, over_limit, answered
            if over_limit:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over_limit = True
                    if not response_started:  # an answer already under way is left to finish
                        answered = True
                        await self._send_413(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if answered:
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _send_413(self, send: Send) -> None:
        body = json.dumps(error_body("payload_too_large", f"request body exceeds {self.max_bytes} bytes")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
