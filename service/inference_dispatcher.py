"""Inference requests served straight from the middleware stack, past FastAPI's router.

POST /predict and the protocol's infer are nearly all of a busy worker's requests, and
FastAPI spends more Python on each than the service's own middleware does: matching the
path against every route, its exception and exit-stack middleware, the request_response
wrapper (bench/hot_path.py measures it). The dispatcher, innermost of the middleware,
matches these routes' own path patterns and calls their own handlers, so every
middleware sees the request as before; any other request, and the OpenAPI document made
from the declared routes, stays FastAPI's.
"""

from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from service.admission import is_inference
from service.dependencies import AppScopedRoute
from service.errors import client_error_response

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class InferenceDispatcher:
    """Serves the inference routes among ``routes`` (POST, paths ``is_inference`` takes)."""

    def __init__(self, app: ASGIApp, routes: Iterable[BaseRoute]):
        self.app = app
        self.routes: list[tuple[AppScopedRoute, Handler]] = [
            (route, route.get_route_handler())
            for route in routes
            if isinstance(route, AppScopedRoute)
            and route.methods == {"POST"}
            and is_inference({"method": "POST", "path": route.path})
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Under a root path (a proxy's prefix), the router's own matching strips it first.
        if scope["type"] == "http" and is_inference(scope) and not scope.get("root_path"):
            for route, handler in self.routes:
                matched = route.path_regex.match(scope["path"])
                if matched is not None:
                    await self._serve(route, handler, matched.groupdict(), scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(
        self,
        route: AppScopedRoute,
        handler: Handler,
        path_params: dict[str, str],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        # What the router would have set: the access log, metrics and traces name the
        # request by its route's template.
        scope["route"], scope["endpoint"] = route, route.endpoint
        scope["path_params"] = {
            name: route.param_convertors[name].convert(value) for name, value in path_params.items()
        }
        request = Request(scope, receive, send)
        try:
            response = await handler(request)
        except Exception as exc:
            # The protocol's routes answer their errors themselves; /predict's are the app's
            # exception handlers', whose answer this is. Anything else is a 500, as before.
            answer = client_error_response(request, exc)
            if answer is None:
                raise
            response = answer
        await response(scope, receive, send)
