"""The OpenAPI document describes what the service sends, not FastAPI's defaults."""

import json
from typing import Any

from service.app import create_app
from service.settings import Settings


def document() -> dict[str, Any]:
    served: dict[str, Any] = create_app(Settings()).openapi()
    return served


def test_no_operation_advertises_fastapis_list_of_validation_errors() -> None:
    served = document()
    assert "HTTPValidationError" not in json.dumps(served)
    assert "ValidationError" not in served["components"]["schemas"]
    summary_422 = served["paths"]["/summary"]["get"]["responses"]["422"]
    assert summary_422["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }


def test_every_reference_resolves_within_the_document() -> None:
    text = json.dumps(document())
    assert "#/$defs/" not in text
    schemas = document()["components"]["schemas"]
    for reference in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        assert reference.removeprefix("#/components/schemas/") in schemas, reference


def test_the_predict_json_body_takes_exactly_one_of_image_and_images() -> None:
    body = document()["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    schema = body["schema"]
    assert schema["oneOf"] == [{"required": ["image"]}, {"required": ["images"]}]
    assert schema["additionalProperties"] is False
    assert "required" not in schema


def test_v2_path_parameters_name_the_model_and_a_version_example() -> None:
    operation = document()["paths"]["/v2/models/{model_name}/versions/{model_version}/infer"]
    parameters = {p["name"]: p["schema"] for p in operation["post"]["parameters"]}
    assert parameters["model_name"]["enum"] == ["mnist"]
    assert parameters["model_version"]["example"] == "1"
    assert "422" not in operation["post"]["responses"]
    assert operation["post"]["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ProtocolErrorResponse"
    }
