"""The HTTP requests a worker has in progress: what tells a request it is alone.

uvicorn keeps its server's request tasks in one set, from a request's headers to its
response, whatever route or middleware answers it. The service's protocol shows that set
here (``service.http_protocol``), and the batcher asks whether the request calling it is
the only one: then no other could join its batch, and it runs at once in its own task.
"""

import asyncio
from collections.abc import Collection
from typing import Final

# The key in the lifespan state, which uvicorn hands every connection's protocol.
STATE_KEY: Final = "requests_in_progress"


class RequestsInProgress:
    def __init__(self) -> None:
        # Until a connection shows uvicorn's set, or when served some other way (tests,
        # another server): unknown, so never alone.
        self._tasks: Collection[object] = ()

    def watch(self, tasks: Collection[object]) -> None:
        self._tasks = tasks

    def alone(self) -> bool:
        """Exactly one HTTP request in progress, and the caller's task is it: a gRPC call
        (not in the set) is never alone, since other calls could join its batch unseen."""
        tasks = self._tasks
        return len(tasks) == 1 and asyncio.current_task() in tasks
