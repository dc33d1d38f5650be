"""Errors a client can fix, and the handlers that turn every failure into a JSON answer."""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


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


def request_id(request: Request) -> str | None:
    """The id the access middleware gave this request (None outside it, as in unit tests)."""
    return getattr(request.state, "request_id", None)


def install_error_handlers(app: FastAPI) -> None:
    def error(request: Request, message: str, status: int, headers: Any = None) -> JSONResponse:
        body = {"detail": message, "request_id": request_id(request)}
        return JSONResponse(body, status, headers=headers)

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> JSONResponse:
        return error(request, exc.message, exc.status, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return error(request, "; ".join(problems), 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(request, str(exc.detail), exc.status_code, exc.headers)
