"""Errors a client can fix, and the handlers that turn every failure into a JSON answer."""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope, Send

# Seconds a client told "server busy" (503) waits before it tries again, wherever it is told.
RETRY_AFTER_S = 1


class InputError(Exception):
    """Something wrong with what the client sent; ``status`` is the 4xx to answer with."""

    def __init__(self, message: str, status: int = 422, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.headers = headers


@contextmanager
def about(what: str, statuses: Mapping[int, int] | None = None) -> Iterator[None]:
    """An InputError raised inside says what it is about (``what: message``): one file of
    many, one input; ``statuses`` maps its status to another, as a protocol needs."""
    try:
        yield
    except InputError as exc:
        status = (statuses or {}).get(exc.status, exc.status)
        raise InputError(f"{what}: {exc.message}", status, exc.headers) from None


async def send_refusal(
    scope: Scope, send: Send, status: int, message: str, headers: Mapping[str, str] | None = None
) -> None:
    """An error answered by ASGI middleware, before any route: in the format the route
    would have answered in, ``{"error": ...}`` under /v2/ (the Open Inference Protocol's),
    ``{"detail": ...}`` elsewhere."""
    key = "error" if scope["path"].startswith("/v2/") else "detail"
    body = orjson.dumps({key: message, "request_id": scope.get("state", {}).get("request_id")})
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in (headers or {}).items()
        ),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def request_id(request: Request) -> str | None:
    """The id the access middleware gave this request (None outside it, as in unit tests)."""
    return getattr(request.state, "request_id", None)


def validation_problems(exc: RequestValidationError) -> str:
    """What FastAPI's validation found, as one line: ``where: what; where: what``."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


def error_response(
    request: Request, message: str, status: int, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The service's error answer, ``{"detail": ..., "request_id": ...}``."""
    return JSONResponse(
        {"detail": message, "request_id": request_id(request)}, status, headers=headers
    )


ClientError = tuple[str, int, Mapping[str, str] | None]  # message, status, headers


def client_error(exc: Exception, validation_status: int = 422) -> ClientError | None:
    """What a failure the client can fix says (``validation_status`` for FastAPI's own
    validation, which a protocol may answer otherwise); None for any other, a 500 to come.

    The service's format and the Open Inference Protocol's both answer through it.
    """
    if isinstance(exc, InputError):
        return exc.message, exc.status, exc.headers
    if isinstance(exc, RequestValidationError):
        return validation_problems(exc), validation_status, None
    if isinstance(exc, StarletteHTTPException):
        return str(exc.detail), exc.status_code, exc.headers
    return None


def client_error_response(request: Request, exc: Exception) -> JSONResponse | None:
    """The answer to an error the client can fix; None for any other (a 500 to come).

    The app's exception handlers and the inference dispatcher both answer through it, so
    that a request gets the same error whichever of them served it.
    """
    error = client_error(exc)
    return None if error is None else error_response(request, *error)


def install_error_handlers(app: FastAPI) -> None:
    async def client_error(request: Request, exc: Exception) -> JSONResponse:
        response = client_error_response(request, exc)
        if response is None:  # only registered for the types it answers
            raise exc
        return response

    for handled in (InputError, RequestValidationError, StarletteHTTPException):
        app.add_exception_handler(handled, client_error)
