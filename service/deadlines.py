"""A request's deadline, set where the request arrives and read where it waits (the batcher).

A context variable rather than a parameter threaded through every route: like a trace
context, it follows the request through the middleware and into the batcher's ``infer``.
"""

from contextvars import ContextVar

from service.errors import InputError

# time.perf_counter() value after which nobody waits for the answer; None: no deadline.
REQUEST_DEADLINE: ContextVar[float | None] = ContextVar("request_deadline", default=None)


class DeadlineExceededError(InputError):
    def __init__(self, waited_s: float):
        super().__init__(
            f"deadline passed after {waited_s * 1000:.0f} ms waiting for inference "
            "(MNIST_REQUEST_TIMEOUT_MS): the server is overloaded; retry later or send fewer "
            "images per request",
            status=504,
        )
