"""The protocol's answer to a /v2 path or method that no route takes: 404 or 405, as JSON.

Its own module, included after every /v2 router: the catch-all must come last, and it must
see the routes of both the protocol and its repository extension to tell a wrong method
(405, with Allow) from a path that does not exist (404).
"""

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute

from service.inference_protocol import repository_routes, routes
from service.inference_protocol.routes import ProtocolRoute, protocol_error

router = APIRouter(prefix="/v2", route_class=ProtocolRoute)
_PROTOCOL_ROUTERS = (routes.router, repository_routes.router)


@router.api_route(
    "/{path:path}",
    methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
    include_in_schema=False,
)
async def not_implemented(request: Request, path: str) -> Response:
    for protocol_router in _PROTOCOL_ROUTERS:
        for route in protocol_router.routes:
            if isinstance(route, APIRoute) and route.path_regex.match(request.url.path):
                allowed = ", ".join(sorted(route.methods or ()))
                return protocol_error(
                    request,
                    f"{request.method} is not allowed on /v2/{path}: use {allowed}",
                    405,
                    {"Allow": allowed},
                )
    return protocol_error(
        request,
        f"no endpoint /v2/{path}: this server implements the protocol's health, metadata, "
        "model config, infer and model repository endpoints",
        404,
    )
