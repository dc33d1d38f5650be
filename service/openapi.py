"""The OpenAPI document as the service really answers: request schemas that resolve on their
own, and no validation error shape that no route sends."""

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi


def self_contained(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic model's JSON schema with its ``#/$defs/...`` references inlined.

    Schemas given through ``openapi_extra`` land in the document as they are, where
    ``#/$defs`` resolves to nothing: a client generator or fuzzer would then skip them.
    """
    definitions = schema.get("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            reference = node.get("$ref", "")
            if reference.startswith("#/$defs/"):
                return inline(definitions[reference.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items() if key != "$defs"}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    inlined: dict[str, Any] = inline(schema)
    return inlined


def install_openapi(app: FastAPI, protocol_prefix: str) -> None:
    """FastAPI adds its ``HTTPValidationError`` (a list of errors) as the 422 of every route
    with parameters. This service never sends it: service routes declare their own 422,
    ``{"detail": str}``, and protocol routes answer validation errors with a documented 400,
    ``{"error": str}``. What is left of the default is dropped, so that the document
    advertises only what is sent."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            default = {"$ref": "#/components/schemas/HTTPValidationError"}
            for path, operations in document["paths"].items():
                for operation in operations.values():
                    response = operation["responses"].get("422", {})
                    if (
                        response.get("content", {}).get("application/json", {}).get("schema")
                        == default
                    ):
                        if not path.startswith(protocol_prefix):
                            raise AssertionError(f"{path} sends 422 but does not declare it")
                        del operation["responses"]["422"]
            schemas = document.get("components", {}).get("schemas", {})
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
