"""The request body deadline: a body that does not arrive in time gets 408, then the
connection closes.

uvicorn has no body timeout: a client that sends its headers and then a byte now and then
holds a request, a task and a connection for as long as it likes. The deadline is for the
whole body, not between chunks: a byte every few seconds would pass any gap limit.
"""

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import InputError


class BodyTimeoutMiddleware:
    def __init__(self, app: ASGIApp, timeout_s: float):
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        body_done = False
        timed_out = False

        async def timed_receive() -> Message:
            nonlocal body_done, timed_out
            if body_done:
                # Later calls wait for a disconnect (streaming responses): no deadline there.
                return await receive()
            try:
                # asyncio.timeout, not wait_for: no task per call on the hot path.
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                timed_out = True
                # Raised where the app reads, as the body limit does, so that the route's
                # error handlers answer it: {"detail": ...}, or {"error": ...} under /v2/.
                raise InputError(
                    f"request body not received within {self.timeout_s:g} s "
                    "(MNIST_BODY_TIMEOUT_S): send the whole body at once, or a smaller one",
                    status=408,
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def closing_send(message: Message) -> None:
            if timed_out and message["type"] == "http.response.start":
                # The rest of the body is not wanted: the client must not reuse the connection.
                headers = [*message.get("headers", ()), (b"connection", b"close")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, timed_receive, closing_send)
