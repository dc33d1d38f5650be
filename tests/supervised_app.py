"""A tiny ASGI app for the supervisor's tests: it answers with the pid of the worker that
served, and fails its start-up when SUPERVISED_APP_FAILS is set.

``python -m tests.supervised_app PORT WORKERS`` serves it under the supervisor and exits
with the supervisor's status."""

import os
import sys
from typing import Any

import uvicorn

from service.supervisor import Supervisor, listening_sockets


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        message = await receive()
        if message["type"] == "lifespan.startup":
            if os.environ.get("SUPERVISED_APP_FAILS"):
                await send({"type": "lifespan.startup.failed", "message": "told to fail"})
                return
            await send({"type": "lifespan.startup.complete"})
        message = await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = str(os.getpid()).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    port, workers = int(sys.argv[1]), int(sys.argv[2])
    config = uvicorn.Config("tests.supervised_app:app", lifespan="on", log_level="warning")
    sockets = listening_sockets("127.0.0.1", port, workers)
    raise SystemExit(Supervisor(config, sockets, stop_timeout_s=5).run())
