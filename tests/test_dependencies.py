"""service.dependencies.AppScopedRoute: app-scoped dependencies injected without FastAPI's
per-request solving, and any other parameter refused when the route is made."""

from pathlib import Path

import pytest
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.testclient import TestClient

from service.dependencies import AppScopedRoute, SettingsDep
from service.settings import Settings


def test_the_request_and_app_scoped_dependencies_are_injected() -> None:
    router = APIRouter(route_class=AppScopedRoute)

    @router.get("/port")
    async def port(request: Request, settings: SettingsDep) -> Response:
        return Response(f"{request.url.path} {settings.port}")

    app = FastAPI()
    app.state.settings = Settings(port=8123, model_path=Path("unused.onnx"))
    app.include_router(router)
    with TestClient(app) as client:
        assert client.get("/port").text == "/port 8123"


def test_a_query_parameter_is_refused_when_the_route_is_made() -> None:
    router = APIRouter(route_class=AppScopedRoute)
    with pytest.raises(TypeError, match="app-scoped dependencies only"):

        @router.get("/echo")
        async def echo(text: str) -> Response:
            return Response(text)


def test_a_dependency_that_is_not_app_scoped_is_refused() -> None:
    async def per_request(request: Request) -> str:
        return request.url.path

    router = APIRouter(route_class=AppScopedRoute)
    with pytest.raises(TypeError, match="app-scoped dependencies only"):

        @router.get("/path")
        async def path(value: str = Depends(per_request)) -> Response:
            return Response(value)
