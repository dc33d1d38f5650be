"""What routes get injected: the objects the lifespan put on ``app.state``.

The getters are ``async`` because FastAPI runs plain ``def`` dependencies in its thread pool,
a thread hop per request for what is an attribute read.
"""

from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Final

from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute

from service.decode_budget import DecodeBudget
from service.drain import Drain
from service.metrics import Metrics
from service.models.repository import ModelRepository
from service.settings import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_repository(request: Request) -> ModelRepository:
    repository: ModelRepository = request.app.state.repository
    return repository


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_drain(request: Request) -> Drain:
    drain: Drain = request.app.state.drain
    return drain


async def get_decode_budget(request: Request) -> DecodeBudget:
    budget: DecodeBudget = request.app.state.decode_budget
    return budget


SettingsDep = Annotated[Settings, Depends(get_settings)]
RepositoryDep = Annotated[ModelRepository, Depends(get_repository)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
DrainDep = Annotated[Drain, Depends(get_drain)]
DecodeBudgetDep = Annotated[DecodeBudget, Depends(get_decode_budget)]


# Getters of what lives as long as the app: an AppScopedRoute may inject only these.
APP_SCOPED: Final = frozenset(
    {get_settings, get_repository, get_metrics, get_drain, get_decode_budget}
)


class AppScopedRoute(APIRoute):
    """A route whose endpoint takes the Request and app-scoped dependencies only, injected
    without FastAPI's per-request dependency solving.

    Solving costs more than the attribute reads it ends in, on every request of the hot path
    (bench/hot_path.py measures it), for objects that never change while the app runs. The
    endpoint declares them as usual (``RepositoryDep``...), so its signature and the OpenAPI
    document stay what they are; any other parameter is refused when the route is made, and
    the endpoint reads its body and query itself and returns a Response.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        dependant = self.dependant
        declared = (
            dependant.path_params,
            dependant.query_params,
            dependant.header_params,
            dependant.cookie_params,
            dependant.body_params,
        )
        if any(declared) or any(
            d.call not in APP_SCOPED or d.dependencies for d in dependant.dependencies
        ):
            raise TypeError(
                f"{self.path}: an AppScopedRoute takes the Request and app-scoped "
                "dependencies only (service.dependencies.APP_SCOPED)"
            )
        getters = [(d.name, d.call) for d in dependant.dependencies if d.name and d.call]
        request_name = dependant.request_param_name
        endpoint = self.endpoint

        async def handle(request: Request) -> Response:
            arguments = {name: await get(request) for name, get in getters}
            if request_name:
                arguments[request_name] = request
            response: Response = await endpoint(**arguments)
            return response

        return handle
